"""The retraining's training set (:func:`prepare`): the champion's snapshot plus the trusted reported
tweets, stored as a snapshot of kind ``retraining`` with its own held-out and reported-eval split."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pandas as pd

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


def _training_reports(conn, r: dict[str, Any], s: Settings) -> pd.DataFrame:
    """Reports consumed by this retraining and by earlier unsuccessful ones of the same champion, that
    give a label the loop trusts NOW (``ml.stages.review``; a reviewer's rejection since the trigger excludes)."""
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
    s = settings or get_settings()
    rid = resolve_id(retraining_id)
    if rid is None:
        rid = create_manual(airflow_run_id=airflow_run_id, settings=s)
    r = get_retraining(rid, s)
    if r is None:
        raise RetrainingError(f"no retraining #{rid}")
    if r["model_name"] != s.model_name:
        raise RetrainingError(f"retraining #{rid} is for model {r['model_name']!r}, this run serves {s.model_name!r}")
    if r["snapshot_hash"]:  # a re-run of the task: the set is already built
        return {"retraining_id": rid, "snapshot_hash": r["snapshot_hash"], **(r["dataset_report"] or {})}
    base = get_snapshot(r["base_snapshot"], s)
    base_frame = base.load()
    _, base_test = split(base_frame, s.test_size, s.seed)
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
        # what ml.data.validation.validate reports, for the snapshot page
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
    if content_hash(frame) == base.hash:
        # nothing new: storing it would be a no-op on the parent's record (its kind and parent kept) and
        # store_split would write the retraining's split into the PARENT's directory
        msg = (
            f"retraining #{rid}: the {len(latest)} reported tweets add nothing to the champion's snapshot "
            f"{base.hash[:16]} (no new text, no changed label outside its held-out set, whose "
            f"{reported_in_held_out} reported texts keep their labels): nothing to retrain on"
        )
        mark_failed(rid, f"RetrainingError: {msg}", s)
        raise RetrainingError(msg)
    snap = store_snapshot(
        frame,
        report,
        source=f"retraining #{rid} of {s.model_name}: {base.hash[:16]} + {len(latest)} reported tweets",
        kind="retraining",
        parent=base.hash,
        settings=s,
    )
    store_split(snap, test_texts, eval_texts)
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
