"""Property-based tests (hypothesis): generated inputs against the platform's own invariants.

- the prediction log's records (api/runtime/predlog.py): decode(encode(rows)) == rows; any truncation, and any
  single bit flip, yields a prefix of whole records (never a partial or altered row);
- the tweet reader (ml/data/read.py): arbitrary bytes (UTF-8, Latin-1, mixed, anything) never raise,
  and every physical line of a text file / every written CSV row is one record;
- ``content_hash`` (ml/data/snapshots.py) is independent of row order and tells different contents apart
  (a text holding a line feed cannot pass for two rows);
- any bit flip in a signed prediction id (api.runtime.serving.PredictionIds) or a feedback token
  (ml.platform.security) is refused;
- McNemar's mid-p (ml/evaluation/stats.py) equals an exact computation with integers and fractions.

Generated values are inputs to parsers and checksums, not tweets for a model: the README's "no test
ever swaps in generated text" is about training and scoring data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import uuid
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.runtime.predlog import decode, encode
from api.runtime.serving import PredictionIds
from ml.data.read import iter_records, read_labelled
from ml.data.snapshots import content_hash
from ml.evaluation.stats import mcnemar_mid_p
from ml.platform import security

# no deadline: the machine is shared (no wall-clock claims); no example database in the checkout
PROPERTY = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# ------------------------------------------------------------------ the prediction log's records
json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300)  # any code point but lone surrogates (the API refuses those before a row exists)
)
log_row = st.lists(json_scalar, min_size=1, max_size=12)
log_rows = st.lists(log_row, max_size=20)


def _boundaries(rows: list[list]) -> list[int]:
    """Byte offsets where each record of ``encode(rows)`` ends, computed one record at a time."""
    ends, pos = [], 0
    for r in rows:
        pos += len(encode([r])[0])
        ends.append(pos)
    return ends


@PROPERTY
@given(log_rows)
def test_log_records_round_trip(rows):
    data, n = encode(rows)
    assert n == len(rows)
    assert decode(data) == (rows, len(data))


@PROPERTY
@given(log_rows, st.data())
def test_any_truncation_of_the_log_yields_whole_records_only(rows, data):
    blob, _ = encode(rows)
    cut = data.draw(st.integers(min_value=0, max_value=len(blob)), label="cut")
    got, valid = decode(blob[:cut])
    whole = [e for e in _boundaries(rows) if e <= cut]
    assert got == rows[: len(whole)]  # exactly the records wholly before the cut, unchanged
    assert valid == (whole[-1] if whole else 0)  # and the valid prefix ends on a record boundary


@PROPERTY
@given(log_rows.filter(bool), st.data())
def test_a_bit_flip_in_the_log_yields_a_prefix_of_whole_records(rows, data):
    blob, _ = encode(rows)
    bit = data.draw(st.integers(min_value=0, max_value=len(blob) * 8 - 1), label="bit")
    flipped = bytearray(blob)
    flipped[bit // 8] ^= 1 << (bit % 8)
    got, valid = decode(bytes(flipped))
    hit = next(i for i, e in enumerate(_boundaries(rows)) if bit // 8 < e)  # the record holding the flipped bit
    assert got == rows[:hit]  # the records before it, whole; it and everything after it refused
    assert valid == ([0, *_boundaries(rows)][hit])


# ------------------------------------------------------------------ the tweet reader
_line_utf8 = st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",))).map(
    lambda s: s.encode("utf-8")
)
_line_latin1 = st.text(alphabet=st.characters(max_codepoint=255, blacklist_characters="\n")).map(
    lambda s: s.encode("latin-1")
)
_line_bytes = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b""))
any_line = st.one_of(_line_utf8, _line_latin1, _line_bytes)


def _decoded(raw: bytes) -> tuple[str, bool]:
    """The documented decoding of one line: UTF-8 where valid, else Latin-1 (and whether it was Latin-1)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("latin-1"), True


@PROPERTY
@given(st.lists(any_line, min_size=1, max_size=40), st.booleans())
def test_a_text_file_of_any_bytes_reads_one_record_per_line(tmp_path_factory, lines, final_newline):
    path = tmp_path_factory.mktemp("reader") / "tweets.txt"
    path.write_bytes(b"\n".join(lines) + (b"\n" if final_newline else b""))
    enc: Counter = Counter()
    records = list(iter_records(path, enc))  # never raises
    if not final_newline and lines[-1] == b"":
        lines = lines[:-1]  # nothing after the last newline: no line there
    assert [r.line for r in records] == list(range(1, len(lines) + 1))  # no line lost, none merged
    latin1 = 0
    for raw, rec in zip(lines, records, strict=True):
        text, was_latin1 = _decoded(raw)
        latin1 += was_latin1
        text = text.strip()
        if not text:
            assert rec.text is None and rec.reason == "empty text"
        elif "\x00" in text:
            assert rec.text is None and rec.reason == "NUL byte in text"
        else:
            assert (rec.text, rec.reason) == (text, None)
    assert enc["latin1_lines"] == latin1


