"""One trial: fit a family's model with one parameter set against its share of the budget, score it
on the validation split, and log it as an MLflow run nested under the comparison."""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml import models
from ml.evaluation.evaluate import METRICS, compute_metrics, dir_size_mb, inference_ms_per_tweet
from ml.platform.config import Settings
from ml.stages.search.curves import log_plots, log_training
from ml.stages.search.plan import ComparisonPlan

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TRAINING_KEYS = (
    "budget_seconds",
    "seconds",
    "steps",
    "epochs",
    "examples_seen",
    "n_train",
    "stopped",
    "best_step",
    "best_val_accuracy",
)


def run_trial(
    family: str,
    params: dict[str, Any],
    i: int,
    n: int,
    plan: ComparisonPlan,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    timing: dict[str, Any],
    metric: str,
    commit: str,
    workdir: Path,
    settings: Settings,
    budget_seconds: float | None = None,
) -> dict[str, Any]:
    import mlflow

    model = models.create(family, **params)
    if "seed" in model.params and "seed" not in params:
        model.params["seed"] = settings.seed
    tags = {
        "mlflow.parentRunId": plan["parent_run_id"],
        "kind": "trial",
        "family": family,
        "trial": str(i),
        "dataset_hash": plan["snapshot_hash"],
        "git_commit": commit,
        **({"airflow_run_id": plan["airflow_run_id"]} if plan.get("airflow_run_id") else {}),
    }
    with mlflow.start_run(run_name=f"{family}-trial{i}", tags=tags) as run:
        mlflow.log_params(
            {
                "family": family,
                "trial": i,
                "sample_size": plan["sample_sizes"].get(family) or "all",
                "n_train": len(train_df),
                "n_validation": len(val_df),
                "seed": settings.seed,
                **{f"model.{k}": v for k, v in model.get_params().items()},
            }
        )
        log.info(
            "%s trial %d/%d: %s (budget %s)",
            family,
            i + 1,
            n,
            json.dumps(params, default=str),
            f"{budget_seconds:.0f}s" if budget_seconds else "none",
        )
        texts, y = val_df["text"].tolist(), val_df["label"].to_numpy()
        t0 = time.perf_counter()
        model.fit(
            train_df["text"].tolist(),
            train_df["label"].to_numpy(),
            validation=(texts, y),
            budget_seconds=budget_seconds,
        )
        seconds = time.perf_counter() - t0
        proba = model.predict_proba(texts)
        m = compute_metrics(y, proba)
        ms = inference_ms_per_tweet(
            model, texts, batch=int(timing.get("batch", 500)), repeats=int(timing.get("repeats", 3))
        )
        path = model.save(workdir / f"trial{i}")
        size = round(dir_size_mb(path), 3)
        mlflow.log_metrics(
            {
                **{f"val_{k}": m[k] for k in METRICS},
                "inference_ms_per_tweet": ms,
                "model_size_mb": size,
                "training_seconds": seconds,
            }
        )
        hist = getattr(model, "history_", None) or {}
        has_curve = log_training(hist, family, i, workdir)
        log_plots(m, y, proba, "validation")
        mlflow.log_dict({"validation": m, "history": hist}, "trial.json")
        log.info(
            "%s trial %d/%d: val %s %.4f, f1 %.4f, auc %.4f, fit %.1fs, %.3f ms/tweet, %.1f MB",
            family,
            i + 1,
            n,
            metric,
            m[metric],
            m["f1"],
            m["roc_auc"],
            seconds,
            ms,
            size,
        )
        return {
            "run_id": run.info.run_id,
            "params": params,
            "full_params": model.get_params(),
            "dir": str(path),
            "val": {k: m[k] for k in METRICS},
            "inference_ms_per_tweet": ms,
            "model_size_mb": size,
            "training_seconds": seconds,
            "trial_budget_seconds": budget_seconds,
            "training": {k: hist.get(k) for k in TRAINING_KEYS},
            "has_curve": has_curve,
        }


def clear_framework_state(family: str) -> None:
    """Free what a finished trial left in the framework's globals (memory stays bounded)."""
    if family in ("cnn", "bilstm") and "keras" in sys.modules:
        import keras

        keras.backend.clear_session()
    gc.collect()
