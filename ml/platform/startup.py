"""The platform's start-up sequence: ``up`` / ``down`` / ``status`` (``make up`` etc.).

What runs, each in its own session (process group), with its pid in ``var/run/<name>.pid``
and its output in ``var/logs/<name>.log``, all started and restarted by the supervisor
(:mod:`ml.platform.supervisor`, ``var/run/supervisor.pid``):

===================== ==================================================================
mlflow                ``mlflow server`` on ``mlflow_port`` (backend: PostgreSQL db ``mlflow``)
airflow-api-server    Airflow UI + REST API + task execution API on ``airflow_port``
airflow-scheduler     LocalExecutor scheduler (runs the tasks)
airflow-dag-processor parses ``dags/``
airflow-triggerer     deferrable tasks
api                   ``uvicorn api.main:app`` on ``api_port``
===================== ==================================================================

PostgreSQL is either the one named by ``DATABASE_URL`` or the embedded server under
``var/pg`` (:func:`ml.platform.db.database_url` starts it); ``down`` stops the embedded one only.

``up`` prepares what a service needs (databases, migrations, the Airflow password), asks the
supervisor to run it (``var/run/supervisor-wanted.json`` + SIGHUP) and waits until it answers.
``down`` stops the supervisor first (so nothing is restarted), then every process of every
service's session and every descendant of its leader, SIGTERM first, SIGKILL after a
timeout. A pid file is trusted only when the process is alive, leads its session and carries
our marker (``SMOPS_SERVICE=<name>@<var dir>``), so a recycled pid is never killed. Data
(databases, artifacts, logs) is kept.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ml.platform import airflow_client
from ml.platform.airflow_client import airflow_credentials, trigger_training
from ml.platform.config import REPO_ROOT, Settings, get_settings
from ml.platform.supervisor import (
    STATE_FILE,
    SUPERVISOR,
    WANTED_FILE,
    Policy,
    Service,
    ServiceError,
    Supervisor,
    port_open,
    port_owner,
    read_json,
    read_state,
    runtime_dir,
    say,
    stop_trees,
    tail,
    write_json,
)  # fmt: skip

MLFLOW_WORKERS = os.environ.get("SENTIMENT_MLFLOW_WORKERS", "2")
STOP_TIMEOUT = float(os.environ.get("SENTIMENT_STOP_TIMEOUT", "20"))

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
AIRFLOW_SERVICES = tuple(f"airflow-{c}" for c in AIRFLOW_COMPONENTS)
SERVICE_NAMES = ("mlflow", *AIRFLOW_SERVICES, "api")

__all__ = ["ServiceError", "SERVICE_NAMES", "up", "down", "status", "supervise", "services"]


def _bin(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (the venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"`{name}` not found next to {sys.executable} nor on PATH; run `make env`")
    return found


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
    out["api"] = Service("api", s.api_port, api_url, f"{api_url}/health/live")  # /health is 503 without a model
    return out


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


def check_ports(s: Settings, names: Iterable[str] = SERVICE_NAMES) -> None:
    """Fail before starting anything if a port we need is held by a process that isn't ours."""
    problems = []
    for name in names:
        svc = services(s)[name]
        if svc.port is not None and not svc.pid(s) and port_open(s.host, svc.port):
            problems.append(
                f"  {svc.name}: {s.host}:{svc.port} is in use by {port_owner(svc.port)} "
                f"(choose another with {port_env(svc.name)}=...)"
            )
    if problems:
        raise ServiceError("ports taken by something that is not this platform:\n" + "\n".join(problems))


def safe_url(url: str) -> str:
    """The URL without its password, for printing."""
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    if p.password:
        netloc = f"{p.username}:***@{p.hostname}" + (f":{p.port}" if p.port else "")
        return urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))
    return url


