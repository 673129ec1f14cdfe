"""Time of one monitoring run (``ml.stages.monitoring.build.build_report``) on stored predictions.

A TF-IDF champion is trained on the shared 100k tweets (held-out 20k -> reference capped at
``monitoring_reference_max_rows``, 10k); ``--rows`` predictions (default 10,000, tweets from the
same file scored by the champion) are written to ``predictions`` in one past day; then:
  (1) the first report (builds and caches the champion's reference),
  (2) the nightly report (reference cached),
  (3) the same with LSA-embedding drift on,
  (4) a small day (1,000 predictions: p-value tests),
and a breakdown of (2): load from PostgreSQL, descriptors, Evidently, HTML + JSON files.

Usage: .venv/bin/python benchmarks/monitoring.py [--rows 10000] [--repeat 2]
Uses DATABASE_URL (a database `smops_bench_mon` on that server) or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import resource
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from _setup import embedded_postgres, remove_at_exit

from ml.data.snapshots import validate_and_snapshot
from ml.platform import db, registry
from ml.platform.config import get_settings, reset_settings
from ml.stages import train
from ml.stages.monitoring.build import build_report
from ml.stages.monitoring.descriptors import add_descriptors
from ml.stages.monitoring.drift import run_report
from ml.stages.monitoring.period import load_current
from ml.stages.monitoring.reference import load_reference

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data" / "sentiment140_100k.csv"
DAY = datetime(2025, 6, 1, tzinfo=UTC)
SMALL_DAY = DAY + timedelta(days=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2, help="runs of the nightly report (best and median shown)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-monitoring-", dir=REPO / "var" if (REPO / "var").exists() else None))
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

    remove_at_exit(work)
    # the platform's server (var/pg), stopped at the end if this run started it
    base = os.environ.get("DATABASE_URL") or embedded_postgres()
    os.environ["SENTIMENT_VAR_DIR"] = str(work / "var")
    os.environ["SENTIMENT_MODEL_NAME"] = name = f"bench-mon-{uuid.uuid4().hex[:6]}"
    os.environ["DATABASE_URL"] = db.with_database(base, "smops_bench_mon")
    os.environ["SENTIMENT_MLFLOW_DATABASE"] = "smops_bench_mon_mlflow"

    logging.basicConfig(level=logging.WARNING)

    reset_settings()
    db.migrate()
    s = get_settings()
    print(f"training a TF-IDF champion on {SHARED.name} ...", flush=True)
    snap = validate_and_snapshot(SHARED)
    run_id = train.train(snap.hash, "tfidf_lr")
    train.evaluate(run_id)
    version = train.register(run_id)
    registry.set_champion(version)
    model = registry.load_version(version)

    with SHARED.open(encoding="utf-8", newline="") as f:
        texts = [r[1].strip() for r in csv.reader(f)]
    rng = random.Random(0)

    def store(day: datetime, n: int) -> None:
        chosen = rng.sample(texts, n)
        proba = model.predict_proba(chosen)
        step = 86_000 / n
        with psycopg.connect(s.database_url, autocommit=True) as conn, conn.cursor() as cur:
            with cur.copy(
                "COPY predictions (text, label, p_negative, p_positive, model_name, model_version, source,"
                " created_at) FROM STDIN"
            ) as cp:
                for i, (t, p) in enumerate(zip(chosen, proba)):
                    cp.write_row(
                        (
                            t,
                            int(p[1] >= 0.5),
                            float(p[0]),
                            float(p[1]),
                            name,
                            version,
                            "api" if i % 2 else "batch",
                            day + timedelta(seconds=i * step),
                        )
                    )

    store(DAY, args.rows)
    store(SMALL_DAY, 1000)
    print(f"stored {args.rows:,} + 1,000 predictions; reports under {s.reports_dir}", flush=True)

    results: list[tuple[str, int, int, float, str]] = []

    def timed(label: str, settings=None, start=DAY) -> dict:
        t0 = time.perf_counter()
        r = build_report(start=start, end=start + timedelta(days=1), settings=settings)
        results.append((label, r["current"]["rows"], r["reference"]["rows"], time.perf_counter() - t0, r["status"]))
        return r

    first = timed("(1) first report: builds + caches the reference")
    nightly = [timed("(2) nightly report, reference cached") for _ in range(args.repeat)]
    timed("(3) + LSA-embedding drift", s.model_copy(update={"monitoring_embedding_drift": True}))
    timed("(4) small day, 1,000 rows (p-value tests)", start=SMALL_DAY)

    # breakdown of (2)
    parts: list[tuple[str, float]] = []
    a, b = DAY, DAY + timedelta(days=1)
    t0 = time.perf_counter()
    with db.connect(db.database_url(s)) as conn:
        cur = load_current(conn, name, a, b, s.monitoring_max_rows, s.seed)
    parts.append(("load current from PostgreSQL", time.perf_counter() - t0))
    t0 = time.perf_counter()
    ref, meta, vocab = load_reference(s)
    parts.append(("load cached reference (+ registry lookup)", time.perf_counter() - t0))
    t0 = time.perf_counter()
    cur = add_descriptors(cur, vocab, meta["preprocess"])
    parts.append(("text descriptors (incl. OOV) of current", time.perf_counter() - t0))
    t0 = time.perf_counter()
    snapshot, _, _ = run_report(cur, ref, s)
    parts.append(("Evidently Report.run (10 columns incl. raw text)", time.perf_counter() - t0))
    t0 = time.perf_counter()
    snapshot.save_html(str(work / "x.html"))
    snapshot.save_json(str(work / "x.json"))
    parts.append(("save HTML + JSON", time.perf_counter() - t0))

    print(f"\nMonitoring run time ({os.cpu_count()} CPUs; champion v{version}, first report: {first['verdict']})\n")
    print("| run | current rows | reference rows | seconds | status |\n|---|---:|---:|---:|---|")
    for label, n_cur, n_ref, sec, status in results:
        print(f"| {label} | {n_cur:,} | {n_ref:,} | {sec:.1f} | {status} |")
    times = sorted(x[3] for x in results if x[0].startswith("(2)"))
    print(f"\nnightly report: best {times[0]:.1f} s, median {times[len(times) // 2]:.1f} s")
    print("\n| part of (2) | seconds |\n|---|---:|")
    for label, sec in parts:
        print(f"| {label} | {sec:.2f} |")
    html = Path(nightly[0]["files"]["html"]).stat().st_size / 1e6
    print(f"\nHTML report: {html:.1f} MB; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"(work dir {work}; database smops_bench_mon)")


if __name__ == "__main__":
    main()
