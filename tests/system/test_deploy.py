"""Deployment artefacts: docker-compose.yaml, the Dockerfile, the Makefile, .ci/run, and
``ml.platform`` (process management of `make up` / `make down`, the supervisor).

Every test that starts a service uses its own ``var/`` and ports chosen free by the kernel,
retrying when another process takes the port first; one test runs the platform on the
DEFAULT ports and the deploy tests beside it, as `make test` beside `make up` does."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from ports import free_port, in_ci, refused_port

from ml.platform import airflow_client, db, supervisor
from ml.platform.config import Settings, get_settings, reset_settings
from ml.platform.orchestration import airflow_env
from ml.platform.startup.commands import settings_env
from ml.platform.startup.down import down
from ml.platform.startup.services import AIRFLOW_SERVICES, SERVICE_NAMES, check_ports, select, services
from ml.platform.startup.status import status
from ml.platform.startup.supervision import ensure_supervisor, want
from ml.platform.startup.up import Steps, start_mlflow, up
from ml.platform.supervisor import ServiceError, is_ours

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"

CORE_SERVICES = {
    "postgres",
    "init",
    "mlflow",
    "api",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
CELERY_SERVICES = {"redis", "airflow-worker"}
# the API port is published by its proxy (HAProxy in front of `api`, which scales: docker compose up --scale api=N)
DEFAULT_PORTS = {"proxy": 8000, "airflow-api-server": 8080, "mlflow": 5000}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _services(compose: dict) -> dict:
    return compose["services"]


def _env(svc: dict) -> dict:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def _default(value: str) -> str:
    """``${VAR:-default}`` → default (compose interpolation, defaults only)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def _depends(svc: dict) -> dict:
    dep = svc.get("depends_on") or {}
    return {d: {"condition": "service_started"} for d in dep} if isinstance(dep, list) else dep


# ------------------------------------------------------------------ docker-compose.yaml
def test_compose_has_every_service(compose):
    names = set(_services(compose))
    assert CORE_SERVICES <= names, CORE_SERVICES - names
    assert CELERY_SERVICES <= names, CELERY_SERVICES - names
    for name in CORE_SERVICES:
        assert not _services(compose)[name].get("profiles"), f"{name} must run without a profile"
    for name in CELERY_SERVICES:
        assert "celery" in _services(compose)[name].get("profiles", []), name


def test_compose_depends_on_defined_services(compose):
    services = _services(compose)
    for name, svc in services.items():
        for dep, spec in _depends(svc).items():
            assert dep in services, f"{name} depends on undefined service {dep}"
            assert dep != name
            cond = spec.get("condition")
            assert cond in ("service_started", "service_healthy", "service_completed_successfully"), (name, dep)
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"
            # a service that always runs must not need one that only runs under a profile (unless the
            # dependency is optional: `required: false`, ignored when the profile is off)
            if not svc.get("profiles") and spec.get("required", True):
                assert not services[dep].get("profiles"), f"{name} (no profile) depends on profile-only {dep}"


def test_compose_dependency_graph_is_acyclic(compose):
    services = _services(compose)
    seen: dict[str, int] = {}

    def visit(n: str) -> None:
        assert seen.get(n) != 1, f"dependency cycle through {n}"
        if seen.get(n) == 2:
            return
        seen[n] = 1
        for d in _depends(services[n]):
            visit(d)
        seen[n] = 2

    for n in services:
        visit(n)


def test_compose_long_running_services_have_healthchecks(compose):
    for name, svc in _services(compose).items():
        if name not in ("init", "secrets-init", "seed"):  # one-shot services
            assert "healthcheck" in svc, name


def test_compose_ports_are_documented_defaults(compose):
    services = _services(compose)
    for name, port in DEFAULT_PORTS.items():
        ports = [_default(p) for p in services[name].get("ports", [])]
        assert any(p.endswith(f":{port}:{port}") or p == f"{port}:{port}" for p in ports), (name, ports)
        raw = " ".join(str(p) for p in services[name]["ports"])
        assert "${" in raw, f"{name}: host port should be configurable via an env variable"
    published = {n for n, s in services.items() if s.get("ports")}
    assert published == set(DEFAULT_PORTS), f"only API, Airflow and MLflow are published, not {published}"


