"""The batch-input reader (ml/data/read.py) on files of its own."""

from __future__ import annotations

import pytest

from ml.data import DataError
from ml.data.read import iter_records, read_labelled


def test_the_reader_keeps_training_behaviour_and_reads_named_headers(tmp_path):
    """The one reader: training (read_labelled) still rejects an unknown layout row by row; a header
    naming ``text`` (and a label column) is read in any column count, by training and scoring alike."""
    odd = tmp_path / "odd.csv"
    odd.write_text("id,tweet_body,score\n1,nice,0.5\n")
    res = read_labelled(odd)  # training: per-row rejects, as before
    assert res.texts == [] and all(r["reason"].startswith("wrong column count") for r in res.rejected)
    with pytest.raises(DataError, match="no text column"):
        list(iter_records(odd, require_layout=True))  # batch scoring: one clear error
    named = tmp_path / "named.csv"
    named.write_text("id,label,text,date\n1,4,so happy,d\n2,0,so sad,d\n3,4,too,many,fields\n")
    res = read_labelled(named)
    assert res.texts == ["so happy", "so sad"] and res.labels == [1, 0]
    assert res.rejected == [{"line": 4, "reason": "wrong column count: expected 4 (the header's), got 5"}]
