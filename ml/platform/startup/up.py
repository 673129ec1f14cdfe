"""``up``: the start-up sequence (PostgreSQL, the supervisor, MLflow, Airflow, the API, the first model)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ml.platform import db, progressive, tracking
from ml.platform.airflow_client import airflow_credentials
from ml.platform.config import REPO_ROOT, Settings, get_settings
from ml.platform.orchestration import airflow_env
from ml.platform.startup import proxy
from ml.platform.startup.commands import mlflow_server_url, settings_env
from ml.platform.startup.readiness import wait_airflow, wait_http, wait_mlflow, wait_serving
from ml.platform.startup.seeding import champion, first_model
from ml.platform.startup.services import (
    AIRFLOW_SERVICES,
    SERVICE_NAMES,
    check_ports,
    console_script,
    replica_names,
    safe_url,
    select,
    services,
)
from ml.platform.startup.status import status
from ml.platform.startup.supervision import ensure_supervisor, supervised, supervisor_service, want
from ml.platform.supervisor import ServiceError, say, tail


class Steps:
    """``[n/N] title`` lines; N is the number of steps this run has."""

    def __init__(self, titles: list[str]) -> None:
        self.titles = titles

    def __call__(self, title: str) -> float:
        say(f"[{self.titles.index(title) + 1}/{len(self.titles)}] {title}")
        return time.monotonic()


def start_postgres(settings: Settings) -> str:
    url = db.database_url(settings)
    applied = db.migrate(url)
    where = "embedded (data in %s)" % (settings.var / "pg") if not settings.database_url else "DATABASE_URL"
    say(f"      PostgreSQL: {safe_url(url)} [{where}]; migrations applied now: {', '.join(applied) or 'none pending'}")
    return url


def start_mlflow(settings: Settings | None = None, timeout: float = 120) -> dict[str, Any]:
    """Start (or find) the supervised MLflow server and wait for it; writes ``var/run/mlflow.url``."""
    settings = settings or get_settings()
    ensure_supervisor(settings)
    already = services(settings)["mlflow"].pid(settings)
    if not already:
        (settings.run_dir / "mlflow.url").unlink(missing_ok=True)
    baseline = {n: x.get("restarts", 0) for n, x in supervised(settings).items()}
    pid = want(settings, ["mlflow"])["mlflow"]
    wait_mlflow(settings, baseline, timeout)
    return {"name": "mlflow", "pid": pid, "url": services(settings)["mlflow"].url, "started": not already}


def airflow_db_migrate(settings: Settings) -> None:
    env = airflow_env(settings, base=settings_env(settings))
    log = settings.logs_dir / "airflow-db-migrate.log"
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} airflow db migrate\n".encode())
        f.flush()
        rc = subprocess.run(
            [console_script("airflow"), "db", "migrate"],
            env=env,
            cwd=str(REPO_ROOT),
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    if rc != 0:
        raise ServiceError(f"`airflow db migrate` failed (exit {rc}); last lines of {log}:\n{tail(log)}")


def up(
    data: str | None = None,
    train: bool = True,
    wait: bool = True,
    force_train: bool = False,
    settings: Settings | None = None,
    only: Iterable[str] | str | None = None,
    supervisor_env: dict[str, str] | None = None,
    progressive_champion: bool | None = None,
) -> dict[str, Any]:
    """Start whatever is not running yet under the supervisor, train a first model if there is
    no champion, print how to reach everything. Safe to re-run. Returns a summary dict.

    ``wait``: follow the training run to its end (else trigger it and return).
    ``force_train``: train even when a champion already exists.
    ``only``: a subset of the services (``select``); training needs all of them.
    ``supervisor_env``: extra environment of the supervisor (its ``SMOPS_SUPERVISOR_*`` policy).
    ``progressive_champion``: once a champion serves, start the background comparison that includes the
    transformer (``ml.platform.progressive``); None: the setting of the same name."""
    s = settings or get_settings()
    run = _plan_up(s, only, train)
    t0 = time.monotonic()
    say(f"Starting the platform (state in {s.var})")
    if run.use_api:
        check_replicas(s, run.instances)
    check_ports(s, [*run.instances, *run.names])

    db_url = _start_base(run, supervisor_env)
    user, password = _start_services(run)
    training, serving = _first_model_and_serving(run, data, train, wait, force_train)
    background: dict[str, Any] | None = None
    if train and run.everything:
        background = start_progressive(s, progressive_champion)
    run.timings["total"] = time.monotonic() - t0

    st = status(s, quiet=True)
    api_svc, names, instances = services(s)["api"], run.names, run.instances
    summary = {
        "database_url": safe_url(db_url),
        "api": api_svc.url,
        "api_docs": f"{api_svc.url}/docs",
        "web": f"{api_svc.url}/",
        "airflow": {"url": services(s)["airflow-api-server"].url, "username": user, "password": password},
        "mlflow": run.mlflow_url,
        "mlflow_experiment": experiment_ui_url(s, run.mlflow_url) if run.use_mlflow else None,
        "logs": str(s.logs_dir),
        "supervisor": st["supervisor"],
        "services": {n: st["services"][n] for n in [*instances, *names]},
        "training": training,
        "serving_version": serving,
        "progressive": background,
        "timings_s": {k: round(v, 1) for k, v in run.timings.items()},
    }
    _print_summary(summary, names)
    return summary


@dataclass
class _UpRun:
    """One ``up``: the services it starts, its step lines, and what its steps found and took."""

    settings: Settings
    names: list[str]
    everything: bool  # every service: training needs all of them
    use_mlflow: bool
    use_api: bool
    use_airflow: list[str]
    instances: list[str]  # the API's replicas behind HAProxy (none: one instance)
    step: Steps
    timings: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, int] = field(default_factory=dict)  # each service's restarts before this run
    already: dict[str, Any] = field(default_factory=dict)  # each service's pid before this run
    mlflow_url: str = ""


def _plan_up(settings: Settings, only: Iterable[str] | str | None, train: bool) -> _UpRun:
    """The services to start (``only``, Celery workers, API replicas) and the step titles of this run."""
    names = select(only)
    everything = names == list(SERVICE_NAMES)
    use_mlflow, use_api = "mlflow" in names, "api" in names
    use_airflow = [n for n in names if n in AIRFLOW_SERVICES]
    if use_airflow and settings.airflow_executor == "celery":  # EXECUTOR=celery: N workers, each with its own var/
        use_airflow += [f"airflow-worker-{i}" for i in range(1, settings.celery_workers + 1)]
        names = [*names, *use_airflow[-settings.celery_workers :]]
    titles = ["PostgreSQL", "Supervisor"]
    titles += ["MLflow tracking server"] * use_mlflow
    titles += ["Airflow (db migrate, api-server, scheduler, dag-processor, triggerer)"] * bool(use_airflow)
    titles += ["Sentiment API"] * use_api
    titles += ["First model"] * (train and everything)
    # API_REPLICAS >= 2: instances api-1..api-N on loopback behind HAProxy ("api") on api_port (startup/proxy.py)
    instances = (
        [f"api-{i}" for i in range(1, settings.api_replicas + 1)] if use_api and settings.api_replicas >= 2 else []
    )
    return _UpRun(settings, names, everything, use_mlflow, use_api, use_airflow, instances, Steps(titles))


def _start_base(run: _UpRun, supervisor_env: dict[str, str] | None) -> str:
    """PostgreSQL (migrated) and the supervisor; records what was already running. Returns the database URL."""
    s, step = run.settings, run.step
    t = step("PostgreSQL")
    db_url = start_postgres(s)
    run.timings["postgres"] = time.monotonic() - t

    step("Supervisor")
    sup_pid, sup_started = ensure_supervisor(s, supervisor_env)
    say(
        f"      {'started' if sup_started else 'already running'}: pid {sup_pid} (restarts crashed services; "
        f"log {supervisor_service().log_file(s)})"
    )
    run.baseline = {n: x.get("restarts", 0) for n, x in supervised(s).items()}
    run.already = {n: services(s)[n].pid(s) for n in [*run.instances, *run.names]}
    return db_url


def _launched(run: _UpRun, group: list[str]) -> None:
    """Ask the supervisor for ``group`` and say which were started and which already ran."""
    pids = want(run.settings, group)
    for n in group:
        say(f"      {n}: {'already running' if run.already[n] else 'started'} (pid {pids[n]})")


def _start_services(run: _UpRun) -> tuple[str | None, str | None]:
    """MLflow, Airflow and the API, started together and waited for; returns Airflow's login."""
    s, step, baseline, timings, use_airflow = run.settings, run.step, run.baseline, run.timings, run.use_airflow
    run.mlflow_url = mlflow_server_url(s)
    t = time.monotonic()
    if run.use_mlflow:
        step("MLflow tracking server")
        if not run.already["mlflow"]:
            (s.run_dir / "mlflow.url").unlink(missing_ok=True)
        _launched(run, ["mlflow"])

    user = password = None
    if use_airflow:
        # Airflow's migration runs while MLflow boots
        t3 = step("Airflow (db migrate, api-server, scheduler, dag-processor, triggerer)")
        airflow_credentials(s, create=True)  # before the API server first reads the file
        if not any(run.already[n] for n in use_airflow):
            airflow_db_migrate(s)
        _launched(run, use_airflow)
    if run.use_mlflow:
        wait_mlflow(s, baseline)
        timings["mlflow"] = time.monotonic() - t
        say(f"      MLflow ready: {run.mlflow_url}")

    t4 = time.monotonic()
    if run.use_api:
        launched_api = want(s, [*run.instances, "api"])["api"]
    if "airflow-api-server" in use_airflow:
        wait_airflow(s, baseline)
        user, password = airflow_credentials(s, create=False)
        timings["airflow"] = time.monotonic() - t3
        say(f"      Airflow ready: {services(s)['airflow-api-server'].url} (login {user} / {password})")

    if run.use_api:
        _wait_api(run, launched_api, t4)
    return user, password


