"""Helpers of the resilience tests of a live API (issue 26: full disk, repeated kill -9, many workers)."""

from __future__ import annotations

EVENT_COLUMNS = "model_name, version, previous_version, event, reason, created_at, artifact_sha256"


def serve_from(own, session_conn, model_name: str) -> None:
    """Make the database of a test's own (``outage_db``) one an API can serve ``model_name`` from: the
    champion's promotion events (model_events, the API's check that the alias was moved by the platform)
    copied from the session's database. Its predictions table then holds exactly the test's own rows."""
    rows = session_conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM model_events WHERE model_name = %s ORDER BY id", (model_name,)
    ).fetchall()
    assert rows, f"no model_events for {model_name}"
    with own.connect() as c:
        c.execute("DELETE FROM model_events WHERE model_name = %s", (model_name,))
        for r in rows:
            c.execute(f"INSERT INTO model_events ({EVENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)", r)
