"""The period of a drift report and what the store holds for it: the ``[start, end)`` span (of a
CLI call or a DAG run), the period's predictions (counted, sampled) and the feedback on them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import psycopg

from ml.platform.config import Settings, get_settings
from ml.stages.monitoring import MonitoringError
from ml.stages.monitoring.wording import accuracy_statement
from ml.store import drift_reports as store


def _utc(value: datetime | str) -> datetime:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def resolve_period(
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    hours: float | None = None,
    settings: Settings | None = None,
) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC: both given; or ``hours`` (default ``monitoring_hours``) back from
    ``end`` (default now), or forward from ``start``."""
    s = settings or get_settings()
    span = timedelta(hours=float(hours if hours is not None else s.monitoring_hours))
    if start and end:
        a, b = _utc(start), _utc(end)
    elif start:
        a = _utc(start)
        b = a + span
    else:
        b = _utc(end) if end else datetime.now(UTC)
        a = b - span
    if a >= b:
        raise MonitoringError(f"empty period: start {a.isoformat()} is not before end {b.isoformat()}")
    return a, b


def run_period_end(end: str | None, run_type: Any, data_interval_end: datetime | None) -> str | None:
    """The period end of a DAG run: ``end`` if given; a scheduled run's data-interval end (the
    nightly run covers exactly the day before); else None (now)."""
    if end:
        return end
    if getattr(run_type, "value", run_type) == "scheduled" and data_interval_end is not None:
        return _utc(data_interval_end).isoformat()
    return None


def period_counts(conn: psycopg.Connection, model_name: str, start: datetime, end: datetime) -> dict[str, Any]:
    rows = store.period_counts(conn, model_name, start, end)
    by_source: dict[str, int] = {}
    by_version: dict[str, int] = {}
    for source, version, n in rows:
        by_source[source] = by_source.get(source, 0) + n
        by_version[str(version)] = by_version.get(str(version), 0) + n
    return {"total": sum(by_source.values()), "by_source": by_source, "by_model_version": by_version}


def serving_version(conn: psycopg.Connection, model_name: str, start: datetime, end: datetime) -> int | None:
    """The version that served at the period's end (that of its last prediction): the one a report compares."""
    return store.serving_at_end(conn, model_name, start, end)


def load_current(
    conn: psycopg.Connection,
    model_name: str,
    start: datetime,
    end: datetime,
    max_rows: int,
    seed: int,
    version: int | None = None,
) -> pd.DataFrame:
    """The period's predictions (of model ``version`` only, if given); above ``max_rows`` a random
    sample that is the same on every run (rows ordered by ``md5(seed || id)``)."""
    rows = store.period_predictions(conn, model_name, start, end, max_rows, seed, version)
    frame = pd.DataFrame(rows, columns=["text", "label", "p_positive", "model_version", "source"])
    frame["label"] = frame["label"].astype(np.int64)
    frame["p_positive"] = frame["p_positive"].astype(np.float64)
    return frame


def feedback_stats(
    conn: psycopg.Connection,
    model_name: str,
    start: datetime,
    end: datetime,
    n_predictions: int,
    training_accuracy: float | None,
    settings: Settings,
    version: int | None = None,
) -> dict[str, Any]:
    """Feedback on the period's predictions (of model ``version`` only, if given: ``n_predictions`` are
    then that version's) and what it says of accuracy (the latest word per prediction)."""
    n_feedback, wrong = store.period_feedback(conn, model_name, start, end, version)
    upper = 1.0 - wrong / n_predictions if n_predictions else None
    enough = n_predictions >= settings.monitoring_min_rows
    concept = None
    if upper is not None and training_accuracy is not None and enough:
        concept = bool(upper < training_accuracy - settings.monitoring_accuracy_tolerance)
    out = {
        "version": version,
        "predictions": n_predictions,
        "with_feedback": n_feedback,
        "reported_wrong": wrong,
        "confirmed_right": n_feedback - wrong,
        "feedback_accuracy": (n_feedback - wrong) / n_feedback if n_feedback else None,
        "live_accuracy_upper_bound": upper,
        "training_accuracy": training_accuracy,
        "accuracy_tolerance": settings.monitoring_accuracy_tolerance,
        "concept_drift": concept,
        "note": (
            "live_accuracy_upper_bound = 1 - reported_wrong / predictions of the period: predictions "
            "reported with another label are wrong, the unreported ones are counted right, so the true "
            "accuracy is at most this. feedback_accuracy is the accuracy on the predictions that got "
            "feedback (biased low: users report errors more than successes). concept_drift: the upper "
            "bound is below the champion's training-time held-out accuracy by more than the tolerance"
            + ("" if enough else f" (not judged: fewer than {settings.monitoring_min_rows} predictions)")
            + "."
        ),
    }
    out["accuracy_statement"] = accuracy_statement(n_predictions, wrong, upper)
    return out
