"""The monitoring report's per-tweet descriptors (ml/stages/monitoring/descriptors.py) on known texts."""

from __future__ import annotations

import pandas as pd

from ml.stages.monitoring.descriptors import add_descriptors


def test_descriptors():
    frame = pd.DataFrame({"text": ["@a @b love it http://x.co/1 #fun", "zzqx qqzz love", "!!! 123", ""]})
    out = add_descriptors(frame, {"love", "it", "fun", "user", "url"})
    assert out["n_mentions"].tolist() == [2, 0, 0, 0]
    assert out["n_urls"].tolist() == [1, 0, 0, 0]
    assert out["n_hashtags"].tolist() == [1, 0, 0, 0]
    assert out["word_count"].tolist() == [6, 3, 2, 0]
    assert out["oov_share"].tolist() == [0.0, 2 / 3, 1.0, 1.0]  # "123" is a token, not in vocabulary
    assert out.loc[2, "non_letter_share"] == 1.0 and out.loc[1, "non_letter_share"] == 0.0
