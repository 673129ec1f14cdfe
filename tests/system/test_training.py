"""The training stages end to end against real PostgreSQL and real MLflow tracking/registry."""

from __future__ import annotations

import json

import mlflow  # noqa: TID253 - a test module of the MLflow runs: loaded by its own tests only
import psycopg
import pytest
import realdata

from ml.data import DataError
from ml.data.snapshots import validate_and_snapshot
from ml.platform import db, registry
from ml.platform.config import get_settings, reset_settings
from ml.stages import promotion, train


@pytest.fixture(scope="module")
def snapshot(platform_env):
    """The bundled 20k real tweets (the promotion gate needs a held-out set big enough for a paired test
    and a champion good enough for its golden set: ml/evaluation/gate.py)."""
    return validate_and_snapshot(realdata.SAMPLE)


def _run(snapshot_hash, **kw):
    run_id = train.train(snapshot_hash, "tfidf_lr", **kw)
    metrics = train.evaluate(run_id)
    version = train.register(run_id)
    return run_id, metrics, version, promotion.promote(run_id)


@pytest.fixture
def no_behaviour_gate(model_name, monkeypatch):
    """The promotion rule alone (a 20-feature model cannot pass the behavioural checks)."""
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
    with pytest.raises(DataError, match="unknown dataset snapshot"):
        train.train("0" * 64)


def test_promote_runs_the_behaviour_gate(mlflow_tracking, model_name, snapshot, conn):
    """promote() runs the behavioural checks itself when the gate has not run yet, and records them."""
    run_id = train.train(snapshot.hash, "tfidf_lr")
    train.evaluate(run_id)
    train.register(run_id)
    d = promotion.promote(run_id)
    assert d["promoted"] and d["behaviour_passed"] is True, d
    stored = conn.execute("SELECT behaviour FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()[0]
    assert stored["passed"] and set(stored["types"]) == {"minimum_functionality", "negation", "invariance"}
    assert "behaviour.json" in {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}


def _dag_runs(dag_id: str) -> list[str]:
    with psycopg.connect(db.libpq_url(db.airflow_db_url(get_settings()))) as aconn:
        return [r[0] for r in aconn.execute("SELECT run_id FROM dag_run WHERE dag_id = %s", (dag_id,)).fetchall()]


STRICT_MINIMUM_FUNCTIONALITY = {"SENTIMENT_BEHAVIOUR_CHECKS": "true", "SENTIMENT_BEHAVIOUR_MIN_FUNCTIONALITY": "1.0"}


def _assert_rejected_by_the_gate(conn, name, champion_version, run_id):
    """The candidate was more accurate than the champion on the same held-out split, failed the
    minimum-functionality check for real, and was not promoted; recorded in training_runs and model_events."""
    status, decision, metrics, champion_metrics, behaviour, version = conn.execute(
        "SELECT status, decision, metrics, champion_metrics, behaviour, model_version FROM training_runs"
        " WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    assert champion_metrics["version"] == champion_version
    assert metrics["accuracy"] > champion_metrics["accuracy"]  # accuracy alone would promote it
    mf = behaviour["types"]["minimum_functionality"]
    assert (behaviour["passed"], mf["passed"], mf["threshold"]) == (False, False, 1.0)
    assert mf["pass_rate"] < 1.0 and mf["failures"]  # real sentences it got wrong
    assert status == "rejected" and decision.startswith("failed behavioural checks: minimum_functionality")
    assert conn.execute(
        "SELECT event, previous_version, reason FROM model_events WHERE model_name = %s AND version = %s",
        (name, version),
    ).fetchall() == [("rejected", champion_version, decision)]
    assert registry.champion().version == champion_version


def test_a_more_accurate_candidate_failing_a_check_is_not_promoted(own_champion, tweets_csv, conn, monkeypatch):
    """Against an existing champion (300 tweets), a candidate on the whole training split is more accurate
    but gets plain sentences wrong that the gate (minimum functionality required at 100%) asks for."""
    with own_champion("tweet-sentiment-gate", tweets_csv, sample_size=300, SENTIMENT_BEHAVIOUR_CHECKS="false") as c:
        for k, v in STRICT_MINIMUM_FUNCTIONALITY.items():
            monkeypatch.setenv(k, v)
        reset_settings()
        run_id = train.train(c.snapshot.hash, "tfidf_lr")
        train.evaluate(run_id)
        train.register(run_id)
        d = promotion.promote(run_id)  # runs the gate itself
        monkeypatch.undo()
        assert not d["promoted"] and d["behaviour_passed"] is False
        _assert_rejected_by_the_gate(conn, c.name, c.version, run_id)


@pytest.mark.slow
def test_training_dag_does_not_promote_a_more_accurate_candidate_failing_a_check(
    own_champion, tweets_csv, conn, airflow_cli
):
    """The same gate through sentiment_training (``airflow dags test``): the comparison's winner beats the
    champion on the same held-out split, fails minimum functionality, and the champion stays."""
    with own_champion("tweet-sentiment-gate-dag", tweets_csv, sample_size=300, SENTIMENT_BEHAVIOUR_CHECKS="false") as c:
        before = _dag_runs("sentiment_training")
        res = airflow_cli(
            "dags",
            "test",
            "sentiment_training",
            "-c",
            json.dumps({"data_path": str(tweets_csv)}),
            extra_env={**c.env, **STRICT_MINIMUM_FUNCTIONALITY},
        )
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-5000:]  # a rejection is a decision, not a failure
        [run] = [r for r in _dag_runs("sentiment_training") if r not in before]
        [(winner, cmp_version)] = conn.execute(
            "SELECT winner_run_id, winner_version FROM comparisons WHERE airflow_run_id = %s", (run,)
        ).fetchall()
        assert cmp_version == c.version + 1
        _assert_rejected_by_the_gate(conn, c.name, c.version, winner)
