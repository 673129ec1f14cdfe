"""``alerts``: misclassification bursts, drift alerts and one-off events (DAG failures), and the
counts of reported-wrong predictions the burst rule reads. One open alert per (rule, model): a
partial unique index and a transaction-level advisory lock per (rule, model)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg

from ml.store._rows import returned

LOCK_SEED = 74210005

COLUMNS = (
    "id",
    "created_at",
    "rule",
    "model_name",
    "severity",
    "window_seconds",
    "threshold",
    "n_reports",
    "feedback_ids",
    "later_feedback_ids",
    "first_report_at",
    "last_report_at",
    "message",
    "channels",
    "resolved_at",
)
PAYLOAD_COLUMNS = (
    "id",
    "created_at",
    "rule",
    "model_name",
    "severity",
    "window_seconds",
    "threshold",
    "n_reports",
    "feedback_ids",
    "first_report_at",
    "last_report_at",
    "message",
    "details",
)


def _iso(row: tuple[Any, ...], cols: tuple[str, ...]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in zip(cols, row, strict=True)}


def lock(conn: psycopg.Connection, rule: str, model_name: str) -> datetime:
    """Hold (rule, model) until the transaction ends; returns the clock read AFTER the lock, so every
    report committed before it is visible."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))", (f"{rule}:{model_name}", LOCK_SEED))
    return returned(conn.execute("SELECT clock_timestamp()").fetchone(), "clock read")[0]


# ---------------------------------------------------------------- what the burst rule counts
def feedback_verdict(conn: psycopg.Connection, feedback_id: int) -> tuple[str, bool] | None:
    """(model name, whether the report says the prediction was wrong); None for an unknown id."""
    row = conn.execute(
        "SELECT p.model_name, f.correct_label <> p.label FROM feedback f JOIN predictions p ON p.id = f.prediction_id"
        " WHERE f.id = %s",
        (feedback_id,),
    ).fetchone()
    return None if row is None else (row[0], bool(row[1]))


def wrong_reports_between(
    conn: psycopg.Connection, model_name: str, start: datetime, end: datetime, include_start: bool = False
) -> tuple[int, list[int], datetime | None, datetime | None]:
    """(distinct predictions reported wrong, feedback ids, first, last report time) in (start, end]
    (or [start, end] with ``include_start``)."""
    op = ">=" if include_start else ">"
    n, ids, first, last = returned(
        conn.execute(
            "SELECT count(DISTINCT f.prediction_id), coalesce(array_agg(f.id ORDER BY f.id), '{}'),"
            " min(f.created_at), max(f.created_at)"
            " FROM feedback f JOIN predictions p ON p.id = f.prediction_id"
            f" WHERE p.model_name = %s AND f.correct_label <> p.label AND f.created_at {op} %s AND f.created_at <= %s",
            (model_name, start, end),
        ).fetchone(),
        "wrong reports between",
    )
    return int(n), list(ids), first, last


def wrong_reports_by_reporter(
    conn: psycopg.Connection, model_name: str, start: datetime, end: datetime, include_start: bool = False
) -> list[tuple[str, int, datetime, datetime]]:
    """(reporter, distinct predictions it reported wrong, first, last) in (start, end] (``[start, end]``
    with ``include_start``), most first; reviewers' decisions (``review_id``) are not reports and are
    left out. A report repeated on one prediction counts once."""
    op = ">=" if include_start else ">"
    rows = conn.execute(
        "SELECT coalesce(f.reporter, 'unidentified'), count(DISTINCT f.prediction_id), min(f.created_at),"
        " max(f.created_at)"
        " FROM feedback f JOIN predictions p ON p.id = f.prediction_id"
        f" WHERE p.model_name = %s AND f.correct_label <> p.label AND f.review_id IS NULL"
        f" AND f.created_at {op} %s AND f.created_at <= %s GROUP BY 1 ORDER BY 2 DESC, 1",
        (model_name, start, end),
    ).fetchall()
    return [(r[0], int(r[1]), r[2], r[3]) for r in rows]


def wrong_report_total(conn: psycopg.Connection, model_name: str, start: datetime, end: datetime) -> int:
    """Wrong-reports (not reviewers' decisions) in (start, end], one per (prediction, reporter): the normal
    rate of the burst guard."""
    return int(
        returned(
            conn.execute(
                "SELECT count(DISTINCT (f.prediction_id, coalesce(f.reporter, '')))"
                " FROM feedback f JOIN predictions p ON p.id = f.prediction_id"
                " WHERE p.model_name = %s AND f.correct_label <> p.label AND f.review_id IS NULL"
                " AND f.created_at > %s AND f.created_at <= %s",
                (model_name, start, end),
            ).fetchone(),
            "wrong-report count",
        )[0]
    )


