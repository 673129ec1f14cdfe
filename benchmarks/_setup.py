"""Shared benchmark setup: an isolated database + var/ and a TF-IDF champion on the shared tweets.

Importing it also makes the benchmark leave nothing running (README "Benchmarks"): on exit, on Ctrl-C
(SIGINT), on SIGTERM/SIGHUP and on failure it stops every process the benchmark started, its descendants
included (this process is their subreaper, so daemons such as the embedded PostgreSQL's postmaster stay
its descendants), stops the embedded PostgreSQL it started (never one that was already running) and
removes its temporary folders (kept, and named, after an uncaught exception, for their logs).
``python benchmarks/_setup.py --smoke`` runs that setup path alone (tests/system/test_benchmark_cleanup.py)."""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx
import psutil

from ml.data.snapshots import validate_and_snapshot
from ml.platform import db, registry
from ml.platform.config import Settings, get_settings, reset_settings
from ml.stages import promotion, train

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data" / "sentiment140_100k.csv"
BIN = Path(sys.executable).parent  # this environment's bin/ (uvicorn, mlflow, ml)

# ------------------------------------------------------------------ leave nothing running
_STOPS: list[tuple[str, Callable[[], object]]] = []  # run first, last registered first (e.g. `ml services down`)
_DATABASES: list[tuple[str, Callable[[], object]]] = []  # embedded PostgreSQL servers this run started
_FOLDERS: list[Path] = []  # temporary folders this run made
_KEEP_FOLDERS = False  # set by an uncaught exception: the folders hold the logs that explain it
PR_SET_CHILD_SUBREAPER = 36


def on_exit(what: str, fn: Callable[[], object]) -> None:
    """Run ``fn`` when the benchmark ends, however it ends (before its leftover processes are stopped)."""
    _STOPS.append((what, fn))


def remove_at_exit(folder: Path) -> Path:
    """Remove ``folder`` (or file) when the benchmark ends (kept after an uncaught exception)."""
    _FOLDERS.append(folder)
    return folder


def _postmaster_running(settings: Settings) -> bool:
    try:
        pid = int((settings.var / "pg" / "postmaster.pid").read_text().split()[0])
        return psutil.Process(pid).name() == "postgres"
    except (OSError, ValueError, IndexError, psutil.Error):
        return False


def embedded_postgres(settings: Settings | None = None) -> str:
    """``db.start_embedded_postgres``; the server is stopped when the benchmark ends if this call started
    it (a server that was already running, e.g. the platform's own ``var/pg``, is left running)."""
    settings = settings or get_settings()
    started = not _postmaster_running(settings)
    url = db.start_embedded_postgres(settings)
    if started:
        _DATABASES.append(
            (f"embedded PostgreSQL (data {settings.var / 'pg'})", lambda: db.stop_embedded_postgres(settings))
        )
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_descendants(timeout: float, keep: Callable[[psutil.Process], bool] = lambda p: False) -> None:
    try:
        procs = [p for p in psutil.Process().children(recursive=True) if not keep(p)]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def _is_postgres(p: psutil.Process) -> bool:
    try:
        return p.name() in ("postgres", "pg_ctl")
    except psutil.Error:
        return False


