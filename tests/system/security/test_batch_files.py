"""Batch scoring reads only files under its allowed roots, and writes only under its output root.

Issue 21 item 4: ``plan()`` resolved any path, so a 0600 file outside the project came back as
"tweets" (stored in ``predictions.text``, hence in public drift reports) and its scores were
written 0644 beside it. Now a path is resolved (every symlink followed) and refused, with the
reason, unless it lies under the inbox or a folder of ``batch_input_roots`` -- before a byte is
read: the tests prove "not read" with FIFOs, which block whoever opens them for reading.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pandas as pd
import pytest

from ml.data import DataError
from ml.platform.config import reset_settings
from ml.stages.scoring.finalize import output_destination
from ml.stages.scoring.inbox import pending_inbox_files
from ml.stages.scoring.plan import plan

SECRET = "the launch code is 0000 and this line must never become a tweet"


@pytest.fixture(scope="module")
def champion(own_champion, tweets_csv):
    """A champion of this module's own; batch_input_roots empty (the default): the inbox only."""
    with own_champion("tweet-sentiment-confine", tweets_csv, SENTIMENT_BATCH_INPUT_ROOTS="[]") as c:
        yield c


@pytest.fixture
def env(champion):
    return {**os.environ, **champion.env}


@pytest.fixture
def inbox(platform_env) -> Path:
    p = platform_env.var / "inbox"
    p.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture
def outside(tmp_path) -> dict[str, Path]:
    """Things outside every allowed root: a 0600 secret file, a FIFO (opening it for reading
    blocks until a writer comes), a file with mode 0."""
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{SECRET}\n" * 5)
    secret.chmod(0o600)
    fifo = tmp_path / "blocks_if_opened.csv"
    os.mkfifo(fifo)
    locked = tmp_path / "mode0.csv"
    locked.write_text(f"{SECRET}\n")
    locked.chmod(0)
    return {"secret": secret, "fifo": fifo, "locked": locked}


