"""Ports for the servers the tests start, beside whatever else runs on the machine.

A server that can take over a bound socket gets one (``socket.create_server(("127.0.0.1", 0))``
handed over). One that cannot (uvicorn started as a command, MLflow, Airflow's api-server) gets
``free_port()``: a port the kernel just handed out, which another process may take before the server
binds it. Its caller therefore retries on another port when the server exits with "address already
in use", and counts the server as up only when ``listens()`` says the listening socket is the
server's own (an answer on the port may come from the process that took it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import psutil


def free_port() -> int:
    """A port the kernel found free just now (not held: see the module's note)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens(pid: int, port: int) -> bool:
    """Whether ``port``'s listening TCP socket belongs to process ``pid`` or one of its descendants."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return False
    for p in tree:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections(kind="tcp")):
                return True
        except psutil.Error:
            continue
    return False


@contextmanager
def refused_port() -> Iterator[int]:
    """A port that refuses connections while the block runs (bound, never listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a server the test started in a session of its own: SIGTERM to its process group, SIGKILL
    after ``timeout``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def in_ci() -> bool:
    """CI counts as set for 1, true and yes (what .ci/run exports): a missing tool or service then fails a
    test instead of skipping it."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
