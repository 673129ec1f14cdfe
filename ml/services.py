"""Start, stop and inspect the platform's long-running processes (``make up`` / ``make down``).

What ``up`` runs, each detached in its own session (``start_new_session=True``), with its pid
in ``var/run/<name>.pid`` and its output in ``var/logs/<name>.log``:

===================== ==================================================================
mlflow                ``mlflow server`` on ``mlflow_port`` (backend: PostgreSQL db ``mlflow``)
airflow-api-server    Airflow UI + REST API + task execution API on ``airflow_port``
airflow-scheduler     LocalExecutor scheduler (runs the tasks)
airflow-dag-processor parses ``dags/``
airflow-triggerer     deferrable tasks
api                   ``uvicorn api.main:app`` on ``api_port``
===================== ==================================================================

PostgreSQL is either the one named by ``DATABASE_URL`` or the embedded server under
``var/pg`` (:func:`ml.db.database_url` starts it); ``down`` stops the embedded one only.

A pid file is trusted only when the process is alive and carries our marker in its
environment (``SMOPS_SERVICE=<name>@<var dir>``), so a recycled pid is never killed.
``down`` signals every process of the service's session and every descendant of its
leader (tasks run in their own process groups; BashOperator commands in their own
sessions), SIGTERM first, SIGKILL after a timeout. Data (databases, artifacts, logs) is kept.

Airflow login: the simple auth manager reads passwords from
``var/airflow/simple_auth_manager_passwords.json.generated``; ``up`` writes a random password
for the configured user there (mode 0600) before the first start, so it can print it;
afterwards the file is the source of truth (edit it and restart to change the password).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ml.config import REPO_ROOT, Settings, get_settings

TRAINING_DAG = "sentiment_training"
MLFLOW_WORKERS = os.environ.get("SENTIMENT_MLFLOW_WORKERS", "2")
STOP_TIMEOUT = float(os.environ.get("SENTIMENT_STOP_TIMEOUT", "20"))

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
SERVICE_NAMES = ("mlflow", *(f"airflow-{c}" for c in AIRFLOW_COMPONENTS), "api")


class ServiceError(RuntimeError):
    """A service could not be started, or the training run failed."""


def runtime_dir() -> str:
    """An XDG_RUNTIME_DIR that platformdirs accepts silently (exists, mode 0700, ours)."""
    cur = os.environ.get("XDG_RUNTIME_DIR")
    try:
        if cur and (os.stat(cur).st_mode & 0o777) == 0o700 and os.stat(cur).st_uid == os.getuid():
            return cur
    except OSError:
        pass
    path = Path(f"/tmp/runtime-{os.getuid()}")
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return str(path)


def say(msg: str) -> None:
    print(msg, flush=True)


# ======================================================================= process helpers
def _bin(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (the venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"`{name}` not found next to {sys.executable} nor on PATH; run `make env`")
    return found


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, sid) of ``pid`` from /proc, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[2]), int(rest[3])


def _alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _tree(leader: int) -> set[int]:
    """Live processes of ``leader``'s session plus all of its descendants."""
    stats = {}
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st is not None and st[0] not in ("Z", "X"):
            stats[pid] = st
    members = {pid for pid, st in stats.items() if st[3] == leader}
    if leader in stats:
        members.add(leader)
    # descendants (covers children that started their own session)
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(st[1], []).append(pid)
    todo = [leader]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in members:
                members.add(c)
                todo.append(c)
    return members


def _marker(name: str, s: Settings) -> str:
    return f"{name}@{s.var.resolve()}"


_KEYWORDS = {"mlflow": ("mlflow",), "api": ("uvicorn", "api.main")}


