"""POST /feedback: stored in PostgreSQL, right after the prediction it corrects; clear 404/422."""

from __future__ import annotations

import uuid

import pytest
from api_helpers import POSITIVE_TEXT, post_json, report, wait_for


def _feedback_rows(conn, prediction_id):
    """Reports committed for the prediction: in ``feedback``, or in ``pending_feedback`` while the
    prediction is still in a worker's prediction log (moved, same id, when it lands)."""
    return conn.execute(
        "SELECT id, correct_label, comment FROM feedback WHERE prediction_id = %s "
        "UNION ALL SELECT id, correct_label, comment FROM pending_feedback WHERE prediction_id = %s ORDER BY id",
        (prediction_id, prediction_id),
    ).fetchall()


def test_feedback_right_after_a_prediction_is_stored(client, conn):
    # the prediction is still in the writer's buffer (flush every 0.5s): no false 404
    pred = client.post("/predict", json={"text": POSITIVE_TEXT}).json()
    r = report(client, pred, "negative", comment="sarcasm")
    assert r.status_code == 201, r.text
    body = r.json()
    assert isinstance(body["id"], int)
    assert body["prediction_id"] == pred["id"]
    assert (body["correct_label"], body["correct_label_id"], body["comment"]) == ("negative", 0, "sarcasm")
    assert _feedback_rows(conn, pred["id"]) == [(body["id"], 0, "sarcasm")]
    assert body["reporter"] == "anon:unknown"  # stored with who reported it (TestClient's peer is no address)
    # the prediction lands (the writer's next cycle) and the report moves into feedback, same id and reporter
    wait_for(lambda: conn.execute("SELECT label FROM predictions WHERE id = %s", (pred["id"],)).fetchone() == (1,))
    wait_for(
        lambda: (
            conn.execute("SELECT reporter FROM feedback WHERE id = %s", (body["id"],)).fetchone() == ("anon:unknown",)
        )
    )
    assert conn.execute("SELECT count(*) FROM pending_feedback WHERE id = %s", (body["id"],)).fetchone() == (0,)


@pytest.mark.parametrize(("given", "stored"), [("positive", 1), ("negative", 0), (1, 1), (0, 0), ("Positive", 1)])
def test_feedback_label_forms(client, conn, given, stored):
    pred = client.post("/predict", json={"text": "meh, it is a tuesday"}).json()
    r = report(client, pred, given)
    assert r.status_code == 201, r.text
    assert r.json()["correct_label_id"] == stored
    assert _feedback_rows(conn, pred["id"]) == [(r.json()["id"], stored, None)]


def test_feedback_for_unknown_prediction_is_404(client, conn, review_headers):
    unknown = str(uuid.uuid4())  # a reviewer may report on any prediction: the id decides
    r = client.post("/feedback", json={"prediction_id": unknown, "correct_label": "positive"}, headers=review_headers)
    assert r.status_code == 404
    body = r.json()
    assert "no prediction with id" in body["message"] and unknown in body["message"]
    assert body["status"] == 404 and body["detail"][0]["msg"] == body["message"]
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
        ({"correct_label": "positive", "comment": "nul\u0000here"}, "comment must not contain NUL"),
        ({"correct_label": "positive", "comment": "lone \ud800 surrogate"}, "comment is not valid Unicode"),
    ],
)
def test_bad_feedback_is_rejected_with_the_reason(client, conn, payload, reason):
    pred = client.post("/predict", json={"text": POSITIVE_TEXT}).json()
    r = post_json(
        client, "/feedback", {"prediction_id": pred["id"], "feedback_token": pred["feedback_token"], **payload}
    )
    assert r.status_code == 422, r.text
    body = r.json()
    assert reason in " | ".join(e["msg"] for e in body["detail"])
    assert body["status"] == 422 and reason in body["message"]
    assert _feedback_rows(conn, pred["id"]) == []  # nothing stored for this prediction


def test_comment_with_unicode_is_stored_as_sent(client, conn):
    pred = client.post("/predict", json={"text": POSITIVE_TEXT}).json()
    comment = "sarcasm \U0001f644 — ça va"
    r = report(client, pred, 0, comment=comment)
    assert r.status_code == 201, r.text
    assert _feedback_rows(conn, pred["id"]) == [(r.json()["id"], 0, comment)]