_csv_text = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120),
    st.text(alphabet=st.characters(max_codepoint=255), max_size=120),
)


def _encoded_row(row: str, latin1: bool) -> bytes:
    """The row as Latin-1 when asked and possible, so that each of its physical lines reads back as the same
    text (ASCII, or not valid UTF-8: the reader decodes a line as UTF-8 where it is valid); else as UTF-8."""
    if latin1 and max(row) <= "\xff":
        raw = row.encode("latin-1")
        if all(line.isascii() or _decoded(line)[1] for line in raw.split(b"\n")):
            return raw
    return row.encode("utf-8")


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(["0", "4", "2", "x"]), _csv_text, st.booleans()), min_size=1, max_size=30))
def test_a_csv_of_mixed_encodings_reads_one_record_per_row(tmp_path_factory, rows):
    """Rows written by a CSV writer (quotes, commas, newlines, NUL inside fields), each encoded as UTF-8 or
    Latin-1: read_labelled counts each row once, as read or as rejected with a reason, and never raises."""
    out = io.BytesIO()
    out.write(b"polarity,text\r\n")
    for pol, text, latin1 in rows:
        buf = io.StringIO()
        csv.writer(buf).writerow([pol, text])
        out.write(_encoded_row(buf.getvalue(), latin1))
    path = tmp_path_factory.mktemp("reader") / "tweets.csv"
    path.write_bytes(out.getvalue())
    res = read_labelled(path, progress_every=0)
    assert res.rows_read == len(rows)
    assert len(res.texts) + sum(res.rejected_by_reason.values()) == len(rows)
    kept = [(pol, text.strip()) for pol, text, _ in rows if pol in ("0", "4") and text.strip() and "\x00" not in text]
    assert len(res.texts) == len(kept)
    assert res.labels == [0 if pol == "0" else 1 for pol, _ in kept]


# ------------------------------------------------------------------ snapshot content hashes
@PROPERTY
@given(
    st.lists(st.tuples(st.sampled_from([0, 1]), st.text(max_size=50)), max_size=40),
    st.randoms(use_true_random=False),
)
def test_content_hash_is_independent_of_row_order(rows, rnd):
    import pandas as pd

    shuffled = list(rows)
    rnd.shuffle(shuffled)
    a = pd.DataFrame(rows, columns=["label", "text"])
    b = pd.DataFrame(shuffled, columns=["label", "text"])
    assert content_hash(a) == content_hash(b)


# texts built from the characters the row format uses, so that one row can try to pass for two
_FRAMING = st.text(alphabet="ab01\t\n\x00:", max_size=12)


@PROPERTY
@given(
    st.lists(st.tuples(st.sampled_from([0, 1]), _FRAMING), max_size=6),
    st.lists(st.tuples(st.sampled_from([0, 1]), _FRAMING), max_size=6),
)
def test_content_hash_tells_different_contents_apart(rows_a, rows_b):
    """Different multisets of (label, text) rows never share a hash, however the texts mix tabs,
    line feeds, NULs and digits (the row format's own characters)."""
    import pandas as pd

    a = pd.DataFrame(rows_a, columns=["label", "text"])
    b = pd.DataFrame(rows_b, columns=["label", "text"])
    assert (content_hash(a) == content_hash(b)) == (Counter(rows_a) == Counter(rows_b))


def test_content_hash_a_line_feed_cannot_split_a_row():
    """The collision of the earlier ``label TAB text LF`` format: one row whose text holds ``LF 1 TAB``
    hashed as the two rows it spells."""
    import pandas as pd

    one = pd.DataFrame({"label": [0], "text": ["a\n1\tb"]})
    two = pd.DataFrame({"label": [0, 1], "text": ["a", "b"]})
    assert content_hash(one) != content_hash(two)
    # a text with no line feed keeps the hash of the earlier format (stored snapshots keep their names)
    plain = pd.DataFrame({"label": [1, 0], "text": ["b", "a"]})
    assert content_hash(plain) == hashlib.sha256(b"0\ta\n1\tb\n").hexdigest()


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from([0, 1]), st.text(min_size=1, max_size=50)), min_size=1, max_size=20))
def test_content_hash_changes_when_a_label_changes(rows):
    import pandas as pd

    flipped = [(1 - rows[0][0], rows[0][1]), *rows[1:]]
    if Counter(flipped) == Counter(rows):  # the same multiset of rows (a duplicate took its place)
        return
    a = pd.DataFrame(rows, columns=["label", "text"])
    b = pd.DataFrame(flipped, columns=["label", "text"])
    assert content_hash(a) != content_hash(b)


