"""When to retrain: the champion's context (snapshot, corpus size), its trusted reports against the
threshold, the trigger at the end of ``sentiment_monitoring`` (:func:`check_trigger`) and a retraining
asked for by hand (:func:`create_manual`)."""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from ml.platform import db, registry, tracking
from ml.platform.config import Settings, get_settings
from ml.stages import review
from ml.stages.alerts.burst import evaluate_burst
from ml.stages.retraining import RetrainingError
from ml.stages.review import as_number
from ml.store import lineage as lineage_store
from ml.store import retrainings as store

log = logging.getLogger(__package__)  # the stage's logger, as before the split into modules


FRACTION_MIN, FRACTION_MAX = 0.001, 0.01


def threshold_for(corpus_rows: int, settings: Settings | None = None) -> int:
    """Reports needed: ``ceil(retraining_feedback_fraction x corpus_rows)`` (at least 1)."""
    s = settings or get_settings()
    f = float(s.retraining_feedback_fraction)
    if not FRACTION_MIN <= f <= FRACTION_MAX:  # settings validate this too; a model_copy() does not
        raise ValueError(
            f"retraining_feedback_fraction must lie between {FRACTION_MIN} (0.1%) and {FRACTION_MAX} "
            f"(1%) of the training corpus, got {f!r}"
        )
    return max(1, math.ceil(f * int(corpus_rows) - 1e-9))


@dataclass
class ChampionContext:
    model_name: str
    version: int
    run_id: str
    trained_at: datetime
    snapshot_hash: str | None
    corpus_rows: int | None
    family: str | None
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "run_id": self.run_id,
            "trained_at": self.trained_at.isoformat(),
            "snapshot_hash": self.snapshot_hash,
            "corpus_rows": self.corpus_rows,
            "family": self.family,
        }


def champion_context(settings: Settings | None = None, version: int | None = None) -> ChampionContext | None:
    """The champion (or ``version``): when it was trained, on which snapshot, with which family/params."""
    import mlflow

    s = settings or get_settings()
    tracking.configure(s)
    if version is None:
        champ = registry.champion(s)
        if champ is None:
            return None
        version, run_id = champ.version, champ.run_id
    else:
        run_id = mlflow.MlflowClient().get_model_version(s.model_name, str(version)).run_id
    if run_id is None:
        raise RuntimeError(f"version {version} of {s.model_name} has no MLflow run")
    run = mlflow.MlflowClient().get_run(run_id)
    trained_at = datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC)
    snapshot_hash = run.data.tags.get("dataset_hash")
    family = run.data.tags.get("family")
    params: dict[str, Any] = {}
    corpus_rows = None
    with db.connect(s) as conn:
        tr = store.training_family_params(conn, run_id)
        if tr:
            family, params = tr
        if snapshot_hash:
            snap = lineage_store.snapshot(conn, snapshot_hash)
            corpus_rows = int(snap["n_rows"]) if snap else None
    return ChampionContext(s.model_name, int(version), run_id, trained_at, snapshot_hash, corpus_rows, family, params)


# ---------------------------------------------------------------- reports
def _pending(
    conn: psycopg.Connection, ctx: ChampionContext, settings: Settings, threshold: int | None
) -> dict[str, Any]:
    """The champion's misclassifications the loop believes (``ml.stages.review``: a reviewer's accept or
    ``feedback_min_identities`` agreeing identities; a reviewer's rejection excludes), not consumed
    yet, one vote per text with each identity capped at ``feedback_max_identity_share`` of the threshold."""
    return review.pending(conn, ctx.model_name, ctx.version, ctx.trained_at, threshold, settings)


def _counts(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "counted_reports": as_number(p["counted"]),
        "identity_cap": as_number(p["identity_cap"]),
        "capped_identities": p["capped_identities"],
        "reported_texts": p["reported_texts"],
        "untrusted_texts": p["untrusted_texts"],
        "rejected_texts": p["rejected_texts"],
        "quarantined_reports": p.get("quarantined_reports", 0),
    }


