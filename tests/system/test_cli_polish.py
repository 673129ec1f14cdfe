"""The ``ml`` CLI's help and progress (issue 22 items 5 and 8).

- every option and argument of every command (hidden ones too) has help text, every command a summary;
- ``ml score --help`` explains the shard default 0 (one shard per worker, as the DAG);
- ``ml score`` on a terminal (a pseudo-terminal) draws a bar with a percentage and an ETA; with pipes it
  prints one plain line per step and no carriage return; MLflow's "Downloading artifacts" bar never shows.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import realdata


# ------------------------------------------------------------------ ml score, terminal and pipes
@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("progress_input")


@pytest.fixture(scope="module")
def champion(own_champion, tweets_csv, roots):
    with own_champion(
        "tweet-sentiment-progress", tweets_csv, SENTIMENT_BATCH_INPUT_ROOTS=json.dumps([str(roots)])
    ) as c:
        yield c


def _input(roots: Path, tag: str, n: int = 90) -> Path:
    rows = [t for _, t in realdata.read()[: n * 2] if "\n" not in t and "\r" not in t and '"' not in t][:n]
    path = roots / f"{tag}.csv"
    path.write_text("polarity,text\n" + "".join(f'4,"{t} {tag}"\n' for t in rows))
    return path


def _env(champion) -> dict[str, str]:
    env = {**os.environ, **champion.env, "COLUMNS": "150", "TERM": "xterm-256color"}
    env.pop("SENTIMENT_PROGRESS", None)
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)  # the CLI itself must switch MLflow's bar off
    return env


def test_score_without_a_tty_prints_plain_lines(champion, roots):
    path = _input(roots, uuid.uuid4().hex[:10])
    res = subprocess.run(
        [sys.executable, "-m", "ml.cli", "score", str(path), "--shard-rows", "30"],
        capture_output=True,
        text=True,
        env=_env(champion),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "\r" not in res.stderr and "\r" not in res.stdout
    assert "Downloading artifacts" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("score: ")]
    assert [ln.split(" [")[0] for ln in lines] == [
        "score: 0/4 (0%) planned 3 shard(s)",
        "score: 1/4 (25%) shard 0 scored",
        "score: 2/4 (50%) shard 1 scored",
        "score: 3/4 (75%) shard 2 scored",
        "score: 4/4 (100%) finalized",
    ], res.stderr
    assert "ETA" in lines[1]
    assert json.loads(res.stdout)["rows_scored"] == 90


def test_score_on_a_terminal_draws_a_bar(champion, roots):
    path = _input(roots, uuid.uuid4().hex[:10])
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ml.cli", "score", str(path), "--shard-rows", "30"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_env(champion),
        close_fds=True,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 1.0)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")[-3000:]
    text = out.decode(errors="replace")
    assert "Downloading artifacts" not in text
    assert "score" in text and "100%" in text and "ETA" in text and "4/4" in text, text[-3000:]
    assert "score: 1/4 (25%)" not in text  # the bar, not the plain lines
