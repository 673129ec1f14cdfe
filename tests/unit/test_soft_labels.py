"""Soft labels in the TF-IDF family (fit_soft, used by distillation) on real tweets, without the registry."""

from __future__ import annotations

import numpy as np
import pytest
import realdata

from ml import models


def test_soft_labels_of_zero_and_one_are_hard_labels():
    """p in {0, 1} with weight 1 is the same fit as those rows with hard labels; soft p moves the student
    toward the teacher."""
    rows = realdata.balanced(1200, seed=5)
    texts = [t for _, t in rows]
    y = np.array([1 if p == 4 else 0 for p, _ in rows])
    hard = models.create("tfidf_lr").fit(texts, y)
    soft = models.create("tfidf_lr").fit_soft(texts[:600], y[:600], texts[600:], y[600:].astype(float))
    probe = texts[:200]
    ps, ph = soft.predict_proba(probe)[:, 1], hard.predict_proba(probe)[:, 1]
    # the same objective up to liblinear's stopping tolerance and IDF over distinct texts
    assert np.abs(ps - ph).max() < 0.05 and ((ps >= 0.5) == (ph >= 0.5)).mean() >= 0.97
    assert soft.history_["n_soft"] == 600 and soft.history_["n_hard"] == 600
    # a teacher that is sure every corpus text is positive pulls the student's P(positive) up on them
    pulled = models.create("tfidf_lr").fit_soft(texts[:600], y[:600], texts[600:], np.full(600, 0.99))
    assert pulled.predict_proba(texts[600:])[:, 1].mean() > hard.predict_proba(texts[600:])[:, 1].mean() + 0.05
    with pytest.raises(ValueError, match="soft probabilities"):
        models.create("tfidf_lr").fit_soft(texts[:10], y[:10], texts[10:20], [0.5])
