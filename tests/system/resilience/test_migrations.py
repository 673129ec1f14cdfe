"""The migrations in ``sql/`` (``ml.platform.db.migrate``): applied twice, applied by two processes at the
same moment (the advisory lock), and applied over a database that holds a row in every table of the
previous version (each version N-1 -> the latest), on real databases of the test's own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from ml.platform import db
from ml.store import schema

REPO = Path(__file__).resolve().parents[3]
FILES = db.migration_files()
VERSIONS = [p.stem for p in FILES]


@contextmanager
def fresh_database(platform_env, create: bool = True):
    """The URL of a database of the test's own on the session's server (created unless ``create`` is
    False), dropped at the end."""
    base = db.libpq_url(platform_env.database_url)
    admin = db.with_database(base, "postgres")
    name = f"{db.database_name(base)}_mig_{uuid.uuid4().hex[:6]}"
    if create:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield db.with_database(base, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def shape(conn) -> list[tuple]:
    """Every column of every table, index and constraint of the public schema: what migrate() changes."""
    cols = conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY 1, 2"
    ).fetchall()
    idx = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall()
    cons = conn.execute(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"
    ).fetchall()
    return [*cols, *idx, *cons]


def stored_versions(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def test_migrate_twice_applies_nothing_the_second_time(platform_env):
    with fresh_database(platform_env) as url:
        assert db.migrate(url) == VERSIONS
        with psycopg.connect(url, autocommit=True) as c:
            before = shape(c)
        assert db.migrate(url) == []
        with psycopg.connect(url, autocommit=True) as c:
            assert shape(c) == before
            assert stored_versions(c) == VERSIONS


# One migrator process: blocks on its stdin (the test's barrier), then migrates the database (which may not exist
# yet: migrate() creates it) and prints what it applied.
_MIGRATOR = """
import json, sys
from ml.platform import db
url = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(db.migrate(url)), flush=True)
"""


@pytest.mark.parametrize("exists", [True, False], ids=["existing-database", "database-created-by-both"])
def test_two_processes_migrating_at_once_apply_each_version_once(platform_env, exists):
    with fresh_database(platform_env, create=exists) as url:
        for attempt in range(3):  # three rounds on fresh databases: a race shows in one of them
            if attempt:
                with psycopg.connect(db.with_database(db.libpq_url(url), "postgres"), autocommit=True) as c:
                    c.execute(f'DROP DATABASE IF EXISTS "{db.database_name(url)}" WITH (FORCE)')
                    if exists:
                        c.execute(f'CREATE DATABASE "{db.database_name(url)}"')
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", _MIGRATOR, url],
                    cwd=REPO,
                    env=os.environ.copy(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(2)
            ]
            try:
                for p in procs:  # both imported everything and wait: the barrier
                    assert p.stdout.readline().strip() == "ready", p.stderr.read()
                for p in procs:
                    p.stdin.write("go\n")
                    p.stdin.flush()
                out = [p.communicate(timeout=120) for p in procs]
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            assert [p.returncode for p in procs] == [0, 0], [err for _, err in out]
            applied = [json.loads(o.strip().splitlines()[-1]) for o, _ in out]
            # every version applied by exactly one of them, in order; none twice
            assert sorted(applied[0] + applied[1]) == VERSIONS, applied
            assert [] in applied, applied  # the lock holder applied everything; the other found nothing left
            with psycopg.connect(url, autocommit=True) as c:
                assert stored_versions(c) == VERSIONS


# ------------------------------------------------------------------ N-1 -> N over rows of every table
_ARRAY_LITERAL = re.compile(r"ARRAY\['((?:[^']|'')*)'")
WHEN = "2026-01-02T03:04:05+00:00"


def _tables(conn) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_type = 'BASE TABLE' AND table_name <> 'schema_migrations' ORDER BY 1"
        )
    ]


def _foreign_keys(conn) -> dict[tuple[str, str], tuple[str, str]]:
    """(table, column) -> (referenced table, column), single-column foreign keys (all of this schema's)."""
    rows = conn.execute(
        "SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text, fa.attname "
        "FROM pg_constraint c "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
        "JOIN pg_attribute fa ON fa.attrelid = c.confrelid AND fa.attnum = c.confkey[1] "
        "WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace"
    ).fetchall()
    return {(t, col): (rt, rcol) for t, col, rt, rcol in rows}


def _allowed_values(conn) -> dict[tuple[str, str], str]:
    """(table, column) -> the first value a one-column CHECK (col IN ('a', ...) or col <@ ARRAY[...]) allows."""
    rows = conn.execute(
        "SELECT c.conrelid::regclass::text, a.attname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
        "WHERE c.contype = 'c' AND cardinality(c.conkey) = 1 AND c.connamespace = 'public'::regnamespace"
    ).fetchall()
    out = {}
    for t, col, definition in rows:
        m = _ARRAY_LITERAL.search(definition)
        if m:
            out[(t, col)] = m.group(1).replace("''", "'")
    return out


def _value(table: str, col: str, data_type: str, allowed: str | None, udt: str):
    if data_type in ("smallint", "integer", "bigint"):
        return 1
    if data_type in ("numeric", "double precision", "real"):
        return 0.5
    if data_type == "boolean":
        return True
    if data_type == "timestamp with time zone":
        return WHEN
    if data_type == "date":
        return WHEN[:10]
    if data_type in ("json", "jsonb"):
        return json.dumps({"from": f"{table}.{col}"})
    if data_type == "uuid":
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{table}.{col}"))
    if data_type == "ARRAY":  # udt "_int8", "_text", ...: one element of the element type
        element = {"_int2": "smallint", "_int4": "integer", "_int8": "bigint", "_text": "text"}[udt]
        return [_value(table, col, element, allowed, "")]
    if data_type == "bytea":
        return f"{table}.{col}".encode()
    assert data_type in ("text", "character varying"), (table, col, data_type)
    return allowed or f"{table}.{col}"


def fill_every_table(conn) -> dict[str, dict]:
    """One row in every table, every column given a value (identity/serial columns: their default), foreign
    keys pointing at the rows inserted before (tables in dependency order). Returns each table's row as stored."""
    tables = _tables(conn)
    fks = _foreign_keys(conn)
    allowed = _allowed_values(conn)
    columns: dict[str, list[tuple[str, str, str | None, str]]] = {t: [] for t in tables}
    for t, col, data_type, default, identity, udt in conn.execute(
        "SELECT table_name, column_name, data_type, column_default, is_identity, udt_name "
        "FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    ):
        if t in columns and not (identity == "YES" or (default or "").startswith("nextval(")):
            columns[t].append((col, data_type, default, udt))
    stored: dict[str, dict] = {}
    left = list(tables)
    while left:
        ready = [t for t in left if all(rt in stored or rt == t for (ft, _), (rt, _) in fks.items() if ft == t)]
        assert ready, f"a cycle of foreign keys among {left}"
        for t in ready:
            names, values = [], []
            for col, data_type, _, udt in columns[t]:
                ref = fks.get((t, col))
                if ref is not None and ref[0] == t:
                    continue  # a self-reference (a snapshot's parent): left NULL
                names.append(col)
                values.append(stored[ref[0]][ref[1]] if ref else _value(t, col, data_type, allowed.get((t, col)), udt))
            cols = ", ".join('"' + n + '"' for n in names)
            marks = ", ".join(["%s"] * len(names))
            insert = f'INSERT INTO "{t}" ({cols}) VALUES ({marks}) RETURNING to_jsonb("{t}".*)'
            row = conn.execute(insert, values).fetchone()[0]
            stored[t] = row
            left.remove(t)
    return stored


def table_rows(conn, tables) -> dict[str, list[dict]]:
    return {t: [r[0] for r in conn.execute(f'SELECT to_jsonb(x.*) FROM "{t}" x')] for t in tables}


@pytest.mark.parametrize("before", range(1, len(FILES)), ids=[f"{v}->latest" for v in VERSIONS[:-1]])
def test_each_version_migrates_to_the_latest_over_a_row_in_every_table(platform_env, before):
    """Versions up to ``VERSIONS[before - 1]`` applied (the way migrate() applies each), a row in every
    table, then migrate(): it applies the rest, and every row is still there with its values."""
    with fresh_database(platform_env) as url:
        with psycopg.connect(url, autocommit=True) as c:
            schema.applied_migrations(c)
            for path in FILES[:before]:
                schema.apply_migration(c, path.stem, path.read_text())
            rows = fill_every_table(c)
            assert set(rows) == set(_tables(c))
        assert db.migrate(url) == VERSIONS[before:]
        with psycopg.connect(url, autocommit=True) as c:
            after = table_rows(c, rows)
            assert stored_versions(c) == VERSIONS
        for t, old in rows.items():
            assert len(after[t]) == 1, (t, after[t])
            # every column the row had keeps its value; columns a later version added may be new
            assert {k: after[t][0].get(k) for k in old} == old, t


def test_the_latest_version_holds_a_row_in_every_table(platform_env):
    """The row generator covers every table of the latest schema too (what the next migration will meet)."""
    with fresh_database(platform_env) as url:
        db.migrate(url)
        with psycopg.connect(url, autocommit=True) as c:
            rows = fill_every_table(c)
            assert set(rows) == set(_tables(c)) and len(rows) >= 15
            assert table_rows(c, rows) == {t: [r] for t, r in rows.items()}