# ======================================================================= commands
def settings_env(s: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) plus the settings that locate the platform, so a
    child process (the supervisor) reads the same settings as this one."""
    env = dict(os.environ if base is None else base)
    env.update({
        "SENTIMENT_VAR_DIR": str(s.var), "SENTIMENT_HOST": s.host, "SENTIMENT_API_PORT": str(s.api_port),
        "SENTIMENT_AIRFLOW_PORT": str(s.airflow_port), "SENTIMENT_MLFLOW_PORT": str(s.mlflow_port),
        "SENTIMENT_EMBEDDED_PG_PORT": str(s.embedded_pg_port),
        "PYTHONPATH": os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p),
        "XDG_RUNTIME_DIR": runtime_dir(),
    })  # fmt: skip
    for key, value in (("DATABASE_URL", s.database_url), ("MLFLOW_TRACKING_URI", s.mlflow_tracking_uri),
                       ("SENTIMENT_MLFLOW_DATABASE", s.mlflow_database),
                       ("SENTIMENT_AIRFLOW_DATABASE", s.airflow_database)):  # fmt: skip
        if value:
            env[key] = value
    return env


def platform_env(s: Settings, db_url: str, mlflow_url: str | None) -> dict[str, str]:
    """Environment for the API (and anything else of ours): same settings as this process."""
    from ml.platform import db

    env = settings_env(s)
    env.update({
        "DATABASE_URL": db_url,
        "SENTIMENT_MLFLOW_DATABASE": db.database_name(db.mlflow_backend_url(s)),
        "SENTIMENT_AIRFLOW_DATABASE": db.database_name(db.airflow_db_url(s)),
        "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
    })  # fmt: skip
    env.pop("SMOPS_SERVICE", None)
    if mlflow_url:
        env["MLFLOW_TRACKING_URI"] = mlflow_url
    return env


def _mlflow_url(s: Settings) -> str:
    return f"http://{s.host}:{s.mlflow_port}"


def command(name: str, s: Settings) -> tuple[Service, list[str], dict[str, str]]:
    """(service, argv, env) to start ``name``; built afresh for every (re)start."""
    from ml.platform import db

    svc = services(s)[name]
    if name == "mlflow":
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
        env = platform_env(s, db.database_url(s), None)
        env.pop("MLFLOW_TRACKING_URI", None)
        if s.mlflow_auth:  # nobody but the platform registers models or moves the alias (README "Security")
            from ml.platform import tracking

            argv += ["--app-name", "basic-auth"]
            env.update(tracking.mlflow_auth_env(s))
        # MLflow 3's GenAI job runner (7 huey consumer processes, ~1.5 GB) is not used here
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        return svc, argv, env
    if name in AIRFLOW_SERVICES:
        from ml.platform.orchestration import airflow_env

        env = airflow_env(s, base=settings_env(s))
        env.pop("SMOPS_SERVICE", None)
        if not s.mlflow_tracking_uri:
            env["MLFLOW_TRACKING_URI"] = _mlflow_url(s)
        comp = name.removeprefix("airflow-")
        argv = [_bin("airflow"), comp]
        if comp == "api-server":
            argv += ["--host", s.host, "--port", str(s.airflow_port)]
        return svc, argv, env
    if name == "api":
        # N worker processes under uvicorn's own process manager (restarts a worker that dies); each has
        # its own prediction log, drained at a graceful shutdown. Admission and body limits: api/admission.py
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:app",
            "--host",
            s.host,
            "--port",
            str(s.api_port),
            "--workers",
            str(api_workers(s)),
            "--timeout-graceful-shutdown",
            "30",
            "--no-access-log",
        ]
        return svc, argv, platform_env(s, db.database_url(s), _mlflow_url(s))
    raise ServiceError(f"unknown service {name!r}")


def api_workers(s: Settings) -> int:
    """``api_workers``, or one per CPU core when it is 0."""
    return int(s.api_workers) or (os.cpu_count() or 1)


# ======================================================================= the supervisor
def supervise(s: Settings | None = None, policy: Policy | None = None) -> None:
    """Run the supervisor in this process until SIGTERM (``ml services supervise``)."""
    s = s or get_settings()
    Supervisor(s, lambda name: command(name, s), lambda name: services(s)[name], policy).run()


def supervisor_service() -> Service:
    return Service(SUPERVISOR)


def supervisor_pid(s: Settings) -> int | None:
    return supervisor_service().pid(s)


def ensure_supervisor(s: Settings, extra_env: dict[str, str] | None = None) -> tuple[int, bool]:
    """Start the supervisor unless ours runs; returns (pid, started_now)."""
    from ml.platform import supervisor as sup

    pid = supervisor_pid(s)
    if pid:
        return pid, False
    env = settings_env(s)
    env.pop("SMOPS_SERVICE", None)
    env.update(extra_env or {})
    (s.run_dir / STATE_FILE).unlink(missing_ok=True)
    proc = sup.start(supervisor_service(), [_bin("ml"), "services", "supervise"], env, s)
    deadline = time.monotonic() + 60
    while read_state(s) is None:
        if proc.poll() is not None:
            raise ServiceError(
                f"the supervisor exited at start-up (exit {proc.returncode}); "
                f"last lines of {supervisor_service().log_file(s)}:\n{tail(supervisor_service().log_file(s))}"
            )
        if time.monotonic() > deadline:
            raise ServiceError(f"the supervisor wrote no state within 60s; see {supervisor_service().log_file(s)}")
        time.sleep(0.2)
    return proc.pid, True


def want(s: Settings, names: Iterable[str], timeout: float = 60) -> dict[str, int]:
    """Ask the supervisor to run ``names`` (besides what it runs already); wait until each has
    a pid. Returns {name: pid}."""
    names = list(names)
    path = s.run_dir / WANTED_FILE
    previous = read_json(path) or {}
    request = int(previous.get("request") or 0) + 1
    current = set(previous.get("services", [])) | set(names)
    write_json(path, {"services": [n for n in SERVICE_NAMES if n in current], "request": request})
    pid = supervisor_pid(s)
    if not pid:
        raise ServiceError("the supervisor is not running")
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while True:
        state = read_state(s) or {}
        if int(state.get("request") or 0) >= request:
            st = state.get("services", {})
            if bad := [n for n in names if not (st.get(n) or {}).get("pid")]:
                raise ServiceError(
                    "the supervisor could not start "
                    + "; ".join(
                        f"{n}: {(st.get(n) or {}).get('error') or (st.get(n) or {}).get('last_exit')}" for n in bad
                    )
                )
            return {n: st[n]["pid"] for n in names}
        if time.monotonic() > deadline:
            raise ServiceError(
                f"the supervisor did not start {', '.join(names)} within {timeout:.0f}s; "
                f"see {supervisor_service().log_file(s)}"
            )
        time.sleep(0.2)


def supervised(s: Settings) -> dict[str, dict[str, Any]]:
    return (read_state(s) or {}).get("services", {})


def _http_get(url: str, timeout: float = 3.0, headers: dict[str, str] | None = None):
    import httpx

    return httpx.get(url, timeout=timeout, headers=headers)


def _check_started(names: Iterable[str], baseline: dict[str, int], s: Settings) -> None:
    """Raise if one of ``names`` exited since ``up`` asked for it (the supervisor restarts it
    meanwhile; a start-up failure is still a failure of ``up``)."""
    st = supervised(s)
    for name in names:
        x = st.get(name) or {}
        if x.get("restarts", 0) > baseline.get(name, 0) or x.get("state") in ("backoff", "crash-loop"):
            log = services(s)[name].log_file(s)
            raise ServiceError(
                f"{name} exited during start-up ({x.get('last_exit')}; the supervisor "
                f"{'gave up: crash loop' if x.get('crash_loop') else 'restarts it'}); "
                f"last lines of {log}:\n{tail(log)}"
            )


def wait_http(
    svc: Service, s: Settings, timeout: float, baseline: dict[str, int],
    ready: Callable[[Any], bool] | None = None, describe: Callable[[Any], str] | None = None,
    companions: Iterable[str] = (),
) -> None:  # fmt: skip
    """Wait until ``svc.health`` answers 200 (and ``ready(response)``), or fail with the log
    of whichever of ``svc`` and its ``companions`` exited meanwhile."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    next_note = time.monotonic() + 15
    while time.monotonic() < deadline:
        _check_started([svc.name, *companions], baseline, s)
        try:
            if svc.health is None:
                raise ServiceError(f"{svc.name} has no health URL")
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
        f"last lines of {svc.log_file(s)}:\n{tail(svc.log_file(s))}"
    )


