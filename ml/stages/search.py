"""Hyperparameter search per model family, tracked in MLflow: the middle of the comparison.

1. :func:`plan_comparison` checks the request (families, search space, sample sizes), opens the
   parent MLflow run every trial is nested under, and returns the *plan* (a small dict that the
   DAG passes between tasks).
2. :func:`search_family` runs one family's trials (one DAG task per family, mapped) against the
   family's budget (``budget_seconds`` of wall time per profile, shared by its trials): each trial
   fits on the family's training pool (all of it unless a sample size is asked for) with early
   stopping on the validation split carved from the training split (the same rows for every
   family; the held-out split is never seen), logs its learning curve (validation accuracy
   against steps: MLflow metric ``curve_val_accuracy`` with ``step=``, and ``learning_curve.png``)
   and is scored on that validation split.
   The best trial's model is logged to MLflow as a pyfunc and recorded in ``training_runs``.
3. :func:`evaluate_winners` scores every family's winner on the same held-out split.

The search spaces live in ``config/search_space.yaml`` (profiles quick and full).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ml import data as data_mod
from ml.platform.config import Settings, get_settings
from ml.store import models as store

log = logging.getLogger(__name__)

PROFILES = ("quick", "full")
SPEC_KEYS = {"method", "n_trials", "sample_size", "budget_seconds", "params", "fixed"}
LEARNING_CURVE = "learning_curve.png"


class SearchSpaceError(ValueError):
    """The search space or the comparison request is not usable; the message says why."""


# ---------------------------------------------------------------- search space
def load_search_space(settings: Settings | None = None) -> dict[str, Any]:
    s = settings or get_settings()
    path = s.search_space_file
    if not path.exists():
        raise SearchSpaceError(f"search space file not found: {path}")
    doc = yaml.safe_load(path.read_text()) or {}
    doc.setdefault("selection", {})
    doc.setdefault("timing", {})
    doc.setdefault("profiles", {})
    return doc


def _merge_spec(base: dict[str, Any], override: dict[str, Any], family: str) -> dict[str, Any]:
    unknown = set(override) - SPEC_KEYS
    if unknown:
        raise SearchSpaceError(
            f"search space override for {family}: unknown key(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}"
        )
    out = copy.deepcopy(base)
    for k, v in override.items():
        if k in ("params", "fixed"):
            if not isinstance(v, dict):
                raise SearchSpaceError(f"search space override for {family}: {k} must be an object")
            out.setdefault(k, {})
            for name, val in v.items():
                if k == "params":  # a searched value given alone means "just this one"
                    val = val if isinstance(val, (list, dict)) else [val]
                    out.setdefault("fixed", {}).pop(name, None)
                else:
                    out.get("params", {}).pop(name, None)
                out[k][name] = val
        else:
            out[k] = v
    return out


def family_spec(
    family: str,
    profile: str,
    override: dict[str, Any] | None = None,
    space: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The search spec of ``family`` in ``profile`` with ``override`` (``{family: {...}}``) merged over it."""
    space = space or load_search_space(settings)
    profiles = space["profiles"]
    if profile not in profiles:
        raise SearchSpaceError(f"unknown search profile {profile!r}; known: {', '.join(sorted(profiles))}")
    spec = copy.deepcopy((profiles[profile] or {}).get(family) or {"method": "grid", "params": {}})
    spec = _merge_spec(spec, (override or {}).get(family) or {}, family)
    spec.setdefault("method", "grid")
    spec.setdefault("params", {})
    spec.setdefault("fixed", {})
    if spec["method"] not in ("grid", "random"):
        raise SearchSpaceError(f"{family}: method must be grid or random, got {spec['method']!r}")
    if spec["method"] == "random" and not spec.get("n_trials"):
        raise SearchSpaceError(f"{family}: random search needs n_trials")
    return spec


def _draw(values: Any, rng: random.Random) -> Any:
    if isinstance(values, list):
        return rng.choice(values)
    lo, hi = values["low"], values["high"]
    if values.get("log"):
        v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        v = rng.uniform(lo, hi)
    return int(round(v)) if isinstance(lo, int) and isinstance(hi, int) else float(f"{v:.4g}")


def trials(spec: dict[str, Any], seed: int = 42) -> list[dict[str, Any]]:
    """The parameter sets to try (searched params over fixed ones), deterministic for a seed."""
    params, fixed = spec.get("params") or {}, spec.get("fixed") or {}
    n = spec.get("n_trials")
    if spec.get("method", "grid") == "grid":
        for k, v in params.items():
            if not isinstance(v, list):
                raise SearchSpaceError(f"grid search needs a list of values for {k!r}, got {v!r}")
        keys = list(params)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(params[k] for k in keys))]
        combos = combos[: int(n)] if n else combos
    else:
        rng = random.Random(seed)
        if not n:
            raise SearchSpaceError("random search needs n_trials")
        combos, seen = [], set()
        all_lists = all(isinstance(v, list) for v in params.values())
        space_size = math.prod(len(v) for v in params.values()) if all_lists else float("inf")
        attempts = 0
        while len(combos) < min(int(n), space_size) and attempts < 1000:
            attempts += 1
            c = {k: _draw(v, rng) for k, v in params.items()}
            key = json.dumps(c, sort_keys=True)
            if key not in seen:
                seen.add(key)
                combos.append(c)
    return [{**fixed, **c} for c in combos] or [dict(fixed)]


