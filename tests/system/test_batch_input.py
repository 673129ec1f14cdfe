"""Bad batch files fail loudly and cleanly (issue 22 item 3).

``ml score`` (the real CLI, as a subprocess: exit codes matter) and the DAG on: a CSV without a
text column, an empty file, a binary file, a UTF-16 file, a mostly-rejected file -- each exits 2
with the reason on one stderr line (no traceback), stores nothing in ``predictions`` and leaves
the batch ``failed`` with the reason -- and on good files: Sentiment140's six-column headerless
Latin-1 layout, and a CSV whose text column is named with ``--text-column``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import psycopg
import pytest
import realdata

from ml.platform import db
from ml.platform.config import get_settings
from ml.stages.scoring.files import batch_dir, file_sha256


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("batch_input")


@pytest.fixture(scope="module")
def champion(own_champion, tweets_csv, roots):
    """A champion of this module's own; this module's folder is an allowed input root."""
    with own_champion(
        "tweet-sentiment-badinput", tweets_csv, SENTIMENT_BATCH_INPUT_ROOTS=json.dumps([str(roots)])
    ) as c:
        yield c


def _tweets(n: int, tag: str) -> list[str]:
    """n real tweets, one line each, made this test's own (own content: own batch id)."""
    rows = [t for _, t in realdata.read()[: n * 2] if "\n" not in t and "\r" not in t][:n]
    return [f"{t} {tag}" for t in rows]


def _no_text_column(tag: str) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "tweet_body", "score"])
    for i, t in enumerate(_tweets(60, tag)):
        w.writerow([i, t, 0.5])
    return buf.getvalue().encode()


def _mostly_rejected(tag: str) -> bytes:
    """100 rows, 10 of them with an empty text: 10% rejected, above the 5% default."""
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for i, t in enumerate(_tweets(100, tag)):
        w.writerow(["4", "   " if i % 10 == 3 else t])
    return buf.getvalue().encode()


