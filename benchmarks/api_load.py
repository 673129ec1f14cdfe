"""/predict and /feedback under load (wrk and a paced open-loop sender) with 1, 2 and 4 worker processes, beside
`mlflow models serve` of the same champion and the bare model call, all in one run.

Starts the API as `make up` does (uvicorn --workers N --no-access-log) against a benchmark
database with a TF-IDF champion trained on the shared 100k tweets, then:

- closed loop: `wrk` at 1, 8 and 64 connections on POST /predict and POST /feedback, with the share
  of answers shed by admission control (503) next to the rate of 2xx answers;
- open loop: a paced sender of this file (:func:`open_loop`) at a fixed total rate - by default half
  the bare single-call rate measured in the same run - on POST /predict. Each request has an intended
  send time (``start + i / rate``); its latency is measured from that time, not from when a connection
  was free to send it, so a server that stalls is charged for the requests it held up (no coordinated
  omission, as wrk2). Connections are opened as needed (at most 256);
- the same closed/open loads on `mlflow models serve -m models:/NAME@champion --env-manager local`
  (POST /invocations, one tweet per request);
- the bare single-tweet `predict_proba` of the same model, in this process, in the same run.

``--beside-platform``: first starts `make up`'s other services on free ports with this run's var/ and
databases - the supervisor, the MLflow tracking server and Airflow (api-server, scheduler,
dag-processor, triggerer), idle - trains the champion through them, and leaves them running beside
the API while it is measured (the API polls the champion alias on that MLflow server, as under
`make up`). Everything it started is stopped when the benchmark ends, however it ends
(benchmarks/_setup.py).

Prints tables; asserts nothing. Every /predict answer was fsynced to the worker's prediction log
first; every /feedback answer was committed in PostgreSQL. The /feedback bodies report on real
prediction ids (with their feedback_token) and confirm the predicted label (no alert evaluation).

Usage: .venv/bin/python benchmarks/api_load.py [--seconds 8] [--workers 1,2,4] [--rate 0 (= half bare)]
    [--beside-platform]
Needs wrk on PATH (apt-get install -y wrk). Uses DATABASE_URL (database `smops_bench_api` on that
server) or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _setup import (
    BIN,
    SHARED,
    api_command,
    free_port,
    isolated_platform,
    on_exit,
    start_server,
    train_champion,
    wait_http,
)

from ml.platform import registry, tracking
from ml.platform.config import get_settings, reset_settings
from ml.platform.startup.down import down
from ml.platform.startup.up import up

LUA = """
local bodies = {}
local i = 0
local f = io.open("%s", "r")
for line in f:lines() do bodies[#bodies + 1] = line end
f:close()
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[i])
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function() shed = 0 end
response = function(status, headers, body) if status == 503 then shed = shed + 1 end end
done = function(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("shed") end
  io.write(string.format("shed503: %%d\\n", total))
end
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _ms(v: str, unit: str) -> float:
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(url: str, path: str, bodies: list[str], conns: int, seconds: float, work: Path) -> dict:
    data = work / f"bodies-{abs(hash(path))}-{len(bodies)}.txt"
    data.write_text("\n".join(bodies) + "\n")
    script = work / f"wrk-{abs(hash(path))}.lua"
    script.write_text(LUA % (data, path))
    threads = 1 if conns == 1 else 2
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(conns),
            "-d",
            f"{int(seconds)}s",
            "--latency",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
    )
    if "Requests/sec" not in out.stdout:
        raise SystemExit(f"wrk failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    out = out.stdout
    res = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "n": int(re.search(r"(\d+) requests in", out).group(1)),
        "non2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0,
        "timeouts": int(m.group(1)) if (m := re.search(r"timeout (\d+)", out)) else 0,
    }
    res["shed"] = int(re.search(r"shed503: (\d+)", out).group(1))  # the 503s (LUA's response())
    for q in ("50", "99"):
        m = re.search(rf"\s{q}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\b", out)
        res[f"p{q}"] = _ms(m.group(1), m.group(2)) if m else float("nan")
    return res


