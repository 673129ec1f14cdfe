"""The platform's start-up sequence: ``up`` / ``down`` / ``status`` (``make up`` etc.).

What runs, each in its own session (process group), with its pid in ``var/run/<name>.pid``
and its output in ``var/logs/<name>.log``, all started and restarted by the supervisor
(:mod:`ml.platform.supervisor`, ``var/run/supervisor.pid``):

===================== ==================================================================
mlflow                ``mlflow server`` on ``mlflow_port`` (backend: PostgreSQL db ``mlflow``)
airflow-api-server    Airflow UI + REST API + task execution API on ``airflow_port``
airflow-scheduler     LocalExecutor scheduler (runs the tasks); CeleryExecutor with ``EXECUTOR=celery``
airflow-worker-<i>    ``EXECUTOR=celery`` only: Celery worker i (of ``celery_workers``), own ``var/workers/<i>``
airflow-dag-processor parses ``dags/``
airflow-triggerer     deferrable tasks
api                   ``uvicorn api.main:app`` on ``api_port``; HAProxy there with ``API_REPLICAS`` >= 2
api-<i>               ``API_REPLICAS`` >= 2 only: instance i on 127.0.0.1:<api_port + i>, own ``var/api/<i>``
===================== ==================================================================

PostgreSQL is either the one named by ``DATABASE_URL`` or the embedded server under
``var/pg`` (:func:`ml.platform.db.database_url` starts it); ``down`` stops the embedded one only.

``up`` prepares what a service needs (databases, migrations, the Airflow password), asks the
supervisor to run it (``var/run/supervisor-wanted.json`` + SIGHUP) and waits until it answers.
``down`` stops the supervisor first (so nothing is restarted), then every process of every
service's session and every descendant of its leader, SIGTERM first, SIGKILL after a
timeout. A pid file is trusted only when the process is alive, leads its session and carries
our marker (``SMOPS_SERVICE=<name>@<var dir>``), so a recycled pid is never killed. Data
(databases, artifacts, logs) is kept.

The modules: ``services`` (names, ports, URLs, ``--only`` selection, port checks), ``commands``
(each service's argv and environment), ``supervision`` (running the supervisor and asking it to
run services), ``readiness`` (waiting until a service answers), ``seeding`` (the first model),
``up``, ``down`` and ``status``. This file re-exports nothing: import from those modules.
"""