def _is_ours(pid: int, name: str, s: Settings) -> bool:
    """``pid`` is the live session leader we started for ``name``: it leads its own session
    and carries our marker in its environment, or (where a process rewrote its environ
    block with setproctitle, as Airflow's do) its command line names the service."""
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X") or st[3] != pid:
        return False
    try:
        if f"SMOPS_SERVICE={_marker(name, s)}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return True
    except OSError:
        pass
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if name.startswith("airflow-"):
        comp = name.removeprefix("airflow-")
        return "airflow" in cmd and (comp in cmd or comp.replace("-", "_") in cmd)
    return all(k in cmd for k in _KEYWORDS.get(name, (name,)))


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_owner(port: int) -> str:
    """Best effort: 'pid NNN (cmd)' of the process listening on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f[9])
    if not inodes:
        return "an unknown process"
    for pid in _all_pids():
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    return f"pid {pid} ({cmd.strip()[:100]})"
        except OSError:
            continue
    return "another user's process"


def _http_get(url: str, timeout: float = 3.0, headers: dict[str, str] | None = None):
    import httpx

    return httpx.get(url, timeout=timeout, headers=headers)


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in lines[-n:])


# ======================================================================= services
@dataclass
class Service:
    name: str
    port: int | None = None
    url: str | None = None
    health: str | None = None  # full URL answering 200 when ready

    def pid_file(self, s: Settings) -> Path:
        return s.run_dir / f"{self.name}.pid"

    def log_file(self, s: Settings) -> Path:
        return s.logs_dir / f"{self.name}.log"

    def pid(self, s: Settings) -> int | None:
        """The pid of our running process, or None (a stale pid file is removed)."""
        f = self.pid_file(s)
        try:
            pid = int(f.read_text().strip())
        except (OSError, ValueError):
            return None
        if _is_ours(pid, self.name, s):
            return pid
        f.unlink(missing_ok=True)
        return None


def services(s: Settings | None = None) -> dict[str, Service]:
    s = s or get_settings()
    h = s.host
    mlflow_url = f"http://{h}:{s.mlflow_port}"
    airflow_url = f"http://{h}:{s.airflow_port}"
    api_url = f"http://{h}:{s.api_port}"
    out = {"mlflow": Service("mlflow", s.mlflow_port, mlflow_url, f"{mlflow_url}/health")}
    for c in AIRFLOW_COMPONENTS:
        api = c == "api-server"
        out[f"airflow-{c}"] = Service(
            f"airflow-{c}",
            s.airflow_port if api else None,
            airflow_url if api else None,
            f"{airflow_url}/api/v2/monitor/health" if api else None,
        )
    out["api"] = Service("api", s.api_port, api_url, f"{api_url}/health")
    return out


_popen: dict[str, subprocess.Popen] = {}  # children started by this process (reaped on exit checks)


def _start(svc: Service, argv: list[str], env: dict[str, str], s: Settings) -> int:
    """Start ``argv`` detached in its own session; returns its pid."""
    s.run_dir.mkdir(parents=True, exist_ok=True)
    s.logs_dir.mkdir(parents=True, exist_ok=True)
    if svc.port is not None and _port_open(s.host, svc.port):
        raise ServiceError(
            f"{svc.name}: port {s.host}:{svc.port} is already in use by {_port_owner(svc.port)}, "
            f"which is not one of ours. Stop it or choose another port ({_port_env(svc.name)}=...)."
        )
    env = dict(env)
    env["SMOPS_SERVICE"] = _marker(svc.name, s)
    env["XDG_RUNTIME_DIR"] = runtime_dir()
    env["PYTHONUNBUFFERED"] = "1"
    log = svc.log_file(s).open("ab")
    log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
    log.flush()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT),
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        log.close()
    _popen[svc.name] = proc
    svc.pid_file(s).write_text(f"{proc.pid}\n")
    return proc.pid


def _port_env(name: str) -> str:
    return "SENTIMENT_" + ("MLFLOW" if name == "mlflow" else "API" if name == "api" else "AIRFLOW") + "_PORT"


def check_ports(s: Settings) -> None:
    """Fail before starting anything if a port we need is held by a process that isn't ours."""
    problems = []
    for svc in services(s).values():
        if svc.port is not None and not svc.pid(s) and _port_open(s.host, svc.port):
            problems.append(f"  {svc.name}: {s.host}:{svc.port} is in use by {_port_owner(svc.port)} "
                            f"(choose another with {_port_env(svc.name)}=...)")
    if problems:
        raise ServiceError("ports taken by something that is not this platform:\n" + "\n".join(problems))


def _exited(svc: Service, pid: int) -> bool:
    proc = _popen.get(svc.name)
    if proc is not None and proc.pid == pid:
        return proc.poll() is not None
    return not _alive(pid)