async def _open_loop(url: str, path: str, bodies: list[str], rate: float, seconds: float) -> dict:
    host, port = url.split("//", 1)[1].split(":")
    loop = asyncio.get_running_loop()
    n = max(1, int(rate * seconds))
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened = asyncio.Semaphore(256)
    lat: list[float] = []
    codes: dict[int, int] = {}
    errors = 0
    start = loop.time() + 0.2

    async def one(i: int) -> None:
        nonlocal errors
        intended = start + i / rate
        await asyncio.sleep(max(0.0, intended - loop.time()))
        body = bodies[i % len(bodies)].encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        async with opened:
            conn = idle.pop() if idle else await asyncio.open_connection(host, int(port))
            try:
                reader, writer = conn
                writer.write(head + body)
                async with asyncio.timeout(5):
                    status_line = await reader.readuntil(b"\r\n")
                    headers = await reader.readuntil(b"\r\n\r\n")
                    m = re.search(rb"(?i)content-length:\s*(\d+)", headers)
                    await reader.readexactly(int(m.group(1)) if m else 0)
                lat.append(loop.time() - intended)  # from the intended send time (no coordinated omission)
                code = int(status_line.split()[1])
                codes[code] = codes.get(code, 0) + 1
                if b"close" in headers.lower():
                    writer.close()
                else:
                    idle.append(conn)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                errors += 1
                conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    for _, w in idle:
        w.close()
    done = sum(codes.values())
    res = {
        "rps": done / wall,
        "n": done + errors,
        "non2xx": sum(v for k, v in codes.items() if not 200 <= k < 300) + errors,
        "shed": codes.get(503, 0),
        "timeouts": errors,
        "intended_rps": rate,
    }
    for q in (0.5, 0.99, 0.999):
        res[f"p{q * 100:g}".replace(".", "_")] = pct(lat, q) * 1e3 if lat else float("nan")
    return res


