"""Batch scoring: chunking, idempotence, shard retry, malformed rows, formats, the mapped DAG."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psycopg
import pytest
import realdata
import redis
from fastapi.testclient import TestClient
from ports import free_port, in_ci, listens, stop_group

from api.main import create_app
from ml.data import DataError
from ml.data.read import read_labelled
from ml.platform import db, registry
from ml.platform.config import get_settings, reset_settings
from ml.platform.orchestration import airflow_env
from ml.stages.scoring.files import batch_dir, file_sha256
from ml.stages.scoring.finalize import finalize
from ml.stages.scoring.inbox import inbox_trigger_kwargs, pending_inbox_file, pending_inbox_files
from ml.stages.scoring.plan import plan as plan_batch
from ml.stages.scoring.queries import get_batch
from ml.stages.scoring.run import score_file
from ml.stages.scoring.shard import score_shard
from ml.stages.scoring.sizing import MIN_AUTO_SHARD_ROWS, auto_shard_rows, estimate_rows


@pytest.fixture(scope="module", autouse=True)
def input_roots(tmp_path_factory):
    """This module scores files from pytest's temporary folders: batch input is confined to the
    inbox and ``batch_input_roots`` (tests/system/security/test_batch_files.py tests the confinement).
    Returns the extra environment Airflow subprocesses need (their env is built once per session)."""
    env = {"SENTIMENT_BATCH_INPUT_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())])}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_settings()
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_settings()


@pytest.fixture(scope="module")
def champion(own_champion, tweets_csv, input_roots):
    """A real TF-IDF champion under a registered-model name of this module's own."""
    with own_champion("tweet-sentiment-scoring", tweets_csv) as c:
        yield c.name


@pytest.fixture
def score_input(tmp_path, tweets_csv, request):
    """1,000 real tweets in Sentiment140's six-column layout, plus 3 malformed rows. The user
    column names the test, so every test has its own content, hence its own batch id."""
    with tweets_csv.open(encoding="utf-8") as f:
        rows = list(csv.reader(f))[:1000]
    p = tmp_path / "to_score.csv"
    user = f"u_{uuid.uuid5(uuid.NAMESPACE_URL, request.node.nodeid).hex[:12]}"
    with p.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        for i, (pol, text) in enumerate(rows):
            w.writerow([pol, str(i), "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", user, text])
            if i == 10:
                f.write('"0","x","y"\n')  # line 12: wrong column count
            if i == 500:
                w.writerow(["4", "1", "d", "q", "u", "   "])  # line 503: empty text
    with p.open("a", encoding="utf-8") as f:
        f.write('"4","1","d","q","u","unterminated quote\n')  # last line: malformed CSV at EOF
    return p, [r[1].strip() for r in rows]


def _stored(conn, batch_id):
    return pd.DataFrame(
        conn.execute(
            "SELECT source_row, text, label, p_positive, model_version FROM predictions WHERE batch_id=%s"
            " ORDER BY source_row",
            (batch_id,),
        ).fetchall(),
        columns=["source_row", "text", "label", "p_positive", "model_version"],
    )


@pytest.fixture
def latin1_input(tmp_path, request):
    """Real tweets (tests/data/sentiment140_20k.csv) as the official corpus ships them: six
    columns, Latin-1 bytes, so many lines are not valid UTF-8 -- some tweets carry é ü ñ, some
    keep the corpus' own mojibake -- plus malformed rows. Returns (path, {line: expected text},
    {line: reject reason prefix})."""
    rows = [r for r in realdata.read()[:600] if "\n" not in r[1] and "\r" not in r[1]][:500]
    mojibake = [t for _, t in realdata.read() if "Ã" in t and _utf8_once_latin1(t)][:5]
    tag = uuid.uuid5(uuid.NAMESPACE_URL, request.node.nodeid).hex[:12]  # own content per test
    extras = ["café", "über", "niño", "crème brûlée", "mañana"]
    expected: dict[int, str] = {}
    rejects: dict[int, str] = {}
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    line = 0
    for i, (label, text) in enumerate(rows):
        if i % 5 == 0:
            text = f"{text} {extras[i // 5 % len(extras)]}"  # é ü ñ: invalid as UTF-8 once Latin-1
        w.writerow([4 * label, f"{tag}{i}", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "user", text])
        line += 1
        expected[line] = _as_read(text)
        if i == 20:
            buf.write('"0","x","y"\n')  # wrong column count
            line += 1
            rejects[line] = "wrong column count"
        if i == 300:
            w.writerow(["4", "1", "d", "q", "u", "   "])  # empty text
            line += 1
            rejects[line] = "empty text"
    for t in mojibake:  # valid UTF-8 once encoded: the reader decodes it as UTF-8, as documented
        w.writerow(["0", f"{tag}m", "d", "q", "u", t])
        line += 1
        expected[line] = _as_read(t)
        assert expected[line] != t.strip()
    buf.write('"4","1","d","q","u","unterminated quote caf\xe9\n')  # malformed CSV at EOF
    line += 1
    rejects[line] = "malformed CSV"
    p = tmp_path / f"training.{tag}.latin1.csv"
    p.write_bytes(buf.getvalue().encode("latin-1"))
    raw_lines = p.read_bytes().splitlines()
    bad_utf8 = 0
    for raw in raw_lines:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            bad_utf8 += 1
    assert bad_utf8 >= 100 and len(raw_lines) == line  # the file really is not UTF-8
    return p, expected, rejects


