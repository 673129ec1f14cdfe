"""The prediction log and its writer: durable before acknowledged (group commit), COPY in batches,
truncated only after commit, nothing lost, nothing twice."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import realdata
from api_helpers import running_app, settings_with, wait_for

from api.runtime import serving
from api.runtime.predlog import decode, encode
from api.runtime.writer import FlushError, PredictionWriter
from ml.store import predictions as store


def count_predictions_like(conn, marker: str) -> int:
    return conn.execute("SELECT count(*) FROM predictions WHERE text LIKE %s", (f"%{marker}",)).fetchone()[0]


def logged_ids(directory) -> list[str]:
    """Prediction ids in the log segments of ``directory`` (every process's)."""
    ids = []
    for path in directory.glob("wal-*.log"):
        rows, _ = decode(path.read_bytes())
        ids += [r[0] for r in rows]
    return ids


def _rows(n: int, marker: str) -> list[serving.PredictionRow]:
    texts = [f"{t} {marker}" for _, t in realdata.balanced(n, seed=3)]
    return serving.prediction_rows(texts, np.array([[0.25, 0.75]] * n), "writer-test", 1)


def test_acknowledged_predictions_are_in_the_log_before_the_database(api_settings, champion, conn, tweets):
    # flushes would only happen after a day or 100k rows: every row is only in the log while serving
    settings = settings_with(api_settings, prediction_flush_seconds=86_400, prediction_flush_rows=100_000)
    marker = uuid.uuid4().hex
    with running_app(settings) as client:
        ids = [client.post("/predict", json={"text": f"{t} {marker}"}).json()["id"] for t in tweets[0][:50]]
        r = client.post("/predict/batch", json={"texts": [f"{t} {marker}" for t in tweets[0][50:350]]})
        ids += [p["id"] for p in r.json()["predictions"]]
        writer = client.app.state.writer
        assert writer.pending == 350
        assert set(ids) <= set(logged_ids(writer.spool_dir))  # on disk before the answers left
        assert count_predictions_like(conn, marker) == 0  # no database round trip on the request path
    stored = {
        row[0]
        for row in conn.execute(
            "SELECT id::text FROM predictions WHERE text LIKE %s AND model_version = %s",
            (f"%{marker}", champion.version),
        )
    }
    assert stored == set(ids) and len(stored) == 350  # shutdown drained the log
    assert not set(ids) & set(logged_ids(writer.spool_dir))  # and truncated it after the commit


def test_flush_when_enough_rows_wait(api_settings, champion, conn, tweets):
    settings = settings_with(api_settings, prediction_flush_seconds=86_400, prediction_flush_rows=20)
    marker = uuid.uuid4().hex
    with running_app(settings) as client:
        client.post("/predict/batch", json={"texts": [f"{t} {marker}" for t in tweets[0][:25]]})
        # the timer never fires: only the row count can flush them
        wait_for(lambda: count_predictions_like(conn, marker) == 25)


def test_a_torn_tail_is_cut_off_and_kept_for_a_person(platform_env, tmp_path, conn, caplog):
    marker = uuid.uuid4().hex
    rows = _rows(5, marker)
    data, _ = encode(r.as_log_record() for r in rows)
    torn, _ = encode(r.as_log_record() for r in _rows(1, marker + "torn"))
    (tmp_path / "wal-1-1-000001.log").write_bytes(data + torn[:-7])  # a writer killed inside a write
    w = PredictionWriter(platform_env, spool_dir=tmp_path)
    with caplog.at_level(logging.ERROR, logger="api"):
        w.start()
        w.close()
    assert count_predictions_like(conn, marker) == 5
    assert not list(tmp_path.glob("wal-*.log"))
    assert (tmp_path / "corrupt-wal-1-1-000001.log").read_bytes() == torn[:-7]
    assert "not a whole record" in caplog.text


# No stand-in for the database here: the outage is the real server refusing connections to the
# test's own database (conftest.outage_db), so the writer meets the errors production meets.
def test_failed_writes_are_kept_on_disk_and_retried(platform_env, outage_db, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="api")
    outage_db.down()
    writer = PredictionWriter(
        settings_with(platform_env, database_url=outage_db.url, prediction_flush_seconds=0.05), spool_dir=tmp_path
    )
    writer.start()
    marker = uuid.uuid4().hex
    rows = _rows(30, marker)
    writer.record(rows)
    with pytest.raises(FlushError):
        writer.flush()
    assert writer.pending == 30 and writer.last_error
    assert sorted(logged_ids(tmp_path)) == sorted(str(r.id) for r in rows)  # still on disk, once
    outage_db.up()
    with outage_db.connect() as c:
        wait_for(lambda: count_predictions_like(c, marker) == 30)
    wait_for(lambda: writer.pending == 0)
    writer.close()
    assert logged_ids(tmp_path) == []
    assert "kept in" in caplog.text


def test_segments_of_a_dead_process_are_replayed_once_by_whoever_claims_them(platform_env, tmp_path, conn):
    marker = uuid.uuid4().hex
    rows = _rows(40, marker)
    data, n = encode(r.as_log_record() for r in rows)
    # two segments "left" by process 1 (nobody holds their lock), one of them already half stored
    (tmp_path / "wal-1-1-000001.log").write_bytes(data[: len(encode(r.as_log_record() for r in rows[:20])[0])])
    (tmp_path / "wal-1-1-000002.log").write_bytes(encode(r.as_log_record() for r in rows[20:])[0])

    with conn.transaction():
        store.copy_predictions_idempotent(conn, [r.as_log_record() for r in rows[:10]])
    writers = [PredictionWriter(platform_env, spool_dir=tmp_path) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.close()
    assert count_predictions_like(conn, marker) == 40  # each once
    assert sum(w.replayed for w in writers) == 30
    assert not list(tmp_path.glob("wal-*.log"))


REPO = Path(__file__).resolve().parents[3]

# A real writer process while its database refuses connections: per spool folder it records each chunk of
# rows.json and flushes (which fails: the chunk stays in a sealed segment; the last chunk in the active one),
# then says so and waits to be killed.
_PRODUCER = """
import json, sys
from pathlib import Path
from api.runtime.writer import FlushError, PredictionWriter
from ml.platform.config import get_settings
from api.runtime.serving import PredictionRow

base = Path(sys.argv[1])
writers = []
for folder, chunks in json.loads((base / "rows.json").read_text()).items():
    w = PredictionWriter(get_settings(), spool_dir=base / folder)
    w.start()
    for i, chunk in enumerate(chunks):
        w.record([PredictionRow.from_json(r) for r in chunk])
        if i + 1 < len(chunks):
            try:
                w.flush()
            except FlushError:
                continue
            raise SystemExit("the database took the rows: no outage")
    writers.append(w)
(base / "produced").touch()
sys.stdin.read()
"""

# A writer process as a restarted worker starts one: per round it makes its writer, says it is ready and blocks on
# its stdin until the test writes "go" to both replayers at once (the barrier), then start() (claims what nobody
# holds, writes it) and close(). It prints, per round, the segments it replayed (api.runtime.writer's "replayed ... from
# <segment>") and its counters.
_REPLAYER = """
import json, logging, sys
from pathlib import Path
from api.runtime.writer import PredictionWriter
from ml.platform.config import get_settings

base, who, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seen = {}


class Replayed(logging.Handler):
    def emit(self, record):
        if record.msg.startswith("replayed %d predictions from %s ("):
            n, segment, already = record.args
            seen[segment] = [n, already]


logging.getLogger("api.runtime.writer").setLevel(logging.INFO)
logging.getLogger("api.runtime.writer").addHandler(Replayed())
out = []
for r in range(rounds):
    seen.clear()
    w = PredictionWriter(get_settings(), spool_dir=base / f"round-{r}")
    (base / f"ready-{r}-{who}").touch()
    sys.stdin.readline()
    w.start()
    w.close()
    out.append({"segments": dict(seen), "replayed": w.replayed, "failures": w.failures, "error": w.last_error})
print(json.dumps(out))
"""


def _spawn(code: str, base: Path, env: dict[str, str], *args: str, name: str) -> subprocess.Popen:
    with open(base / f"{name}.out", "wb") as out, open(base / f"{name}.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(base), *args],
            cwd=REPO,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
        )


def test_two_processes_race_for_the_same_saved_rows_each_row_is_stored_once(outage_db, tmp_path):
    rounds, segments, per_segment = 5, 60, 2
    marker = uuid.uuid4().hex
    rows = _rows(rounds * segments * per_segment, marker)
    chunk = [[r.as_json() for r in rows[i : i + per_segment]] for i in range(0, len(rows), per_segment)]
    plan = {f"round-{r}": chunk[r * segments : (r + 1) * segments] for r in range(rounds)}
    ids = {folder: sorted(row["id"] for c in chunks for row in c) for folder, chunks in plan.items()}
    (tmp_path / "rows.json").write_text(json.dumps(plan))
    db_env = {"DATABASE_URL": outage_db.url}
    procs: list[subprocess.Popen] = []
    try:
        # the rows are acknowledged by a real writer process (its database refusing connections), which is killed
        outage_db.down()
        idle = {"SENTIMENT_PREDICTION_FLUSH_SECONDS": "3600", "SENTIMENT_PREDICTION_FLUSH_ROWS": "1000000"}
        producer = _spawn(_PRODUCER, tmp_path, {**db_env, **idle}, name="producer")
        procs.append(producer)
        wait_for(lambda: (tmp_path / "produced").exists() or producer.poll() is not None, timeout=120)
        assert producer.poll() is None, (tmp_path / "producer.err").read_text()
        os.kill(producer.pid, signal.SIGKILL)
        assert producer.wait(timeout=30) == -signal.SIGKILL
        for folder in plan:
            assert len(list((tmp_path / folder).glob("wal-*.log"))) == segments
            assert sorted(logged_ids(tmp_path / folder)) == ids[folder]  # saved, once, and nobody holds them
        wal = {folder: {p.name for p in (tmp_path / folder).glob("wal-*.log")} for folder in plan}

        # the database is back; two processes claim the dead one's segments at the same moment, round after round
        outage_db.up()
        procs += [_spawn(_REPLAYER, tmp_path, db_env, who, str(rounds), name=who) for who in ("a", "b")]
        for r in range(rounds):
            wait_for(
                lambda r=r: (
                    all((tmp_path / f"ready-{r}-{who}").exists() for who in ("a", "b"))
                    or any(p.poll() is not None for p in procs[1:])
                ),
                timeout=120,
            )
            assert all(p.poll() is None for p in procs[1:]), [(tmp_path / f"{w}.err").read_text() for w in "ab"]
            for p in procs[1:]:  # both are blocked reading: one write each releases them together
                p.stdin.write(b"go\n")
                p.stdin.flush()
        results = {}
        for who, p in zip(("a", "b"), procs[1:]):
            rc, err = p.wait(timeout=120), (tmp_path / f"{who}.err").read_text()
            assert rc == 0 and "Traceback" not in err, err  # exited cleanly, no thread died on the way
            results[who] = json.loads((tmp_path / f"{who}.out").read_text())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdin.close()

    with outage_db.connect() as c:
        for r, folder in enumerate(plan):
            a, b = results["a"][r], results["b"][r]
            assert a["failures"] == b["failures"] == 0, (a["error"], b["error"])
            # each saved segment was replayed by exactly one of them (a claim that is not atomic: by both) ...
            assert not set(a["segments"]) & set(b["segments"]), (folder, a["segments"], b["segments"])
            assert set(a["segments"]) | set(b["segments"]) == wal[folder]
            assert all(already == 0 for _, already in [*a["segments"].values(), *b["segments"].values()])
            assert a["replayed"] + b["replayed"] == len(ids[folder])
            # ... every saved row is stored exactly once, none lost ...
            stored = c.execute(
                "SELECT id::text, count(*) FROM predictions WHERE id = ANY(%s::uuid[]) GROUP BY id", (ids[folder],)
            ).fetchall()
            assert dict(stored) == dict.fromkeys(ids[folder], 1)
            # ... and the spool is empty: no segment left, nothing set aside as corrupt or rejected
            assert sorted(p.name for p in (tmp_path / folder).iterdir()) == []


def test_signed_ids_tell_issued_from_never_issued(platform_env):
    ids = serving.PredictionIds.for_settings(platform_env)
    again = serving.PredictionIds.for_settings(platform_env)  # another worker: the same key file
    issued = [ids.new() for _ in range(1000)]
    assert len(set(issued)) == 1000 and all(again.issued(i) for i in issued)
    assert not any(ids.issued(uuid.uuid4()) for _ in range(1000))
    forged = uuid.UUID(bytes=issued[0].bytes[:15] + bytes([issued[0].bytes[15] ^ 1]))
    assert not ids.issued(forged)
    assert oct(os.stat(platform_env.var / "secrets" / ids.KEY_FILE).st_mode & 0o777) == "0o600"


def test_spool_files_of_the_earlier_writer_are_replayed_once(platform_env, tmp_path, conn):
    marker = uuid.uuid4().hex
    rows = _rows(12, marker)
    legacy = tmp_path / "predictions-20261101T000000-1-abcd1234.jsonl"
    legacy.write_text("".join(json.dumps(r.as_json()) + "\n" for r in rows))
    w = PredictionWriter(platform_env, spool_dir=tmp_path)
    w.start()
    w.close()
    assert count_predictions_like(conn, marker) == 12 and not legacy.exists()