# ======================================================================= start steps
class Steps:
    """``[n/N] title`` lines; N is the number of steps this run has."""

    def __init__(self, titles: list[str]) -> None:
        self.titles = titles

    def __call__(self, title: str) -> float:
        say(f"[{self.titles.index(title) + 1}/{len(self.titles)}] {title}")
        return time.monotonic()


def start_postgres(s: Settings) -> str:
    from ml.platform import db

    url = db.database_url(s)
    applied = db.migrate(url)
    where = "embedded (data in %s)" % (s.var / "pg") if not s.database_url else "DATABASE_URL"
    say(f"      PostgreSQL: {safe_url(url)} [{where}]; migrations applied now: {', '.join(applied) or 'none pending'}")
    return url


def wait_mlflow(s: Settings, baseline: dict[str, int], timeout: float = 120) -> str:
    svc = services(s)["mlflow"]
    wait_http(svc, s, timeout, baseline)
    url = svc.url
    if url is None:
        raise ServiceError(f"{svc.name} has no URL")
    # /health is exempt from MLflow's host validation: check a real API call as well
    r = _http_get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10, headers=_mlflow_auth_header(s))
    if r.status_code != 200:
        raise ServiceError(f"MLflow answers /health but its API refused a request: HTTP {r.status_code} {r.text[:200]}")
    (s.run_dir / "mlflow.url").write_text(url + "\n")
    return url