# ---------------------------------------------------------------- open alerts
def open_alert(conn: psycopg.Connection, rule: str, model_name: str) -> dict[str, Any] | None:
    """The open alert of (rule, model), locked for update."""
    row = conn.execute(
        "SELECT id, last_report_at, first_report_at, details FROM alerts WHERE rule = %s AND model_name = %s"
        " AND resolved_at IS NULL FOR UPDATE",
        (rule, model_name),
    ).fetchone()
    return (
        None
        if row is None
        else {"id": row[0], "last_report_at": row[1], "first_report_at": row[2], "details": row[3] or {}}
    )


def resolve(
    conn: psycopg.Connection, alert_id: int, at: datetime | None = None, details: dict[str, Any] | None = None
) -> None:
    conn.execute(
        "UPDATE alerts SET resolved_at = coalesce(%s, now()), details = details || %s::jsonb WHERE id = %s",
        (at, json.dumps(details or {}), alert_id),
    )


def add_later_report(conn: psycopg.Connection, alert_id: int, feedback_id: int) -> None:
    conn.execute(
        "UPDATE alerts SET later_feedback_ids = later_feedback_ids || %s::bigint"
        " WHERE id = %s AND NOT (%s = ANY(feedback_ids)) AND NOT (%s = ANY(later_feedback_ids))",
        (feedback_id, alert_id, feedback_id, feedback_id),
    )


def update_count(
    conn: psycopg.Connection,
    alert_id: int,
    n_reports: int,
    last_report_at: datetime,
    message: str,
    details: dict[str, Any] | None = None,
    first_report_at: datetime | None = None,
) -> None:
    """Recount an open alert. ``first_report_at`` moves its start earlier, never later: a report
    stored late (it waited in ``pending_feedback`` for its prediction) keeps the time it was made."""
    conn.execute(
        "UPDATE alerts SET n_reports = %s, last_report_at = greatest(last_report_at, %s),"
        " first_report_at = least(first_report_at, %s::timestamptz), message = %s,"
        " details = details || %s::jsonb WHERE id = %s",
        (n_reports, last_report_at, first_report_at, message, json.dumps(details or {}), alert_id),
    )


def insert_open(
    conn: psycopg.Connection,
    *,
    rule: str,
    model_name: str,
    severity: str,
    window_seconds: int,
    threshold: int | None,
    n_reports: int,
    feedback_ids: list[int],
    first_report_at: datetime,
    last_report_at: datetime,
    message: str,
    details: dict[str, Any],
    channels: list[dict[str, Any]],
) -> int | None:
    """A new open alert; None when (rule, model) already has one (the unique index, second guard)."""
    row = conn.execute(
        "INSERT INTO alerts (rule, model_name, severity, window_seconds, threshold, n_reports, feedback_ids,"
        " first_report_at, last_report_at, message, details, channels) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
        " ON CONFLICT (rule, model_name) WHERE resolved_at IS NULL DO NOTHING RETURNING id",
        (
            rule,
            model_name,
            severity,
            window_seconds,
            threshold,
            n_reports,
            feedback_ids,
            first_report_at,
            last_report_at,
            message,
            json.dumps(details, default=str),
            json.dumps(channels),
        ),
    ).fetchone()
    return None if row is None else int(row[0])


def insert_event(
    conn: psycopg.Connection,
    rule: str,
    model_name: str,
    severity: str,
    message: str,
    details: dict[str, Any],
    channels: list[dict[str, Any]],
) -> int:
    """A one-off alert, resolved as it is recorded (an event, not a state)."""
    return int(
        returned(
            conn.execute(
                "INSERT INTO alerts (rule, model_name, severity, message, details, channels, resolved_at)"
                " VALUES (%s,%s,%s,%s,%s,%s, now()) RETURNING id",
                (rule, model_name, severity, message, json.dumps(details, default=str), json.dumps(channels)),
            ).fetchone(),
            "alert event insert",
        )[0]
    )


def add_channels(conn: psycopg.Connection, alert_id: int, results: list[dict[str, Any]]) -> None:
    conn.execute("UPDATE alerts SET channels = channels || %s::jsonb WHERE id = %s", (json.dumps(results), alert_id))


# ---------------------------------------------------------------- reading back
def payload(conn: psycopg.Connection, alert_id: int) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {', '.join(PAYLOAD_COLUMNS)} FROM alerts WHERE id = %s", (alert_id,)).fetchone()
    return None if row is None else _iso(row, PAYLOAD_COLUMNS)


def latest(
    conn: psycopg.Connection, limit: int, model_name: str | None = None, rule: str | None = None
) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM alerts WHERE (%s::text IS NULL OR model_name = %s)"
        " AND (%s::text IS NULL OR rule = %s) ORDER BY id DESC LIMIT %s",
        (model_name, model_name, rule, rule, limit),
    ).fetchall()
    return [_iso(r, COLUMNS) for r in rows]
