"""``shadows`` and ``shadow_predictions`` (sql/010_shadow.sql): a challenger serving in shadow
before its promotion, and the predictions it made beside the champion's."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from ml.store._rows import many, one, returned

COLUMNS = (
    "id",
    "created_at",
    "updated_at",
    "finished_at",
    "model_name",
    "retraining_id",
    "run_id",
    "challenger_version",
    "champion_version",
    "artifact_sha256",
    "window_requests",
    "window_hours",
    "ends_at",
    "status",
    "calibration",
    "results",
    "decision",
)
LIST_COLUMNS = tuple(c for c in COLUMNS if c != "calibration")


def _json(v: Any) -> str | None:
    return None if v is None else json.dumps(v, default=str)


def start(
    conn: psycopg.Connection,
    *,
    model_name: str,
    retraining_id: int | None,
    run_id: str,
    challenger_version: int,
    champion_version: int,
    artifact_sha256: str,
    window_requests: int,
    window_hours: float,
    calibration: dict[str, Any],
) -> int:
    """A new running shadow; a shadow still running for the model is superseded (one at a time)."""
    conn.execute(
        "UPDATE shadows SET status = 'superseded', finished_at = now(), updated_at = now(),"
        " decision = 'superseded by a newer challenger' WHERE model_name = %s AND status = 'running'",
        (model_name,),
    )
    return int(
        returned(
            conn.execute(
                "INSERT INTO shadows (model_name, retraining_id, run_id, challenger_version, champion_version,"
                " artifact_sha256, window_requests, window_hours, ends_at, calibration)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
                "  CASE WHEN %s > 0 THEN now() + make_interval(secs => %s * 3600) END, %s) RETURNING id",
                (
                    model_name,
                    retraining_id,
                    run_id,
                    challenger_version,
                    champion_version,
                    artifact_sha256,
                    window_requests,
                    window_hours,
                    window_hours,
                    window_hours,
                    _json(calibration),
                ),
            ).fetchone(),
            "shadows insert",
        )[0]
    )


def get(conn: psycopg.Connection, shadow_id: int) -> dict[str, Any] | None:
    return one(conn, f"SELECT {', '.join(COLUMNS)} FROM shadows WHERE id = %s", (shadow_id,))


def running(conn: psycopg.Connection, model_name: str) -> dict[str, Any] | None:
    """The model's running shadow (what the API loads beside the champion), or None."""
    return one(
        conn,
        "SELECT id, challenger_version, champion_version, artifact_sha256, run_id FROM shadows"
        " WHERE model_name = %s AND status = 'running'",
        (model_name,),
    )


def latest(conn: psycopg.Connection, model_name: str, limit: int = 5) -> list[dict[str, Any]]:
    return many(
        conn,
        f"SELECT {', '.join(LIST_COLUMNS)} FROM shadows WHERE model_name = %s ORDER BY id DESC LIMIT %s",
        (model_name, limit),
    )


def of_version(conn: psycopg.Connection, model_name: str, version: int) -> dict[str, Any] | None:
    """The newest shadow of a challenger version (the model card of a champion promoted from shadow)."""
    return one(
        conn,
        f"SELECT {', '.join(LIST_COLUMNS)} FROM shadows WHERE model_name = %s"
        " AND challenger_version = %s ORDER BY id DESC LIMIT 1",
        (model_name, version),
    )


def window_state(conn: psycopg.Connection, shadow_id: int) -> dict[str, Any] | None:
    """Status, shadowed requests so far, and whether the time cap has passed."""
    return one(
        conn,
        "SELECT s.status, s.window_requests, s.window_hours, s.created_at, s.ends_at,"
        " (s.ends_at IS NOT NULL AND now() >= s.ends_at) AS timed_out,"
        " extract(epoch FROM now() - s.created_at) AS elapsed_seconds,"
        " (SELECT count(*) FROM shadow_predictions p WHERE p.shadow_id = s.id) AS n"
        " FROM shadows s WHERE s.id = %s",
        (shadow_id,),
    )


def insert_predictions(conn: psycopg.Connection, shadow_id: int, rows: list[tuple[Any, ...]]) -> int:
    """Rows of (prediction id, text sha256, champion label, champion p, challenger label, challenger p);
    a row already stored (a replayed batch) is skipped."""
    if not rows:
        return 0
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO shadow_predictions (shadow_id, prediction_id, text_sha256, champion_label,"
            " champion_p_positive, challenger_label, challenger_p_positive) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            [(shadow_id, *r) for r in rows],
        )
    return len(rows)


def predictions(conn: psycopg.Connection, shadow_id: int) -> list[dict[str, Any]]:
    """Every shadowed request, with the latest reviewed label of its text when a reviewer gave one
    (accept / relabel in ``reviews``; a rejection gives no label)."""
    return many(
        conn,
        "SELECT sp.prediction_id, sp.text_sha256, sp.champion_label, sp.champion_p_positive,"
        " sp.challenger_label, sp.challenger_p_positive, r.label AS reviewed_label"
        " FROM shadow_predictions sp JOIN shadows s ON s.id = sp.shadow_id"
        " LEFT JOIN LATERAL (SELECT label FROM reviews rv WHERE rv.model_name = s.model_name"
        "  AND rv.text_sha256 = sp.text_sha256 ORDER BY rv.created_at DESC, rv.id DESC LIMIT 1) r"
        "  ON true WHERE sp.shadow_id = %s ORDER BY sp.created_at, sp.prediction_id",
        (shadow_id,),
    )


def finish(conn: psycopg.Connection, shadow_id: int, status: str, results: dict[str, Any], decision: str) -> bool:
    """Close a running shadow with its outcome; False when it was no longer running."""
    cur = conn.execute(
        "UPDATE shadows SET status = %s, results = %s, decision = %s, finished_at = now(),"
        " updated_at = now() WHERE id = %s AND status = 'running'",
        (status, _json(results), decision, shadow_id),
    )
    return cur.rowcount == 1


def set_run_status(conn: psycopg.Connection, run_id: str, status: str, decision: str) -> None:
    """The challenger's ``training_runs`` status while / after it is in shadow."""
    conn.execute(
        "UPDATE training_runs SET status = %s, decision = %s, updated_at = now() WHERE run_id = %s",
        (status, decision, run_id),
    )


def insert_event(
    conn: psycopg.Connection,
    model_name: str,
    version: int,
    previous_version: int | None,
    event: str,
    reason: str,
    digest: str | None = None,
) -> None:
    """A ``model_events`` row of the shadow (``shadow_started`` / ``shadow_rejected``); never a promotion
    event, so the API's champion verification (latest promoted / rollback) ignores it."""
    conn.execute(
        "INSERT INTO model_events (model_name, version, previous_version, event, reason, artifact_sha256)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (model_name, version, previous_version, event, reason, digest),
    )
