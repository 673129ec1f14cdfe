"""Benchmarks leave nothing running (benchmarks/_setup.py, README "Benchmarks"): the benchmarks' setup path
(an isolated platform with its own embedded PostgreSQL, the API under uvicorn with 2 workers) run by
``python benchmarks/_setup.py --smoke``, then interrupted with Ctrl-C (SIGINT to its process group) or failing
on its own: no process it started survives, the embedded PostgreSQL's and the API's ports are free again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from ports import stop_group

REPO = Path(__file__).resolve().parents[2]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["ctrl-c", "failure"])
def test_a_benchmark_leaves_no_process_and_no_database_running(ending, tmp_path):
    # the embedded PostgreSQL path (no DATABASE_URL), as on a machine without a server of its own
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SENTIMENT_") and k not in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "PGPASSFILE")
    }
    argv = [sys.executable, "benchmarks/_setup.py", "--smoke", *(["--fail"] if ending == "failure" else [])]
    err = tmp_path / "stderr.txt"
    with err.open("w") as e:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=e, text=True, start_new_session=True
        )
    work = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, err.read_text()[-3000:]
        info = json.loads(line)
        work = Path(info["work"])
        assert info["pg_port"] and info["pg_port"] != 54329  # never the platform's default port
        started = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        if ending == "ctrl-c":
            names = {p.name() for p in started}
            assert "postgres" in names and len(started) >= 4, names  # the postmaster and its helpers, uvicorn's 3
            assert not _port_free(info["pg_port"]) and not _port_free(info["api_port"])
            os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(90)
        assert rc != 0
        if ending == "failure":
            assert "RuntimeError: --fail" in err.read_text()
        survivors = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not survivors, [(p.pid, p.cmdline()) for p in survivors]
        assert _port_free(info["pg_port"]), info
        assert _port_free(info["api_port"]), info
        # its temporary folder goes too, unless the benchmark failed: then it keeps the logs and says where
        if ending == "ctrl-c":
            assert not work.exists()
        else:
            assert work.exists() and f"kept {work}" in err.read_text()
    finally:
        if proc.poll() is None:
            stop_group(proc)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
