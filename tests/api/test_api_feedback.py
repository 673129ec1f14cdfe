"""POST /feedback: stored in PostgreSQL, right after the prediction it corrects; clear 404/422."""
from __future__ import annotations

import uuid

import pytest

from api_helpers import POSITIVE_TEXT


def _feedback_rows(conn, prediction_id):
    return conn.execute(
        "SELECT id, correct_label, comment FROM feedback WHERE prediction_id = %s ORDER BY id", (prediction_id,)
    ).fetchall()


def test_feedback_right_after_a_prediction_is_stored(client, conn):
    # the prediction is still in the writer's buffer (flush every 0.5s): no false 404
    pred = client.post("/predict", json={"text": POSITIVE_TEXT}).json()
    r = client.post(
        "/feedback", json={"prediction_id": pred["id"], "correct_label": "negative", "comment": "sarcasm"}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert isinstance(body["id"], int)
    assert body["prediction_id"] == pred["id"]
    assert (body["correct_label"], body["correct_label_id"], body["comment"]) == ("negative", 0, "sarcasm")
    assert _feedback_rows(conn, pred["id"]) == [(body["id"], 0, "sarcasm")]
    # and the prediction it refers to is in PostgreSQL
    assert conn.execute("SELECT label FROM predictions WHERE id = %s", (pred["id"],)).fetchone() == (1,)


@pytest.mark.parametrize(("given", "stored"), [("positive", 1), ("negative", 0), (1, 1), (0, 0), ("Positive", 1)])
def test_feedback_label_forms(client, conn, given, stored):
    pred = client.post("/predict", json={"text": "meh, it is a tuesday"}).json()
    r = client.post("/feedback", json={"prediction_id": pred["id"], "correct_label": given})
    assert r.status_code == 201, r.text
    assert r.json()["correct_label_id"] == stored
    assert _feedback_rows(conn, pred["id"]) == [(r.json()["id"], stored, None)]


def test_feedback_for_unknown_prediction_is_404(client, conn):
    unknown = str(uuid.uuid4())
    r = client.post("/feedback", json={"prediction_id": unknown, "correct_label": "positive"})
    assert r.status_code == 404
    assert "no prediction with id" in r.json()["detail"] and unknown in r.json()["detail"]
    assert _feedback_rows(conn, unknown) == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"correct_label": "neutral"}, "correct_label must be 'positive' or 'negative'"),
        ({"correct_label": 2}, "correct_label must be"),
        ({"correct_label": True}, "correct_label must be"),
        ({"correct_label": 1.0}, "correct_label must be"),
        ({"correct_label": "1"}, "correct_label must be"),
        ({"correct_label": None}, "correct_label must be"),
        ({}, "Field required"),
        ({"correct_label": "positive", "prediction_id": "not-a-uuid"}, "valid UUID"),
        ({"correct_label": "positive", "comment": 5}, "valid string"),
        ({"correct_label": "positive", "comment": "c" * 2001}, "at most 2000 characters"),
    ],
)
def test_bad_feedback_is_rejected_with_the_reason(client, conn, payload, reason):
    pred = client.post("/predict", json={"text": POSITIVE_TEXT}).json()
    before = conn.execute("SELECT count(*) FROM feedback").fetchone()[0]
    r = client.post("/feedback", json={"prediction_id": pred["id"], **payload})
    assert r.status_code == 422, r.text
    assert reason in " | ".join(e["msg"] for e in r.json()["detail"])
    assert conn.execute("SELECT count(*) FROM feedback").fetchone()[0] == before
