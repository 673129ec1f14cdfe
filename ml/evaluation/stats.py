"""Paired comparison of two classifiers on the same texts (promotion veto, promotion gate).

Both models labelled the same tweets, so their errors are paired: only the *discordant* tweets
(one model right, the other wrong) carry information about which is better. McNemar's test on
them, in its exact mid-p form (binomial, no large-sample approximation; less conservative than the
plain exact test), gives the p-value; the interval is the paired Wald interval of the accuracy
difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binom, norm


def mcnemar_mid_p(b: int, c: int) -> float:
    """Two-sided mid-p of McNemar's exact test: ``b`` pairs only A got right, ``c`` only B."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    p = 2.0 * (binom.cdf(k, n, 0.5) - 0.5 * binom.pmf(k, n, 0.5))
    return float(min(1.0, max(0.0, p)))


def paired_comparison(
    y: Sequence[int] | np.ndarray,
    pred_a: Sequence[int] | np.ndarray,
    pred_b: Sequence[int] | np.ndarray,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Is A's accuracy different from B's on the same labelled texts?

    Returns ``difference`` (accuracy A - accuracy B), its ``interval`` at ``confidence``, the
    McNemar mid-p ``p_value``, the discordant counts ``a_only`` / ``b_only`` and ``verdict``:
    ``better`` / ``worse`` (A vs B, p < 1 - confidence) or ``tie``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    y, a, b_ = (np.asarray(v).astype(int).ravel() for v in (y, pred_a, pred_b))
    if not (len(y) == len(a) == len(b_)):
        raise ValueError(f"y, pred_a and pred_b differ in length: {len(y)}, {len(a)}, {len(b_)}")
    n = len(y)
    if n == 0:
        raise ValueError("no texts to compare on")
    ra, rb = a == y, b_ == y
    only_a, only_b = int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))
    diff = (only_a - only_b) / n
    # paired Wald interval: Var(d) = ((b + c) - (b - c)^2 / n) / n^2
    se = float(np.sqrt(max(0.0, (only_a + only_b) - (only_a - only_b) ** 2 / n))) / n
    z = float(norm.ppf(0.5 + confidence / 2))
    p = mcnemar_mid_p(only_a, only_b)
    alpha = 1.0 - confidence
    verdict = "tie" if p >= alpha or only_a == only_b else ("better" if diff > 0 else "worse")
    return {
        "n": n,
        "accuracy_a": float(np.mean(ra)),
        "accuracy_b": float(np.mean(rb)),
        "difference": float(diff),
        "interval": [float(diff - z * se), float(diff + z * se)],
        "confidence": confidence,
        "a_only": only_a,
        "b_only": only_b,
        "p_value": p,
        "test": "McNemar exact mid-p (two-sided) on the discordant pairs",
        "verdict": verdict,
    }