def _latin1_six_columns(tag: str) -> bytes:
    """Sentiment140 as shipped: six columns, no header, Latin-1 (é ü ñ invalid as UTF-8)."""
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for i, t in enumerate(_tweets(80, tag)):
        t = f"{t} café" if i % 4 == 0 else t
        w.writerow(["0" if i % 2 else "4", str(i), "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "user", t])
    return buf.getvalue().encode("latin-1", errors="replace")


BAD = {
    # case: (file name, content builder, expected message fragments)
    "no text column": (
        "export.csv",
        _no_text_column,
        ["no text column", "['id', 'tweet_body', 'score']", "--text-column"],
    ),
    "empty": ("empty.csv", lambda tag: b"", ["is empty"]),
    "header only": ("header.csv", lambda tag: b"polarity,text\n", ["no rows to score"]),
    "binary": ("random.csv", lambda tag: random.Random(tag).randbytes(64 << 10), ["not a text file", "NUL"]),
    "UTF-16": ("utf16.txt", lambda tag: "\n".join(_tweets(30, tag)).encode("utf-16"), ["UTF-16"]),
    "mostly rejected": (
        "mostly_bad.csv",
        _mostly_rejected,
        ["10 of 100 rows rejected (10.0%)", "batch_max_reject_share 5.0%", "empty text"],
    ),
}


def _score(path: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ml.cli", "score", str(path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _n_predictions(conn) -> int:
    return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_fails_the_command_and_stores_nothing(champion, conn, roots, case, request):
    name, build, fragments = BAD[case]
    tag = uuid.uuid5(uuid.NAMESPACE_URL, request.node.nodeid).hex[:12]
    path = roots / f"{tag}_{name}"
    path.write_bytes(build(tag))
    before = _n_predictions(conn)
    res = _score(path, {**os.environ, **champion.env})
    after = _n_predictions(conn)
    print(f"| {case} | {res.returncode} | {res.stderr.strip().splitlines()[-1]} | {before} -> {after} |")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(f in line for f in fragments), line
    assert res.stdout == ""
    assert after == before
    batch = conn.execute(
        "SELECT status, summary->>'error', airflow_run_id FROM batches WHERE id=%s", (f"b-{file_sha256(path)[:16]}",)
    ).fetchone()
    assert batch[0] == "failed" and batch[1] and batch[1] in line, (batch, line)
    # nothing of it left on disk either (the shards the plan wrote before it knew)

    assert not batch_dir(f"b-{file_sha256(path)[:16]}", get_settings()).exists()


def test_latin1_six_column_file_scores(champion, conn, roots, request):
    tag = uuid.uuid5(uuid.NAMESPACE_URL, request.node.nodeid).hex[:12]
    path = roots / f"{tag}_s140.csv"
    path.write_bytes(_latin1_six_columns(tag))
    before = _n_predictions(conn)
    res = _score(path, {**os.environ, **champion.env})
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads(res.stdout[res.stdout.index("{") :])
    assert s["rows_scored"] == 80 and s["rows_rejected"] == 0
    assert _n_predictions(conn) == before + 80
    texts = pd.read_parquet(s["output"])["text"]
    assert sum(t.endswith(f"{tag} café") for t in texts) == 20  # decoded as Latin-1, line by line


def test_text_column_picks_the_column(champion, conn, roots, tmp_path, request):
    """The file that failed without it scores with ``--text-column tweet_body``; ``--output`` copies
    the scored file, with the prediction ids and the API's labels."""
    tag = uuid.uuid5(uuid.NAMESPACE_URL, request.node.nodeid).hex[:12]
    path = roots / f"{tag}_export.csv"
    path.write_bytes(_no_text_column(tag))
    env = {**os.environ, **champion.env}
    res = _score(path, env, "--text-column", "nope")
    assert res.returncode == 2 and "no column 'nope' in the CSV header" in res.stderr, res.stderr[-2000:]
    before = _n_predictions(conn)
    out = tmp_path / "scored.parquet"
    res = _score(path, env, "--text-column", "tweet_body", "--output", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads(res.stdout[res.stdout.index("{") :])
    assert s["rows_scored"] == 60 and s["rows_rejected"] == 0 and s["copied_to"] == str(out)
    assert _n_predictions(conn) == before + 60
    table = pd.read_parquet(out)
    assert list(table.columns) == [
        "source_row",
        "prediction_id",
        "text",
        "label",
        "label_id",
        "p_negative",
        "p_positive",
        "model_version",
    ]
    assert table["text"].str.endswith(tag).all() and set(table["label"]) <= {"positive", "negative"}
    assert list(table["source_row"]) == list(range(2, 62))  # line numbers: the header is line 1
    stored = conn.execute("SELECT count(*) FROM predictions WHERE id::text = ANY(%s)", (list(table["prediction_id"]),))
    assert stored.fetchone()[0] == 60


@pytest.mark.slow
def test_dag_run_fails_on_a_bad_file(airflow_cli, platform_env, champion, conn, roots, request):
    """The DAG on a binary file: the plan task fails at once (no retry), with the reason; the run
    is failed; nothing stored; the batch failed with the reason."""
    tag = uuid.uuid5(uuid.NAMESPACE_URL, request.node.nodeid).hex[:12]
    path = roots / f"{tag}_binary.csv"
    path.write_bytes(b"PK\x03\x04" + random.Random(tag).randbytes(32 << 10))  # e.g. a zip
    before = _n_predictions(conn)
    res = airflow_cli(
        "dags",
        "test",
        "sentiment_batch_scoring",
        "-c",
        json.dumps({"input_path": str(path), "text_column": ""}),
        extra_env=champion.env,
    )
    assert res.returncode != 0, res.stdout[-3000:]
    assert "is not a text file" in res.stdout + res.stderr
    assert _n_predictions(conn) == before
    status, error, run_id = conn.execute(
        "SELECT status, summary->>'error', airflow_run_id FROM batches WHERE id=%s", (f"b-{file_sha256(path)[:16]}",)
    ).fetchone()
    assert status == "failed" and "not a text file" in error
    with psycopg.connect(db.libpq_url(db.airflow_db_url(platform_env)), autocommit=True) as c:
        run_state = c.execute(
            "SELECT state FROM dag_run WHERE dag_id='sentiment_batch_scoring' AND run_id=%s", (run_id,)
        ).fetchone()[0]
        tis = dict(
            (r[0], (r[1], r[2]))
            for r in c.execute(
                "SELECT task_id, state, try_number FROM task_instance"
                " WHERE dag_id='sentiment_batch_scoring' AND run_id=%s",
                (run_id,),
            )
        )
    assert run_state == "failed"
    assert tis["plan"] == ("failed", 1), tis  # AirflowFailException: no retry of an unusable file
    assert tis["finalize"][0] in ("upstream_failed", None), tis


def test_the_reject_share_is_a_setting(champion, conn, roots, request):
    """The mostly-rejected file scores where ``batch_max_reject_share`` allows its 10%."""
    tag = uuid.uuid5(uuid.NAMESPACE_URL, request.node.nodeid).hex[:12]
    path = roots / f"{tag}_mostly_bad.csv"
    path.write_bytes(_mostly_rejected(tag))
    before = _n_predictions(conn)
    res = _score(path, {**os.environ, **champion.env, "SENTIMENT_BATCH_MAX_REJECT_SHARE": "0.2"})
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads(res.stdout[res.stdout.index("{") :])
    assert s["rows_scored"] == 90 and s["rows_rejected"] == 10
    assert _n_predictions(conn) == before + 90
