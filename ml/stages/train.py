"""Training, evaluation, registration and promotion (behaviour gate + promotion rule) of one
candidate: stages of the ``sentiment_training`` DAG (whose search and comparison live in
``ml.stages.search`` / ``ml.stages.compare``), each also an ``ml`` CLI command.

Tasks pass only small values (snapshot hash, MLflow run id, version) between them;
models travel through MLflow.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from ml.data.snapshots import get_snapshot
from ml.data.splits import split, stratified_sample
from ml.platform.config import Settings, get_settings
from ml.store import models as store

log = logging.getLogger(__name__)


def _split_for(snapshot_hash: str, s: Settings):
    snap = get_snapshot(snapshot_hash, s)
    frame = snap.load()
    train_df, test_df = split(frame, s.test_size, s.seed)
    return snap, train_df, test_df


def train(
    snapshot_hash: str,
    family: str | None = None,
    params: dict[str, Any] | None = None,
    sample_size: int | None = None,
    airflow_run_id: str | None = None,
    settings: Settings | None = None,
) -> str:
    """Fit one model on the snapshot's training split (optionally a stratified sample of it),
    log it to MLflow with params, dataset hash and git commit. Returns the MLflow run id."""
    import mlflow

    from ml import models
    from ml.platform import db, registry, tracking

    s = settings or get_settings()
    family = family or s.default_family
    params = dict(params or {})
    model = models.create(family, **params)  # fails fast on unknown family/params
    snap, train_df, test_df = _split_for(snapshot_hash, s)
    train_df = stratified_sample(train_df, sample_size, s.seed)
    tracking.configure(s)
    commit = tracking.git_commit()
    log.info("training %s on %s tweets (snapshot %s)", family, f"{len(train_df):,}", snap.hash[:16])
    with mlflow.start_run(run_name=f"{family}-{snap.hash[:8]}") as run:
        mlflow.set_tags(
            {
                "dataset_hash": snap.hash,
                "git_commit": commit,
                "family": family,
                "stage": "candidate",
                **({"airflow_run_id": airflow_run_id} if airflow_run_id else {}),
            }
        )
        mlflow.log_params(
            {
                "family": family,
                "sample_size": sample_size or "all",
                "n_train": len(train_df),
                "n_test": len(test_df),
                "seed": s.seed,
                "test_size": s.test_size,
                **{f"model.{k}": v for k, v in model.get_params().items()},
            }
        )
        t0 = time.perf_counter()
        model.fit(train_df["text"].tolist(), train_df["label"].to_numpy())
        seconds = time.perf_counter() - t0
        mlflow.log_metric("training_seconds", seconds)
        with tempfile.TemporaryDirectory() as tmp:
            from ml.evaluation.evaluate import dir_size_mb

            mlflow.log_metric("model_size_mb", dir_size_mb(model.save(Path(tmp) / "m")))
        info = registry.log_model(model)
        mlflow.set_tag("model_uri", info.model_uri)
        run_id = run.info.run_id
    with db.connect(s) as conn:
        store.insert_run(conn, run_id, snap.hash, family, model.get_params(), commit, airflow_run_id)
    log.info("trained %s in %.1fs -> MLflow run %s", family, seconds, run_id)
    return run_id


def load_run_model(run_id: str):
    import mlflow

    uri = mlflow.MlflowClient().get_run(run_id).data.tags["model_uri"]
    return mlflow.pyfunc.load_model(uri).unwrap_python_model().model


def evaluate(run_id: str, settings: Settings | None = None, champion_cache: dict | None = None) -> dict[str, Any]:
    """Score the run's model and the current champion on the same held-out split (and, when
    ``external_eval_path`` is set, on that file: ``metrics["external"]`` with the paired comparison
    against the champion in ``["vs_champion"]``); log metrics, confusion matrix and ROC curve to
    the run; store both in PostgreSQL.

    ``champion_cache`` (a dict shared across calls on the same snapshot) scores the champion once
    when several candidates are evaluated in a row (the comparison's family winners)."""
    import mlflow
    import numpy as np

    from ml.evaluation import external, gate
    from ml.evaluation.evaluate import (
        METRICS,
        compute_metrics,
        inference_ms_per_tweet,
        plot_confusion,
        plot_roc,
    )
    from ml.evaluation.stats import paired_comparison
    from ml.platform import db, registry, tracking

    s = settings or get_settings()
    tracking.configure(s)
    run = mlflow.MlflowClient().get_run(run_id)
    snap, _, test_df = _split_for(run.data.tags["dataset_hash"], s)
    texts, y = test_df["text"].tolist(), test_df["label"].to_numpy()
    model = load_run_model(run_id)
    proba = model.predict_proba(texts)
    metrics = compute_metrics(y, proba)
    metrics["inference_ms_per_tweet"] = inference_ms_per_tweet(model, texts)

    golden = gate.golden_set(s)
    golden_texts = [t for t, _ in golden]
    ext = external.load(s)
    ext_pred = None
    if ext is not None:
        metrics["external"], ext_pred = external.score(model, ext)

    champ = registry.champion(s)
    champion_metrics = None
    champion_ext_pred = None
    champion_proba = champion_golden_proba = None
    if champ is not None and champ.run_id != run_id:
        key = f"{snap.hash}:{champ.version}:{ext.content_hash if ext else '-'}:{hash(tuple(golden))}"
        if champion_cache is not None and champion_cache.get("key") == key:
            champion_metrics = champion_cache["metrics"]
            champion_ext_pred = champion_cache.get("external_pred")
            champion_proba, champion_golden_proba = champion_cache["proba"], champion_cache["golden_proba"]
        else:
            cmodel = registry.load_version(champ.version, s)
            champion_proba = np.asarray(cmodel.predict_proba(texts))
            champion_golden_proba = np.asarray(cmodel.predict_proba(golden_texts))
            champion_metrics = compute_metrics(y, champion_proba)
            champion_metrics["version"] = champ.version
            if ext is not None:  # the champion on the same external texts
                champion_metrics["external"], champion_ext_pred = external.score(cmodel, ext)
            if champion_cache is not None:
                champion_cache.update(
                    key=key,
                    metrics=champion_metrics,
                    external_pred=champion_ext_pred,
                    proba=champion_proba,
                    golden_proba=champion_golden_proba,
                )
    # the promotion gate's evidence (ml.evaluation.gate): paired predictions on the held-out set (slices, flips)
    # and on the golden regression set
    evidence = gate.compare(
        y,
        texts,
        np.asarray(proba),
        champion_proba,
        golden,
        np.asarray(model.predict_proba(golden_texts)),
        champion_golden_proba,
        confidence=s.promotion_confidence,
        golden_min_confidence=s.gate_golden_min_confidence,
        champion_version=(champ.version if champion_proba is not None and champ is not None else None),
    )
    if ext is not None and ext_pred is not None and champion_ext_pred is not None and champ is not None:
        metrics["external"]["vs_champion"] = {
            **paired_comparison(ext.labels, ext_pred, champion_ext_pred, s.promotion_confidence),
            "champion_version": champ.version,
        }

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: metrics[k] for k in (*METRICS, "inference_ms_per_tweet")})
        if champion_metrics:
            mlflow.log_metrics({f"champion_{k}": champion_metrics[k] for k in METRICS})
        if ext is not None:
            mlflow.log_metrics(external.mlflow_metrics(metrics["external"]))
            mlflow.set_tags({"external_eval_hash": ext.content_hash, "external_eval_path": str(ext.path)})
            if champion_metrics and champion_metrics.get("external"):
                mlflow.log_metrics(external.mlflow_metrics(champion_metrics["external"], "champion_external_"))
            vs = metrics["external"].get("vs_champion")
            if vs:
                mlflow.log_metrics(
                    {"external_vs_champion_difference": vs["difference"], "external_vs_champion_p_value": vs["p_value"]}
                )
                mlflow.set_tag("external_vs_champion", vs["verdict"])
        import matplotlib.pyplot as plt

        for fig, name in (
            (plot_confusion(metrics["confusion_matrix"], "held-out confusion matrix"), "confusion_matrix"),
            (plot_roc(y, proba, "held-out ROC"), "roc_curve"),
        ):
            mlflow.log_figure(fig, f"{name}.png")
            plt.close(fig)
        mlflow.log_dict(metrics, "metrics.json")
        gm = {"golden_accuracy": evidence["golden"]["challenger_accuracy"]}
        if "held_out" in evidence:
            gm.update(
                gate_vs_champion_difference=evidence["held_out"]["difference"],
                gate_vs_champion_p_value=evidence["held_out"]["p_value"],
                gate_held_out_changed_labels=evidence["held_out"]["flips"]["changed_label"],
                gate_golden_right_to_wrong=evidence["golden"]["right_to_wrong"],
            )
        mlflow.log_metrics(gm)
        mlflow.log_dict(evidence, "gate.json")
    with db.connect(s) as conn:
        store.set_evaluated(conn, run_id, metrics, champion_metrics or None)
        store.set_gate(conn, run_id, evidence)
    log.info(
        "evaluated run %s on %s held-out tweets: acc %.4f f1 %.4f auc %.4f (%.3f ms/tweet)%s",
        run_id,
        f"{len(y):,}",
        metrics["accuracy"],
        metrics["f1"],
        metrics["roc_auc"],
        metrics["inference_ms_per_tweet"],
        f"; champion v{champion_metrics['version']} f1 {champion_metrics['f1']:.4f}" if champion_metrics else "",
    )
    if ext is not None:
        vs = metrics["external"].get("vs_champion")
        log.info(
            "external set %s (n=%s): acc %.4f f1 %.4f auc %.4f%s",
            ext.path.name,
            f"{ext.n:,}",
            metrics["external"]["accuracy"],
            metrics["external"]["f1"],
            metrics["external"]["roc_auc"],
            f"; vs champion v{vs['champion_version']}: {vs['difference']:+.4f}, p={vs['p_value']:.3g} ({vs['verdict']})"
            if vs
            else "",
        )
    return metrics


