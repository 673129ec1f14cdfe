"""Model behaviour: the family interface, save/load round trip, sane predictions."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ml import models
from ml.features import clean, preprocess


@pytest.fixture(scope="module")
def small_data(tweets_csv):
    with tweets_csv.open(encoding="utf-8") as f:
        rows = [(r[1], 1 if r[0] == "4" else 0) for r in csv.reader(f)]
    return [t for t, _ in rows], np.array([y for _, y in rows])


def test_clean_tweets():
    assert clean("@bob I loooove it &quot;so&quot; much http://t.co/x #happy") == 'USER I loove it "so" much URL happy'
    with pytest.raises(ValueError, match="unknown preprocessing"):
        preprocess(["x"], "stemming-please")


def test_unknown_family_and_param_rejected():
    with pytest.raises(ValueError, match="unknown model family"):
        models.create("xgboost")
    with pytest.raises(ValueError, match="unknown parameter"):
        models.create("tfidf_lr", learning_rate=3)


def test_tfidf_fit_predict_save_load(tmp_path, small_data):
    texts, y = small_data
    m = models.create("tfidf_lr", C=2.0).fit(texts[:1600], y[:1600])
    proba = m.predict_proba(texts[1600:])
    assert proba.shape == (400, 2) and np.allclose(proba.sum(axis=1), 1)
    acc = (m.predict(texts[1600:]) == y[1600:]).mean()
    assert acc > 0.6, f"held-out accuracy {acc:.2f} on real tweets is too low"
    loaded = models.load(m.save(tmp_path / "m"))
    assert loaded.get_params()["C"] == 2.0
    np.testing.assert_array_equal(loaded.predict_proba(texts[1600:]), proba)
    assert m.predict_proba(["I love this so much"])[0, 1] > 0.5
    assert m.predict_proba(["I hate this, worst day"])[0, 1] < 0.5


def test_single_class_training_fails_clearly():
    with pytest.raises(ValueError, match="only one class"):
        models.create("tfidf_lr").fit(["a", "b"], [1, 1])
