"""GET /model, GET /health, GET /, and the 503s before any champion exists."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from api_helpers import POSITIVE_TEXT, fresh_model_name, running_app, settings_with, wait_for

from ml.platform import tracking


def test_model_reports_what_training_recorded(client, champion, api_settings, conn):
    """/model against what ml.stages.train recorded: the MLflow run and the training_runs row."""
    import mlflow

    r = client.get("/model")
    assert r.status_code == 200, r.text
    body = r.json()
    run = mlflow.MlflowClient().get_run(champion.run_id)
    metrics, snapshot_hash, git_commit, family, version, status = conn.execute(
        "SELECT metrics, snapshot_hash, git_commit, family, model_version, status FROM training_runs WHERE run_id = %s",
        (champion.run_id,),
    ).fetchone()
    assert (version, status) == (champion.version, "promoted")
    assert body["name"] == api_settings.model_name
    assert body["alias"] == api_settings.champion_alias
    assert (body["version"], body["run_id"]) == (champion.version, champion.run_id)
    # metrics: those the evaluation logged to the run, and stored in training_runs
    assert body["metrics"] == run.data.metrics
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "inference_ms_per_tweet"):
        assert body["metrics"][key] == pytest.approx(metrics[key])
    assert body["metrics"]["accuracy"] > 0.6  # a real model trained on real tweets
    # lineage: the snapshot it was trained on and the code commit that trained it
    assert body["dataset_hash"] == snapshot_hash == champion.snapshot_hash == run.data.tags["dataset_hash"]
    assert body["git_commit"] == git_commit == run.data.tags["git_commit"]
    assert body["git_commit"].split("-")[0] == tracking.git_commit().split("-")[0]  # this checkout's commit
    assert body["family"] == family == "tfidf_lr"
    assert body["tags"]["dataset_hash"] == snapshot_hash
    trained_at = datetime.fromisoformat(body["trained_at"])
    assert trained_at == datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC)


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
    assert body["reasons"] == []
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/ready").status_code == 200


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
            assert "no champion model yet" in r.json()["message"]
            assert settings.model_name in r.json()["message"]
        r = client.get("/health")
        health = r.json()
        assert r.status_code == 503 and health["status"] == "degraded"
        assert any("no model loaded" in reason for reason in health["reasons"])
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and "no model loaded" in ready.json()["message"]
        assert client.get("/health/live").status_code == 200
        assert health["model"]["loaded"] is False and health["model"]["version"] is None
        assert health["database"]["reachable"] is True

        first = publish(settings)  # the first promotion: picked up by the poller, no restart
        wait_for(lambda: client.post("/predict", json={"text": POSITIVE_TEXT}).status_code == 200)
        body = client.post("/predict", json={"text": POSITIVE_TEXT}).json()
        assert body["model_version"] == first.version and body["model_name"] == settings.model_name
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/health/ready").json() == {"ready": True, "reasons": []}


def test_openapi_documents_the_routes(client):
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/feedback", "/health", "/model"} <= set(spec["paths"])
    assert "201" in spec["paths"]["/feedback"]["post"]["responses"]
    label = spec["components"]["schemas"]["FeedbackRequest"]["properties"]["correct_label"]
    assert {"type": "string", "enum": ["negative", "positive"]} in label["anyOf"]
