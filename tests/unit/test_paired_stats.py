"""McNemar's mid-p and the paired comparison's verdicts (ml/evaluation/stats.py) on known counts."""

from __future__ import annotations

import numpy as np
import pytest

from ml.evaluation.stats import mcnemar_mid_p, paired_comparison


# ---------------------------------------------------------------- the paired test
def test_mid_p_by_hand():
    # b=2, c=10: X ~ Bin(12, 1/2); mid-p = 2 * (P(X <= 2) - P(X = 2) / 2)
    pmf = [1 / 4096, 12 / 4096, 66 / 4096]
    assert mcnemar_mid_p(2, 10) == pytest.approx(2 * (sum(pmf) - pmf[2] / 2))
    assert mcnemar_mid_p(0, 0) == 1.0 and mcnemar_mid_p(5, 5) == 1.0


def test_paired_comparison_verdicts():
    y = np.array([1, 0] * 500)
    a = y.copy()
    b = y.copy()
    b[:60] = 1 - b[:60]  # B wrong on 60 texts A gets right
    a[900:910] = 1 - a[900:910]  # A wrong on 10 others
    r = paired_comparison(y, a, b, 0.95)
    assert (r["a_only"], r["b_only"], r["n"]) == (60, 10, 1000)
    assert r["difference"] == pytest.approx(0.05) and r["verdict"] == "better" and r["p_value"] < 0.001
    assert r["interval"][0] < 0.05 < r["interval"][1] and r["interval"][0] > 0
    assert paired_comparison(y, b, a, 0.95)["verdict"] == "worse"
    c = y.copy()
    c[:12] = 1 - c[:12]
    tie = paired_comparison(y, a, c, 0.95)  # 12 vs 10 discordant: noise
    assert tie["verdict"] == "tie" and tie["interval"][0] < 0 < tie["interval"][1]
    with pytest.raises(ValueError):
        paired_comparison(y, a[:10], b, 0.95)
