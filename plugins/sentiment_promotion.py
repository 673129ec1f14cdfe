"""The promotion steps both training DAGs end with, as one task group:
register (a registry version of the candidate's run) -> gate (behavioural checks) -> promote (the
promotion gate against the champion; for a retraining, its outcome recorded on the retraining).
Then ``champion`` (:func:`publish_champion`): the ``sentiment_champion`` asset's event, only when a
version really became champion (skipped otherwise, so that nothing scheduled on the asset runs).

Lives in ``plugins/`` (on ``sys.path`` in every Airflow process) next to the DAGs' shared
defaults; each task imports and calls one ``ml`` function inside its body.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import PokeReturnValue, get_current_context, task, task_group
from sentiment_assets import CHAMPION, json_extra

if TYPE_CHECKING:  # (no `ml` import at parse time)
    from ml.stages.promotion import GateResult

# The shadow window's sensor (parse time, so an environment variable of the DAG processor, not
# config/platform.yaml: DAG files import no `ml` at parse time). Reschedule mode: between pokes the
# task holds no worker slot. The window's own bounds (shadow_requests / shadow_hours) end it; the
# timeout is only a backstop for a window that never fills and has no time cap.
SHADOW_POKE_SECONDS = float(os.environ.get("SENTIMENT_SHADOW_POKE_SECONDS", "300"))
SHADOW_TIMEOUT = timedelta(days=float(os.environ.get("SENTIMENT_SHADOW_TIMEOUT_DAYS", "7")))


@task_group(group_id="promotion")
def promotion(mlflow_run_id: Any, retraining_id: Any = None) -> Any:
    """register -> gate -> promote for the candidate run ``mlflow_run_id`` (an XComArg);
    ``retraining_id`` (an XComArg or None) makes the promotion a retraining's."""

    @task
    def register(candidate: str) -> str:  # (`run_id` is Airflow's own context key)
        from ml.stages.train import register as register_run

        register_run(candidate)
        return candidate

    @task
    def gate(candidate: str) -> str:
        from ml.stages.train import check_behaviour

        check_behaviour(candidate)
        return candidate

    @task(multiple_outputs=True)  # (explicit: the return annotation is not importable at parse time)
    def promote(candidate: str, retraining: Any = None) -> GateResult:
        from ml.stages.promotion import promote_candidate

        # the training DAG's progressive run (make up's background comparison) also goes through a shadow window
        progressive_id = get_current_context()["params"].get("progressive_id")
        return promote_candidate(candidate, retraining, progressive_id=progressive_id)

    return promote(gate(register(mlflow_run_id)), retraining_id)


@task_group(group_id="shadow")
def shadow(promotion_result: Any) -> Any:
    """After a retraining's (or a progressive comparison's) promote: when the challenger passed the gate and went into shadow
    (``shadow_id`` in the result, ``ml.stages.shadow``), wait for the window (a rescheduling sensor), then
    promote it or not on its shadow results. Without a shadow both tasks return at once."""

    @task.sensor(
        task_id="window", poke_interval=SHADOW_POKE_SECONDS, timeout=SHADOW_TIMEOUT.total_seconds(), mode="reschedule"
    )
    def window(result: dict) -> PokeReturnValue:
        sid = (result or {}).get("shadow_id")
        if sid is None:
            return PokeReturnValue(is_done=True, xcom_value={"shadow_id": None, "why": "no shadow window"})
        from ml.stages.shadow import window as window_state

        w = window_state(sid)
        print(
            f"shadow #{sid}: {w['n']} requests shadowed (window {w['window_requests']} requests / "
            f"{w['window_hours']:g} h, {w['elapsed_seconds']:.0f} s elapsed): {w['why'] or 'waiting'}"
        )
        return PokeReturnValue(is_done=w["done"], xcom_value=w)

    @task(task_id="decide")
    def decide(result: dict, state: dict) -> dict:
        sid = (state or {}).get("shadow_id")
        if sid is None:
            return {k: v for k, v in (result or {}).items() if k != "gate"}
        from ml.stages.promotion import decide_shadow

        out = decide_shadow(sid)
        return {k: v for k, v in out.items() if k != "results"} | {"n": out["results"].get("n")}

    return decide(promotion_result, window(promotion_result))


@task(task_id="champion", outlets=[CHAMPION])
def publish_champion(result: dict) -> dict:
    """The asset event of a new champion (``sentiment_champion``, extra: model, version, run, reason) when
    ``result`` (promote's, or ``ml.stages.promotion.decide_shadow``'s after a shadow window) says a version became champion;
    otherwise the task is skipped, and a skipped task emits no asset event: a rejected candidate, a
    challenger still in shadow or a version that was champion already triggers nothing downstream."""
    from airflow.sdk.exceptions import AirflowSkipException

    r = result or {}
    if not r.get("promoted") or r.get("status") == "shadow" or r.get("reason") == "already champion":
        raise AirflowSkipException(f"no new champion: {r.get('status') or 'not promoted'}: {r.get('reason', '')}")
    from ml.platform.config import get_settings

    extra = json_extra(
        {
            "model": get_settings().model_name,
            "version": r.get("version"),
            "run_id": r.get("run_id"),
            "retraining_id": r.get("retraining_id"),
            "shadow_id": r.get("shadow_id"),
            "reason": str(r.get("reason", ""))[:500],
        }
    )
    get_current_context()["outlet_events"][CHAMPION].extra.update(extra)
    return extra
