"""What a trial logs to MLflow besides its metrics: its training record and learning curve
(``curve_val_accuracy`` against ``step=``, ``learning_curve.png``), its validation plots, and links
to the learning curve for the comparison table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.evaluation.evaluate import plot_confusion, plot_roc
from ml.models.base import plot_learning_curve
from ml.platform import tracking
from ml.platform.config import Settings

if TYPE_CHECKING:
    import numpy as np

LEARNING_CURVE = "learning_curve.png"


def log_plots(metrics: dict[str, Any], y: Sequence[int] | np.ndarray, proba: np.ndarray, prefix: str) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    for fig, name in (
        (plot_confusion(metrics["confusion_matrix"], f"{prefix} confusion matrix"), "confusion_matrix"),
        (plot_roc(y, proba, f"{prefix} ROC"), "roc_curve"),
    ):
        mlflow.log_figure(fig, f"{prefix}_{name}.png")
        plt.close(fig)


def learning_curve_link(run_id: str, settings: Settings) -> dict[str, str]:
    """Where a trial's learning-curve PNG lives: its MLflow artifact URI and the MLflow UI page."""
    import mlflow

    info = mlflow.MlflowClient().get_run(run_id).info
    uri = tracking_uri_for_ui(settings)
    return {
        "artifact_uri": f"{info.artifact_uri.rstrip('/')}/{LEARNING_CURVE}",
        "url": tracking.ui_url(uri, f"experiments/{info.experiment_id}/runs/{run_id}/artifacts/{LEARNING_CURVE}"),
    }


def tracking_uri_for_ui(settings: Settings) -> str:
    """The MLflow UI's base URL: the tracking server when it is one, else the platform's mlflow port."""
    uri = tracking.tracking_uri(settings)
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.mlflow_port}"


def log_training(hist: dict[str, Any], family: str, i: int, workdir: Path) -> bool:
    """The trial's training record to MLflow: budget/steps/epochs/examples as metrics, the learning
    curve as ``curve_val_accuracy``/``curve_val_loss`` against ``step=`` and as a PNG. True when a
    curve was logged."""
    import mlflow

    for k in ("budget_seconds", "steps", "epochs", "examples_seen", "best_step", "best_val_accuracy"):
        if isinstance(hist.get(k), (int, float)) and not isinstance(hist.get(k), bool):
            mlflow.log_metric(k, float(hist[k]))
    if hist.get("stopped"):
        mlflow.set_tag("stopped", str(hist["stopped"]))
    curve = hist.get("curve") or {}
    for step, acc, loss in zip(
        curve.get("step", []), curve.get("val_accuracy", []), curve.get("val_loss", []), strict=False
    ):
        mlflow.log_metric("curve_val_accuracy", float(acc), step=int(step))
        if loss == loss:  # not NaN
            mlflow.log_metric("curve_val_loss", float(loss), step=int(step))
    png = plot_learning_curve(hist, workdir / f"curve{i}" / LEARNING_CURVE, f"{family} trial {i}")
    if png is None:
        return False
    mlflow.log_artifact(str(png))
    return True
