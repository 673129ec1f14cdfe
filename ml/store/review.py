"""``reviews`` and the feedback reads behind trusted labels (ml/stages/review.py) and the review queue."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg

from ml.store._rows import many, one, returned

# one row per report: what ml.stages.review.judge needs
REPORT_COLUMNS = (
    "feedback_id",
    "prediction_id",
    "text",
    "reporter",
    "label",
    "predicted",
    "created_at",
    "consumed",
    "reviewed",
    "review_id",
    "quarantined",
    "comment",
)
# quarantined: a report of an identity that a `feedback_burst` alert named (details.identity_sha256, the
# sha256 of the reporter), made from the burst's first report until the alert resolved (ml/stages/alerts/burst.py)
_QUARANTINED = (
    "f.review_id IS NULL AND EXISTS (SELECT 1 FROM alerts a WHERE a.rule = 'feedback_burst'"
    " AND a.model_name = p.model_name AND a.details ? 'identity_sha256'"
    " AND a.details->'identity_sha256' ? encode(sha256(convert_to(coalesce(f.reporter, 'unidentified'), 'UTF8')), 'hex')"
    " AND f.created_at >= a.first_report_at AND (a.resolved_at IS NULL OR f.created_at <= a.resolved_at))"
)
_REPORT_SELECT = (
    "SELECT f.id, f.prediction_id, p.text, coalesce(f.reporter, 'unidentified'), f.correct_label, p.label,"
    " f.created_at, EXISTS (SELECT 1 FROM retraining_feedback rf WHERE rf.feedback_id = f.id), f.reviewed,"
    f" f.review_id, {_QUARANTINED}, f.comment"
    " FROM feedback f JOIN predictions p ON p.id = f.prediction_id"
)


def _reports(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(REPORT_COLUMNS, r, strict=True)) for r in rows]


def reports_of_version(
    conn: psycopg.Connection, model_name: str, version: int, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Every report on a version's predictions (made after ``since``), consumed or not, oldest first."""
    return _reports(
        conn.execute(
            _REPORT_SELECT + " WHERE p.model_name = %s AND p.model_version = %s"
            " AND (%s::timestamptz IS NULL OR f.created_at > %s) ORDER BY f.created_at, f.id",
            (model_name, version, since, since),
        ).fetchall()
    )


def reports_of_feedback(conn: psycopg.Connection, feedback_ids: list[int]) -> list[dict[str, Any]]:
    return _reports(
        conn.execute(
            _REPORT_SELECT + " WHERE f.id = ANY(%s) ORDER BY f.created_at, f.id", (list(feedback_ids),)
        ).fetchall()
    )


def latest_reviews(conn: psycopg.Connection, model_name: str, text_sha256s: list[str]) -> dict[str, dict[str, Any]]:
    """The latest decision on each of these texts: text sha256 -> review row."""
    rows = many(
        conn,
        "SELECT DISTINCT ON (text_sha256) id, created_at, text_sha256, decision, label, reviewer,"
        " prediction_id FROM reviews WHERE model_name = %s AND text_sha256 = ANY(%s)"
        " ORDER BY text_sha256, created_at DESC, id DESC",
        (model_name, list(text_sha256s)),
    )
    return {r["text_sha256"]: r for r in rows}


def reviewed_texts(conn: psycopg.Connection, model_name: str) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT text_sha256 FROM reviews WHERE model_name = %s", (model_name,)
        ).fetchall()
    }


def insert_review(
    conn: psycopg.Connection,
    *,
    model_name: str,
    text: str,
    text_sha256: str,
    prediction_id: uuid.UUID | str | None,
    decision: str,
    label: int | None,
    proposed_label: int | None,
    reviewer: str,
) -> dict[str, Any]:
    row = one(
        conn,
        "INSERT INTO reviews (model_name, text, text_sha256, prediction_id, decision, label,"
        " proposed_label, reviewer) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " RETURNING id, created_at, model_name, text_sha256, prediction_id, decision, label,"
        " proposed_label, reviewer",
        (model_name, text, text_sha256, prediction_id, decision, label, proposed_label, reviewer),
    )
    assert row is not None
    return row


