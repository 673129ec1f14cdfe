"""What every platform DAG shares: start date, one run at a time, no catch-up, the owner (the
platform, shown in the DAG list), the failure notifier (``PlatformAlertNotifier``, Airflow's
notifier interface), and the model-family names for DAG params.

Lives in ``plugins/`` (on ``sys.path`` in every Airflow process) so DAG files import it by
name and stay free of ``ml`` imports at parse time: the family names are read from the one registry,
``ml/models/families.py`` (pure data), by path, without importing ``ml``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pendulum
from sentiment_notifiers import PlatformAlertNotifier


def _family_names() -> list[str]:
    """The names of ``ml.models.FAMILIES``, from ``ml/models/families.py`` executed on its own: the ``ml``
    package is located (``find_spec`` of a top-level package imports nothing), not imported (its ``__init__``
    would load numpy at every DAG parse)."""
    ml_spec = importlib.util.find_spec("ml")
    if ml_spec is None or not ml_spec.submodule_search_locations:
        raise ImportError("the ml package is not installed beside Airflow")
    path = Path(next(iter(ml_spec.submodule_search_locations))) / "models" / "families.py"
    spec = importlib.util.spec_from_file_location("sentiment_model_families", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no model-family registry at {path}")
    registry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(registry)
    return list(registry.FAMILIES)


#: the DAG params' family enum (and the comparison's default): the names of the one registry, ml.models.FAMILIES
MODEL_FAMILIES = _family_names()

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")

#: the owner of every platform DAG (Airflow's DAG list shows it; the default would be "airflow")
OWNER = "sentiment-platform"


def platform_dag_kwargs(**default_args: Any) -> dict[str, Any]:
    """Keyword arguments for ``@dag`` common to the platform's DAGs; ``default_args`` extend the
    shared ones (the owner; the failure notifier as every task's ``on_failure_callback``: one alert per
    failed task, with its exception, where the task ran, also under ``airflow dags test``)."""
    return {
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {"owner": OWNER, "on_failure_callback": [PlatformAlertNotifier()], **default_args},
    }
