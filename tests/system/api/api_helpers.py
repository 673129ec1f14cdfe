"""Helpers for the API tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from api.main import create_app
from ml.platform import security

POSITIVE_TEXT = "I love this, best day ever"
NEGATIVE_TEXT = "I hate this, worst day ever. So sad and tired"


@contextmanager
def running_app(settings) -> Iterator[TestClient]:
    """An app with its lifespan running (champion loaded, writer started); shut down on exit."""
    with TestClient(create_app(settings)) as client:
        yield client


def post_json(client, path: str, payload) -> object:
    """POST ``payload`` as ASCII-escaped JSON (as most clients send it): a lone surrogate
    travels as ``\\udXXX``, which the client library's own encoder would refuse to send."""
    return client.post(path, content=json.dumps(payload).encode("ascii"), headers={"Content-Type": "application/json"})


def make_key(settings, *scopes: str, name: str | None = None) -> str:
    """A real API key, made by the function `ml keys create` calls (stored hashed in the session's database)."""
    key, _ = security.create_key(name or f"test-{uuid.uuid4().hex[:8]}", list(scopes), settings, created_by="tests")
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def report(client, pred: dict, label, **extra):
    """POST /feedback on a prediction this client made, with its feedback_token."""
    return client.post(
        "/feedback",
        json={"prediction_id": pred["id"], "correct_label": label, "feedback_token": pred["feedback_token"], **extra},
    )


def settings_with(settings, **changes):
    """A copy of the session's settings with some values changed (e.g. a fresh model name)."""
    return settings.model_copy(update=changes)


def fresh_model_name() -> str:
    return f"test-model-{uuid.uuid4().hex[:8]}"


HANG_GUARD = 120.0  # seconds: only keeps a broken test from hanging, never a speed claim


def wait_for(predicate: Callable[[], object], timeout: float = HANG_GUARD, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def prediction_row(conn, prediction_id):
    return conn.execute(
        "SELECT text, label, p_negative, p_positive, model_name, model_version, source, created_at "
        "FROM predictions WHERE id = %s",
        (str(prediction_id),),
    ).fetchone()
