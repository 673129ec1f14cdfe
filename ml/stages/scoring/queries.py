"""Batches read back (the API's ``/batches`` and ``ml batch``)."""

from __future__ import annotations

from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.store import batches as store


def get_batch(batch_id: str, settings: Settings | None = None) -> dict | None:
    with db.connect(settings or get_settings()) as conn:
        return store.get(conn, batch_id)


def list_batches(limit: int = 50, settings: Settings | None = None) -> list[dict]:
    with db.connect(settings or get_settings()) as conn:
        return store.latest(conn, limit)