def pending_count(ctx: ChampionContext, settings: Settings | None = None) -> dict[str, Any]:
    """Trusted reports since the champion was trained (not yet consumed) against the threshold."""
    s = settings or get_settings()
    thr = threshold_for(ctx.corpus_rows, s) if ctx.corpus_rows else None
    with db.connect(s) as conn:
        p = _pending(conn, ctx, s, thr)
    counted = float(p["counted"])
    return {
        "reports": p["reports"],
        "feedback_rows": p["feedback_rows"],
        "threshold": thr,
        "fraction": s.retraining_feedback_fraction,
        "corpus_rows": ctx.corpus_rows,
        "review_required": s.feedback_review_required,
        **_counts(p),
        "share_of_threshold": (counted / thr) if thr else None,
    }


def review_feedback(feedback_ids: list[int], reviewer: str = "cli", settings: Settings | None = None) -> int:
    """Mark reports reviewed (they may then enter a retraining set when review is required)."""
    s = settings or get_settings()
    with db.connect(s) as conn:
        return store.mark_reviewed(conn, feedback_ids, reviewer)


# ---------------------------------------------------------------- the trigger
def _drift_flags(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report:
        return None
    fb = report.get("feedback") or {}
    return {
        "report_id": report.get("id"),
        "status": report.get("status"),
        "drift_detected": bool(report.get("drift_detected")),
        "concept_drift": bool(fb.get("concept_drift")),
        "verdict": report.get("verdict"),
    }


def check_trigger(
    drift_report: dict[str, Any] | None = None, airflow_run_id: str | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Decide whether to retrain; when yes, record the retraining and consume its reports (once).

    Returns the decision: ``trigger`` (bool), ``reason``, ``detail``, the counts, and when triggered
    ``retraining_id`` and ``airflow_run_id`` (the run id the ``sentiment_retraining`` DAG run gets)."""
    s = settings or get_settings()
    drift = _drift_flags(drift_report)
    ctx = champion_context(s)
    base: dict[str, Any] = {
        "trigger": False,
        "retraining_id": None,
        "airflow_run_id": None,
        "drift": drift,
        "model_name": s.model_name,
    }
    if ctx is None:
        return {**base, "reason": "no_champion", "detail": f"no champion of {s.model_name}: nothing to retrain"}
    if not ctx.snapshot_hash or not ctx.corpus_rows:
        return {
            **base,
            "reason": "no_snapshot",
            "champion_version": ctx.version,
            "detail": f"champion v{ctx.version} has no recorded training snapshot: no threshold to compare with",
        }
    thr = threshold_for(ctx.corpus_rows, s)
    drifted = bool(drift and (drift["drift_detected"] or drift["concept_drift"]))

    with db.connect(s) as conn:
        store.lock(conn, s.model_name)
        p = _pending(conn, ctx, s, thr)
        ids = p["feedback_ids"]
        n, counted = p["reports"], p["counted"]
        info = {
            **base,
            "champion_version": ctx.version,
            "pending_reports": n,
            "threshold": thr,
            "fraction": s.retraining_feedback_fraction,
            "corpus_rows": ctx.corpus_rows,
            **_counts(p),
        }
        # the burst guard: a rate burst (many identities at once) pauses retraining while it lasts; one
        # identity's burst only quarantines its own reports (already left out of ``p`` by ml.stages.review)
        burst = evaluate_burst(conn, s.model_name, s)
        if burst["open"] and burst.get("pauses"):
            return {
                **info,
                "reason": "paused_burst",
                "burst_alert_id": burst["alert_id"],
                "detail": f"retraining paused by a burst of reports (alert #{burst['alert_id']}): {burst['message']}",
            }
        if burst["open"]:
            info["burst_alert_id"] = burst["alert_id"]
        drift_note = ""
        if burst["open"]:
            drift_note = (
                f"; burst alert #{burst['alert_id']} open: {p.get('quarantined_reports', 0)} quarantined "
                "reports not counted (retraining not paused by one identity)"
            )
        if drifted and drift is not None:  # (drifted implies a drift report)
            drift_note += f"; drift report {drift['report_id']}: {drift['verdict']}" + (
                "" if s.retraining_on_drift else " (retraining_on_drift is off: reported only)"
            )
        if counted >= thr:
            reason = "feedback_threshold"
            key = "feedback:" + hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()
            detail = (
                f"{as_number(counted)} trusted misclassification reports on v{ctx.version} since it was "
                f"trained >= threshold {thr} ({s.retraining_feedback_fraction:.2%} of {ctx.corpus_rows:,} "
                f"training rows; {n} texts, identity cap {as_number(p['identity_cap'])}){drift_note}"
            )
        elif drifted and drift is not None and s.retraining_on_drift and drift.get("report_id"):
            reason = "drift"
            key = f"drift:{drift['report_id']}"
            detail = (
                f"drift report {drift['report_id']} ({drift['verdict']}); {as_number(counted)}/{thr} reports pending"
            )
        else:
            return {
                **info,
                "reason": "below_threshold",
                "detail": f"{as_number(counted)}/{thr} trusted misclassification reports on v{ctx.version} since "
                f"it was trained ({s.retraining_feedback_fraction:.2%} of {ctx.corpus_rows:,}; "
                f"{p['untrusted_texts']} reported texts not trusted yet, {p['rejected_texts']} rejected "
                f"by a reviewer): no retraining{drift_note}",
            }
        rid = store.insert(
            conn,
            model_name=s.model_name,
            trigger_key=key,
            reason=reason,
            detail=detail,
            feedback_ids=ids,
            n_feedback=n,
            threshold=thr,
            threshold_fraction=s.retraining_feedback_fraction,
            corpus_rows=ctx.corpus_rows,
            drift_report_id=(drift or {}).get("report_id"),
            champion_before=ctx.version,
            base_snapshot=ctx.snapshot_hash,
            trigger_airflow_run_id=airflow_run_id,
        )
        if rid is None:
            return {**info, "reason": "already_triggered", "detail": f"a retraining with key {key[:24]}… exists"}
        store.consume(conn, ids, rid)
        run_id = f"retraining__{rid}"
        store.update(conn, rid, airflow_run_id=run_id)
    log.warning("RETRAINING #%s triggered (%s): %s", rid, reason, detail)
    return {
        **info,
        "trigger": True,
        "reason": reason,
        "detail": detail,
        "retraining_id": rid,
        "airflow_run_id": run_id,
        "feedback_ids": ids,
    }


def create_manual(note: str = "manual", airflow_run_id: str | None = None, settings: Settings | None = None) -> int:
    """A retraining asked for by hand (DAG run without ``retraining_id``): consumes the pending reports,
    whatever their number."""
    s = settings or get_settings()
    ctx = champion_context(s)
    if ctx is None:
        raise RetrainingError(f"no champion of {s.model_name}: train and promote a model first (sentiment_training)")
    if not ctx.snapshot_hash:
        raise RetrainingError(f"champion v{ctx.version} has no dataset_hash tag: its training set is unknown")
    thr = threshold_for(ctx.corpus_rows, s) if ctx.corpus_rows else None
    with db.connect(s) as conn:
        store.lock(conn, s.model_name)
        p = _pending(conn, ctx, s, thr)
        ids, n = p["feedback_ids"], p["reports"]
        rid = store.insert(
            conn,
            model_name=s.model_name,
            trigger_key=f"manual:{uuid.uuid4().hex}",
            reason="manual",
            detail=f"{note}: {n} pending reports",
            feedback_ids=ids,
            n_feedback=n,
            threshold=thr,
            threshold_fraction=s.retraining_feedback_fraction,
            corpus_rows=ctx.corpus_rows,
            champion_before=ctx.version,
            base_snapshot=ctx.snapshot_hash,
            airflow_run_id=airflow_run_id,
        )
        assert rid is not None  # a fresh uuid key never conflicts
        store.consume(conn, ids, rid)
    return rid
