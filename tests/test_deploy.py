"""Deployment artefacts: docker-compose.yaml, the Dockerfile, the Makefile, .ci/run, and
``ml.services`` (process management of `make up` / `make down`)."""
from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yaml"

CORE_SERVICES = {
    "postgres", "init", "mlflow", "api",
    "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
}  # fmt: skip
CELERY_SERVICES = {"redis", "airflow-worker"}
DEFAULT_PORTS = {"api": 8000, "airflow-api-server": 8080, "mlflow": 5000}


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
            # a service that always runs must not need one that only runs under a profile
            if not svc.get("profiles"):
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
        if name != "init":
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
        # every component must share the JWT secret, or tasks cannot call the execution API
        assert env.get("AIRFLOW__API_AUTH__JWT_SECRET"), name
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
    pins = (REPO / "docker" / "constraints-celery.txt").read_text()
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
    for db in ("sentiment", "mlflow", "airflow"):
        assert db in text or db in str(_env(_services(compose)["postgres"])), db


def test_dockerfile_installs_with_constraints():
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert "requirements/constraints.txt" in text
    assert re.search(r"pip install .*-c requirements/constraints.txt", text)
    assert text.lstrip().splitlines()[0].startswith("#") and "FROM python:3.11" in text


def test_shell_scripts_parse():
    for script in (REPO / ".ci" / "run", REPO / "scripts" / "bootstrap.sh", REPO / "docker" / "airflow-init.sh",
                   REPO / "docker" / "postgres" / "init-databases.sh"):
        shell = "bash" if "bash" in script.read_text().splitlines()[0] else "sh"
        r = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, (script, r.stderr)


# ------------------------------------------------------------------ Makefile and CI
@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
@pytest.mark.parametrize("target", ["env", "up", "down", "status", "test", "bench", "lint"])
def test_make_targets_parse(target):
    r = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_up_passes_data_through():
    r = subprocess.run(["make", "-n", "up", "DATA=some/file.csv", "TRAIN=0"], cwd=REPO, capture_output=True,
                       text=True, timeout=30)  # fmt: skip
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


# ------------------------------------------------------------------ ml.services (fast)
def test_pid_files_are_trusted_only_for_our_processes(platform_env, tmp_path):
    from ml import services

    svc = services.services(platform_env)["mlflow"]
    platform_env.run_dir.mkdir(parents=True, exist_ok=True)
    svc.pid_file(platform_env).write_text(f"{os.getpid()}\n")  # alive, but not ours
    assert svc.pid(platform_env) is None
    assert not svc.pid_file(platform_env).exists(), "a stale pid file is removed"
    svc.pid_file(platform_env).write_text("999999999\n")  # dead
    assert svc.pid(platform_env) is None


def test_status_and_down_when_nothing_runs(platform_env):
    from ml import services

    st = services.status(platform_env, quiet=True)
    assert set(st["services"]) == set(services.SERVICE_NAMES)
    assert not any(x["running"] for x in st["services"].values())
    assert st["postgres"]["embedded"] is False
    assert services.down(platform_env) == []


def test_airflow_password_is_generated_once_and_private(platform_env):
    from ml import services
    from ml.orchestration import airflow_env

    user, pw = services.airflow_credentials(platform_env)
    path = services.airflow_password_file(platform_env)
    assert user == "admin" and len(pw) == 16
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert services.airflow_credentials(platform_env) == (user, pw)
    # Airflow is told to read exactly this file
    env = airflow_env(platform_env, base={})
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(path)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(":")[0] == user


def test_foreign_process_on_a_port_is_reported(platform_env, monkeypatch):
    from ml import services
    from ml.config import get_settings, reset_settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        monkeypatch.setenv("SENTIMENT_API_PORT", str(port))
        reset_settings()
        try:
            with pytest.raises(services.ServiceError, match=f"{port}.*SENTIMENT_API_PORT"):
                services.check_ports(get_settings())
        finally:
            monkeypatch.undo()
            reset_settings()


def test_down_kills_the_whole_session(platform_env, tmp_path):
    """A service's children, including one that started its own session, all go."""
    from ml import services

    svc = services.services(platform_env)["api"]
    script = "import subprocess, sys, time; subprocess.Popen(['sleep', '300']); " \
             "subprocess.Popen(['sleep', '301'], start_new_session=True); time.sleep(300)"  # fmt: skip
    env = dict(os.environ)
    pid = services._start(svc, [services.sys.executable, "-c", script], env, platform_env)
    deadline = time.monotonic() + 10
    while len(services._tree(pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    tree = services._tree(pid)
    assert len(tree) == 3, tree
    assert svc.pid(platform_env) == pid
    assert services.down(platform_env, timeout=5) == ["api"]
    assert not [p for p in tree if services._alive(p)]
    assert not svc.pid_file(platform_env).exists()


# ------------------------------------------------------------------ ml.services (live MLflow)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server_starts_answers_and_stops(platform_env, monkeypatch):
    import httpx

    from ml import services
    from ml.config import get_settings, reset_settings

    monkeypatch.setenv("SENTIMENT_MLFLOW_PORT", str(_free_port()))
    reset_settings()
    s = get_settings()
    pid = None
    try:
        info = services.start_mlflow(s, timeout=80)
        pid = info["pid"]
        assert info["started"] is True
        assert httpx.get(f"{info['url']}/health", timeout=5).status_code == 200
        assert (s.run_dir / "mlflow.url").read_text().strip() == info["url"]
        # idempotent: found, not started again
        again = services.start_mlflow(s)
        assert again["pid"] == pid and again["started"] is False
        st = services.status(s, quiet=True)["services"]["mlflow"]
        assert st["running"] and st["healthy"] and st["pid"] == pid
        tree = services._tree(pid)
        assert pid in tree
    finally:
        stopped = services.down(s, timeout=15)
        monkeypatch.undo()
        reset_settings()
    assert stopped == ["mlflow"]
    assert not [p for p in tree if services._alive(p)], "down() left MLflow processes behind"
    assert not (s.run_dir / "mlflow.url").exists()
    assert pid and not services._alive(pid)
