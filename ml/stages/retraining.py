"""Feedback-triggered retraining: the trigger (end of ``sentiment_monitoring``) and the stages of
the ``sentiment_retraining`` DAG.

**Trigger** (:func:`check_trigger`). Only labels the loop trusts count (:mod:`ml.stages.review`: a
reviewer's accept / relabel, or ``feedback_min_identities`` agreeing identities, never a text a
reviewer rejected) where they differ from the current champion version's prediction, not yet consumed
by a retraining: one vote per text, each identity capped at ``feedback_max_identity_share`` of the
threshold. While the burst guard's alert is open (``ml.stages.alerts.evaluate_burst``) the answer is
``paused_burst`` and nothing is consumed. The threshold
is ``ceil(retraining_feedback_fraction x n_rows)`` of the champion's training snapshot, the
fraction validated to lie in [0.1%, 1%]. When it is reached, one ``retrainings`` row is written
and the reports are consumed (``retraining_feedback``, primary key on the feedback id) in one
transaction under an advisory lock; ``trigger_key`` (sha256 of the consumed ids) is unique. So
running the trigger twice, or concurrently, never starts two retrainings on the same reports. A
drift report is recorded in the decision; with ``retraining_on_drift`` it triggers on its own
(key ``drift:<report id>``).

**Training set** (:func:`prepare`): the champion's snapshot + the reported tweets with their
corrected labels (latest report per prediction) — the reports consumed by this retraining and by
earlier unsuccessful retrainings of the same champion. Every row is a vote: a text present several
times gets the majority label; ties are dropped (as ``ml.data.validate`` does). Stored as a
content-hashed snapshot of kind ``retraining`` whose ``parent_hash`` is the champion's snapshot.

**Held-out set (the choice, and why).** The new snapshot stores its own split (``split.parquet``,
honoured by ``ml.data.split`` everywhere: training, evaluation, comparison, monitoring):

- ``test`` = the parent snapshot's held-out texts, ALL of them, with the PARENT's labels (the
  champion's held-out set, unchanged through a chain of retrainings). A report on one of those texts
  neither votes on its label nor makes it trainable: it stays held out with its original label, so
  the gate sees what the reports changed (a challenger that learnt a reported relabelling loses on
  it). Neither model trained on it, so champion and challenger are compared on the SAME sample; the
  promotion gate (``ml.evaluation.gate``: ``promotion_metric`` with ``retraining_promotion_margin``, default
  ``promotion_margin``, a significant paired win, slices, the golden set) uses it.
- reported tweets outside it are never added to ``test``: they are the champion's errors by
  construction, so adding them would hand the challenger an advantage that says nothing about the
  live population.
- ``excluded`` = a deterministic ``retraining_report_eval_fraction`` (20%, by hash of the text) of
  the reported tweets, held out of training: champion and challenger are both scored on them
  ("did retraining fix this kind of error"; paired, in ``retrainings.gate["reported_eval"]``),
  recorded in ``retrainings.metrics`` and on the MLflow run, but not used to promote (a few hundred hand-picked errors are too small and too biased a
  sample for the decision). The other 80% train; the challenger's accuracy on them is in-sample and
  reported as such.
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from ml.models.base import decide
from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.store import lineage as lineage_store
from ml.store import models as models_store
from ml.store import retrainings as store

log = logging.getLogger(__name__)

DAG_ID = "sentiment_retraining"
FRACTION_MIN, FRACTION_MAX = 0.001, 0.01


class RetrainingError(RuntimeError):
    pass


# ---------------------------------------------------------------- threshold & champion
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

    from ml.platform import registry, tracking

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
def _pending(conn, ctx: ChampionContext, s: Settings, threshold: int | None) -> dict[str, Any]:
    """The champion's misclassifications the loop believes (``ml.stages.review``: a reviewer's accept or
    ``feedback_min_identities`` agreeing identities; a reviewer's rejection excludes), not consumed
    yet, one vote per text with each identity capped at ``feedback_max_identity_share`` of the threshold."""
    from ml.stages import review

    return review.pending(conn, ctx.model_name, ctx.version, ctx.trained_at, threshold, s)


def _counts(p: dict[str, Any]) -> dict[str, Any]:
    from ml.stages.review import as_number

    return {
        "counted_reports": as_number(p["counted"]),
        "identity_cap": as_number(p["identity_cap"]),
        "capped_identities": p["capped_identities"],
        "reported_texts": p["reported_texts"],
        "untrusted_texts": p["untrusted_texts"],
        "rejected_texts": p["rejected_texts"],
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
    from ml.stages import alerts
    from ml.stages.review import as_number

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
        burst = alerts.evaluate_burst(conn, s.model_name, s)  # the burst guard: no retraining while it lasts
        if burst["open"]:
            return {
                **info,
                "reason": "paused_burst",
                "burst_alert_id": burst["alert_id"],
                "detail": f"retraining paused by a burst of reports (alert #{burst['alert_id']}): {burst['message']}",
            }
        drift_note = ""
        if drifted and drift is not None:  # (drifted implies a drift report)
            drift_note = f"; drift report {drift['report_id']}: {drift['verdict']}" + (
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


# ---------------------------------------------------------------- the DAG's stages
def get_retraining(retraining_id: int, settings: Settings | None = None, conn=None) -> dict[str, Any] | None:
    if conn is not None:
        return store.get(conn, int(retraining_id))
    with db.connect(settings or get_settings()) as c:
        return store.get(c, int(retraining_id))


def list_retrainings(limit: int = 20, settings: Settings | None = None) -> list[dict[str, Any]]:
    s = settings or get_settings()
    with db.connect(s) as conn:
        return store.latest(conn, s.model_name, limit)


def _update(rid: int, s: Settings, **values: Any) -> None:
    with db.connect(s) as conn:
        store.update(conn, rid, **values)


def _resolve_id(retraining_id: Any) -> int | None:
    if retraining_id in (None, "", "None", "null"):
        return None
    return int(retraining_id)


def _training_reports(conn, r: dict[str, Any], s: Settings) -> pd.DataFrame:
    """Reports consumed by this retraining and by earlier unsuccessful ones of the same champion, that
    give a label the loop trusts NOW (``ml.stages.review``; a reviewer's rejection since the trigger excludes)."""
    from ml.stages import review

    rows = store.training_reports(conn, r)
    keep, dropped = review.trusted_training_rows(conn, r["model_name"], r["champion_before"], rows, s)
    if any(dropped.values()):
        log.warning(
            "retraining #%s: %s consumed reports do not train (%s)",
            r["id"],
            sum(dropped.values()),
            ", ".join(f"{k}: {v}" for k, v in dropped.items() if v),
        )
    return pd.DataFrame(keep, columns=["feedback_id", "prediction_id", "text", "label", "created_at"])


def _eval_bucket(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def prepare(
    retraining_id: Any = None, airflow_run_id: str | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Build the retraining's training set (a new snapshot, kind ``retraining``, with its own split).
    Without ``retraining_id``, a manual retraining is recorded first. Idempotent per retraining."""
    from ml import data

    s = settings or get_settings()
    rid = _resolve_id(retraining_id)
    if rid is None:
        rid = create_manual(airflow_run_id=airflow_run_id, settings=s)
    r = get_retraining(rid, s)
    if r is None:
        raise RetrainingError(f"no retraining #{rid}")
    if r["model_name"] != s.model_name:
        raise RetrainingError(f"retraining #{rid} is for model {r['model_name']!r}, this run serves {s.model_name!r}")
    if r["snapshot_hash"]:  # a re-run of the task: the set is already built
        return {"retraining_id": rid, "snapshot_hash": r["snapshot_hash"], **(r["dataset_report"] or {})}
    base = data.get_snapshot(r["base_snapshot"], s)
    base_frame = base.load()
    _, base_test = data.split(base_frame, s.test_size, s.seed)
    with db.connect(s) as conn:
        reports = _training_reports(conn, r, s)
    reports["text"] = reports["text"].astype(str).str.strip()
    reports = reports[reports["text"] != ""]
    latest = reports.drop_duplicates("text", keep="last")  # one vote per text: its trusted label (ml.stages.review)
    # the parent's held-out set stays as it is, with the parent's labels: reports on those texts do not
    # vote (they are never trained on, and both models are scored on the parent's labels)
    held_texts = set(base_test["text"])
    on_held_out = latest["text"].isin(held_texts)
    reported_in_held_out = int(latest.loc[on_held_out, "text"].nunique())
    latest_votes = latest[~on_held_out]
    votes = pd.concat(
        [base_frame[["text", "label"]].assign(src="snapshot"), latest_votes[["text", "label"]].assign(src="report")],
        ignore_index=True,
    )
    votes["label"] = votes["label"].astype(int)
    g = votes.groupby("text", sort=False)["label"].agg(["size", "sum"])
    tie = g[g["sum"] * 2 == g["size"]].index
    majority = (g["sum"] * 2 > g["size"]).astype("int8")
    frame = pd.DataFrame({"text": majority.index, "label": majority.to_numpy()})
    frame = frame[~frame["text"].isin(tie)].reset_index(drop=True)

    base_labels = dict(zip(base_frame["text"], base_frame["label"].astype(int)))
    report_texts = set(latest_votes["text"]) - set(tie)
    new_texts = {t for t in report_texts if t not in base_labels}
    final = dict(zip(frame["text"], frame["label"].astype(int)))
    relabelled = {t for t in report_texts if t in base_labels and base_labels[t] != final.get(t)}
    eval_texts = sorted(t for t in report_texts if _eval_bucket(t) < s.retraining_report_eval_fraction)
    test_texts = held_texts
    report: dict[str, Any] = {
        "source": f"retraining #{rid}",
        "kind": "retraining",
        "parent": base.hash,
        "parent_rows": int(len(base_frame)),
        "reports": int(len(reports)),
        "reported_predictions": int(len(latest)),
        "reported_texts": int(latest["text"].nunique()),
        "feedback_ids": [int(x) for x in reports["feedback_id"]],
        "new_texts": len(new_texts),
        "relabelled_texts": len(relabelled),
        "conflicts_tied_dropped": int(len(tie)),
        "rows_out": int(len(frame)),
        "label_counts": {"negative": int((frame["label"] == 0).sum()), "positive": int(frame["label"].sum())},
        "held_out": {
            "rule": "the parent snapshot's held-out texts, all of them, with the parent's labels (reported "
            "ones included, never trained on)",
            "rows": int(frame["text"].isin(test_texts).sum()),
            "reported_texts_kept": reported_in_held_out,
        },
        "reported_eval": {
            "rule": f"{s.retraining_report_eval_fraction:.0%} of the reported texts (sha256 of the "
            "text), held out of training; scored, not used to promote",
            "rows": len(eval_texts),
        },
        "reported_train_rows": len(report_texts) - len(eval_texts),
        # what ml.data.validate reports, for the snapshot page
        "rows_read": int(len(votes)),
        "rows_rejected": 0,
        "empty_texts": 0,
        "latin1_lines": 0,
        "duplicate_texts": int((g["size"] > 1).sum()),
        "duplicate_rows_removed": int(g["size"].sum() - len(g)),
        "conflicting_texts": int(((g["sum"] > 0) & (g["sum"] < g["size"])).sum()),
        "conflicts_resolved_by_majority": int(((g["sum"] > 0) & (g["sum"] < g["size"])).sum() - len(tie)),
        "rejected_by_reason": {},
        "rejected_rows": [],
        "positive_share": round(float(frame["label"].mean()), 4),
    }
    if data.content_hash(frame) == base.hash:
        # nothing new: storing it would be a no-op on the parent's record (its kind and parent kept) and
        # store_split would write the retraining's split into the PARENT's directory
        msg = (
            f"retraining #{rid}: the {len(latest)} reported tweets add nothing to the champion's snapshot "
            f"{base.hash[:16]} (no new text, no changed label outside its held-out set, whose "
            f"{reported_in_held_out} reported texts keep their labels): nothing to retrain on"
        )
        mark_failed(rid, f"RetrainingError: {msg}", s)
        raise RetrainingError(msg)
    snap = data.store_snapshot(
        frame,
        report,
        source=f"retraining #{rid} of {s.model_name}: {base.hash[:16]} + {len(latest)} reported tweets",
        kind="retraining",
        parent=base.hash,
        settings=s,
    )
    data.store_split(snap, test_texts, eval_texts)
    summary = {
        k: report[k]
        for k in (
            "parent",
            "parent_rows",
            "reports",
            "reported_predictions",
            "new_texts",
            "relabelled_texts",
            "conflicts_tied_dropped",
            "rows_out",
            "held_out",
            "reported_eval",
            "reported_train_rows",
        )
    }
    _update(
        rid,
        s,
        snapshot_hash=snap.hash,
        training_feedback_ids=report["feedback_ids"],
        dataset_report=summary,
        status="prepared",
        airflow_run_id=airflow_run_id or r["airflow_run_id"],
    )
    log.info(
        "retraining #%s: snapshot %s = %s rows (parent %s + %s reported tweets: %s new, %s relabelled, %s ties "
        "dropped); held-out %s, reported-eval %s",
        rid,
        snap.hash[:16],
        f"{len(frame):,}",
        base.hash[:16],
        len(latest),
        len(new_texts),
        len(relabelled),
        len(tie),
        summary["held_out"]["rows"],
        len(eval_texts),
    )
    return {"retraining_id": rid, "snapshot_hash": snap.hash, **summary}


def _champion_family_params(r: dict[str, Any], s: Settings) -> tuple[str, dict[str, Any]]:
    from ml import models

    ctx = champion_context(s, version=r["champion_before"])
    if ctx is None:
        raise RetrainingError(f"no champion context for v{r['champion_before']} of {s.model_name}")
    family, params = ctx.family, dict(ctx.params)
    if not family or not params:
        from ml.platform import registry

        m = registry.load_version(r["champion_before"], s)
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
) -> str:
    """Train the challenger on the retraining snapshot: the champion's family and params (``mode``
    champion, the default) or a comparison of ``families`` (``mode`` compare; default: every family in
    ``ml.models.FAMILIES``). Returns its MLflow run id."""
    import mlflow

    from ml.platform import tracking
    from ml.stages import train

    s = settings or get_settings()
    rid = int(retraining_id)
    r = get_retraining(rid, s)
    if not r or not r["snapshot_hash"]:
        raise RetrainingError(f"retraining #{rid} has no training set yet: run prepare first")
    if r["run_id"]:  # a re-run (cleared DAG run, `ml retrain` again): its challenger exists, no second version
        log.info("retraining #%s: challenger already trained (MLflow run %s), not training another", rid, r["run_id"])
        return r["run_id"]
    mode = mode or s.retraining_mode
    _update(rid, s, status="training", mode=mode)
    if mode == "champion":
        family, params = _champion_family_params(r, s)
        params.update(hyperparams or {})
        run_id = train.train(r["snapshot_hash"], family, params, sample_size, airflow_run_id, s)
    elif mode == "compare":
        from ml import models
        from ml.stages import compare

        families = list(families or models.FAMILIES)  # all of them unless told (the DAG's default too)
        result = compare.run_comparison(
            snapshot_hash=r["snapshot_hash"],
            families=families,
            profile=profile,
            sample_size=sample_size,
            search_space=None,
            settings=s,
        )
        run_id = compare.register_best(result, s)
    else:
        raise ValueError(f"mode must be 'champion' or 'compare', got {mode!r}")
    tracking.configure(s)
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tags(
            {"retraining_id": str(rid), "retraining_reason": r["reason"], "parent_dataset_hash": r["base_snapshot"]}
        )
    _update(rid, s, run_id=run_id, status="trained")
    return run_id


def evaluate(retraining_id: Any, run_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """Challenger and champion on the SAME held-out set (``ml.stages.train.evaluate``, used to promote) and on
    the reported tweets (held-out part and, in-sample for the challenger, the trained part)."""
    import mlflow
    import numpy as np

    from ml import data
    from ml.platform import registry, tracking
    from ml.stages import train

    s = settings or get_settings()
    rid = int(retraining_id)
    r = get_retraining(rid, s)
    held = train.evaluate(run_id, s)
    with db.connect(s) as conn:
        champion_metrics = store.champion_metrics_of(conn, run_id)
        if r is None:
            raise RetrainingError(f"no retraining #{rid}")
        reported = store.reported_texts(conn, r["training_feedback_ids"] or [])
    snap = data.get_snapshot(r["snapshot_hash"], s)
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

    def acc(model, ts: list[str]) -> float | None:
        if not ts:
            return None
        pred = decide(np.asarray(model.predict_proba(ts))[:, 1])
        return float(np.mean(pred == np.array([labels[t] for t in ts])))

    eval_texts = sorted(t for t in reported if t in excluded and t in labels)
    # (b) of the gate: the reported tweets neither model trained on, paired; recorded, not a criterion
    reported_vs = None
    if eval_texts:
        from ml.evaluation.stats import paired_comparison

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
        evidence = models_store.run_gate(conn, run_id) or {}
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
    _update(rid, s, metrics=metrics, status="evaluated", gate=gate_record)
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


def promote(retraining_id: Any, run_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """The champion/challenger gate (``ml.stages.train.promote``: behavioural checks + the promotion rule on the
    held-out set) with ``retraining_promotion_margin``; the outcome is recorded on the retraining.

    With a shadow window (``shadow_requests`` / ``shadow_hours``, ``ml.stages.shadow``) a challenger that passes
    the gate against a champion is not promoted yet: it goes into shadow (status ``shadow``, ``shadow_id``
    in the result) and ``ml.stages.shadow.decide`` promotes it or not when the window is over."""
    from ml.platform import registry
    from ml.stages import shadow, train

    s = settings or get_settings()
    rid = int(retraining_id)
    margin = s.retraining_promotion_margin if s.retraining_promotion_margin is not None else s.promotion_margin
    result = train.promote(run_id, s.model_copy(update={"promotion_margin": margin}), hold=shadow.enabled(s))
    if result.get("held"):
        sid = shadow.start(rid, run_id, result, s)
        r = get_retraining(rid, s) or {}
        gate_record = {**(result.get("gate") or {}), "reported_eval": (r.get("gate") or {}).get("reported_eval")}
        reason = f"passed the gate ({result['reason']}); in shadow #{sid} beside v{result['champion_version']}"
        _update(rid, s, status="shadow", candidate_version=result["version"], decision=reason, gate=gate_record)
        log.info("retraining #%s: %s", rid, reason)
        return {
            **result,
            "retraining_id": rid,
            "status": "shadow",
            "shadow_id": sid,
            "reason": reason,
            "champion_after": result["champion_version"],
            "margin": margin,
        }
    champ = registry.champion(s)
    status = "promoted" if result["promoted"] else "rejected"
    r = get_retraining(rid, s) or {}
    gate_record = {**(result.get("gate") or {}), "reported_eval": (r.get("gate") or {}).get("reported_eval")}
    _update(
        rid,
        s,
        status=status,
        champion_after=champ.version if champ else None,
        candidate_version=result["version"],
        decision=result["reason"],
        finished_at=datetime.now(UTC),
        **({"gate": gate_record} if result.get("gate") else {}),
    )
    log.info(
        "retraining #%s %s: %s (champion now v%s)", rid, status, result["reason"], champ.version if champ else None
    )
    return {
        **result,
        "retraining_id": rid,
        "status": status,
        "champion_after": champ.version if champ else None,
        "margin": margin,
    }


def mark_failed(retraining_id: Any, error: str, settings: Settings | None = None) -> None:
    s = settings or get_settings()
    rid = _resolve_id(retraining_id)
    if rid is None:
        return
    with db.connect(s) as conn:
        store.mark_failed(conn, rid, error)


def run_retraining(
    retraining_id: Any = None,
    mode: str | None = None,
    families: list[str] | None = None,
    hyperparams: dict[str, Any] | None = None,
    sample_size: int | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Every stage of the DAG in this process (``ml retrain``, the benchmark, tests)."""
    from ml.stages import train

    s = settings or get_settings()
    prep = prepare(retraining_id, settings=s)
    rid = prep["retraining_id"]
    try:
        run_id = train_challenger(rid, mode, families, hyperparams, sample_size, settings=s)
        metrics = evaluate(rid, run_id, s)
        train.register(run_id, s)
        if s.behaviour_checks:
            train.check_behaviour(run_id, s)
        result = promote(rid, run_id, s)
    except Exception as e:
        mark_failed(rid, f"{type(e).__name__}: {e}", s)
        raise
    return {**result, "run_id": run_id, "metrics": metrics, "snapshot_hash": prep["snapshot_hash"]}


# ---------------------------------------------------------------- status (model card, CLI)
def loop_status(settings: Settings | None = None) -> dict[str, Any]:
    """The champion, its reports against the retraining threshold, the latest retrainings."""
    s = settings or get_settings()
    ctx = champion_context(s)
    out: dict[str, Any] = {
        "model_name": s.model_name,
        "champion": ctx.as_dict() if ctx else None,
        "retraining_on_drift": s.retraining_on_drift,
    }
    if ctx is not None and ctx.corpus_rows:
        out["feedback"] = pending_count(ctx, s)
    out["retrainings"] = list_retrainings(10, s)
    return out
