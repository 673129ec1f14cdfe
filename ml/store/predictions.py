"""``predictions``, ``feedback`` and ``pending_feedback``: what the API records.

Predictions arrive in batches from the API's prediction log (api/runtime/predlog.py) and are stored
idempotently (a batch replayed after a crash between commit and log truncation writes nothing
twice). Feedback on a prediction that is still in a log waits in ``pending_feedback`` and is
moved into ``feedback`` (same id, same time) once its prediction is stored.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

import psycopg

from ml.store._rows import returned

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "text",
    "label",
    "p_negative",
    "p_positive",
    "model_name",
    "model_version",
    "source",
)
_COLS = ", ".join(COLUMNS)
#: connection errors: the rows are fine, the database is not (retry later)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
_INSERT_ONE = (
    f"INSERT INTO predictions ({_COLS}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT (id) DO NOTHING"
)


class _Row(Protocol):
    def as_tuple(self) -> tuple[Any, ...]: ...


def copy_rows(conn: psycopg.Connection, rows: Iterable[_Row]) -> int:
    """COPY prediction rows (``as_tuple()`` in :data:`COLUMNS` order) in the connection's current
    transaction (no commit). Returns how many."""
    n = 0
    with conn.cursor() as cur, cur.copy(f"COPY predictions ({_COLS}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row.as_tuple())
            n += 1
    return n


def write_rows(conn: psycopg.Connection, rows: Sequence[_Row]) -> list[tuple[Any, BaseException]]:
    """Store ``rows`` and commit: one COPY when it goes through; if the database rejects the batch
    (a duplicate id after a retried commit, a row it cannot store) one idempotent INSERT per row, so
    that only the bad rows stay out. Returns the rejected rows with their errors. Connection errors
    (:data:`TRANSIENT_ERRORS`) propagate: the caller keeps the rows and retries."""
    if not rows:
        return []
    try:
        copy_rows(conn, rows)
        conn.commit()
        return []
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - a data/integrity error somewhere in the batch
        log.warning("COPY of %d prediction rows failed (%s); inserting them one by one", len(rows), exc)
        _rollback(conn)
    rejected: list[tuple[Any, BaseException]] = []
    for row in rows:
        try:
            conn.execute(_INSERT_ONE, row.as_tuple())
            conn.commit()
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - this row is refused (data/integrity): set aside, the rest go on
            _rollback(conn)
            rejected.append((row, exc))
    return rejected


def _rollback(conn: psycopg.Connection) -> None:
    try:
        conn.rollback()
    except TRANSIENT_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - closing a broken connection  # pragma: no cover - nothing left to undo
        pass


def copy_predictions_idempotent(conn: psycopg.Connection, rows: Iterable[Sequence[Any]]) -> int:
    """COPY ``rows`` (tuples in :data:`COLUMNS` order) into a temporary table, then insert those
    whose id is not stored yet. In the caller's transaction (no commit). Returns the rows inserted."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS predictions_in (LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    with conn.cursor() as cur:
        with cur.copy(f"COPY predictions_in ({_COLS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(f"INSERT INTO predictions ({_COLS}) SELECT {_COLS} FROM predictions_in ON CONFLICT (id) DO NOTHING")
        n = cur.rowcount
        cur.execute("TRUNCATE predictions_in")
    return n


def answered_live_since_serving(conn: psycopg.Connection, model_name: str, version: int) -> bool:
    """Whether ``version`` of ``model_name`` has answered at least one live API request since its latest promotion
    or rollback (batch scoring does not count: a shadow window observes the API's traffic). Reads the
    ``created_at`` index from that event on and stops at the first row."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM predictions WHERE created_at >= (SELECT max(created_at) FROM model_events"
        " WHERE model_name = %s AND version = %s AND event IN ('promoted', 'rollback'))"
        " AND model_name = %s AND model_version = %s AND source = 'api')",
        (model_name, version, model_name, version),
    ).fetchone()
    return bool(row and row[0])


def feedback_has_reporter(conn: psycopg.Connection) -> bool:
    """Whether ``feedback`` has the ``reporter`` column (migration 006_security)."""
    return returned(
        conn.execute(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'feedback' AND column_name = 'reporter')"
        ).fetchone(),
        "feedback reporter column check",
    )[0]


def resolve_pending_feedback(conn: psycopg.Connection, with_reporter: bool = True) -> list[tuple[int, bool]]:
    """Move every pending report whose prediction is stored now into ``feedback`` (same id, time and
    reporter). Returns (feedback id, whether it says the prediction was wrong) for each one moved."""
    rep = ", reporter" if with_reporter else ""
    rows = conn.execute(
        "WITH moved AS (DELETE FROM pending_feedback pf USING predictions p WHERE p.id = pf.prediction_id "
        "  RETURNING pf.id, pf.prediction_id, pf.correct_label, pf.comment, pf.created_at, pf.reporter, "
        "            pf.correct_label <> p.label AS wrong) "
        f", ins AS (INSERT INTO feedback (id, prediction_id, correct_label, comment, created_at{rep}) "
        f"  SELECT id, prediction_id, correct_label, comment, created_at{rep} FROM moved) "
        "SELECT id, wrong FROM moved ORDER BY id"
    ).fetchall()
    return [(int(r[0]), bool(r[1])) for r in rows]


def pending_feedback_count(conn: psycopg.Connection) -> int:
    return int(returned(conn.execute("SELECT count(*) FROM pending_feedback").fetchone(), "pending_feedback count")[0])


def insert_feedback(
    conn: psycopg.Connection,
    prediction_id: uuid.UUID,
    correct_label: int,
    comment: str | None,
    reporter: str | None = None,
) -> tuple[int, datetime, bool] | None:
    """Feedback on a stored prediction, in one statement: (id, created_at, whether it says the
    prediction was wrong); ``None`` when no stored prediction has that id (nothing written)."""
    rep, rep_value = (", reporter", ", %s") if reporter is not None else ("", "")
    params = (prediction_id, correct_label, comment) + ((reporter,) if reporter is not None else ())
    row = conn.execute(
        "WITH p AS (SELECT id, label FROM predictions WHERE id = %s), "
        f"f AS (INSERT INTO feedback (prediction_id, correct_label, comment{rep}) "
        f"      SELECT p.id, %s, %s{rep_value} FROM p RETURNING id, created_at, correct_label) "
        "SELECT f.id, f.created_at, f.correct_label <> p.label FROM f, p",
        params,
    ).fetchone()
    return (int(row[0]), row[1], bool(row[2])) if row else None


def insert_pending_feedback(
    conn: psycopg.Connection,
    prediction_id: uuid.UUID,
    correct_label: int,
    comment: str | None,
    reporter: str | None = None,
) -> tuple[int, datetime]:
    """Feedback on a prediction not stored yet (it is in a prediction log): its id comes from
    ``feedback``'s sequence, so it keeps it when the writer moves it. Returns (id, created_at)."""
    row = returned(
        conn.execute(
            "INSERT INTO pending_feedback (id, prediction_id, correct_label, comment, reporter) "
            "VALUES (nextval(pg_get_serial_sequence('feedback', 'id')), %s, %s, %s, %s) RETURNING id, created_at",
            (prediction_id, correct_label, comment, reporter),
        ).fetchone(),
        "pending_feedback insert",
    )
    return int(row[0]), row[1]


# ---------------------------------------------------------------- one report per (prediction, reporter)
REPORT_LOCK_SEED = 74210021


def lock_report(conn: psycopg.Connection, prediction_id: uuid.UUID, reporter: str) -> None:
    """Hold (prediction, reporter) until the transaction ends: two concurrent posts of one report
    (two API workers) are checked and stored one after the other."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))",
        (f"report:{prediction_id}:{reporter}", REPORT_LOCK_SEED),
    )


def existing_report(
    conn: psycopg.Connection, prediction_id: uuid.UUID, reporter: str
) -> tuple[int, datetime, int, str | None] | None:
    """The report this reporter already made on this prediction, stored or pending: (id, created_at,
    correct_label, comment); ``None`` when there is none. Reviewers' decisions (``review_id``) are not
    reports. One statement: a pending report being moved into ``feedback`` is seen on one side."""
    row = conn.execute(
        "SELECT id, created_at, correct_label, comment FROM feedback"
        " WHERE prediction_id = %s AND reporter = %s AND review_id IS NULL"
        " UNION ALL SELECT id, created_at, correct_label, comment FROM pending_feedback"
        " WHERE prediction_id = %s AND reporter = %s ORDER BY 1 LIMIT 1",
        (prediction_id, reporter, prediction_id, reporter),
    ).fetchone()
    return (int(row[0]), row[1], int(row[2]), row[3]) if row else None
