"""MLflow wiring: where runs and the registry live.

Tracking URI, in order: ``MLFLOW_TRACKING_URI`` / settings; the URL of the platform's MLflow
server when ``make up`` started one (``var/run/mlflow.url``); else MLflow's store directly
in the PostgreSQL database ``mlflow_database`` with artifacts under ``var/mlartifacts``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from functools import lru_cache
from pathlib import Path

from ml.platform import db
from ml.platform.config import REPO_ROOT, Settings, get_settings

#: MLflow's switch for its artifact up/download tqdm bar (off for the platform and its child processes)
MLFLOW_PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
MLFLOW_URL_FILE = "mlflow.url"
MLFLOW_CREDENTIALS_FILE = "credentials.json"  # under var/mlflow/, mode 0600
MLFLOW_AUTH_CONFIG_FILE = "basic_auth.ini"  # under var/mlflow/, mode 0600
MLFLOW_ADMIN = "platform-admin"
#: bound of the MLflow server's per-worker cache of verified logins (the platform has one machine account)
MLFLOW_AUTH_CACHE_MAX_SIZE = 64
#: MLflow 3's experiment type: without it the UI opens the experiment in the GenAI view (traces, an
#: assistant); ``custom_model_development`` opens the classic training view (runs, metrics, models, datasets)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: MLflow 3.17's UI takes its GenAI / Model-training view from a global toggle (the ``workflowType`` URL
#: parameter, then remembered by the browser, GenAI by default), not from the experiment's kind tag:
#: the platform's links into the UI carry this parameter (:func:`ui_url`)
UI_WORKFLOW_QUERY = "workflowType=machine_learning"
EXPERIMENT_TAGS = {
    EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
    "mlflow.note.content": (
        "Tweet sentiment (Sentiment140, 2 classes): one run per trained candidate (tags dataset_hash, family, "
        "git_commit; datasets: its training snapshot, held-out split and external evaluation file), registered "
        "as versions of the registered model; the alias `champion` serves."
    ),
}


def mlflow_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).var / "mlflow"


def mlflow_credentials(settings: Settings | None = None, create: bool = False) -> dict[str, str] | None:
    """The MLflow server's admin login and Flask secret (``var/mlflow/credentials.json``, 0600),
    generated with ``create`` when missing: the platform's processes (API, DAG tasks, CLI) use it;
    nobody else holds it."""
    path = mlflow_dir(settings) / MLFLOW_CREDENTIALS_FILE
    if path.exists():
        return json.loads(path.read_text())
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    creds = {"username": MLFLOW_ADMIN, "password": secrets.token_urlsafe(24), "flask_secret_key": secrets.token_hex(32)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    try:
        os.link(tmp, path)  # the first writer wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return json.loads(path.read_text())


def mlflow_auth_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment of ``mlflow server --app-name basic-auth``: its config file (admin login, users in the
    PostgreSQL database ``<mlflow db>_auth``, no permission for other users) and the Flask secret."""
    s = settings or get_settings()
    creds = mlflow_credentials(s, create=True)
    assert creds is not None
    auth_db = db.with_database(db.mlflow_backend_url(s), db.database_name(db.mlflow_backend_url(s)) + "_auth")
    db.ensure_database(auth_db)
    _sync_admin(auth_db, creds)
    path = mlflow_dir(s) / MLFLOW_AUTH_CONFIG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
            f"database_uri = {auth_db}\n"
            f"admin_username = {creds['username']}\nadmin_password = {creds['password']}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "grant_default_workspace_access = false\n"
            # successes cached per worker, keyed by HMAC(per-process key, password); failures never (README "Security")
            f"auth_cache_ttl_seconds = {s.mlflow_auth_cache_seconds}\n"
            f"auth_cache_max_size = {MLFLOW_AUTH_CACHE_MAX_SIZE}\n"
        )
    os.chmod(path, 0o600)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(path), "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["flask_secret_key"]}


def _sync_admin(auth_db: str, creds: dict[str, str]) -> None:
    """The auth store's admin is the one in ``var/mlflow/credentials.json``. MLflow creates its admin only
    when the store has none, so a store that outlived its ``var/`` (a database kept, ``var/`` wiped)
    would lock the platform out with 401s: set the admin's password back to ours before the server starts."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(auth_db)
    if store.has_user(creds["username"]):
        store.update_user(creds["username"], password=creds["password"], is_admin=True)
    store.engine.dispose()


def use_credentials(settings: Settings | None = None) -> bool:
    """Set MLFLOW_TRACKING_USERNAME / _PASSWORD from ``var/mlflow/credentials.json`` unless the
    environment already has them (compose passes its own). True when credentials are in force."""
    if os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return True
    creds = mlflow_credentials(settings)
    if not creds:
        return False
    os.environ["MLFLOW_TRACKING_USERNAME"] = creds["username"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = creds["password"]
    return True


def tracking_uri(settings: Settings | None = None) -> str:
    s = settings or get_settings()
    if s.mlflow_tracking_uri:
        return s.mlflow_tracking_uri
    url_file = s.run_dir / MLFLOW_URL_FILE
    if url_file.exists():
        return url_file.read_text().strip()

    url = db.mlflow_backend_url(s)
    db.ensure_database(url)
    return url


def configure(settings: Settings | None = None) -> str:
    """Point the mlflow client at the platform's tracking store and make sure the
    experiment exists. Returns the tracking URI."""
    import mlflow

    s = settings or get_settings()
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    # MLflow's tqdm "Downloading artifacts" bar (mlflow.utils.file_utils.ArtifactProgressBar reads this at each
    # download) leaks into every command's stderr and every task log: the platform reports its own progress
    os.environ.setdefault(MLFLOW_PROGRESS_BAR_ENV, "false")
    uri = tracking_uri(s)
    if uri.startswith("http"):  # the platform's MLflow server answers only its own login
        use_credentials(s)
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
            client.create_experiment(s.experiment_name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except Exception:  # created concurrently by another task
            if client.get_experiment_by_name(s.experiment_name) is None:
                raise
    elif EXPERIMENT_KIND_TAG not in exp.tags:  # an experiment made before the kind was set (or by hand)
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(s.experiment_name)
    return uri


def ui_url(base: str, route: str) -> str:
    """A link into the MLflow UI at ``base`` (``route``: e.g. ``experiments/1/runs/<run id>``) that opens in
    the Model-training view."""
    return f"{base.rstrip('/')}/#/{route.lstrip('/')}?{UI_WORKFLOW_QUERY}"


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
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout: the commit is unknown
        return "unknown"
