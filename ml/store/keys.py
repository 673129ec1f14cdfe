"""``api_keys``: the API's identities (only the sha256 of each key is stored)."""

from __future__ import annotations

from typing import Any

import psycopg

from ml.store._rows import many, one

_COLUMNS = "id, key_id, name, scopes, created_at, created_by, revoked_at, last_used_at"


def insert(
    conn: psycopg.Connection, key_id: str, name: str, key_sha256: str, scopes: list[str], created_by: str | None
) -> dict[str, Any]:
    row = one(
        conn,
        f"INSERT INTO api_keys (key_id, name, key_sha256, scopes, created_by) VALUES (%s, %s, %s, %s, %s)"
        f" RETURNING {_COLUMNS}",
        (key_id, name, key_sha256, list(scopes), created_by),
    )
    assert row is not None
    return row


def by_key_id(conn: psycopg.Connection, key_id: str) -> dict[str, Any] | None:
    """The key's row with its hash (for the constant-time comparison), revoked or not."""
    return one(conn, f"SELECT {_COLUMNS}, key_sha256 FROM api_keys WHERE key_id = %s", (key_id,))


def touch(conn: psycopg.Connection, key_id: str) -> None:
    """Record use, at most once a minute per key (no write per request)."""
    conn.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE key_id = %s"
        " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        (key_id,),
    )


def list_keys(conn: psycopg.Connection, include_revoked: bool = True) -> list[dict[str, Any]]:
    return many(conn, f"SELECT {_COLUMNS} FROM api_keys WHERE %s OR revoked_at IS NULL ORDER BY id", (include_revoked,))


def revoke(conn: psycopg.Connection, name_or_key_id: str) -> list[dict[str, Any]]:
    """Revoke the key with this key id, or every live key of this name; returns the revoked rows."""
    return many(
        conn,
        f"UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL"
        f" AND (key_id = %s OR name = %s) RETURNING {_COLUMNS}",
        (name_or_key_id, name_or_key_id),
    )
