"""One-off alerts (platform events such as DAG failures: recorded resolved, sent at once), opening a
rule's alert (:func:`open_alert`: the feedback rules and rule ``drift``) and reading the stored alerts back
(``ml alerts``, the model card)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import psycopg

from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.stages.alerts.channels import (
    channel_result,
    send_channels,
)
from ml.store import alerts as store

log = logging.getLogger(__package__)  # the stage's logger ``ml.stages.alerts``, named in the log channel


RULE_DAG_FAILURE = "dag_failure"


def _logged() -> list[dict[str, Any]]:
    """A new alert's channels: the log line its caller writes (``WARNING`` on ``ml.stages.alerts``)."""
    return [channel_result("log", "logger ml.stages.alerts", "sent")]


def open_alert(
    conn: psycopg.Connection,
    rule: str,
    model_name: str,
    *,
    severity: str,
    window_seconds: int,
    threshold: int | None,
    n_reports: int,
    first_report_at: datetime,
    last_report_at: datetime,
    message: str,
    details: dict[str, Any],
    feedback_ids: list[int] | None = None,
) -> int | None:
    """Open ``rule``'s alert for ``model_name`` in the caller's transaction (which holds the rule's lock),
    logged as its first channel; the caller logs it and sends the other channels. None when (rule, model)
    already has an open alert (the unique index, second guard)."""
    return store.insert_open(
        conn,
        rule=rule,
        model_name=model_name,
        severity=severity,
        window_seconds=window_seconds,
        threshold=threshold,
        n_reports=n_reports,
        feedback_ids=feedback_ids or [],
        first_report_at=first_report_at,
        last_report_at=last_report_at,
        message=message,
        details=details,
        channels=_logged(),
    )


def raise_event(
    rule: str,
    model_name: str,
    message: str,
    details: dict[str, Any] | None = None,
    severity: str = "error",
    settings: Settings | None = None,
    send: bool = True,
) -> int | None:
    """Record a one-off alert (already resolved: an event, not a state) and send it on every channel
    now, in this thread (DAG callbacks are not on a request path). Returns its id, or None when the
    database is unreachable (the log line is written either way)."""
    s = settings or get_settings()
    log.warning("ALERT %s (%s): %s", rule, model_name, message)
    try:
        with db.connect(s, start_embedded=False, connect_timeout=5, application_name="sentiment-alerts") as conn:
            alert_id = store.insert_event(
                conn,
                rule,
                model_name,
                severity,
                message,
                details or {},
                _logged(),
            )
    except Exception as e:  # noqa: BLE001 - a failure callback must not fail
        log.error("could not record alert %s: %s", rule, e)
        return None
    if send:
        send_channels(alert_id, s)
    return alert_id


def list_alerts(
    limit: int = 50, model_name: str | None = None, rule: str | None = None, settings: Settings | None = None
) -> list[dict[str, Any]]:
    s = settings or get_settings()
    with db.connect(s, start_embedded=False, connect_timeout=5, application_name="sentiment-alerts") as conn:
        return store.latest(conn, limit, model_name or None, rule or None)
