"""Row helpers shared by the store modules: rows as dicts keyed by column name."""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row


def one(conn: psycopg.Connection, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def many(conn: psycopg.Connection, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args)
        return cur.fetchall()


R = TypeVar("R")


def returned(row: R | None, what: str) -> R:
    """The row of a statement that always returns one (an aggregate, ``INSERT ... RETURNING``, ...);
    a clear error instead of indexing ``None`` if it ever did not."""
    if row is None:
        raise RuntimeError(f"{what}: the statement returned no row")
    return row