def _wait_http(
    svc: Service,
    pid: int,
    s: Settings,
    timeout: float,
    ready: Callable[[Any], bool] | None = None,
    describe: Callable[[Any], str] | None = None,
    companions: list[tuple[Service, int]] = (),
) -> None:
    """Wait until ``svc.health`` answers 200 (and ``ready(response)``), or fail with the log
    of whichever of ``svc`` and its ``companions`` exited meanwhile."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    next_note = time.monotonic() + 15
    while time.monotonic() < deadline:
        for each, each_pid in [(svc, pid), *companions]:
            if _exited(each, each_pid):
                each.pid_file(s).unlink(missing_ok=True)
                raise ServiceError(
                    f"{each.name} exited during start-up; last lines of {each.log_file(s)}:\n{_tail(each.log_file(s))}"
                )
        try:
            r = _http_get(svc.health, timeout=3)
            if r.status_code == 200 and (ready is None or ready(r)):
                return
            last = f"HTTP {r.status_code}" + (f": {describe(r)}" if describe and r.status_code == 200 else "")
        except Exception as e:  # noqa: BLE001 - not up yet
            last = type(e).__name__
        if time.monotonic() > next_note:
            say(f"      ... still waiting for {svc.name} ({last})")
            next_note = time.monotonic() + 15
        time.sleep(1)
    raise ServiceError(
        f"{svc.name} did not become ready within {timeout:.0f}s ({last}); "
        f"last lines of {svc.log_file(s)}:\n{_tail(svc.log_file(s))}"
    )


# ----------------------------------------------------------------------- environments
def _platform_env(s: Settings, db_url: str, mlflow_url: str | None) -> dict[str, str]:
    """Environment for the API (and anything else of ours): same settings as this process."""
    from ml import db

    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": db_url,
            "SENTIMENT_VAR_DIR": str(s.var),
            "SENTIMENT_MLFLOW_DATABASE": db.database_name(db.mlflow_backend_url(s)),
            "SENTIMENT_AIRFLOW_DATABASE": db.database_name(db.airflow_db_url(s)),
            "PYTHONPATH": os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p),
            "XDG_RUNTIME_DIR": runtime_dir(),
            "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
        }
    )
    if mlflow_url:
        env["MLFLOW_TRACKING_URI"] = mlflow_url
    return env


def _airflow_env(s: Settings, mlflow_url: str | None) -> dict[str, str]:
    from ml.orchestration import airflow_env

    env = airflow_env(s)
    if mlflow_url and not s.mlflow_tracking_uri:
        env["MLFLOW_TRACKING_URI"] = mlflow_url
    return env


# ----------------------------------------------------------------------- Airflow login
def airflow_user(s: Settings | None = None) -> str:
    """The (first) user of Airflow's simple auth manager, as ``airflow_env`` configures it."""
    from ml.orchestration import SIMPLE_AUTH_MANAGER_USERS

    return SIMPLE_AUTH_MANAGER_USERS.split(",")[0].split(":")[0].strip()


def airflow_password_file(s: Settings | None = None) -> Path:
    from ml.orchestration import SIMPLE_AUTH_MANAGER_PASSWORDS_FILE, airflow_home

    return airflow_home(s or get_settings()) / SIMPLE_AUTH_MANAGER_PASSWORDS_FILE


def airflow_credentials(s: Settings | None = None, create: bool = True) -> tuple[str, str | None]:
    """(username, password) for the Airflow UI/API. With ``create``, a random password is
    generated for the user and stored (0600) when the passwords file has none, exactly where
    Airflow's simple auth manager reads it; Airflow then uses it instead of generating one."""
    s = s or get_settings()
    user = airflow_user(s)
    path = airflow_password_file(s)
    passwords: dict[str, str] = {}
    if path.exists():
        try:
            passwords = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError:
            passwords = {}
    if user in passwords:
        return user, passwords[user]
    if not create:
        return user, None
    alphabet = "abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789"
    passwords[user] = "".join(secrets.choice(alphabet) for _ in range(16))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(passwords) + "\n")
    return user, passwords[user]


