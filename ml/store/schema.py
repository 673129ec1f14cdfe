"""Databases and the schema's migration bookkeeping (``schema_migrations``). The migrations
themselves are the numbered files in ``sql/``; ``ml.platform.db.migrate`` applies them in order."""

from __future__ import annotations

import psycopg
from psycopg import sql

MIGRATION_LOCK = 74210001


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def create_database(conn: psycopg.Connection, name: str) -> None:
    """CREATE DATABASE (needs an autocommit connection to another database)."""
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def lock_migrations(conn: psycopg.Connection) -> None:
    """One migrator per server at a time (session-level: release with :func:`unlock_migrations`)."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))


def unlock_migrations(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def applied_migrations(conn: psycopg.Connection) -> set[str]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    return {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}


def apply_migration(conn: psycopg.Connection, version: str, script: str) -> None:
    """Run one migration file and record it, in one transaction."""
    with conn.transaction():
        conn.execute(script)  # the file's statements, as written in sql/
        conn.execute("INSERT INTO schema_migrations(version) VALUES (%s)", (version,))


def ping(conn: psycopg.Connection) -> None:
    """A round trip: raises when the database does not answer."""
    conn.execute("SELECT 1").fetchone()
