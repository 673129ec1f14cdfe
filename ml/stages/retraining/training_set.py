"""The retraining's training set (:func:`prepare`): the champion's snapshot plus the trusted reported
tweets, stored as a snapshot of kind ``retraining`` with its own held-out and reported-eval split."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd
import psycopg

from ml.data.snapshots import content_hash, get_snapshot, store_snapshot, store_split
from ml.data.splits import split
from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.stages import review
from ml.stages.retraining import RetrainingError
from ml.stages.retraining.records import get_retraining, mark_failed, resolve_id, update_retraining
from ml.stages.retraining.trigger import create_manual
from ml.store import retrainings as store

log = logging.getLogger(__package__)  # the stage's logger, as before the split into modules


def _training_reports(conn: psycopg.Connection, r: dict[str, Any], settings: Settings) -> pd.DataFrame:
    """Reports consumed by this retraining and by earlier unsuccessful ones of the same champion, that
    give a label the loop trusts NOW (``ml.stages.review``; a reviewer's rejection since the trigger excludes)."""
    rows = store.training_reports(conn, r)
    keep, dropped = review.trusted_training_rows(conn, r["model_name"], r["champion_before"], rows, settings)
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
    s = settings or get_settings()
    rid, r = _load_retraining(retraining_id, airflow_run_id, s)
    if r["snapshot_hash"]:  # a re-run of the task: the set is already built
        return {"retraining_id": rid, "snapshot_hash": r["snapshot_hash"], **(r["dataset_report"] or {})}
    base = get_snapshot(r["base_snapshot"], s)
    base_frame = base.load()
    _, base_test = split(base_frame, s.test_size, s.seed)
    with db.connect(s) as conn:
        reports = _training_reports(conn, r, s)
    v = _vote(base_frame, base_test, reports)
    ch = _label_changes(base_frame, v, s)
    test_texts = v.held_texts
    report = _dataset_report(rid, base.hash, base_frame, v, ch, test_texts, s)
    if content_hash(v.frame) == base.hash:
        # nothing new: storing it would be a no-op on the parent's record (its kind and parent kept) and
        # store_split would write the retraining's split into the PARENT's directory
        msg = (
            f"retraining #{rid}: the {len(v.latest)} reported tweets add nothing to the champion's snapshot "
            f"{base.hash[:16]} (no new text, no changed label outside its held-out set, whose "
            f"{v.reported_in_held_out} reported texts keep their labels): nothing to retrain on"
        )
        mark_failed(rid, f"RetrainingError: {msg}", s)
        raise RetrainingError(msg)
    snap = store_snapshot(
        v.frame,
        report,
        source=f"retraining #{rid} of {s.model_name}: {base.hash[:16]} + {len(v.latest)} reported tweets",
        kind="retraining",
        parent=base.hash,
        settings=s,
    )
    store_split(snap, test_texts, ch.eval_texts)
    summary = _dataset_summary(report)
    update_retraining(
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
        f"{len(v.frame):,}",
        base.hash[:16],
        len(v.latest),
        len(ch.new_texts),
        len(ch.relabelled),
        len(v.tie),
        summary["held_out"]["rows"],
        len(ch.eval_texts),
    )
    return {"retraining_id": rid, "snapshot_hash": snap.hash, **summary}


def _load_retraining(retraining_id: Any, airflow_run_id: str | None, settings: Settings) -> tuple[int, dict[str, Any]]:
    """The retraining to prepare (a manual one recorded first when none is given), checked against this model."""
    rid = resolve_id(retraining_id)
    if rid is None:
        rid = create_manual(airflow_run_id=airflow_run_id, settings=settings)
    r = get_retraining(rid, settings)
    if r is None:
        raise RetrainingError(f"no retraining #{rid}")
    if r["model_name"] != settings.model_name:
        raise RetrainingError(
            f"retraining #{rid} is for model {r['model_name']!r}, this run serves {settings.model_name!r}"
        )
    return rid, r


@dataclass
class _Votes:
    """The reports' votes merged with the snapshot's labels, and the resulting training frame."""

    reports: pd.DataFrame  # the trusted reports with a text
    latest: pd.DataFrame  # one per text
    latest_votes: pd.DataFrame  # those outside the parent's held-out set
    held_texts: set[str]
    reported_in_held_out: int
    votes: pd.DataFrame
    g: pd.DataFrame  # votes per text: size and sum of labels
    tie: pd.Index
    frame: pd.DataFrame


def _vote(base_frame: pd.DataFrame, base_test: pd.DataFrame, reports: pd.DataFrame) -> _Votes:
    """Merge the reports' labels into the snapshot's by majority per text (ties dropped, held-out texts kept)."""
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
    return _Votes(reports, latest, latest_votes, held_texts, reported_in_held_out, votes, g, tie, frame)


class _Changes(NamedTuple):
    """What the reports change: the reported texts that train, new ones, relabelled ones, the eval share."""

    report_texts: set[str]
    new_texts: set[str]
    relabelled: set[str]
    eval_texts: list[str]


def _label_changes(base_frame: pd.DataFrame, v: _Votes, settings: Settings) -> _Changes:
    """The reported texts that are new or relabelled, and those held out as the reported-eval split."""
    base_labels = dict(zip(base_frame["text"], base_frame["label"].astype(int)))
    report_texts = set(v.latest_votes["text"]) - set(v.tie)
    new_texts = {t for t in report_texts if t not in base_labels}
    final = dict(zip(v.frame["text"], v.frame["label"].astype(int)))
    relabelled = {t for t in report_texts if t in base_labels and base_labels[t] != final.get(t)}
    eval_texts = sorted(t for t in report_texts if _eval_bucket(t) < settings.retraining_report_eval_fraction)
    return _Changes(report_texts, new_texts, relabelled, eval_texts)


def _dataset_report(
    rid: int,
    parent: str,
    base_frame: pd.DataFrame,
    v: _Votes,
    ch: _Changes,
    test_texts: set[str],
    settings: Settings,
) -> dict[str, Any]:
    """The new snapshot's dataset report: provenance, label changes, splits, and the validation counts."""
    frame, g, tie, reports, latest = v.frame, v.g, v.tie, v.reports, v.latest
    return {
        "source": f"retraining #{rid}",
        "kind": "retraining",
        "parent": parent,
        "parent_rows": int(len(base_frame)),
        "reports": int(len(reports)),
        "reported_predictions": int(len(latest)),
        "reported_texts": int(latest["text"].nunique()),
        "feedback_ids": [int(x) for x in reports["feedback_id"]],
        "new_texts": len(ch.new_texts),
        "relabelled_texts": len(ch.relabelled),
        "conflicts_tied_dropped": int(len(tie)),
        "rows_out": int(len(frame)),
        "label_counts": {"negative": int((frame["label"] == 0).sum()), "positive": int(frame["label"].sum())},
        "held_out": {
            "rule": "the parent snapshot's held-out texts, all of them, with the parent's labels (reported "
            "ones included, never trained on)",
            "rows": int(frame["text"].isin(test_texts).sum()),
            "reported_texts_kept": v.reported_in_held_out,
        },
        "reported_eval": {
            "rule": f"{settings.retraining_report_eval_fraction:.0%} of the reported texts (sha256 of the "
            "text), held out of training; scored, not used to promote",
            "rows": len(ch.eval_texts),
        },
        "reported_train_rows": len(ch.report_texts) - len(ch.eval_texts),
        # what ml.data.validation.validate reports, for the snapshot page
        "rows_read": int(len(v.votes)),
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


def _dataset_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of the dataset report the retraining record keeps."""
    return {
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
