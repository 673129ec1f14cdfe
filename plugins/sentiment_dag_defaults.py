"""What every platform DAG shares: start date, one run at a time, no catch-up, the failure
notifier, and the model-family names for DAG params.

Lives in ``plugins/`` (on ``sys.path`` in every Airflow process) so DAG files import it by
name and stay free of ``ml`` imports at parse time.
"""

from __future__ import annotations

from typing import Any

import pendulum
from sentiment_notifiers import PlatformAlertNotifier

# the names of ml.models.FAMILIES, kept here so DAG files need not import ml (tested equal)
MODEL_FAMILIES = ["tfidf_lr", "cnn", "bilstm", "transformer"]

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")


def platform_dag_kwargs(**default_args: Any) -> dict[str, Any]:
    """Keyword arguments for ``@dag`` common to the platform's DAGs; ``default_args`` extend the
    shared ones (the failure notifier)."""
    return {
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {"on_failure_callback": [PlatformAlertNotifier()], **default_args},
    }
