"""The services of the platform: their names, ports and URLs, ``--only`` selection, port checks."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ml.platform.config import Settings, get_settings
from ml.platform.startup.proxy import instance_port
from ml.platform.startup.usage import postmaster_pid
from ml.platform.supervisor import Service, ServiceError, port_open, port_owner

MLFLOW_WORKERS = os.environ.get("SENTIMENT_MLFLOW_WORKERS", "2")
STOP_TIMEOUT = float(os.environ.get("SENTIMENT_STOP_TIMEOUT", "20"))

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
AIRFLOW_SERVICES = tuple(f"airflow-{c}" for c in AIRFLOW_COMPONENTS)
SERVICE_NAMES = ("mlflow", *AIRFLOW_SERVICES, "api")


def console_script(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (the venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"`{name}` not found next to {sys.executable} nor on PATH; run `make env`")
    return found


def services(settings: Settings | None = None) -> dict[str, Service]:
    settings = settings or get_settings()
    h = settings.host
    mlflow_url = f"http://{h}:{settings.mlflow_port}"
    airflow_url = f"http://{h}:{settings.airflow_port}"
    api_url = f"http://{h}:{settings.api_port}"
    out = {"mlflow": Service("mlflow", settings.mlflow_port, mlflow_url, f"{mlflow_url}/health")}
    for c in AIRFLOW_COMPONENTS:
        api = c == "api-server"
        out[f"airflow-{c}"] = Service(
            f"airflow-{c}",
            settings.airflow_port if api else None,
            airflow_url if api else None,
            f"{airflow_url}/api/v2/monitor/health" if api else None,
        )
    # with api_replicas >= 2, "api" is HAProxy on api_port in front of the instances api-1..api-N
    out["api"] = Service("api", settings.api_port, api_url, f"{api_url}/health/live")  # /health is 503 without a model
    for name in replica_names(settings):
        port = instance_port(settings, int(name.removeprefix("api-")))
        out[name] = Service(name, port, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/health/live")
    for name in worker_names(settings):  # Celery workers: no port, they pull from the broker
        out[name] = Service(name, None, None, None)
    return out


def worker_names(settings: Settings) -> list[str]:
    """The Celery workers (``airflow-worker-1`` .. ``-N`` for ``airflow_executor`` celery, N ``celery_workers``),
    and any whose pid file is left from an earlier ``make up EXECUTOR=celery`` (``down`` and ``status`` find
    them whatever EXECUTOR says now)."""
    n = settings.celery_workers if settings.airflow_executor == "celery" else 0
    found = {
        int(m.group(1))
        for p in settings.run_dir.glob("airflow-worker-*.pid")
        if (m := re.fullmatch(r"airflow-worker-(\d+)\.pid", p.name))
    }
    return [f"airflow-worker-{i}" for i in sorted(set(range(1, n + 1)) | found)]


def worker_var(settings: Settings, i: int) -> Path:
    """Celery worker ``i``'s own var/ (its caches, model copies): nothing in it is read by another process."""
    return settings.var / "workers" / str(i)


def replica_names(settings: Settings) -> list[str]:
    """The API instances behind the proxy (``api-1`` .. ``api-N`` for ``api_replicas`` N >= 2), and any
    ``api-<i>`` whose pid file is left from an earlier ``make up API_REPLICAS=...`` (so ``down`` and
    ``status`` find them whatever API_REPLICAS says now)."""
    n = settings.api_replicas if settings.api_replicas >= 2 else 0
    found = {
        int(m.group(1)) for p in settings.run_dir.glob("api-*.pid") if (m := re.fullmatch(r"api-(\d+)\.pid", p.name))
    }
    return [f"api-{i}" for i in sorted(set(range(1, n + 1)) | found)]


def service_names(settings: Settings) -> list[str]:
    """Every service of this configuration, in start order: the API instances before their proxy."""
    return ["mlflow", *AIRFLOW_SERVICES, *worker_names(settings), *replica_names(settings), "api"]


def select(only: Iterable[str] | str | None) -> list[str]:
    """Service names for ``--only`` (comma-separated; ``airflow`` means its four components)."""
    if only is None:
        return list(SERVICE_NAMES)
    items = [x.strip() for x in (only.split(",") if isinstance(only, str) else only) if x.strip()]
    names: set[str] = set()
    for x in items:
        if x == "airflow":
            names.update(AIRFLOW_SERVICES)
        elif x in SERVICE_NAMES:
            names.add(x)
        else:
            raise ServiceError(
                f"unknown service {x!r}; choose from mlflow, airflow, api, {', '.join(AIRFLOW_SERVICES)}"
            )
    return [n for n in SERVICE_NAMES if n in names]


def port_env(name: str) -> str:
    return "SENTIMENT_" + ("MLFLOW" if name == "mlflow" else "API" if name == "api" else "AIRFLOW") + "_PORT"


def check_ports(settings: Settings, names: Iterable[str] = SERVICE_NAMES) -> None:
    """Fail before starting anything if a port we need is held by a process that isn't ours."""
    problems = []
    for name in names:
        svc = services(settings)[name]
        if svc.port is not None and not svc.pid(settings) and port_open(settings.host, svc.port):
            problems.append(
                f"  {svc.name}: {settings.host}:{svc.port} is in use by {port_owner(svc.port)} "
                f"(choose another with {port_env(svc.name)}=...)"
            )
    # the embedded PostgreSQL (no DATABASE_URL) listens on 127.0.0.1:embedded_pg_port unless it is ours already
    pg = settings.embedded_pg_port
    if not settings.database_url and not postmaster_pid(settings) and port_open("127.0.0.1", pg):
        problems.append(
            f"  embedded PostgreSQL: 127.0.0.1:{pg} is in use by {port_owner(pg)} "
            "(choose another with SENTIMENT_EMBEDDED_PG_PORT=..., or use a server of yours with DATABASE_URL=...)"
        )
    if problems:
        raise ServiceError("ports taken by something that is not this platform:\n" + "\n".join(problems))


def safe_url(url: str) -> str:
    """The URL without its password, for printing."""
    p = urlsplit(url)
    if p.password:
        netloc = f"{p.username}:***@{p.hostname}" + (f":{p.port}" if p.port else "")
        return urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))
    return url
