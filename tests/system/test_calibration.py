"""Calibrated probabilities (issue 27, item 5): the calibrator's fit, the one wrapper every family's
``predict_proba`` goes through, and the training stages' record of it (ECE raw and calibrated on the held-out
split and on the external file, the reliability diagram, the model card) with a real TF-IDF fit on real tweets."""

from __future__ import annotations

import csv

import mlflow  # noqa: TID253 - a test module of the MLflow runs: loaded by its own tests only
import numpy as np
import pandas as pd
import pytest
import realdata

from ml.data.snapshots import validate_and_snapshot
from ml.platform import registry
from ml.platform.config import reset_settings
from ml.stages import promotion, train
from ml.views import model_card

UNIFORM = realdata.SHARED_DATA.with_name("sentiment140_uniform_eval.csv")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """3,000 real tweets of the shared 100k file, balanced (label 0/1)."""
    rows = realdata.balanced(3000, seed=27, path=realdata.SHARED_DATA)
    return pd.DataFrame({"text": [t for _, t in rows], "label": [1 if p == 4 else 0 for p, _ in rows]})


@pytest.mark.slow
def test_training_stages_record_calibration_and_the_card_shows_it(
    frame, mlflow_tracking, model_name, monkeypatch, tmp_path
):
    """Real PostgreSQL + MLflow: train (calibration carved from the training split), evaluate (ECE raw and
    calibrated, held-out and the external uniform file, reliability diagram), register, promote; the registered
    version serves calibrated probabilities and the model card shows the ECE table and the diagram."""
    csv_path = tmp_path / "tweets_3k.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(
            (4 if label else 0, text) for text, label in zip(frame["text"], frame["label"], strict=True)
        )
    monkeypatch.setenv("SENTIMENT_EXTERNAL_EVAL_PATH", str(realdata.require(UNIFORM)))
    monkeypatch.setenv("SENTIMENT_BEHAVIOUR_CHECKS", "false")
    reset_settings()
    try:
        snap = validate_and_snapshot(csv_path)
        run_id = train.train(snap.hash, "tfidf_lr")
        metrics = train.evaluate(run_id)
        version = train.register(run_id)
        assert promotion.promote(run_id)["promoted"]
        run = mlflow.MlflowClient().get_run(run_id)
        assert run.data.params["calibration"] == "temperature" and int(run.data.params["calibration_rows"]) > 200
        m = run.data.metrics
        for k in ("ece", "ece_raw", "external_ece", "external_ece_raw", "calibration_a"):
            assert k in m and np.isfinite(m[k]), k
        assert m["ece"] <= m["ece_raw"]
        assert metrics["calibration"]["held-out"]["ece"] == pytest.approx(m["ece"])
        print(
            f"held-out ECE {m['ece_raw']:.4f} -> {m['ece']:.4f}; "
            f"uniform file ECE {m['external_ece_raw']:.4f} -> {m['external_ece']:.4f}"
        )
        arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
        assert {"reliability_diagram.png", "calibration.json"} <= arts
        served = registry.load_version(version)
        assert served.calibration_ is not None and served.calibration_.method == "temperature"

        card = model_card.model_card()
        c = card["champion"]
        assert c["version"] == version
        assert c["calibration"]["method"] == "temperature"
        assert c["calibration"]["held_out"]["ece"] == pytest.approx(m["ece"])
        assert c["calibration"]["external"]["ece_raw"] == pytest.approx(m["external_ece_raw"])
        plot = next(p for p in c["plots"] if p["artifact"] == "reliability_diagram.png")
        assert plot["data_uri"].startswith("data:image/png;base64,")
        page = model_card.card_html(card)
        assert "id='calibration'" in page and "id='calibration-ece'" in page and "external file" in page
    finally:
        reset_settings()