def _as_read(t: str) -> str:
    """The documented decoding of one Latin-1 line: UTF-8 where its bytes are valid UTF-8 (the
    corpus' mojibake, e.g. 'whatï¿½s', is such a line), else Latin-1."""
    raw = t.encode("latin-1")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return t.strip()


def _utf8_once_latin1(t: str) -> bool:
    try:
        t.encode("latin-1").decode("utf-8")
        return "\n" not in t and "\r" not in t
    except UnicodeError:
        return False


def _check_latin1_batch(conn, batch_id, expected, rejects):
    stored = _stored(conn, batch_id)
    assert dict(zip(stored["source_row"], stored["text"])) == expected  # exactly as decoded, at their lines
    got = {r["line"]: r["reason"] for r in get_batch(batch_id)["rejects"]}
    assert set(got) == set(rejects)
    for ln, prefix in rejects.items():
        assert got[ln].startswith(prefix), (ln, got[ln])
    assert get_batch(batch_id)["status"] == "done"


def test_latin1_sentiment140_file_scores(champion, conn, latin1_input):
    path, expected, rejects = latin1_input
    s = score_file(path, shard_rows=128)
    assert s["rows_scored"] == len(expected) and s["rows_rejected"] == len(rejects)
    _check_latin1_batch(conn, s["batch_id"], expected, rejects)
    # training reads the very same file through the same reader: same texts at the same lines
    res = read_labelled(path)
    assert dict(zip(res.lines, res.texts)) == expected
    assert res.encoding["latin1_lines"] >= 100


