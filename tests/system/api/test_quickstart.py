"""The README's quickstart is run as written: every fenced block whose info string says
``quickstart`` is taken from README.md (no second copy here), ``http://127.0.0.1:8000`` is pointed
at a live API (a real uvicorn over the session's database and champion), the bash blocks run in
one shell, the Python blocks in the project's interpreter; each must exit 0 and its answers must
be the documented ones."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from live import live_server

REPO = Path(__file__).resolve().parents[3]
DEFAULT_URL = "http://127.0.0.1:8000"
FENCE = re.compile(r"^```(\w+)[ \t]+quickstart[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def quickstart_blocks() -> list[tuple[str, str]]:
    """(language, code) of the README's quickstart blocks, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer((REPO / "README.md").read_text())]


def test_readme_has_quickstart_blocks_in_bash_and_python():
    langs = [lang for lang, _ in quickstart_blocks()]
    assert "bash" in langs and "python" in langs, langs
    codes = "\n".join(code for _, code in quickstart_blocks())
    for call in ("/predict", "/feedback", "/predict/batch", "/review/queue", "SentimentClient"):
        assert call in codes, f"the quickstart does not show {call}"


def test_readme_quickstart_runs_against_a_live_api(api_settings, champion, platform_env, tmp_path):
    env = {"SENTIMENT_MODEL_NAME": api_settings.model_name, "SENTIMENT_VAR_DIR": str(tmp_path / "var")}
    with live_server(tmp_path, workers=1, env=env) as srv:
        run_env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        blocks = quickstart_blocks()
        script = "\n".join(code for lang, code in blocks if lang == "bash").replace(DEFAULT_URL, srv.url)
        # -e: the first failing command fails the test
        bash = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=REPO,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert bash.returncode == 0, f"quickstart (bash) failed:\n{bash.stdout}\n{bash.stderr}"
        answers = _json_stream(bash.stdout)
        predictions = [a for a in answers if "feedback_token" in a]
        assert predictions and all(p["model_version"] == champion.version for p in predictions), answers
        feedback = [a for a in answers if "correct_label" in a and "reporter" in a]
        assert feedback and feedback[0]["correct_label"] == "negative" and feedback[0]["comment"] == "sarcasm"
        assert any(a.get("count") == 2 for a in answers), "the batch answer is missing"
        queue = [a for a in answers if "items" in a]
        assert queue and any(i["text"] == "oh great, another monday" for i in queue[0]["items"]), queue
        decided = [a for a in answers if a.get("decision") == "accept"]
        assert decided and decided[0]["label"] == "negative" and decided[0]["reviewer"].startswith("key:alice#")

        code = "\n".join(code for lang, code in blocks if lang == "python").replace(DEFAULT_URL, srv.url)
        py = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=run_env, capture_output=True, text=True, timeout=120
        )
        assert py.returncode == 0, f"quickstart (python) failed:\n{py.stdout}\n{py.stderr}"
        lines = py.stdout.splitlines()
        assert re.match(rf"^(positive|negative) [01]\.\d+ model version {champion.version}$", lines[0]), lines
        assert re.match(r"^report \d+ by anon:127\.0\.0\.1$", lines[1]), lines
        labels = ast.literal_eval(lines[2])
        assert len(labels) == 2 and set(labels) <= {"positive", "negative"}, lines


def _json_stream(out: str) -> list[dict]:
    """The JSON objects curl printed back to back (its bodies end without a newline)."""
    decoder, found, i = json.JSONDecoder(), [], 0
    while (i := out.find("{", i)) != -1:
        obj, i = decoder.raw_decode(out, i)
        found.append(obj)
    return found
