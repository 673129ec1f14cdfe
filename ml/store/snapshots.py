"""``dataset_snapshots``: validated, content-hashed training sets and their lineage (``parent_hash``)."""

from __future__ import annotations

import json
from typing import Any

import psycopg


def insert(
    conn: psycopg.Connection,
    *,
    snapshot_hash: str,
    source: str,
    kind: str,
    parent_hash: str | None,
    n_rows: int,
    n_positive: int,
    path: str,
    report: dict[str, Any],
) -> None:
    """Record a snapshot (idempotent: the same content is recorded once)."""
    conn.execute(
        "INSERT INTO dataset_snapshots (hash, source, kind, parent_hash, n_rows, n_positive, path, report)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (hash) DO NOTHING",
        (snapshot_hash, source, kind, parent_hash, n_rows, n_positive, path, json.dumps(report)),
    )


def by_prefix(conn: psycopg.Connection, prefix: str, limit: int = 2) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(hash, path, n_rows, report) of the snapshots whose hash starts with ``prefix``."""
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT hash, path, n_rows, report FROM dataset_snapshots WHERE left(hash, %s) = %s LIMIT %s",
            (len(prefix), prefix, limit),
        ).fetchall()
    ]


def latest_hash(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT hash FROM dataset_snapshots ORDER BY created_at DESC LIMIT 1").fetchone()
    return None if row is None else str(row[0])
