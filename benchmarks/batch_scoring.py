"""Batch-scoring throughput on a corpus-sized file (default 1.6M rows).

Prints rows/second for
  (a) the bare model's predict_proba over the whole input in memory (the baseline),
  (b) the DAG's scoring path end to end: read + shard + predict + COPY into PostgreSQL +
      Parquet output (1 worker, and N workers as the executor runs mapped shards),
  (c) a naive loop that predicts and INSERTs one row at a time (on a subset; it is slow),
and the peak memory of the scoring path. Figures are ratios against (a) from the same run.

Usage: .venv/bin/python benchmarks/batch_scoring.py [--rows 1600000] [--workers 2] [--naive-rows 20000]
Uses DATABASE_URL (a database `smops_bench` on that server) or the embedded PostgreSQL.
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import SHARED, isolated_platform, train_champion  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_600_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=200_000)
    ap.add_argument("--naive-rows", type=int, default=20_000)
    ap.add_argument("--family", default="tfidf_lr", help="champion family (e.g. transformer: batched inference)")
    ap.add_argument("--train-sample", type=int, default=None, help="training sample for a non-TF-IDF champion")
    args = ap.parse_args()
    params = {"max_steps": 30} if args.family == "transformer" else {"epochs": 1} if args.family != "tfidf_lr" else {}

    work = isolated_platform("bench_scoring")
    from ml import db, registry

    version = train_champion(family=args.family, params=params,
                             sample_size=args.train_sample if args.family != "tfidf_lr" else None)

    # the input: the shared 100k tweets repeated to --rows (Sentiment140 two-column layout)
    with SHARED.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    big = work / f"tweets_{args.rows}.csv"
    with big.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        for i in range(args.rows):
            w.writerow(rows[i % len(rows)])
    texts = [rows[i % len(rows)][1].strip() for i in range(args.rows)]
    print(f"input: {big} ({big.stat().st_size / 1e6:.0f} MB, {args.rows:,} rows)", flush=True)

    results = []
    model = registry.load_version(version)
    t0 = time.perf_counter()
    model.predict_proba(texts)
    t_a = time.perf_counter() - t0
    results.append(("(a) bare predict_proba, in memory", args.rows, t_a))
    del texts

    import json
    import subprocess

    import psycopg

    peaks = {}
    for workers in sorted({1, args.workers}):
        with psycopg.connect(db.database_url(), autocommit=True) as conn:  # same starting state each time
            conn.execute("TRUNCATE predictions, batches CASCADE")
        # the scoring path as its own process (as an Airflow task would be), so its peak memory is its own
        res = subprocess.run([sys.executable, "-m", "ml.cli", "score", str(big), "--shard-rows", str(args.shard_rows),
                              "--workers", str(workers)], capture_output=True, text=True, env=os.environ.copy())
        if res.returncode != 0:
            raise SystemExit(res.stderr[-3000:])
        s = json.loads(res.stdout[res.stdout.index("{"):])
        assert s["rows_scored"] == args.rows, s
        # s["seconds"]: from the batch's creation (plan start) to finalize, excluding interpreter start-up
        results.append((f"(b) DAG scoring path, {workers} worker(s)", args.rows, float(s["seconds"])))
        peaks[workers] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    # (c) naive: one predict + one INSERT (own transaction) per row, on a subset
    sub = [r[1] for r in rows[: args.naive_rows]]
    with psycopg.connect(db.database_url(), autocommit=True) as conn:
        t0 = time.perf_counter()
        for i, t in enumerate(sub):
            p = model.predict_proba([t])[0]
            conn.execute(
                "INSERT INTO predictions (text, label, p_negative, p_positive, model_name, model_version, source,"
                " batch_id, source_row) VALUES (%s,%s,%s,%s,%s,%s,'batch','naive',%s)",
                (t, int(p[1] >= 0.5), float(p[0]), float(p[1]), "bench", version, i),
            )
        t_c = time.perf_counter() - t0
    results.append(("(c) naive loop: predict + INSERT per row", len(sub), t_c))

    base_rate = args.rows / t_a
    print("\n| path | rows | seconds | rows/s | vs (a) |")
    print("|---|---:|---:|---:|---:|")
    for name, n, t in results:
        print(f"| {name} | {n:,} | {t:.1f} | {n / t:,.0f} | {n / t / base_rate:.2f}x |")
    print("\npeak RSS of the scoring path (largest process): "
          + ", ".join(f"{w} worker(s): {mb:,.0f} MB" for w, mb in peaks.items()))
    print(f"model: {args.family} champion v{version}; shard size {args.shard_rows:,} rows; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