def register(run_id: str, settings: Settings | None = None) -> int:
    """Register the run's model as a new version of the registered model (idempotent per run)."""
    import mlflow

    from ml.platform import db, registry, tracking

    s = settings or get_settings()
    tracking.configure(s)
    client = mlflow.MlflowClient()
    existing = client.search_model_versions(f"name = '{s.model_name}' and run_id = '{run_id}'")
    if existing:
        version = int(existing[0].version)
    else:
        version = registry.register(client.get_run(run_id).data.tags["model_uri"], run_id, s)
    with db.connect(s) as conn:
        store.set_registered(conn, run_id, version)
        comparisons = store.record_winner_version(conn, run_id, version)
    for parent in comparisons:  # the comparison's parent run names the version its winner became
        client.set_tag(parent, "winner_version", str(version))
    digest = registry.version_artifact_digest(version, s)  # what the API will verify before serving it
    with db.connect(s) as conn:
        store.set_artifact_digest(conn, run_id, digest)
    log.info("registered run %s as %s version %s", run_id, s.model_name, version)
    return version


def check_behaviour(run_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """The gate's behavioural checks (ml.evaluation.behaviour) on the run's model: logged to the MLflow run
    (pass rate per type, behaviour.json, tag behaviour_passed) and stored in training_runs.behaviour."""
    import mlflow

    from ml.evaluation import behaviour
    from ml.platform import db, tracking

    s = settings or get_settings()
    tracking.configure(s)
    result = behaviour.run_checks(load_run_model(run_id), s)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"behaviour_{k}_pass_rate": v["pass_rate"] for k, v in result["types"].items()})
        mlflow.set_tag("behaviour_passed", str(result["passed"]).lower())
        mlflow.log_dict(result, "behaviour.json")
    with db.connect(s) as conn:
        store.set_behaviour(conn, run_id, result)
    log.info("behavioural checks of run %s: %s", run_id, result["reason"])
    return result


