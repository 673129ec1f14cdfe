"""Which model a sentiment_reference run refreshes (ml.stages.monitoring.reference.latest_promoted_model): the one
named by the latest of its triggering champion events by timestamp. Airflow hands a run's consumed events in no set
order (CI once saw a run that consumed 5 events refresh an earlier test's model, not the one just promoted)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from ml.stages.monitoring.reference import latest_promoted_model

T0 = datetime(2026, 12, 7, 23, 45, tzinfo=UTC)


def _event(model: str | None, minutes: int) -> SimpleNamespace:
    return SimpleNamespace(
        extra={"model": model, "version": 1} if model else {}, timestamp=T0 + timedelta(minutes=minutes)
    )


def test_the_latest_event_names_the_model_in_any_order():
    events = [_event("a", 0), _event("newest", 9), _event("b", 3), _event(None, 20)]
    for order in (events, list(reversed(events)), events[1:] + events[:1]):
        assert latest_promoted_model(order) == "newest"


def test_no_event_with_a_model_means_the_configured_model():
    assert latest_promoted_model([]) is None
    assert latest_promoted_model([_event(None, 1), SimpleNamespace(extra=None, timestamp=T0)]) is None
