"""Calibrated probabilities for every family: a one-dimensional map of the model's own P(positive), fitted on
a labelled split the model was not trained on, applied inside ``predict_proba`` (:class:`ml.models.base.
SentimentModel` wraps every family's ``predict_proba`` with it: one place), saved with the model
(``calibration.json``) and so served by the API, the batch scorer and the MLflow pyfunc alike.

Methods (``Settings.calibration``):

- ``temperature``: ``p' = sigmoid(logit(p) / T)``. One parameter; P(positive) >= 0.5 is unchanged, so the
  labels, the accuracy and the ROC AUC stay exactly the family's: only the confidence moves.
- ``platt``: ``p' = sigmoid(a * logit(p) + b)`` (Platt scaling, scikit-learn's ``sigmoid`` calibration on a
  held-out split). Two parameters; ``b`` may move a few labels near 0.5.
- ``none``: no calibration.

Both are fitted by maximum likelihood (log loss) on the calibration split. For the neural families the logit
of P(positive) is the difference of their two logits, so this is the usual temperature / Platt scaling of the
logits; for TF-IDF + LR it is Platt scaling of the classifier's decision function.

Measures: :func:`ece` (expected calibration error over ``ECE_BINS`` equal-width bins of P(positive)) and
:func:`reliability` (the per-bin table behind the reliability diagram, :func:`plot_reliability`).

Imports numpy only at module level: a serving environment unpickles it (``code/ml/models``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHODS = ("temperature", "platt", "none")
CALIBRATION_FILE = "calibration.json"
#: equal-width bins of P(positive) of the expected calibration error and the reliability diagram
ECE_BINS = 15
_EPS = 1e-7
#: the calibration split: this share of the training split, at least / at most these many rows
SPLIT_FRACTION = 0.1
SPLIT_MIN_ROWS = 200
SPLIT_MAX_ROWS = 5000


def logit(p: np.ndarray | Sequence[float]) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # overflow-free


@dataclass(frozen=True)
class Calibrator:
    """``p' = sigmoid(a * logit(p) + b)`` (temperature: ``a = 1/T``, ``b = 0``), fitted on ``n`` rows."""

    method: str
    a: float = 1.0
    b: float = 0.0
    n: int = 0
    #: log loss and ECE on the calibration split, before and after (what the fit bought)
    fit_log_loss_raw: float | None = None
    fit_log_loss: float | None = None
    fit_ece_raw: float | None = None
    fit_ece: float | None = None

    def apply(self, p_positive: np.ndarray | Sequence[float]) -> np.ndarray:
        if self.method == "none":
            return np.asarray(p_positive, dtype=np.float64)
        return sigmoid(self.a * logit(p_positive) + self.b)

    def apply_proba(self, proba: np.ndarray) -> np.ndarray:
        """(n, 2) P(negative), P(positive) -> the calibrated pair (rows still sum to 1)."""
        proba = np.asarray(proba, dtype=np.float64)
        if self.method == "none" or proba.shape[0] == 0:
            return proba
        p = self.apply(proba[:, 1])
        return np.column_stack([1.0 - p, p])

    @property
    def temperature(self) -> float | None:
        return (1.0 / self.a) if self.method == "temperature" and self.a else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "temperature": self.temperature}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def log_loss(y: np.ndarray | Sequence[int], p_positive: np.ndarray | Sequence[float]) -> float:
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p_positive, dtype=np.float64), _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def fit(
    p_positive: np.ndarray | Sequence[float], y: np.ndarray | Sequence[int], method: str = "temperature"
) -> Calibrator:
    """The calibrator of ``method`` that minimises the log loss of ``y`` given the raw ``p_positive``."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    p = np.asarray(p_positive, dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64)
    if len(p) != len(yy) or len(p) == 0:
        raise ValueError(f"calibration needs as many labels as probabilities, and some: {len(p)} vs {len(yy)}")
    if method == "none":
        return Calibrator("none", n=len(p))
    if len(set(yy.tolist())) < 2:
        raise ValueError("the calibration split holds only one class")
    z = logit(p)

    def nll_and_grad(a: float, b: float) -> tuple[float, float, float]:
        q = np.clip(sigmoid(a * z + b), _EPS, 1.0 - _EPS)
        loss = float(-np.mean(yy * np.log(q) + (1.0 - yy) * np.log1p(-q)))
        r = q - yy
        return loss, float(np.mean(r * z)), float(np.mean(r))

    # Newton's method on a convex, two-parameter logistic likelihood: a few iterations, no scipy
    a, b = 1.0, 0.0
    for _ in range(100):
        loss, ga, gb = nll_and_grad(a, b)
        q = sigmoid(a * z + b)
        w = q * (1.0 - q)
        haa, hab, hbb = float(np.mean(w * z * z)) + 1e-9, float(np.mean(w * z)), float(np.mean(w)) + 1e-9
        if method == "temperature":
            step_a, step_b = ga / haa, 0.0
        else:
            det = haa * hbb - hab * hab
            step_a, step_b = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        t = 1.0  # backtracking keeps every step downhill
        while t > 1e-4:
            na, nb = a - t * step_a, b - t * step_b
            if na > 0 and nll_and_grad(na, nb)[0] <= loss + 1e-12:
                break
            t *= 0.5
        else:
            break
        a, b = na, nb
        if abs(t * step_a) < 1e-8 and abs(t * step_b) < 1e-8:
            break
    cal = Calibrator(method, a=float(a), b=float(b), n=len(p))
    return Calibrator(
        method,
        a=float(a),
        b=float(b),
        n=len(p),
        fit_log_loss_raw=round(log_loss(yy, p), 6),
        fit_log_loss=round(log_loss(yy, cal.apply(p)), 6),
        fit_ece_raw=round(ece(yy, p), 6),
        fit_ece=round(ece(yy, cal.apply(p)), 6),
    )


def reliability(
    y: np.ndarray | Sequence[int], p_positive: np.ndarray | Sequence[float], bins: int = ECE_BINS
) -> list[dict[str, Any]]:
    """Per equal-width bin of P(positive): its bounds, count, mean predicted P(positive) and the observed share
    of positives (empty bins are left out)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p_positive, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, int(bins) - 1)
    out = []
    for i in range(int(bins)):
        sel = idx == i
        n = int(sel.sum())
        if n:
            out.append(
                {
                    "lo": float(edges[i]),
                    "hi": float(edges[i + 1]),
                    "n": n,
                    "mean_p": float(p[sel].mean()),
                    "frac_positive": float(y[sel].mean()),
                }
            )
    return out


