"""``drift_reports``: the nightly drift reports' stored summaries."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg

from ml.store._rows import returned


def append_delivery(conn: psycopg.Connection, report_id: str, results: list[dict[str, Any]]) -> None:
    """Append the channels' outcomes of delivering a report to its summary (``delivery``)."""
    conn.execute(
        "UPDATE drift_reports SET summary = jsonb_set(summary, '{delivery}',"
        " coalesce(summary->'delivery', '[]'::jsonb) || %s::jsonb) WHERE id = %s",
        (json.dumps(results), report_id),
    )


SUMMARY_COLUMNS = (
    "id",
    "created_at",
    "period_start",
    "period_end",
    "status",
    "drift_detected",
    "concept_drift",
    "verdict",
    "model_name",
    "reference_version",
    "n_current",
    "n_current_total",
    "n_reference",
    "drifted_share",
    "n_feedback",
    "n_reported_wrong",
    "live_accuracy_upper_bound",
    "training_accuracy",
    "seconds",
    "airflow_run_id",
)
STORED_COLUMNS = (*SUMMARY_COLUMNS, "html_path", "json_path", "summary")


# ---------------------------------------------------------------- what a report reads: the period's predictions
def period_counts(
    conn: psycopg.Connection, model_name: str, start: datetime, end: datetime
) -> list[tuple[str, int, int]]:
    """(source, model version, predictions) of the model in [start, end)."""
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT source, model_version, count(*) FROM predictions"
            " WHERE model_name = %s AND created_at >= %s AND created_at < %s GROUP BY source, model_version",
            (model_name, start, end),
        ).fetchall()
    ]


def period_predictions(
    conn: psycopg.Connection,
    model_name: str,
    start: datetime,
    end: datetime,
    max_rows: int,
    seed: int,
    version: int | None = None,
) -> list[tuple[str, int, float, int, str]]:
    """(text, label, p_positive, model_version, source) of the period (of model ``version`` only, if
    given); above ``max_rows`` a sample that is the same on every run (rows ordered by ``md5(seed || id)``)."""
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT text, label, p_positive, model_version, source FROM predictions"
            " WHERE model_name = %s AND created_at >= %s AND created_at < %s"
            " AND (%s::int IS NULL OR model_version = %s::int)"
            " ORDER BY md5(%s || id::text) LIMIT %s",
            (model_name, start, end, version, version, str(seed), max_rows),
        ).fetchall()
    ]


def serving_at_end(conn: psycopg.Connection, model_name: str, start: datetime, end: datetime) -> int | None:
    """The model version of the period's last prediction: the version that served at the period's end."""
    row = conn.execute(
        "SELECT model_version FROM predictions WHERE model_name = %s AND created_at >= %s AND created_at < %s"
        " ORDER BY created_at DESC, id DESC LIMIT 1",
        (model_name, start, end),
    ).fetchone()
    return int(row[0]) if row else None


def period_feedback(
    conn: psycopg.Connection, model_name: str, start: datetime, end: datetime, version: int | None = None
) -> tuple[int, int]:
    """(predictions of the period with feedback, of which reported wrong), the user's latest word per
    prediction counting; of model ``version`` only, if given."""
    row = returned(
        conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE f.correct_label <> p.label) FROM ("
            "  SELECT DISTINCT ON (prediction_id) prediction_id, correct_label FROM feedback"
            "  ORDER BY prediction_id, created_at DESC, id DESC) f"
            " JOIN predictions p ON p.id = f.prediction_id"
            " WHERE p.model_name = %s AND p.created_at >= %s AND p.created_at < %s"
            " AND (%s::int IS NULL OR p.model_version = %s::int)",
            (model_name, start, end, version, version),
        ).fetchone(),
        "period feedback counts",
    )
    return int(row[0]), int(row[1])


# ---------------------------------------------------------------- drift_reports
def insert(conn: psycopg.Connection, values: dict[str, Any]) -> None:
    """Store one report (``values``: every column of :data:`STORED_COLUMNS`)."""
    conn.execute(
        f"INSERT INTO drift_reports ({', '.join(STORED_COLUMNS)}) VALUES ({', '.join(['%s'] * len(STORED_COLUMNS))})",
        tuple(json.dumps(values[c], default=str) if c == "summary" else values[c] for c in STORED_COLUMNS),
    )


def latest(conn: psycopg.Connection, limit: int, model_name: str | None = None) -> list[dict[str, Any]]:
    """The newest reports: :data:`SUMMARY_COLUMNS` and ``n_version_predictions``, the period's predictions of
    the version compared (what the feedback counts are of; ``n_current_total`` for reports stored before)."""
    rows = conn.execute(
        f"SELECT {', '.join(SUMMARY_COLUMNS)},"
        " coalesce((summary->'feedback'->>'predictions')::int, n_current_total) FROM drift_reports"
        " WHERE (%s::text IS NULL OR model_name = %s) ORDER BY created_at DESC, id DESC LIMIT %s",
        (model_name, model_name, limit),
    ).fetchall()
    keys = (*SUMMARY_COLUMNS, "n_version_predictions")
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in zip(keys, r, strict=True)} for r in rows]


def history(conn: psycopg.Connection, model_name: str, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` newest reports of ``model_name``, oldest first, with what the drift history draws:
    period end, compared version, status, drifted share, the CBPE estimate (and its standard error), the
    compared predictions and those reported wrong (the report rate's numerator and denominator)."""
    rows = conn.execute(
        "SELECT * FROM (SELECT id, created_at, period_end, status, reference_version, drifted_share,"
        " (summary->'estimate'->>'estimated_accuracy')::float8, (summary->'estimate'->>'standard_error')::float8,"
        " coalesce((summary->'feedback'->>'predictions')::int, n_current_total), n_reported_wrong, n_current_total"
        " FROM drift_reports WHERE model_name = %s ORDER BY created_at DESC, id DESC LIMIT %s) r"
        " ORDER BY created_at, id",
        (model_name, limit),
    ).fetchall()
    keys = (
        "id",
        "created_at",
        "period_end",
        "status",
        "version",
        "drifted_share",
        "estimated_accuracy",
        "estimate_se",
        "predictions",
        "reported_wrong",
        "rows_in_period",
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]


def set_action(conn: psycopg.Connection, report_id: str, action: dict[str, Any]) -> None:
    """Record what the platform did after the report (``action`` in its stored summary)."""
    conn.execute(
        "UPDATE drift_reports SET summary = jsonb_set(summary, '{action}', %s::jsonb) WHERE id = %s",
        (json.dumps(action, default=str), report_id),
    )


def summary(conn: psycopg.Connection, report_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT summary FROM drift_reports WHERE id = %s", (report_id,)).fetchone()
    return row[0] if row else None


def html_path(conn: psycopg.Connection, report_id: str) -> str | None:
    row = conn.execute("SELECT html_path FROM drift_reports WHERE id = %s", (report_id,)).fetchone()
    return row[0] if row else None
