"""/predict and /feedback under load (wrk, hey) with 1, 2 and 4 worker processes, beside
`mlflow models serve` of the same champion and the bare model call, all in one run.

Starts the API as `make up` does (uvicorn --workers N --no-access-log) against a benchmark
database with a TF-IDF champion trained on the shared 100k tweets, then:

- closed loop: `wrk` at 1, 8 and 64 connections on POST /predict and POST /feedback;
- open loop: `hey -q` at a fixed total rate (default 500 req/s) on POST /predict;
- the same closed/open loads on `mlflow models serve -m models:/NAME@champion --env-manager local`
  (POST /invocations, one tweet per request);
- the bare single-tweet `predict_proba` of the same model, in this process.

Prints tables; asserts nothing. Every /predict answer was fsynced to the worker's prediction log
first; every /feedback answer was committed in PostgreSQL. The /feedback bodies report on real
prediction ids (with their feedback_token) and confirm the predicted label (no alert evaluation).

Usage: .venv/bin/python benchmarks/api_load.py [--seconds 8] [--workers 1,2,4] [--rate 500]
Needs wrk and hey on PATH (apt-get install -y wrk hey). Uses DATABASE_URL (database
`smops_bench_api` on that server) or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _setup import REPO, SHARED, api_command, isolated_platform, train_champion

from ml.platform import registry, tracking
from ml.platform.config import get_settings

BIN = Path(sys.executable).parent
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
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    for q in ("50", "99"):
        m = re.search(rf"\s{q}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\b", out)
        res[f"p{q}"] = _ms(m.group(1), m.group(2)) if m else float("nan")
    return res


def hey(url: str, body: str, rate: int, seconds: float) -> dict:
    workers = 10
    out = subprocess.run(
        [
            "hey",
            "-z",
            f"{int(seconds)}s",
            "-c",
            str(workers),
            "-q",
            str(rate / workers),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-d",
            body,
            url,
        ],
        capture_output=True,
        text=True,
    ).stdout
    res = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for q in ("50", "99"):
        m = re.search(rf"\s{q}%+ in ([\d.]+) secs", out)
        res[f"p{q}"] = float(m.group(1)) * 1e3 if m else float("nan")
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    res["n"] = sum(int(v) for v in codes.values())
    res["non2xx"] = sum(int(v) for k, v in codes.items() if not k.startswith("2"))
    res["timeouts"] = len(re.findall(r"Client\.Timeout|deadline exceeded", out))
    return res


def wait_http(url: str, proc: subprocess.Popen, log: Path, ok=lambda r: r.status_code == 200, timeout=180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            if ok(httpx.get(url, timeout=2)):
                return
        except httpx.HTTPError:  # not listening yet
            pass
        time.sleep(0.3)
    raise SystemExit(f"not ready: {log.read_text()[-3000:]}")


def start(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, **(env or {}), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--conns", default="1,8,64")
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument(
        "--quotas",
        action="store_true",
        help="keep the per-identity quotas on (counters in PostgreSQL, limits set far above the load): "
        "measures what the quota check costs each request",
    )
    args = ap.parse_args()
    for tool in ("wrk", "hey"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not on PATH: apt-get install -y wrk hey")
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
    quotas = " (quotas on)" if args.quotas else ""
    scratch = Path(tempfile.mkdtemp(prefix="bench-api-load-"))

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

    rows: list[tuple] = []
    for n_workers in [int(w) for w in args.workers.split(",")]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = work / f"api-{n_workers}.log"
        proc = start(
            [
                *api_command(port, str(n_workers)),
                "--no-access-log",
                "--log-level",
                "warning",
                "--timeout-graceful-shutdown",
                "30",
            ],
            log,
        )
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
                    (
                        f"API, {n_workers} worker(s){quotas}",
                        "POST /predict",
                        f"{c} conn",
                        wrk(url, "/predict", predict_bodies, c, args.seconds, scratch),
                    )
                )
            rows.append(
                (
                    f"API, {n_workers} worker(s){quotas}",
                    "POST /predict",
                    f"{args.rate}/s open",
                    hey(f"{url}/predict", predict_bodies[0], args.rate, args.seconds),
                )
            )
            for c in conns:
                rows.append(
                    (
                        f"API, {n_workers} worker(s){quotas}",
                        "POST /feedback",
                        f"{c} conn",
                        wrk(url, "/feedback", fb_bodies, c, args.seconds, scratch),
                    )
                )
        finally:
            stop(proc)

    if not args.no_mlflow:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = work / "mlflow-serve.log"
        proc = start(
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
                    f"{args.rate}/s open",
                    hey(f"{url}/invocations", bodies[0], args.rate, args.seconds),
                )
            )
        finally:
            stop(proc)

    for _, _, _, r in rows:  # wrk/hey count every answer: the rate of 2xx answers is what is compared
        r["ok_rps"] = r["rps"] * (r["n"] - r["non2xx"]) / r["n"] if r["n"] else 0.0
    ref = {load: r["ok_rps"] for name, _, load, r in rows if name == "mlflow models serve"}
    print(
        f"\nbare predict_proba, 1 tweet per call, in process: {bare_rate:,.0f} calls/s "
        f"(p50 {statistics.median(bare) * 1e3:.3f} ms, p99 {pct(bare, 0.99) * 1e3:.3f} ms)\n"
    )
    print(
        "| server | endpoint | load | requests | non-2xx (503 shed) | timeouts | 2xx/s | p50 ms | p99 ms "
        "| vs bare | vs mlflow |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ep, load, r in rows:
        vs_ml = f"{r['ok_rps'] / ref[load]:.2f}x" if ep == "POST /predict" and ref.get(load) else ""
        vs_bare = f"{r['ok_rps'] / bare_rate:.2f}x" if "predict" in ep or "invocations" in ep else ""
        print(
            f"| {name} | {ep} | {load} | {r['n']:,} | {r['non2xx']:,} | {r['timeouts']} | {r['ok_rps']:,.0f} | "
            f"{r['p50']:.2f} | {r['p99']:.2f} | {vs_bare} | {vs_ml} |"
        )
    print("\np50/p99: of every answer, the fast 503s of admission control included (wrk and hey do not split them).")
    print(
        f"\n{os.cpu_count()} CPUs shared by the servers, PostgreSQL and the load generators (wrk -t1/-t2, "
        f"hey -c 10); wrk --timeout 5s; open loop: hey -q at {args.rate} req/s in total. Each /predict answer "
        f"was fsynced to a prediction log first; each /feedback answer committed in PostgreSQL."
    )


if __name__ == "__main__":
    main()
