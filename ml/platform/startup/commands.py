"""How each service is started: its argv and environment, built afresh for every (re)start."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

from ml.platform import db, tracking
from ml.platform.config import REPO_ROOT, Settings
from ml.platform.db import embedded_passfile
from ml.platform.orchestration import airflow_env
from ml.platform.startup import proxy
from ml.platform.startup.services import (
    AIRFLOW_SERVICES,
    MLFLOW_WORKERS,
    console_script,
    replica_names,
    services,
    worker_names,
    worker_var,
)
from ml.platform.supervisor import Service, ServiceError, runtime_dir


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) plus the settings that locate the platform, so a
    child process (the supervisor) reads the same settings as this one."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "SENTIMENT_VAR_DIR": str(settings.var),
            "SENTIMENT_HOST": settings.host,
            "SENTIMENT_API_PORT": str(settings.api_port),
            "SENTIMENT_AIRFLOW_PORT": str(settings.airflow_port),
            "SENTIMENT_MLFLOW_PORT": str(settings.mlflow_port),
            "SENTIMENT_EMBEDDED_PG_PORT": str(settings.embedded_pg_port),
            "SENTIMENT_API_REPLICAS": str(settings.api_replicas),
            "SENTIMENT_AIRFLOW_EXECUTOR": settings.airflow_executor,
            "SENTIMENT_CELERY_WORKERS": str(settings.celery_workers),
            "SENTIMENT_CELERY_BROKER_URL": settings.celery_broker_url,
            "SENTIMENT_CELERY_QUEUES": settings.celery_queues,
            "PYTHONPATH": os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p),
            "XDG_RUNTIME_DIR": runtime_dir(),
        }
    )
    for key, value in (
        ("DATABASE_URL", settings.database_url),
        ("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri),
        ("SENTIMENT_MLFLOW_DATABASE", settings.mlflow_database),
        ("SENTIMENT_AIRFLOW_DATABASE", settings.airflow_database),
        ("SENTIMENT_SHARED_STORAGE_URL", settings.shared_storage_url),
    ):
        if value:
            env[key] = value
    if not settings.database_url:  # the embedded server's password reaches libpq from this file, never from argv
        env["PGPASSFILE"] = str(embedded_passfile(settings).resolve())
    return env


def platform_env(settings: Settings, db_url: str, mlflow_url: str | None) -> dict[str, str]:
    """Environment for the API (and anything else of ours): same settings as this process."""
    env = settings_env(settings)
    env.update(
        {
            "DATABASE_URL": db_url,
            "SENTIMENT_MLFLOW_DATABASE": db.database_name(db.mlflow_backend_url(settings)),
            "SENTIMENT_AIRFLOW_DATABASE": db.database_name(db.airflow_db_url(settings)),
            "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
        }
    )
    env.pop("SMOPS_SERVICE", None)
    if mlflow_url:
        env["MLFLOW_TRACKING_URI"] = mlflow_url
    return env


def mlflow_server_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.mlflow_port}"


def services_tracking_uri(settings: Settings) -> str:
    """The tracking store every service of ours uses: the configured one (``MLFLOW_TRACKING_URI``, an external
    MLflow), else the platform's own server. One rule for the API, Airflow and the workers, so that the API
    never follows a registry other than the one the DAGs promote in."""
    return settings.mlflow_tracking_uri or mlflow_server_url(settings)


def set_tracking_env(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """Point a service's environment at :func:`services_tracking_uri`. For the platform's own server, a login
    inherited from the operator's shell (another MLflow's) is dropped: the service reads the platform's own from
    ``var/mlflow/credentials.json`` (``tracking.use_credentials``), where the inherited one would get 401s."""
    env["MLFLOW_TRACKING_URI"] = services_tracking_uri(settings)
    if not settings.mlflow_tracking_uri:
        env.pop("MLFLOW_TRACKING_USERNAME", None)
        env.pop("MLFLOW_TRACKING_PASSWORD", None)
    return env


def command(name: str, settings: Settings) -> tuple[Service, list[str], dict[str, str]]:
    """(service, argv, env) to start ``name``; built afresh for every (re)start."""
    svc = services(settings)[name]
    if name == "mlflow":
        backend = db.mlflow_backend_url(settings)
        db.ensure_database(backend)
        settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            console_script("mlflow"),
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(settings.artifacts_dir.resolve()),
            "--host",
            settings.host,
            "--port",
            str(settings.mlflow_port),
            "--workers",
            MLFLOW_WORKERS,
            # MLflow's own /metrics (prometheus-flask-exporter, multiprocess files here; emptied at each start)
            "--expose-prometheus",
            str(prometheus_dir(settings, "mlflow")),
        ]
        env = platform_env(settings, db.database_url(settings), None)
        env.pop("MLFLOW_TRACKING_URI", None)
        if settings.mlflow_auth:  # nobody but the platform registers models or moves the alias (README "Security")
            argv += ["--app-name", "basic-auth"]
            env.update(tracking.mlflow_auth_env(settings))
        # MLflow 3's GenAI job runner (7 huey consumer processes, ~1.5 GB) is not used here
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        return svc, argv, env
    if name in worker_names(settings):
        return svc, *celery_worker(settings, int(name.rsplit("-", 1)[1]))
    if name in AIRFLOW_SERVICES:
        env = airflow_env(settings, base=settings_env(settings))
        env.pop("SMOPS_SERVICE", None)
        set_tracking_env(settings, env)
        comp = name.removeprefix("airflow-")
        argv = [console_script("airflow"), comp]
        if comp == "api-server":
            argv += ["--host", settings.host, "--port", str(settings.airflow_port)]
        elif comp in LOG_SERVING_COMPONENTS:
            # Airflow 3.3's log servers (8793 scheduler/LocalExecutor, 8794 triggerer) bind every interface
            # (airflow.utils.serve_logs.core: uvicorn host="", no [logging] host setting). Everything runs on
            # this one host and writes to AIRFLOW__LOGGING__BASE_LOG_FOLDER, which the api-server reads
            # directly: no log server is started, so nothing listens beyond settings.host.
            argv.append("--skip-serve-logs")
        return svc, argv, env
    if name == "api" and settings.api_replicas >= 2:  # HAProxy on api_port in front of api-1..api-N (startup/proxy.py)
        return svc, proxy.haproxy_argv(proxy.write_config(settings)), settings_env(settings)
    if name == "api" or name in replica_names(settings):
        # N worker processes under uvicorn's own process manager (restarts a worker that dies); each has
        # its own prediction log, drained at a graceful shutdown. Admission and body limits: api/admission.py
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:app",
            "--host",
            settings.host if name == "api" else "127.0.0.1",  # an instance behind the proxy: loopback only
            "--port",
            str(svc.port),
            "--workers",
            str(api_workers(settings)),
            "--timeout-graceful-shutdown",
            "30",
            "--no-access-log",
            # a request head must arrive within api_body_timeout_seconds of the connection (or of its first
            # byte), else 408 and closed; the body's deadline is api/admission.py's. Idle keep-alive: 5 s
            "--http",
            "api.protocol:HeadDeadlineProtocol",
            "--timeout-keep-alive",
            "5",
            *api_proxy_args(settings),
        ]
        env = set_tracking_env(settings, platform_env(settings, db.database_url(settings), None))
        env["PROMETHEUS_MULTIPROC_DIR"] = str(prometheus_dir(settings, name))
        if name != "api":
            # its own prediction log (var/api/<i>/spool), replayed by this instance when it restarts; the
            # client's address from X-Forwarded-For, set by the proxy only (a local caller reaching this
            # loopback port directly could set it too: README "Scaling out")
            env["SENTIMENT_API_STATE_DIR"] = str(proxy.instance_state_dir(settings, int(name.removeprefix("api-"))))
            env["SENTIMENT_TRUSTED_PROXIES"] = json.dumps([proxy.PROXY_ADDRESS])
        return svc, argv, env
    raise ServiceError(f"unknown service {name!r}")


def celery_worker(settings: Settings, i: int) -> tuple[list[str], dict[str, str]]:
    """Celery worker ``i``: ``airflow celery worker`` on the queues of ``celery_queues``, with its OWN var/
    (``var/workers/<i>``) and the shared store (``shared_storage_url``; unset: this host's var/, which stands
    for the object store on one host). Its task logs go to the platform's log folder (the api-server reads
    them there); a worker on another host needs Airflow's remote logging (README "Scaling out")."""
    env = airflow_env(settings, base=settings_env(settings))
    env.pop("SMOPS_SERVICE", None)
    set_tracking_env(settings, env)
    own = worker_var(settings, i)
    own.mkdir(mode=0o700, parents=True, exist_ok=True)
    env["SENTIMENT_VAR_DIR"] = str(own)
    env["SENTIMENT_SHARED_STORAGE_URL"] = settings.shared_storage_url or str(settings.var)
    env["SENTIMENT_WORKER_HOSTNAME"] = f"worker-{i}.{socket.gethostname()}"  # task instances' hostname
    creds = (
        tracking.mlflow_credentials(settings) if settings.mlflow_auth else None
    )  # in the platform's var/, not the worker's
    if creds and not env.get("MLFLOW_TRACKING_USERNAME"):
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = creds["username"], creds["password"]
    argv = [
        console_script("airflow"),
        "celery",
        "worker",
        "--queues",
        settings.celery_queues,
        "--celery-hostname",
        f"worker-{i}@%h",
        "--skip-serve-logs",
    ]
    return argv, env


def prometheus_dir(settings: Settings, service: str) -> Path:
    """var/prometheus/<service>, emptied: prometheus-client's multiprocess files of this start only (files
    of workers from an earlier start would be summed in: counters of a stopped API, stale gauges)."""
    path = settings.var / "prometheus" / service
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def api_proxy_args(settings: Settings) -> list[str]:
    """uvicorn's proxy flags for the API: never uvicorn's own X-Forwarded-For handling (its default trusts
    127.0.0.1, and the API binds to loopback: every local caller would be a proxy and could name any
    address). The app honours the headers only from ``trusted_proxies`` itself (api/proxies.py), so the
    setting is the one source under any launcher that passes this."""
    return ["--no-proxy-headers"]


LOG_SERVING_COMPONENTS = ("scheduler", "triggerer")  # `airflow scheduler|triggerer --skip-serve-logs`


def api_workers(settings: Settings) -> int:
    """``api_workers``, or one per CPU core when it is 0 (shared among the instances: ``api_replicas``)."""
    return int(settings.api_workers) or max(1, (os.cpu_count() or 1) // max(1, settings.api_replicas))