def _score(path: Path | str, env: dict, *args: str) -> subprocess.CompletedProcess:
    """``ml score`` as the operator runs it; a read of a FIFO would block it past the timeout."""
    return subprocess.run(
        [sys.executable, "-m", "ml.cli", "score", str(path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


def _counts(conn) -> tuple[int, int]:
    return (
        conn.execute("SELECT count(*) FROM predictions").fetchone()[0],
        conn.execute("SELECT count(*) FROM batches").fetchone()[0],
    )


def _error_line(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), res.stderr[-3000:]
    return line


def test_paths_outside_the_roots_are_refused_before_being_read(champion, env, conn, inbox, outside, tmp_path):
    """A file, a FIFO, a mode-0 file outside the roots, a symlink in the inbox pointing at each,
    a ``..`` path out of the inbox: each refused (exit 2) with the reason naming the allowed folders
    and the setting; nothing stored; the secret never reaches predictions."""
    links = []
    for name, target in outside.items():
        link = inbox / f"link_{name}_{uuid.uuid4().hex[:6]}.csv"
        link.symlink_to(target)
        links.append(link)
    dotdot = inbox / os.path.relpath(outside["secret"], inbox)  # var/inbox/../../<...>/secret.txt
    before = _counts(conn)
    try:
        for path in [*outside.values(), *links, dotdot]:
            res = _score(path, env)
            assert res.returncode == 2, (path, res.stdout[-2000:], res.stderr[-2000:])
            line = _error_line(res)
            assert "outside the folders batch scoring may read" in line, line
            assert str(inbox.resolve()) in line and "batch_input_roots" in line, line
            if path in links:
                assert "resolves to" in line, line  # the symlink's target is named
    finally:
        for link in links:
            link.unlink()
    assert _counts(conn) == before
    assert conn.execute("SELECT count(*) FROM predictions WHERE text LIKE %s", ("%launch code%",)).fetchone()[0] == 0
    # the reader that plan() hands the path to is never reached: a FIFO opened for reading would block
    assert stat.S_ISFIFO(outside["fifo"].stat().st_mode)


def test_plan_refuses_in_process_too(champion, platform_env, outside, inbox, monkeypatch):
    """plan() itself (the DAG task and every caller go through it), with the reason."""
    for k, v in champion.env.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    try:
        for path in outside.values():
            with pytest.raises(DataError, match="outside the folders batch scoring may read"):
                plan(path)
        fifo_inside = inbox / f"fifo_{uuid.uuid4().hex[:6]}.csv"
        os.mkfifo(fifo_inside)  # inside the inbox but not a regular file: refused, not opened
        try:
            with pytest.raises(DataError, match="not a regular file"):
                plan(fifo_inside)
        finally:
            fifo_inside.unlink()
    finally:
        monkeypatch.undo()
        reset_settings()


def test_the_inbox_skips_links_out_without_reading_them(champion, platform_env, inbox, outside, monkeypatch):
    """sentiment_inbox hashes each new file: a symlink leading out (here to a FIFO) is skipped, never
    opened; a file beside it is listed."""
    for k, v in champion.env.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    for p in inbox.iterdir():
        p.unlink()
    link = inbox / "to_fifo.csv"
    link.symlink_to(outside["fifo"])
    good = inbox / "good.txt"
    good.write_text(f"what a day {uuid.uuid4().hex}\n")
    got: list = []
    t = threading.Thread(target=lambda: got.append(pending_inbox_files(settle_seconds=0)), daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():  # it opened the FIFO: let it go, then fail
        os.close(os.open(outside["fifo"], os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
        pytest.fail("pending_inbox_files opened a FIFO outside the inbox through a symlink")
    try:
        assert [f["path"] for f in got[0]] == [str(good)]
    finally:
        link.unlink()
        good.unlink()
        monkeypatch.undo()
        reset_settings()


def test_outputs_stay_in_the_batch_folder_private(champion, env, conn, inbox, tmp_path):
    """A good inbox file: the scored file is <var/batches>/<batch id>/scored.parquet, 0600 in a 0700
    folder, nothing beside the input; prediction ids and the API's labels in it. ``--output`` (the
    operator's own command) copies it anywhere the operator may write, 0600."""
    own = inbox / f"own_{uuid.uuid4().hex[:8]}"  # a folder of this test's own: other tests share the inbox
    own.mkdir()
    f = own / "ok.txt"
    f.write_text("".join(f"what a lovely day number {i} {uuid.uuid4().hex}\n" for i in range(40)))
    dest = tmp_path / "mine" / "scored.parquet"
    dest.parent.mkdir()
    try:
        res = _score(f, env, "--output", str(dest))
        assert res.returncode == 0, res.stderr[-3000:]
        s = json.loads(res.stdout[res.stdout.index("{") :])
        out = Path(s["output"])
        assert out.name == "scored.parquet" and out.parent.name == s["batch_id"]
        assert out.parent.parent.resolve() == (Path(env["SENTIMENT_VAR_DIR"]) / "batches").resolve()
        assert stat.S_IMODE(out.stat().st_mode) == 0o600 and stat.S_IMODE(out.parent.stat().st_mode) == 0o700
        assert sorted(p.name for p in own.iterdir()) == [f.name]  # nothing written beside the input
        assert s["copied_to"] == str(dest) and stat.S_IMODE(dest.stat().st_mode) == 0o600
        table = pd.read_parquet(dest)
        stored = dict(
            conn.execute("SELECT id::text, label FROM predictions WHERE batch_id=%s", (s["batch_id"],)).fetchall()
        )
        assert len(table) == 40 and set(table["prediction_id"]) == set(stored)
        assert all(
            lab == ("positive" if stored[pid] == 1 else "negative")
            for pid, lab in zip(table["prediction_id"], table["label"])
        )
        assert ((table["p_positive"] + table["p_negative"]) - 1).abs().max() < 1e-5
    finally:
        f.unlink()
        own.rmdir()


def test_the_dags_output_path_is_confined_to_the_output_root(champion, platform_env, monkeypatch, tmp_path):
    """The DAG's ``output_path`` (anyone who may trigger a run writes with the worker's rights) must
    resolve under the output root; ``ml score --output`` is the operator's own and may write elsewhere."""
    monkeypatch.setenv("SENTIMENT_BATCH_INPUT_ROOTS", "[]")
    reset_settings()
    root = (platform_env.var / "batches").resolve()
    try:
        assert output_destination("exports/a.parquet", "b-1") == root / "exports" / "a.parquet"
        for bad in (tmp_path / "a.parquet", "../../a.parquet", "/etc/cron.d/x.parquet"):
            with pytest.raises(DataError, match="outside the batch output folder"):
                output_destination(bad, "b-1", confine=True)
        assert output_destination(tmp_path / "a.parquet", "b-1", confine=False) == tmp_path / "a.parquet"
        with pytest.raises(DataError, match="ending in .parquet"):
            output_destination(tmp_path / "a.sh", "b-1", confine=False)
    finally:
        monkeypatch.undo()
        reset_settings()