def promote(run_id: str, settings: Settings | None = None, hold: bool = False) -> dict[str, Any]:
    """The champion/challenger gate: behavioural checks (run now unless already run), then the
    promotion rule against the champion (``ml.platform.registry.decide_promotion`` -> ``ml.evaluation.gate``: margin,
    significant paired win on the same held-out split, slices, golden set), then the external-set veto (a
    candidate significantly worse than the champion on ``external_eval_path``, paired test at
    ``promotion_confidence``, is not promoted); moves the champion alias if the candidate wins.
    The decision and its reason are recorded either way, with the gate's evidence and per-criterion
    outcome (the flip report) in ``training_runs.gate``.

    ``hold`` (a retraining with a shadow window, ``ml.stages.shadow``): a candidate that passes the gate against a
    champion does not move the alias; the result says ``passed_gate`` and ``held``, and the promotion is
    completed (or not) by :func:`confirm_promotion` after the shadow window."""
    from ml.evaluation import external
    from ml.platform import db, registry, tracking

    s = settings or get_settings()
    tracking.configure(s)
    with db.connect(s) as conn:
        row = store.gate_inputs(conn, run_id)
    if row is None or row.metrics is None or row.version is None:
        raise ValueError(f"run {run_id} must be evaluated and registered before promotion")
    metrics, champion_metrics, version, checks = row.metrics, row.champion_metrics, row.version, row.behaviour
    evidence = row.gate or {}
    if s.behaviour_checks and checks is None:
        checks = check_behaviour(run_id, s)
    # decide + move the alias + record under one lock per registered model, so two promoters
    # (training, retraining, a rollback) never interleave between reading and moving the alias
    with db.connect(s) as conn:
        store.lock_promotions(conn, s.model_name)
        champ = registry.champion(s)
        if champ is not None and champ.version == version:
            return {"promoted": True, "version": version, "reason": "already champion"}
        if champ is not None and (champion_metrics or {}).get("version") != champ.version:
            raise ValueError(
                f"run {run_id} was evaluated against champion "
                f"v{(champion_metrics or {}).get('version', 'none')}, but the champion is now v{champ.version}; "
                f"evaluate it again (ml evaluate {run_id})"
            )
        decision = registry.decide_promotion(
            metrics,
            champion_metrics if champ is not None else None,
            metric=s.promotion_metric,
            margin=s.promotion_margin,
            checks_passed=bool(checks["passed"]) if s.behaviour_checks and checks else True,
            checks_reason=checks["reason"] if checks else "",
            gate=evidence,
            policy=gate_policy(s),
        )
        why_not = external.veto(metrics, champ.version) if champ is not None else None
        if why_not:  # significantly worse on the external set: vetoed (recorded also when the gate refused)
            decision = registry.Decision(
                False, f"{decision.reason}, {'but' if decision.promote else 'and'} vetoed: {why_not}", decision.checks
            )
        held = hold and decision.promote and champ is not None
        if held and champ is not None:  # (held implies a champion; narrowed for the type checker)
            gate_record = {
                **evidence,
                "decision": {
                    "promoted": False,
                    "passed_gate": True,
                    "held_for_shadow": True,
                    "reason": decision.reason,
                    "checks": decision.checks,
                    "external_veto": why_not,
                    "champion_version": champ.version,
                    "policy": {
                        "mode": s.promotion_gate,
                        "metric": s.promotion_metric,
                        "margin": s.promotion_margin,
                        "confidence": s.promotion_confidence,
                        **gate_policy(s),
                    },
                },
            }
            store.set_gate(conn, run_id, gate_record)
            log.info("version %s passed the gate (%s); held for its shadow window", version, decision.reason)
            return {
                "promoted": False,
                "passed_gate": True,
                "held": True,
                "version": version,
                "champion_version": champ.version,
                "reason": decision.reason,
                "behaviour_passed": bool(checks["passed"]) if checks else None,
                "gate": gate_record,
            }
        if decision.promote:
            registry.set_champion(version, s)
        gate_record = {
            **evidence,
            "decision": {
                "promoted": decision.promote,
                "reason": decision.reason,
                "checks": decision.checks,
                "external_veto": why_not,
                "champion_version": champ.version if champ else None,
                "policy": {
                    "mode": s.promotion_gate,
                    "metric": s.promotion_metric,
                    "margin": s.promotion_margin,
                    "confidence": s.promotion_confidence,
                    **gate_policy(s),
                },
            },
        }
        store.set_gate(conn, run_id, gate_record)
        store.set_decision(conn, run_id, decision.promote, decision.reason)
        store.insert_event(
            conn,
            s.model_name,
            version,
            champ.version if champ else None,
            "promoted" if decision.promote else "rejected",
            decision.reason,
        )
        if decision.promote:  # the digest the API checks before it serves this version
            digest = store.run_artifact_digest(conn, run_id) or registry.version_artifact_digest(version, s)
            store.set_event_digest(conn, s.model_name, version, digest)
    log.info(
        "version %s %s: %s", version, "promoted to champion" if decision.promote else "not promoted", decision.reason
    )
    return {
        "promoted": decision.promote,
        "version": version,
        "reason": decision.reason,
        "behaviour_passed": bool(checks["passed"]) if checks else None,
        "gate": gate_record,
    }