def airflow_token(s: Settings | None = None) -> str:
    """A JWT for Airflow's REST API (``POST /auth/token``)."""
    import httpx

    s = s or get_settings()
    user, password = airflow_credentials(s, create=False)
    if password is None:
        raise ServiceError(f"no Airflow password for {user!r} in {airflow_password_file(s)}")
    r = httpx.post(
        f"http://{s.host}:{s.airflow_port}/auth/token", json={"username": user, "password": password}, timeout=10
    )
    if r.status_code not in (200, 201):
        raise ServiceError(f"Airflow login as {user!r} failed: HTTP {r.status_code} {r.text[:200]}")
    return r.json()["access_token"]


# ======================================================================= start steps
def _step(n: int, title: str) -> float:
    say(f"[{n}/6] {title}")
    return time.monotonic()


def start_postgres(s: Settings) -> str:
    from ml import db

    url = db.database_url(s)
    applied = db.migrate(url)
    where = "embedded (data in %s)" % (s.var / "pg") if not s.database_url else "DATABASE_URL"
    say(f"      PostgreSQL: {_safe_url(url)} [{where}]; migrations applied now: {', '.join(applied) or 'none pending'}")
    return url


def _safe_url(url: str) -> str:
    """The URL without its password, for printing."""
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    if p.password:
        netloc = f"{p.username}:***@{p.hostname}" + (f":{p.port}" if p.port else "")
        return urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))
    return url


def launch_mlflow(s: Settings) -> tuple[Service, int, bool]:
    """Start the MLflow server unless ours already runs; returns (service, pid, started_now)."""
    from ml import db

    svc = services(s)["mlflow"]
    pid = svc.pid(s)
    if pid:
        return svc, pid, False
    (s.run_dir / "mlflow.url").unlink(missing_ok=True)
    backend = db.mlflow_backend_url(s)
    db.ensure_database(backend)
    s.artifacts_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        _bin("mlflow"), "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", str(s.artifacts_dir.resolve()),
        "--host", s.host,
        "--port", str(s.mlflow_port),
        "--workers", MLFLOW_WORKERS,
    ]  # fmt: skip
    env = _platform_env(s, db.database_url(s), None)
    env.pop("MLFLOW_TRACKING_URI", None)
    # MLflow 3's GenAI job runner (7 huey consumer processes, ~1.5 GB) is not used here
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return svc, _start(svc, argv, env, s), True


def wait_mlflow(svc: Service, pid: int, s: Settings, timeout: float = 120) -> str:
    _wait_http(svc, pid, s, timeout)
    # /health is exempt from MLflow's host validation: check a real API call as well
    r = _http_get(f"{svc.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    if r.status_code != 200:
        raise ServiceError(f"MLflow answers /health but its API refused a request: HTTP {r.status_code} {r.text[:200]}")
    (s.run_dir / "mlflow.url").write_text(svc.url + "\n")
    return svc.url


def start_mlflow(s: Settings | None = None, timeout: float = 120) -> dict[str, Any]:
    """Start (or find) the MLflow server and wait for it; writes ``var/run/mlflow.url``."""
    s = s or get_settings()
    svc, pid, started = launch_mlflow(s)
    wait_mlflow(svc, pid, s, timeout)
    return {"name": svc.name, "pid": pid, "url": svc.url, "started": started}


def airflow_db_migrate(s: Settings, env: dict[str, str]) -> None:
    log = s.logs_dir / "airflow-db-migrate.log"
    s.logs_dir.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} airflow db migrate\n".encode())
        f.flush()
        rc = subprocess.run(
            [_bin("airflow"), "db", "migrate"], env=env, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL,
            stdout=f, stderr=subprocess.STDOUT, check=False,
        ).returncode  # fmt: skip
    if rc != 0:
        raise ServiceError(f"`airflow db migrate` failed (exit {rc}); last lines of {log}:\n{_tail(log)}")


