"""``drift_reports``: the nightly drift reports' stored summaries."""
from __future__ import annotations

import json
from typing import Any

import psycopg


def append_delivery(conn: psycopg.Connection, report_id: str, results: list[dict[str, Any]]) -> None:
    """Append the channels' outcomes of delivering a report to its summary (``delivery``)."""
    conn.execute("UPDATE drift_reports SET summary = jsonb_set(summary, '{delivery}',"
                 " coalesce(summary->'delivery', '[]'::jsonb) || %s::jsonb) WHERE id = %s",
                 (json.dumps(results), report_id))
