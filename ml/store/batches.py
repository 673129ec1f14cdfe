"""``batches``, ``batch_shards``, ``batch_rejects`` and the batch rows of ``predictions``: batch scoring.

A batch is keyed by its input's content hash; a shard's rows are written in one transaction,
keyed on (batch_id, source_row), so a retry or a forced re-score never duplicates a row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg

from ml.store._rows import returned

#: the columns batch scoring writes into ``predictions`` (id and created_at take their defaults)
SCORE_COLUMNS = (
    "text",
    "label",
    "p_negative",
    "p_positive",
    "model_name",
    "model_version",
    "source",
    "batch_id",
    "source_row",
)
BATCH_COLUMNS = (
    "id",
    "input_path",
    "input_format",
    "output_path",
    "status",
    "model_name",
    "model_version",
    "n_shards",
    "rows_read",
    "rows_scored",
    "rows_rejected",
    "label_counts",
    "rows_per_second",
    "summary",
    "created_at",
    "finished_at",
)
LIST_COLUMNS = (
    "id",
    "input_path",
    "status",
    "model_version",
    "rows_read",
    "rows_scored",
    "rows_rejected",
    "rows_per_second",
    "created_at",
    "finished_at",
)


# ---------------------------------------------------------------- planning
def try_lock_plan(conn: psycopg.Connection, key: int) -> bool:
    """The session-level lock two runs of the same content plan under (False: someone holds it)."""
    return bool(returned(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone(), "plan advisory lock")[0])


def lock_plan(conn: psycopg.Connection, key: int) -> None:
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))


def unlock_plan(conn: psycopg.Connection, key: int) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def batch_state(conn: psycopg.Connection, batch_id: str) -> tuple[str, int, int] | None:
    """(status, model version, number of shards) of a batch, or None."""
    row = conn.execute("SELECT status, model_version, n_shards FROM batches WHERE id=%s", (batch_id,)).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def unfinished_shards(conn: psycopg.Connection, batch_id: str) -> list[int]:
    return [
        int(r[0])
        for r in conn.execute(
            "SELECT shard FROM batch_shards WHERE batch_id=%s AND status <> 'done' ORDER BY shard", (batch_id,)
        )
    ]


def replace_plan(
    conn: psycopg.Connection,
    *,
    batch_id: str,
    input_path: str,
    input_format: str,
    input_sha256: str,
    model_name: str,
    model_version: int,
    model_sha256: str,
    rows_read: int,
    airflow_run_id: str | None,
    shards: Sequence[tuple[int, str, int, int, int]],
    rejects: Sequence[tuple[int, str]],
) -> None:
    """(Re)plan a batch: its row, its shards (shard, path, first row, last row, rows) and its rejected
    lines (line, reason). A forced re-plan cascades to shards and rejects; the batch's predictions
    stay (feedback may point at them) and are updated in place by the shards."""
    conn.execute("DELETE FROM batches WHERE id=%s", (batch_id,))
    conn.execute(
        "INSERT INTO batches (id, input_path, input_format, input_sha256, status, model_name, model_version,"
        " model_sha256, n_shards, rows_read, rows_rejected, airflow_run_id)"
        " VALUES (%s,%s,%s,%s,'planned',%s,%s,%s,%s,%s,%s,%s)",
        (
            batch_id,
            input_path,
            input_format,
            input_sha256,
            model_name,
            model_version,
            model_sha256,
            len(shards),
            rows_read,
            len(rejects),
            airflow_run_id,
        ),
    )
    with conn.cursor() as cur:
        with cur.copy("COPY batch_shards (batch_id, shard, path, first_row, last_row, n_rows) FROM STDIN") as cp:
            for sh in shards:
                cp.write_row((batch_id, *sh))
        with cur.copy("COPY batch_rejects (batch_id, line, reason) FROM STDIN") as cp:
            for line, reason in rejects:
                cp.write_row((batch_id, line, reason))


def record_failed(
    conn: psycopg.Connection,
    *,
    batch_id: str,
    input_path: str,
    input_format: str,
    input_sha256: str,
    model_name: str,
    model_version: int,
    rows_read: int,
    airflow_run_id: str | None,
    rejects: Sequence[tuple[int, str]],
    reason: str,
) -> None:
    """A batch refused at its plan (empty, not text, no text column, too many rejects): its row with
    status ``failed`` and ``summary.error`` the reason, its rejected lines, no shards (so nothing
    of it is ever written into ``predictions``)."""
    conn.execute("DELETE FROM batches WHERE id=%s", (batch_id,))
    conn.execute(
        "INSERT INTO batches (id, input_path, input_format, input_sha256, status, model_name, model_version,"
        " n_shards, rows_read, rows_rejected, airflow_run_id, summary, finished_at)"
        " VALUES (%s,%s,%s,%s,'failed',%s,%s,0,%s,%s,%s,%s,now())",
        (
            batch_id,
            input_path,
            input_format,
            input_sha256,
            model_name,
            model_version,
            rows_read,
            len(rejects),
            airflow_run_id,
            json.dumps({"batch_id": batch_id, "status": "failed", "error": reason, "rows_read": rows_read}),
        ),
    )
    with conn.cursor() as cur:
        with cur.copy("COPY batch_rejects (batch_id, line, reason) FROM STDIN") as cp:
            for line, why in rejects:
                cp.write_row((batch_id, line, why))


# ---------------------------------------------------------------- scoring a shard
def start_shard(
    conn: psycopg.Connection, batch_id: str, shard: int
) -> tuple[str, int, str | None, str, int, int, str] | None:
    """Count an attempt of the shard and mark the batch scoring. Returns (model name, model version,
    model artifact digest, shard file, first row, last row, shard status), or None for an unknown shard."""
    row = conn.execute(
        "SELECT b.model_name, b.model_version, b.model_sha256, sh.path, sh.first_row, sh.last_row, sh.status FROM batches b"
        " JOIN batch_shards sh ON sh.batch_id = b.id WHERE b.id=%s AND sh.shard=%s",
        (batch_id, shard),
    ).fetchone()
    if row is None:
        return None
    conn.execute("UPDATE batch_shards SET attempts = attempts + 1 WHERE batch_id=%s AND shard=%s", (batch_id, shard))
    conn.execute("UPDATE batches SET status='scoring' WHERE id=%s AND status='planned'", (batch_id,))
    return tuple(row)


def lock_shard(conn: psycopg.Connection, batch_id: str, shard: int) -> None:
    """One writer per shard until the transaction ends (two runs of the same content)."""
    conn.execute("SELECT 1 FROM batch_shards WHERE batch_id=%s AND shard=%s FOR UPDATE", (batch_id, shard))


def shard_has_rows(conn: psycopg.Connection, batch_id: str, first_row: int, last_row: int) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM predictions WHERE batch_id=%s AND source_row BETWEEN %s AND %s LIMIT 1",
            (batch_id, first_row, last_row),
        ).fetchone()
        is not None
    )


#: the columns of a scored chunk as :func:`copy_scored_csv` takes it: the row's id (made by the shard,
#: time-ordered, so the primary key grows at its end instead of at random pages) and :data:`SCORE_COLUMNS`
CSV_COLUMNS = ("id", *SCORE_COLUMNS)


def copy_scored_csv(conn: psycopg.Connection, data: bytes | memoryview, upsert: bool = False) -> None:
    """COPY one chunk of scored rows, CSV (UTF-8, no header, :data:`CSV_COLUMNS` order), in the caller's
    transaction. ``upsert=False``: straight into ``predictions`` (the shard has no rows yet: the usual
    case). ``upsert=True`` (a retry, a forced re-score): through a temporary table, then
    insert-or-update on (batch_id, source_row), keeping the ids already stored (feedback may reference
    them)."""
    cols = ", ".join(CSV_COLUMNS)
    target = "predictions"
    if upsert:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS scored_rows (LIKE predictions INCLUDING DEFAULTS) ON COMMIT DROP")
        conn.execute("TRUNCATE scored_rows")
        target = "scored_rows"
    with conn.cursor() as cur, cur.copy(f"COPY {target} ({cols}) FROM STDIN (FORMAT csv, ENCODING 'UTF8')") as cp:
        cp.write(data)
    if upsert:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in SCORE_COLUMNS if c not in ("batch_id", "source_row"))
        conn.execute(
            f"INSERT INTO predictions ({cols}) SELECT {cols} FROM scored_rows"
            f" ON CONFLICT (batch_id, source_row) WHERE batch_id IS NOT NULL DO UPDATE SET {updates},"
            " created_at = now()"
        )


def finish_shard(conn: psycopg.Connection, batch_id: str, shard: int, rows_scored: int, seconds: float) -> None:
    conn.execute(
        "UPDATE batch_shards SET status='done', rows_scored=%s, seconds=%s, finished_at=now()"
        " WHERE batch_id=%s AND shard=%s",
        (rows_scored, seconds, batch_id, shard),
    )


# ---------------------------------------------------------------- finalizing
def finalize_inputs(conn: psycopg.Connection, batch_id: str) -> dict[str, Any] | None:
    """What finalizing reads: the batch, its shards, the scored counts, the first rejects, the age."""
    b = conn.execute(
        "SELECT input_path, model_version, rows_read, rows_rejected, created_at, status, summary,"
        " extract(epoch FROM now() - created_at) FROM batches WHERE id=%s",
        (batch_id,),
    ).fetchone()
    if b is None:
        return None
    shards = conn.execute(
        "SELECT shard, status, path, first_row, last_row FROM batch_shards WHERE batch_id=%s ORDER BY shard",
        (batch_id,),
    ).fetchall()
    n_scored, n_pos = returned(
        conn.execute(
            "SELECT count(*), coalesce(sum(label), 0) FROM predictions WHERE batch_id=%s", (batch_id,)
        ).fetchone(),
        "batch scored counts",
    )
    first_rejects = conn.execute(
        "SELECT line, reason FROM batch_rejects WHERE batch_id=%s ORDER BY line LIMIT 20", (batch_id,)
    ).fetchall()
    return {
        "input_path": b[0],
        "model_version": b[1],
        "rows_read": b[2],
        "rows_rejected": b[3],
        "status": b[5],
        "summary": b[6],
        "seconds": float(b[7]),
        "shards": [tuple(s) for s in shards],
        "n_scored": int(n_scored),
        "n_positive": int(n_pos),
        "first_rejects": [tuple(r) for r in first_rejects],
    }


def mark_done(conn: psycopg.Connection, batch_id: str, output_path: str, summary: dict[str, Any]) -> None:
    conn.execute(
        "UPDATE batches SET status='done', output_path=%s, rows_scored=%s, label_counts=%s, rows_per_second=%s,"
        " summary=%s, finished_at=now() WHERE id=%s",
        (
            output_path,
            summary["rows_scored"],
            json.dumps(summary["label_counts"]),
            summary["rows_per_second"],
            json.dumps(summary),
            batch_id,
        ),
    )


# ---------------------------------------------------------------- reading back
def get(conn: psycopg.Connection, batch_id: str, max_rejects: int = 1000) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches WHERE id=%s", (batch_id,)).fetchone()
    if row is None:
        return None
    out = dict(zip(BATCH_COLUMNS, row, strict=True))
    out["shards"] = [
        dict(zip(("shard", "status", "n_rows", "rows_scored", "seconds", "attempts"), r, strict=True))
        for r in conn.execute(
            "SELECT shard, status, n_rows, rows_scored, seconds, attempts"
            " FROM batch_shards WHERE batch_id=%s ORDER BY shard",
            (batch_id,),
        )
    ]
    out["rejects"] = [
        {"line": r[0], "reason": r[1]}
        for r in conn.execute(
            "SELECT line, reason FROM batch_rejects WHERE batch_id=%s ORDER BY line LIMIT %s", (batch_id, max_rejects)
        )
    ]
    return out


def latest(conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"SELECT {', '.join(LIST_COLUMNS)} FROM batches ORDER BY created_at DESC LIMIT %s", (limit,)
    ).fetchall()
    return [dict(zip(LIST_COLUMNS, r, strict=True)) for r in rows]


def done_input_hashes(conn: psycopg.Connection, failed_too: bool = False) -> set[str]:
    """Content hashes of the inputs scored (and, with ``failed_too``, refused at their plan)."""
    statuses = ["done", "failed"] if failed_too else ["done"]
    return {r[0] for r in conn.execute("SELECT input_sha256 FROM batches WHERE status = ANY(%s)", (statuses,))}


def prediction_ids(conn: psycopg.Connection, batch_id: str, first_row: int, last_row: int) -> list[tuple[int, str]]:
    """(source row, prediction id) of a shard's stored rows, in source-row order."""
    return [
        (int(r[0]), str(r[1]))
        for r in conn.execute(
            "SELECT source_row, id FROM predictions WHERE batch_id=%s AND source_row BETWEEN %s AND %s"
            " ORDER BY source_row",
            (batch_id, first_row, last_row),
        )
    ]


def prediction_ids_csv(conn: psycopg.Connection, batch_id: str, first_row: int, last_row: int) -> bytes:
    """(source row, prediction id) of the stored rows from ``first_row`` to ``last_row``, in source-row
    order, as CSV (COPY: no Python object per row)."""
    out = bytearray()
    with conn.cursor() as cur:
        with cur.copy(
            "COPY (SELECT source_row, id FROM predictions WHERE batch_id = %s AND source_row BETWEEN %s AND %s"
            " ORDER BY source_row) TO STDOUT (FORMAT csv)",
            (batch_id, first_row, last_row),
        ) as cp:
            for block in cp:
                out += block
    return bytes(out)
