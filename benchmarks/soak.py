"""Soak: N minutes of mixed load on a real platform, then every acknowledged row counted in PostgreSQL.

Everything runs on free ports under a temporary var/ of its own (benchmarks/_setup.py stops all of it on
exit, Ctrl-C or failure): an embedded PostgreSQL (its own data folder, so it can be stopped), MLflow's
store in it, two TF-IDF versions (the second trained with other parameters), the API under uvicorn with
2 workers (as ``make up``). For ``--minutes`` (default 30):

- ``/predict`` and ``/predict/batch`` (5 texts) at a steady ``--rate`` requests/s (paced, 4 client threads);
- ``/feedback`` on ``--feedback-share`` of the acknowledged predictions, with their feedback tokens;
- a CSV dropped in the inbox and scored by ``ml score`` every ``--batch-every`` seconds;
- the champion moved between the two versions every ``--swap-every`` seconds
  (``ml.platform.registry.move_champion``, under the promotion lock, as a promotion or rollback does);
- the embedded PostgreSQL stopped (``pg_ctl stop -m fast``) at half time and started again
  ``--db-down`` seconds later.

Every ~10 s it samples the API workers' RSS and open file descriptors (psutil), the prediction log on
disk (``<var>/spool``: api/runtime/writer.py's segments), the rows in ``predictions`` and the answers so far, and
prints a table over time. At the end, once the writer drained, it counts by id: every prediction id
acknowledged by a 2xx (``/predict`` and ``/predict/batch``) must be in ``predictions`` exactly once, and
every acknowledged feedback (201) exactly once in ``feedback`` or ``pending_feedback``. Exit 1 when
anything is lost or duplicated (expected 0 / 0), or the drain does not finish.

Outside CI (run by hand): ``.venv/bin/python benchmarks/soak.py --minutes 2`` is the smoke mode.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import psutil
import psycopg
from _setup import (
    BIN,
    REPO,
    SHARED,
    api_command,
    embedded_postgres,
    free_port,
    remove_at_exit,
    start_server,
    train_champion,
    wait_http,
)
from api_load import stop

from ml.data.snapshots import validate_and_snapshot
from ml.platform import db, registry
from ml.platform.config import Settings, get_settings, reset_settings
from ml.stages import promotion, train
from ml.store import training_runs as training_runs_store

SAMPLE_SECONDS = 10.0
BATCH_SIZE = 5  # texts per /predict/batch
BATCH_SHARE = 0.2  # share of requests that are /predict/batch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the load (default 30; 2 = smoke mode)")
    ap.add_argument("--rate", type=float, default=20.0, help="requests/s over /predict and /predict/batch")
    ap.add_argument("--feedback-share", type=float, default=0.2, help="share of predictions given feedback")
    ap.add_argument("--batch-every", type=float, default=None, help="seconds between inbox files (default: min/4)")
    ap.add_argument("--batch-rows", type=int, default=500, help="rows per inbox file")
    ap.add_argument("--swap-every", type=float, default=None, help="seconds between champion moves (default: 180)")
    ap.add_argument("--db-down", type=float, default=10.0, help="seconds PostgreSQL stays stopped at half time")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or not 0 <= args.feedback_share <= 1:
        ap.error("--minutes and --rate must be > 0, --feedback-share in [0, 1]")
    total = args.minutes * 60
    args.batch_every = args.batch_every or max(20.0, total / 4)
    args.swap_every = args.swap_every or min(180.0, max(20.0, total / 4))
    return args


class Load:
    """Paced clients: ``rate`` requests/s in all, shared by ``threads`` threads."""

    def __init__(self, url: str, texts: list[str], rate: float, feedback_share: float, threads: int = 4) -> None:
        self.url, self.texts, self.rate, self.share, self.n = url, texts, rate, feedback_share, threads
        self.predictions: list[str] = []  # acknowledged (2xx) prediction ids
        self.feedback: list[int] = []  # acknowledged (201) feedback ids
        self.codes: collections.Counter[str] = collections.Counter()  # "2xx", "4xx", "5xx", "shed", "error"
        self.by_endpoint: collections.Counter[str] = collections.Counter()  # "/feedback 503": n
        self.versions: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _count(self, endpoint: str, r: httpx.Response) -> None:
        shed = r.status_code == 503 and b"overloaded" in r.content  # admission control (api/admission.py)
        key = "shed" if shed else f"{r.status_code // 100}xx"
        with self._lock:
            self.codes[key] += 1
            self.by_endpoint[f"{endpoint} {r.status_code}"] += 1

    def _error(self, endpoint: str, exc: Exception) -> None:
        with self._lock:
            self.codes["error"] += 1
            self.by_endpoint[f"{endpoint} {type(exc).__name__}"] += 1

    def _feedback(self, c: httpx.Client, p: dict) -> None:
        label = p["label"] if random.random() < 0.7 else ("negative" if p["label"] == "positive" else "positive")
        body = {"prediction_id": p["id"], "correct_label": label, "feedback_token": p["feedback_token"]}
        try:
            f = c.post("/feedback", json=body)
        except httpx.HTTPError as exc:
            self._error("/feedback", exc)
            return
        self._count("/feedback", f)
        if f.status_code == 201:
            with self._lock:
                self.feedback.append(f.json()["id"])

    def _run(self, k: int) -> None:
        rng = random.Random(k)
        period = self.n / self.rate
        nxt = time.monotonic() + rng.random() * period
        with httpx.Client(base_url=self.url, timeout=15) as c:
            while not self._stop.is_set():
                delay = nxt - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                nxt = max(nxt + period, time.monotonic() - 1)  # steady: no catch-up burst after a stall
                batch = rng.random() < BATCH_SHARE
                try:
                    if batch:
                        texts = [rng.choice(self.texts) for _ in range(BATCH_SIZE)]
                        r = c.post("/predict/batch", json={"texts": texts})
                    else:
                        r = c.post("/predict", json={"text": rng.choice(self.texts)})
                except httpx.HTTPError as exc:
                    self._error("/predict/batch" if batch else "/predict", exc)
                    continue
                self._count("/predict/batch" if batch else "/predict", r)
                if not r.is_success:
                    continue
                preds = r.json()["predictions"] if batch else [r.json()]
                with self._lock:
                    self.predictions += [p["id"] for p in preds]
                    for p in preds:
                        self.versions[int(p.get("model_version") or 0)] += 1
                for p in preds:
                    if rng.random() < self.share:
                        self._feedback(c, p)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(self.n)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def api_workers(api: subprocess.Popen) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(api.pid).children() if "spawn_main" in " ".join(c.cmdline())]
    except psutil.Error:
        return []


def dir_bytes(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*") if folder.is_dir() else []:
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:
            pass
    return total


def count_rows(url: str) -> int | None:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM predictions").fetchone()
            return int(row[0]) if row else None
    except psycopg.Error:
        return None


def swap_champion(settings: Settings, versions: tuple[int, int], reason: str) -> str:
    """Move the alias to the other version, as a promotion does (the lock, the event, the digest)."""
    with db.connect(settings) as conn:
        training_runs_store.lock_promotions(conn, settings.model_name)
        current = registry.champion(settings)
        if current is None:
            return "no champion"
        target = versions[0] if current.version == versions[1] else versions[1]
        digest = training_runs_store.version_digest(
            conn, settings.model_name, target
        ) or registry.version_artifact_digest(target, settings)
        registry.move_champion(conn, target, current.version, "promoted", reason, digest, settings)
    return f"v{current.version}->v{target}"


def score_inbox(settings: Settings, texts: list[str], rows: int, n: int, log: Path) -> str:
    inbox = settings.var / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / f"soak-{n:03d}.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([[random.choice(texts)] for _ in range(rows)])
    r = subprocess.run(
        [str(BIN / "ml"), "score", str(path), "--text-column", "text"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    with log.open("a", encoding="utf-8") as out:
        out.write(f"--- batch {n}: rc={r.returncode}\n{r.stdout}{r.stderr}")
    if r.returncode == 0:
        return f"batch {n} rc=0"
    # the reason: `ml score`'s one line, or a traceback's exception line (the last one not indented)
    why = ([line for line in r.stderr.splitlines() if line.strip() and not line[0].isspace()] or ["?"])[-1][:160]
    return f"batch {n} rc={r.returncode} ({why})"


def drained(url: str, load: Load, timeout: float = 180) -> tuple[dict[str, int], float]:
    """Counts by id once every acknowledged row is in (or at the timeout)."""
    t0 = time.monotonic()
    preds, fbs = sorted(set(load.predictions)), sorted(set(load.feedback))
    while True:
        try:
            with psycopg.connect(url, connect_timeout=3) as conn:
                per_id = conn.execute(
                    "SELECT n, count(*) FROM (SELECT id, count(*) AS n FROM predictions "
                    "WHERE id = ANY(%s::uuid[]) GROUP BY id) x GROUP BY n",
                    (preds,),
                ).fetchall()
                fb_ids = conn.execute(
                    "SELECT n, count(*) FROM (SELECT id, count(*) AS n FROM ("
                    "SELECT id FROM feedback WHERE id = ANY(%s) UNION ALL "
                    "SELECT id FROM pending_feedback WHERE id = ANY(%s)) u GROUP BY id) x GROUP BY n",
                    (fbs, fbs),
                ).fetchall()
        except psycopg.Error:
            per_id = fb_ids = []
        p: dict[int, int] = dict(per_id)
        f: dict[int, int] = dict(fb_ids)
        counts = {
            "predictions acknowledged": len(load.predictions),
            "prediction ids acknowledged twice": len(load.predictions) - len(preds),
            "predictions stored": sum(p.values()),
            "predictions lost": len(preds) - sum(p.values()),
            "predictions duplicated": sum(c for n, c in p.items() if n > 1),
            "feedback acknowledged": len(load.feedback),
            "feedback stored": sum(f.values()),
            "feedback lost": len(fbs) - sum(f.values()),
            "feedback duplicated": sum(c for n, c in f.items() if n > 1),
        }
        if (counts["predictions lost"] == 0 and counts["feedback lost"] == 0) or time.monotonic() - t0 > timeout:
            return counts, time.monotonic() - t0
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = remove_at_exit(Path(tempfile.mkdtemp(prefix="bench-soak-")))
    os.environ.pop("DATABASE_URL", None)  # the embedded server of its own: the benchmark stops and starts it
    os.environ.update(
        {
            "SENTIMENT_VAR_DIR": str(work),
            "SENTIMENT_EMBEDDED_PG_PORT": str(free_port()),
            "SENTIMENT_MODEL_NAME": "bench-soak",
            "SENTIMENT_MLFLOW_DATABASE": "soak_mlflow",
            "SENTIMENT_RATE_LIMITS_ENABLED": "false",
            "SENTIMENT_PROMOTION_GATE": "margin",
            "SENTIMENT_PROMOTION_MARGIN": "-1",
            "SENTIMENT_BEHAVIOUR_CHECKS": "false",
            "SENTIMENT_MODEL_POLL_SECONDS": "2",
            "XDG_RUNTIME_DIR": "/tmp",
        }
    )
    reset_settings()
    s = get_settings()
    url = embedded_postgres(s)  # stopped at the end, however the benchmark ends
    os.environ["DATABASE_URL"] = url
    reset_settings()
    s = get_settings()
    db.migrate(url)
    print(f"soak: {args.minutes:g} min at {args.rate:g} req/s; PostgreSQL {url}; var {work}", flush=True)

    v1 = train_champion(sample_size=20_000)
    run2 = train.train(validate_and_snapshot(SHARED).hash, "tfidf_lr", {"C": 0.5}, 20_000)
    train.evaluate(run2)
    train.register(run2)
    promotion.promote(run2)
    v2 = registry.champion().version  # type: ignore[union-attr]
    versions = (v1, v2)
    print(f"two versions: v{v1}, v{v2} (champion v{v2})", flush=True)

    with SHARED.open(encoding="utf-8") as f:
        texts = [r[1] for r in csv.reader(f)][::50]
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    log = work / "api.log"
    argv_api = [*api_command(port, 2), "--no-access-log", "--log-level", "warning", "--timeout-graceful-shutdown", "30"]
    api = start_server(argv_api, log)
    wait_http(f"{api_url}/health/ready", api, log)
    spool = s.api_state_dir or s.var

    total = args.minutes * 60
    events: list[tuple[float, str]] = []
    samples: list[tuple] = []
    ok = True
    try:
        with Load(api_url, texts, args.rate, args.feedback_share) as load:
            t0 = time.monotonic()
            next_sample, next_batch, next_swap = 0.0, args.batch_every / 2, args.swap_every
            db_stop_at, db_up_at, db_down = total / 2, total / 2 + args.db_down, False
            batch_n = 0
            batch_thread: threading.Thread | None = None
            while (now := time.monotonic() - t0) < total:
                if not db_down and db_stop_at <= now < db_up_at:
                    db.stop_embedded_postgres(s)
                    db_down = True
                    events.append((now, "PostgreSQL stopped"))
                elif db_down and now >= db_up_at:
                    db.start_embedded_postgres(s)
                    db_down = False
                    events.append((now, "PostgreSQL started"))
                if now >= next_swap and not db_down:
                    try:
                        events.append((now, f"champion {swap_champion(s, versions, 'soak benchmark swap')}"))
                    except Exception as exc:  # noqa: BLE001 - reported in the table, the soak goes on
                        events.append((now, f"champion swap failed: {type(exc).__name__}"))
                    next_swap += args.swap_every
                if now >= next_batch and (batch_thread is None or not batch_thread.is_alive()):
                    batch_n += 1
                    n, at = batch_n, now

                    def _score(n: int = n, at: float = at) -> None:
                        what = score_inbox(s, texts, args.batch_rows, n, work / "score.log")
                        events.append((at, f"{what} (took {time.monotonic() - t0 - at:.0f}s)"))

                    batch_thread = threading.Thread(target=_score, daemon=True)
                    batch_thread.start()
                    next_batch += args.batch_every
                if now >= next_sample:
                    procs = api_workers(api)
                    rss = fds = 0
                    for p in procs:
                        try:
                            rss += p.memory_info().rss
                            fds += p.num_fds()
                        except psutil.Error:
                            pass
                    with load._lock:
                        codes = dict(load.codes)
                    samples.append(
                        (now, len(procs), rss, fds, dir_bytes(spool / "spool"), count_rows(url), codes, db_down)
                    )
                    next_sample += SAMPLE_SECONDS
                time.sleep(0.2)
            if db_down:
                db.start_embedded_postgres(s)
        if batch_thread is not None:
            batch_thread.join(600)
        counts, waited = drained(url, load)
        versions_served = dict(load.versions)
        answers = dict(sorted(load.by_endpoint.items()))
    finally:
        stop(api)

    print(
        "\n| t (s) | workers | RSS (MiB, all workers) | open fds | spool (KiB) | rows in predictions | 2xx | 4xx | 5xx | shed | errors |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for now, nw, rss, fds, sp, rows, codes, down in samples:
        print(
            f"| {now:.0f}{' (db down)' if down else ''} | {nw} | {rss / 2**20:.0f} | {fds} | {sp / 1024:.0f} "
            f"| {rows if rows is not None else '-'} | {codes.get('2xx', 0):,} | {codes.get('4xx', 0):,} "
            f"| {codes.get('5xx', 0):,} | {codes.get('shed', 0):,} | {codes.get('error', 0):,} |"
        )
    first, last = samples[0], samples[-1]
    if first[2] and first[3]:
        print(f"\nlast / first sample: RSS {last[2] / first[2]:.2f}x, open fds {last[3] / first[3]:.2f}x")
    print("\nevents: " + "; ".join(f"{at:.0f}s {what}" for at, what in sorted(events)))
    print("answers: " + ", ".join(f"{k}: {v:,}" for k, v in answers.items()))
    print(f"predictions served per version: {versions_served}")
    print("\n| count | n |\n|---|---:|\n" + "\n".join(f"| {k} | {v:,} |" for k, v in counts.items()))
    print(f"| drain after the load (s) | {waited:.1f} |")
    lost = counts["predictions lost"] + counts["feedback lost"]
    dup = counts["predictions duplicated"] + counts["feedback duplicated"] + counts["prediction ids acknowledged twice"]
    ok = lost == 0 and dup == 0 and counts["predictions acknowledged"] > 0
    print(f"\nlost / duplicated: {lost} / {dup} (expected 0 / 0): {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
