"""The prediction log and its writer: durable before acknowledged (group commit), COPY in batches,
truncated only after commit, nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import pytest
from api_helpers import running_app, settings_with, wait_for

from api.predlog import LogFull, PredictionLog, decode, encode
from api.writer import FlushError, PredictionWriter
from ml.stages import serving


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
    import numpy as np
    import realdata

    texts = [f"{t} {marker}" for _, t in realdata.balanced(n, seed=3)]
    return serving.prediction_rows(texts, np.array([[0.25, 0.75]] * n), "writer-test", 1)


def test_acknowledged_predictions_are_in_the_log_before_the_database(api_settings, champion, conn, tweets):
    # flushes would only happen after a minute or 100k rows: every row is only in the log while serving
    settings = settings_with(api_settings, prediction_flush_seconds=60, prediction_flush_rows=100_000)
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
    settings = settings_with(api_settings, prediction_flush_seconds=60, prediction_flush_rows=20)
    marker = uuid.uuid4().hex
    with running_app(settings) as client:
        client.post("/predict/batch", json={"texts": [f"{t} {marker}" for t in tweets[0][:25]]})
        wait_for(lambda: count_predictions_like(conn, marker) == 25, timeout=10)  # long before 60 s


def test_group_commit_one_fsync_covers_concurrent_appends(tmp_path):
    log = PredictionLog(tmp_path, max_bytes=1 << 20)
    log.open()

    async def main():
        await asyncio.gather(*(log.append_async(*encode([[str(i), "x"]])) for i in range(64)))

    asyncio.run(main())
    assert log.stats.appends == 64
    assert log.stats.commits < 64  # appends that arrived together shared a sync
    log.close()
    seg = log.sealed()[0]
    assert sorted(int(r[0]) for r in log.read(seg)) == list(range(64))
    log.release_all()


def test_the_log_has_a_cap_and_says_so(tmp_path):
    log = PredictionLog(tmp_path, max_bytes=4096)
    log.open()
    data, n = encode([["x" * 1000]])
    for _ in range(4):
        log.append(data, n)
    with pytest.raises(LogFull, match="prediction log full.*prediction_log_max_bytes"):
        log.append(data, n)
    assert log.stats.appends == 4  # the refused one wrote nothing
    seg = log.seal()
    log.release(seg)  # committed elsewhere: room again
    log.append(data, n)
    log.close()
    log.release_all()


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
        wait_for(lambda: count_predictions_like(c, marker) == 30, timeout=20)
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
    from ml.store import predictions as store

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
    import json

    marker = uuid.uuid4().hex
    rows = _rows(12, marker)
    legacy = tmp_path / "predictions-20261101T000000-1-abcd1234.jsonl"
    legacy.write_text("".join(json.dumps(r.as_json()) + "\n" for r in rows))
    w = PredictionWriter(platform_env, spool_dir=tmp_path)
    w.start()
    w.close()
    assert count_predictions_like(conn, marker) == 12 and not legacy.exists()