# ------------------------------------------------------------------ signed ids and feedback tokens
KEY = b"k" * 32
IDS = PredictionIds(KEY)


@PROPERTY
@given(st.integers(min_value=0, max_value=127))
def test_any_bit_flip_in_a_signed_prediction_id_is_refused(bit):
    issued = IDS.new()
    assert IDS.issued(issued)
    flipped = uuid.UUID(int=issued.int ^ (1 << bit))
    assert not IDS.issued(flipped)


@PROPERTY
@given(st.data())
def test_any_bit_flip_in_a_feedback_token_is_refused(data):
    pid, who = str(IDS.new()), "anon:203.0.113.9"
    token = security.feedback_token(KEY, pid, who)
    assert security.check_feedback_token(KEY, token, pid, who, max_age=3600) is None
    raw = bytearray(token.encode("utf-8"))  # ASCII: digits, '.', base64url
    bit = data.draw(st.integers(min_value=0, max_value=len(raw) * 8 - 1), label="bit")
    raw[bit // 8] ^= 1 << (bit % 8)
    forged = raw.decode("latin-1")  # a flipped high bit is a character beyond ASCII, as a JSON body can carry
    why = security.check_feedback_token(KEY, forged, pid, who, max_age=3600)  # refused, never an exception
    assert isinstance(why, str) and why


@PROPERTY
@given(st.data())
def test_a_token_is_refused_for_any_other_prediction_or_caller(data):
    pid, who = IDS.new(), "key:alice#1"
    token = security.feedback_token(KEY, pid, who)
    bit = data.draw(st.integers(min_value=0, max_value=127), label="bit")
    assert security.check_feedback_token(KEY, token, uuid.UUID(int=pid.int ^ (1 << bit)), who, 3600)
    other = data.draw(st.text(min_size=1, max_size=40).filter(lambda s: s != who), label="caller")
    assert security.check_feedback_token(KEY, token, pid, other, 3600)


# ------------------------------------------------------------------ McNemar's mid-p
def exact_mid_p(b: int, c: int) -> Fraction:
    """Two-sided mid-p of McNemar's exact test in exact arithmetic: under H0 the discordant pairs are
    Binomial(n, 1/2); mid-p = 2 * (P(X < k) + P(X = k) / 2), k = min(b, c), capped at 1."""
    n, k = b + c, min(b, c)
    if n == 0:
        return Fraction(1)
    below = sum(math.comb(n, i) for i in range(k))
    return min(Fraction(1), Fraction(2 * below + math.comb(n, k), 2**n))


@PROPERTY
@given(st.integers(min_value=0, max_value=2000), st.integers(min_value=0, max_value=2000))
def test_mcnemar_mid_p_matches_the_exact_computation(b, c):
    got = mcnemar_mid_p(b, c)
    want = exact_mid_p(b, c)
    # to 9 significant digits; below 1e-250 scipy's binomial tail underflows to 0 (measured: 0.0 where the exact
    # value is 1.6e-290, b=28, c=1121): no decision of the gate (alpha >= 1e-6) can tell those apart
    assert got == pytest.approx(float(want), rel=1e-9, abs=1e-250)
    assert got == mcnemar_mid_p(c, b)  # symmetric


@pytest.mark.parametrize(
    ("b", "c", "want"),
    [(0, 0, 1.0), (3, 3, 1.0), (0, 1, 0.5), (1, 0, 0.5), (0, 5, 1 / 32), (2, 8, 0.0654), (10, 30, 0.00145)],
)
def test_mcnemar_mid_p_known_values(b, c, want):
    """Hand-checked: (0, 5): 2 * (0 + 1/32 / 2) = 1/32; (2, 8): 2 * (P(X<=1) + P(X=2)/2) over Binomial(10, 1/2)
    = 2 * (11 + 22.5) / 1024 = 0.0654...; (10, 30): 2 * (sum C(40, i), i < 10, + C(40, 10) / 2) / 2^40 = 0.00145."""
    assert mcnemar_mid_p(b, c) == pytest.approx(want, rel=0.01)
