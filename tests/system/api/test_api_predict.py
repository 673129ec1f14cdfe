"""POST /predict and /predict/batch against a real champion; rows land in PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from api_helpers import NEGATIVE_TEXT, POSITIVE_TEXT, post_json, prediction_row, wait_for


def test_predict_positive_text(client, champion):
    r = client.post("/predict", json={"text": POSITIVE_TEXT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == "positive" and body["label_id"] == 1
    probs = body["probabilities"]
    assert set(probs) == {"negative", "positive"}
    assert probs["positive"] > 0.5 > probs["negative"]
    assert probs["negative"] + probs["positive"] == pytest.approx(1.0, abs=1e-9)
    assert body["model_name"] == client.app.state.settings.model_name
    assert body["model_version"] == champion.version
    # a signed id (version 8): any worker can tell an id it issued from one never issued
    assert uuid.UUID(body["id"]).version == 8
    assert client.app.state.prediction_ids.issued(uuid.UUID(body["id"]))


def test_predict_negative_text(client):
    body = client.post("/predict", json={"text": NEGATIVE_TEXT}).json()
    assert body["label"] == "negative" and body["label_id"] == 0
    assert body["probabilities"]["negative"] > 0.5


def test_prediction_is_stored_in_postgres(client, conn, champion):
    text = f"{POSITIVE_TEXT} ({uuid.uuid4().hex})"
    body = client.post("/predict", json={"text": text}).json()
    # not written on the request path: the writer COPYs it within prediction_flush_seconds
    row = wait_for(lambda: prediction_row(conn, body["id"]))
    db_text, label, p_neg, p_pos, model_name, model_version, source, created_at = row
    assert db_text == text
    assert label == 1
    assert p_pos == pytest.approx(body["probabilities"]["positive"], rel=1e-6)
    assert p_neg == pytest.approx(body["probabilities"]["negative"], rel=1e-6)
    assert (model_name, model_version, source) == (client.app.state.settings.model_name, champion.version, "api")
    assert created_at is not None


def test_batch_predicts_in_order_as_the_model_does(client, conn, champion, tweets):
    """A batch of real tweets: answered in order, each as the served model itself scores it, and
    as /predict scores it alone; every row stored with its text and label."""
    marker = uuid.uuid4().hex
    texts = [f"{t} {marker}" for t in tweets[0][:3]] + [f"{POSITIVE_TEXT} {marker}", f"{NEGATIVE_TEXT} {marker}"]
    r = client.post("/predict/batch", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 5 and len(body["predictions"]) == 5
    assert body["model_version"] == champion.version
    assert [p["label"] for p in body["predictions"][3:]] == ["positive", "negative"]
    assert len({p["id"] for p in body["predictions"]}) == 5
    expected = client.app.state.models.current.model.predict_proba(texts)  # the real model, called directly
    for p, (p_neg, p_pos), text in zip(body["predictions"], expected, texts):
        assert p["probabilities"] == {"negative": pytest.approx(p_neg), "positive": pytest.approx(p_pos)}
        assert p["label_id"] == int(p_pos >= 0.5)
        assert p["model_version"] == champion.version
        alone = client.post("/predict", json={"text": text}).json()
        assert alone["probabilities"] == pytest.approx(p["probabilities"]) and alone["id"] != p["id"]
    client.app.state.writer.flush()
    stored = conn.execute(
        "SELECT id::text, text, label FROM predictions WHERE id = ANY(%s::uuid[])",
        ([p["id"] for p in body["predictions"]],),
    ).fetchall()
    assert sorted(stored) == sorted((p["id"], t, p["label_id"]) for p, t in zip(body["predictions"], texts))


def test_batch_at_the_size_limit_is_accepted(client, api_settings, tweets, conn):
    n = api_settings.max_batch_size
    texts = tweets[0][:n]  # real tweets
    assert len(texts) == n
    r = client.post("/predict/batch", json={"texts": texts})
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert body["count"] == n
    client.app.state.writer.flush()
    ids = [p["id"] for p in body["predictions"]]
    stored = conn.execute("SELECT count(*) FROM predictions WHERE id = ANY(%s::uuid[])", (ids,)).fetchone()[0]
    assert stored == n


def test_text_at_the_length_limit_is_accepted(client, api_settings):
    r = client.post("/predict", json={"text": "a" * api_settings.max_text_chars})
    assert r.status_code == 200, r.text[:300]


def _errors(r) -> str:
    """All error messages of a 4xx body, as one string."""
    return " | ".join(e["msg"] for e in r.json()["detail"])


@pytest.mark.parametrize(
    ("path", "payload", "reason"),
    [
        ("/predict", {"text": ""}, "empty or whitespace-only"),
        ("/predict", {"text": "   \n\t "}, "empty or whitespace-only"),
        ("/predict", {"text": 123}, "valid string"),
        ("/predict", {"text": None}, "valid string"),
        ("/predict", {"text": ["a list"]}, "valid string"),
        ("/predict", {}, "Field required"),
        ("/predict", {"txt": "typo in the field name"}, "Field required"),
        ("/predict", {"text": "bad\u0000byte"}, "text must not contain NUL"),
        ("/predict", {"text": "lone \udc80 surrogate"}, "text is not valid Unicode"),
        ("/predict/batch", {"texts": ["fine", "nul\u0000"]}, "text must not contain NUL"),
        ("/predict", {"text": "x" * 1001}, "limit is 1000"),
        ("/predict/batch", {"texts": []}, "texts is empty"),
        ("/predict/batch", {"texts": "not a list"}, "valid list"),
        ("/predict/batch", {"texts": ["fine", 7]}, "valid string"),
        ("/predict/batch", {"texts": ["fine", "  "]}, "empty or whitespace-only"),
        ("/predict/batch", {"texts": ["fine", "y" * 1001]}, "limit is 1000"),
        ("/predict/batch", {"texts": ["t"] * 1001}, "1001 texts, the limit is 1000"),
    ],
)
def test_bad_input_is_rejected_with_the_reason(client, conn, api_settings, path, payload, reason):
    writer = client.app.state.writer
    writer.flush()
    count_sql = "SELECT count(*) FROM predictions WHERE model_name = %s"
    before = conn.execute(count_sql, (api_settings.model_name,)).fetchone()[0]
    r = post_json(client, path, payload)
    assert r.status_code == 422, r.text[:300]
    assert reason in _errors(r)
    body = r.json()
    assert body["status"] == 422 and reason in body["message"]
    # nothing half-done: no row buffered or written for a rejected request (the rows of this
    # app's model are as many as before; one clock, no timestamps compared)
    assert writer.pending == 0
    writer.flush()
    assert conn.execute(count_sql, (api_settings.model_name,)).fetchone()[0] == before


def test_error_names_the_bad_item_of_a_batch(client):
    r = client.post("/predict/batch", json={"texts": ["ok", "ok", "z" * 1001]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "texts", 2]


def test_invalid_json_is_a_400(client):
    """As the README and the OpenAPI document say (tests/system/security/test_not_json.py: every operation)."""
    r = client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["status"] == 400 and "JSON" in r.json()["message"] and "line 1, column 2" in r.json()["message"]


def test_every_error_has_one_shape(client, review_headers):
    """422, 404, 405 and a 503 all answer {"status", "message", "detail": [{"type", "loc", "msg"}]}."""
    responses = [
        client.post("/predict", json={"text": ""}),
        client.post("/feedback", json={"prediction_id": str(uuid.uuid4()), "correct_label": 1}, headers=review_headers),
        client.get("/no/such/route"),
        client.delete("/predict"),
        client.get(f"/predictions/{uuid.uuid4()}/lineage"),
    ]
    assert [r.status_code for r in responses] == [422, 404, 404, 405, 404]
    for r in responses:
        body = r.json()
        assert set(body) == {"status", "message", "detail"}, body
        assert body["status"] == r.status_code and body["message"]
        assert body["detail"] and all(set(e) == {"type", "loc", "msg"} for e in body["detail"])