def launch_airflow(s: Settings, mlflow_url: str | None) -> dict[str, tuple[Service, int, bool]]:
    """Migrate Airflow's database (when none of its components runs) and start the missing
    components. Returns {name: (service, pid, started_now)}."""
    svcs = services(s)
    running = {f"airflow-{c}": svcs[f"airflow-{c}"].pid(s) for c in AIRFLOW_COMPONENTS}
    env = _airflow_env(s, mlflow_url)
    airflow_credentials(s, create=True)  # before the API server first reads the file
    if not any(running.values()):
        airflow_db_migrate(s, env)
    out = {}
    for c in AIRFLOW_COMPONENTS:
        name = f"airflow-{c}"
        svc = svcs[name]
        if running[name]:
            out[name] = (svc, running[name], False)
            continue
        argv = [_bin("airflow"), c]
        if c == "api-server":
            argv += ["--host", s.host, "--port", str(s.airflow_port)]
        out[name] = (svc, _start(svc, argv, env, s), True)
    return out


def _airflow_health_ready(r) -> bool:
    body = r.json()
    return all((body.get(k) or {}).get("status") == "healthy" for k in ("metadatabase", "scheduler", "triggerer", "dag_processor"))


def _airflow_health_describe(r) -> str:
    try:
        body = r.json()
        return ", ".join(f"{k}={(v or {}).get('status')}" for k, v in body.items())
    except Exception:  # noqa: BLE001
        return r.text[:100]


def wait_airflow(launched: dict[str, tuple[Service, int, bool]], s: Settings, timeout: float = 180) -> None:
    svc, pid, _ = launched["airflow-api-server"]
    others = [(o, opid) for name, (o, opid, _) in launched.items() if name != "airflow-api-server"]
    _wait_http(svc, pid, s, timeout, ready=_airflow_health_ready, describe=_airflow_health_describe,
               companions=others)
    for name, (other, opid, _) in launched.items():
        if _exited(other, opid):
            raise ServiceError(f"{name} exited; last lines of {other.log_file(s)}:\n{_tail(other.log_file(s))}")
    airflow_token(s)  # the login works


def launch_api(s: Settings, db_url: str, mlflow_url: str | None) -> tuple[Service, int, bool]:
    svc = services(s)["api"]
    pid = svc.pid(s)
    if pid:
        return svc, pid, False
    argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", s.host, "--port", str(s.api_port)]
    return svc, _start(svc, argv, _platform_env(s, db_url, mlflow_url), s), True


# ======================================================================= training
def _airflow_api(s: Settings, method: str, path: str, token: str, **kw):
    import httpx

    r = httpx.request(
        method, f"http://{s.host}:{s.airflow_port}/api/v2{path}", headers={"Authorization": f"Bearer {token}"},
        timeout=30, **kw,
    )  # fmt: skip
    return r


