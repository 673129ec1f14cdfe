"""Step 2 of the comparison: one family's search (one mapped DAG task per family). Its trials share
the family's ``budget_seconds`` of fit time; the best one is logged as a pyfunc and recorded in
``training_runs``."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml import models
from ml.data.splits import stratified_sample
from ml.models.calibration import SPLIT_MIN_ROWS
from ml.platform import db, registry, tracking
from ml.platform.config import Settings, get_settings
from ml.stages.search import SearchSpaceError
from ml.stages.search.curves import learning_curve_link
from ml.stages.search.plan import ComparisonPlan
from ml.stages.search.space import family_spec, load_search_space, selection_metric, trials
from ml.stages.search.splits import comparison_splits
from ml.stages.search.trial import clear_framework_state, run_trial
from ml.stages.train import fit_calibration, log_training_datasets
from ml.store import training_runs as store

log = logging.getLogger(__name__)


def search_family(plan: ComparisonPlan, family: str, settings: Settings | None = None) -> dict[str, Any]:
    """Run ``family``'s trials; log each as an MLflow run nested under the comparison; log the best
    trial's model (pyfunc) and record it in ``training_runs``. Returns the winner (small dict)."""
    s = settings or get_settings()
    if family not in plan["families"]:
        raise SearchSpaceError(f"{family} is not part of this comparison ({plan['families']})")
    space = load_search_space(s)
    spec = family_spec(family, plan["profile"], plan.get("search_space"), space)
    todo = trials(spec, s.seed)
    metric = selection_metric(space, s)
    snap, pool, val_df, _ = comparison_splits(plan["snapshot_hash"], space, s)
    train_df = stratified_sample(pool, plan["sample_sizes"].get(family), s.seed)
    tracking.configure(s)
    commit = tracking.git_commit()
    log.info(
        "searching %s: %d trial(s), %s training tweets, %s validation tweets",
        family,
        len(todo),
        f"{len(train_df):,}",
        f"{len(val_df):,}",
    )
    budget = float(spec["budget_seconds"]) if spec.get("budget_seconds") else None
    search = _Search(family, plan, todo, metric, commit, snap, train_df, val_df, space["timing"], budget)
    t_search = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"search-{family}-") as tmp:
        best = _run_trials(search, Path(tmp), s)
        search_seconds = time.perf_counter() - t_search
        _log_winner_model(search, best, search_seconds, s)
    _record_winner(search, best, s)
    winner = _winner_summary(search, best, search_seconds, s)
    tr = best["training"]
    log.info(
        "%s: best of %d trial(s) is %s (val %s %.4f; %s steps, %s epochs, %s examples, stopped: %s) after "
        "%.1fs (fits %.1fs of a %s budget)",
        family,
        len(todo) - search.skipped,
        best["run_id"],
        metric,
        best["val"][metric],
        tr.get("steps"),
        tr.get("epochs"),
        tr.get("examples_seen"),
        tr.get("stopped"),
        search_seconds,
        search.used,
        f"{budget:.0f}s" if budget else "no",
    )
    return winner


@dataclass
class _Search:
    """One family's search: its trials, data and budget, and what the trials left (best, failures, time)."""

    family: str
    plan: ComparisonPlan
    todo: list[dict[str, Any]]
    metric: str
    commit: str
    snap: Any
    train_df: Any
    val_df: Any
    timing: dict[str, Any]
    budget: float | None
    failures: list[str] = field(default_factory=list)
    used: float = 0.0  # wall time of the fits so far: what the budget pays for
    skipped: int = 0


