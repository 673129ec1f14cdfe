"""Batch-scoring throughput on a corpus-sized file (default 1.6M rows).

Prints rows/second for
  (a) the bare model's predict_proba over the whole input in memory (the baseline),
  (b) the DAG's scoring path end to end: read + shard + predict + COPY into PostgreSQL +
      Parquet output (1 worker, and N workers as the executor runs mapped shards),
  (d) the real DAG through Airflow: an api-server, dag-processor and scheduler (LocalExecutor)
      run ``sentiment_batch_scoring``; timed from the run's start to its success as Airflow
      records them (dag_run.start_date -> end_date), for each ``--dag-shard-rows`` (0: auto,
      one shard per CPU),
  (c) a naive loop that predicts and INSERTs one row at a time (on a subset; it is slow),
and the peak memory of the scoring path. Figures are ratios against (a) from the same run.

Usage: .venv/bin/python benchmarks/batch_scoring.py [--rows 1600000] [--workers 2] [--naive-rows 20000]
       [--dag-shard-rows 0,200000] [--no-dag] [--no-local] [--no-naive]
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
import json
import signal
import socket
import subprocess

import httpx
import psycopg
from _setup import SHARED, isolated_platform, train_champion

from ml.platform import db, registry
from ml.platform.config import reset_settings
from ml.platform.orchestration import airflow_env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_600_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=200_000)
    ap.add_argument("--naive-rows", type=int, default=20_000)
    ap.add_argument("--family", default="tfidf_lr", help="champion family (e.g. transformer: batched inference)")
    ap.add_argument("--train-sample", type=int, default=None, help="training sample for a non-TF-IDF champion")
    ap.add_argument(
        "--dag-shard-rows",
        default="0,200000",
        help="comma-separated shard sizes for the scheduler runs (0: auto, one shard per CPU)",
    )
    ap.add_argument("--no-dag", action="store_true", help="skip the scheduler runs (d)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive loop (c)")
    ap.add_argument("--no-local", action="store_true", help="skip the scoring path without Airflow (b)")
    args = ap.parse_args()
    params = {"max_steps": 30} if args.family == "transformer" else {"epochs": 1} if args.family != "tfidf_lr" else {}

    work = isolated_platform("bench_scoring")
    # batch input is confined to the inbox and batch_input_roots: the input below is written in `work`
    os.environ["SENTIMENT_BATCH_INPUT_ROOTS"] = f'["{work}"]'

    reset_settings()

    version = train_champion(
        family=args.family, params=params, sample_size=args.train_sample if args.family != "tfidf_lr" else None
    )

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

    peaks = {}
    for workers in [] if args.no_local else sorted({1, args.workers}):
        with psycopg.connect(db.database_url(), autocommit=True) as conn:  # same starting state each time
            conn.execute("TRUNCATE predictions, batches CASCADE")
        # the scoring path as its own process (as an Airflow task would be), so its peak memory is its own
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "ml.cli",
                "score",
                str(big),
                "--shard-rows",
                str(args.shard_rows),
                "--workers",
                str(workers),
            ],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
        )
        if res.returncode != 0:
            raise SystemExit(res.stderr[-3000:])
        s = json.loads(res.stdout[res.stdout.index("{") :])
        assert s["rows_scored"] == args.rows, s
        # s["seconds"]: from the batch's creation (plan start) to finalize, excluding interpreter start-up
        results.append((f"(b) DAG scoring path, {workers} worker(s)", args.rows, float(s["seconds"])))
        peaks[workers] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    if not args.no_dag:
        for shard_rows in [int(x) for x in args.dag_shard_rows.split(",") if x.strip()]:
            with psycopg.connect(db.database_url(), autocommit=True) as conn:
                conn.execute("TRUNCATE predictions, batches CASCADE")
            secs, shards = scheduler_run(big, shard_rows, work)
            label = "auto: one per CPU" if shard_rows == 0 else f"{shard_rows:,} rows"
            results.append(
                (f"(d) DAG via the scheduler, run start -> success ({shards} shards, {label})", args.rows, secs)
            )

    # (c) naive: one predict + one INSERT (own transaction) per row, on a subset
    sub = [r[1] for r in rows[: args.naive_rows]]
    if args.no_naive:
        sub = sub[:0]
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
    if sub:
        results.append(("(c) naive loop: predict + INSERT per row", len(sub), t_c))

    base_rate = args.rows / t_a
    print("\n| path | rows | seconds | rows/s | vs (a) |")
    print("|---|---:|---:|---:|---:|")
    for name, n, t in results:
        print(f"| {name} | {n:,} | {t:.1f} | {n / t:,.0f} | {n / t / base_rate:.2f}x |")
    if peaks:
        print(
            "\npeak RSS of the scoring path (largest process): "
            + ", ".join(f"{w} worker(s): {mb:,.0f} MB" for w, mb in peaks.items())
        )
    print(
        f"model: {args.family} champion v{version}; shard size {args.shard_rows:,} rows (b); {os.cpu_count()} CPUs;"
        f" load average {os.getloadavg()[0]:.1f} at the end"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scheduler_run(path: Path, shard_rows: int, work: Path) -> tuple[float, int]:
    """Run sentiment_batch_scoring on ``path`` under a real Airflow (api-server, dag-processor,
    scheduler with the LocalExecutor); returns (run start -> success in seconds, as Airflow
    recorded them; number of shards)."""
    env = airflow_env()
    port = _free_port()
    env.update(
        {
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        }
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    logs = work / "airflow-logs"
    logs.mkdir(exist_ok=True)
    procs = [
        subprocess.Popen(
            [airflow, *cmd],
            env=env,
            start_new_session=True,
            stdout=(logs / f"{cmd[0]}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for cmd in (["api-server", "--port", str(port)], ["dag-processor"], ["scheduler"])
    ]
    af_url = db.libpq_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        deadline = time.time() + 300
        while True:
            if time.time() > deadline:
                raise SystemExit("Airflow did not come up: " + (logs / "api-server.log").read_text()[-2000:])
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                up = False
            with psycopg.connect(af_url, autocommit=True) as c:
                parsed = c.execute("SELECT 1 FROM dag WHERE dag_id='sentiment_batch_scoring'").fetchone()
            if up and parsed:
                break
            time.sleep(1)
        subprocess.run(
            [airflow, "dags", "unpause", "sentiment_batch_scoring"], env=env, check=True, capture_output=True
        )
        conf = json.dumps({"input_path": str(path), "shard_rows": shard_rows})
        run_id = f"bench__{int(time.time())}_{shard_rows}"
        subprocess.run(
            [airflow, "dags", "trigger", "sentiment_batch_scoring", "-c", conf, "--run-id", run_id],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        print(f"triggered {run_id} (shard_rows={shard_rows})", flush=True)
        while True:
            with psycopg.connect(af_url, autocommit=True) as c:
                state, start, end = c.execute(
                    "SELECT state, start_date, end_date FROM dag_run WHERE dag_id='sentiment_batch_scoring'"
                    " AND run_id=%s",
                    (run_id,),
                ).fetchone()
            if state in ("success", "failed"):
                break
            time.sleep(1)
        if state != "success":
            raise SystemExit(f"run {run_id} {state}; logs under {env['AIRFLOW__LOGGING__BASE_LOG_FOLDER']}")
        with psycopg.connect(db.database_url(), autocommit=True) as c:
            shards = c.execute("SELECT n_shards FROM batches WHERE airflow_run_id=%s", (run_id,)).fetchone()[0]
        return (end - start).total_seconds(), int(shards)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


if __name__ == "__main__":
    main()