def ece(y: np.ndarray | Sequence[int], p_positive: np.ndarray | Sequence[float], bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over equal-width bins of P(positive) of (share of rows in the bin) x
    |observed share of positives - mean predicted P(positive)|. 0 is perfect; in [0, 1]."""
    n = len(np.asarray(y))
    if n == 0:
        return float("nan")
    return float(sum(b["n"] / n * abs(b["frac_positive"] - b["mean_p"]) for b in reliability(y, p_positive, bins)))


def summary(y: np.ndarray | Sequence[int], raw: np.ndarray, calibrated: np.ndarray, bins: int = ECE_BINS) -> dict:
    """ECE and log loss of the raw and the calibrated P(positive) on one labelled set, with both reliability
    tables: what the run logs and the model card shows."""
    return {
        "n": int(len(np.asarray(y))),
        "bins": int(bins),
        "ece_raw": round(ece(y, raw, bins), 6),
        "ece": round(ece(y, calibrated, bins), 6),
        "log_loss_raw": round(log_loss(y, raw), 6),
        "log_loss": round(log_loss(y, calibrated), 6),
        "reliability_raw": reliability(y, raw, bins),
        "reliability": reliability(y, calibrated, bins),
    }


def plot_reliability(curves: dict[str, dict[str, Any]], title: str = "reliability diagram") -> Figure:
    """The reliability diagram of one or more :func:`summary` results (``{"held-out": s, "external": s}``):
    observed share of positives against mean predicted P(positive) per bin, raw (dashed) and calibrated
    (solid), the diagonal = perfect calibration; ECE in the legend. Returns a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8, label="perfect")
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for (name, s), colour in zip(curves.items(), colours, strict=False):
        for key, style, ece_key, what in (
            ("reliability_raw", ":", "ece_raw", "raw"),
            ("reliability", "-", "ece", "calibrated"),
        ):
            rows = s.get(key) or []
            ax.plot(
                [r["mean_p"] for r in rows],
                [r["frac_positive"] for r in rows],
                style,
                marker="o",
                ms=3,
                color=colour,
                label=f"{name} {what} (ECE {s[ece_key]:.3f}, n={s['n']:,})",
            )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted P(positive)")
    ax.set_ylabel("observed share of positives")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
