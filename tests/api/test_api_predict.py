"""POST /predict and /predict/batch against a real champion; rows land in PostgreSQL."""
from __future__ import annotations

import uuid

import pytest

from api_helpers import NEGATIVE_TEXT, POSITIVE_TEXT, count_predictions, prediction_row, wait_for


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
    assert uuid.UUID(body["id"]).version == 4


def test_predict_negative_text(client):
    body = client.post("/predict", json={"text": NEGATIVE_TEXT}).json()
    assert body["label"] == "negative" and body["label_id"] == 0
    assert body["probabilities"]["negative"] > 0.5


def test_prediction_is_stored_in_postgres(client, conn, champion):
    text = f"{POSITIVE_TEXT} ({uuid.uuid4().hex})"
    body = client.post("/predict", json={"text": text}).json()
    # not written on the request path: the writer COPYs it within prediction_flush_seconds
    row = wait_for(lambda: prediction_row(conn, body["id"]), timeout=10)
    db_text, label, p_neg, p_pos, model_name, model_version, source, created_at = row
    assert db_text == text
    assert label == 1
    assert p_pos == pytest.approx(body["probabilities"]["positive"], rel=1e-6)
    assert p_neg == pytest.approx(body["probabilities"]["negative"], rel=1e-6)
    assert (model_name, model_version, source) == (client.app.state.settings.model_name, champion.version, "api")
    assert created_at is not None


def test_batch_predicts_in_order_with_one_model_call(client, conn, champion, monkeypatch):
    model = client.app.state.models.current.model
    calls: list[int] = []
    real = model.predict_proba

    def counting(texts):
        calls.append(len(texts))
        return real(texts)

    monkeypatch.setattr(model, "predict_proba", counting)
    marker = uuid.uuid4().hex
    texts = [f"{POSITIVE_TEXT} {marker}", f"{NEGATIVE_TEXT} {marker}", f"{POSITIVE_TEXT}!! {marker}"]
    r = client.post("/predict/batch", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert calls == [3]  # one predict_proba call for the whole batch
    assert body["count"] == 3 and len(body["predictions"]) == 3
    assert body["model_version"] == champion.version
    assert [p["label"] for p in body["predictions"]] == ["positive", "negative", "positive"]
    assert len({p["id"] for p in body["predictions"]}) == 3
    for p in body["predictions"]:
        assert p["probabilities"]["negative"] + p["probabilities"]["positive"] == pytest.approx(1.0)
        assert p["model_version"] == champion.version
    client.app.state.writer.flush()
    stored = conn.execute(
        "SELECT id::text, text, label FROM predictions WHERE text LIKE %s", (f"%{marker}",)
    ).fetchall()
    assert sorted(stored) == sorted((p["id"], t, p["label_id"]) for p, t in zip(body["predictions"], texts))


def test_batch_at_the_size_limit_is_accepted(client, api_settings):
    n = api_settings.max_batch_size
    r = client.post("/predict/batch", json={"texts": [f"tweet number {i}" for i in range(n)]})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["count"] == n


def test_text_at_the_length_limit_is_accepted(client, api_settings):
    r = client.post("/predict", json={"text": "a" * api_settings.max_text_chars})
    assert r.status_code == 200, r.text[:300]


def _errors(r) -> str:
    """All error messages of a 4xx body, as one string."""
    detail = r.json()["detail"]
    return " | ".join(e["msg"] for e in detail) if isinstance(detail, list) else detail


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
        ("/predict", {"text": "bad\u0000byte"}, "NUL"),
        ("/predict", {"text": "x" * 1001}, "limit is 1000"),
        ("/predict/batch", {"texts": []}, "texts is empty"),
        ("/predict/batch", {"texts": "not a list"}, "valid list"),
        ("/predict/batch", {"texts": ["fine", 7]}, "valid string"),
        ("/predict/batch", {"texts": ["fine", "  "]}, "empty or whitespace-only"),
        ("/predict/batch", {"texts": ["fine", "y" * 1001]}, "limit is 1000"),
        ("/predict/batch", {"texts": ["t"] * 1001}, "1001 texts, the limit is 1000"),
    ],
)
def test_bad_input_is_rejected_with_the_reason(client, conn, path, payload, reason):
    writer = client.app.state.writer
    writer.flush()
    before = count_predictions(conn)
    r = client.post(path, json=payload)
    assert r.status_code == 422, r.text[:300]
    assert reason in _errors(r)
    # nothing half-done: no row buffered or written for a rejected request
    assert writer.pending == 0
    writer.flush()
    assert count_predictions(conn) == before


def test_error_names_the_bad_item_of_a_batch(client):
    r = client.post("/predict/batch", json={"texts": ["ok", "ok", "z" * 1001]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "texts", 2]


def test_invalid_json_is_a_4xx(client):
    r = client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
