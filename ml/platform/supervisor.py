"""Processes of the platform, with psutil: start detached, trust a pid file, find a whole
process tree, stop it, find who holds a port; and the supervisor loop that keeps the
services running (``ml services supervise``, started by ``ml services up``).

Nothing here parses procfs by hand: psutil does it portably.

The supervisor
--------------
One small detached process per ``var/`` (its pid in ``var/run/supervisor.pid``, its log in
``var/logs/supervisor.log``). It starts the services listed in ``var/run/supervisor-wanted.json``
(written by ``ml services up``, which sends it SIGHUP after each change), owns them as its
children, and restarts one that exits, after an exponential backoff (``backoff_base`` ·
2^k seconds, capped at ``backoff_max``; k resets once a process stayed up ``stable_after``
seconds). ``crash_loop_restarts`` restarts within ``crash_loop_window`` seconds is a crash
loop: it stops restarting that service and says so in its log and in the state file
``var/run/supervisor-state.json`` that ``ml services status`` reads. SIGHUP (``make up`` again)
clears crash loops; SIGTERM (``make down``, which then stops the services) ends it and
leaves the services alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ml.platform.config import REPO_ROOT, Settings

SUPERVISOR = "supervisor"
STATE_FILE = "supervisor-state.json"
WANTED_FILE = "supervisor-wanted.json"


class ServiceError(RuntimeError):
    """A service could not be started, or the training run failed."""


def say(msg: str) -> None:
    print(msg, flush=True)


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


def tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in lines[-n:])


# ======================================================================= process helpers
def alive(pid: int | None) -> bool:
    """``pid`` exists and is not a zombie."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tree(leader: int) -> set[int]:
    """Live processes of ``leader``'s session plus all of its descendants (which covers
    children that started sessions of their own)."""
    members: set[int] = set()
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == leader and p.status() != psutil.STATUS_ZOMBIE:
                members.add(p.pid)
        except (OSError, psutil.Error):
            continue
    try:
        root = psutil.Process(leader)
        if root.status() != psutil.STATUS_ZOMBIE:
            members.add(leader)
        for c in root.children(recursive=True):
            try:
                if c.status() != psutil.STATUS_ZOMBIE:
                    members.add(c.pid)
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return members


