"""Talking to the supervisor: run it, start it detached, ask it to run services, read its state."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from typing import Any

from ml.platform import supervisor as sup
from ml.platform.config import Settings, get_settings
from ml.platform.startup.commands import command, settings_env
from ml.platform.startup.services import console_script, service_names, services
from ml.platform.supervisor import (
    STATE_FILE,
    SUPERVISOR,
    WANTED_FILE,
    Policy,
    Service,
    ServiceError,
    Supervisor,
    read_json,
    read_state,
    tail,
    write_json,
)


def supervise(settings: Settings | None = None, policy: Policy | None = None) -> None:
    """Run the supervisor in this process until SIGTERM (``ml services supervise``)."""
    settings = settings or get_settings()
    Supervisor(settings, lambda name: command(name, settings), lambda name: services(settings)[name], policy).run()


def supervisor_service() -> Service:
    return Service(SUPERVISOR)


def supervisor_pid(settings: Settings) -> int | None:
    return supervisor_service().pid(settings)


def ensure_supervisor(settings: Settings, extra_env: dict[str, str] | None = None) -> tuple[int, bool]:
    """Start the supervisor unless ours runs; returns (pid, started_now)."""
    pid = supervisor_pid(settings)
    if pid:
        return pid, False
    env = settings_env(settings)
    env.pop("SMOPS_SERVICE", None)
    env.update(extra_env or {})
    (settings.run_dir / STATE_FILE).unlink(missing_ok=True)
    proc = sup.start(supervisor_service(), [console_script("ml"), "services", "supervise"], env, settings)
    deadline = time.monotonic() + 60
    while read_state(settings) is None:
        if proc.poll() is not None:
            raise ServiceError(
                f"the supervisor exited at start-up (exit {proc.returncode}); "
                f"last lines of {supervisor_service().log_file(settings)}:\n{tail(supervisor_service().log_file(settings))}"
            )
        if time.monotonic() > deadline:
            raise ServiceError(
                f"the supervisor wrote no state within 60s; see {supervisor_service().log_file(settings)}"
            )
        time.sleep(0.2)
    return proc.pid, True


def want(settings: Settings, names: Iterable[str], timeout: float = 60) -> dict[str, int]:
    """Ask the supervisor to run ``names`` (besides what it runs already); wait until each has
    a pid. Returns {name: pid}."""
    names = list(names)
    path = settings.run_dir / WANTED_FILE
    previous = read_json(path) or {}
    request = int(previous.get("request") or 0) + 1
    current = set(previous.get("services", [])) | set(names)
    write_json(path, {"services": [n for n in service_names(settings) if n in current], "request": request})
    pid = supervisor_pid(settings)
    if not pid:
        raise ServiceError("the supervisor is not running")
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while True:
        state = read_state(settings) or {}
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
                f"see {supervisor_service().log_file(settings)}"
            )
        time.sleep(0.2)


def supervised(settings: Settings) -> dict[str, dict[str, Any]]:
    return (read_state(settings) or {}).get("services", {})
