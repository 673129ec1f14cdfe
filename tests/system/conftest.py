"""The system tests' fixtures (tests/conftest.py holds the ones that need no service): a real,
throw-away PostgreSQL database (plus one for MLflow) per test session, on the server named by
TEST_DATABASE_URL or DATABASE_URL, else the embedded one.

Everything the platform reads from the environment is pointed at these for the session,
so code under test runs exactly as in production, only against fresh databases and a
temporary ``var/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from ml.data.snapshots import validate_and_snapshot
from ml.platform import db, tracking
from ml.platform.config import get_settings, reset_settings
from ml.platform.orchestration import airflow_env
from ml.stages import promotion, train


def _restore_env(saved: dict[str, str | None]) -> None:
    """Put environment variables back as they were (None: unset) and forget cached settings."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_settings()


def _server_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        return url

    return db.start_embedded_postgres()


@pytest.fixture(scope="session")
def platform_env(tmp_path_factory):
    """Fresh app + MLflow databases and a temporary var/; yields the settings."""
    base = db.libpq_url(_server_url())
    name = f"smops_t_{uuid.uuid4().hex[:10]}"
    app_url = db.with_database(base, name)
    var = tmp_path_factory.mktemp("var")
    env = {
        "DATABASE_URL": app_url,
        "SENTIMENT_MLFLOW_DATABASE": f"{name}_mlflow",
        "SENTIMENT_AIRFLOW_DATABASE": f"{name}_airflow",
        "SENTIMENT_VAR_DIR": str(var),
        "SENTIMENT_MODEL_POLL_SECONDS": "0.5",
        # every TestClient is the same anonymous caller ("testclient"): quotas far above what the session
        # sends; tests/system/api/test_api_security.py sets its own small ones
        "SENTIMENT_RATE_LIMIT_PREDICT": "1000000/minute",
        "SENTIMENT_RATE_LIMIT_FEEDBACK": "1000000/minute",
        # no shadow window (config/platform.yaml sets the production one): a gated challenger is promoted at
        # once, as the loop tests expect; tests/system/test_shadow.py sets its own window
        "SENTIMENT_SHADOW_REQUESTS": "0",
        "SENTIMENT_SHADOW_HOURS": "0",
    }
    saved = {k: os.environ.get(k) for k in [*env, "MLFLOW_TRACKING_URI"]}
    try:  # the environment is put back and the databases dropped, also when the setup fails half-way
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.update(env)
        reset_settings()
        db.migrate(app_url)
        settings = get_settings()
        # Airflow imported in this process (plugin and DAG-file tests) uses the session's own
        # PostgreSQL metadata DB and AIRFLOW_HOME, never a default SQLite file under ~/airflow

        af = {k: v for k, v in airflow_env(settings).items() if k.startswith("AIRFLOW")}
        saved.update({k: os.environ.get(k) for k in af if k not in saved})
        os.environ.update(af)
        yield settings
    finally:
        _restore_env(saved)
        with psycopg.connect(db.with_database(base, "postgres"), autocommit=True) as conn:
            for d in (name, f"{name}_mlflow", f"{name}_airflow"):
                conn.execute(f'DROP DATABASE IF EXISTS "{d}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mlflow_tracking(platform_env):
    return tracking.configure(platform_env)


@pytest.fixture
def conn(platform_env):
    with psycopg.connect(platform_env.database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def model_name(platform_env, monkeypatch):
    """A registered-model name of the test's own, so tests don't share a champion."""
    name = f"tweet-sentiment-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SENTIMENT_MODEL_NAME", name)
    reset_settings()
    yield name
    monkeypatch.delenv("SENTIMENT_MODEL_NAME")
    reset_settings()


@pytest.fixture(scope="session")
def airflow_cli(platform_env):
    """Run ``airflow`` commands against the session's own Airflow metadata DB (migrated once)."""
    env = airflow_env(platform_env)
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)

    def run(*args: str, extra_env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [airflow, *args], env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=timeout
        )

    return run


@pytest.fixture(scope="session")
def own_champion(platform_env, mlflow_tracking):
    """A context manager that trains and promotes a real TF-IDF champion under a registered-model
    name of its own (``prefix-xxxxxx``), with extra ``SENTIMENT_*`` settings in the environment
    while it is open; both are restored on exit. Module fixtures use it so that their tests
    never share a champion with other modules."""

    @contextmanager
    def make(prefix: str, data_csv: Path, sample_size: int | None = None, **settings_env: str):
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        env = {"SENTIMENT_MODEL_NAME": name, **settings_env}
        saved = {k: os.environ.get(k) for k in env}
        try:
            os.environ.update(env)
            reset_settings()
            snap = validate_and_snapshot(data_csv)
            run_id = train.train(snap.hash, "tfidf_lr", sample_size=sample_size)
            train.evaluate(run_id)
            version = train.register(run_id)
            assert promotion.promote(run_id)["promoted"]
            yield SimpleNamespace(name=name, version=version, snapshot=snap, run_id=run_id, env=env)
        finally:
            _restore_env(saved)

    return make
