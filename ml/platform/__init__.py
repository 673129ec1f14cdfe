"""Running the platform locally (``make up`` / ``make down`` / ``make status``).

- :mod:`ml.platform.supervisor`: processes with psutil (start detached, trees, stop, port
  owners) and the supervisor that restarts crashed services with backoff;
- :mod:`ml.platform.airflow_client`: Airflow's REST API (generated login, token, training runs);
- :mod:`ml.platform.startup`: the start-up sequence ``up`` / ``down`` / ``status``.
"""
