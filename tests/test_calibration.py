"""Calibrated probabilities (issue 27, item 5): the calibrator's fit, the one wrapper every family's
``predict_proba`` goes through, and the training stages' record of it (ECE raw and calibrated on the held-out
split and on the external file, the reliability diagram, the model card) with a real TF-IDF fit on real tweets."""

from __future__ import annotations

import csv
import json

import mlflow  # noqa: TID253 - a test module of the MLflow runs: loaded by its own tests only
import numpy as np
import pandas as pd
import pytest
import realdata

from ml import models
from ml.data.snapshots import validate_and_snapshot
from ml.data.splits import calibration_split, split
from ml.models import calibration as calib
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


def test_calibrator_recovers_a_known_temperature():
    # probabilities three times too confident in logit space: temperature scaling must find T ~ 3
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 20_000)
    y = (rng.random(z.size) < calib.sigmoid(z)).astype(int)
    raw = calib.sigmoid(3.0 * z)
    cal = calib.fit(raw, y, "temperature")
    assert cal.temperature == pytest.approx(3.0, rel=0.08) and cal.b == 0.0
    assert cal.fit_ece < cal.fit_ece_raw / 3 and cal.fit_log_loss < cal.fit_log_loss_raw
    platt = calib.fit(raw, y, "platt")
    assert platt.a == pytest.approx(1 / 3, rel=0.08) and abs(platt.b) < 0.05
    # monotone: the ranking (and with temperature, every label) is kept
    assert (np.diff(cal.apply(np.sort(raw))) >= 0).all()
    assert np.array_equal(cal.apply(raw) >= 0.5, raw >= 0.5)


def test_calibrator_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="unknown calibration method"):
        calib.fit([0.2, 0.8], [0, 1], "isotonic-please")
    with pytest.raises(ValueError, match="only one class"):
        calib.fit([0.2, 0.8, 0.6], [1, 1, 1], "temperature")
    with pytest.raises(ValueError, match="as many labels"):
        calib.fit([0.2, 0.8], [1], "platt")
    # extreme inputs stay finite
    cal = calib.fit([0.0, 1.0, 0.0, 1.0, 0.5], [0, 1, 1, 0, 1], "platt")
    assert np.isfinite(cal.apply([0.0, 1.0, 0.5])).all()


def test_ece_of_known_bins():
    # two bins: mean p 0.1 with 0% positives, mean p 0.9 with 50% positives -> ECE = 0.5*0.1 + 0.5*0.4
    y = [0, 0, 1, 0]
    p = [0.1, 0.1, 0.9, 0.9]
    assert calib.ece(y, p) == pytest.approx(0.25)
    assert calib.ece([0, 1], [0.0, 1.0]) == 0.0
    assert [b["n"] for b in calib.reliability(y, p)] == [2, 2]


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_calibrated_tfidf_has_lower_ece_on_held_out_tweets(frame, method, tmp_path):
    train_df, test_df = split(frame, 0.2, 42)
    fit_df, cal_df = calibration_split(train_df, method, 42)
    assert len(cal_df) == 240 and len(fit_df) == 2160
    assert not set(cal_df["text"]) & set(test_df["text"])  # the gate's held-out rows are never calibrated on
    m = models.create("tfidf_lr").fit(fit_df["text"].tolist(), fit_df["label"].to_numpy())
    cal = m.calibrate(cal_df["text"].tolist(), cal_df["label"].to_numpy(), method)
    texts, y = test_df["text"].tolist(), test_df["label"].to_numpy()
    raw, served = m.raw_predict_proba(texts)[:, 1], m.predict_proba(texts)[:, 1]
    ece_raw, ece_cal = calib.ece(y, raw), calib.ece(y, served)
    print(f"{method}: a={cal.a:.3f} b={cal.b:.3f}; held-out ECE raw {ece_raw:.4f} -> calibrated {ece_cal:.4f}")
    assert ece_cal <= ece_raw
    if method == "temperature":  # only the confidence moves: every label (so the accuracy) is the family's
        assert np.array_equal(raw >= 0.5, served >= 0.5)
    # the calibration travels with the saved model (what MLflow logs and the API loads)
    path = m.save(tmp_path / "m")
    assert json.loads((path / calib.CALIBRATION_FILE).read_text())["method"] == method
    again = models.load(path)
    np.testing.assert_allclose(again.predict_proba(texts[:50]), m.predict_proba(texts[:50]))
    np.testing.assert_allclose(again.raw_predict_proba(texts[:50]), m.raw_predict_proba(texts[:50]))


def test_no_calibration_split_for_a_small_training_split(frame):
    fit_df, cal_df = calibration_split(frame.head(1500), "temperature", 42)
    assert len(fit_df) == 1500 and len(cal_df) == 0
    fit_df, cal_df = calibration_split(frame, "none", 42)
    assert len(fit_df) == len(frame) and len(cal_df) == 0


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
