"""``rate_limit_counters``: fixed-window counters shared by every API process (ml/platform/quotas.py)."""

from __future__ import annotations

import psycopg

from ml.store._rows import returned


def incr(conn: psycopg.Connection, key: str, expiry_seconds: float, amount: int) -> int:
    """Add ``amount`` to the key's counter, starting a new window of ``expiry_seconds`` when the last
    one has expired; one atomic statement. Returns the count in the window."""
    row = returned(
        conn.execute(
            "INSERT INTO rate_limit_counters AS c (key, count, expires_at)"
            " VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s))"
            " ON CONFLICT (key) DO UPDATE SET"
            "  count = CASE WHEN c.expires_at <= clock_timestamp() THEN EXCLUDED.count ELSE c.count + EXCLUDED.count END,"
            "  expires_at = CASE WHEN c.expires_at <= clock_timestamp() THEN EXCLUDED.expires_at ELSE c.expires_at END"
            " RETURNING count",
            (key, amount, float(expiry_seconds)),
        ).fetchone(),
        "rate_limit_counters upsert",
    )
    return int(row[0])


def get(conn: psycopg.Connection, key: str) -> tuple[int, float] | None:
    """(count, expiry as a unix time) of a live window; None when there is none."""
    row = conn.execute(
        "SELECT count, extract(epoch FROM expires_at) FROM rate_limit_counters"
        " WHERE key = %s AND expires_at > clock_timestamp()",
        (key,),
    ).fetchone()
    return None if row is None else (int(row[0]), float(row[1]))


def clear(conn: psycopg.Connection, key: str) -> None:
    conn.execute("DELETE FROM rate_limit_counters WHERE key = %s", (key,))


def reset(conn: psycopg.Connection, prefix: str = "") -> int:
    return conn.execute("DELETE FROM rate_limit_counters WHERE key LIKE %s", (prefix + "%",)).rowcount


def purge_expired(conn: psycopg.Connection) -> int:
    return conn.execute(
        "DELETE FROM rate_limit_counters WHERE expires_at < clock_timestamp() - interval '1 hour'"
    ).rowcount


def ping(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1").fetchone() is not None