def test_compose_airflow_uses_postgresql_never_sqlite(compose):
    assert "sqlite" not in COMPOSE.read_text().lower()
    assert "sqlite" not in (REPO / "docker" / "Dockerfile").read_text().lower()
    airflow = [n for n in _services(compose) if n.startswith("airflow-")] + ["init"]
    for name in airflow:
        env = _env(_services(compose)[name])
        conn = _default(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert conn.startswith("postgresql"), (name, conn)
        assert conn.endswith("@postgres:5432/airflow"), conn
        assert _default(env["AIRFLOW__CORE__EXECUTOR"]) in ("LocalExecutor", "CeleryExecutor"), name
        # the shared JWT secret and Fernet key come from the generated secrets (tests/unit/test_compose.py)
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-api-server:8080/")
        assert _env(_services(compose)[name])["AIRFLOW__CORE__DAGS_FOLDER"]
    mlflow_cmd = " ".join(_services(compose)["mlflow"]["command"])
    assert "--backend-store-uri postgresql" in mlflow_cmd
    assert "@postgres:5432/mlflow" in mlflow_cmd
    assert "--allowed-hosts" in mlflow_cmd and "mlflow:5000" in mlflow_cmd  # MLflow 3 host validation
    assert _env(_services(compose)["api"])["DATABASE_URL"].startswith("postgresql://")
    assert _services(compose)["postgres"]["image"].startswith("postgres:")
    assert int(_services(compose)["postgres"]["image"].split(":")[1].split(".")[0]) >= 16


def test_compose_celery_profile(compose):
    services = _services(compose)
    worker = services["airflow-worker"]
    env = _env(worker)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert _default(env["AIRFLOW__CELERY__BROKER_URL"]).startswith("redis://redis:6379")
    assert _default(env["AIRFLOW__CELERY__RESULT_BACKEND"]).startswith("db+postgresql://")
    assert "celery" in " ".join(worker["command"]) and "worker" in " ".join(worker["command"])
    assert "redis" in _depends(worker)
    # scalable with --scale airflow-worker=N
    assert "container_name" not in worker and not worker.get("ports")
    # the scheduler can be switched to Celery with one variable
    assert "${AIRFLOW_EXECUTOR:-LocalExecutor}" in str(_env(services["airflow-scheduler"])["AIRFLOW__CORE__EXECUTOR"])
    pins = (REPO / "requirements" / "constraints.txt").read_text()  # the image installs under these pins
    assert re.search(r"^apache-airflow-providers-celery==", pins, re.M)


def test_compose_referenced_files_exist(compose):
    for name, svc in _services(compose).items():
        build = svc.get("build")
        if build:
            ctx = REPO / (build if isinstance(build, str) else build.get("context", "."))
            assert ctx.is_dir(), name
            if isinstance(build, dict) and build.get("dockerfile"):
                assert (ctx / build["dockerfile"]).is_file(), (name, build["dockerfile"])
        for vol in svc.get("volumes", []):
            if isinstance(vol, str) and ":" not in vol:
                continue  # an anonymous volume (a container path only): no source on the host
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")):
                assert (REPO / src).exists() or src == "./data", f"{name}: bind source {src} missing"
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd and cmd[0].startswith("/opt/app/"):
            script = REPO / cmd[0].removeprefix("/opt/app/")
            assert script.is_file() and os.access(script, os.X_OK), script
    init_script = REPO / "docker" / "postgres" / "init-databases.sh"
    text = init_script.read_text()
    assert os.access(init_script, os.X_OK)
    for name in ("sentiment", "mlflow", "airflow"):
        assert name in text or name in str(_env(_services(compose)["postgres"])), name


def test_dockerfile_installs_with_constraints():
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert "requirements/constraints.txt" in text
    assert re.search(r"pip install .*-c requirements/constraints.txt", text)
    assert text.lstrip().splitlines()[0].startswith("#") and "FROM python:3.11" in text


def test_shell_scripts_parse():
    for script in (
        REPO / ".ci" / "run",
        REPO / "scripts" / "bootstrap.sh",
        REPO / "docker" / "airflow-init.sh",
        REPO / "docker" / "postgres" / "init-databases.sh",
    ):
        shell = "bash" if "bash" in script.read_text().splitlines()[0] else "sh"
        r = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, (script, r.stderr)


# ------------------------------------------------------------------ Makefile and CI
def _need_make() -> None:
    """Skip without `make`, except under CI=true, where a missing `make` is a failure."""
    if shutil.which("make") is None:
        if in_ci():
            pytest.fail("CI=true and `make` is not installed: the make-based tests cannot run")
        pytest.skip("make not installed")


@pytest.mark.parametrize("target", ["env", "up", "down", "status", "test", "bench", "lint"])
def test_make_targets_parse(target):
    _need_make()
    r = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_make_up_passes_data_through():
    _need_make()
    r = subprocess.run(
        ["make", "-n", "up", "DATA=some/file.csv", "TRAIN=0"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert "scripts/bootstrap.sh" in r.stdout  # `up` depends on `env`
    assert f'--data "{REPO}/some/file.csv"' in r.stdout and "--no-train" in r.stdout
    r = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert "pytest" in r.stdout and "scripts/bootstrap.sh" in r.stdout


def test_ci_run_is_executable_and_runs_make_test():
    ci = REPO / ".ci" / "run"
    assert ci.stat().st_mode & stat.S_IXUSR
    text = ci.read_text()
    assert text.startswith("#!/usr/bin/env bash") or text.startswith("#!/bin/bash")
    assert "set -euo pipefail" in text
    lines = [ln.split("#")[0] for ln in text.splitlines()]
    assert any(re.search(r"\bmake env\b", ln) for ln in lines)
    assert any(re.search(r"\bmake test\b", ln) for ln in lines)
    assert "DATABASE_URL" in text


# ------------------------------------------------------------------ ml.platform helpers
def _running_pid(svc, s) -> int | None:
    """The pid of ``svc`` of the platform ``s`` when that process runs, read only: unlike
    ``Service.pid`` it never removes a pid file (the repository's own var/ is not the tests' to change)."""
    try:
        pid = int(svc.pid_file(s).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_ours(pid, svc.name, s) else None


def _conflict(message: str) -> bool:
    m = message.lower()
    return "in use" in m or "address already in use" in m or "errno 98" in m


def _use(monkeypatch, **env: str):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    return get_settings()


@pytest.fixture
def own_service_databases(platform_env, monkeypatch):
    """MLflow and Airflow databases of this test's own for the services it starts (dropped after).

    An MLflow server started on the session's MLflow database would create the session's experiment
    itself, with an ``mlflow-artifacts:`` location that the in-process tests (which track straight into
    the database) cannot log to: every later test would then depend on whether this one ran first."""
    own = f"{db.database_name(platform_env.database_url)}_dep_{uuid.uuid4().hex[:6]}"
    names = {"SENTIMENT_MLFLOW_DATABASE": f"{own}_mlflow", "SENTIMENT_AIRFLOW_DATABASE": f"{own}_airflow"}
    for k, v in names.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    yield names
    base = db.libpq_url(platform_env.database_url)
    with psycopg.connect(db.with_database(base, "postgres"), autocommit=True) as conn:
        for name in names.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _on_free_ports(monkeypatch, tmp_path, only: str, attempts: int = 3, **up_kw):
    """``up(only=...)`` with its own var/ and kernel-chosen ports; retried with new ports when
    another process takes one first. Returns (settings, summary)."""
    for attempt in range(attempts):
        s = _use(
            monkeypatch,
            SENTIMENT_VAR_DIR=str(tmp_path / f"var{attempt}"),
            SENTIMENT_API_PORT=str(free_port()),
            SENTIMENT_MLFLOW_PORT=str(free_port()),
            SENTIMENT_AIRFLOW_PORT=str(free_port()),
        )
        try:
            return s, up(settings=s, only=only, train=False, **up_kw)
        except ServiceError as e:
            down(s)
            if not _conflict(str(e)) or attempt == attempts - 1:
                raise


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def _cli_env(s) -> dict[str, str]:
    return settings_env(s)


# ------------------------------------------------------------------ ml.platform (fast)
def test_pid_files_are_trusted_only_for_our_processes(platform_env, tmp_path):
    svc = services(platform_env)["mlflow"]
    platform_env.run_dir.mkdir(parents=True, exist_ok=True)
    svc.pid_file(platform_env).write_text(f"{os.getpid()}\n")  # alive, but not ours
    assert svc.pid(platform_env) is None
    assert not svc.pid_file(platform_env).exists(), "a stale pid file is removed"
    svc.pid_file(platform_env).write_text("999999999\n")  # dead
    assert svc.pid(platform_env) is None


def test_status_and_down_when_nothing_runs(platform_env):
    st = status(platform_env, quiet=True)
    assert set(st["services"]) == set(SERVICE_NAMES)
    assert not any(x["running"] for x in st["services"].values())
    assert st["supervisor"]["running"] is False
    assert st["postgres"]["embedded"] is False
    assert down(platform_env) == []


def test_steps_are_counted_not_hard_coded(platform_env, capsys):
    step = Steps(["PostgreSQL", "Supervisor", "Sentiment API"])
    for title in step.titles:
        step(title)
    assert capsys.readouterr().out.splitlines() == ["[1/3] PostgreSQL", "[2/3] Supervisor", "[3/3] Sentiment API"]


def test_only_selects_services():
    assert select(None) == list(SERVICE_NAMES)
    assert select("api,airflow") == [*AIRFLOW_SERVICES, "api"]
    with pytest.raises(ServiceError, match="unknown service"):
        select("nginx")


def test_no_proc_parsing_in_the_platform_package():
    for f in (REPO / "ml" / "platform").rglob("*.py"):
        assert "/proc" not in f.read_text(), f"{f.name} reads /proc by hand: use psutil"
    assert not (REPO / "ml" / "services.py").exists()


def test_airflow_password_is_generated_once_and_private(platform_env):
    user, pw = airflow_client.airflow_credentials(platform_env)
    path = airflow_client.airflow_password_file(platform_env)
    assert user == "admin" and len(pw) == 16
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert airflow_client.airflow_credentials(platform_env) == (user, pw)
    # Airflow is told to read exactly this file
    env = airflow_env(platform_env, base={})
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(path)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(":")[0] == user


def test_foreign_process_on_a_port_is_reported(platform_env, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # held by this test: no race
        sock.listen()
        port = sock.getsockname()[1]
        s = _use(monkeypatch, SENTIMENT_API_PORT=str(port))
        try:
            with pytest.raises(ServiceError, match=f"{port}.*pid {os.getpid()}.*SENTIMENT_API_PORT"):
                check_ports(s)
        finally:
            monkeypatch.undo()
            reset_settings()


def test_down_kills_the_whole_session(platform_env, tmp_path, monkeypatch):
    """A service's children, including one that started its own session, all go. Its own
    var/ and no port: it runs beside a `make up` on the default ports."""
    s = _use(monkeypatch, SENTIMENT_VAR_DIR=str(tmp_path / "var"))
    svc = services(s)["api"]
    script = (
        "import subprocess, sys, time; subprocess.Popen(['sleep', '300']); "
        "subprocess.Popen(['sleep', '301'], start_new_session=True); time.sleep(300)"
    )
    proc = supervisor.start(svc, [sys.executable, "-c", script], dict(os.environ), s)
    _wait_for(lambda: len(supervisor.tree(proc.pid)) >= 3, 30, "the service's two children")
    tree = supervisor.tree(proc.pid)
    assert len(tree) == 3, tree
    assert svc.pid(s) == proc.pid
    assert down(s, timeout=5) == ["api"]
    assert not [p for p in tree if supervisor.alive(p)]
    assert not svc.pid_file(s).exists()


# ------------------------------------------------------------------ ml.platform (live services)
@pytest.mark.slow
def test_mlflow_server_starts_answers_and_stops(platform_env, own_service_databases, monkeypatch, tmp_path):
    for attempt in range(3):  # retried with another port if something takes it first
        s = _use(monkeypatch, SENTIMENT_VAR_DIR=str(tmp_path / f"var{attempt}"), SENTIMENT_MLFLOW_PORT=str(free_port()))
        try:
            info = start_mlflow(s, timeout=120)
            break
        except ServiceError as e:
            down(s)
            if not _conflict(str(e)) or attempt == 2:
                raise
    pid = info["pid"]
    try:
        assert info["started"] is True
        assert httpx.get(f"{info['url']}/health", timeout=5).status_code == 200
        assert (s.run_dir / "mlflow.url").read_text().strip() == info["url"]
        # idempotent: found, not started again
        again = start_mlflow(s)
        assert again["pid"] == pid and again["started"] is False
        st = status(s, quiet=True)
        assert st["supervisor"]["running"]
        m = st["services"]["mlflow"]
        assert m["running"] and m["healthy"] and m["pid"] == pid and m["supervised"] and m["restarts"] == 0
        tree = supervisor.tree(pid)
        assert pid in tree
    finally:
        stopped = down(s, timeout=15)
    assert stopped == ["supervisor", "mlflow"]
    assert not [p for p in tree if supervisor.alive(p)], "down() left MLflow processes behind"
    assert not (s.run_dir / "mlflow.url").exists()
    assert not supervisor.alive(pid)


@pytest.mark.slow
def test_supervisor_restarts_a_killed_api(platform_env, own_service_databases, monkeypatch, tmp_path):
    """kill -9 of the API: the supervisor starts it again and `status` counts the restart."""
    s, summary = _on_free_ports(
        monkeypatch, tmp_path, "mlflow,api", supervisor_env={"SMOPS_SUPERVISOR_BACKOFF_BASE": "0.5"}
    )
    new_pid = None
    try:
        assert summary["supervisor"]["running"]
        api = services(s)["api"]
        old = api.pid(s)
        assert old and summary["services"]["api"]["restarts"] == 0
        os.kill(old, 9)

        def back():
            x = status(s, quiet=True)["services"]["api"]
            if x["running"] and x["pid"] != old and x["restarts"] == 1:
                try:
                    return x if httpx.get(api.health, timeout=2).status_code == 200 else None
                except httpx.HTTPError:
                    return None
            return None

        x = _wait_for(back, 240, "the API to be restarted and answer")
        new_pid = x["pid"]
        assert x["last_exit"] == "killed by SIGKILL" and not x["crash_loop"]
        assert status(s, quiet=True)["services"]["mlflow"]["restarts"] == 0
        # `make status` (the CLI) shows the restart
        r = subprocess.run(
            [sys.executable, "-m", "ml.cli", "services", "status"],
            env=_cli_env(s),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("api "))
        assert "running" in line and "restarts 1" in line and "SIGKILL" in line, r.stdout
        assert "api: killed by SIGKILL" in (s.logs_dir / "supervisor.log").read_text()
    finally:
        stopped = down(s)
    assert stopped[0] == "supervisor" and {"api", "mlflow"} <= set(stopped)
    assert new_pid and not supervisor.alive(new_pid), "down() must not leave the restarted API behind"


@pytest.mark.slow
def test_a_service_that_always_crashes_ends_in_a_reported_crash_loop(
    platform_env, own_service_databases, monkeypatch, tmp_path
):
    """The API's port is held by this test, so the API exits at every start: after the allowed
    restarts the supervisor gives up and says so (state, `status`, its log)."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        # MLflow is not running: the API logs that and goes on (no retries), then fails to bind
        s = _use(
            monkeypatch,
            SENTIMENT_VAR_DIR=str(tmp_path / "var"),
            SENTIMENT_API_PORT=str(port),
            SENTIMENT_MLFLOW_PORT=str(free_port()),
        )
        try:
            ensure_supervisor(
                s,
                {
                    "SMOPS_SUPERVISOR_BACKOFF_BASE": "0.2",
                    "SMOPS_SUPERVISOR_BACKOFF_MAX": "1",
                    "SMOPS_SUPERVISOR_CRASH_LOOP_RESTARTS": "2",
                    "SMOPS_SUPERVISOR_CRASH_LOOP_WINDOW": "600",
                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
                },
            )
            want(s, ["api"])
            x = _wait_for(
                lambda: (lambda y: y if y["crash_loop"] else None)(status(s, quiet=True)["services"]["api"]),
                300,
                "the crash loop",
            )
            assert x["restarts"] == 2 and not x["running"]
            assert "crash loop" in x["error"] and x["last_exit"] == "exit code 3", x  # uvicorn: STARTUP_FAILURE
            assert "address already in use" in (s.logs_dir / "api.log").read_text().lower()
            assert "api: crash loop" in (s.logs_dir / "supervisor.log").read_text()
            # it stays down: a supervisor still trying would have started it again within the longest
            # backoff (1 s) plus a poll (0.5 s); wait twice that, then look at both the state and the log
            log_before = (s.logs_dir / "supervisor.log").read_text()
            time.sleep(2 * (1 + 0.5))
            assert status(s, quiet=True)["services"]["api"]["restarts"] == 2
            later = (s.logs_dir / "supervisor.log").read_text()[len(log_before) :]
            assert "api: started" not in later and "api: restarted" not in later, later
            r = subprocess.run(
                [sys.executable, "-m", "ml.cli", "services", "status"],
                env=_cli_env(s),
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert "CRASH LOOP" in r.stdout and "restarts 2" in r.stdout, r.stdout
        finally:
            down(s)


def _default_ports_holder(s) -> dict[str, str]:
    """{service: who} for each default port that something else holds."""
    return {
        n: supervisor.port_owner(svc.port)
        for n, svc in services(s).items()
        if svc.port and supervisor.port_open(s.host, svc.port)
    }


@pytest.mark.slow
def test_deploy_tests_run_beside_a_platform_on_the_default_ports(
    platform_env, own_service_databases, monkeypatch, tmp_path
):
    """`make test` while `make up` runs: MLflow and the API on the DEFAULT ports (5000, 8000)
    with their own var/, and the fast deploy tests run beside them in a separate pytest."""
    for k in ("SENTIMENT_API_PORT", "SENTIMENT_MLFLOW_PORT", "SENTIMENT_AIRFLOW_PORT", "SENTIMENT_HOST"):
        monkeypatch.delenv(k, raising=False)
    s = _use(monkeypatch, SENTIMENT_VAR_DIR=str(tmp_path / "var"))
    assert (s.api_port, s.mlflow_port) == (8000, 5000)
    started = False
    held = _default_ports_holder(s)
    if held:
        repo_platform = Settings(var_dir=REPO / "var", api_port=8000, mlflow_port=5000, airflow_port=8080)
        ours = {n for n in held if _running_pid(services(repo_platform)[n], repo_platform)}
        if set(held) - ours:
            msg = "default ports held by something that is not this platform: " + "; ".join(
                f"{n}: {w}" for n, w in held.items() if n not in ours
            )
            if in_ci():
                pytest.fail(msg)
            pytest.skip(msg)
        # the repository's own `make up` holds them: exactly the case to prove
    else:
        up(settings=s, only="mlflow,api", train=False)
        started = True
    try:
        before = {n: x["pid"] for n, x in status(s, quiet=True)["services"].items() if x["running"]}
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SENTIMENT_", "AIRFLOW__", "MLFLOW_", "PYTEST_"))
        }
        env["DATABASE_URL"] = os.environ["DATABASE_URL"]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/system/test_deploy.py",
                "-m",
                "not slow",
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        summary = r.stdout.strip().splitlines()[-1]
        assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
        # the platform beside them is untouched
        assert httpx.get("http://127.0.0.1:8000/health/live", timeout=5).status_code == 200
        assert httpx.get("http://127.0.0.1:5000/health", timeout=5).status_code == 200
        if started:
            after = {n: x["pid"] for n, x in status(s, quiet=True)["services"].items() if x["running"]}
            assert after == before and set(after) == {"mlflow", "api"}
    finally:
        if started:
            down(s)


@pytest.mark.slow
def test_first_up_offline_trains_on_the_bundled_sample_and_serves(platform_env, tmp_path):
    """A plain `ml services up` (no DATA=) without network: the Sentiment140 download fails (its
    HTTPS goes through a proxy at a 127.0.0.1 port the test holds bound and never listens on; this
    machine has no route out anyway), the first model is trained on the bundled real 20k sample, passes the gate
    (behavioural checks included) and /predict answers 200 with a label."""
    base = db.libpq_url(os.environ["DATABASE_URL"])
    name = f"smops_off_{uuid.uuid4().hex[:8]}"
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SENTIMENT_", "AIRFLOW__", "MLFLOW_", "PYTEST_")) and k not in ("DATA",)
    }
    r = env = None
    try:
        # the proxy: a port held by this test and never listening, so every HTTPS request is refused
        with refused_port() as proxy:
            for attempt in range(3):
                env = dict(clean)
                env.update(
                    {
                        "DATABASE_URL": db.with_database(base, name),
                        "SENTIMENT_MLFLOW_DATABASE": f"{name}_mlflow",
                        "SENTIMENT_AIRFLOW_DATABASE": f"{name}_airflow",
                        "SENTIMENT_VAR_DIR": str(tmp_path / f"var{attempt}"),
                        "SENTIMENT_API_PORT": str(free_port()),
                        "SENTIMENT_MLFLOW_PORT": str(free_port()),
                        "SENTIMENT_AIRFLOW_PORT": str(free_port()),
                        "HTTPS_PROXY": f"http://127.0.0.1:{proxy}",
                        "https_proxy": "",
                        "NO_PROXY": "127.0.0.1,localhost",
                        "no_proxy": "127.0.0.1,localhost",
                    }
                )
                env["https_proxy"] = env["HTTPS_PROXY"]
                r = subprocess.run(
                    [sys.executable, "-m", "ml.cli", "services", "up"],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=1800,
                )
                if r.returncode == 0 or not _conflict(r.stdout + r.stderr) or attempt == 2:
                    break
                subprocess.run([sys.executable, "-m", "ml.cli", "services", "down"], cwd=REPO, env=env, timeout=300)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-6000:]
        assert "BUNDLED SAMPLE" in out and "sentiment140_20k.csv" in out
        assert re.search(r"training success in .*champion: version \d+", out), out[-3000:]
        assert "Add type hints to the `predict` method" not in out
        api = f"http://127.0.0.1:{env['SENTIMENT_API_PORT']}"
        # `up` returned only once the API served the new champion: /predict answers at once, from
        # either worker, no waiting here
        version = int(re.search(r"API serving champion version (\d+)", out).group(1))
        for _ in range(8):
            p = httpx.post(f"{api}/predict", json={"text": "I love this, best day ever"}, timeout=30)
            assert p.status_code == 200, p.text[:300]
            assert p.json()["model_version"] == version and p.json()["label"] in ("positive", "negative"), p.json()
    finally:
        if env is not None:
            subprocess.run([sys.executable, "-m", "ml.cli", "services", "down"], cwd=REPO, env=env, timeout=300)
        with psycopg.connect(db.with_database(base, "postgres"), autocommit=True) as conn:
            for d in (name, f"{name}_mlflow", f"{name}_airflow"):
                conn.execute(f'DROP DATABASE IF EXISTS "{d}" WITH (FORCE)')
