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
  (e) the DAG's three steps, each in its own process as Airflow runs them: plan, the shards (one per
      CPU, in parallel), finalize; per step: wall time, CPU of the process and of its PostgreSQL
      backend, peak RSS (from the step's own rusage),
and the peak memory of the scoring path. Figures are ratios against (a) from the same run, for each
input shape (``--shape``): ``two-column`` (``"polarity","text"``, UTF-8) and ``sentiment140`` (the real
corpus's six quoted columns ``"target","id","date","flag","user","text"``, Latin-1), both generated
from the shared 100k tweets repeated to ``--rows``. ``--growth 400000,800000,1600000`` adds the
linear-growth table: (a) and (e) at each size, time per million rows and peak RSS per step.

Usage: .venv/bin/python benchmarks/batch_scoring.py [--rows 1600000] [--workers 2] [--naive-rows 20000]
       [--dag-shard-rows 0,200000] [--no-dag] [--no-local] [--no-naive] [--no-steps]
       [--shape both|two-column|sentiment140] [--growth 400000,800000,1600000]
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
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent))
import json
import signal
import socket
import subprocess
import tempfile
import threading

import httpx
import psutil
import psycopg
from _setup import SHARED, isolated_platform, train_champion

from ml.platform import db, registry
from ml.platform.config import reset_settings
from ml.platform.orchestration import airflow_env

SHAPES = ("two-column", "sentiment140")
DAYS, MONTHS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"), ("Apr", "May", "Jun")


def write_input(path: Path, n: int, shape: str) -> list[str]:
    """The shared 100k tweets repeated to ``n`` rows in ``shape``; returns the texts as the reader
    yields them (stripped), for the bare model's run. ``sentiment140``: the real corpus's layout, six
    quoted columns, Latin-1, a fresh id, date and user per row."""
    with SHARED.open(encoding="utf-8", newline="") as f:
        base = list(csv.reader(f))
    texts: list[str] = []
    if shape == "two-column":
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, quoting=csv.QUOTE_ALL)
            for i in range(n):
                row = base[i % len(base)]
                w.writerow(row)
                texts.append(row[1].strip())
        return texts
    with path.open("w", encoding="latin-1", errors="replace", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for i in range(n):
            pol, text = base[i % len(base)]
            date = f"{DAYS[i % 7]} {MONTHS[i // 7 % 3]} {1 + i % 28:02d} {i % 24:02d}:{i * 7 % 60:02d}:{i * 13 % 60:02d} PDT 2009"
            w.writerow([pol, str(1467810369 + i), date, "NO_QUERY", f"user_{(i * 7919) % 1_000_003}", text])
            texts.append(text.encode("latin-1", "replace").decode("latin-1").strip())
    return texts


class BackendCPU:
    """CPU seconds of this benchmark database's PostgreSQL backends (sampled every 0.2 s by their
    process title, which names the database): the database's share of a step."""

    def __init__(self, dbname: str) -> None:
        self.dbname, self._stop = dbname, threading.Event()
        self.seen: dict[int, float] = {}
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    title = " ".join(proc.info["cmdline"] or [])
                    if title.startswith("postgres:") and f" {self.dbname} " in title:
                        t = proc.cpu_times()
                        self.seen[proc.pid] = t.user + t.system
                except (psutil.Error, OSError):
                    pass
            self._stop.wait(0.2)

    def total(self) -> float:
        time.sleep(0.3)  # one more sample after the step
        return sum(self.seen.values())

    def stop(self) -> None:
        self._stop.set()


STEP = {
    "plan": "import json, sys; from ml.stages.scoring.plan import plan; p = plan(sys.argv[1], shard_rows=int(sys.argv[2]),"
    " force=True); print(json.dumps({'batch_id': p.batch_id, 'shards': p.shards}))",
    "shard": "import json, sys; from ml.stages.scoring.shard import score_shard;"
    " print(json.dumps(score_shard(sys.argv[1], int(sys.argv[2]))))",
    "finalize": "import json, sys; from ml.stages.scoring.finalize import finalize; print(json.dumps(finalize(sys.argv[1])))",
}


#: printed last by a step: its peak RSS in kB (VmHWM: this program's own, where ru_maxrss would also count
#: the benchmark's memory at the fork before the exec)
PEAK = "\nprint(max(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:')))"


def _start(step: str, *args: object) -> tuple[subprocess.Popen, IO[str], IO[str]]:
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # files: no pipe to fill up
    cmd = [sys.executable, "-c", STEP[step] + PEAK, *map(str, args)]
    return subprocess.Popen(cmd, stdout=out, stderr=err), out, err


def _reap(procs: list[tuple[subprocess.Popen, IO[str], IO[str]]]) -> tuple[list[str], float, float]:
    """Wait for ``procs``; (their stdouts, CPU seconds of all, largest peak RSS in MB) from each one's own rusage."""
    outs, cpu, rss = [], 0.0, 0.0
    for proc, out, err in procs:
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"step failed ({str(proc.args)[:200]}): {err.read()[-3000:]}")
        *lines, peak_kb = out.read().strip().splitlines()
        outs.append("\n".join(lines))
        cpu += ru.ru_utime + ru.ru_stime
        rss = max(rss, int(peak_kb) / 1024)
    return outs, cpu, rss


