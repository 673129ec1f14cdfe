"""A real API server for the tests that need real processes: ``uvicorn api.main:app`` (optionally
with ``--workers``) in a child process of its own session, on a free port, with the session's
environment (database, MLflow store, var/) plus the settings given."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
from ports import free_port, listens

REPO = Path(__file__).resolve().parents[3]


class LiveServer:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (spawned children; not multiprocessing's resource tracker)."""
        out = []
        for c in psutil.Process(self.proc.pid).children():
            try:
                if "spawn_main" in " ".join(c.cmdline()):
                    out.append(c.pid)
            except psutil.Error:
                pass
        return out

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the API exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200 and listens(
                    self.proc.pid, int(self.url.rsplit(":", 1)[1])
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the API was not ready within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


@contextmanager
def live_server(
    log_dir: Path, workers: int | None = None, env: dict[str, str] | None = None, extra_args: list[str] | None = None
) -> Iterator[LiveServer]:
    """The API under uvicorn on a port the kernel found free. That port can be taken by another
    process before uvicorn binds it; uvicorn then exits at once, and the server is started again on
    another port (3 tries). A server that exits for any other reason fails the test with its log."""
    server = None
    for attempt in range(3):
        server = _start(log_dir, workers, env, extra_args)
        try:
            server.wait_ready()
            break
        except AssertionError:
            log = server.log.read_text(errors="replace")
            if server.proc.poll() is None or "address already in use" not in log.lower() or attempt == 2:
                server.stop()
                raise
    assert server is not None
    try:
        yield server
    finally:
        server.stop()


def _start(log_dir: Path, workers: int | None, env: dict[str, str] | None, extra_args: list[str] | None) -> LiveServer:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *(["--workers", str(workers)] if workers else []),
        *(extra_args or []),
    ]
    log = log_dir / f"api-{port}.log"
    full_env = {**os.environ, **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return LiveServer(proc, f"http://127.0.0.1:{port}", log)