def trigger_training(
    data_path: Path, s: Settings | None = None, wait: bool = True, dag_id: str = TRAINING_DAG,
    poll: float = 5.0, dag_timeout: float = 180, run_timeout: float = 6 * 3600,
) -> dict[str, Any]:  # fmt: skip
    """Trigger ``dag_id`` with ``{"data_path": ...}`` through Airflow's REST API and, with
    ``wait``, follow it to the end, printing the task states. Raises ServiceError on failure."""
    s = s or get_settings()
    token = airflow_token(s)
    # the DAG must have been parsed by the dag-processor
    deadline = time.monotonic() + dag_timeout
    while True:
        r = _airflow_api(s, "GET", f"/dags/{dag_id}", token)
        if r.status_code == 200:
            dag = r.json()
            break
        if time.monotonic() > deadline:
            errs = _airflow_api(s, "GET", "/importErrors", token)
            detail = ""
            if errs.status_code == 200:
                for e in errs.json().get("import_errors", []):
                    detail += f"\n    {e.get('filename')}: {str(e.get('stack_trace', ''))[-600:]}"
            raise ServiceError(
                f"DAG {dag_id!r} is not known to Airflow after {dag_timeout:.0f}s (HTTP {r.status_code}). "
                f"Import errors:{detail or ' none reported'}\n  dag-processor log: {s.logs_dir / 'airflow-dag-processor.log'}"
            )
        time.sleep(2)
    if dag.get("is_paused"):
        _airflow_api(s, "PATCH", f"/dags/{dag_id}", token, json={"is_paused": False}).raise_for_status()
        say(f"      unpaused DAG {dag_id}")
    body = {"logical_date": None, "conf": {"data_path": str(Path(data_path).resolve())}, "note": "triggered by `ml services up`"}
    r = _airflow_api(s, "POST", f"/dags/{dag_id}/dagRuns", token, json=body)
    if r.status_code not in (200, 201):
        raise ServiceError(f"triggering {dag_id} failed: HTTP {r.status_code} {r.text[:300]}")
    run_id = r.json()["dag_run_id"]
    ui = f"http://{s.host}:{s.airflow_port}/dags/{dag_id}/runs/{run_id}"
    say(f"      triggered {dag_id} run {run_id}\n      follow it at {ui}")
    result = {"dag_id": dag_id, "run_id": run_id, "url": ui, "state": "queued"}
    if not wait:
        return result
    started = time.monotonic()
    last_line = ""
    last_print = 0.0
    while True:
        r = _airflow_api(s, "GET", f"/dags/{dag_id}/dagRuns/{run_id}", token)
        if r.status_code == 401:  # token expired on a very long run
            token = airflow_token(s)
            continue
        r.raise_for_status()
        state = r.json()["state"]
        tis = _airflow_api(s, "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", token)
        tasks = tis.json().get("task_instances", []) if tis.status_code == 200 else []
        line = ", ".join(f"{t['task_id']}={t.get('state') or 'none'}" for t in sorted(tasks, key=lambda t: t.get("start_date") or "~"))
        now = time.monotonic()
        if line != last_line or now - last_print > 30:
            say(f"      [{now - started:5.0f}s] run {state}: {line or '(no tasks yet)'}")
            last_line, last_print = line, now
        if state in ("success", "failed"):
            break
        if now - started > run_timeout:
            raise ServiceError(f"{dag_id} run {run_id} still {state} after {run_timeout:.0f}s; see {ui}")
        time.sleep(poll)
    result["state"] = state
    result["seconds"] = round(time.monotonic() - started, 1)
    if state != "success":
        failed = [t for t in tasks if t.get("state") == "failed"]
        others = [t for t in tasks if t.get("state") not in ("success", "failed")]
        logs = s.logs_dir / "airflow" / f"dag_id={dag_id}" / f"run_id={run_id}"
        lines = []
        for t in failed:
            log = logs / f"task_id={t['task_id']}" / f"attempt={t.get('try_number') or 1}.log"
            lines.append(f"  task {t['task_id']} failed: {_task_error(log)}\n    log: {log}")
        if others:
            lines.append("  not run: " + ", ".join(f"{t['task_id']} ({t.get('state')})" for t in others))
        raise ServiceError(f"training run {run_id} FAILED\n" + "\n".join(lines) + f"\n  UI: {ui}")
    return result