def confirm_promotion(
    run_id: str, version: int, expected_champion: int, reason: str, settings: Settings | None = None
) -> dict[str, Any]:
    """Complete a promotion held by :func:`promote` (``hold``) once its shadow window said yes: under the
    same lock, only while the champion is still ``expected_champion``; moves the alias and records the
    ``promoted`` event with the artifact digest the API verifies. Returns ``promoted`` and the reason."""
    from ml.platform import db, registry, tracking

    s = settings or get_settings()
    tracking.configure(s)
    with db.connect(s) as conn:
        store.lock_promotions(conn, s.model_name)
        champ = registry.champion(s)
        if champ is not None and champ.version == version:
            return {"promoted": True, "version": version, "reason": "already champion"}
        if champ is None or champ.version != expected_champion:
            why = (
                f"not promoted: the champion changed during the shadow window (v{expected_champion} -> "
                f"v{champ.version if champ else 'none'})"
            )
            store.set_decision(conn, run_id, False, why)
            return {"promoted": False, "version": version, "reason": why}
        registry.set_champion(version, s)
        store.set_decision(conn, run_id, True, reason)
        store.insert_event(conn, s.model_name, version, champ.version, "promoted", reason)
        digest = store.run_artifact_digest(conn, run_id) or registry.version_artifact_digest(version, s)
        store.set_event_digest(conn, s.model_name, version, digest)
    log.info("version %s promoted to champion after its shadow window: %s", version, reason)
    return {"promoted": True, "version": version, "reason": reason}


def gate_policy(s: Settings) -> dict[str, Any]:
    """The promotion gate's settings, as ``ml.platform.registry.decide_promotion`` takes them."""
    return {
        "mode": s.promotion_gate,
        "slice_tolerance": s.gate_slice_tolerance,
        "max_golden_flips": s.gate_max_golden_flips,
    }


def promote_candidate(run_id: str, retraining_id: Any = None, settings: Settings | None = None) -> dict[str, Any]:
    """The promotion step shared by both DAGs: :func:`promote`, or for a retraining's challenger
    ``ml.stages.retraining.challenger.promote`` (the same gate with the retraining's margin, recorded on it)."""
    if retraining_id in (None, "", "None"):
        return promote(run_id, settings)
    from ml.stages.retraining import challenger

    return challenger.promote(retraining_id, run_id, settings)
