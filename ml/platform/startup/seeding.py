"""First-run seeding: train a first model through Airflow when no champion is registered."""

from __future__ import annotations

from typing import Any

from ml.platform.airflow_client import trigger_training
from ml.platform.config import Settings
from ml.platform.supervisor import ServiceError, say


def champion(s: Settings):
    """The registered champion (``None`` when there is none)."""
    from ml.platform import registry, tracking

    tracking.configure(s)
    return registry.champion(s)


def first_model(s: Settings, data: str | None = None, wait: bool = True, force_train: bool = False) -> dict[str, Any]:
    """Trigger the training DAG on ``data`` (default: the default source) unless a champion is
    registered (``force_train``: train anyway); ``wait``: follow the run to its end. Returns the
    run's summary, or ``{"skipped": True, "champion_version": ...}``."""
    champ = champion(s)
    if champ is not None and not force_train:
        say(
            f"      champion already registered (version {champ.version}); skipping training (--force-train to retrain)"
        )
        return {"skipped": True, "champion_version": champ.version}
    try:
        from ml.data.sources import default_source

        path = default_source(data, s)
    except Exception as e:
        raise ServiceError(f"no training data: {e}") from e
    say(f"      training data: {path}")
    training = trigger_training(path, s, wait=wait)
    if wait:
        champ = champion(s)
        say(
            f"      training {training['state']} in {training['seconds']}s; champion: "
            f"{'version %s' % champ.version if champ else 'none (the candidate was not promoted)'}"
        )
    return training
