"""Search spaces, the comparison (nested MLflow runs, table, chart, PostgreSQL) and the
behavioural gate, against real PostgreSQL and real MLflow."""

from __future__ import annotations

import csv
import json

import mlflow  # noqa: TID253 - a test module of the MLflow runs: loaded by its own tests only
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.main import create_app
from ml.cli import app
from ml.data.snapshots import validate_and_snapshot
from ml.evaluation import behaviour
from ml.platform import registry
from ml.stages import compare, promotion, train
from ml.stages.search import SearchSpaceError
from ml.stages.search.plan import plan_comparison
from ml.stages.search.space import family_spec, trials
from ml.views import comparison


# ---------------------------------------------------------------- search spaces (no I/O)
def test_grid_random_and_override(platform_env):
    spec = family_spec("tfidf_lr", "quick")
    grid = trials(spec)
    assert len(grid) == len(spec["params"]["C"]) and all(t["preprocess"] == "basic" for t in grid)

    full = family_spec("cnn", "full")
    a, b = trials(full, seed=1), trials(full, seed=1)
    assert a == b and len(a) == full["n_trials"]  # random search is reproducible
    assert all(3e-4 <= t["learning_rate"] <= 3e-3 for t in a)
    assert len({json.dumps(t, sort_keys=True) for t in a}) == len(a)

    # an override narrows the search; a scalar means "just this value"
    o = family_spec("cnn", "quick", {"cnn": {"n_trials": 1, "params": {"epochs": 1, "vocab_size": [500]}}})
    (t,) = trials(o)
    assert t["vocab_size"] == 500 and t["epochs"] == 1 and t["preprocess"] == "basic"
    with pytest.raises(SearchSpaceError, match="unknown key"):
        family_spec("cnn", "quick", {"cnn": {"trials": 3}})
    with pytest.raises(SearchSpaceError, match="unknown search profile"):
        family_spec("cnn", "huge")
    # a family without an entry: one trial at its defaults
    assert trials(family_spec("transformer", "quick", space={"profiles": {"quick": {}}})) == [{}]


# ---------------------------------------------------------------- in-process comparison
@pytest.fixture(scope="module")
def snapshot(platform_env, tweets_csv):
    return validate_and_snapshot(tweets_csv)


