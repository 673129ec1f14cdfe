"""Distillation (issue 27, item 3) against real PostgreSQL and real MLflow, on real tweets: a teacher champion
labels a corpus with soft probabilities, a TF-IDF student trains on them plus the hard labels, and the student is
a candidate like any other (it loads and serves as a pyfunc, its record names its teacher, it goes through the
same paired gate). The soft-label fit itself is checked on its own: duplicated weighted rows are the
cross-entropy against the soft label."""

from __future__ import annotations

import csv
import json

import mlflow  # noqa: TID253 - a test module of the MLflow runs: loaded by its own tests only
import pandas as pd
import pytest
import realdata
from typer.testing import CliRunner

from ml.cli import app
from ml.data import DataError
from ml.data.snapshots import validate_and_snapshot
from ml.data.splits import split_for
from ml.platform import db, registry
from ml.platform.config import get_settings, reset_settings
from ml.stages import distill, promotion, train
from ml.store import training_runs as training_runs_store


def _write(path, rows):
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)
    return path


@pytest.fixture
def setup(mlflow_tracking, model_name, monkeypatch, tmp_path):
    """A 3,000-tweet snapshot of the shared file, a TF-IDF teacher champion (v1) trained on 600 of it, a
    corpus file of 1,500 other real tweets (the bundled sample): (snapshot, teacher run, corpus path)."""
    monkeypatch.setenv("SENTIMENT_BEHAVIOUR_CHECKS", "false")
    reset_settings()
    rows = realdata.balanced(3000, seed=31, path=realdata.SHARED_DATA)
    snap = validate_and_snapshot(_write(tmp_path / "distill_3k.csv", rows))
    teacher_run = train.train(snap.hash, "tfidf_lr", sample_size=600)
    train.evaluate(teacher_run)
    train.register(teacher_run)
    assert promotion.promote(teacher_run)["promoted"]
    corpus = _write(tmp_path / "corpus.csv", [(p, t) for p, t in realdata.balanced(1500, seed=32)])
    yield snap, teacher_run, corpus
    reset_settings()


@pytest.mark.slow
def test_distilled_student_serves_names_its_teacher_and_meets_the_gate(setup, model_name):
    snap, teacher_run, corpus = setup
    run_id = distill.distill(snap.hash, teacher="champion", corpus="file", corpus_path=corpus, sample_size=600)
    run = mlflow.MlflowClient().get_run(run_id)
    tags, params = run.data.tags, run.data.params
    assert tags["teacher"] == f"{model_name} v1" and tags["teacher_version"] == "1"
    assert tags["teacher_run_id"] == teacher_run and tags["teacher_family"] == "tfidf_lr"
    assert tags["distilled"] == "true" and tags["dataset_hash"] == snap.hash and tags["family"] == "tfidf_lr"
    assert params["teacher"] == f"{model_name} v1" and 1400 < int(params["n_corpus"]) <= 1500  # distinct texts
    assert run.data.metrics["teacher_label_seconds"] >= 0
    # the student loads and serves as the pyfunc any version is
    served = mlflow.pyfunc.load_model(tags["model_uri"]).predict(
        pd.DataFrame({"text": ["what a lovely sunny day", "my phone broke again, worst week"]})
    )
    assert list(served.columns) == ["label", "p_negative", "p_positive"]
    assert served["p_positive"].between(0, 1).all() and served["label"].isin([0, 1]).all()
    # a candidate like any other: evaluated beside the champion, registered, and through the same paired gate
    metrics = train.evaluate(run_id)
    assert metrics["accuracy"] > 0.6
    version = train.register(run_id)
    mv = mlflow.MlflowClient().get_model_version(model_name, str(version))
    assert mv.tags["teacher"] == f"{model_name} v1" and mv.tags["teacher_run_id"] == teacher_run
    decision = promotion.promote(run_id)
    assert "promoted" in decision
    with db.connect(get_settings()) as conn:
        gate = training_runs_store.run_gate(conn, run_id)
    assert gate["champion_version"] == 1 and "held_out" in gate  # paired against the teacher champion
    champ = registry.champion()
    assert champ.version == (version if decision["promoted"] else 1)


@pytest.mark.slow
def test_distillation_refuses_bad_teachers_students_and_leaky_corpora(setup, tmp_path):
    snap, _, _ = setup
    with pytest.raises(ValueError, match="has no version 99"):
        distill.distill(snap.hash, teacher="99", sample_size=600)
    with pytest.raises(ValueError, match="teacher must be"):
        distill.distill(snap.hash, teacher="the big one", sample_size=600)
    with pytest.raises(ValueError, match="student must be"):
        distill.distill(snap.hash, family="cnn", sample_size=600)
    # a corpus of the gate's held-out texts only: removed, nothing left to learn from
    _, _, test_df = split_for(snap.hash, get_settings())
    leaky = _write(tmp_path / "leaky.csv", [(4 if y else 0, t) for t, y in zip(test_df["text"], test_df["label"])])
    with pytest.raises(DataError, match="no text outside"):
        distill.distill(snap.hash, corpus="file", corpus_path=leaky, sample_size=600)
    # the CLI: a clear exit 2 with the reason
    res = CliRunner().invoke(app, ["distill", "--snapshot", snap.hash, "--corpus", "file"])
    assert res.exit_code == 2 and "--corpus-path" in res.output
    res = CliRunner().invoke(app, ["distill", "--snapshot", snap.hash, "--teacher", "99"])
    assert res.exit_code == 2 and "no version 99" in res.output


@pytest.mark.slow
def test_the_distillation_dag_runs_the_stage_and_the_gate(setup, airflow_cli, model_name):
    """``airflow dags test sentiment_distillation``: distill -> evaluate -> register -> gate -> promote, thin
    tasks calling the same functions; the student's run names the teacher and went through the gate."""
    snap, teacher_run, corpus = setup
    conf = {"snapshot": snap.hash, "sample_size": 600, "corpus": "file", "corpus_path": str(corpus)}
    res = airflow_cli(
        "dags",
        "test",
        "sentiment_distillation",
        "-c",
        json.dumps(conf),
        extra_env={"SENTIMENT_MODEL_NAME": model_name, "SENTIMENT_BEHAVIOUR_CHECKS": "false"},
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.teacher = '{model_name} v1'", output_format="list"
    )
    assert len(runs) == 1 and runs[0].data.tags["teacher_run_id"] == teacher_run
    student = runs[0].info.run_id
    assert runs[0].data.tags.get("airflow_run_id")
    with db.connect(get_settings()) as conn:
        gate = training_runs_store.run_gate(conn, student)
    assert gate["champion_version"] == 1
    mv = mlflow.MlflowClient().search_model_versions(f"name = '{model_name}' and run_id = '{student}'")
    assert mv and mv[0].tags["teacher"] == f"{model_name} v1"