def _run_all(items: list[tuple[str, Callable[[], object]]]) -> None:
    while items:
        what, fn = items.pop()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every other cleanup still runs
            print(f"benchmark cleanup: {what} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def cleanup() -> None:
    """Stop what the benchmark started: registered stops, its processes (uvicorn, Airflow, MLflow ...),
    the embedded PostgreSQL servers it started, then anything left; remove its temporary folders."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the cleanup half done
    _run_all(_STOPS)
    _stop_descendants(20, keep=_is_postgres)  # the servers' clients first, then the servers
    _run_all(_DATABASES)
    _stop_descendants(10)
    while _FOLDERS:
        folder = _FOLDERS.pop()
        if _KEEP_FOLDERS:
            print(f"benchmark failed: kept {folder} (logs)", file=sys.stderr, flush=True)
        elif folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        else:
            folder.unlink(missing_ok=True)


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    global _KEEP_FOLDERS
    _KEEP_FOLDERS = not issubclass(kind, KeyboardInterrupt)
    traceback.print_exception(kind, value, tb)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the benchmark's own `finally` blocks, then atexit runs cleanup()


def _install() -> None:
    if sys.platform == "linux":  # orphaned descendants (daemons) are re-parented to this process
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    atexit.register(cleanup)
    sys.excepthook = _excepthook
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell: Ctrl-C anyway
        signal.signal(signal.SIGINT, signal.default_int_handler)


_install()


def isolated_platform(name: str) -> Path:
    """Point the platform at database ``smops_<name>`` (on DATABASE_URL's server, or the
    embedded one) and a fresh var/ folder; returns that folder."""
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    work = remove_at_exit(Path(tempfile.mkdtemp(prefix=f"bench-{name}-")))
    os.environ["SENTIMENT_VAR_DIR"] = str(work)
    os.environ["SENTIMENT_MODEL_NAME"] = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    # an embedded server of its own on a port of its own: never the platform's (54329, `make up`)
    os.environ.setdefault("SENTIMENT_EMBEDDED_PG_PORT", str(free_port()))
    reset_settings()

    base = os.environ.get("DATABASE_URL") or embedded_postgres()
    os.environ["DATABASE_URL"] = db.with_database(base, f"smops_{name}")
    os.environ["SENTIMENT_MLFLOW_DATABASE"] = f"smops_{name}_mlflow"
    reset_settings()
    db.migrate()
    return work


def train_champion(
    path: Path = SHARED, family: str = "tfidf_lr", params: dict | None = None, sample_size: int | None = None
) -> int:
    """validate -> train -> evaluate -> register -> promote a model; returns its version.
    Other families than TF-IDF train on a small sample for timing only, so the behavioural
    gate is switched off for them."""
    if family != "tfidf_lr":
        os.environ["SENTIMENT_BEHAVIOUR_CHECKS"] = "false"
        reset_settings()
    print(f"training a {family} champion on {path.name} (sample {sample_size or 'all'}) ...", flush=True)
    snap = validate_and_snapshot(path)
    run_id = train.train(snap.hash, family, params or {}, sample_size)
    train.evaluate(run_id)
    train.register(run_id)
    promotion.promote(run_id)
    return registry.champion().version


def api_command(port: int, workers: int | str) -> list[str]:
    """The API under uvicorn on 127.0.0.1:``port`` with ``workers`` processes (the benchmarks' server)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-proxy-headers",  # as make up (ml/platform/startup/commands.py api_proxy_args)
    ]


def start_server(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server (the API, MLflow, a proxy) in a session of its own, so that its whole process group can be
    stopped, with its output in ``log`` and this environment's bin/ first on PATH (uvicorn, mlflow, ml)."""
    env = {**os.environ, **(env or {}), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_http(
    url: str,
    proc: subprocess.Popen,
    log: Path,
    ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    timeout: float = 180,
    interval: float = 0.3,
) -> None:
    """Wait until GET ``url`` answers as ``ok`` says (by default: 200); SystemExit with the end of ``log``
    when the server exits first or is not ready within ``timeout`` seconds. A response ``ok`` cannot read
    (no JSON yet, a missing key) counts as not ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            if ok(httpx.get(url, timeout=2)):
                return
        except (httpx.HTTPError, KeyError, ValueError):  # not listening yet, or not serving what ``ok`` wants
            pass
        time.sleep(interval)
    raise SystemExit(f"not ready within {timeout:.0f}s: {log.read_text()[-3000:]}")


def comparison_platform(db_name: str, var_dir: str) -> None:
    """Point the platform at the comparison benchmark's own databases (``<db_name>``,
    ``<db_name>_mlflow`` on DATABASE_URL's server, or the embedded one) and ``var_dir``: kept
    between runs, so later scripts (benchmarks/stacking_probe.py) read what compare_families wrote."""
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    base = db.libpq_url(os.environ["DATABASE_URL"]) if os.environ.get("DATABASE_URL") else embedded_postgres()
    os.environ["DATABASE_URL"] = db.with_database(base, db_name)
    os.environ["SENTIMENT_MLFLOW_DATABASE"] = f"{db_name}_mlflow"
    os.environ["SENTIMENT_VAR_DIR"] = var_dir
    os.environ["SENTIMENT_MODEL_NAME"] = "tweet-sentiment-bench"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    reset_settings()


def _smoke() -> None:
    """The setup path of the benchmarks, tiny: an isolated platform (its embedded PostgreSQL when DATABASE_URL
    is unset) and the API under uvicorn (2 workers, as the benchmarks start it); prints one JSON line
    (pids, ports) once the API answers, then waits to be interrupted (or fails with ``--fail``)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", required=True)
    ap.add_argument("--fail", action="store_true", help="raise once everything runs")
    args = ap.parse_args()
    work = isolated_platform(f"smoke_{os.getpid()}")
    s = get_settings()
    port = free_port()
    log = work / "api.log"
    api = start_server(api_command(port, 2), log)
    wait_http(f"http://127.0.0.1:{port}/health/live", api, log, timeout=120)
    pids = [p.pid for p in psutil.Process().children(recursive=True)]
    info = {
        "work": str(work),
        "api_port": port,
        "pids": pids,
        "pg_port": s.embedded_pg_port if _DATABASES else None,
    }
    print(json.dumps(info), flush=True)
    if args.fail:
        raise RuntimeError("--fail: a benchmark failing after its setup")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    _smoke()
