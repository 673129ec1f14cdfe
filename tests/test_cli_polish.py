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
import typer.main
from typer.testing import CliRunner

from ml.cli import app
from ml.platform import airflow_client as ac
from ml.platform.progress import PlainProgress


def _walk(cmd, path=()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _walk(sub, (*path, name))


def test_every_option_and_argument_has_help():
    missing = []
    for path, cmd in _walk(typer.main.get_command(app)):
        if path and not (cmd.help or cmd.short_help):
            missing.append(f"`ml {' '.join(path)}`: no summary")
        for p in cmd.params:
            if not (getattr(p, "help", None) or "").strip():
                missing.append(f"`ml {' '.join(path)}` {p.name}: no help")
    assert not missing, "\n".join(missing)


def test_help_lists_commands_in_workflow_order_with_readable_types():
    out = CliRunner().invoke(app, ["--help"]).output
    order = [out.index(f"  {c} ") for c in ("train", "compare", "score", "monitor", "serve", "services")]
    assert order == sorted(order), out
    score = CliRunner().invoke(app, ["score", "--help"]).output
    assert "--shard-rows N" in score and "<int" not in score and "<str>" not in score, score
    flat = " ".join(score.split())
    assert "[default: 0" in flat and "one shard per worker" in flat, flat
    train = " ".join(CliRunner().invoke(app, ["train", "--help"]).output.split())
    assert "[tfidf_lr|cnn|bilstm|transformer]" in train, train


def test_plain_progress_lines():
    class Buf:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    buf = Buf()
    p = PlainProgress("score", buf)
    p(0, 4, "planned")
    p(0, 4, "planned")  # unchanged: no second line
    p(2, 4, "shard 1 scored")
    lines = buf.text.splitlines()
    assert len(lines) == 2 and "\r" not in buf.text
    assert lines[1].startswith("score: 2/4 (50%) shard 1 scored [elapsed 0:00, ETA 0:0"), lines


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


# ------------------------------------------------------------------ make up: following the training DAG run
class _Resp:
    def __init__(self, body: dict, status: int = 200):
        self.status_code, self._body, self.text = status, body, json.dumps(body)

    def json(self) -> dict:
        return self._body

    def raise_for_status(self) -> None:
        pass


def test_training_run_reports_tasks_done_and_the_running_one(monkeypatch, tmp_path):
    states = iter(
        [
            ("running", {"validate": "running", "train": None, "promote": None}),
            ("running", {"validate": "success", "train": "running", "promote": None}),
            ("success", {"validate": "success", "train": "success", "promote": "success"}),
        ]
    )
    current: dict = {}

    def api(s, method, path, token, **kw):
        if path.endswith("/dagRuns") and method == "POST":
            return _Resp({"dag_run_id": "manual__1"})
        if path.endswith("/taskInstances"):
            return _Resp({"task_instances": [{"task_id": k, "state": v} for k, v in current["tasks"].items()]})
        if "/dagRuns/" in path:
            current["state"], current["tasks"] = next(states)
            return _Resp({"state": current["state"]})
        return _Resp({"is_paused": False})

    monkeypatch.setattr(ac, "airflow_token", lambda s: "t")
    monkeypatch.setattr(ac, "airflow_api", api)
    calls: list[tuple[int, int, str]] = []
    out = ac.trigger_training(tmp_path / "x.csv", poll=0, progress=lambda d, t, m: calls.append((d, t, m)))
    assert out["state"] == "success"
    assert calls == [(0, 3, "running: validate"), (1, 3, "running: train"), (3, 3, "run success")]
