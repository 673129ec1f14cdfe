"""Time from the retraining threshold being crossed to the new champion answering /predict.

Setup (not timed): the shared 100k tweets are split 90k / 10k by a fixed shuffle. A TF-IDF + LR
champion (the baseline family) is trained on the 90k (validated snapshot, usual 80/20 split) and
served by a live API (uvicorn, 1 worker, ``model_poll_seconds`` as configured: 5 s by default). The
other 10k tweets are "live traffic": sent to ``POST /predict/batch``; the ones the champion gets
wrong are reported through ``POST /feedback`` with their true label (each report runs the alert
rule too) until ``retraining_feedback_fraction`` (0.5%) of the champion's corpus is reached.

Timed, from the moment the threshold-crossing report is stored:
  trigger (``ml.stages.retraining.trigger.check_trigger``, what the end of sentiment_monitoring runs) ->
  prepare (snapshot = parent + reports, with its held-out split) -> train (champion's family +
  params) -> evaluate (challenger and champion on the same held-out set + reported tweets) ->
  register -> gate (behavioural checks) -> promote -> the API serves the new version.
Round 1 runs the stages in this process (the DAG's functions); round 2 (``--airflow``, default
on) runs the real ``airflow dags test sentiment_retraining`` on the next crossing.

``retraining_promotion_margin`` is -1 here so that the challenger is promoted and the serving path
is timed; the decision the configured margin would have taken is printed next to it.

Usage: .venv/bin/python benchmarks/retraining.py [--no-airflow] [--poll 5]
Uses DATABASE_URL's server (throw-away databases ``smops_bench_rt_*``, dropped at the end) or the
embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from _setup import api_command, embedded_postgres, remove_at_exit, start_server, wait_http

from ml.data.snapshots import validate_and_snapshot
from ml.platform import db, registry
from ml.platform.config import get_settings, reset_settings
from ml.platform.orchestration import airflow_env
from ml.stages import promotion, train
from ml.stages.promotion import promote_challenger
from ml.stages.retraining.challenger import evaluate, train_challenger
from ml.stages.retraining.records import get_retraining
from ml.stages.retraining.training_set import prepare
from ml.stages.retraining.trigger import champion_context, check_trigger, threshold_for
from ml.views.comparison import render

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data" / "sentiment140_100k.csv"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-airflow", action="store_true", help="skip round 2 (airflow dags test)")
    ap.add_argument("--poll", type=float, default=None, help="API model_poll_seconds (default: the configured 5)")
    args = ap.parse_args()

    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    server = os.environ.get("DATABASE_URL") or embedded_postgres()  # stopped at the end if this run started it
    tag = uuid.uuid4().hex[:6]
    dbname = f"smops_bench_rt_{tag}"
    work = remove_at_exit(
        Path(tempfile.mkdtemp(prefix="bench-retraining-", dir=REPO / "var" if (REPO / "var").exists() else None))
    )
    os.environ.update(
        {
            "DATABASE_URL": db.with_database(db.libpq_url(server), dbname),
            "SENTIMENT_MLFLOW_DATABASE": f"{dbname}_mlflow",
            "SENTIMENT_AIRFLOW_DATABASE": f"{dbname}_airflow",
            "SENTIMENT_VAR_DIR": str(work / "var"),
            "SENTIMENT_MODEL_NAME": f"bench-retraining-{tag}",
            "SENTIMENT_RETRAINING_PROMOTION_MARGIN": "-1",
        }
    )
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if args.poll is not None:
        os.environ["SENTIMENT_MODEL_POLL_SECONDS"] = str(args.poll)

    logging.basicConfig(level=logging.WARNING)
    proc = None
    try:
        proc = run(args, work)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

        with psycopg.connect(db.with_database(db.libpq_url(server), "postgres"), autocommit=True) as conn:
            for d in (dbname, f"{dbname}_mlflow", f"{dbname}_airflow"):
                conn.execute(f'DROP DATABASE IF EXISTS "{d}" WITH (FORCE)')


def run(args, work: Path):
    reset_settings()
    db.migrate()
    s = get_settings()
    with SHARED.open(encoding="utf-8", newline="") as f:
        rows = [(r[0], r[1]) for r in csv.reader(f)]
    random.Random(2026).shuffle(rows)
    corpus, traffic = rows[:90_000], rows[90_000:]
    corpus_csv = work / "corpus_90k.csv"
    with corpus_csv.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(corpus)

    print(f"setup: champion (tfidf_lr) on 90,000 of {SHARED.name}; live traffic = the other 10,000 ...", flush=True)
    t = time.perf_counter()
    snap = validate_and_snapshot(corpus_csv)
    run_id = train.train(snap.hash, "tfidf_lr")
    train.evaluate(run_id)
    train.register(run_id)
    first = promotion.promote(run_id)
    v1 = registry.champion().version
    print(f"  champion v{v1} ({first['reason']}) in {time.perf_counter() - t:.0f}s; snapshot {snap.n_rows:,} rows")

    port = _free_port()
    proc = start_server(api_command(port, 1), work / "api.log")
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, timeout=60)
    # up once it serves the champion trained above
    wait_http(f"{base}/health", proc, work / "api.log", lambda r: r.json()["model"]["version"] == v1, 120, 0.5)
    traffic_iter = iter(traffic)

    def cross_threshold() -> tuple[float, int, int]:
        """Traffic through the API, misclassifications reported, until the threshold is crossed."""
        ctx = champion_context(s)
        thr = threshold_for(ctx.corpus_rows, s)
        reported = 0
        requests = 0
        while reported < thr:
            batch = [next(traffic_iter) for _ in range(500)]
            preds = client.post("/predict/batch", json={"texts": [t for _, t in batch]}).json()["predictions"]
            requests += 1
            for (pol, _), p in zip(batch, preds):
                truth = "positive" if pol == "4" else "negative"
                if p["label"] != truth and reported < thr:
                    r = client.post("/feedback", json={"prediction_id": p["id"], "correct_label": truth})
                    assert r.status_code == 201, r.text
                    reported += 1
        return time.perf_counter(), thr, ctx.corpus_rows

    def wait_served(version: int) -> float:
        while client.post("/predict", json={"text": "benchmark probe"}).json()["model_version"] != version:
            time.sleep(0.05)
        return time.perf_counter()

    results = []
    # ---------------- round 1: the DAG's functions in this process
    crossed, thr, corpus_rows = cross_threshold()
    marks = [("threshold crossed", crossed)]
    d = check_trigger()
    marks.append(("trigger (check_trigger)", time.perf_counter()))
    assert d["trigger"], d
    rid = d["retraining_id"]
    prep = prepare(rid)
    marks.append(("prepare (snapshot + split)", time.perf_counter()))
    run2 = train_challenger(rid, render=render)
    marks.append(("train challenger", time.perf_counter()))
    metrics = evaluate(rid, run2)
    marks.append(("evaluate (held-out + reports)", time.perf_counter()))
    train.register(run2)
    marks.append(("register", time.perf_counter()))
    train.check_behaviour(run2)
    marks.append(("gate (behavioural checks)", time.perf_counter()))
    out = promote_challenger(rid, run2)
    marks.append(("promote", time.perf_counter()))
    if not out["promoted"]:
        raise SystemExit(f"challenger not promoted even with margin -1: {out['reason']}")
    marks.append(("API serves the new version", wait_served(out["champion_after"])))
    results.append(("in-process", thr, corpus_rows, marks, metrics, prep))

    # ---------------- round 2: airflow dags test sentiment_retraining
    if not args.no_airflow:
        env = airflow_env(s)
        airflow = str(Path(sys.executable).parent / "airflow")
        print("  (airflow db migrate for round 2, not timed) ...", flush=True)
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
        crossed, thr, corpus_rows = cross_threshold()
        marks = [("threshold crossed", crossed)]
        d = check_trigger()
        marks.append(("trigger (check_trigger)", time.perf_counter()))
        assert d["trigger"], d
        res = subprocess.run(
            [airflow, "dags", "test", "sentiment_retraining", "-c", json.dumps({"retraining_id": d["retraining_id"]})],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        marks.append(("airflow dags test sentiment_retraining", time.perf_counter()))
        r = get_retraining(d["retraining_id"])
        if res.returncode != 0 or r["status"] != "promoted":
            print(res.stdout[-3000:], res.stderr[-3000:])
            raise SystemExit(f"round 2 failed: {r['status']} {r['decision'] or r['error']}")
        marks.append(("API serves the new version", wait_served(r["champion_after"])))
        results.append(("airflow dags test", thr, corpus_rows, marks, r["metrics"], r["dataset_report"]))

    poll = s.model_poll_seconds
    print(
        f"\nRetraining on feedback: {os.cpu_count()} CPUs (shared), baseline family tfidf_lr, "
        f"API poll {poll:g}s, threshold {s.retraining_feedback_fraction:.1%} of the champion's corpus\n"
    )
    for label, thr, corpus_rows, marks, m, prep in results:
        print(
            f"### {label}: {thr} reports = {s.retraining_feedback_fraction:.1%} of {corpus_rows:,} rows; "
            f"new snapshot {prep['rows_out']:,} rows ({prep['new_texts']} new texts, {prep['relabelled_texts']} "
            f"relabelled), held-out {prep['held_out']['rows']:,}, reported-eval {prep['reported_eval']['rows']}\n"
        )
        print("| stage | seconds | since crossing |\n|---|---:|---:|")
        for (name, t1), (_, t0) in zip(marks[1:], marks[:-1]):
            print(f"| {name} | {t1 - t0:.1f} | {t1 - marks[0][1]:.1f} |")
        print(f"| **threshold crossed -> new champion serving** | | **{marks[-1][1] - marks[0][1]:.1f}** |")
        h = m["held_out"]
        ch, cp = h["challenger"]["accuracy"], h["champion"]["accuracy"]
        configured = s.promotion_margin
        print(
            f"\nheld-out accuracy (n={h['n']:,}, same set): challenger {ch:.4f} vs champion v{h['champion_version']} "
            f"{cp:.4f} ({ch - cp:+.4f}); with the configured margin {configured:g} it would "
            f"{'be' if ch > cp + configured else 'NOT be'} promoted"
        )
        re_, rt = m["reported_eval"], m["reported_train"]
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        print(
            f"reported tweets held out (n={re_['n']}): challenger {fmt(re_['challenger_accuracy'])} vs champion "
            f"{fmt(re_['champion_accuracy'])}; trained-on reports (n={rt['n']}, in-sample): challenger "
            f"{fmt(rt['challenger_accuracy'])} vs champion {fmt(rt['champion_accuracy'])}\n"
        )
    print(
        f"(in production the trigger runs at the end of sentiment_monitoring (@daily): add the wait until its "
        f"next run; the API picks a new champion up within model_poll_seconds = {poll:g}s)"
    )
    return proc


if __name__ == "__main__":
    main()
