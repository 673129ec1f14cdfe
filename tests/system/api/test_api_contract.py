"""The contract is the behaviour: Schemathesis (``st run --checks all``) against the live API (a
real uvicorn process over the session's database and champion), 0 failures -- anonymously, and with
a real key of every scope at 100 examples per operation with the stateful phase on (links between
operations: a prediction's id fed to feedback, review and undo), over a champion of its own so that
promote and rollback really move an alias; and the limits the schema cannot show
(413 for a large body, 503 at once past the in-flight limit)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from api_helpers import make_key
from live import live_server

ST = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"


def _env(api_settings, tmp_path) -> dict[str, str]:
    return {"SENTIMENT_MODEL_NAME": api_settings.model_name, "SENTIMENT_VAR_DIR": str(tmp_path / "var")}


def _schemathesis(url: str, tmp_path: Path, examples: int, *extra: str) -> subprocess.CompletedProcess:
    argv = [
        ST,
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(examples),
        "--seed",
        "42",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--report-dir",
        str(tmp_path / "st"),
        *extra,
        *os.environ.get("ST_EXTRA_ARGS", "").split(),
    ]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
    )


def test_schemathesis_all_checks_pass_against_the_live_api(api_settings, champion, tmp_path):
    """Anonymous, every phase, schemathesis's own health checks on."""
    with live_server(tmp_path, env=_env(api_settings, tmp_path)) as srv:
        out = _schemathesis(srv.url, tmp_path, 25)
    assert out.returncode == 0, out.stdout[-12000:] + out.stderr[-3000:]


@pytest.mark.slow
def test_schemathesis_with_a_key_of_every_scope(own_champion, tweets_csv, tmp_path, platform_env):
    """A real key holding every scope (predict, feedback, review, admin), so that every operation is
    fuzzed past its authorization: 100 examples per operation, the stateful phase on. Over a champion
    of its own: the admin operations (promote, rollback) really move that model's alias, nobody else's.
    (One run, not one per scope: each takes about four minutes on two cores; which scope opens which
    operation is tested in tests/system/api/test_api_security.py.)"""
    with own_champion("st-keyed", tweets_csv, sample_size=600) as c:
        key = make_key(platform_env, "predict", "feedback", "review", "admin")
        env = {**c.env, "SENTIMENT_VAR_DIR": str(tmp_path / "var")}
        with live_server(tmp_path, env=env) as srv:
            out = _schemathesis(
                srv.url,
                tmp_path,
                100,
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--header",
                f"Authorization: Bearer {key}",
            )
    assert out.returncode == 0, out.stdout[-12000:] + out.stderr[-3000:]


def test_a_body_over_the_limit_is_413_and_excess_load_is_503_at_once(api_settings, champion, tmp_path):
    env = {
        **_env(api_settings, tmp_path),
        "SENTIMENT_API_MAX_BODY_BYTES": "4096",
        "SENTIMENT_API_MAX_INFLIGHT": "2",  # the adaptive limit's ceiling (api/admission.py)
        "SENTIMENT_API_QUEUE_DEADLINE_MS": "5",  # and a request that cannot start within 5 ms: 503
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
        assert shed.headers["Retry-After"] == "1" and "api_queue_deadline_ms" in shed.json()["message"]
        assert httpx.get(f"{srv.url}/health/live").status_code == 200
