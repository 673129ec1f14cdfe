"""Evaluation on the held-out split: metrics, timing, plots."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve

from ml.models.base import Scorer, decide

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


def compute_metrics(y_true: Sequence[int] | np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    y = np.asarray(y_true)
    pred = decide(proba[:, 1]).astype(int)
    p, r, f1, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f1),
        "roc_auc": float(roc_auc_score(y, proba[:, 1])) if len(set(y.tolist())) > 1 else float("nan"),
        "n": int(len(y)),
    }
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=[0, 1]).tolist()
    return out


def inference_ms_per_tweet(model: Scorer, texts: Sequence[str], batch: int = 1000, repeats: int = 5) -> float:
    """Median over ``repeats`` of the time to score a fixed batch, per tweet, in ms."""
    sample = list(texts[:batch])
    if not sample:
        return float("nan")
    model.predict_proba(sample[:10])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict_proba(sample)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0 / len(sample)


def dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e6


def plot_confusion(cm: list[list[int]], title: str) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.6))
    arr = np.asarray(cm)
    ax.imshow(arr, cmap="Blues")
    for (i, j), v in np.ndenumerate(arr):
        ax.text(j, i, f"{v:,}", ha="center", va="center", color="white" if v > arr.max() / 2 else "black")
    ax.set_xticks([0, 1], ["negative", "positive"])
    ax.set_yticks([0, 1], ["negative", "positive"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_roc(y_true: Sequence[int] | np.ndarray, proba: np.ndarray, title: str) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(y_true, proba[:, 1])
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y_true, proba[:, 1]):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
