"""A validated dataset snapshot stored once and recorded in the database (ml/data/snapshots.py)."""

from __future__ import annotations

import json

import pytest

from ml.data import DataError
from ml.data.snapshots import get_snapshot, validate_and_snapshot


def test_snapshot_stored_once_and_recorded(platform_env, conn, tweets_csv):
    snap = validate_and_snapshot(tweets_csv)
    again = validate_and_snapshot(tweets_csv)
    assert snap.hash == again.hash and again.created is False
    assert (snap.path.parent / "validation.json").exists() and (snap.path.parent / "validation.md").exists()
    assert json.loads((snap.path.parent / "validation.json").read_text())["snapshot"] == snap.hash
    row = conn.execute(
        "SELECT n_rows, report->>'rows_read', source FROM dataset_snapshots WHERE hash=%s", (snap.hash,)
    ).fetchone()
    assert row[0] == snap.n_rows == len(snap.load())
    assert int(row[1]) == 2000
    assert get_snapshot(snap.hash[:12]).hash == snap.hash
    with pytest.raises(DataError, match="unknown dataset snapshot"):
        get_snapshot("deadbeef")
