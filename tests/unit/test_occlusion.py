"""The families' shared explainer (ml/models/base.py: occlusion) on a toy model: one call, each word weighed by
the drop in p(positive) when it is left out."""

from __future__ import annotations

import numpy as np

from ml.models.base import occlusion


def test_occlusion_weighs_each_word_by_the_drop_in_p_positive_in_one_call():
    calls: list[int] = []

    def proba(texts):  # a toy model: "good" +0.4, "bad" -0.3
        calls.append(len(texts))
        p = np.array([0.5 + 0.4 * ("good" in t.split()) - 0.3 * ("bad" in t.split()) for t in texts])
        return np.column_stack([1 - p, p])

    [[first, second, *rest]] = occlusion(proba, ["good not bad good"], top_k=10)
    assert calls == [1 + 3]  # the text + one variant per distinct word, one call
    assert first == {"token": "good", "weight": 0.4} and second == {"token": "bad", "weight": -0.3}
    assert rest == [{"token": "not", "weight": 0.0}]
    [[_, *more]] = occlusion(proba, [" ".join(f"w{i}" for i in range(100))], top_k=100, max_words=40)
    assert len(more) == 39 and calls[-1] == 41  # capped at 40 words