def _task_error(log: Path) -> str:
    """The exception recorded in an Airflow 3 task log (JSON lines), best effort."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(log not found)"
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("level") == "error":
            details = rec.get("error_detail") or []
            if details:
                d = details[-1]
                return f"{d.get('exc_type')}: {str(d.get('exc_value'))[:500]}"
            return str(rec.get("event"))[:500]
    return "(no error recorded in the log)"


def _champion(s: Settings):
    from ml import registry, tracking

    tracking.configure(s)
    return registry.champion(s)


# ======================================================================= up / down / status
def up(
    data: str | None = None, train: bool = True, wait: bool = True, force_train: bool = False,
    settings: Settings | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Start whatever is not running yet, train a first model if there is no champion, print
    how to reach everything. Safe to re-run. Returns a summary dict.

    ``wait``: follow the training run to its end (else trigger it and return).
    ``force_train``: train even when a champion already exists."""
    s = settings or get_settings()
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    say(f"Starting the platform (state in {s.var})")
    check_ports(s)

    t = _step(1, "PostgreSQL")
    db_url = start_postgres(s)
    timings["postgres"] = time.monotonic() - t

    t = _step(2, "MLflow tracking server")
    mlflow_svc, mlflow_pid, started = launch_mlflow(s)
    mlflow_url = mlflow_svc.url
    say(f"      {'started' if started else 'already running'}: pid {mlflow_pid}, {mlflow_url}")

    # Airflow's migration runs while MLflow boots
    t3 = _step(3, "Airflow (db migrate, api-server, scheduler, dag-processor, triggerer)")
    launched = launch_airflow(s, mlflow_url)
    for name, (svc, pid, st) in launched.items():
        say(f"      {name}: {'started' if st else 'already running'} (pid {pid})")
    wait_mlflow(mlflow_svc, mlflow_pid, s)
    timings["mlflow"] = time.monotonic() - t
    say(f"      MLflow ready: {mlflow_url}")

    t4 = time.monotonic()
    api_svc, api_pid, api_started = launch_api(s, db_url, mlflow_url)
    wait_airflow(launched, s)
    user, password = airflow_credentials(s, create=False)
    timings["airflow"] = time.monotonic() - t3
    say(f"      Airflow ready: {launched['airflow-api-server'][0].url} (login {user} / {password})")

    _step(4, "Sentiment API")
    say(f"      {'started' if api_started else 'already running'}: pid {api_pid}, {api_svc.url}")
    _wait_http(api_svc, api_pid, s, timeout=120)
    timings["api"] = time.monotonic() - t4
    say(f"      API ready: {api_svc.url}")

    t = _step(5, "First model")
    training: dict[str, Any] | None = None
    if not train:
        say("      skipped (--no-train)")
    else:
        champ = _champion(s)
        if champ is not None and not force_train:
            say(f"      champion already registered (version {champ.version}); skipping training (--force-train to retrain)")
            training = {"skipped": True, "champion_version": champ.version}
        else:
            try:
                from ml.data import default_source

                path = default_source(data, s)
            except Exception as e:  # noqa: BLE001 - bad DATA=, unreadable file, ...
                raise ServiceError(f"no training data: {e}") from e
            say(f"      training data: {path}")
            training = trigger_training(path, s, wait=wait)
            if wait:
                champ = _champion(s)
                say(f"      training {training['state']} in {training['seconds']}s; champion: "
                    f"{'version %s' % champ.version if champ else 'none (the candidate was not promoted)'}")
    timings["training"] = time.monotonic() - t
    timings["total"] = time.monotonic() - t0

    st = status(s, quiet=True)
    summary = {
        "database_url": _safe_url(db_url),
        "api": api_svc.url,
        "api_docs": f"{api_svc.url}/docs",
        "web": f"{api_svc.url}/",
        "airflow": {"url": launched["airflow-api-server"][0].url, "username": user, "password": password},
        "mlflow": mlflow_url,
        "logs": str(s.logs_dir),
        "services": st["services"],
        "training": training,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    _print_summary(summary)
    return summary


def _print_summary(x: dict[str, Any]) -> None:
    bar = "=" * 72
    say(
        f"\n{bar}\n"
        f"  Sentiment platform is up ({x['timings_s']['total']:.0f}s)\n"
        f"  Web page        {x['web']}\n"
        f"  API docs        {x['api_docs']}\n"
        f"  Airflow UI      {x['airflow']['url']}   user {x['airflow']['username']}  password {x['airflow']['password']}\n"
        f"  MLflow UI       {x['mlflow']}\n"
        f"  PostgreSQL      {x['database_url']}\n"
        f"  Logs            {x['logs']}/  (mlflow.log, airflow-*.log, api.log; task logs in airflow/)\n"
        f"  Stop            make down   (data is kept; `make up` again resumes)\n"
        f"  Timings         {', '.join(f'{k} {v:.0f}s' for k, v in x['timings_s'].items() if k != 'total')}\n"
        f"{bar}"
    )


def down(settings: Settings | None = None, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop everything ``up`` started (API first, MLflow last), then the embedded PostgreSQL
    if the platform uses it. Keeps all data. Returns the names of what was stopped."""
    s = settings or get_settings()
    svcs = services(s)
    leaders: dict[str, int] = {}
    for name in reversed(SERVICE_NAMES):
        pid = svcs[name].pid(s)
        if pid:
            leaders[name] = pid
    stopped: list[str] = []
    if leaders:
        # SIGTERM to every process of every service at once, then wait; SIGKILL stragglers
        members = {name: _tree(pid) for name, pid in leaders.items()}
        for name, pids in members.items():
            say(f"stopping {name} (pid {leaders[name]}, {len(pids)} process{'es' if len(pids) != 1 else ''})")
            _signal_all(pids, signal.SIGTERM)
        t0 = time.monotonic()
        deadline = t0 + timeout
        pending = set(members)
        while time.monotonic() < deadline:
            _reap()
            for n in sorted(pending):
                if not _still_alive(members[n], leaders[n]):
                    pending.discard(n)
                    say(f"  {n} stopped ({time.monotonic() - t0:.1f}s)")
            if not pending:
                break
            time.sleep(0.3)
        else:
            for name, pids in members.items():
                left = _still_alive(pids, leaders[name])
                if left:
                    say(f"  {name}: {len(left)} process(es) ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
                    _signal_all(left, signal.SIGKILL)
            time.sleep(0.5)
            _reap()
        for name in leaders:
            svcs[name].pid_file(s).unlink(missing_ok=True)
            stopped.append(name)
    (s.run_dir / "mlflow.url").unlink(missing_ok=True)
    if not s.database_url:
        from ml import db

        if db.stop_embedded_postgres(s):
            say("stopped embedded PostgreSQL (data kept in %s)" % (s.var / "pg"))
            stopped.append("postgres")
    if not stopped:
        say("nothing was running")
    return stopped


def _still_alive(pids: set[int], leader: int) -> set[int]:
    return {p for p in pids if _alive(p)} | _tree(leader)


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap() -> None:
    for proc in _popen.values():
        proc.poll()


def status(settings: Settings | None = None, quiet: bool = False) -> dict[str, Any]:
    """What runs: {services: {name: {running, pid, url, healthy, log}}, postgres: {...}}."""
    s = settings or get_settings()
    out: dict[str, Any] = {"services": {}}
    for name, svc in services(s).items():
        pid = svc.pid(s)
        healthy = None
        if pid and svc.health:
            try:
                healthy = _http_get(svc.health, timeout=2).status_code == 200
            except Exception:  # noqa: BLE001
                healthy = False
        out["services"][name] = {
            "running": bool(pid), "pid": pid, "url": svc.url, "healthy": healthy, "log": str(svc.log_file(s)),
        }  # fmt: skip
    from ml import db

    if s.database_url:
        out["postgres"] = {"url": _safe_url(db.libpq_url(s.database_url)), "embedded": False}
    else:
        url_file = db.embedded_url_path(s)
        url = url_file.read_text().strip() if url_file.exists() else None
        out["postgres"] = {"url": url, "embedded": True, "running": bool(url) and db._is_reachable(url)}
    if not quiet:
        for name, x in out["services"].items():
            state = "running" if x["running"] else "stopped"
            if x["running"] and x["healthy"] is False:
                state = "running (not answering)"
            say(f"{name:22s} {state:24s} {('pid %s' % x['pid']) if x['pid'] else '':10s} {x['url'] or ''}")
        pg = out["postgres"]
        pg_state = "external" if not pg["embedded"] else ("running" if pg.get("running") else "stopped")
        say(f"{'postgres':22s} {pg_state:24s} {'':10s} {pg['url'] or ''}")
    return out


# ======================================================================= command line
def main(argv: list[str] | None = None) -> int:
    os.environ["XDG_RUNTIME_DIR"] = runtime_dir()
    p = argparse.ArgumentParser(prog="python -m ml.services", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start everything (idempotent) and train a first model")
    u.add_argument("--data", default=os.environ.get("DATA") or None, help="training CSV (default: $DATA, else download/demo)")
    u.add_argument("--no-train", dest="train", action="store_false", help="do not train a first model")
    u.add_argument("--force-train", action="store_true", default=os.environ.get("FORCE_TRAIN", "") not in ("", "0"),
                   help="train even if a champion exists (env FORCE_TRAIN=1)")
    u.add_argument("--no-wait", dest="wait", action="store_false", help="trigger training and return")
    sub.add_parser("down", help="stop everything (data is kept)")
    st = sub.add_parser("status", help="what runs")
    st.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.cmd == "up":
            up(data=a.data, train=a.train, wait=a.wait, force_train=a.force_train)
        elif a.cmd == "down":
            down()
        else:
            x = status(quiet=a.json)
            if a.json:
                print(json.dumps(x, indent=2))
    except ServiceError as e:
        print(f"\nERROR: {e}", file=sys.stderr, flush=True)
        if a.cmd == "up":
            print("Services that did start keep running; `make down` stops them, `make status` lists them.",
                  file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; started services keep running (`make down` stops them)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