def insert_review_report(
    conn: psycopg.Connection, prediction_id: uuid.UUID | str, label: int, reviewer: str, review_id: int, comment: str
) -> int:
    """The reviewer's label as a report on the item's prediction (consumed and traced like any report)."""
    return int(
        returned(
            conn.execute(
                "INSERT INTO feedback (prediction_id, correct_label, comment, reporter, review_id, reviewed, reviewed_at,"
                " reviewed_by) VALUES (%s, %s, %s, %s, %s, true, now(), %s) RETURNING id",
                (prediction_id, label, comment, reviewer, review_id, reviewer),
            ).fetchone(),
            "review report insert",
        )[0]
    )


def review_for_update(conn: psycopg.Connection, review_id: int) -> dict[str, Any] | None:
    """A decision, locked until the transaction ends, with the id of the latest decision on its text."""
    return one(
        conn,
        "SELECT r.id, r.created_at, r.model_name, r.text_sha256, r.prediction_id, r.decision, r.label,"
        " r.reviewer, (SELECT l.id FROM reviews l WHERE l.model_name = r.model_name AND l.text_sha256 = r.text_sha256"
        " ORDER BY l.created_at DESC, l.id DESC LIMIT 1) AS latest_id FROM reviews r WHERE r.id = %s FOR UPDATE",
        (int(review_id),),
    )


def review_feedback(conn: psycopg.Connection, review_id: int) -> list[dict[str, Any]]:
    """The reports a decision stored (``feedback.review_id``), locked, each with the retraining that
    consumed it (None when none did yet)."""
    return many(
        conn,
        "SELECT f.id, rf.retraining_id FROM feedback f LEFT JOIN retraining_feedback rf ON rf.feedback_id = f.id"
        " WHERE f.review_id = %s ORDER BY f.id FOR UPDATE OF f",
        (int(review_id),),
    )


def delete_review(conn: psycopg.Connection, review_id: int) -> int:
    """Delete a decision and the reports it stored (in the caller's transaction); the feedback rows deleted."""
    n = conn.execute("DELETE FROM feedback WHERE review_id = %s", (int(review_id),)).rowcount
    conn.execute("DELETE FROM reviews WHERE id = %s", (int(review_id),))
    return int(n or 0)


def prediction(conn: psycopg.Connection, prediction_id: uuid.UUID | str) -> dict[str, Any] | None:
    return one(
        conn,
        "SELECT id, created_at, text, label, p_negative, p_positive, model_name, model_version"
        " FROM predictions WHERE id = %s",
        (str(prediction_id),),
    )


# ---------------------------------------------------------------- the queue
def reported_predictions(
    conn: psycopg.Connection, model_name: str, since: datetime, limit: int
) -> list[dict[str, Any]]:
    """Reports (not from reviews) on the model's predictions since ``since``, newest first (at most
    ``limit``): what the queue groups by text."""
    return _reports(
        conn.execute(
            _REPORT_SELECT + " WHERE p.model_name = %s AND f.review_id IS NULL AND f.created_at > %s"
            " ORDER BY f.created_at DESC, f.id DESC LIMIT %s",
            (model_name, since, limit),
        ).fetchall()
    )


def least_confident(conn: psycopg.Connection, model_name: str, since: datetime, limit: int) -> list[dict[str, Any]]:
    """The model's live predictions since ``since`` closest to a coin flip (uncertainty sampling)."""
    return many(
        conn,
        "SELECT id, created_at, text, label, p_negative, p_positive, model_version"
        " FROM predictions WHERE model_name = %s AND created_at > %s AND source = 'api'"
        " ORDER BY abs(p_positive - 0.5), created_at DESC LIMIT %s",
        (model_name, since, limit),
    )
