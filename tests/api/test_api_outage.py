"""A real database outage through the app, and the spool that keeps every acknowledged row.

The outage is real: the test's own database refuses connections (``ALTER DATABASE ...
ALLOW_CONNECTIONS false`` + ``pg_terminate_backend``); crashes are real (``SIGKILL`` of a child
process); the full disk is a real write failure (``RLIMIT_FSIZE`` in a child process)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from api.writer import PredictionWriter
from api_helpers import POSITIVE_TEXT, running_app, settings_with, wait_for
from ml import serving

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"


def spooled(spool: Path) -> list[str]:
    """Prediction ids in the saved spool files (claimed or not), one per saved row."""
    ids = []
    for path in spool.glob("predictions-*.jsonl*"):
        if path.name.endswith(".tmp"):
            continue
        ids += [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]
    return ids


def stored(conn, ids) -> list[str]:
    return [r[0] for r in conn.execute("SELECT id::text FROM predictions WHERE id = ANY(%s::uuid[])", (list(ids),))]


def rows_of(tweets, n, start=0, name="outage-test"):
    import numpy as np

    texts = tweets[0][start:start + n]
    return serving.prediction_rows(texts, np.array([[0.3, 0.7]] * n), name, 1)


def test_outage_predict_answers_ready_503_feedback_503_rows_kept_once(api_settings, champion, outage_db, tweets,
                                                                     tmp_path):
    s = settings_with(api_settings, database_url=outage_db.url, var_dir=tmp_path / "var",
                      prediction_flush_seconds=60, prediction_flush_rows=100_000)
    spool = tmp_path / "var" / "spool"
    texts = tweets[0]
    with running_app(s) as client:
        before_preds = [client.post("/predict", json={"text": t}).json() for t in texts[:5]]
        before = [p["id"] for p in before_preds]
        client.app.state.writer.flush()
        outage_db.down()

        single = [client.post("/predict", json={"text": t}) for t in texts[5:25]]
        batch = client.post("/predict/batch", json={"texts": texts[25:55]})
        assert all(r.status_code == 200 for r in single) and batch.status_code == 200  # still answered
        ids = [r.json()["id"] for r in single] + [p["id"] for p in batch.json()["predictions"]]

        assert client.get("/health/live").status_code == 200
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and "database unreachable" in ready.json()["message"]
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["database"]["reachable"] is False
        assert health.json()["model"]["loaded"] is True

        fb = client.post("/feedback", json={"prediction_id": before[0], "correct_label": "negative",
                                            "feedback_token": before_preds[0]["feedback_token"]})
        assert fb.status_code == 503, fb.text
        assert "database unavailable" in fb.json()["message"] and fb.headers["Retry-After"]
        assert client.app.state.writer.pending == 50
    # shutdown with the database down: every row saved once
    assert sorted(spooled(spool)) == sorted(ids)

    for i in range(5):  # restarts with the database still down: kept, not multiplied
        with running_app(s) as client:
            assert client.get("/health/ready").status_code == 503
            r = client.post("/predict", json={"text": texts[60 + i]})
            assert r.status_code == 200
            ids.append(r.json()["id"])
        assert sorted(spooled(spool)) == sorted(ids)  # 50 + one per restart, each once
    all_ids = spooled(spool)
    assert len(all_ids) == len(set(all_ids)) == 55

    outage_db.up()
    with running_app(s) as client:  # back: replayed at start, exactly once
        assert client.get("/health/ready").status_code == 200
        assert client.post("/feedback", json={"prediction_id": ids[0], "correct_label": 0,
                                              "feedback_token": single[0].json()["feedback_token"]}).status_code == 201
    with outage_db.connect() as conn:
        assert sorted(stored(conn, all_ids)) == sorted(all_ids)
        assert sorted(stored(conn, before)) == sorted(before)
    assert spooled(spool) == [] and not list(spool.glob("*.tmp")) and not list(spool.glob("rejected-*"))
    with running_app(s):
        pass
    with outage_db.connect() as conn:
        n = conn.execute("SELECT count(*) FROM predictions WHERE id = ANY(%s::uuid[])", (all_ids,)).fetchone()[0]
        assert n == len(all_ids)


def test_buffer_bound_answers_503_with_retry_after(api_settings, champion, tweets, conn):
    s = settings_with(api_settings, prediction_buffer_max_rows=10, prediction_flush_seconds=60,
                      prediction_flush_rows=100_000)
    with running_app(s) as client:
        ids = [client.post("/predict", json={"text": t}).json()["id"] for t in tweets[0][:10]]
        r = client.post("/predict", json={"text": tweets[0][10]})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert "prediction buffer full" in r.json()["message"] and "limit is 10" in r.json()["message"]
        assert client.post("/predict/batch", json={"texts": tweets[0][11:13]}).status_code == 503
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and "buffer full" in ready.json()["message"]
        assert client.app.state.writer.pending == 10  # nothing over the bound was taken
        client.app.state.writer.flush()
        assert client.post("/predict", json={"text": tweets[0][10]}).status_code == 200
    assert sorted(stored(conn, ids)) == sorted(ids)


def _spool_with(settings, spool: Path, tweets, files: int, per_file: int) -> list[str]:
    """Spool files as a shutdown with the database down leaves them."""
    ids = []
    down = settings_with(settings, database_url=UNREACHABLE)
    for i in range(files):
        w = PredictionWriter(down, spool_dir=spool)
        rows = rows_of(tweets, per_file, start=i * per_file)
        w.submit(rows)
        w.close(attempts=1)
        ids += [str(r.id) for r in rows]
    assert sorted(spooled(spool)) == sorted(ids)
    return ids


CHILD = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from ml.config import get_settings
from api.writer import PredictionWriter
s = get_settings().model_copy(update={{"database_url": {url!r}, "prediction_flush_seconds": 0.05}})
w = PredictionWriter(s, spool_dir=Path({spool!r}))
go = Path({go!r})
while not go.exists():
    time.sleep(0.01)
w.start()
print("started", flush=True)
{then}
"""


