"""The ml command's help and progress lines (ml/cli.py, ml/platform/progress.py, ml/platform/airflow_client.py
with its HTTP calls replaced): no Airflow, no server."""

from __future__ import annotations

import json

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