def run_steps(path: Path, backend: BackendCPU, shard_rows: int = 0) -> dict[str, dict[str, float]]:
    """(e): plan, then every shard at once (one per CPU with ``shard_rows=0``), then finalize, each
    in its own process as the DAG's tasks are; per step: wall, CPU, database CPU, peak RSS."""
    with psycopg.connect(db.database_url(), autocommit=True) as conn:  # same starting state each time
        conn.execute("TRUNCATE predictions, batches CASCADE")
    steps: dict[str, dict[str, float]] = {}

    def timed(name: str, procs_fn) -> list[str]:
        b0, t0 = backend.total(), time.perf_counter()
        outs, cpu, rss = _reap(procs_fn())
        wall = time.perf_counter() - t0
        steps[name] = {"wall": wall, "cpu": cpu, "db_cpu": backend.total() - b0, "rss": rss}
        return outs

    plan_out = json.loads(timed("plan", lambda: [_start("plan", path, shard_rows)])[0].strip().splitlines()[-1])
    timed("shards", lambda: [_start("shard", plan_out["batch_id"], sh) for sh in plan_out["shards"]])
    summary = json.loads(
        timed("finalize", lambda: [_start("finalize", plan_out["batch_id"])])[0].strip().splitlines()[-1]
    )
    steps["total"] = {k: sum(v[k] for v in steps.values()) for k in ("wall", "cpu", "db_cpu")}
    steps["total"]["rss"] = max(v["rss"] for v in steps.values() if "rss" in v)
    steps["total"]["shards"] = len(plan_out["shards"])
    steps["total"]["rows"] = summary["rows_scored"]
    return steps


