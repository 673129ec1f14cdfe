"""The training stages end to end against real PostgreSQL and real MLflow tracking/registry."""
from __future__ import annotations

import mlflow
import pytest

from ml import data, registry, train


@pytest.fixture(scope="module")
def snapshot(platform_env, tweets_csv):
    return data.validate_and_snapshot(tweets_csv)


def _run(snapshot_hash, **kw):
    run_id = train.train(snapshot_hash, "tfidf_lr", **kw)
    metrics = train.evaluate(run_id)
    version = train.register(run_id)
    return run_id, metrics, version, train.promote(run_id)


@pytest.fixture
def no_behaviour_gate(model_name, monkeypatch):
    """The promotion rule alone (a 20-feature model cannot pass the behavioural checks)."""
    from ml.config import reset_settings

    monkeypatch.setenv("SENTIMENT_BEHAVIOUR_CHECKS", "false")
    reset_settings()
    yield
    monkeypatch.delenv("SENTIMENT_BEHAVIOUR_CHECKS")
    reset_settings()


def test_train_evaluate_register_promote(mlflow_tracking, model_name, no_behaviour_gate, snapshot, conn):
    # a weak first model (200 tweets) is promoted because there is no champion yet
    run1, m1, v1, d1 = _run(snapshot.hash, sample_size=200, params={"max_features": 20})
    assert d1["promoted"] and "first model" in d1["reason"]
    assert registry.champion().version == v1

    run = mlflow.MlflowClient().get_run(run1)
    assert run.data.tags["dataset_hash"] == snapshot.hash
    assert run.data.tags["git_commit"]
    assert run.data.params["sample_size"] == "200"
    for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "inference_ms_per_tweet", "training_seconds"):
        assert k in run.data.metrics
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run1)}
    assert {"confusion_matrix.png", "roc_curve.png", "metrics.json"} <= arts

    # the same family on the whole training split is better on the same held-out set: promoted
    run2, m2, v2, d2 = _run(snapshot.hash)
    assert m2["accuracy"] > m1["accuracy"] + 0.05
    assert d2["promoted"], d2
    assert registry.champion().version == v2

    # a worse one is registered but not promoted, and the reason is recorded
    run3, m3, v3, d3 = _run(snapshot.hash, sample_size=200, params={"max_features": 20})
    assert not d3["promoted"] and "does not beat" in d3["reason"]
    assert registry.champion().version == v2
    status, decision, champ_f1 = conn.execute(
        "SELECT status, decision, (champion_metrics->>'accuracy')::float FROM training_runs WHERE run_id=%s", (run3,)
    ).fetchone()
    assert status == "rejected" and decision == d3["reason"]
    assert champ_f1 == pytest.approx(m2["accuracy"])
    events = conn.execute(
        "SELECT version, event FROM model_events WHERE model_name=%s ORDER BY id", (model_name,)
    ).fetchall()
    assert events == [(v1, "promoted"), (v2, "promoted"), (v3, "rejected")]

    # re-registering the same run is idempotent
    assert train.register(run3) == v3


def test_bad_family_fails_before_any_run(mlflow_tracking, model_name, snapshot):
    with pytest.raises(ValueError, match="unknown model family"):
        train.train(snapshot.hash, "no-such-family")
    with pytest.raises(data.DataError, match="unknown dataset snapshot"):
        train.train("0" * 64)


def test_promote_runs_the_behaviour_gate(mlflow_tracking, model_name, snapshot, conn):
    """promote() runs the behavioural checks itself when the gate has not run yet, and records them."""
    run_id = train.train(snapshot.hash, "tfidf_lr")
    train.evaluate(run_id)
    train.register(run_id)
    d = train.promote(run_id)
    assert d["promoted"] and d["behaviour_passed"] is True, d
    stored = conn.execute("SELECT behaviour FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()[0]
    assert stored["passed"] and set(stored["types"]) == {"minimum_functionality", "negation", "invariance"}
    assert "behaviour.json" in {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
