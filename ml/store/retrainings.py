"""``retrainings``, ``retraining_feedback`` and the feedback reads the retraining loop needs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg

LOCK_SEED = 74210006

COLUMNS = (
    "id",
    "created_at",
    "updated_at",
    "finished_at",
    "model_name",
    "trigger_key",
    "reason",
    "detail",
    "feedback_ids",
    "n_feedback",
    "threshold",
    "threshold_fraction",
    "corpus_rows",
    "drift_report_id",
    "status",
    "champion_before",
    "champion_after",
    "base_snapshot",
    "snapshot_hash",
    "training_feedback_ids",
    "dataset_report",
    "mode",
    "run_id",
    "candidate_version",
    "metrics",
    "decision",
    "error",
    "trigger_airflow_run_id",
    "airflow_run_id",
    "gate",
)
LIST_COLUMNS = tuple(c for c in COLUMNS if c not in ("dataset_report", "training_feedback_ids", "gate"))
JSON_COLUMNS = frozenset({"metrics", "dataset_report", "gate"})
UPDATABLE = frozenset(COLUMNS) - {"id", "created_at", "updated_at", "model_name", "trigger_key"}


def _iso(row: tuple[Any, ...], cols: tuple[str, ...]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in zip(cols, row, strict=True)}


# ---------------------------------------------------------------- what the champion was trained on
def training_family_params(conn: psycopg.Connection, run_id: str) -> tuple[str, dict[str, Any]] | None:
    row = conn.execute("SELECT family, params FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
    return None if row is None else (row[0], dict(row[1] or {}))


def champion_metrics_of(conn: psycopg.Connection, run_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT champion_metrics FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
    return row[0] if row else None


# ------------------------------------------------- reports (what is pending: ml/stages/review.py, ml/store/review.py)
def mark_reviewed(conn: psycopg.Connection, feedback_ids: list[int], reviewer: str) -> int:
    cur = conn.execute(
        "UPDATE feedback SET reviewed = true, reviewed_at = now(), reviewed_by = %s"
        " WHERE id = ANY(%s) AND NOT reviewed",
        (reviewer, list(feedback_ids)),
    )
    return cur.rowcount


def training_reports(conn: psycopg.Connection, retraining: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(feedback id, prediction id, text, corrected label, created at) of the reports consumed by this
    retraining and by earlier unsuccessful ones of the same champion, oldest first."""
    return conn.execute(
        "SELECT f.id, f.prediction_id, p.text, f.correct_label, f.created_at"
        " FROM retraining_feedback rf JOIN retrainings r ON r.id = rf.retraining_id"
        " JOIN feedback f ON f.id = rf.feedback_id JOIN predictions p ON p.id = f.prediction_id"
        " WHERE r.id = %s OR (r.model_name = %s AND r.champion_before = %s AND r.id < %s"
        "  AND r.status IN ('rejected', 'failed'))"
        " ORDER BY f.created_at, f.id",
        (retraining["id"], retraining["model_name"], retraining["champion_before"], retraining["id"]),
    ).fetchall()


def reported_texts(conn: psycopg.Connection, feedback_ids: list[int]) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT p.text FROM feedback f JOIN predictions p ON p.id = f.prediction_id WHERE f.id = ANY(%s)",
        (list(feedback_ids),),
    ).fetchall()
    return {str(r[0]).strip() for r in rows}


# ---------------------------------------------------------------- retrainings
def lock(conn: psycopg.Connection, model_name: str) -> None:
    """One trigger decision per registered model until this transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))", (f"retraining:{model_name}", LOCK_SEED))


def insert(conn: psycopg.Connection, **fields: Any) -> int | None:
    """A new retraining; None when one with the same ``trigger_key`` exists (never triggered twice)."""
    cols = list(fields)
    row = conn.execute(
        f"INSERT INTO retrainings ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
        " ON CONFLICT (trigger_key) DO NOTHING RETURNING id",
        tuple(fields.values()),
    ).fetchone()
    return None if row is None else int(row[0])


def consume(conn: psycopg.Connection, feedback_ids: list[int], retraining_id: int) -> None:
    """The reports belong to this retraining from now on (primary key: a report is consumed once)."""
    if feedback_ids:
        conn.execute(
            "INSERT INTO retraining_feedback (feedback_id, retraining_id) SELECT unnest(%s::bigint[]), %s",
            (list(feedback_ids), retraining_id),
        )


def get(conn: psycopg.Connection, retraining_id: int) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM retrainings WHERE id = %s", (retraining_id,)).fetchone()
    return None if row is None else _iso(row, COLUMNS)


def latest(conn: psycopg.Connection, model_name: str, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"SELECT {', '.join(LIST_COLUMNS)} FROM retrainings WHERE model_name = %s ORDER BY id DESC LIMIT %s",
        (model_name, limit),
    ).fetchall()
    return [_iso(r, LIST_COLUMNS) for r in rows]


def update(conn: psycopg.Connection, retraining_id: int, **values: Any) -> None:
    unknown = set(values) - UPDATABLE
    if unknown:
        raise ValueError(f"not updatable columns of retrainings: {sorted(unknown)}")
    sets = ", ".join(f"{k} = %s" for k in values)
    vals = [
        json.dumps(v, default=str) if k in JSON_COLUMNS and isinstance(v, (dict, list)) else v
        for k, v in values.items()
    ]
    conn.execute(f"UPDATE retrainings SET {sets}, updated_at = now() WHERE id = %s", (*vals, retraining_id))


def mark_failed(conn: psycopg.Connection, retraining_id: int, error: str) -> None:
    """Failed, unless it already ended with a decision (its consumed reports then enter the next one)."""
    conn.execute(
        "UPDATE retrainings SET status = 'failed', error = %s, finished_at = now(), updated_at = now()"
        " WHERE id = %s AND status NOT IN ('promoted', 'rejected')",
        (error[:4000], retraining_id),
    )