def open_loop(url: str, path: str, bodies: list[str], rate: float, seconds: float) -> dict:
    """POST ``path`` at ``rate`` requests/s for ``seconds``, paced from intended send times. The collector is
    off meanwhile: a full collection of this process's heap (the model, the corpus) would stall the sender for
    hundreds of milliseconds and be charged to the server."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return asyncio.run(_open_loop(url, path, bodies, rate, seconds))
    finally:
        gc.enable()
        gc.unfreeze()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


FIXED_CAP = {
    "SENTIMENT_API_MIN_INFLIGHT": "32",
    "SENTIMENT_API_MAX_INFLIGHT": "32",
    "SENTIMENT_API_QUEUE_DEADLINE_MS": "0.001",
}


def start_platform(work: Path) -> None:
    """`make up`'s services other than the API (supervisor, MLflow, Airflow's four), on free ports, with
    this run's var/ and databases; stopped when the benchmark ends (``ml services down``)."""
    os.environ["SENTIMENT_MLFLOW_PORT"] = str(free_port())
    os.environ["SENTIMENT_AIRFLOW_PORT"] = str(free_port())
    os.environ["SENTIMENT_API_PORT"] = str(free_port())  # not started: the benchmark runs its own API
    reset_settings()
    s = get_settings()
    on_exit("platform services (ml services down)", lambda: down(s))
    t0 = time.monotonic()
    up(train=False, wait=True, only="mlflow,airflow", settings=s)
    print(f"platform up beside the API in {time.monotonic() - t0:.0f} s (state in {work})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--conns", default="1,8,64")
    ap.add_argument("--rate", type=float, default=0, help="open-loop rate, req/s; 0: half the bare single-call rate")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument(
        "--beside-platform",
        action="store_true",
        help="run with `make up`'s other services alive (MLflow server, Airflow scheduler, dag-processor, "
        "triggerer, api-server; idle), started on free ports for this run and stopped at its end",
    )
    ap.add_argument(
        "--fixed-cap-baseline",
        action="store_true",
        help="also measure the admission this replaced, in the same run: a fixed cap of 32 requests in progress "
        "per worker, 503 at once past it (api_min_inflight = api_max_inflight = 32, a 1 us queue deadline)",
    )
    ap.add_argument(
        "--quotas",
        action="store_true",
        help="keep the per-identity quotas on (counters in PostgreSQL, limits set far above the load): "
        "measures what the quota check costs each request",
    )
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not on PATH: apt-get install -y wrk")
    conns = [int(c) for c in args.conns.split(",")]

    work = isolated_platform("bench_api")
    # the per-identity quotas (ml/platform/quotas.py) would answer 429 to a load generator: off here,
    # or on with limits far above the load (--quotas) to measure what the check costs
    if args.quotas:
        os.environ["SENTIMENT_RATE_LIMITS_ENABLED"] = "true"
        os.environ["SENTIMENT_RATE_LIMIT_PREDICT"] = "100000000/minute"
        os.environ["SENTIMENT_RATE_LIMIT_FEEDBACK"] = "100000000/minute"
    else:
        os.environ["SENTIMENT_RATE_LIMITS_ENABLED"] = "false"
    reset_settings()
    label = "API" + (" beside the platform" if args.beside_platform else "")
    quotas = " (quotas on)" if args.quotas else ""
    scratch = Path(tempfile.mkdtemp(prefix="bench-api-load-"))
    if args.beside_platform:
        start_platform(work)

    version = train_champion()
    s = get_settings()
    uri = tracking.configure(s)
    model = registry.load_version(version)
    with SHARED.open(encoding="utf-8") as f:
        texts = [r[1] for r in csv.reader(f)][::50]
    rng = random.Random(0)
    predict_bodies = [json.dumps({"text": t}) for t in rng.sample(texts, 500)]

    # the bare model: one tweet per call, as a /predict request without the server around it
    bare: list[float] = []
    t_end = time.perf_counter() + 5
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        model.predict_proba([rng.choice(texts)])
        bare.append(time.perf_counter() - t0)
    bare_rate = len(bare) / sum(bare)
    rate = args.rate or round(bare_rate / 2)

    rows: list[tuple] = []
    modes = [("", {})]
    if args.fixed_cap_baseline:  # the admission this replaced, emulated: 32 in progress per worker, no queue
        modes.append((" [fixed cap 32, before]", FIXED_CAP))
    for n_workers, (mode, mode_env) in [(int(w), m) for w in args.workers.split(",") for m in modes]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = work / f"api-{n_workers}{'-fixed' if mode else ''}.log"
        proc = start_server(
            [
                *api_command(port, str(n_workers)),
                "--no-access-log",
                "--log-level",
                "warning",
                "--timeout-graceful-shutdown",
                "30",
            ],
            log,
            mode_env,
        )
        name = f"{label}, {n_workers} worker(s){quotas}{mode}"
        try:
            wait_http(f"{url}/health/ready", proc, log)

            made = httpx.post(f"{url}/predict/batch", json={"texts": texts[:500]}, timeout=60).json()["predictions"]
            fb_bodies = [
                json.dumps(
                    {"prediction_id": p["id"], "correct_label": p["label"], "feedback_token": p["feedback_token"]}
                )
                for p in made
            ]
            wrk(url, "/predict", predict_bodies, 8, 2, scratch)  # warm-up
            for c in conns:
                rows.append(
                    (name, "POST /predict", f"{c} conn", wrk(url, "/predict", predict_bodies, c, args.seconds, scratch))
                )
            rows.append(
                (
                    name,
                    "POST /predict",
                    f"{rate:g}/s open",
                    open_loop(url, "/predict", predict_bodies, rate, args.seconds),
                )
            )
            for c in conns:
                rows.append(
                    (name, "POST /feedback", f"{c} conn", wrk(url, "/feedback", fb_bodies, c, args.seconds, scratch))
                )
        finally:
            stop(proc)

    if not args.no_mlflow:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = work / "mlflow-serve.log"
        proc = start_server(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{s.model_name}@{s.champion_alias}",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            log,
            {"MLFLOW_TRACKING_URI": uri},
        )
        try:
            wait_http(f"{url}/ping", proc, log)
            bodies = [
                json.dumps({"dataframe_split": {"columns": ["text"], "data": [[json.loads(b)["text"]]]}})
                for b in predict_bodies
            ]
            wrk(url, "/invocations", bodies, 8, 2, scratch)
            for c in conns:
                rows.append(
                    (
                        "mlflow models serve",
                        "POST /invocations",
                        f"{c} conn",
                        wrk(url, "/invocations", bodies, c, args.seconds, scratch),
                    )
                )
            rows.append(
                (
                    "mlflow models serve",
                    "POST /invocations",
                    f"{rate:g}/s open",
                    open_loop(url, "/invocations", bodies, rate, args.seconds),
                )
            )
        finally:
            stop(proc)

    for _, _, _, r in rows:  # the load generators count every answer: the rate of 2xx answers is what is compared
        r["ok_rps"] = r["rps"] * (r["n"] - r["non2xx"]) / r["n"] if r["n"] else 0.0
    ref = {load: r["ok_rps"] for name, _, load, r in rows if name == "mlflow models serve"}
    eight = {(name, ep): r["ok_rps"] for name, ep, load, r in rows if load == "8 conn"}
    where = (
        "beside the running platform (MLflow server, Airflow api-server, scheduler, dag-processor, triggerer)"
        if args.beside_platform
        else "API alone"
    )
    print(
        f"\n{where}. bare predict_proba, 1 tweet per call, in process, this run: {bare_rate:,.0f} calls/s "
        f"(p50 {statistics.median(bare) * 1e3:.3f} ms, p99 {pct(bare, 0.99) * 1e3:.3f} ms)\n"
    )
    print("Closed loop (wrk):\n")
    print(
        "| server | endpoint | load | requests | 503 shed | shed share | other non-2xx | timeouts | 2xx/s "
        "| vs 8 conn | p50 ms | p99 ms | vs bare | vs mlflow |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ep, load, r in rows:
        if "open" in load:
            continue
        vs_ml = f"{r['ok_rps'] / ref[load]:.2f}x" if ep == "POST /predict" and ref.get(load) else ""
        vs_bare = f"{r['ok_rps'] / bare_rate:.2f}x" if "predict" in ep or "invocations" in ep else ""
        vs8 = f"{r['ok_rps'] / eight[(name, ep)]:.2f}x" if eight.get((name, ep)) else ""
        share = f"{r['shed'] / r['n']:.1%}" if r["n"] else ""
        print(
            f"| {name} | {ep} | {load} | {r['n']:,} | {r['shed']:,} | {share} | {r['non2xx'] - r['shed']:,} "
            f"| {r['timeouts']} | {r['ok_rps']:,.0f} | {vs8} | {r['p50']:.2f} | {r['p99']:.2f} | {vs_bare} | {vs_ml} |"
        )
    print("\np50/p99 (wrk): of every answer, admission's 503s included (wrk does not split them).\n")
    print(
        f"Open loop (paced, latency from each request's intended send time), {rate:g} req/s = {rate / bare_rate:.2f}x the bare rate:\n"
    )
    print(
        "| server | endpoint | intended req/s | answered/s | 2xx/s | 503 shed | shed share | errors | p50 ms | p99 ms | p99.9 ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ep, load, r in rows:
        if "open" not in load:
            continue
        share = f"{r['shed'] / r['n']:.1%}" if r["n"] else ""
        print(
            f"| {name} | {ep} | {r['intended_rps']:g} | {r['rps']:,.0f} | {r['ok_rps']:,.0f} | {r['shed']:,} | {share} "
            f"| {r['timeouts']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p99_9']:.2f} |"
        )
    print(
        f"\n{os.cpu_count()} CPUs shared by the servers, PostgreSQL and the load generators (wrk -t1/-t2, "
        f"the paced sender in this process); wrk --timeout 5s, paced sender 5 s. Each /predict answer "
        f"was fsynced to a prediction log first; each /feedback answer committed in PostgreSQL."
    )


if __name__ == "__main__":
    main()
