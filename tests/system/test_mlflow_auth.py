"""The platform's MLflow server runs with its authentication (`mlflow server --app-name basic-auth`),
started exactly as `make up` starts it (ml.platform.startup.commands.command): anonymous registry calls get 401,
the platform's generated login (var/mlflow/credentials.json, 0600) works through ml.platform.tracking.configure."""

from __future__ import annotations

import os
import stat
import subprocess
import time
import uuid

import httpx
import psycopg
import pytest
from ports import free_port, listens

from ml.platform import db, tracking
from ml.platform import tracking as t
from ml.platform.config import get_settings, reset_settings
from ml.platform.startup.commands import command


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 120) -> bool:
    """True once MLflow answers /health while ``proc`` still runs; False when ``proc`` exited (its
    port was taken); fails the test when it neither answers nor exits in ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200 and listens(
                proc.pid, int(url.rsplit(":", 1)[1])
            ):
                return True
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "MLflow did not start"
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_anonymous_registry_calls_get_401_and_the_platform_login_works(platform_env, tmp_path):
    name = f"{db.database_name(platform_env.database_url)}_mlauth_{uuid.uuid4().hex[:6]}"
    base_settings = platform_env.model_copy(
        update={"var_dir": tmp_path / "var", "mlflow_database": name, "mlflow_auth": True}
    )
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    proc = None
    try:
        # a port the kernel found free can be taken before MLflow binds it: then MLflow exits and
        # the test starts it again on another port (a health answer counts only while ours runs)
        for attempt in range(3):
            s = base_settings.model_copy(update={"mlflow_port": free_port()})
            _, argv, env = command("mlflow", s)
            env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
            env.pop("SMOPS_SERVICE", None)
            argv[argv.index("--workers") + 1] = "1"
            log_path = tmp_path / f"mlflow-{attempt}.log"
            with log_path.open("w") as log:
                proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            if _wait_healthy(proc, f"http://127.0.0.1:{s.mlflow_port}"):
                break
            # only a port taken by another process is retried; any other exit fails with MLflow's log
            assert attempt < 2 and "address already in use" in log_path.read_text().lower(), log_path.read_text()[
                -3000:
            ]
        assert "--app-name" in argv and argv[argv.index("--app-name") + 1] == "basic-auth"
        creds_file = tracking.mlflow_dir(s) / tracking.MLFLOW_CREDENTIALS_FILE
        for f in (creds_file, tracking.mlflow_dir(s) / tracking.MLFLOW_AUTH_CONFIG_FILE):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
        creds = tracking.mlflow_credentials(s)
        url = f"http://127.0.0.1:{s.mlflow_port}"
        api = f"{url}/api/2.0/mlflow"
        anonymous = [
            httpx.post(f"{api}/registered-models/create", json={"name": "intruder"}),
            httpx.post(f"{api}/model-versions/create", json={"name": "intruder", "source": "file:///tmp/x"}),
            httpx.post(
                f"{api}/registered-models/alias", json={"name": "tweet-sentiment", "alias": "champion", "version": "1"}
            ),
            httpx.get(f"{api}/registered-models/search"),
        ]
        assert [r.status_code for r in anonymous] == [401] * 4, [r.text[:200] for r in anonymous]
        wrong = httpx.post(
            f"{api}/registered-models/create", json={"name": "intruder"}, auth=(creds["username"], "guess")
        )
        assert wrong.status_code == 401
        # the platform's own processes log in with the generated credentials (ml.platform.tracking.configure)
        for k in saved:
            os.environ.pop(k, None)
        import mlflow

        assert tracking.configure(s.model_copy(update={"mlflow_tracking_uri": url})) == url
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == creds["username"]
        mlflow.MlflowClient().create_registered_model("platform-made")
        assert mlflow.MlflowClient().get_registered_model("platform-made").name == "platform-made"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if proc is not None:
            os.killpg(proc.pid, 15)
            proc.wait(30)

        t.configure(platform_env)  # back to the session's store
        base = db.libpq_url(platform_env.database_url)
        with psycopg.connect(db.with_database(base, "postgres"), autocommit=True) as conn:
            for d in (name, f"{name}_auth"):
                conn.execute(f'DROP DATABASE IF EXISTS "{d}" WITH (FORCE)')


def test_every_service_tracks_in_the_registry_the_platform_promotes_in(platform_env, monkeypatch):
    """The API, Airflow's components and the Celery workers all get one tracking URI: the configured one when
    there is one (an external MLflow, where `up()` trains and promotes), else the platform's own server. A login
    inherited from the operator's shell (another MLflow's) does not reach a service of the platform's own server.
    (Before: the API always followed the platform's own server, so with MLFLOW_TRACKING_URI set it answered 503
    "no champion yet" forever while the DAGs promoted elsewhere.)"""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone-elses")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "login")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SENTIMENT_MLFLOW_TRACKING_URI", raising=False)
    reset_settings()
    s = get_settings()
    own = f"http://{s.host}:{s.mlflow_port}"
    for name in ("api", "airflow-scheduler", "airflow-api-server"):
        _, _, env = command(name, s)
        assert env["MLFLOW_TRACKING_URI"] == own, name
        assert "MLFLOW_TRACKING_USERNAME" not in env and "MLFLOW_TRACKING_PASSWORD" not in env, name

    external = "http://mlflow.example.internal:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", external)
    reset_settings()
    try:
        s = get_settings()
        for name in ("api", "airflow-scheduler", "airflow-api-server"):
            _, _, env = command(name, s)
            assert env["MLFLOW_TRACKING_URI"] == external, name
            assert env["MLFLOW_TRACKING_USERNAME"] == "someone-elses", name  # the external server's login is theirs
    finally:
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        reset_settings()
