"""``progressive_challengers`` (sql/012_progressive_challenger.sql): the background comparison that
``make up`` starts after its first champion serves (``ml.stages.progressive``), one per registered
model and data snapshot, with its progress."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from ml.store._rows import one

COLUMNS = (
    "id",
    "created_at",
    "updated_at",
    "finished_at",
    "model_name",
    "snapshot_hash",
    "data_path",
    "families",
    "profile",
    "champion_version",
    "dag_run_id",
    "state",
    "family",
    "done",
    "total",
    "training_started_at",
    "version",
    "shadow_id",
    "reason",
)
_SELECT = f"SELECT {', '.join(COLUMNS)}, now() AS now FROM progressive_challengers"


def claim(
    conn: psycopg.Connection,
    model_name: str,
    snapshot_hash: str,
    data_path: str,
    families: list[str],
    profile: str,
    champion_version: int | None,
) -> tuple[dict[str, Any], bool]:
    """The row of (model, snapshot), created now when there is none or when the previous one failed
    (then reset to ``queued``). Returns (row, claimed): ``claimed`` is True when this caller must start
    the comparison. Atomic: of two concurrent callers one claims."""
    row = one(
        conn,
        "INSERT INTO progressive_challengers (model_name, snapshot_hash, data_path, families, profile, champion_version)"
        " VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (model_name, snapshot_hash) DO UPDATE SET state = 'queued', data_path = EXCLUDED.data_path,"
        "  families = EXCLUDED.families, profile = EXCLUDED.profile, champion_version = EXCLUDED.champion_version,"
        "  dag_run_id = NULL, family = NULL, done = 0, total = 0, training_started_at = NULL, version = NULL,"
        "  shadow_id = NULL, reason = NULL, finished_at = NULL, created_at = now(), updated_at = now()"
        "  WHERE progressive_challengers.state = 'failed'"
        " RETURNING id",
        (model_name, snapshot_hash, data_path, json.dumps(families), profile, champion_version),
    )
    if row is not None:
        got = get(conn, int(row["id"]))
        assert got is not None
        return got, True
    existing = one(conn, _SELECT + " WHERE model_name = %s AND snapshot_hash = %s", (model_name, snapshot_hash))
    assert existing is not None
    return existing, False


def get(conn: psycopg.Connection, pid: int) -> dict[str, Any] | None:
    return one(conn, _SELECT + " WHERE id = %s", (pid,))


def latest(conn: psycopg.Connection, model_name: str) -> dict[str, Any] | None:
    """The newest progressive comparison of ``model_name`` (None when none was started)."""
    return one(conn, _SELECT + " WHERE model_name = %s ORDER BY created_at DESC, id DESC LIMIT 1", (model_name,))


def set_run(conn: psycopg.Connection, pid: int, dag_run_id: str) -> None:
    conn.execute(
        "UPDATE progressive_challengers SET dag_run_id = %s, updated_at = now() WHERE id = %s", (dag_run_id, pid)
    )


def heartbeat(conn: psycopg.Connection, pid: int, state: str, family: str | None, done: float, total: float) -> None:
    """Progress of the search (the search task's heartbeat); never moves a finished row back."""
    conn.execute(
        "UPDATE progressive_challengers SET state = %s, family = %s, done = %s, total = %s, updated_at = now(),"
        " training_started_at = coalesce(training_started_at, now())"
        " WHERE id = %s AND state IN ('queued', 'training', 'evaluating')",
        (state, family, done, total, pid),
    )


def finish(
    conn: psycopg.Connection,
    pid: int,
    state: str,
    reason: str | None,
    version: int | None = None,
    shadow_id: int | None = None,
) -> None:
    """The outcome: ``shadow`` (passed the gate, in its window), ``promoted``, ``rejected`` or ``failed``."""
    conn.execute(
        "UPDATE progressive_challengers SET state = %s, reason = %s, version = coalesce(%s, version),"
        " shadow_id = coalesce(%s, shadow_id), updated_at = now(),"
        " finished_at = CASE WHEN %s = 'shadow' THEN NULL ELSE now() END WHERE id = %s",
        (state, reason, version, shadow_id, state, pid),
    )


def shadow_outcome(conn: psycopg.Connection, shadow_id: int) -> dict[str, Any] | None:
    """The shadow window the challenger serves in (status, requests shadowed, window)."""
    return one(
        conn,
        "SELECT s.status, s.decision, s.window_requests, s.window_hours, s.ends_at,"
        " (SELECT count(*) FROM shadow_predictions p WHERE p.shadow_id = s.id) AS n FROM shadows s WHERE s.id = %s",
        (shadow_id,),
    )


def snapshot_source(conn: psycopg.Connection, run_id: str) -> tuple[str, str] | None:
    """(snapshot hash, source file) of the data the training run ``run_id`` was trained on."""
    row = conn.execute(
        "SELECT t.snapshot_hash, d.source FROM training_runs t JOIN dataset_snapshots d ON d.hash = t.snapshot_hash"
        " WHERE t.run_id = %s",
        (run_id,),
    ).fetchone()
    return (row[0], row[1]) if row else None
