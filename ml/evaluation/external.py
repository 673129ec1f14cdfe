"""External evaluation: one labelled file outside the training snapshot (``external_eval_path``),
scored for every candidate ``ml.stages.train.evaluate`` sees and for the champion on the same texts.

Why: a held-out split of one file shares that file's quirks. The shared 100k file takes its
negatives from April and its positives from June, so its own split rewards learning the date; a
TF-IDF model scored 80.3% on that split and 78.4% on a uniform sample of the whole corpus. The
external figures sit beside the held-out ones (training_runs.metrics["external"], MLflow
``external_*``, the comparison table, the model card, GET /model) and a candidate significantly
worse than the champion on them (``ml.evaluation.stats.paired_comparison``) is not promoted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.data import DataError
from ml.data.read import read_labelled
from ml.data.snapshots import content_hash
from ml.evaluation.evaluate import compute_metrics
from ml.models.base import Scorer, decide
from ml.platform.config import Settings, get_settings

log = logging.getLogger(__name__)

MLFLOW_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "n")


@dataclass(frozen=True)
class ExternalSet:
    path: Path
    texts: list[str]
    labels: np.ndarray
    content_hash: str  # ml.data.snapshots.content_hash of the (label, text) rows: the snapshots' definition
    rejected: int

    @property
    def n(self) -> int:
        return len(self.texts)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "n": self.n, "content_hash": self.content_hash, "rejected_rows": self.rejected}


_CACHE: dict[tuple[str, int, int], ExternalSet] = {}


def load(settings: Settings | None = None) -> ExternalSet | None:
    """The configured external set (read once per file version), or None when unset.

    A path that is set but unreadable is an error: evaluating without the file one asked for
    would silently drop the veto."""
    s = settings or get_settings()
    path = s.external_eval_file
    if path is None:
        return None
    if not path.exists():
        raise DataError(f"external_eval_path {path} does not exist (unset it to evaluate on the held-out split only)")
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _CACHE:
        return _CACHE[key]
    res = read_labelled(path)
    if not res.texts:
        raise DataError(f"external_eval_path {path}: no labelled rows ({dict(res.rejected_by_reason)})")
    labels = np.asarray(res.labels, dtype=int)
    h = content_hash(pd.DataFrame({"label": labels, "text": res.texts}))
    ext = ExternalSet(
        path=path, texts=list(res.texts), labels=labels, content_hash=h, rejected=sum(res.rejected_by_reason.values())
    )
    if len(set(labels.tolist())) < 2:
        raise DataError(f"external_eval_path {path}: only one class among {ext.n} rows")
    log.info("external evaluation set %s: %s tweets, hash %s", path, f"{ext.n:,}", h[:16])
    _CACHE.clear()
    _CACHE[key] = ext
    return ext


def score(model: Scorer, ext: ExternalSet, proba: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """(metrics, predicted labels) of ``model`` on the external set; metrics carry n, path and hash.
    ``proba``: the model's probabilities on ``ext.texts`` when the caller already has them."""
    if proba is None:
        proba = model.predict_proba(ext.texts)
    m = compute_metrics(ext.labels, proba)
    m.update(path=str(ext.path), content_hash=ext.content_hash)
    return m, decide(proba[:, 1]).astype(int)


def mlflow_metrics(m: dict[str, Any], prefix: str = "external_") -> dict[str, float]:
    return {f"{prefix}{k}": float(m[k]) for k in MLFLOW_METRICS if m.get(k) is not None and np.isfinite(m[k])}


def veto(metrics: dict[str, Any] | None, champion_version: int | None) -> str | None:
    """The reason a candidate must not be promoted on the external set, or None.

    Vetoed only when its paired comparison with *this* champion (computed by ``ml.stages.train.evaluate``)
    says ``worse``; a tie or no external set leaves the promotion rule alone."""
    ext = (metrics or {}).get("external") or {}
    cmp_ = ext.get("vs_champion")
    if not cmp_ or cmp_.get("champion_version") != champion_version or cmp_.get("verdict") != "worse":
        return None
    lo, hi = cmp_["interval"]
    return (
        f"significantly worse than champion v{champion_version} on the external set "
        f"({Path(ext.get('path', '')).name}, n={cmp_['n']:,}, hash {str(ext.get('content_hash'))[:12]}): "
        f"accuracy {cmp_['accuracy_a']:.4f} vs {cmp_['accuracy_b']:.4f}, difference {cmp_['difference']:+.4f} "
        f"[{lo:+.4f}, {hi:+.4f}] at {cmp_['confidence']:.0%}, McNemar mid-p {cmp_['p_value']:.2g}"
    )