def test_latin1_file_through_the_cli(champion, conn, latin1_input):
    path, expected, rejects = latin1_input
    res = subprocess.run(
        [sys.executable, "-m", "ml.cli", "score", str(path), "--shard-rows", "200"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads(res.stdout[res.stdout.index("{") :])
    assert s["shards"] == 3 and s["rows_scored"] == len(expected)
    _check_latin1_batch(conn, s["batch_id"], expected, rejects)


@pytest.mark.slow
def test_latin1_file_through_the_dag(airflow_cli, champion, conn, latin1_input, input_roots):
    path, expected, rejects = latin1_input
    res = airflow_cli(
        "dags",
        "test",
        "sentiment_batch_scoring",
        "-c",
        json.dumps({"input_path": str(path)}),
        extra_env={"SENTIMENT_MODEL_NAME": champion, **input_roots},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    batch_id = conn.execute("SELECT id FROM batches WHERE input_path=%s", (str(path),)).fetchone()[0]
    _check_latin1_batch(conn, batch_id, expected, rejects)


def test_workers_score_shards_in_parallel_processes(champion, conn, score_input):
    path, texts = score_input
    s = score_file(path, shard_rows=250, workers=2)  # 4 shards over 2 processes
    assert s["shards"] == 4 and s["rows_scored"] == 1000 and s["rows_rejected"] == 3
    stored = _stored(conn, s["batch_id"])
    assert len(stored) == 1000 and stored["source_row"].is_unique
    proba = registry.load_version(registry.champion().version).predict_proba(texts)
    by_text = dict(zip(stored["text"], stored["p_positive"]))
    np.testing.assert_allclose([by_text[t] for t in texts], proba[:, 1], atol=1e-6)
    # shard_rows=0 sizes shards from the input: one per worker, never tiny
    assert 900 < estimate_rows(path) < 1100
    assert auto_shard_rows(path, workers=2) == MIN_AUTO_SHARD_ROWS
    big = path.with_name("big.parquet")
    pd.DataFrame({"text": texts * 201}).to_parquet(big)  # 201,000 rows: exact from the metadata
    assert auto_shard_rows(big, workers=2) == 100_500
    assert auto_shard_rows(big, workers=8) == MIN_AUTO_SHARD_ROWS
    with pytest.raises(DataError, match="workers must be at least 1"):
        score_file(path, workers=0)
    with pytest.raises(DataError, match="no input_path"):
        plan_batch("")


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_scoring_process_resumes_with_only_unfinished_shards(champion, conn, score_input, workers):
    """SIGKILL `ml score` (its whole process group: with 2 workers, both shard processes) once
    its first shard is recorded; the resumed batch re-runs only the shards that were in flight
    and those never started, and stores each row exactly once."""
    path, _ = score_input
    batch_id = f"b-{file_sha256(path)[:16]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ml.cli", "score", str(path), "--shard-rows", "50", "--workers", str(workers)],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            n = conn.execute(
                "SELECT count(*) FROM batch_shards WHERE batch_id=%s AND status='done'", (batch_id,)
            ).fetchone()[0]
            if n >= 1:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "ml score ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    before = {
        r[0]: (r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT shard, status, attempts, finished_at FROM batch_shards WHERE batch_id=%s", (batch_id,)
        )
    }
    done_before = {sh for sh, (st, _, _) in before.items() if st == "done"}
    assert len(before) == 20 and 1 <= len(done_before) < 20
    if workers == 1:
        assert done_before == set(range(len(done_before)))  # one process runs the shards in order
    # rows of the finished shards are stored once; nothing of the rest, or a partial shard, is
    n_rows = conn.execute("SELECT count(*) FROM predictions WHERE batch_id=%s", (batch_id,)).fetchone()[0]
    assert n_rows == 50 * len(done_before)

    resumed = plan_batch(path)
    assert resumed.status == "scoring" and resumed.shards == sorted(set(range(20)) - done_before)
    summary = score_file(path, workers=workers)  # resumes the same plan
    assert summary["rows_scored"] == 1000 and summary["shards"] == 20
    after = {
        r[0]: (r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT shard, status, attempts, finished_at FROM batch_shards WHERE batch_id=%s", (batch_id,)
        )
    }
    for sh in range(20):
        if sh in done_before:  # not re-run: same attempt, same finish time
            assert after[sh] == before[sh]
        else:  # re-run once more than before the kill (the in-flight shard had started once)
            assert after[sh][0] == "done" and after[sh][1] == before[sh][1] + 1
    stored = _stored(conn, batch_id)
    assert len(stored) == 1000 and stored["source_row"].is_unique


@pytest.mark.slow
def test_dag_retries_a_failed_shard_alone(airflow_cli, platform_env, champion, conn, score_input, input_roots):
    """Shard 1's file is missing on its first try (moved away as soon as the plan records it,
    moved back once that try has started): Airflow retries that mapped task alone."""
    path, _ = score_input
    batch_id = f"b-{file_sha256(path)[:16]}"
    stop = threading.Event()
    events: list[str] = []

    def saboteur() -> None:
        with psycopg.connect(platform_env.database_url, autocommit=True) as c:
            hidden = None
            while not stop.is_set():
                if hidden is None:
                    row = c.execute(
                        "SELECT path, attempts FROM batch_shards WHERE batch_id=%s AND shard=1", (batch_id,)
                    ).fetchone()
                    if row and row[1] == 0 and Path(row[0]).exists():
                        hidden = (row[0], row[0] + ".away")
                        os.replace(*hidden)
                        events.append("hidden")
                        # this run's id, as the plan recorded it (other tests' runs score files of the
                        # same name in the same Airflow database: never match runs by file name)
                        (run_id,) = c.execute("SELECT airflow_run_id FROM batches WHERE id=%s", (batch_id,)).fetchone()
                else:  # Airflow has failed the first try and waits to retry it: put the file back
                    state = _airflow_rows(
                        platform_env,
                        "SELECT state, try_number FROM task_instance WHERE dag_id='sentiment_batch_scoring'"
                        " AND task_id='score_shard' AND map_index=1 AND run_id=%s",
                        (run_id,),
                    )
                    # up_for_retry can be brief on a busy machine: a second try being set up counts too
                    if state and (state[0][0] == "up_for_retry" or (state[0][1] or 0) >= 2):
                        os.replace(hidden[1], hidden[0])
                        events.append("restored")
                        return
                time.sleep(0.02)

    t = threading.Thread(target=saboteur, daemon=True)
    t.start()
    try:
        conf = json.dumps({"input_path": str(path), "shard_rows": 400})
        res = airflow_cli(
            "dags",
            "test",
            "sentiment_batch_scoring",
            "-c",
            conf,
            extra_env={"SENTIMENT_MODEL_NAME": champion, **input_roots},
        )
    finally:
        stop.set()
        t.join(10)
    assert events == ["hidden", "restored"], events
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_id = conn.execute("SELECT airflow_run_id FROM batches WHERE id=%s", (batch_id,)).fetchone()[0]
    attempts = dict(conn.execute("SELECT shard, attempts FROM batch_shards WHERE batch_id=%s", (batch_id,)).fetchall())
    assert attempts == {0: 1, 1: 2, 2: 1}
    tries = dict(
        _airflow_rows(
            platform_env,
            "SELECT map_index, try_number FROM task_instance WHERE dag_id='sentiment_batch_scoring'"
            " AND run_id=%s AND task_id='score_shard'",
            (run_id,),
        )
    )
    assert tries == {0: 1, 1: 2, 2: 1}
    stored = _stored(conn, batch_id)
    assert len(stored) == 1000 and stored["source_row"].is_unique


def test_two_runs_of_the_same_content_share_one_batch(champion, conn, score_input):
    """A manual run and the inbox's run of the same file at once: the second plan waits for the
    first (advisory lock) and resumes it; both score every shard; each row is stored once."""
    path, _ = score_input
    with ThreadPoolExecutor(2) as pool:
        plans = list(pool.map(lambda _: plan_batch(path, shard_rows=250), range(2)))
    assert plans[0].batch_id == plans[1].batch_id
    assert sorted(p.status for p in plans) == ["planned", "planned"] and all(p.shards == [0, 1, 2, 3] for p in plans)
    assert conn.execute("SELECT count(*) FROM batch_shards WHERE batch_id=%s", (plans[0].batch_id,)).fetchone()[0] == 4
    with ThreadPoolExecutor(2) as pool:  # both runs score every shard at the same time
        list(pool.map(lambda sh: score_shard(plans[0].batch_id, sh), [0, 1, 2, 3, 0, 1, 2, 3]))
    assert finalize(plans[0].batch_id)["rows_scored"] == 1000
    stored = _stored(conn, plans[0].batch_id)
    assert len(stored) == 1000 and stored["source_row"].is_unique


def _airflow_rows(settings, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows from Airflow's own metadata database (the session's)."""
    with psycopg.connect(db.libpq_url(db.airflow_db_url(settings)), autocommit=True) as c:
        return c.execute(sql, params).fetchall()


def test_chunked_scoring_equals_in_memory_and_reports_rejects(champion, conn, score_input):
    path, texts = score_input
    summary = score_file(path, shard_rows=128)
    champ = registry.champion()
    assert summary["model_version"] == champ.version
    assert summary["shards"] == 8
    assert summary["rows_scored"] == 1000 and summary["rows_rejected"] == 3 and summary["rows_read"] == 1003
    stored = _stored(conn, summary["batch_id"])
    assert len(stored) == 1000 and stored["source_row"].is_unique
    proba = registry.load_version(champ.version).predict_proba(texts)
    by_text = dict(zip(stored["text"], stored["p_positive"]))
    np.testing.assert_allclose([by_text[t] for t in texts], proba[:, 1], atol=1e-6)
    assert (stored.set_index("text").loc[texts, "label"].to_numpy() == (proba[:, 1] >= 0.5)).all()

    batch = get_batch(summary["batch_id"])
    rejects = {r["line"]: r["reason"] for r in batch["rejects"]}
    assert rejects[12].startswith("wrong column count")
    assert rejects[503] == "empty text"
    assert len(rejects) == 3
    # the scored file: in the batch's own folder (never beside the input), with the prediction ids
    # and the API's label names

    assert summary["output"] == str(batch_dir(summary["batch_id"], get_settings()) / "scored.parquet")
    assert not list(path.parent.glob("*.scored.*"))
    out = pd.read_parquet(summary["output"])
    assert len(out) == 1000 and set(out["label"]) == {"positive", "negative"}
    ids = dict(
        conn.execute(
            "SELECT source_row, id::text FROM predictions WHERE batch_id=%s", (summary["batch_id"],)
        ).fetchall()
    )
    assert dict(zip(out["source_row"], out["prediction_id"])) == ids
    assert (out["label_id"] == (out["label"] == "positive")).all()


def test_rerun_does_not_duplicate(champion, conn, score_input):
    path, _ = score_input
    first = score_file(path, shard_rows=300)
    again = plan_batch(path, shard_rows=300)
    assert again.status == "done" and again.shards == []
    forced = score_file(path, shard_rows=300, force=True)
    assert forced["batch_id"] == first["batch_id"]
    n = conn.execute("SELECT count(*) FROM predictions WHERE batch_id=%s", (first["batch_id"],)).fetchone()[0]
    assert n == 1000


def test_failed_shard_retried_alone_completes_batch(champion, conn, score_input):
    path, _ = score_input
    plan = plan_batch(path, shard_rows=250, force=True)
    shard_file = conn.execute(
        "SELECT path FROM batch_shards WHERE batch_id=%s AND shard=2", (plan.batch_id,)
    ).fetchone()[0]
    hidden = shard_file + ".away"
    shutil.move(shard_file, hidden)  # shard 2's input disappears: its task fails
    results = {}
    for sh in plan.shards:
        try:
            results[sh] = score_shard(plan.batch_id, sh)
        except FileNotFoundError:
            results[sh] = "failed"
    assert results[2] == "failed"
    with pytest.raises(RuntimeError, match=r"shards \[2\] are not scored"):
        finalize(plan.batch_id)
    shutil.move(hidden, shard_file)
    score_shard(plan.batch_id, 0)  # a shard scored twice (retry after a crash) writes no duplicate
    # a resumed plan only hands back the unfinished shard
    assert plan_batch(path, shard_rows=250).shards == [2]
    score_shard(plan.batch_id, 2)
    summary = finalize(plan.batch_id)
    assert summary["rows_scored"] == 1000
    stored = _stored(conn, plan.batch_id)
    assert len(stored) == 1000 and stored["source_row"].is_unique
    attempts = dict(
        conn.execute("SELECT shard, attempts FROM batch_shards WHERE batch_id=%s", (plan.batch_id,)).fetchall()
    )
    assert attempts[2] == 2 and attempts[0] == 2 and attempts[1] == 1


def test_other_formats(champion, tmp_path, score_input):
    _, texts = score_input
    pq_path = tmp_path / "tweets.parquet"
    pd.DataFrame({"text": texts[:50] + [None, ""]}).to_parquet(pq_path)
    s1 = score_file(pq_path, shard_rows=20)
    assert s1["rows_scored"] == 50 and s1["rows_rejected"] == 2
    txt = tmp_path / "tweets.txt"
    txt.write_text("\n".join(t.replace("\n", " ") for t in texts[:30]) + "\n\n")
    s2 = score_file(txt)
    assert s2["rows_scored"] == 30 and s2["rows_rejected"] == 1
    two = tmp_path / "two.csv"
    two.write_text('polarity,text\n4,"great stuff"\n0,"awful stuff"\n')
    assert score_file(two)["rows_scored"] == 2
    with pytest.raises(DataError, match="not found"):
        plan_batch(tmp_path / "missing.csv")
    bad_pq = tmp_path / "bad.parquet"
    pd.DataFrame({"tweet": ["x"]}).to_parquet(bad_pq)
    with pytest.raises(DataError, match="needs a 'text' column"):
        plan_batch(bad_pq)


def test_shards_score_the_plans_verified_model_copy(champion, conn, score_input):
    """The plan fetches the champion once into the batch folder and checks it against the digest of
    the promotion event; every shard re-checks that copy before unpickling it (an altered copy is
    fetched again, never loaded); the copy is removed once the batch is done."""
    path, _ = score_input
    plan = plan_batch(path, shard_rows=400, force=True)
    recorded = conn.execute("SELECT model_sha256 FROM batches WHERE id=%s", (plan.batch_id,)).fetchone()[0]
    event = conn.execute(
        "SELECT artifact_sha256 FROM model_events WHERE model_name=%s AND event='promoted' ORDER BY id DESC LIMIT 1",
        (champion,),
    ).fetchone()[0]
    assert recorded == event
    copy = batch_dir(plan.batch_id, get_settings()) / "model"
    assert registry.artifact_digest(copy) == recorded
    weights = sorted(p for p in (copy / "artifacts" / "model_dir").rglob("*") if p.is_file())
    assert weights
    with weights[0].open("ab") as f:  # the copy is altered between the plan and a shard
        f.write(b"tampered")
    assert registry.artifact_digest(copy) != recorded
    for sh in plan.shards:
        score_shard(plan.batch_id, sh)
    assert registry.artifact_digest(copy) == recorded  # fetched again and verified before loading
    assert finalize(plan.batch_id)["rows_scored"] == 1000
    assert not copy.exists()
    with pytest.raises(registry.ArtifactMismatch, match="differ from the recorded"):
        registry.fetch_verified(plan.model_version, "0" * 64, copy, get_settings())
    assert not copy.exists()  # nothing unverified is left in place


def test_alias_moved_outside_the_platform_is_not_used_for_batches(own_champion, tweets_csv, tmp_path):
    """Like the API, batch scoring uses only the version a promotion/rollback event put behind the
    alias: an alias moved by hand in MLflow is refused with the reason, and nothing is planned."""
    import mlflow

    with own_champion("tweet-sentiment-alias", tweets_csv) as c:
        uri = mlflow.MlflowClient().get_run(c.run_id).data.tags["model_uri"]
        other = mlflow.register_model(uri, c.name)  # a second version, never promoted
        mlflow.MlflowClient().set_registered_model_alias(c.name, get_settings().champion_alias, other.version)
        p = tmp_path / "x.txt"
        p.write_text("hello\n")
        with pytest.raises(RuntimeError, match=f"points at v{other.version}.*moved outside the platform"):
            plan_batch(p)
        assert get_batch(f"b-{file_sha256(p)[:16]}") is None


def test_no_champion_is_a_clear_error(platform_env, mlflow_tracking, model_name, tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("hello\n")
    with pytest.raises(RuntimeError, match="no champion"):
        plan_batch(p)


@pytest.mark.slow
def test_batch_scoring_dag_maps_shards(airflow_cli, champion, conn, score_input, input_roots):
    path, _ = score_input
    conf = json.dumps({"input_path": str(path), "shard_rows": 400, "force": True})
    res = airflow_cli(
        "dags",
        "test",
        "sentiment_batch_scoring",
        "-c",
        conf,
        extra_env={"SENTIMENT_MODEL_NAME": champion, **input_roots},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    row = conn.execute(
        "SELECT id, status, n_shards, rows_scored, rows_rejected, airflow_run_id FROM batches WHERE input_path=%s",
        (str(path),),
    ).fetchone()
    assert row[1:5] == ("done", 3, 1000, 3) and row[5].startswith("manual__")
    assert conn.execute("SELECT count(*) FROM predictions WHERE batch_id=%s", (row[0],)).fetchone()[0] == 1000


# ---------------------------------------------------------------- scale-out with Celery
# An Airflow Celery worker (Redis broker, PostgreSQL result backend) executes the mapped
# shards. Needs the Redis at 127.0.0.1:6379 these machines run; without it the test is
# skipped with that reason (the product never needs Redis: LocalExecutor is the default),
# except under CI=true, where a missing Redis fails the test: CI is where it must run.
REDIS = ("127.0.0.1", 6379)
CELERY_EXECUTOR = "airflow.providers.celery.executors.celery_executor.CeleryExecutor"


def _redis_up() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _require_redis() -> None:
    if _redis_up():
        return
    why = f"no Redis on {REDIS[0]}:{REDIS[1]} to act as the Celery broker"
    if in_ci():
        pytest.fail(f"CI=true: the Celery scale-out test must run here, but {why}", pytrace=False)
    pytest.skip(why)


def _start_api_server(airflow: str, env: dict, logs: Path, attempts: int = 3) -> tuple[subprocess.Popen, int]:
    """An Airflow api-server on a free port. A port found free can be taken by someone else before
    the server binds it (the server cannot take over a bound socket): then the server exits, and
    this tries again on another port."""
    for attempt in range(attempts):
        port = free_port()
        env.update(
            {
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            }
        )
        log = logs / f"api-{attempt}.log"
        proc = subprocess.Popen(
            [airflow, "api-server", "--port", str(port)],
            env=env,
            start_new_session=True,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2)
                if health.status_code == 200 and listens(proc.pid, port):  # our server's answer, not a squatter's
                    return proc, port
            except httpx.HTTPError:
                pass
            time.sleep(1)
        stop_group(proc)
        if "address already in use" not in log.read_text().lower():
            break
    pytest.fail("Airflow api-server did not start: " + log.read_text()[-2000:])


@pytest.mark.slow
def test_celery_worker_runs_scoring_shards(platform_env, airflow_cli, champion, score_input, tmp_path, conn):
    _require_redis()

    # a real champion and an input of 1,000 tweets -> 3 shards of 400
    path, _ = score_input

    # the Redis is shared: every broker key of this test (its "default" queue included) carries a
    # prefix of its own, so only its worker sees its tasks; the keys are deleted at the end
    own = uuid.uuid4().hex[:12]
    prefix, queue, worker_name = f"smops-test-{own}:", "default", f"celery-worker-{own}"
    env = airflow_env(platform_env)
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": CELERY_EXECUTOR,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/0",
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": prefix,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db.libpq_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "SENTIMENT_MODEL_NAME": champion,
        }
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    logs = tmp_path / "logs"
    logs.mkdir()
    api, port = _start_api_server(airflow, env, logs)
    worker = None
    try:
        # the worker's task processes report a host name of their own (Airflow's hostname_callable),
        # so each task instance's recorded hostname says which process tree ran it
        (tmp_path / "smops_worker_name.py").write_text(
            "import os\n\ndef hostname():\n    return os.environ['SMOPS_TEST_WORKER_NAME']\n"
        )
        worker_env = {
            **env,
            "SMOPS_TEST_WORKER_NAME": worker_name,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "smops_worker_name.hostname",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]),
        }
        worker = subprocess.Popen(
            [
                airflow,
                "celery",
                "worker",
                "--queues",
                f"{queue},scoring",  # the shards go to the queue "scoring" (dags/sentiment_batch_scoring.py)
                "--concurrency",
                "2",
                "--celery-hostname",
                f"{worker_name}@%h",
            ],
            env=worker_env,
            start_new_session=True,
            stdout=(logs / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        conf = json.dumps({"input_path": str(path), "shard_rows": 400})
        res = subprocess.run(
            [airflow, "dags", "test", "sentiment_batch_scoring", "--use-executor", "-c", conf],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    finally:
        if worker is not None:
            stop_group(worker)
        stop_group(api)

        r = redis.Redis(host=REDIS[0], port=REDIS[1], db=0)
        keys = list(r.scan_iter(match=f"{prefix}*"))
        if keys:
            r.delete(*keys)
    batch = conn.execute(
        "SELECT id, status, n_shards, rows_scored, airflow_run_id FROM batches WHERE input_path=%s", (str(path),)
    ).fetchone()
    assert batch[1:4] == ("done", 3, 1000)
    assert conn.execute("SELECT count(*) FROM predictions WHERE batch_id=%s", (batch[0],)).fetchone()[0] == 1000
    # Airflow's own record: plan, 3 mapped shards and finalize each went to the worker's queue and
    # ran, to success, on that worker (the host name only its task processes report)
    tis = _airflow_rows(
        platform_env,
        "SELECT task_id, map_index, state, queue, hostname"
        " FROM task_instance WHERE dag_id='sentiment_batch_scoring' AND run_id=%s",
        (batch[4],),
    )
    assert sorted((t[0], t[1]) for t in tis) == [
        ("finalize", -1),
        ("plan", -1),
        ("score_shard", 0),
        ("score_shard", 1),
        ("score_shard", 2),
    ]
    for task_id, map_index, state, ti_queue, hostname in tis:
        expected_queue = "scoring" if task_id == "score_shard" else queue
        assert (state, ti_queue, hostname) == ("success", expected_queue, worker_name), (task_id, map_index)


def test_batches_api(champion, score_input):
    path, _ = score_input
    summary = score_file(path, shard_rows=500)
    with TestClient(create_app()) as client:
        listed = client.get("/batches").json()
        assert summary["batch_id"] in [b["id"] for b in listed]
        one = client.get(f"/batches/{summary['batch_id']}").json()
        assert one["rows_scored"] == 1000 and one["rows_rejected"] == 3
        assert sum(sh["rows_scored"] for sh in one["shards"]) == 1000  # shard size: whichever run scored it
        assert {r["line"] for r in one["rejects"]} >= {12, 503}
        assert client.get("/batches/b-nope").status_code == 404


def test_inbox_file_is_found_once(champion, platform_env, tweets_csv):
    inbox = platform_env.var / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    for p in inbox.iterdir():
        p.unlink()
    assert pending_inbox_file() is None
    landed = inbox / "landed.txt"
    # content of this test's own (the inbox skips content already scored, by any test)
    landed.write_text(f"what a lovely morning\nthis is the worst traffic ever {uuid.uuid4().hex}\n")
    try:
        assert pending_inbox_file() == str(landed)
        score_file(landed)
        assert pending_inbox_file() is None  # scored content is not picked up again
    finally:
        landed.unlink()


def _land(inbox: Path, name: str, text: str, age: float = 60.0) -> Path:
    """A file arriving in the inbox (written under a hidden name, renamed, older than the settle time)."""
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}"
    tmp.write_text(text)
    then = time.time() - age
    os.utime(tmp, (then, then))
    return tmp.rename(inbox / name)


def test_inbox_lists_settled_unscored_files_with_deterministic_run_ids(champion, platform_env):
    inbox = platform_env.var / "inbox"
    for p in inbox.glob("*") if inbox.exists() else []:
        p.unlink()
    a = _land(inbox, "a.txt", f"lovely {uuid.uuid4().hex}\n")
    fresh = _land(inbox, "b.txt", f"still being written {uuid.uuid4().hex}\n", age=0)
    (inbox / ".c.txt").write_text("hidden: not yet renamed\n")
    kw = inbox_trigger_kwargs(settle_seconds=10)
    digest = file_sha256(a)
    assert (
        kw == [{"trigger_run_id": f"inbox__{digest[:16]}", "conf": {"input_path": str(a)}, "note": kw[0]["note"]}]
        and "a.txt" in kw[0]["note"]
    )
    assert [f["path"] for f in pending_inbox_files(settle_seconds=0)] == [str(a), str(fresh)]
    score_file(a)
    assert pending_inbox_files(settle_seconds=10) == []  # scored content is not listed again
    fresh.unlink()


@pytest.mark.slow
def test_inbox_dag_triggers_one_run_per_file_once(airflow_cli, champion, platform_env, input_roots):
    """Two inbox runs over the same file: one sentiment_batch_scoring run (id inbox__<hash>, with a
    note), the second inbox run's trigger is skipped."""
    inbox = platform_env.var / "inbox"
    for p in inbox.glob("*") if inbox.exists() else []:
        p.unlink()
    landed = _land(inbox, "dropped.txt", f"so happy for you!!\nugh my phone broke again {uuid.uuid4().hex}\n")
    run_id = f"inbox__{file_sha256(landed)[:16]}"
    # this test's own inbox runs: those Airflow records after this id (never another test's)
    before = _airflow_rows(platform_env, "SELECT coalesce(max(id), 0) FROM dag_run")[0][0]
    for _ in range(2):
        res = airflow_cli(
            "dags",
            "test",
            "sentiment_inbox",
            "-c",
            json.dumps({"settle_seconds": 5}),
            extra_env={"SENTIMENT_MODEL_NAME": champion, **input_roots},
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = _airflow_rows(
        platform_env,
        "SELECT r.run_id, r.conf, n.content FROM dag_run r LEFT JOIN dag_run_note n"
        " ON n.dag_run_id = r.id WHERE r.dag_id='sentiment_batch_scoring' AND r.run_id LIKE 'inbox__%%'",
    )
    mine = [r for r in runs if r[0] == run_id]
    assert len(mine) == 1 and "dropped.txt" in str(mine[0][1]) and "dropped.txt" in mine[0][2]
    states = [
        r[0]
        for r in _airflow_rows(
            platform_env,
            "SELECT ti.state FROM task_instance ti JOIN dag_run r ON r.dag_id=ti.dag_id AND r.run_id=ti.run_id"
            " WHERE ti.dag_id='sentiment_inbox' AND ti.task_id='trigger' AND r.id > %s ORDER BY r.id",
            (before,),
        )
    ]
    assert states == ["success", "skipped"]
    landed.unlink()


@pytest.mark.slow
def test_manual_run_does_not_wait_behind_the_watched_inbox(platform_env, champion, conn, tmp_path):
    """A real scheduler with sentiment_inbox watching var/inbox/: a file landing there and a manual
    run with input_path both complete, each in its own sentiment_batch_scoring run."""
    inbox = platform_env.var / "inbox"
    for p in inbox.glob("*") if inbox.exists() else []:
        p.unlink()
    landed = _land(inbox, "landed.txt", f"best concert of my life\nworst commute ever {uuid.uuid4().hex}\n")
    manual = tmp_path / "manual.txt"
    manual.write_text(f"what a lovely morning\nthis is the worst traffic ever {uuid.uuid4().hex}\n")
    env = airflow_env(platform_env)
    env.update(
        {
            "SENTIMENT_MODEL_NAME": champion,
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        }
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    logs = tmp_path / "logs"
    logs.mkdir()
    api, _ = _start_api_server(airflow, env, logs)
    procs = [api]
    try:
        for comp in ("dag-processor", "scheduler"):
            procs.append(
                subprocess.Popen(
                    [airflow, comp],
                    env=env,
                    start_new_session=True,
                    stdout=(logs / f"{comp}.log").open("w"),
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.time() + 180
        while time.time() < deadline:  # both DAGs parsed
            if (
                len(
                    _airflow_rows(
                        platform_env,
                        "SELECT dag_id FROM dag WHERE dag_id IN"
                        " ('sentiment_inbox', 'sentiment_batch_scoring') AND is_stale = false",
                    )
                )
                == 2
            ):
                break
            time.sleep(1)
        for dag_id in ("sentiment_batch_scoring", "sentiment_inbox"):
            r = subprocess.run([airflow, "dags", "unpause", dag_id], env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-2000:]
        r = subprocess.run(
            [airflow, "dags", "trigger", "sentiment_batch_scoring", "-c", json.dumps({"input_path": str(manual)})],
            env=env,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        deadline = time.time() + 300
        done = {}
        while time.time() < deadline and len(done) < 2:
            done = dict(
                conn.execute(
                    "SELECT input_path, airflow_run_id FROM batches WHERE status='done' AND input_path = ANY(%s)",
                    ([str(landed), str(manual)],),
                ).fetchall()
            )
            time.sleep(2)
        assert len(done) == 2, {p.name: p.read_text()[-1500:] for p in logs.iterdir()}
    finally:
        for proc in procs:
            stop_group(proc)
    # each in its own sentiment_batch_scoring run, both successful (Airflow's own record of the runs)
    runs = dict(
        _airflow_rows(
            platform_env,
            "SELECT run_id, state FROM dag_run WHERE dag_id='sentiment_batch_scoring' AND (run_id = %s OR run_id = %s)",
            (f"inbox__{file_sha256(landed)[:16]}", done[str(manual)] or ""),
        )
    )
    assert runs.get(f"inbox__{file_sha256(landed)[:16]}") == "success", runs
    assert (done[str(manual)] or "").startswith("manual__") and runs.get(done[str(manual)]) == "success", runs
    landed.unlink()


def test_nul_bytes_refuse_the_file_or_reject_the_row(champion, conn, tmp_path):
    """A NUL in the first 64 KiB: the file is not text, refused (nothing stored). A NUL further on (past
    the block looked at): that row is rejected, the others scored."""
    p = tmp_path / "nul.csv"
    p.write_bytes(b'4,"fine tweet"\n0,"bad \x00 byte"\n0,"another fine one"\n')
    with pytest.raises(DataError, match="not a text file"):
        score_file(p)
    batch = get_batch(f"b-{file_sha256(p)[:16]}")
    assert batch["status"] == "failed" and "NUL" in batch["summary"]["error"]
    assert conn.execute("SELECT count(*) FROM predictions WHERE batch_id=%s", (batch["id"],)).fetchone()[0] == 0
    late = tmp_path / "late_nul.csv"
    good = [f'4,"fine tweet number {i} {uuid.uuid4().hex}"\n'.encode() for i in range(3000)]
    late.write_bytes(b"".join(good) + b'0,"bad \x00 byte"\n')
    assert late.stat().st_size > 64 << 10
    s = score_file(late)
    assert s["rows_scored"] == 3000 and s["rows_rejected"] == 1
    assert get_batch(s["batch_id"])["rejects"] == [{"line": 3001, "reason": "NUL byte in text"}]


def test_forced_rescore_keeps_predictions_that_have_feedback(champion, conn, tmp_path):
    p = tmp_path / "fb.txt"
    p.write_text("I love it\nI hate it\nmeh\n")
    s = score_file(p)
    pid = conn.execute("SELECT id FROM predictions WHERE batch_id=%s AND source_row=1", (s["batch_id"],)).fetchone()[0]
    conn.execute("INSERT INTO feedback (prediction_id, correct_label) VALUES (%s, 0)", (pid,))
    again = score_file(p, force=True, shard_rows=2)  # other shard sizes: rows upserted, ids kept
    assert again["rows_scored"] == 3
    ids = conn.execute("SELECT id FROM predictions WHERE batch_id=%s ORDER BY source_row", (s["batch_id"],)).fetchall()
    assert len(ids) == 3 and ids[0][0] == pid
    assert conn.execute("SELECT count(*) FROM feedback WHERE prediction_id=%s", (pid,)).fetchone()[0] == 1