def _child(spool: Path, url: str, go: Path, then: str) -> subprocess.Popen:
    code = CHILD.format(repo=str(REPO), url=url, spool=str(spool), go=str(go), then=then)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)


def test_two_processes_replay_the_same_spool_exactly_once(platform_env, tweets, tmp_path, conn):
    spool = tmp_path / "spool"
    ids = _spool_with(platform_env, spool, tweets, files=6, per_file=20)
    go = tmp_path / "go"
    then = "w.close(); print(json.dumps({'replayed': w.replayed}), flush=True)"
    procs = [_child(spool, platform_env.database_url, go, then) for _ in range(2)]
    go.touch()
    replayed = 0
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        replayed += json.loads(out.strip().splitlines()[-1])["replayed"]
    assert replayed == len(ids) == 120  # each saved row written by exactly one process
    assert sorted(stored(conn, ids)) == sorted(ids)
    assert spooled(spool) == []


def test_claims_of_a_killed_process_are_taken_over_not_while_it_lives(platform_env, outage_db, tweets, tmp_path):
    spool = tmp_path / "spool"
    ids = _spool_with(platform_env, spool, tweets, files=3, per_file=10)
    outage_db.down()
    go = tmp_path / "go"
    go.touch()
    child = _child(spool, outage_db.url, go, "time.sleep(600)")  # claims the files, cannot write them
    try:
        assert child.stdout.readline().strip() == "started"
        claimed = list(spool.glob(f"*.claimed-{child.pid}"))
        assert len(claimed) == 3
        outage_db.up()
        alive = PredictionWriter(settings_with(platform_env, database_url=outage_db.url), spool_dir=spool)
        alive.start()  # the files are held by a live process: not taken
        assert alive.replayed == 0 and len(list(spool.glob(f"*.claimed-{child.pid}"))) == 3
        alive.close()
    finally:
        os.kill(child.pid, signal.SIGKILL)  # a crash: no clean shutdown, the claims stay as files
        child.wait(30)
    assert sorted(p.name for p in spool.glob(f"*.claimed-{child.pid}")) == sorted(p.name for p in claimed)
    w = PredictionWriter(settings_with(platform_env, database_url=outage_db.url), spool_dir=spool)
    w.start()
    try:
        assert w.replayed == 30
    finally:
        w.close()
    with outage_db.connect() as c:
        assert sorted(stored(c, ids)) == sorted(ids)
    assert list(spool.iterdir()) == []


def test_tmp_left_by_a_dead_writer_is_completed_and_a_live_one_left_alone(platform_env, tweets, tmp_path, conn):
    import fcntl

    spool = tmp_path / "spool"
    spool.mkdir()
    rows = rows_of(tweets, 8)
    lines = [json.dumps(r.as_json()) + "\n" for r in rows]
    dead = spool / "predictions-20250101T000000-999999-deadbeef.jsonl.tmp"
    dead.write_text("".join(lines[:6]) + lines[6][:40])  # cut short in the 7th row
    live = spool / "predictions-20250101T000000-1-cafecafe.jsonl.tmp"
    live.write_text(lines[7])
    with live.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a writer in the middle of writing it
        w = PredictionWriter(platform_env, spool_dir=spool)
        w.start()
        try:
            assert w.replayed == 6
        finally:
            w.close()
        assert live.exists() and not dead.exists()
    assert sorted(stored(conn, [str(r.id) for r in rows])) == sorted(str(r.id) for r in rows[:6])
    corrupt = list(spool.glob("corrupt-*"))
    assert len(corrupt) == 1 and corrupt[0].read_text() == lines[6][:40] + "\n"
    w = PredictionWriter(platform_env, spool_dir=spool)  # the live writer is gone now: its file completed
    w.start()
    w.close()
    assert stored(conn, [str(rows[7].id)]) == [str(rows[7].id)] and not live.exists()


FULL_DISK = """
import json, logging, resource, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
import numpy as np
from ml.config import get_settings
from ml import serving
from api.writer import PredictionWriter
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
texts = json.loads(Path({texts!r}).read_text())
s = get_settings().model_copy(update={{"database_url": {url!r}}})
w = PredictionWriter(s, spool_dir=Path({spool!r}))
rows = serving.prediction_rows(texts, np.array([[0.4, 0.6]] * len(texts)), "full-disk", 1)
w.submit(rows)
print(json.dumps([str(r.id) for r in rows]), flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # no file may grow past 4 KiB: writes fail
w.close(attempts=1)
"""


def test_full_disk_at_shutdown_keeps_what_fits_and_logs_the_rest(platform_env, tweets, tmp_path):
    spool = tmp_path / "spool"
    texts = tweets[0][:60] + ["\U0001F600" * 1000]  # the last row alone is bigger than any file may be
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    code = FULL_DISK.format(repo=str(REPO), texts=str(texts_file), url=UNREACHABLE, spool=str(spool))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    ids = json.loads(res.stdout.strip().splitlines()[-1])
    in_files = spooled(spool)
    in_log = [json.loads(line.split("unsaved prediction: ", 1)[1])["id"]
              for line in res.stderr.splitlines() if "unsaved prediction: " in line]
    assert "COULD NOT SPOOL" in res.stderr
    assert len(in_files) >= 50  # most rows fit in smaller files
    assert ids[-1] in in_log  # the one that fits nowhere is in the log, whole
    assert sorted(in_files + in_log) == sorted(ids)  # every row kept once, somewhere
    assert not list(spool.glob("*.tmp"))