def _wait_api(run: _UpRun, launched_api: int, t4: float) -> None:
    """The API step: wait for its instances and for the API (HAProxy in front of replicas) to answer."""
    s, baseline, instances = run.settings, run.baseline, run.instances
    api_svc = services(s)["api"]
    run.step("Sentiment API")
    say(f"      {'already running' if run.already['api'] else 'started'}: pid {launched_api}, {api_svc.url}")
    for n in instances:
        wait_http(services(s)[n], s, 120, baseline)
        say(f"      {n}: {services(s)[n].url} (prediction log in {proxy.instance_state_dir(s, int(n[4:]))})")
    if instances:
        say(f"      HAProxy on {api_svc.url} in front of {len(instances)} instances ({proxy.config_path(s)})")
    wait_http(api_svc, s, 120, baseline)
    run.timings["api"] = time.monotonic() - t4
    say(f"      API ready: {api_svc.url}")


def _first_model_and_serving(
    run: _UpRun, data: str | None, train: bool, wait: bool, force_train: bool
) -> tuple[dict[str, Any] | None, int | None]:
    """Train a first model when due, then wait until the API serves the champion; (training, serving version)."""
    s = run.settings
    training: dict[str, Any] | None = None
    if train and run.everything:
        t = run.step("First model")
        training = first_model(s, data, wait=wait, force_train=force_train)
        run.timings["training"] = time.monotonic() - t
    elif train:
        say("      (no training: it needs every service, and --only started a subset)")
    serving = None
    if run.use_api and wait and (run.use_mlflow or services(s)["mlflow"].pid(s)):
        # "up" means /predict answers: the API picks the champion up on its next poll, then loads it
        champ = champion(s)
        if champ is not None:
            t, serving = time.monotonic(), int(champ.version)
            wait_serving(s, serving, run.baseline)
            run.timings["serving"] = time.monotonic() - t
            say(f"      API serving champion version {serving}")
    return training, serving


