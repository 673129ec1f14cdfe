"""The ``retrainings`` rows: reading one or the latest, updating a stage's outcome, marking a
failure, and the loop's status for the model card and ``ml retrain --status``."""

from __future__ import annotations

from typing import Any

import psycopg

from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.stages.retraining.trigger import champion_context, pending_count
from ml.store import retrainings as store


def get_retraining(
    retraining_id: int, settings: Settings | None = None, conn: psycopg.Connection | None = None
) -> dict[str, Any] | None:
    if conn is not None:
        return store.get(conn, int(retraining_id))
    with db.connect(settings or get_settings()) as c:
        return store.get(c, int(retraining_id))


def list_retrainings(limit: int = 20, settings: Settings | None = None) -> list[dict[str, Any]]:
    s = settings or get_settings()
    with db.connect(s) as conn:
        return store.latest(conn, s.model_name, limit)


def update_retraining(rid: int, settings: Settings, **values: Any) -> None:
    with db.connect(settings) as conn:
        store.update(conn, rid, **values)


def resolve_id(retraining_id: Any) -> int | None:
    if retraining_id in (None, "", "None", "null"):
        return None
    return int(retraining_id)


def mark_failed(retraining_id: Any, error: str, settings: Settings | None = None) -> None:
    s = settings or get_settings()
    rid = resolve_id(retraining_id)
    if rid is None:
        return
    with db.connect(s) as conn:
        store.mark_failed(conn, rid, error)


def loop_status(settings: Settings | None = None) -> dict[str, Any]:
    """The champion, its reports against the retraining threshold, the latest retrainings."""
    s = settings or get_settings()
    ctx = champion_context(s)
    out: dict[str, Any] = {
        "model_name": s.model_name,
        "champion": ctx.as_dict() if ctx else None,
        "retraining_on_drift": s.retraining_on_drift,
    }
    if ctx is not None and ctx.corpus_rows:
        out["feedback"] = pending_count(ctx, s)
    out["retrainings"] = list_retrainings(10, s)
    return out