def _procs(pids: Iterable[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return out


def signal_all(pids: Iterable[int], sig: int) -> None:
    for p in _procs(pids):
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


def stop_trees(leaders: dict[str, int], timeout: float, note: Callable[[str], None] = say) -> None:
    """SIGTERM every process of every tree at once, wait up to ``timeout`` (psutil reaps our
    own children), SIGKILL what is left. Trees are re-read while waiting, so processes forked
    during shutdown go too."""
    members = {name: tree(pid) for name, pid in leaders.items()}
    for name, pids in members.items():
        note(f"stopping {name} (pid {leaders[name]}, {len(pids)} process{'es' if len(pids) != 1 else ''})")
        signal_all(pids, signal.SIGTERM)
    t0 = time.monotonic()
    pending = dict(members)
    while pending and time.monotonic() < t0 + timeout:
        for name in sorted(pending):
            left = {p.pid for p in _procs(pending[name] | tree(leaders[name])) if _running(p)}
            if left:
                pending[name] = left
                continue
            del pending[name]
            note(f"  {name} stopped ({time.monotonic() - t0:.1f}s)")
        if pending:
            psutil.wait_procs(_procs(set().union(*pending.values())), timeout=0.3)
    for name, pids in pending.items():
        left = {p.pid for p in _procs(pids | tree(leaders[name])) if _running(p)}
        if left:
            note(f"  {name}: {len(left)} process(es) ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
            signal_all(left, signal.SIGKILL)
            psutil.wait_procs(_procs(left), timeout=5)


def _running(p: psutil.Process) -> bool:
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            try:
                p.wait(timeout=0)  # ours: reap it
            except (psutil.Error, psutil.TimeoutExpired, ChildProcessError):
                pass
            return False
        return p.is_running()
    except psutil.Error:
        return False


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_owner(port: int) -> str:
    """Best effort: 'pid NNN (cmd)' of the process listening on TCP ``port``."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return "an unknown process"
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            if c.pid is None:
                return "another user's process"
            try:
                cmd = " ".join(psutil.Process(c.pid).cmdline())
            except psutil.Error:
                cmd = "?"
            return f"pid {c.pid} ({cmd.strip()[:100]})"
    return "an unknown process"


# ======================================================================= services
def marker(name: str, settings: Settings) -> str:
    return f"{name}@{settings.var.resolve()}"


_KEYWORDS = {"mlflow": ("mlflow",), "api": ("uvicorn", "api.main"), SUPERVISOR: ("services", "supervise")}


def is_ours(pid: int, name: str, settings: Settings) -> bool:
    """``pid`` is the live session leader we started for ``name``: it leads its own session
    and carries our marker in its environment, or (where a process rewrote its environ
    block with setproctitle, as Airflow's do) its command line names the service."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE or os.getsid(pid) != pid:
            return False
    except (psutil.Error, OSError):
        return False
    try:
        if p.environ().get("SMOPS_SERVICE") == marker(name, settings):
            return True
    except psutil.Error:
        pass
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return False
    if name.startswith("airflow-"):
        comp = name.removeprefix("airflow-")
        return "airflow" in cmd and (comp in cmd or comp.replace("-", "_") in cmd)
    return all(k in cmd for k in _KEYWORDS.get(name, (name,)))


@dataclass
class Service:
    name: str
    port: int | None = None
    url: str | None = None
    health: str | None = None  # full URL answering 200 when ready

    def pid_file(self, settings: Settings) -> Path:
        return settings.run_dir / f"{self.name}.pid"

    def log_file(self, settings: Settings) -> Path:
        return settings.logs_dir / f"{self.name}.log"

    def pid(self, settings: Settings) -> int | None:
        """The pid of our running process, or None (a stale pid file is removed)."""
        f = self.pid_file(settings)
        try:
            pid = int(f.read_text().strip())
        except (OSError, ValueError):
            return None
        if is_ours(pid, self.name, settings):
            return pid
        f.unlink(missing_ok=True)
        return None


def start(svc: Service, argv: list[str], env: dict[str, str], settings: Settings) -> subprocess.Popen:
    """Start ``argv`` detached in its own session (its own process group), output appended
    to the service's log, pid in its pid file. Returns the Popen (the caller owns it)."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    env = dict(env)
    env["SMOPS_SERVICE"] = marker(svc.name, settings)
    env["XDG_RUNTIME_DIR"] = runtime_dir()
    env["PYTHONUNBUFFERED"] = "1"
    with svc.log_file(settings).open("ab") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
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
    svc.pid_file(settings).write_text(f"{proc.pid}\n")
    return proc


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ======================================================================= supervisor
@dataclass
class Policy:
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    crash_loop_restarts: int = 5
    crash_loop_window: float = 300.0
    stable_after: float = 60.0
    poll: float = 0.5


@dataclass
class _Watched:
    name: str
    proc: subprocess.Popen | None = None
    pid: int | None = None  # also set for an adopted (not our child) process
    started_at: float | None = None
    restarts: int = 0
    recent: list[float] = field(default_factory=list)  # monotonic times of restarts
    failures: int = 0  # consecutive short-lived runs (backoff exponent)
    next_start: float = 0.0
    last_exit: str | None = None
    last_exit_at: str | None = None
    crash_loop: bool = False
    state: str = "starting"
    error: str | None = None

    def public(self, now: float) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_exit_at": self.last_exit_at,
            "crash_loop": self.crash_loop,
            "error": self.error,
            "restart_in_s": round(max(0.0, self.next_start - now), 1) if self.state == "backoff" else None,
        }


class Supervisor:
    """Keeps ``wanted`` services running. ``command(name) -> (Service, argv, env)`` builds a
    service's command afresh for every (re)start (so a restart sees the current settings,
    databases created, ...); ``lookup(name) -> Service`` only names its files."""

    def __init__(
        self,
        settings: Settings,
        command: Callable[[str], tuple[Service, list[str], dict[str, str]]],
        lookup: Callable[[str], Service],
        policy: Policy | None = None,
    ) -> None:
        self.s = settings
        self.command = command
        self.lookup = lookup
        self.policy = policy or Policy()
        self.watched: dict[str, _Watched] = {}
        self.wanted: list[str] = []
        self.request = 0  # the last `request` of the wanted file this supervisor has acted on
        self._reload = True
        self._stop = False

    # ---- files
    @property
    def state_path(self) -> Path:
        return self.s.run_dir / STATE_FILE

    def log(self, msg: str) -> None:
        say(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}")

    def _write_state(self) -> None:
        now = time.monotonic()
        write_json(
            self.state_path,
            {
                "pid": os.getpid(),
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "policy": self.policy.__dict__,
                "wanted": self.wanted,
                "request": self.request,
                "services": {n: w.public(now) for n, w in self.watched.items()},
            },
        )

    def _load_wanted(self) -> int:
        data = read_json(self.s.run_dir / WANTED_FILE) or {}
        self.wanted = [n for n in data.get("services", [])]
        for name in self.wanted:
            w = self.watched.get(name)
            if w is None:
                w = self.watched[name] = _Watched(name)
                self._adopt(w)
            elif w.crash_loop:  # `make up` again: try once more
                self.log(f"{name}: crash loop cleared by a new `up`; starting it again")
                w.crash_loop, w.recent, w.failures, w.next_start, w.error = False, [], 0, 0.0, None
            elif w.pid is None:  # waiting out a backoff: a new `up` starts it now
                w.next_start = 0.0
        return int(data.get("request") or 0)

    def _adopt(self, w: _Watched) -> None:
        pid = self.lookup(w.name).pid(self.s)
        if pid:
            w.pid, w.started_at, w.state = pid, time.monotonic(), "running"
            self.log(f"{w.name}: adopted running pid {pid}")

    # ---- loop
    def run(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reload", True))
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "_stop", True))
        self.log(f"supervisor pid {os.getpid()} for {self.s.var} ({self.policy})")
        while not self._stop:
            if self._reload:
                self._reload = False
                request = self._load_wanted()
                self.tick()  # start what is newly wanted before saying the request was seen
                self.request = request
                self._write_state()
            if self.tick():
                self._write_state()
            time.sleep(self.policy.poll)
        self.log("supervisor stopping (services are left running; `ml services down` stops them)")
        (self.s.run_dir / STATE_FILE).unlink(missing_ok=True)

    def tick(self) -> bool:
        """One pass over the wanted services; True when something changed."""
        changed = False
        now = time.monotonic()
        for name in self.wanted:
            w = self.watched[name]
            if w.pid is not None:
                code = self._exit_code(w)
                if code is False:
                    continue  # still running
                changed = True
                self._exited(w, code, now)
            if w.crash_loop or now < w.next_start:
                continue
            changed = True
            self._start(w, now)
        return changed

    def _exit_code(self, w: _Watched) -> int | None | bool:
        """False while running; the exit code (None if unknown: an adopted process)."""
        if w.proc is not None:
            code = w.proc.poll()
            return False if code is None else code
        return False if alive(w.pid) else None

    def _exited(self, w: _Watched, code: int | None, now: float) -> None:
        if code is None:
            desc = "exited (status unknown: adopted process)"
        elif code < 0:
            desc = f"killed by {signal.Signals(-code).name}"
        else:
            desc = f"exit code {code}"
        # the rest of its tree would hold its port: stop it before restarting
        left = tree(w.pid) if w.pid else set()
        if left:
            signal_all(left, signal.SIGKILL)
            psutil.wait_procs(_procs(left), timeout=5)
        self._after_exit(w, desc, now)

    def _after_exit(self, w: _Watched, desc: str, now: float) -> None:
        ran = now - (w.started_at or now)
        w.last_exit, w.last_exit_at = desc, time.strftime("%Y-%m-%dT%H:%M:%S%z")
        w.proc, w.pid = None, None
        w.failures = 0 if ran >= self.policy.stable_after else w.failures + 1
        p = self.policy
        w.recent = [t for t in w.recent if now - t < p.crash_loop_window]
        if len(w.recent) >= p.crash_loop_restarts:
            w.crash_loop, w.state = True, "crash-loop"
            w.error = (
                f"crash loop: {len(w.recent)} restarts within {p.crash_loop_window:.0f}s, last: {desc}; "
                f"not restarting (see {self.lookup(w.name).log_file(self.s)}, fix it, then `make up`)"
            )
            self.log(f"{w.name}: {w.error}")
            return
        delay = min(p.backoff_base * 2 ** max(0, w.failures - 1), p.backoff_max)
        w.next_start, w.state = now + delay, "backoff"
        self.log(f"{w.name}: {desc} after {ran:.1f}s; restarting in {delay:.1f}s")

    def _start(self, w: _Watched, now: float) -> None:
        restart = w.last_exit is not None
        if restart:
            w.restarts += 1
            w.recent.append(now)
        w.started_at = now
        try:
            svc, argv, env = self.command(w.name)
            w.proc = start(svc, argv, env, self.s)
        except Exception as e:  # noqa: BLE001 - e.g. its database is down: counts as a crash
            self._after_exit(w, f"could not start: {type(e).__name__}: {e}", now)
            return
        w.pid, w.state, w.error = w.proc.pid, "running", None
        if restart:
            self.log(f"{w.name}: restarted (restart #{w.restarts}), pid {w.pid}")
        else:
            self.log(f"{w.name}: started, pid {w.pid}")


def read_state(settings: Settings) -> dict[str, Any] | None:
    """The supervisor's state file, if the supervisor that wrote it still runs."""
    data = read_json(settings.run_dir / STATE_FILE)
    if data and is_ours(int(data.get("pid") or 0), SUPERVISOR, settings):
        return data
    return None