def start_progressive(settings: Settings, enabled: bool | None = None) -> dict[str, Any]:
    """The progressive champion's background comparison (``ml.platform.progressive.start``): started once per
    data snapshot; a failure to start it is reported, never fatal to ``up`` (the champion serves)."""
    try:
        out = progressive.start(settings, enabled)
    except Exception as e:  # noqa: BLE001 - the platform is up; the background comparison is an extra
        say(f"      background comparison not started: {type(e).__name__}: {e}")
        return {"started": False, "reason": f"{type(e).__name__}: {e}"}
    if out["started"]:
        say(
            f"      background comparison #{out['id']} ({', '.join(out['families'])}, low priority): "
            f"{out['url']}\n      its winner replaces the champion only through the gate and the shadow window; "
            "`make status` shows its progress"
        )
    else:
        say(f"      background comparison: not started ({out['reason']})")
    return out


def check_replicas(settings: Settings, instances: list[str]) -> None:
    """A running API must have the shape asked for: API_REPLICAS changes need `make down` first."""
    running = [n for n in replica_names(settings) if services(settings)[n].pid(settings)]
    if services(settings)["api"].pid(settings) and running != instances:
        now = f"{len(running)} instances behind HAProxy" if running else "one instance (no proxy)"
        raise ServiceError(
            f"the API runs as {now}, and API_REPLICAS={settings.api_replicas} asks for "
            f"{f'{len(instances)} instances behind HAProxy' if instances else 'one instance'}: `make down` first"
        )