def _mlflow_auth_header(s: Settings) -> dict[str, str]:
    """HTTP basic auth of the platform's MLflow login (``var/mlflow/credentials.json``), if any."""
    import base64

    from ml.platform import tracking

    creds = tracking.mlflow_credentials(s) if s.mlflow_auth else None
    if not creds:
        return {}
    token = base64.b64encode(f"{creds['username']}:{creds['password']}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def start_mlflow(s: Settings | None = None, timeout: float = 120) -> dict[str, Any]:
    """Start (or find) the supervised MLflow server and wait for it; writes ``var/run/mlflow.url``."""
    s = s or get_settings()
    ensure_supervisor(s)
    already = services(s)["mlflow"].pid(s)
    if not already:
        (s.run_dir / "mlflow.url").unlink(missing_ok=True)
    baseline = {n: x.get("restarts", 0) for n, x in supervised(s).items()}
    pid = want(s, ["mlflow"])["mlflow"]
    wait_mlflow(s, baseline, timeout)
    return {"name": "mlflow", "pid": pid, "url": services(s)["mlflow"].url, "started": not already}


def airflow_db_migrate(s: Settings) -> None:
    from ml.platform.orchestration import airflow_env

    env = airflow_env(s, base=settings_env(s))
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
        raise ServiceError(f"`airflow db migrate` failed (exit {rc}); last lines of {log}:\n{tail(log)}")


def _airflow_health_ready(r) -> bool:
    body = r.json()
    return all(
        (body.get(k) or {}).get("status") == "healthy"
        for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")
    )


def _airflow_health_describe(r) -> str:
    try:
        return ", ".join(f"{k}={(v or {}).get('status')}" for k, v in r.json().items())
    except Exception:  # noqa: BLE001
        return r.text[:100]


def wait_airflow(s: Settings, baseline: dict[str, int], timeout: float = 180) -> None:
    svc = services(s)["airflow-api-server"]
    wait_http(
        svc,
        s,
        timeout,
        baseline,
        ready=_airflow_health_ready,
        describe=_airflow_health_describe,
        companions=[n for n in AIRFLOW_SERVICES if n != svc.name],
    )
    airflow_client.airflow_token(s)  # the login works


def _champion(s: Settings):
    from ml.platform import registry, tracking

    tracking.configure(s)
    return registry.champion(s)


# ======================================================================= up / down / status
def up(
    data: str | None = None, train: bool = True, wait: bool = True, force_train: bool = False,
    settings: Settings | None = None, only: Iterable[str] | str | None = None,
    supervisor_env: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Start whatever is not running yet under the supervisor, train a first model if there is
    no champion, print how to reach everything. Safe to re-run. Returns a summary dict.

    ``wait``: follow the training run to its end (else trigger it and return).
    ``force_train``: train even when a champion already exists.
    ``only``: a subset of the services (``select``); training needs all of them.
    ``supervisor_env``: extra environment of the supervisor (its ``SMOPS_SUPERVISOR_*`` policy)."""
    s = settings or get_settings()
    names = select(only)
    everything = names == list(SERVICE_NAMES)
    use_mlflow, use_api = "mlflow" in names, "api" in names
    use_airflow = [n for n in names if n in AIRFLOW_SERVICES]
    titles = ["PostgreSQL", "Supervisor"]
    titles += ["MLflow tracking server"] * use_mlflow
    titles += ["Airflow (db migrate, api-server, scheduler, dag-processor, triggerer)"] * bool(use_airflow)
    titles += ["Sentiment API"] * use_api
    titles += ["First model"] * (train and everything)
    step = Steps(titles)
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    say(f"Starting the platform (state in {s.var})")
    check_ports(s, names)

    t = step("PostgreSQL")
    db_url = start_postgres(s)
    timings["postgres"] = time.monotonic() - t

    step("Supervisor")
    sup_pid, sup_started = ensure_supervisor(s, supervisor_env)
    say(
        f"      {'started' if sup_started else 'already running'}: pid {sup_pid} (restarts crashed services; "
        f"log {supervisor_service().log_file(s)})"
    )
    baseline = {n: x.get("restarts", 0) for n, x in supervised(s).items()}
    already = {n: services(s)[n].pid(s) for n in names}

    def launched(group: list[str]) -> None:
        pids = want(s, group)
        for n in group:
            say(f"      {n}: {'already running' if already[n] else 'started'} (pid {pids[n]})")

    mlflow_url = _mlflow_url(s)
    t = time.monotonic()
    if use_mlflow:
        step("MLflow tracking server")
        if not already["mlflow"]:
            (s.run_dir / "mlflow.url").unlink(missing_ok=True)
        launched(["mlflow"])

    user = password = None
    if use_airflow:
        # Airflow's migration runs while MLflow boots
        t3 = step("Airflow (db migrate, api-server, scheduler, dag-processor, triggerer)")
        airflow_credentials(s, create=True)  # before the API server first reads the file
        if not any(already[n] for n in use_airflow):
            airflow_db_migrate(s)
        launched(use_airflow)
    if use_mlflow:
        wait_mlflow(s, baseline)
        timings["mlflow"] = time.monotonic() - t
        say(f"      MLflow ready: {mlflow_url}")

    t4 = time.monotonic()
    if use_api:
        launched_api = want(s, ["api"])["api"]
    if "airflow-api-server" in use_airflow:
        wait_airflow(s, baseline)
        user, password = airflow_credentials(s, create=False)
        timings["airflow"] = time.monotonic() - t3
        say(f"      Airflow ready: {services(s)['airflow-api-server'].url} (login {user} / {password})")

    api_svc = services(s)["api"]
    if use_api:
        step("Sentiment API")
        say(f"      {'already running' if already['api'] else 'started'}: pid {launched_api}, {api_svc.url}")
        wait_http(api_svc, s, 120, baseline)
        timings["api"] = time.monotonic() - t4
        say(f"      API ready: {api_svc.url}")

    training: dict[str, Any] | None = None
    if train and everything:
        t = step("First model")
        champ = _champion(s)
        if champ is not None and not force_train:
            say(
                f"      champion already registered (version {champ.version}); skipping training (--force-train to retrain)"
            )
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
                say(
                    f"      training {training['state']} in {training['seconds']}s; champion: "
                    f"{'version %s' % champ.version if champ else 'none (the candidate was not promoted)'}"
                )
        timings["training"] = time.monotonic() - t
    elif train:
        say("      (no training: it needs every service, and --only started a subset)")
    timings["total"] = time.monotonic() - t0

    st = status(s, quiet=True)
    summary = {
        "database_url": safe_url(db_url),
        "api": api_svc.url,
        "api_docs": f"{api_svc.url}/docs",
        "web": f"{api_svc.url}/",
        "airflow": {"url": services(s)["airflow-api-server"].url, "username": user, "password": password},
        "mlflow": mlflow_url,
        "logs": str(s.logs_dir),
        "supervisor": st["supervisor"],
        "services": {n: st["services"][n] for n in names},
        "training": training,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    _print_summary(summary, names)
    return summary


def _print_summary(x: dict[str, Any], names: list[str]) -> None:
    bar = "=" * 72
    lines = [bar, f"  Sentiment platform is up ({x['timings_s']['total']:.0f}s)"]
    if "api" in names:
        lines += [f"  Web page        {x['web']}", f"  API docs        {x['api_docs']}"]
    if "airflow-api-server" in names:
        a = x["airflow"]
        lines.append(f"  Airflow UI      {a['url']}   user {a['username']}  password {a['password']}")
    if "mlflow" in names:
        lines.append(f"  MLflow UI       {x['mlflow']}")
    lines += [
        f"  PostgreSQL      {x['database_url']}",
        f"  Supervisor      pid {x['supervisor']['pid']}: restarts crashed services (`make status` shows restarts)",
        f"  Logs            {x['logs']}/  (<service>.log, supervisor.log; task logs in airflow/)",
        "  Stop            make down   (data is kept; `make up` again resumes)",
        f"  Timings         {', '.join(f'{k} {v:.0f}s' for k, v in x['timings_s'].items() if k != 'total')}",
        bar,
    ]
    say("\n" + "\n".join(lines))


def stop_supervisor(s: Settings, timeout: float = 10) -> bool:
    """SIGTERM the supervisor (only it: the services are its children but not its session)."""
    import psutil

    pid = supervisor_pid(s)
    if not pid:
        return False
    say(f"stopping the supervisor (pid {pid}) so that nothing is restarted")
    try:
        p = psutil.Process(pid)
        p.terminate()
        _, alive = psutil.wait_procs([p], timeout=timeout)
        for q in alive:
            q.kill()
        psutil.wait_procs(alive, timeout=5)
    except psutil.Error:
        pass
    supervisor_service().pid_file(s).unlink(missing_ok=True)
    return True


def down(settings: Settings | None = None, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop the supervisor, then everything ``up`` started, then the embedded PostgreSQL if
    the platform uses it. Keeps all data. Returns the names of what was stopped."""
    s = settings or get_settings()
    stopped: list[str] = ["supervisor"] if stop_supervisor(s) else []
    (s.run_dir / WANTED_FILE).unlink(missing_ok=True)
    (s.run_dir / STATE_FILE).unlink(missing_ok=True)
    svcs = services(s)
    leaders = {name: pid for name in reversed(SERVICE_NAMES) if (pid := svcs[name].pid(s))}
    if leaders:
        stop_trees(leaders, timeout)
        for name in leaders:
            svcs[name].pid_file(s).unlink(missing_ok=True)
            stopped.append(name)
    (s.run_dir / "mlflow.url").unlink(missing_ok=True)
    if not s.database_url:
        from ml.platform import db

        if db.stop_embedded_postgres(s):
            say("stopped embedded PostgreSQL (data kept in %s)" % (s.var / "pg"))
            stopped.append("postgres")
    if not stopped:
        say("nothing was running")
    return stopped


def status(settings: Settings | None = None, quiet: bool = False) -> dict[str, Any]:
    """What runs: {supervisor: {...}, services: {name: {running, pid, url, healthy, log,
    restarts, last_exit, crash_loop, state}}, postgres: {...}}."""
    s = settings or get_settings()
    state = read_state(s)
    sup = state.get("services", {}) if state else {}
    out: dict[str, Any] = {
        "supervisor": {"running": state is not None, "pid": state.get("pid") if state else None,
                       "log": str(supervisor_service().log_file(s)),
                       "policy": state.get("policy") if state else None},
        "services": {},
    }  # fmt: skip
    for name, svc in services(s).items():
        pid = svc.pid(s)
        healthy = None
        # the API: readiness (database answers, a model is loaded, the prediction log has room)
        probe = f"{svc.url}/health/ready" if name == "api" else svc.health
        if pid and probe:
            try:
                healthy = _http_get(probe, timeout=2).status_code == 200
            except Exception:  # noqa: BLE001
                healthy = False
        x = sup.get(name) or {}
        out["services"][name] = {
            "running": bool(pid), "pid": pid, "url": svc.url, "healthy": healthy, "log": str(svc.log_file(s)),
            "supervised": name in (state or {}).get("wanted", []), "state": x.get("state"),
            "restarts": x.get("restarts", 0), "last_exit": x.get("last_exit"), "last_exit_at": x.get("last_exit_at"),
            "crash_loop": bool(x.get("crash_loop")), "error": x.get("error"),
        }  # fmt: skip
    from ml.platform import db

    if s.database_url:
        out["postgres"] = {"url": safe_url(db.libpq_url(s.database_url)), "embedded": False}
    else:
        url_file = db.embedded_url_path(s)
        url = url_file.read_text().strip() if url_file.exists() else None
        out["postgres"] = {"url": url, "embedded": True, "running": bool(url and db._is_reachable(url))}
    if not quiet:
        sv = out["supervisor"]
        say(
            f"{'supervisor':22s} {'running' if sv['running'] else 'NOT RUNNING (crashed services are not restarted)':24s} "
            f"{('pid %s' % sv['pid']) if sv['pid'] else ''}"
        )
        for name, x in out["services"].items():
            if x["crash_loop"]:
                state_txt = "CRASH LOOP (gave up)"
            elif x["running"]:
                state_txt = "running (not answering)" if x["healthy"] is False else "running"
            elif x["state"] == "backoff":
                state_txt = "restarting (backoff)"
            else:
                state_txt = "stopped"
            extra = f"restarts {x['restarts']}" + (f", last exit: {x['last_exit']}" if x["last_exit"] else "")
            say(
                f"{name:22s} {state_txt:24s} {('pid %s' % x['pid']) if x['pid'] else '':10s} {x['url'] or '':24s} {extra}"
            )
            if x["crash_loop"] and x["error"]:
                say(f"{'':22s} {x['error']}")
        pg = out["postgres"]
        pg_state = "external" if not pg["embedded"] else ("running" if pg.get("running") else "stopped")
        say(f"{'postgres':22s} {pg_state:24s} {'':10s} {pg['url'] or ''}")
    return out
