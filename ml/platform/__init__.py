"""Infrastructure: everything the stages run on.

- :mod:`ml.platform.config`: the one settings object;
- :mod:`ml.platform.db`: the one connection factory, the embedded PostgreSQL, migrations;
- :mod:`ml.platform.tracking`, :mod:`ml.platform.registry`: MLflow wiring, the registry, the
  ``champion`` alias and the promotion rule;
- :mod:`ml.platform.orchestration`: the environment every Airflow command gets;
- :mod:`ml.platform.security`, :mod:`ml.platform.quotas`: API keys, feedback tokens, quotas;
- :mod:`ml.platform.supervisor`: processes with psutil (start detached, trees, stop, port
  owners) and the supervisor that restarts crashed services with backoff;
- :mod:`ml.platform.airflow_client`: Airflow's REST API (generated login, token, training runs);
- :mod:`ml.platform.startup`: the start-up sequence, one module per concern: ``services``,
  ``commands``, ``supervision``, ``readiness``, ``seeding`` (+ ``sources``: its training file), ``up``,
  ``down``, ``status``;
- :mod:`ml.platform.errors`: ``DataError``, shared by every layer above.
"""