def test_comparison_in_process(mlflow_tracking, model_name, snapshot, conn):
    res = compare.run_comparison(
        snapshot_hash=snapshot.hash,
        families="tfidf_lr",
        profile="quick",
        search_space={"tfidf_lr": {"params": {"C": [0.5, 2.0]}}},
        promote=True,
        render=comparison.render,
    )
    rows = res["rows"]
    assert [r["family"] for r in rows] == ["tfidf_lr"]
    r = rows[0]
    for k in (
        "accuracy",
        "f1",
        "roc_auc",
        "inference_ms_per_tweet",
        "model_size_mb",
        "training_seconds",
        "val_accuracy",
        "sample_size",
    ):
        assert r[k] is not None, k
    assert r["n_trials"] == 2 and r["params"]["C"] in (0.5, 2.0)

    client = mlflow.MlflowClient()
    parent = client.get_run(res["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["winner_family"] == "tfidf_lr"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{res['parent_run_id']}'")
    assert len(children) == 2  # one nested run per trial
    for c in children:
        assert c.data.tags["dataset_hash"] == snapshot.hash and c.data.tags["git_commit"]
        for k in (
            "val_accuracy",
            "val_precision",
            "val_recall",
            "val_f1",
            "val_roc_auc",
            "inference_ms_per_tweet",
            "model_size_mb",
            "training_seconds",
        ):
            assert k in c.data.metrics, k
        arts = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert {"validation_confusion_matrix.png", "validation_roc_curve.png"} <= arts
    arts = {a.path for a in client.list_artifacts(res["parent_run_id"], "comparison")}
    assert {"comparison/comparison.md", "comparison/comparison.html"} <= arts
    assert any(a.endswith(".png") for a in arts)

    latest = compare.latest_comparison()
    assert latest["parent_run_id"] == res["parent_run_id"] and len(latest["table"]) == 1
    assert latest["winner"]["version"] is not None and latest["winner"]["status"] == "promoted", latest["winner"][
        "decision"
    ]
    assert res["promotion"]["promoted"] and res["promotion"]["behaviour_passed"]

    out = CliRunner().invoke(app, ["compare", "--show"])
    assert out.exit_code == 0, out.output
    assert "| tfidf_lr" in out.output or "**tfidf_lr**" in out.output

    # the API serves the same comparison: JSON, a page with the table, and the chart

    with TestClient(create_app()) as api:
        got = api.get("/models/comparison")
        assert got.status_code == 200 and got.json()["parent_run_id"] == res["parent_run_id"]
        assert got.json()["table"][0]["family"] == "tfidf_lr"
        page = api.get("/models/comparison", params={"format": "html"})
        assert page.status_code == 200 and "tfidf_lr" in page.text and "chart.png" in page.text
        chart = api.get("/models/comparison/chart.png")
        assert chart.status_code == 200 and chart.content[:4] == b"\x89PNG"
        assert api.get("/models/comparison", params={"format": "xml"}).status_code == 422


def test_family_budget_limits_the_trials(mlflow_tracking, model_name, snapshot):
    """The family's budget is shared by its trials: once it is spent, no further trial starts (the
    first always runs); the row records the budget, what was used and how many trials ran."""
    res = compare.run_comparison(
        snapshot_hash=snapshot.hash,
        families="tfidf_lr",
        profile="quick",
        search_space={"tfidf_lr": {"budget_seconds": 0.001, "params": {"C": [0.5, 1.0, 2.0]}}},
        render=comparison.render,
    )
    (r,) = res["rows"]
    assert r["n_trials"] == 1 and r["skipped_trials"] == 2 and r["budget_seconds"] == 0.001
    assert r["budget_used_seconds"] > 0 and r["examples_seen"] == r["sample_size"]
    assert r["learning_curve"] is None  # TF-IDF fits in one pass: no steps, no curve


def test_bad_comparison_requests_fail_fast(mlflow_tracking, snapshot):
    with pytest.raises(SearchSpaceError, match="unknown model family"):
        plan_comparison(snapshot.hash, ["tfidf_lr", "xgboost"])
    with pytest.raises(ValueError, match="unknown parameter"):
        plan_comparison(snapshot.hash, ["tfidf_lr"], search_space={"tfidf_lr": {"params": {"alpha": [1]}}})
    with pytest.raises(SearchSpaceError, match="not compared"):
        plan_comparison(snapshot.hash, ["tfidf_lr"], sample_sizes={"cnn": 100})


# ---------------------------------------------------------------- the behavioural gate
class _Broken:
    """A deliberately broken model: always 'positive'."""

    def predict_proba(self, texts):
        return np.tile([0.1, 0.9], (len(texts), 1))


def test_behaviour_checks_catch_a_broken_model(platform_env):
    r = behaviour.run_checks(_Broken())
    assert not r["passed"]
    assert not r["types"]["minimum_functionality"]["passed"] and not r["types"]["negation"]["passed"]
    assert r["types"]["invariance"]["passed"]  # constant output is (trivially) invariant
    assert "I hate this" in r["reason"] or "minimum_functionality" in r["reason"]


def test_gate_refuses_label_flipped_candidate(mlflow_tracking, model_name, tweets_csv, tmp_path, conn):
    """A model trained on label-flipped tweets is registered but not promoted, even as the first
    model, and the failed checks are recorded (training_runs, model_events, MLflow)."""
    flipped = tmp_path / "flipped.csv"
    with tweets_csv.open(encoding="utf-8", newline="") as f, flipped.open("w", encoding="utf-8", newline="") as g:
        w = csv.writer(g, quoting=csv.QUOTE_ALL)
        for pol, text in csv.reader(f):
            w.writerow(["0" if pol == "4" else "4", text])
    snap = validate_and_snapshot(flipped)
    run_id = train.train(snap.hash, "tfidf_lr")
    train.evaluate(run_id)
    version = train.register(run_id)
    checks = train.check_behaviour(run_id)
    assert not checks["passed"] and "minimum_functionality" in checks["reason"]
    d = promotion.promote(run_id)
    assert not d["promoted"] and d["reason"].startswith("failed behavioural checks")
    assert "minimum_functionality" in d["reason"]

    status, decision, stored = conn.execute(
        "SELECT status, decision, behaviour FROM training_runs WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert status == "rejected" and decision == d["reason"] and stored["passed"] is False
    assert conn.execute(
        "SELECT version, event, reason FROM model_events WHERE model_name = %s", (model_name,)
    ).fetchall() == [(version, "rejected", d["reason"])]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.tags["behaviour_passed"] == "false"
    assert run.data.metrics["behaviour_minimum_functionality_pass_rate"] < 0.8

    assert registry.champion() is None
