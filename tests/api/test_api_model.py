"""GET /model, GET /health, GET /, and the 503s before any champion exists."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from api_helpers import POSITIVE_TEXT, fresh_model_name, running_app, settings_with, wait_for


def test_model_reports_the_champion_and_its_run(client, champion, api_settings):
    r = client.get("/model")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == api_settings.model_name
    assert body["alias"] == api_settings.champion_alias
    assert body["version"] == champion.version
    assert body["run_id"] == champion.run_id
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "inference_ms_per_tweet"):
        assert body["metrics"][key] == pytest.approx(champion.metrics[key])
    assert body["metrics"]["accuracy"] > 0.6  # a real model trained on real tweets
    assert body["dataset_hash"] == champion.tags["dataset_hash"]
    assert body["git_commit"] == champion.tags["git_commit"]
    assert body["family"] == "tfidf_lr"
    assert body["tags"]["dataset_hash"] == champion.tags["dataset_hash"]
    trained_at = datetime.fromisoformat(body["trained_at"])
    assert trained_at == datetime.fromtimestamp(champion.start_time_ms / 1000, tz=timezone.utc)


def test_health_ok(client, champion):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["database"] == {"reachable": True, "error": None}
    assert body["model"]["loaded"] is True
    assert body["model"]["version"] == champion.version
    assert body["model"]["run_id"] == champion.run_id
    assert body["writer"]["last_error"] is None


def test_index_page_has_the_controls(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for element_id in ("text", "predict", "result", "wrong", "feedback-status"):
        assert f'id="{element_id}"' in r.text
    assert "/static/app.js" in r.text and "http" not in r.text.replace("http-equiv", "")  # no CDN
    js = client.get("/static/app.js")
    assert js.status_code == 200
    assert "/predict" in js.text and "/feedback" in js.text


def test_503_before_any_champion_then_first_champion_without_restart(platform_env, publish):
    settings = settings_with(platform_env, model_name=fresh_model_name())
    with running_app(settings) as client:
        for method, path, payload in [
            ("post", "/predict", {"text": POSITIVE_TEXT}),
            ("post", "/predict/batch", {"texts": [POSITIVE_TEXT]}),
            ("get", "/model", None),
        ]:
            r = getattr(client, method)(path, **({"json": payload} if payload else {}))
            assert r.status_code == 503, (path, r.text)
            assert "no champion model yet" in r.json()["detail"]
            assert settings.model_name in r.json()["detail"]
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert health["model"]["loaded"] is False and health["model"]["version"] is None
        assert health["database"]["reachable"] is True

        first = publish(settings)  # the first promotion: picked up by the poller, no restart
        wait_for(lambda: client.post("/predict", json={"text": POSITIVE_TEXT}).status_code == 200, timeout=20)
        body = client.post("/predict", json={"text": POSITIVE_TEXT}).json()
        assert body["model_version"] == first.version and body["model_name"] == settings.model_name
        assert client.get("/health").json()["status"] == "ok"


def test_openapi_documents_the_routes(client):
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/feedback", "/health", "/model"} <= set(spec["paths"])
    assert "201" in spec["paths"]["/feedback"]["post"]["responses"]
    label = spec["components"]["schemas"]["FeedbackRequest"]["properties"]["correct_label"]
    assert {"type": "string", "enum": ["negative", "positive"]} in label["anyOf"]
