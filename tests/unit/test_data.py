"""Data: readers, validation report, snapshots (real files, real PostgreSQL)."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from ml.data import DataError
from ml.data.read import iter_records, read_labelled
from ml.data.snapshots import content_hash
from ml.data.validation import report_markdown, validate
from ml.platform.startup import sources
from ml.platform.startup.sources import BUNDLED_SAMPLE, default_source


def _write(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_sentiment140_six_columns_latin1(tmp_path):
    raw = (
        b'"0","1467810369","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","_TheSpecialOne_","@switchfoot awww, that\'s a bummer"\n'
        b'"4","1467810370","Mon Apr 06 22:19:49 PDT 2009","NO_QUERY","bob","caf\xe9 au lait is great \xa3"\n'
    )
    res = read_labelled(_write(tmp_path, "s140.csv", raw))
    assert res.labels == [0, 1]
    assert res.texts[1] == "café au lait is great £"
    assert res.encoding["latin1_lines"] == 1
    assert res.formats["sentiment140"] == 2
    assert res.lines == [1, 2]


def test_two_column_with_header_and_01_labels(tmp_path):
    p = _write(tmp_path, "two.csv", b"polarity,text\n1,good day\n0,bad day\n")
    res = read_labelled(p)
    assert res.labels == [1, 0] and res.rows_read == 2 and not res.rejected


def test_malformed_rows_rejected_with_line_numbers(tmp_path):
    p = _write(
        tmp_path,
        "bad.csv",
        b'0,"fine negative"\n'
        b'4,"fine positive"\n'
        b'7,"bad label"\n'
        b'2,"neutral"\n'
        b'4,"   "\n'
        b"0,too,many,columns\n"
        b'4,"positive again"\n',
    )
    v = validate(p)
    r = v.report
    assert r["rows_read"] == 7 and r["rows_rejected"] == 4 and r["rows_out"] == 3
    reasons = {x["line"]: x["reason"] for x in r["rejected_rows"]}
    assert reasons[3].startswith("bad polarity") and "'7'" in reasons[3]
    assert "neutral" in reasons[4]
    assert reasons[5] == "empty text"
    assert reasons[6].startswith("wrong column count") and "got 4" in reasons[6]
    assert r["empty_texts"] == 1
    assert "line 6" in report_markdown(r)


def test_conflicting_duplicates_majority_and_ties(tmp_path):
    rows = [
        (4, "same text majority positive"),
        (4, "same text majority positive"),
        (0, "same text majority positive"),
        (0, "tie text"),
        (4, "tie text"),
        (0, "plain dup"),
        (0, "plain dup"),
        (4, "unique pos"),
        (0, "unique neg"),
    ]
    p = tmp_path / "dups.csv"
    p.write_text("".join(f'{y},"{t}"\n' for y, t in rows))
    v = validate(p)
    r = v.report
    assert r["duplicate_texts"] == 3
    assert r["conflicting_texts"] == 2
    assert r["conflicts_resolved_by_majority"] == 1
    assert r["conflicts_tied_dropped"] == 1
    got = dict(zip(v.frame["text"], v.frame["label"]))
    assert got["same text majority positive"] == 1
    assert "tie text" not in got
    assert list(v.frame["text"]).count("plain dup") == 1
    assert r["rows_out"] == 4 and r["label_counts"] == {"negative": 2, "positive": 2}


def test_unusable_files_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        validate(tmp_path / "missing.csv")
    only_pos = _write(tmp_path, "pos.csv", b'4,"a"\n4,"b"\n')
    with pytest.raises(DataError, match="only one class"):
        validate(only_pos)
    garbage = _write(tmp_path, "garbage.csv", b"x\ny\n")
    with pytest.raises(DataError, match="no usable rows"):
        validate(garbage)


def test_content_hash_ignores_order_but_not_content():
    a = pd.DataFrame({"text": ["x", "y"], "label": [0, 1]})
    b = pd.DataFrame({"text": ["y", "x"], "label": [1, 0]})
    c = pd.DataFrame({"text": ["y", "x"], "label": [0, 0]})
    assert content_hash(a) == content_hash(b) != content_hash(c)


def test_shared_sample_duplicates_resolved(shared_data):
    """The shared 100k real tweets hold inconsistent duplicates (README: 16 texts carry both labels)."""
    r = validate(shared_data).report
    assert r["rows_read"] == 100_000 and r["rows_rejected"] == 0
    assert r["conflicting_texts"] >= 16
    assert r["rows_out"] == 100_000 - r["duplicate_rows_removed"] - r["conflicts_tied_dropped"]


def test_default_source_prefers_data_then_falls_back_to_the_real_bundled_sample(tmp_path, monkeypatch):
    """``make up`` trains on DATA= when given; offline without it, on the bundled REAL sample
    (never generated text), which validates as balanced real tweets."""
    p = tmp_path / "mine.csv"
    p.write_text('"0","a real enough tweet"\n"4","another one"\n', encoding="utf-8")
    assert default_source(str(p)) == p.resolve()
    with pytest.raises(DataError, match="not found"):
        default_source(str(tmp_path / "nope.csv"))
    monkeypatch.setattr(sources, "SENTIMENT140_URL", "http://127.0.0.1:9/unreachable.zip")  # no network here
    src = default_source(timeout=2)
    assert src == BUNDLED_SAMPLE
    v = validate(src)
    assert v.report["rows_read"] == 20_000 and v.report["rows_rejected"] == 0
    assert 0.45 < v.report["positive_share"] < 0.55


# ---------------------------------------------------------------- the one reader
def test_one_reader_recognises_every_layout(tmp_path):
    """iter_records is the only place that decodes and splits: six columns, two columns, one
    column, .txt, Parquet; headers skipped; every reject keeps its line number."""
    six = _write(tmp_path, "six.csv", b'"4","1","d","q","u","caf\xe9 \xfcber"\n"0","2","d","q","u","ni\xf1o"\n')
    recs = list(iter_records(six))
    assert [(r.line, r.polarity, r.text, r.layout) for r in recs] == [
        (1, "4", "café über", "sentiment140"),
        (2, "0", "niño", "sentiment140"),
    ]
    one = _write(tmp_path, "one.csv", b'text\n"hello there"\n\n"a,b"\n1,2,3\n')
    recs = list(iter_records(one))
    assert [(r.line, r.text, r.reason) for r in recs] == [
        (2, "hello there", None),
        (4, "a,b", None),
        (5, None, "wrong column count: expected 1 (text), 2 (polarity,text) or 6 (Sentiment140), got 3"),
    ]
    txt = _write(tmp_path, "t.txt", "one\n\ntwo \xe9\n".encode("latin-1"))
    enc = Counter()
    assert [(r.line, r.text, r.reason) for r in iter_records(txt, enc)] == [
        (1, "one", None),
        (2, None, "empty text"),
        (3, "two é", None),
    ]
    assert enc["latin1_lines"] == 1
    pq_path = tmp_path / "t.parquet"
    pd.DataFrame({"text": ["a", None, " b "], "label": [1, 0, 0]}).to_parquet(pq_path)
    assert [(r.line, r.polarity, r.text, r.reason) for r in iter_records(pq_path)] == [
        (1, "1", "a", None),
        (2, "0", None, "empty text"),
        (3, "0", "b", None),
    ]
    # training reads Parquet through the same reader
    assert read_labelled(pq_path).texts == ["a", "b"]
    with pytest.raises(DataError, match="not a readable Parquet"):
        list(iter_records(_write(tmp_path, "fake.parquet", b"not parquet")))


def test_labelled_reader_rejects_unlabelled_rows_with_line_numbers(tmp_path):
    p = _write(tmp_path, "mixed.csv", b'4,"good"\n"just text"\n0,"bad \x00 nul"\n0,"bad"\n')
    res = read_labelled(p)
    assert res.texts == ["good", "bad"] and res.lines == [1, 4]
    reasons = {x["line"]: x["reason"] for x in res.rejected}
    assert reasons[2].startswith("wrong column count") and reasons[2].endswith("got 1")
    assert reasons[3] == "NUL byte in text"
