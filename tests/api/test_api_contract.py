"""The contract is the behaviour: Schemathesis (``st run --checks all``) against the live API (a
real uvicorn process over the session's database and champion), 0 failures; and the limits the
schema cannot show (413 for a large body, 503 at once past the in-flight limit)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from live import live_server

ST = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"


def _env(api_settings, tmp_path) -> dict[str, str]:
    return {"SENTIMENT_MODEL_NAME": api_settings.model_name, "SENTIMENT_VAR_DIR": str(tmp_path / "var")}


def test_schemathesis_all_checks_pass_against_the_live_api(api_settings, champion, tmp_path):
    with live_server(tmp_path, env=_env(api_settings, tmp_path)) as srv:
        argv = [
            ST,
            "run",
            f"{srv.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "42",
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--report-dir",
            str(tmp_path / "st"),
            "--suppress-health-check",
            "all",
            *os.environ.get("ST_EXTRA_ARGS", "").split(),
        ]
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
        )
    assert out.returncode == 0, out.stdout[-12000:] + out.stderr[-3000:]


def test_a_body_over_the_limit_is_413_and_excess_load_is_503_at_once(api_settings, champion, tmp_path):
    env = {
        **_env(api_settings, tmp_path),
        "SENTIMENT_API_MAX_BODY_BYTES": "4096",
        "SENTIMENT_API_MAX_INFLIGHT": "2",
        "SENTIMENT_MAX_TEXT_CHARS": "100000",
    }
    with live_server(tmp_path, env=env) as srv:
        r = httpx.post(f"{srv.url}/predict", json={"text": "x" * 5000})
        assert r.status_code == 413 and "api_max_body_bytes" in r.json()["message"]
        assert r.json()["status"] == 413
        # chunked (no Content-Length): cut off once the limit is passed
        r = httpx.post(
            f"{srv.url}/predict",
            content=iter([b'{"text": "', b"x" * 5000, b'"}']),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 413

        def one(_):
            with httpx.Client(timeout=30) as c:
                return c.post(f"{srv.url}/predict/batch", json={"texts": ["so happy today"] * 200})

        with ThreadPoolExecutor(24) as ex:
            answers = list(ex.map(one, range(96)))
        codes = {r.status_code for r in answers}
        assert codes <= {200, 503} and 503 in codes, codes
        shed = next(r for r in answers if r.status_code == 503)
        assert shed.headers["Retry-After"] == "1" and "api_max_inflight" in shed.json()["message"]
        assert httpx.get(f"{srv.url}/health/live").status_code == 200