def bare(model, texts: list[str]) -> tuple[float, float]:
    """(a): wall and CPU seconds of the bare model's predict_proba over ``texts`` in one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    model.predict_proba(texts)
    return time.perf_counter() - t0, time.process_time() - c0


def print_steps(title: str, n: int, steps: dict[str, dict[str, float]], t_a: float, cpu_a: float) -> None:
    print(
        f"\n{title}: {n:,} rows, {int(steps['total']['shards'])} shard(s); bare predict_proba {t_a:.1f} s"
        f" ({n / t_a:,.0f} rows/s), {cpu_a:.1f} CPU-s"
    )
    print("| step | wall s | rows/s | CPU-s (process) | CPU-s (PostgreSQL) | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("plan", "shards", "finalize", "total"):
        v = steps[name]
        print(
            f"| {name} | {v['wall']:.1f} | {n / v['wall']:,.0f} | {v['cpu']:.1f} | {v['db_cpu']:.1f} | {v['rss']:,.0f} |"
        )
    tot = steps["total"]
    print(
        f"end to end {n / tot['wall']:,.0f} rows/s = {t_a / tot['wall']:.2f}x bare (wall);"
        f" CPU {tot['cpu'] + tot['db_cpu']:.1f} CPU-s = {(tot['cpu'] + tot['db_cpu']) / cpu_a:.2f}x bare's"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_600_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=200_000)
    ap.add_argument("--naive-rows", type=int, default=20_000)
    ap.add_argument("--shape", choices=[*SHAPES, "both"], default="both", help="input layout(s) to measure")
    ap.add_argument("--growth", default="", help="comma-separated row counts for the linear-growth table (e)")
    ap.add_argument("--growth-shape", choices=SHAPES, default="sentiment140")
    ap.add_argument("--family", default="tfidf_lr", help="champion family (e.g. transformer: batched inference)")
    ap.add_argument("--train-sample", type=int, default=None, help="training sample for a non-TF-IDF champion")
    ap.add_argument(
        "--dag-shard-rows",
        default="0,200000",
        help="comma-separated shard sizes for the scheduler runs (0: auto, one shard per CPU)",
    )
    ap.add_argument("--no-dag", action="store_true", help="skip the scheduler runs (d)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive loop (c)")
    ap.add_argument("--no-local", action="store_true", help="skip `ml score` without Airflow (b)")
    ap.add_argument("--no-steps", action="store_true", help="skip the step-by-step processes (e)")
    args = ap.parse_args()
    params = {"max_steps": 30} if args.family == "transformer" else {"epochs": 1} if args.family != "tfidf_lr" else {}

    work = isolated_platform("bench_scoring")
    # batch input is confined to the inbox and batch_input_roots: the input below is written in `work`
    os.environ["SENTIMENT_BATCH_INPUT_ROOTS"] = f'["{work}"]'

    reset_settings()

    version = train_champion(
        family=args.family, params=params, sample_size=args.train_sample if args.family != "tfidf_lr" else None
    )
    model = registry.load_version(version)
    backend = BackendCPU(db.database_url().rsplit("/", 1)[-1].split("?")[0])
    shapes = SHAPES if args.shape == "both" else (args.shape,)
    tables = []
    for shape in shapes:
        big = work / f"tweets_{shape}_{args.rows}.csv"
        texts = write_input(big, args.rows, shape)
        print(f"input: {big} ({big.stat().st_size / 1e6:.0f} MB, {args.rows:,} rows, {shape})", flush=True)
        results = []
        t_a, cpu_a = bare(model, texts)
        del texts
        results.append(("(a) bare predict_proba, in memory", args.rows, t_a))
        steps = None if args.no_steps else run_steps(big, backend)
        if steps is not None:
            results.append(
                (
                    f"(e) plan -> {int(steps['total']['shards'])} shards in parallel -> finalize, a process each",
                    args.rows,
                    steps["total"]["wall"],
                )
            )
        peaks = {}
        for workers in [] if args.no_local else sorted({1, args.workers}):
            with psycopg.connect(db.database_url(), autocommit=True) as conn:  # same starting state each time
                conn.execute("TRUNCATE predictions, batches CASCADE")
            # the scoring path as its own process (as an Airflow task would be), so its peak memory is its own
            cmd = [sys.executable, "-m", "ml.cli", "score", str(big), "--shard-rows", str(args.shard_rows)]
            res = subprocess.run(
                [*cmd, "--workers", str(workers)], capture_output=True, text=True, env=os.environ.copy()
            )
            if res.returncode != 0:
                raise SystemExit(res.stderr[-3000:])
            s = json.loads(res.stdout[res.stdout.index("{") :])
            assert s["rows_scored"] == args.rows, s
            # s["seconds"]: from the batch's creation (plan start) to finalize, excluding interpreter start-up
            results.append((f"(b) `ml score`, {workers} worker(s)", args.rows, float(s["seconds"])))
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
        tables.append((shape, results, peaks, steps, t_a, cpu_a))
        big.unlink()

    growth = []
    for n in [int(x) for x in args.growth.split(",") if x.strip()]:
        path = work / f"growth_{n}.csv"
        texts = write_input(path, n, args.growth_shape)
        t_a, cpu_a = bare(model, texts)
        del texts
        growth.append((n, t_a, cpu_a, run_steps(path, backend)))
        path.unlink()
        print(f"growth: {n:,} rows measured", flush=True)
    backend.stop()

    # (c) naive: one predict + one INSERT (own transaction) per row, on a subset
    with SHARED.open(encoding="utf-8", newline="") as f:
        sub = [r[1] for r in csv.reader(f)][: 0 if args.no_naive else args.naive_rows]
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

    for shape, results, peaks, steps, t_a, cpu_a in tables:
        if sub and shape == tables[0][0]:
            results.append(("(c) naive loop: predict + INSERT per row (two-column texts)", len(sub), t_c))
        base_rate = args.rows / t_a
        print(f"\n## {shape} ({'six quoted columns, Latin-1' if shape == 'sentiment140' else 'polarity,text, UTF-8'})")
        print("| path | rows | seconds | rows/s | vs (a) |")
        print("|---|---:|---:|---:|---:|")
        for name, n, secs in results:
            print(f"| {name} | {n:,} | {secs:.1f} | {n / secs:,.0f} | {n / secs / base_rate:.2f}x |")
        if steps is not None:
            print_steps(f"(e) step by step, {shape}", args.rows, steps, t_a, cpu_a)
        if peaks:
            print(
                "peak RSS of `ml score` (largest process): "
                + ", ".join(f"{w} worker(s): {mb:,.0f} MB" for w, mb in peaks.items())
            )
    if growth:
        print(f"\n## linear growth ({args.growth_shape}; (e) step by step, one shard per CPU)")
        print(
            "| rows | bare rows/s | end to end rows/s | vs bare | s per M rows: plan | shards | finalize"
            " | CPU-s per M rows (incl. PostgreSQL) | peak RSS MB: plan | shard | finalize |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, t_a, cpu_a, st in growth:
            m = n / 1e6
            tot = st["total"]
            print(
                f"| {n:,} | {n / t_a:,.0f} | {n / tot['wall']:,.0f} | {t_a / tot['wall']:.2f}x"
                f" | {st['plan']['wall'] / m:.1f} | {st['shards']['wall'] / m:.1f} | {st['finalize']['wall'] / m:.1f}"
                f" | {(tot['cpu'] + tot['db_cpu']) / m:.1f} (bare {cpu_a / m:.1f})"
                f" | {st['plan']['rss']:,.0f} | {st['shards']['rss']:,.0f} | {st['finalize']['rss']:,.0f} |"
            )
    print(
        f"\nmodel: {args.family} champion v{version}; shard size {args.shard_rows:,} rows (b); {os.cpu_count()} CPUs;"
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