def _run_trials(search: _Search, tmp: Path, settings: Settings) -> dict[str, Any]:
    """Run the trials on their shares of the budget; keep the best trial's model folder, return it."""
    import mlflow

    family, todo, budget, metric = search.family, search.todo, search.budget, search.metric
    best: dict[str, Any] | None = None
    for i, params in enumerate(todo):
        trial_budget = None
        if budget is not None:  # what is left, shared by the trials still to run
            left = budget - search.used
            if left < max(1.0, 0.1 * budget / len(todo)) and best is not None:
                search.skipped = len(todo) - i
                log.info(
                    "%s: budget of %.0fs spent (%.0fs used): %d trial(s) not run",
                    family,
                    budget,
                    search.used,
                    search.skipped,
                )
                break
            trial_budget = max(left, 1.0) / (len(todo) - i)
        t_trial = time.perf_counter()
        try:
            r = run_trial(
                family,
                params,
                i,
                len(todo),
                search.plan,
                search.train_df,
                search.val_df,
                search.timing,
                metric,
                search.commit,
                tmp,
                settings,
                trial_budget,
            )
        except Exception as e:  # one broken trial does not sink the search
            search.used += time.perf_counter() - t_trial  # a failed trial's time is spent too
            log.exception("%s trial %d failed", family, i + 1)
            search.failures.append(f"trial {i}: {type(e).__name__}: {e}")
            active = mlflow.active_run()
            if active is not None:
                mlflow.end_run("FAILED")
            continue
        search.used += r["training_seconds"]
        better = best is None or (r["val"][metric], -r["inference_ms_per_tweet"]) > (
            best["val"][metric],
            -best["inference_ms_per_tweet"],
        )
        if better:
            if best is not None:
                shutil.rmtree(best["dir"], ignore_errors=True)
            best = r
        else:
            shutil.rmtree(r["dir"], ignore_errors=True)
        clear_framework_state(family)
    if best is None:
        raise RuntimeError(f"every {family} trial failed: {'; '.join(search.failures)}")
    return best


def _log_winner_model(search: _Search, best: dict[str, Any], search_seconds: float, settings: Settings) -> None:
    """Calibrate the best trial's model and log it (pyfunc) and its datasets on the trial's run."""
    import mlflow

    val_df = search.val_df
    model = models.load(best["dir"])
    with mlflow.start_run(run_id=best["run_id"]):
        # calibrated on the validation split (early stopping watched it, training never fit it; the gate's
        # held-out split stays untouched); too few rows: uncalibrated
        fit_calibration(
            model,
            val_df if len(val_df) >= SPLIT_MIN_ROWS else None,
            settings.calibration,
            "the comparison's validation split, carved from the training split",
        )
        info = registry.log_model(model)
        mlflow.set_tags({"model_uri": info.model_uri, "search_winner": "true", "stage": "candidate"})
        log_training_datasets(
            best["run_id"],
            search.snap,
            search.train_df,
            val_df,
            search.plan["sample_sizes"].get(search.family),
            "the comparison's validation split, carved from the training split (search space: selection)",
            "search-validation",
        )
        mlflow.log_metric("search_seconds", search_seconds)


def _record_winner(search: _Search, best: dict[str, Any], settings: Settings) -> None:
    """Name the winner on the comparison's run and record it in ``training_runs``."""
    import mlflow

    plan, family = search.plan, search.family
    client = mlflow.MlflowClient()
    client.log_metric(plan["parent_run_id"], f"{family}.best_val_{search.metric}", best["val"][search.metric])
    client.set_tag(plan["parent_run_id"], f"winner.{family}", best["run_id"])
    with db.connect(settings) as conn:
        store.insert_run(
            conn,
            best["run_id"],
            search.snap.hash,
            family,
            best["full_params"],
            search.commit,
            plan.get("airflow_run_id"),
            plan["parent_run_id"],
        )


def _winner_summary(search: _Search, best: dict[str, Any], search_seconds: float, settings: Settings) -> dict[str, Any]:
    """The winner as the comparison gets it: params, scores, trials, budget and training record."""
    tr = best["training"]
    return {
        "family": search.family,
        "run_id": best["run_id"],
        "params": best["params"],
        "full_params": best["full_params"],
        "val": best["val"],
        "selection_metric": search.metric,
        "training_seconds": round(best["training_seconds"], 2),
        "search_seconds": round(search_seconds, 2),
        "n_trials": len(search.todo) - search.skipped,
        "failed_trials": len(search.failures),
        "skipped_trials": search.skipped,
        "sample_size": len(search.train_df),
        "model_size_mb": best["model_size_mb"],
        # the budget: the family's, what its trials' fits used, and what the best trial did with its share
        "budget_seconds": search.budget,
        "budget_used_seconds": round(search.used, 2),
        "trial_budget_seconds": round(best["trial_budget_seconds"], 2) if best["trial_budget_seconds"] else None,
        "epochs": tr.get("epochs"),
        "steps": tr.get("steps"),
        "examples_seen": tr.get("examples_seen"),
        "stopped": tr.get("stopped"),
        "best_step": tr.get("best_step"),
        "learning_curve": learning_curve_link(best["run_id"], settings) if best["has_curve"] else None,
    }
