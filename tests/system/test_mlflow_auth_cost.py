"""A verified MLflow caller costs milliseconds, an unverified one still gets 401 (README "Security").

MLflow's basic-auth app checks a password with PBKDF2 (1,000,000 rounds) on every request, twice for an
admin (``_before_request`` and ``sender_is_admin``): about 0.4 s of server CPU per tracking call. The
platform turns on MLflow's own credential cache (``auth_cache_ttl_seconds`` in ``basic_auth.ini``, from
``Settings.mlflow_auth_cache_seconds``): a success is kept per worker, keyed by (user, HMAC-SHA256 of the
password under a per-process random key), failures are never kept. The real server, started as
``make up`` starts it (ml.platform.startup.commands.command), with a 3 s cache for the test."""

from __future__ import annotations

import statistics
import subprocess
import time
import uuid

import httpx
import psycopg
import pytest
from ports import free_port, listens, stop_group

from ml.platform import db, tracking
from ml.platform.startup.commands import command

TTL = 3  # seconds; the platform's default is Settings.mlflow_auth_cache_seconds (60)


def _start_mlflow(base, tmp_path) -> tuple[subprocess.Popen, str]:
    """MLflow with basic auth on a free port (retried when another process took the port first)."""
    for attempt in range(3):
        s = base.model_copy(update={"mlflow_port": free_port()})
        _, argv, env = command("mlflow", s)
        env.pop("SMOPS_SERVICE", None)
        argv[argv.index("--workers") + 1] = "1"
        log_path = tmp_path / f"mlflow-{attempt}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{s.mlflow_port}"
        deadline = time.monotonic() + 120
        while proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200 and listens(proc.pid, s.mlflow_port):
                    return proc, url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                stop_group(proc)
                pytest.fail(f"MLflow did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        assert attempt < 2 and "address already in use" in log_path.read_text().lower(), log_path.read_text()[-3000:]
    raise AssertionError("unreachable")


def _median_ms(call, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


@pytest.mark.slow
def test_a_verified_caller_is_cheap_and_the_cache_never_lets_a_wrong_password_in(platform_env, tmp_path):
    name = f"{db.database_name(platform_env.database_url)}_mlcost_{uuid.uuid4().hex[:6]}"
    s = platform_env.model_copy(
        update={
            "var_dir": tmp_path / "var",
            "mlflow_database": name,
            "mlflow_auth": True,
            "mlflow_auth_cache_seconds": TTL,
        }
    )
    proc = None
    try:
        proc, url = _start_mlflow(s, tmp_path)
        ini = (tracking.mlflow_dir(s) / tracking.MLFLOW_AUTH_CONFIG_FILE).read_text()
        assert f"auth_cache_ttl_seconds = {TTL}\n" in ini and "auth_cache_max_size = " in ini
        creds = tracking.mlflow_credentials(s)
        assert creds is not None
        user, password = creds["username"], creds["password"]
        api = f"{url}/api/2.0/mlflow"
        with httpx.Client(timeout=30) as c:
            model = f"cost-{uuid.uuid4().hex[:6]}"
            assert c.post(f"{api}/registered-models/create", json={"name": model}, auth=(user, password)).is_success

            def get(auth=None) -> httpx.Response:
                return c.get(f"{api}/registered-models/get", params={"name": model}, auth=auth)

            assert get((user, password)).status_code == 200  # verified and cached
            # the cache never admits what PBKDF2 would refuse: anonymous, the same user with a wrong password
            # (also one that shares the right one's prefix), the right password under another name
            for bad in (None, (user, "guess"), (user, password[:-1]), (user, password + "x"), ("intruder", password)):
                assert get(bad).status_code == 401, bad
                assert get(bad).status_code == 401, bad  # a refusal is not cached as a success either

            health_ms = _median_ms(lambda: c.get(f"{url}/health").raise_for_status())
            auth_ms = _median_ms(lambda: get((user, password)).raise_for_status())
            # uncached, each call costs two PBKDF2 checks (~400 ms on these CPUs); cached, about /health's cost
            assert auth_ms < 10 * health_ms + 15, (auth_ms, health_ms)

            # a password changed out of band (no HTTP call reaches the worker) takes effect within the TTL
            from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

            store = SqlAlchemyStore()
            store.init_db(
                db.with_database(db.mlflow_backend_url(s), db.database_name(db.mlflow_backend_url(s)) + "_auth")
            )
            new_password = f"rotated-{uuid.uuid4().hex}"
            store.update_user(user, password=new_password)
            store.engine.dispose()
            changed = time.monotonic()
            while get((user, password)).status_code == 200:
                assert time.monotonic() - changed < TTL + 2, "the old password outlived the cache's TTL"
                time.sleep(0.2)
            assert get((user, new_password)).status_code == 200
            assert get((user, password)).status_code == 401
    finally:
        if proc is not None:
            stop_group(proc, 30)
        base = db.libpq_url(platform_env.database_url)
        with psycopg.connect(db.with_database(base, "postgres"), autocommit=True) as conn:
            for d in (name, f"{name}_auth"):
                conn.execute(f'DROP DATABASE IF EXISTS "{d}" WITH (FORCE)')