def experiment_ui_url(settings: Settings, mlflow_url: str) -> str | None:
    """The platform's experiment in the MLflow UI, in the classic training view
    (``ml.platform.tracking.ui_url``: ``?workflowType=machine_learning``); None when MLflow does not answer."""
    try:
        import mlflow

        tracking.configure(settings)  # creates the experiment (with its kind) on a first start
        exp = mlflow.MlflowClient().get_experiment_by_name(settings.experiment_name)
    except Exception as e:  # noqa: BLE001 - the summary prints the server's address instead
        say(f"      (MLflow experiment link unavailable: {type(e).__name__}: {e})")
        return None
    return tracking.ui_url(mlflow_url, f"experiments/{exp.experiment_id}") if exp is not None else None


def _print_summary(x: dict[str, Any], names: list[str]) -> None:
    bar = "=" * 72
    lines = [bar, f"  Sentiment platform is up ({x['timings_s']['total']:.0f}s)"]
    if "api" in names:
        lines += [f"  Web page        {x['web']}", f"  API docs        {x['api_docs']}"]
    if "airflow-api-server" in names:
        a = x["airflow"]
        lines.append(f"  Airflow UI      {a['url']}   user {a['username']}  password {a['password']}")
    if "mlflow" in names:
        lines.append(f"  MLflow UI       {x.get('mlflow_experiment') or x['mlflow']}")
    lines += [
        f"  PostgreSQL      {x['database_url']}",
        f"  Supervisor      pid {x['supervisor']['pid']}: restarts crashed services (`make status` shows restarts)",
        f"  Logs            {x['logs']}/  (<service>.log, supervisor.log; task logs in airflow/)",
        "  Stop            make down   (data is kept; `make up` again resumes)",
        f"  Timings         {', '.join(f'{k} {v:.0f}s' for k, v in x['timings_s'].items() if k != 'total')}",
        bar,
    ]
    say("\n" + "\n".join(lines))
