"""The promotion steps both training DAGs end with, as one task group:
register (a registry version of the candidate's run) -> gate (behavioural checks) -> promote (the
promotion gate against the champion; for a retraining, its outcome recorded on the retraining).

Lives in ``plugins/`` (on ``sys.path`` in every Airflow process) next to the DAGs' shared
defaults; each task imports and calls one ``ml`` function inside its body.
"""
from __future__ import annotations

from typing import Any

from airflow.sdk import task, task_group


@task_group(group_id="promotion")
def promotion(mlflow_run_id: Any, retraining_id: Any = None) -> Any:
    """register -> gate -> promote for the candidate run ``mlflow_run_id`` (an XComArg);
    ``retraining_id`` (an XComArg or None) makes the promotion a retraining's."""

    @task
    def register(candidate: str) -> str:  # (`run_id` is Airflow's own context key)
        from ml.train import register as register_run

        register_run(candidate)
        return candidate

    @task
    def gate(candidate: str) -> str:
        from ml.train import check_behaviour

        check_behaviour(candidate)
        return candidate

    @task
    def promote(candidate: str, retraining: Any = None) -> dict:
        from ml.train import promote_candidate

        return promote_candidate(candidate, retraining)

    return promote(gate(register(mlflow_run_id)), retraining_id)
