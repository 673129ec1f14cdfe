"""The challenger stages of ``sentiment_retraining``: train it (:func:`train_challenger`), score it
beside the champion (:func:`evaluate`), then the promotion gate or shadow (``ml.stages.promotion.promote_challenger``), and every
stage in one process (:func:`run_retraining`)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from ml import models
from ml.data.snapshots import get_snapshot
from ml.evaluation.stats import paired_comparison
from ml.models.base import Scorer, decide
from ml.platform import db, registry, tracking
from ml.platform.config import Settings, get_settings
from ml.stages import compare, promotion, train
from ml.stages.retraining import RetrainingError
from ml.stages.retraining.records import get_retraining, mark_failed, update_retraining
from ml.stages.retraining.training_set import prepare
from ml.stages.retraining.trigger import champion_context
from ml.store import retrainings as store
from ml.store import training_runs as training_runs_store

log = logging.getLogger(__package__)  # the stage's logger, as before the split into modules


def _champion_family_params(r: dict[str, Any], settings: Settings) -> tuple[str, dict[str, Any]]:
    ctx = champion_context(settings, version=r["champion_before"])
    if ctx is None:
        raise RetrainingError(f"no champion context for v{r['champion_before']} of {settings.model_name}")
    family, params = ctx.family, dict(ctx.params)
    if not family or not params:
        m = registry.load_version(r["champion_before"], settings)
        family, params = m.family, m.get_params()
    known = models.family_class(family).default_params()
    return family, {k: v for k, v in params.items() if k in known}


def train_challenger(
    retraining_id: Any,
    mode: str | None = None,
    families: list[str] | None = None,
    hyperparams: dict[str, Any] | None = None,
    sample_size: int | None = None,
    profile: str | None = None,
    airflow_run_id: str | None = None,
    settings: Settings | None = None,
    render: compare.Render | None = None,
) -> str:
    """Train the challenger on the retraining snapshot: the champion's family and params (``mode``
    champion, the default) or a comparison of ``families`` (``mode`` compare; default: every family in
    ``ml.models.FAMILIES``; ``render``, the comparison's renderer ``ml.views.comparison.render``, is then
    needed: a stage never imports views). Returns its MLflow run id."""
    import mlflow

    s = settings or get_settings()
    rid = int(retraining_id)
    r = get_retraining(rid, s)
    if not r or not r["snapshot_hash"]:
        raise RetrainingError(f"retraining #{rid} has no training set yet: run prepare first")
    if r["run_id"]:  # a re-run (cleared DAG run, `ml retrain` again): its challenger exists, no second version
        log.info("retraining #%s: challenger already trained (MLflow run %s), not training another", rid, r["run_id"])
        return r["run_id"]
    mode = mode or s.retraining_mode
    if mode == "compare" and render is None:  # a caller's mistake: before the retraining says "training"
        raise ValueError("mode 'compare' needs the comparison's renderer (ml.views.comparison.render)")
    update_retraining(rid, s, status="training", mode=mode)
    if mode == "champion":
        family, params = _champion_family_params(r, s)
        params.update(hyperparams or {})
        run_id = train.train(r["snapshot_hash"], family, params, sample_size, airflow_run_id, s)
    elif mode == "compare" and render is not None:
        families = list(families or models.FAMILIES)  # all of them unless told (the DAG's default too)
        result = compare.run_comparison(
            snapshot_hash=r["snapshot_hash"],
            families=families,
            profile=profile,
            sample_size=sample_size,
            search_space=None,
            settings=s,
            render=render,
        )
        run_id = compare.register_best(result, s)
    else:
        raise ValueError(f"mode must be 'champion' or 'compare', got {mode!r}")
    tracking.configure(s)
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tags(
            {"retraining_id": str(rid), "retraining_reason": r["reason"], "parent_dataset_hash": r["base_snapshot"]}
        )
    update_retraining(rid, s, run_id=run_id, status="trained")
    return run_id


def evaluate(retraining_id: Any, run_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """Challenger and champion on the SAME held-out set (``ml.stages.train.evaluate``, used to promote) and on
    the reported tweets (held-out part and, in-sample for the challenger, the trained part)."""
    import mlflow

    s = settings or get_settings()
    rid = int(retraining_id)
    r = get_retraining(rid, s)
    held = train.evaluate(run_id, s)
    with db.connect(s) as conn:
        champion_metrics = store.champion_metrics_of(conn, run_id)
        if r is None:
            raise RetrainingError(f"no retraining #{rid}")
        reported = store.reported_texts(conn, r["training_feedback_ids"] or [])
    snap = get_snapshot(r["snapshot_hash"], s)
    frame = snap.load()
    parts = (
        pd.read_parquet(frame.attrs["split_path"])
        if frame.attrs.get("split_path")
        else pd.DataFrame({"text": [], "part": []})
    )
    excluded = set(parts.loc[parts["part"] == "excluded", "text"])
    held_out_texts = set(parts.loc[parts["part"] == "test", "text"])  # reported or not: scored in (a) only
    labels = dict(zip(frame["text"], frame["label"].astype(int)))
    challenger = train.load_run_model(run_id)
    champ_version = (champion_metrics or {}).get("version") or r["champion_before"]
    champion = registry.load_version(int(champ_version), s)

    def acc(model: Scorer, ts: list[str]) -> float | None:
        if not ts:
            return None
        pred = decide(np.asarray(model.predict_proba(ts))[:, 1])
        return float(np.mean(pred == np.array([labels[t] for t in ts])))

    eval_texts = sorted(t for t in reported if t in excluded and t in labels)
    # (b) of the gate: the reported tweets neither model trained on, paired; recorded, not a criterion
    reported_vs = None
    if eval_texts:
        ey = np.array([labels[t] for t in eval_texts])
        reported_vs = paired_comparison(
            ey,
            decide(np.asarray(challenger.predict_proba(eval_texts))[:, 1]),
            decide(np.asarray(champion.predict_proba(eval_texts))[:, 1]),
            s.promotion_confidence,
        )
    train_texts = sorted(t for t in reported if t not in excluded and t not in held_out_texts and t in labels)
    keys = ("accuracy", "precision", "recall", "f1", "roc_auc")
    metrics: dict[str, dict[str, Any]] = {
        "held_out": {
            "n": held.get("n"),
            "challenger": {k: held[k] for k in keys if k in held},
            "champion": {k: champion_metrics[k] for k in keys} if champion_metrics else None,
            "champion_version": int(champ_version),
        },
        "reported_eval": {
            "n": len(eval_texts),
            "challenger_accuracy": acc(challenger, eval_texts),
            "champion_accuracy": acc(champion, eval_texts),
            "note": "reported tweets held out of training (neither model saw them)",
        },
        "reported_train": {
            "n": len(train_texts),
            "challenger_accuracy": acc(challenger, train_texts),
            "champion_accuracy": acc(champion, train_texts),
            "note": "reported tweets the challenger trained on: in-sample for it",
        },
    }
    tracking.configure(s)
    with mlflow.start_run(run_id=run_id):
        logged: dict[str, float] = {"reported_eval_n": len(eval_texts), "reported_train_n": len(train_texts)}
        for part in ("reported_eval", "reported_train"):
            if metrics[part]["challenger_accuracy"] is not None:
                logged[f"{part}_accuracy"] = metrics[part]["challenger_accuracy"]
                logged[f"champion_{part}_accuracy"] = metrics[part]["champion_accuracy"]
        mlflow.log_metrics(logged)
        mlflow.log_dict(metrics, "retraining_metrics.json")
    with db.connect(s) as conn:
        evidence = training_runs_store.run_gate(conn, run_id) or {}
    gate_record = {
        **evidence,
        "reported_eval": {
            "n": len(eval_texts),
            "vs_champion": reported_vs,
            "criterion": False,
            "note": "reported tweets held out of training (retraining_report_eval_fraction): compared, recorded, "
            "not used to promote",
        },
    }
    update_retraining(rid, s, metrics=metrics, status="evaluated", gate=gate_record)
    log.info(
        "retraining #%s: held-out %s challenger %.4f vs champion v%s %s; reported-eval (n=%s) %s vs %s",
        rid,
        s.promotion_metric,
        held[s.promotion_metric],
        champ_version,
        f"{champion_metrics[s.promotion_metric]:.4f}" if champion_metrics else "n/a",
        len(eval_texts),
        metrics["reported_eval"]["challenger_accuracy"],
        metrics["reported_eval"]["champion_accuracy"],
    )
    return metrics


def run_retraining(
    retraining_id: Any = None,
    mode: str | None = None,
    families: list[str] | None = None,
    hyperparams: dict[str, Any] | None = None,
    sample_size: int | None = None,
    settings: Settings | None = None,
    render: compare.Render | None = None,
) -> dict[str, Any]:
    """Every stage of the DAG in this process (``ml retrain``, the benchmark, tests); ``render``: as
    :func:`train_challenger`'s."""
    s = settings or get_settings()
    prep = prepare(retraining_id, settings=s)
    rid = prep["retraining_id"]
    try:
        run_id = train_challenger(rid, mode, families, hyperparams, sample_size, settings=s, render=render)
        metrics = evaluate(rid, run_id, s)
        train.register(run_id, s)
        if s.behaviour_checks:
            train.check_behaviour(run_id, s)
        result = promotion.promote_challenger(rid, run_id, s)
    except Exception as e:
        mark_failed(rid, f"{type(e).__name__}: {e}", s)
        raise
    return {**result, "run_id": run_id, "metrics": metrics, "snapshot_hash": prep["snapshot_hash"]}
