"""/predict under load from a second process on loopback, next to the bare model call.

Starts the API (uvicorn, 1 worker) against a benchmark database with a TF-IDF champion trained
on the shared 100k tweets, then drives POST /predict from this process with an asyncio httpx
client at several concurrency levels for a bounded time. Prints requests/s and p50/p99
latency, and the same statistics for the bare in-process `predict_proba` call on one tweet.

Usage: .venv/bin/python benchmarks/api_load.py [--seconds 10] [--concurrency 1,8,32]
Uses DATABASE_URL (database `smops_bench_api` on that server) or the embedded PostgreSQL.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import REPO, SHARED, isolated_platform, train_champion  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def drive(url: str, texts: list[str], concurrency: int, seconds: float) -> tuple[int, int, list[float], float]:
    import httpx

    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def worker(i: int) -> None:
            nonlocal errors
            rng = random.Random(i)
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.post("/predict", json={"text": rng.choice(texts)})
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    return len(lat), errors, lat, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", default="1,8,32")
    args = ap.parse_args()

    work = isolated_platform("bench_api")
    from ml import registry

    model = registry.load_version(train_champion())
    with SHARED.open(encoding="utf-8") as f:
        texts = [r[1] for r in csv.reader(f)][::50]

    # bare model: one tweet per call, as /predict does
    bare = []
    t_end = time.perf_counter() + min(args.seconds, 5)
    rng = random.Random(0)
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        model.predict_proba([rng.choice(texts)])
        bare.append(time.perf_counter() - t0)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (work / "api.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=REPO, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(120):
            try:
                if httpx.get(url + "/health", timeout=2).json()["model"]["loaded"]:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("API did not come up: " + (work / "api.log").read_text()[-2000:])
        asyncio.run(drive(url, texts, 4, 1.0))  # warm-up
        rows = []
        for c in [int(x) for x in args.concurrency.split(",")]:
            n, errors, lat, wall = asyncio.run(drive(url, texts, c, args.seconds))
            rows.append((f"POST /predict, {c} concurrent", n, errors, n / wall, pct(lat, 0.5), pct(lat, 0.99)))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)

    bare_rate = len(bare) / sum(bare)
    print("\n| path | requests | errors | req/s | p50 ms | p99 ms | req/s vs bare |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| bare predict_proba (1 tweet, in process) | {len(bare):,} | 0 | {bare_rate:,.0f} | "
          f"{statistics.median(bare) * 1e3:.2f} | {pct(bare, 0.99) * 1e3:.2f} | 1.00x |")
    for name, n, errors, rate, p50, p99 in rows:
        print(f"| {name} | {n:,} | {errors} | {rate:,.0f} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {rate / bare_rate:.3f}x |")
    print(f"\nserver: uvicorn, 1 worker, {os.cpu_count()} CPUs shared with the load generator; "
          f"model: TF-IDF + LR; every request also buffered for the PostgreSQL COPY writer")


if __name__ == "__main__":
    main()
