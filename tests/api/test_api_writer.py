"""The prediction writer: buffered off the request path, COPY in batches, nothing lost."""
from __future__ import annotations

import logging
import uuid

import pytest

from api.writer import FlushError, PredictionWriter
from api_helpers import running_app, settings_with, wait_for
from ml import serving


def count_predictions_like(conn, marker: str) -> int:
    return conn.execute("SELECT count(*) FROM predictions WHERE text LIKE %s", (f"%{marker}",)).fetchone()[0]


def test_nothing_lost_when_the_app_stops_right_after_requests(api_settings, champion, conn, tweets):
    # flushes would only happen after a minute or 100k rows: all rows are still buffered at shutdown
    settings = settings_with(api_settings, prediction_flush_seconds=60, prediction_flush_rows=100_000)
    marker = uuid.uuid4().hex
    with running_app(settings) as client:
        ids = [client.post("/predict", json={"text": f"{t} {marker}"}).json()["id"] for t in tweets[0][:50]]
        r = client.post("/predict/batch", json={"texts": [f"{t} {marker}" for t in tweets[0][50:350]]})
        ids += [p["id"] for p in r.json()["predictions"]]
        assert client.app.state.writer.pending == 350
        # nothing was written while serving: no database round trip on the request path
        assert count_predictions_like(conn, marker) == 0
    stored = {row[0] for row in conn.execute(
        "SELECT id::text FROM predictions WHERE text LIKE %s AND model_version = %s", (f"%{marker}", champion.version)
    )}
    assert stored == set(ids) and len(stored) == 350


def test_flush_when_enough_rows_wait(api_settings, champion, conn, tweets):
    settings = settings_with(api_settings, prediction_flush_seconds=60, prediction_flush_rows=20)
    marker = uuid.uuid4().hex
    with running_app(settings) as client:
        client.post("/predict/batch", json={"texts": [f"{t} {marker}" for t in tweets[0][:25]]})
        wait_for(lambda: count_predictions_like(conn, marker) == 25, timeout=5)  # long before 60 s


def _rows(n: int, marker: str) -> list[serving.PredictionRow]:
    import numpy as np

    import realdata

    texts = [f"{t} {marker}" for _, t in realdata.balanced(n, seed=3)]
    return serving.prediction_rows(texts, np.array([[0.25, 0.75]] * n), "writer-test", 1)


# No stand-in for the database here: the outage is the real server refusing connections to the
# test's own database (conftest.outage_db), so the writer meets the errors production meets.
def test_failed_writes_are_kept_and_retried(platform_env, outage_db, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="api")
    outage_db.down()
    writer = PredictionWriter(settings_with(platform_env, database_url=outage_db.url, prediction_flush_seconds=0.05),
                              spool_dir=tmp_path)
    writer.start()
    marker = uuid.uuid4().hex
    try:
        writer.submit(_rows(30, marker))
        wait_for(lambda: writer.failures >= 2, timeout=10)  # the thread tried, failed, and tries again
        assert writer.pending == 30 and "not currently accepting connections" in writer.last_error
        with pytest.raises(FlushError):
            writer.flush()
        assert writer.pending == 30
        assert any("writing 30 predictions failed" in m for m in caplog.messages)
        writer.submit(_rows(5, marker))  # newer rows queue behind the kept ones
        outage_db.up()
        with outage_db.connect() as conn:
            wait_for(lambda: count_predictions_like(conn, marker) == 35, timeout=15)
        assert writer.pending == 0 and writer.last_error is None
    finally:
        writer.close()


def test_database_down_at_shutdown_spools_and_next_start_writes(platform_env, outage_db, tmp_path, caplog):
    settings = settings_with(platform_env, database_url=outage_db.url, prediction_flush_seconds=60)
    marker = uuid.uuid4().hex
    first = PredictionWriter(settings, spool_dir=tmp_path)
    first.start()
    first.submit(_rows(40, marker))
    outage_db.down()
    first.close(attempts=2, retry_delay=0.01)
    spooled = list(tmp_path.glob("predictions-*.jsonl"))
    assert len(spooled) == 1 and len(spooled[0].read_text().splitlines()) == 40
    assert any("40 predictions spooled" in m for m in caplog.messages)

    outage_db.up()
    with outage_db.connect() as conn:
        assert count_predictions_like(conn, marker) == 0
        second = PredictionWriter(settings, spool_dir=tmp_path)
        second.start()  # loads the spool and writes it
        try:
            assert count_predictions_like(conn, marker) == 40
            assert list(tmp_path.iterdir()) == []
        finally:
            second.close()


def test_a_row_the_database_refuses_does_not_block_the_others(platform_env, conn, tmp_path):
    writer = PredictionWriter(settings_with(platform_env, prediction_flush_seconds=60), spool_dir=tmp_path)
    marker = uuid.uuid4().hex
    rows = _rows(10, marker)
    good_dupe = rows[3]  # already stored once: the retry must not fail on it
    writer.submit([good_dupe])
    assert writer.flush() == 1
    bad = serving.PredictionRow(
        id=uuid.uuid4(), created_at=rows[5].created_at, text=rows[9].text, label=7, p_negative=0.5,
        p_positive=0.5, model_name="writer-test", model_version=1,
    )  # violates CHECK (label IN (0, 1))
    writer.submit(rows + [bad])
    writer.flush()
    assert count_predictions_like(conn, marker) == 10
    rejected = list(tmp_path.glob("rejected-*.jsonl"))
    assert len(rejected) == 1 and str(bad.id) in rejected[0].read_text()
    assert writer.pending == 0
    writer.close()
