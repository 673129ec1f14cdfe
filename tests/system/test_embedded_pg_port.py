"""A process holding the embedded PostgreSQL's port (a benchmark's leftover server, say) is named in one line
with the setting to change, before anything starts: ``ml services up`` (its port check, as for the other
ports) and ``ml db up``, instead of pg_ctl's "could not start server" traceback."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ports import free_port

REPO = Path(__file__).resolve().parents[2]
ML = str(Path(sys.executable).parent / "ml")


@pytest.mark.parametrize("cmd", [["services", "up", "--only", "mlflow", "--no-train"], ["db", "up"]])
def test_the_process_holding_the_embedded_postgres_port_is_named(cmd, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SENTIMENT_") and k not in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "PGPASSFILE")
        }
        env.update(
            {
                "SENTIMENT_VAR_DIR": str(tmp_path / "var"),
                "SENTIMENT_EMBEDDED_PG_PORT": str(port),
                "SENTIMENT_API_PORT": str(free_port()),
                "SENTIMENT_MLFLOW_PORT": str(free_port()),
                "SENTIMENT_AIRFLOW_PORT": str(free_port()),
                "COLUMNS": "300",
            }
        )
        r = subprocess.run([ML, *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    line = re.search(rf"embedded PostgreSQL: 127\.0\.0\.1:{port} is in use by pid (\d+) \((.*)\) \(choose .*", out)
    assert line, out
    assert int(line.group(1)) == os.getpid() and "pytest" in line.group(2), line.group(0)
    assert "SENTIMENT_EMBEDDED_PG_PORT=" in line.group(0) and "DATABASE_URL=" in line.group(0)
    assert "Traceback" not in out and "pg_ctl" not in out and "could not start server" not in out
    if cmd[0] == "services":  # the port check runs before anything starts: not even a database cluster
        assert not (tmp_path / "var" / "pg" / "PG_VERSION").exists()
