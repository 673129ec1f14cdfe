"""MLflow wiring: where runs and the registry live.

Tracking URI, in order: ``MLFLOW_TRACKING_URI`` / settings; the URL of the platform's MLflow
server when ``make up`` started one (``var/run/mlflow.url``); else MLflow's store directly
in the PostgreSQL database ``mlflow_database`` with artifacts under ``var/mlartifacts``.
"""
from __future__ import annotations

import os
import subprocess
from functools import lru_cache

from ml.config import REPO_ROOT, Settings, get_settings

MLFLOW_URL_FILE = "mlflow.url"


def tracking_uri(settings: Settings | None = None) -> str:
    s = settings or get_settings()
    if s.mlflow_tracking_uri:
        return s.mlflow_tracking_uri
    url_file = s.run_dir / MLFLOW_URL_FILE
    if url_file.exists():
        return url_file.read_text().strip()
    from ml import db

    url = db.mlflow_backend_url(s)
    db.ensure_database(url)
    return url


def configure(settings: Settings | None = None) -> str:
    """Point the mlflow client at the platform's tracking store and make sure the
    experiment exists. Returns the tracking URI."""
    import mlflow

    s = settings or get_settings()
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    uri = tracking_uri(s)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(s.experiment_name)
    if exp is None:
        location = None
        if not uri.startswith("http"):  # direct DB store: artifacts on local disk under var/
            s.artifacts_dir.mkdir(parents=True, exist_ok=True)
            location = s.artifacts_dir.resolve().as_uri()
        try:
            client.create_experiment(s.experiment_name, artifact_location=location)
        except Exception:  # created concurrently by another task
            if client.get_experiment_by_name(s.experiment_name) is None:
                raise
    mlflow.set_experiment(s.experiment_name)
    return uri


@lru_cache
def git_commit() -> str:
    """The code commit that runs (``GIT_COMMIT`` env wins, e.g. in containers)."""
    env = os.environ.get("GIT_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=5,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"
