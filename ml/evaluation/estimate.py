"""Label-free accuracy estimate of the champion on a period's predictions (confidence-based
performance estimation, CBPE).

1. **Calibrate** the champion's P(positive) on its held-out split, where the true labels are
   known: isotonic regression (scikit-learn) of the true label on ``p_positive``. The monitoring
   reference (``ml.stages.monitoring.reference.build_reference``: the champion's held-out predictions with their
   true labels) is that split, so the calibrator is fitted on it once per champion version and
   cached beside it as ``var/reference/<model>/v<version>/calibration.json`` (the isotonic
   thresholds: a few hundred numbers, readable, no pickle).
2. **Estimate**: a stored prediction with label ``l`` and calibrated probability ``p̂`` is right
   with probability ``p̂`` if ``l`` is positive, else ``1 - p̂`` (``max(p̂, 1 - p̂)`` whenever the
   calibrated and raw probabilities fall on the same side of the decision threshold); the period's
   estimated accuracy is the mean over its predictions.

It holds under covariate shift (a different mix of tweets, easier or harder, for which the
model's confidence still means what it meant on the held-out split); it cannot see concept
drift (the same tweet now meaning something else), which is what reported labels are for.

NannyML implements CBPE, but ``pip install nannyml`` (0.13.1) would add 21 packages to the
platform's environment (xgboost, lightgbm, the CUDA NCCL wheel, gcsfs/s3fs, a telemetry client)
and move grpcio under TensorFlow, for what is a dozen lines here.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.isotonic import IsotonicRegression

from ml.models.base import decide
from ml.platform.config import Settings, get_settings
from ml.platform.storage import reference_store

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
METHOD = "CBPE: mean expected correctness under isotonic calibration fitted on the champion's held-out split"


def fit_calibrator(p_positive: np.ndarray, y_true: np.ndarray) -> dict[str, Any]:
    """Isotonic regression of the true label on ``p_positive``, as a JSON-able dict of thresholds."""
    p = np.asarray(p_positive, dtype=float)
    y = np.asarray(y_true, dtype=float)
    if len(p) != len(y) or len(p) == 0:
        raise ValueError(f"need as many labels as probabilities (got {len(p)} and {len(y)})")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True).fit(p, y)
    cal = {"kind": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist(), "n": int(len(p))}
    pred = decide(p).astype(int)
    cal["held_out_accuracy"] = float(np.mean(pred == y))
    cal["raw_estimate"] = float(np.mean(np.where(pred == 1, p, 1 - p)))  # before calibration
    return cal


def calibrate(cal: dict[str, Any], p_positive: np.ndarray) -> np.ndarray:
    """Calibrated P(positive): the isotonic step function, linear between thresholds (as sklearn's)."""
    x, y = np.asarray(cal["x"], dtype=float), np.asarray(cal["y"], dtype=float)
    p = np.asarray(p_positive, dtype=float)
    if len(x) == 1:
        return np.full(p.shape, y[0])
    return np.interp(p, x, y)


def expected_correct(cal: dict[str, Any], p_positive: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per prediction, the probability that its label is right."""
    q = calibrate(cal, p_positive)
    return np.where(np.asarray(labels).astype(int) == 1, q, 1.0 - q)


def estimate_accuracy(cal: dict[str, Any], p_positive: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(expected_correct(cal, p_positive, labels)))


# ---------------------------------------------------------------- the champion's calibrator
def champion_calibrator(
    reference: pd.DataFrame, meta: dict[str, Any], settings: Settings | None = None
) -> dict[str, Any]:
    """The calibrator of the champion behind ``meta`` (the monitoring reference's meta): from
    ``calibration.json`` beside the cached reference, else fitted on the reference and cached."""
    rs = reference_store(int(meta["version"]), settings or get_settings())  # the shared store
    if rs.exists(CALIBRATION_FILE):
        cal = json.loads(rs.read_bytes(CALIBRATION_FILE))
        if cal.get("run_id") == meta.get("run_id") and cal.get("n") == len(reference):
            return cal
    cal = fit_calibrator(reference["p_positive"].to_numpy(), reference["true_label"].to_numpy())
    cal.update(
        version=int(meta["version"]),
        run_id=meta.get("run_id"),
        dataset_hash=meta.get("dataset_hash"),
        fitted_on=f"champion's held-out split ({len(reference):,} rows, the monitoring reference)",
    )
    if rs.exists("meta.json"):  # beside a stored reference only (written atomically)
        rs.write_bytes(json.dumps(cal).encode(), CALIBRATION_FILE)
    log.info(
        "calibrator of v%s: isotonic, %d thresholds, fitted on %s held-out rows",
        meta["version"],
        len(cal["x"]),
        f"{len(reference):,}",
    )
    return cal


def period_estimate(
    current: pd.DataFrame, reference: pd.DataFrame, meta: dict[str, Any], settings: Settings | None = None
) -> dict[str, Any]:
    """The estimate for a report: over the period's predictions served by the reference's version
    (another version's probabilities do not follow this calibrator)."""
    cal = champion_calibrator(reference, meta, settings)
    version = int(meta["version"])
    served = current["model_version"].astype(int) == version if "model_version" in current else None
    rows = current[served] if served is not None else current
    out: dict[str, Any] = {
        "method": METHOD,
        "version": version,
        "rows": int(len(rows)),
        "rows_other_versions": int(len(current) - len(rows)),
        "calibration_rows": cal["n"],
        "held_out_accuracy": cal.get("held_out_accuracy"),
    }
    if len(rows) == 0:
        out.update(estimated_accuracy=None, status=f"no prediction of the period was served by v{version}")
        return out
    correct = expected_correct(cal, rows["p_positive"].to_numpy(), rows["label"].to_numpy())
    est = float(np.mean(correct))
    # the estimate's own sampling spread (expected correctness of independent predictions)
    se = float(np.sqrt(np.sum(correct * (1 - correct)))) / len(rows)
    out.update(
        estimated_accuracy=est,
        standard_error=se,
        status="ok",
        raw_confidence=float(np.mean(np.maximum(rows["p_positive"], 1 - rows["p_positive"]))),
    )
    return out


def statement(est: dict[str, Any] | None) -> str:
    if not est or est.get("estimated_accuracy") is None:
        return "estimated accuracy (label-free): " + ((est or {}).get("status") or "not available")
    return (
        f"estimated accuracy (label-free, CBPE) {est['estimated_accuracy']:.1%} "
        f"± {1.96 * est['standard_error']:.1%} over {est['rows']:,} predictions"
    )
