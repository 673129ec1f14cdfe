"""Benchmark: compare the model families on the shared 100k real tweets and print the table.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python benchmarks/compare_families.py

Defaults: all four families, the quick profile: every family on the whole training pool, each
against its training budget (``budget_seconds`` in config/search_space.yaml: quick 45/90/180/285 s
for tfidf_lr/cnn/bilstm/transformer; ``--budget cnn=300`` overrides one), about 15 minutes on 2 idle
CPU cores (fits ~10 min, scoring the rest). ``--family-sample cnn=20000`` still caps a family's pool.

It runs the same code as the DAG (``ml.stages.compare.run_comparison``: search per family with MLflow
runs nested under one parent, winners on the same held-out split, the comparison stored in
PostgreSQL) but in its own databases (``<name>`` and ``<name>_mlflow`` on the server of
DATABASE_URL, default name ``sentiment_bench``) and its own ``var/`` directory, so it never
touches the platform's champion. Without DATABASE_URL the embedded PostgreSQL is used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from _setup import comparison_platform

from ml.platform import db
from ml.stages import compare
from ml.views.comparison import render

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data" / "sentiment140_100k.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED), help="labelled CSV (default: the shared 100k tweets)")
    ap.add_argument("--families", default="tfidf_lr,cnn,bilstm,transformer")
    ap.add_argument("--profile", default="quick", choices=["quick", "full"])
    ap.add_argument("--sample-size", type=int, default=None, help="training sample for every family")
    ap.add_argument(
        "--family-sample",
        action="append",
        default=[],
        help="family=N (repeatable): cap a family's training pool (default: all of it)",
    )
    ap.add_argument(
        "--budget",
        action="append",
        default=[],
        help="family=SECONDS (repeatable): override the profile's budget_seconds",
    )
    ap.add_argument("--search-space", default=None, help="JSON merged over the profile")
    ap.add_argument("--db-name", default="sentiment_bench", help="database for the benchmark's records")
    ap.add_argument("--var-dir", default=str(REPO / "var" / "bench"))
    ap.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = ap.parse_args()

    comparison_platform(args.db_name, args.var_dir)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("alembic", "urllib3", "matplotlib", "httpx", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    db.migrate()

    wanted = [f.strip() for f in args.families.split(",") if f.strip()]
    sizes: dict[str, int] = {}
    for item in args.family_sample:
        k, v = item.split("=", 1)
        sizes[k] = int(v)
    space = json.loads(args.search_space) if args.search_space else {}
    for item in args.budget:
        k, v = item.split("=", 1)
        space.setdefault(k, {})["budget_seconds"] = float(v)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = compare.run_comparison(
        data_path=args.data,
        families=[f for f in wanted],
        profile=args.profile,
        sample_size=args.sample_size,
        sample_sizes=sizes,
        search_space=space or None,
        render=render,
    )
    wall = time.perf_counter() - t0
    latest = compare.latest_comparison()
    load_after = os.getloadavg()
    print(
        f"\n# Model comparison: {Path(args.data).name}, profile {args.profile}, {os.cpu_count()} CPU cores, "
        f"{wall / 60:.1f} min wall; load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}\n"
    )
    print(latest["markdown"])
    print(
        "| family | held-out acc | budget s | fits s | search s (all trials) | stopped | best step | epochs | "
        "seen | trials | held-out n |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        print(
            f"| {r['family']} | {r['accuracy']:.4f} | {r.get('budget_seconds') or '-'} | "
            f"{r.get('budget_used_seconds') or 0:.0f} | {r['search_seconds']:.0f} | {r.get('stopped')} | "
            f"{r.get('best_step')} | {r.get('epochs')} | {r.get('examples_seen') or 0:,} | {r['n_trials']} | "
            f"{r['n_test']:,} |"
        )
    print(f"\nwinner: {res['winner_family']}; chart: {latest['chart_path']}; MLflow parent run {res['parent_run_id']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res["rows"], indent=2, default=str))


if __name__ == "__main__":
    main()
