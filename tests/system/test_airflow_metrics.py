"""Airflow's own metrics (issue 22): with ``airflow_statsd`` set, every Airflow process the platform
starts sends StatsD to it (what a Prometheus statsd_exporter turns into scrapeable series); unset, none
is sent. A real triggerer against the session's Airflow metadata DB and a real UDP socket."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ports import stop_group
from pydantic import ValidationError

from ml.platform.config import Settings
from ml.platform.orchestration import airflow_env


def test_statsd_is_off_unless_configured_and_the_address_is_checked(platform_env):
    assert "AIRFLOW__METRICS__STATSD_ON" not in airflow_env(platform_env, base={})
    env = airflow_env(platform_env.model_copy(update=dict(airflow_statsd="statsd-exporter:9125")), base={})
    assert (env["AIRFLOW__METRICS__STATSD_ON"], env["AIRFLOW__METRICS__STATSD_HOST"]) == ("True", "statsd-exporter")
    assert (env["AIRFLOW__METRICS__STATSD_PORT"], env["AIRFLOW__METRICS__STATSD_PREFIX"]) == ("9125", "airflow")
    for bad in ("no-port", "host:port", "a b:1", "host:123456"):
        with pytest.raises(ValidationError):
            Settings(airflow_statsd=bad)


@pytest.mark.slow
def test_a_running_airflow_process_sends_its_metrics(platform_env, airflow_cli, tmp_path):
    """The triggerer (it runs nothing of other tests: it only heartbeats while no DAG defers) sends
    ``airflow.triggerer_heartbeat`` to the configured address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1.0)
        port = sock.getsockname()[1]
        env = airflow_env(platform_env.model_copy(update=dict(airflow_statsd=f"127.0.0.1:{port}")))
        log = tmp_path / "triggerer.log"
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "triggerer", "--skip-serve-logs"],
            env=env,
            start_new_session=True,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        seen: list[str] = []
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not any(m.startswith("airflow.triggerer_heartbeat:") for m in seen):
                assert proc.poll() is None, log.read_text()[-3000:]
                try:
                    seen += sock.recv(65535).decode().splitlines()
                except TimeoutError:
                    pass
        finally:
            stop_group(proc)
    assert any(m.startswith("airflow.triggerer_heartbeat:1|c") for m in seen), (seen[:20], log.read_text()[-2000:])
