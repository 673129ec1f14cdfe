"""Scaling out (issue 24): one function per table, all against baselines measured in the same run.

- ``predict_table``: POST /predict under wrk at a fixed number of connections, for one API instance reached
  directly, the same instance behind HAProxy, and two instances behind HAProxy. The proxy's configuration is the
  one ``make up API_REPLICAS=N`` ships (``ml.platform.startup.proxy.render_haproxy``); each instance has its own
  prediction log folder and trusts only the proxy, as under ``make up``. Workers as ``make up`` gives them on this
  machine: one per CPU core for one instance, the cores shared among the replicas (``api_workers`` = 0). Each
  configuration is measured ``--rounds`` times, interleaved (the machine's noise hits all of them alike); the
  table shows the median round. Ratios are to the direct single instance.

Every process this starts (uvicorn, HAProxy, wrk) runs in a session of its own and is stopped on exit, on
Ctrl-C, on SIGTERM and when anything fails.

Usage: .venv/bin/python benchmarks/scale.py [--seconds 10] [--connections 16] [--rounds 3]
Needs wrk and haproxy (apt-get install -y wrk haproxy). Uses DATABASE_URL (database `smops_bench_scale` on that
server) or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg
from _setup import (
    SHARED,
    api_command,
    isolated_platform,
    on_exit,
    remove_at_exit,
    start_server,
    train_champion,
    wait_http,
)

from ml.platform import db
from ml.platform.startup import proxy

LUA = """
local bodies = {}
local i = 0
local f = io.open("%s", "r")
for line in f:lines() do bodies[#bodies + 1] = line end
f:close()
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


class Processes:
    """Every process the benchmark starts, each in a session of its own; ``stop_all`` ends each group
    (SIGTERM, then SIGKILL after a timeout), from ``main``'s ``finally`` and at exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        atexit.register(self.stop_all)  # _setup turns SIGTERM/SIGHUP into SystemExit and stops any leftovers

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        p = start_server(argv, log, env)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 40) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            except ProcessLookupError:
                pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ms(v: str, unit: str) -> float:
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(procs: Processes, url: str, bodies: Path, conns: int, seconds: float, work: Path) -> dict[str, float]:
    """Closed-loop POST /predict: requests/s of 2xx answers, p50 and p99 in ms, errors."""
    script = work / "predict.lua"
    script.write_text(LUA % bodies)
    log = work / "wrk.out"
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{int(seconds)}s", "--latency", "--timeout", "5s", "-s", str(script), url]
    p = procs.start(argv, log)
    try:
        p.wait(seconds + 60)
    finally:
        procs.stop(p)
    out = log.read_text()
    if "Requests/sec" not in out:
        raise SystemExit(f"wrk failed: {out[-2000:]}")
    took = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if took is None:
        raise SystemExit(f"wrk printed no request count: {out[-2000:]}")
    n, secs = int(took.group(1)), _ms(took.group(2), took.group(3)) / 1e3
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = (
        sum(int(x) for x in m.groups())
        if (m := re.search(r"Socket errors: \D+(\d+)\D+(\d+)\D+(\d+)\D+(\d+)", out))
        else 0
    )
    res = {"rps": (n - non2xx) / secs, "errors": float(non2xx + sock)}
    for q in ("50", "99"):
        m = re.search(rf"\s{q}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\b", out)
        res[f"p{q}"] = _ms(m.group(1), m.group(2)) if m else float("nan")
    return res


def start_instance(procs: Processes, work: Path, name: str, workers: int) -> tuple[subprocess.Popen, int]:
    """An API instance on loopback, as ``make up API_REPLICAS=N`` starts one: its own prediction log folder,
    X-Forwarded-For trusted from the proxy's address only."""
    port = free_port()
    argv = [*api_command(port, workers), "--no-access-log", "--log-level", "warning"]
    argv += ["--http", "api.protocol:HeadDeadlineProtocol", "--timeout-keep-alive", "5"]
    env = {
        "SENTIMENT_API_STATE_DIR": str(work / name),
        "SENTIMENT_TRUSTED_PROXIES": json.dumps([proxy.PROXY_ADDRESS]),
    }
    log = work / f"{name}.log"
    p = procs.start(argv, log, env)
    wait_http(f"http://127.0.0.1:{port}/health/ready", p, log)
    return p, port


def start_proxy(procs: Processes, work: Path, name: str, ports: list[int]) -> str:
    port = free_port()
    cfg = work / f"{name}.cfg"
    cfg.write_text(proxy.render_haproxy(f"127.0.0.1:{port}", [("127.0.0.1", p) for p in ports]))
    log = work / f"{name}.log"
    p = procs.start(proxy.haproxy_argv(cfg), log)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health/ready", p, log)
    time.sleep(2.5)  # every instance UP (rise 2 x inter 1 s), not only the first
    return url


def predict_table(procs: Processes, work: Path, bodies: Path, conns: int, seconds: float, rounds: int) -> None:
    """/predict: one instance direct, one behind HAProxy, two behind HAProxy (make up's workers for each)."""
    cores = os.cpu_count() or 1
    one_workers, two_workers = cores, max(1, cores // 2)  # commands.api_workers with api_replicas 1 and 2
    one, one_port = start_instance(procs, work, "one", one_workers)
    direct = f"http://127.0.0.1:{one_port}"
    proxied_one = start_proxy(procs, work, "haproxy-one", [one_port])
    pair = [start_instance(procs, work, f"pair-{i}", two_workers) for i in (1, 2)]
    proxied_two = start_proxy(procs, work, "haproxy-two", [port for _, port in pair])
    configs = [
        (f"1 instance ({one_workers} workers), direct", direct),
        (f"1 instance ({one_workers} workers), behind HAProxy", proxied_one),
        (f"2 instances ({two_workers} worker{'s' * (two_workers > 1)} each), behind HAProxy", proxied_two),
    ]
    for _, url in configs:  # warm-up: every worker has loaded the model and opened its connections
        wrk(procs, url, bodies, conns, 3, work)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in configs}
    for r in range(rounds):
        for label, url in configs:
            runs[label].append(wrk(procs, url, bodies, conns, seconds, work))
            x = runs[label][-1]
            print(
                f"  round {r + 1}: {label}: {x['rps']:.0f} req/s, p50 {x['p50']:.1f} ms, p99 {x['p99']:.1f} ms",
                flush=True,
            )

    def median_run(xs: list[dict[str, float]]) -> dict[str, float]:
        return sorted(xs, key=lambda x: x["rps"])[len(xs) // 2]

    def ratio(label: str, key: str) -> float:  # the median over the rounds of (this run / the direct run beside it)
        return statistics.median(x[key] / d[key] for x, d in zip(runs[label], runs[configs[0][0]], strict=True))

    rows = {label: median_run(xs) for label, xs in runs.items()}
    print(f"\nPOST /predict, wrk -t2 -c{conns}, {seconds:.0f} s per run, {rounds} interleaved rounds")
    print("| configuration | req/s (2xx), median run | × direct | p50 ms | p99 ms | p99 × direct | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, x in rows.items():
        print(
            f"| {label} | {x['rps']:,.0f} | {ratio(label, 'rps'):.2f} | {x['p50']:.1f} | {x['p99']:.1f} "
            f"| {ratio(label, 'p99'):.2f} | {x['errors']:.0f} |"
        )
    print("× direct: the median over the rounds of the ratio to the direct run of the same round.")
    spread = {label: max(x["rps"] for x in xs) / min(x["rps"] for x in xs) for label, xs in runs.items()}
    print(f"(spread max/min req/s over the rounds: {', '.join(f'{v:.2f}' for v in spread.values())})")
    print(
        f"{cores} CPU cores shared by the instances, HAProxy, PostgreSQL and wrk. Each 2xx was fsynced to its "
        "instance's prediction log first; errors are the API's own 503s (admission sheds what it cannot start "
        "in time). Goal: the proxy costs under 10% (row 2 ≥ 0.90 × direct)."
    )


def drop_databases(*names: str) -> None:
    with psycopg.connect(db.with_database(db.libpq_url(os.environ["DATABASE_URL"]), "postgres"), autocommit=True) as c:
        for n in names:
            c.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for tool in ("wrk", "haproxy"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is not installed: apt-get install -y wrk haproxy")
    procs = Processes()
    try:
        # databases of this run's own (dropped at the end): _setup removes the var/ folder a kept database's
        # snapshot rows would point to
        name = f"bench_scale_{uuid.uuid4().hex[:6]}"
        on_exit("drop the benchmark's databases", lambda: drop_databases(f"smops_{name}", f"smops_{name}_mlflow"))
        isolated_platform(name)
        os.environ["SENTIMENT_RATE_LIMITS_ENABLED"] = "false"  # one load generator is one identity
        os.environ["SENTIMENT_BEHAVIOUR_CHECKS"] = "false"
        scratch = remove_at_exit(Path(tempfile.mkdtemp(prefix="bench-scale-")))
        train_champion(sample_size=20_000)
        with SHARED.open(encoding="utf-8") as f:
            texts = [r[1] for r in csv.reader(f)][::50]
        bodies = scratch / "bodies.txt"
        bodies.write_text("\n".join(json.dumps({"text": t}) for t in random.Random(0).sample(texts, 500)) + "\n")
        predict_table(procs, scratch, bodies, args.connections, args.seconds, args.rounds)
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
