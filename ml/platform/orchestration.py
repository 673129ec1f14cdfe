"""How the platform runs Airflow: the environment every Airflow command gets.

Used by ``ml services`` (``make up``) and by the tests that run ``airflow dags test``.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from ml.platform import db
from ml.platform.config import REPO_ROOT, Settings, get_settings

# Airflow's simple auth manager: one admin user; its password lives in
# AIRFLOW_HOME/simple_auth_manager_passwords.json.generated (written by `ml services up`).
SIMPLE_AUTH_MANAGER_USERS = "admin:admin"
SIMPLE_AUTH_MANAGER_PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def worker_hostname() -> str:
    """Airflow's ``hostname_callable`` under Celery: ``SENTIMENT_WORKER_HOSTNAME`` (the worker's name, set
    when several workers share one host), else the host's FQDN (Airflow's default)."""
    return os.environ.get("SENTIMENT_WORKER_HOSTNAME") or socket.getfqdn()


def airflow_home(settings: Settings | None = None) -> Path:
    s = settings or get_settings()
    return s.var / "airflow"


def airflow_env(settings: Settings | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``airflow`` commands: LocalExecutor on the platform's PostgreSQL,
    the repository's ``dags/`` and ``plugins/``, no examples, low parallelism (2 cores)."""
    s = settings or get_settings()
    env = dict(os.environ if base is None else base)
    home = airflow_home(s)
    home.mkdir(parents=True, exist_ok=True)
    url = db.database_url(s)
    airflow_url = db.airflow_db_url(s)
    db.ensure_database(airflow_url)
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_url,
            "AIRFLOW__API__HOST": s.host,
            "AIRFLOW__API__PORT": str(s.airflow_port),
            "AIRFLOW__API__BASE_URL": f"http://{s.host}:{s.airflow_port}",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": SIMPLE_AUTH_MANAGER_USERS,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / SIMPLE_AUTH_MANAGER_PASSWORDS_FILE),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(s.logs_dir / "airflow"),
            # the platform's own settings reach every task
            "DATABASE_URL": url,
            "SENTIMENT_VAR_DIR": str(s.var),
            "SENTIMENT_MLFLOW_DATABASE": db.database_name(db.mlflow_backend_url(s)),
            "SENTIMENT_AIRFLOW_DATABASE": db.database_name(airflow_url),
            "PYTHONPATH": os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p),
            "PATH": os.pathsep.join([bin_dir, env.get("PATH", "")]),
            "XDG_RUNTIME_DIR": env.get("XDG_RUNTIME_DIR", "/tmp"),
            "HF_HUB_OFFLINE": "1",
        }
    )
    if s.mlflow_tracking_uri:
        env["MLFLOW_TRACKING_URI"] = s.mlflow_tracking_uri
    if s.shared_storage_url:
        env["SENTIMENT_SHARED_STORAGE_URL"] = s.shared_storage_url
    if s.airflow_executor == "celery":  # README "Scaling out": the queues default, scoring (shards), gpu
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": s.celery_broker_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_url,  # the platform's PostgreSQL
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": env.get("AIRFLOW__CELERY__WORKER_CONCURRENCY", "2"),
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
                # the task instance's hostname: the worker's name when several run on one host (worker_hostname)
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "ml.platform.orchestration.worker_hostname",
            }
        )
    if s.airflow_statsd:  # Airflow's metrics as StatsD (README "Pages and metrics")
        host, port = s.airflow_statsd.rsplit(":", 1)
        env.update(
            {
                "AIRFLOW__METRICS__STATSD_ON": "True",
                "AIRFLOW__METRICS__STATSD_HOST": host,
                "AIRFLOW__METRICS__STATSD_PORT": port,
                "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
            }
        )
    if not s.database_url:  # the embedded server: every task's libpq reads the password from this file
        env["PGPASSFILE"] = str(db.embedded_passfile(s).resolve())
    return env