# ---------------------------------------------------------------- splits
def comparison_splits(snapshot_hash: str, space: dict[str, Any], s: Settings):
    """(snapshot, training pool, validation, held-out): the held-out split is the platform's usual
    one (``test_size``, ``seed``); validation is carved from the training split, the same for all."""
    snap = data_mod.get_snapshot(snapshot_hash, s)
    train_df, test_df = data_mod.split(snap.load(), s.test_size, s.seed)
    sel = space.get("selection", {})
    n_val = min(
        int(round(len(train_df) * float(sel.get("validation_fraction", 0.1)))),
        int(sel.get("validation_max_rows", 5000)),
    )
    n_val = max(n_val, 2)
    from sklearn.model_selection import train_test_split

    pool, val = train_test_split(train_df, test_size=n_val, random_state=s.seed, stratify=train_df["label"])
    return snap, pool.reset_index(drop=True), val.reset_index(drop=True), test_df


def selection_metric(space: dict[str, Any], s: Settings) -> str:
    return space.get("selection", {}).get("metric") or s.promotion_metric


# ---------------------------------------------------------------- 1. plan
def plan_comparison(
    snapshot_hash: str,
    families: list[str] | str | None = None,
    profile: str | None = None,
    sample_sizes: dict[str, int | None] | None = None,
    sample_size: int | None = None,
    search_space: dict[str, Any] | None = None,
    airflow_run_id: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Check the request and open the parent MLflow run. Sample size per family: ``sample_sizes``
    > ``sample_size`` > the profile's ``sample_size`` > all of the training pool."""
    import mlflow

    from ml import models
    from ml.platform import tracking

    s = settings or get_settings()
    profile = profile or s.comparison_profile
    if isinstance(families, str):
        families = [f.strip() for f in families.split(",") if f.strip()]
    families = list(dict.fromkeys(families or [s.default_family]))
    unknown = [f for f in families if f not in models.FAMILIES]
    if unknown:
        raise SearchSpaceError(
            f"unknown model family {', '.join(unknown)}; known: {', '.join(sorted(models.FAMILIES))}"
        )
    search_space = search_space or {}
    stray = set(search_space) - set(families)
    if stray:
        raise SearchSpaceError(f"search space override names families not compared: {sorted(stray)}")
    stray = set(sample_sizes or {}) - set(families)
    if stray:
        raise SearchSpaceError(f"sample sizes name families not compared: {sorted(stray)}")
    space = load_search_space(s)
    specs: dict[str, Any] = {}
    sizes: dict[str, int | None] = {}
    for fam in families:
        spec = family_spec(fam, profile, search_space, space)
        for params in trials(spec, s.seed):  # fail fast on unknown hyperparameters
            models.create(fam, **params)
        specs[fam] = spec
        n = (sample_sizes or {}).get(fam, sample_size if sample_size is not None else spec.get("sample_size"))
        if n is not None and int(n) < 20:
            raise SearchSpaceError(f"sample size for {fam} must be at least 20, got {n}")
        sizes[fam] = int(n) if n else None
    snap = data_mod.get_snapshot(snapshot_hash, s)

    tracking.configure(s)
    commit = tracking.git_commit()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(s.experiment_name)
    if exp is None:  # tracking.configure created it; a concurrent deletion is the only way here
        raise SearchSpaceError(f"MLflow experiment {s.experiment_name!r} does not exist")
    run = client.create_run(
        exp.experiment_id,
        run_name=f"comparison-{profile}-{snap.hash[:8]}",
        tags={
            "kind": "comparison",
            "dataset_hash": snap.hash,
            "git_commit": commit,
            "profile": profile,
            "families": ",".join(families),
            **({"airflow_run_id": airflow_run_id} if airflow_run_id else {}),
        },
    )
    parent = run.info.run_id
    client.log_param(parent, "families", ",".join(families))
    client.log_param(parent, "profile", profile)
    client.log_param(parent, "sample_sizes", json.dumps(sizes))
    client.log_param(parent, "selection_metric", selection_metric(space, s))
    client.log_dict(
        parent,
        {"profile": profile, "families": specs, "selection": space["selection"], "timing": space["timing"]},
        "search_space.json",
    )
    plan = {
        "parent_run_id": parent,
        "snapshot_hash": snap.hash,
        "families": families,
        "profile": profile,
        "sample_sizes": sizes,
        "search_space": search_space,
        "airflow_run_id": airflow_run_id,
    }
    log.info(
        "comparison %s on snapshot %s: %s (profile %s, samples %s)",
        parent,
        snap.hash[:16],
        ", ".join(f"{f} ({len(trials(specs[f], s.seed))} trials)" for f in families),
        profile,
        sizes,
    )
    return plan


# ---------------------------------------------------------------- 2. search one family
def _log_plots(metrics: dict[str, Any], y, proba, prefix: str) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    from ml.evaluation.evaluate import plot_confusion, plot_roc

    for fig, name in (
        (plot_confusion(metrics["confusion_matrix"], f"{prefix} confusion matrix"), "confusion_matrix"),
        (plot_roc(y, proba, f"{prefix} ROC"), "roc_curve"),
    ):
        mlflow.log_figure(fig, f"{prefix}_{name}.png")
        plt.close(fig)


def learning_curve_link(run_id: str, s: Settings) -> dict[str, str]:
    """Where a trial's learning-curve PNG lives: its MLflow artifact URI and the MLflow UI page."""
    import mlflow

    info = mlflow.MlflowClient().get_run(run_id).info
    uri = tracking_uri_for_ui(s)
    return {
        "artifact_uri": f"{info.artifact_uri.rstrip('/')}/{LEARNING_CURVE}",
        "url": f"{uri}/#/experiments/{info.experiment_id}/runs/{run_id}/artifacts/{LEARNING_CURVE}",
    }


def tracking_uri_for_ui(s: Settings) -> str:
    """The MLflow UI's base URL: the tracking server when it is one, else the platform's mlflow port."""
    from ml.platform import tracking

    uri = tracking.tracking_uri(s)
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
    return f"http://{host}:{s.mlflow_port}"


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


def _log_training(hist: dict[str, Any], family: str, i: int, workdir: Path) -> bool:
    """The trial's training record to MLflow: budget/steps/epochs/examples as metrics, the learning
    curve as ``curve_val_accuracy``/``curve_val_loss`` against ``step=`` and as a PNG. True when a
    curve was logged."""
    import mlflow

    from ml.models.base import plot_learning_curve

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


def _run_trial(
    family: str,
    params: dict[str, Any],
    i: int,
    n: int,
    plan: dict[str, Any],
    train_df,
    val_df,
    timing: dict[str, Any],
    metric: str,
    commit: str,
    workdir: Path,
    s: Settings,
    budget_seconds: float | None = None,
) -> dict[str, Any]:
    import mlflow

    from ml import models
    from ml.evaluation.evaluate import (
        METRICS,
        compute_metrics,
        dir_size_mb,
        inference_ms_per_tweet,
    )

    model = models.create(family, **params)
    if "seed" in model.params and "seed" not in params:
        model.params["seed"] = s.seed
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
                "seed": s.seed,
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
        has_curve = _log_training(hist, family, i, workdir)
        _log_plots(m, y, proba, "validation")
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


def search_family(plan: dict[str, Any], family: str, settings: Settings | None = None) -> dict[str, Any]:
    """Run ``family``'s trials; log each as an MLflow run nested under the comparison; log the best
    trial's model (pyfunc) and record it in ``training_runs``. Returns the winner (small dict)."""
    import mlflow

    from ml import models
    from ml.platform import db, registry, tracking

    s = settings or get_settings()
    if family not in plan["families"]:
        raise SearchSpaceError(f"{family} is not part of this comparison ({plan['families']})")
    space = load_search_space(s)
    spec = family_spec(family, plan["profile"], plan.get("search_space"), space)
    todo = trials(spec, s.seed)
    metric = selection_metric(space, s)
    snap, pool, val_df, _ = comparison_splits(plan["snapshot_hash"], space, s)
    train_df = data_mod.stratified_sample(pool, plan["sample_sizes"].get(family), s.seed)
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
    t_search = time.perf_counter()
    best: dict[str, Any] | None = None
    failures: list[str] = []
    used = 0.0  # wall time of the fits so far: what the budget pays for
    skipped = 0
    with tempfile.TemporaryDirectory(prefix=f"search-{family}-") as tmp:
        for i, params in enumerate(todo):
            trial_budget = None
            if budget is not None:  # what is left, shared by the trials still to run
                left = budget - used
                if left < max(1.0, 0.1 * budget / len(todo)) and best is not None:
                    skipped = len(todo) - i
                    log.info(
                        "%s: budget of %.0fs spent (%.0fs used): %d trial(s) not run", family, budget, used, skipped
                    )
                    break
                trial_budget = max(left, 1.0) / (len(todo) - i)
            t_trial = time.perf_counter()
            try:
                r = _run_trial(
                    family,
                    params,
                    i,
                    len(todo),
                    plan,
                    train_df,
                    val_df,
                    space["timing"],
                    metric,
                    commit,
                    Path(tmp),
                    s,
                    trial_budget,
                )
            except Exception as e:  # one broken trial does not sink the search
                used += time.perf_counter() - t_trial  # a failed trial's time is spent too
                log.exception("%s trial %d failed", family, i + 1)
                failures.append(f"trial {i}: {type(e).__name__}: {e}")
                active = mlflow.active_run()
                if active is not None:
                    mlflow.end_run("FAILED")
                continue
            used += r["training_seconds"]
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
            _clear_framework_state(family)
        if best is None:
            raise RuntimeError(f"every {family} trial failed: {'; '.join(failures)}")
        search_seconds = time.perf_counter() - t_search
        model = models.load(best["dir"])
        with mlflow.start_run(run_id=best["run_id"]):
            info = registry.log_model(model)
            mlflow.set_tags({"model_uri": info.model_uri, "search_winner": "true", "stage": "candidate"})
            mlflow.log_metric("search_seconds", search_seconds)
    client = mlflow.MlflowClient()
    client.log_metric(plan["parent_run_id"], f"{family}.best_val_{metric}", best["val"][metric])
    client.set_tag(plan["parent_run_id"], f"winner.{family}", best["run_id"])
    with db.connect(s) as conn:
        store.insert_run(
            conn,
            best["run_id"],
            snap.hash,
            family,
            best["full_params"],
            commit,
            plan.get("airflow_run_id"),
            plan["parent_run_id"],
        )
    tr = best["training"]
    winner = {
        "family": family,
        "run_id": best["run_id"],
        "params": best["params"],
        "full_params": best["full_params"],
        "val": best["val"],
        "selection_metric": metric,
        "training_seconds": round(best["training_seconds"], 2),
        "search_seconds": round(search_seconds, 2),
        "n_trials": len(todo) - skipped,
        "failed_trials": len(failures),
        "skipped_trials": skipped,
        "sample_size": len(train_df),
        "model_size_mb": best["model_size_mb"],
        # the budget: the family's, what its trials' fits used, and what the best trial did with its share
        "budget_seconds": budget,
        "budget_used_seconds": round(used, 2),
        "trial_budget_seconds": round(best["trial_budget_seconds"], 2) if best["trial_budget_seconds"] else None,
        "epochs": tr.get("epochs"),
        "steps": tr.get("steps"),
        "examples_seen": tr.get("examples_seen"),
        "stopped": tr.get("stopped"),
        "best_step": tr.get("best_step"),
        "learning_curve": learning_curve_link(best["run_id"], s) if best["has_curve"] else None,
    }
    log.info(
        "%s: best of %d trial(s) is %s (val %s %.4f; %s steps, %s epochs, %s examples, stopped: %s) after "
        "%.1fs (fits %.1fs of a %s budget)",
        family,
        len(todo) - skipped,
        best["run_id"],
        metric,
        best["val"][metric],
        tr.get("steps"),
        tr.get("epochs"),
        tr.get("examples_seen"),
        tr.get("stopped"),
        search_seconds,
        used,
        f"{budget:.0f}s" if budget else "no",
    )
    return winner


def _clear_framework_state(family: str) -> None:
    """Free what a finished trial left in the framework's globals (memory stays bounded)."""
    import gc
    import sys

    if family in ("cnn", "bilstm") and "keras" in sys.modules:
        import keras

        keras.backend.clear_session()
    gc.collect()


# ---------------------------------------------------------------- 3. held-out evaluation of the winners
def evaluate_winners(
    plan: dict[str, Any], winners: list[dict[str, Any]], settings: Settings | None = None
) -> list[dict[str, Any]]:
    """Score every family's winner (and the champion, once) on the same held-out split; returns one
    row per family for the comparison table."""
    from ml.stages import train

    s = settings or get_settings()
    cache: dict[str, Any] = {}
    rows = []
    for w in sorted(winners, key=lambda w: plan["families"].index(w["family"])):
        m = train.evaluate(w["run_id"], s, champion_cache=cache)
        rows.append(
            {
                **{k: v for k, v in w.items() if k not in ("val",)},
                "accuracy": m["accuracy"],
                "precision": m["precision"],
                "recall": m["recall"],
                "f1": m["f1"],
                "roc_auc": m["roc_auc"],
                "inference_ms_per_tweet": m["inference_ms_per_tweet"],
                "n_test": m["n"],
                **{f"val_{k}": v for k, v in w["val"].items()},
            }
        )
    if cache.get("metrics"):
        rows_champion = cache["metrics"]
        for r in rows:
            r["champion_version"] = rows_champion.get("version")
            r["champion_accuracy"] = rows_champion.get("accuracy")
    return rows
