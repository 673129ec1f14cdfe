"""Airflow notifiers of the platform (Airflow's notifier interface, ``airflow.sdk.BaseNotifier``).

``PlatformAlertNotifier`` turns a failed task of the platform's DAGs into a platform alert
(``ml.stages.alerts.events.raise_event``: recorded in the ``alerts`` table; log line, webhook, e-mail as
configured), and marks a failed retraining as such in ``retrainings``. Attached to the DAGs as
``on_failure_callback`` (``default_args``, so it runs where the task ran, also under
``airflow dags test``).

``RetrainingTriggerFailedNotifier`` (sentiment_monitoring's ``trigger_retraining``, beside the alert): the
recorded retraining whose DAG run could not be started is marked failed, so that its consumed reports are
trained on by the next retraining.

This file lives in ``plugins/``, which Airflow puts on ``sys.path`` in every process (DAG
processor, workers, ``dags test``): the DAG files import it by name and stay free of ``ml``
imports at parse time (the ``ml`` imports happen inside :meth:`notify`).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseNotifier, Context


class PlatformAlertNotifier(BaseNotifier):
    """Send a platform alert for the failed task in ``context``; never raises."""

    template_fields = ("message",)

    def __init__(self, message: str = "", severity: str = "error", rule: str = "dag_failure") -> None:
        super().__init__()
        self.message = message
        self.severity = severity
        self.rule = rule

    @staticmethod
    def _details(context: Context) -> dict[str, Any]:
        ti = context.get("ti") or context.get("task_instance")
        dag = context.get("dag")
        dag_run = context.get("dag_run")
        exc = context.get("exception")
        return {
            "dag_id": getattr(dag, "dag_id", None) or getattr(ti, "dag_id", None),
            "run_id": context.get("run_id") or getattr(dag_run, "run_id", None),
            "task_id": getattr(ti, "task_id", None),
            "map_index": getattr(ti, "map_index", None),
            "try_number": getattr(ti, "try_number", None),
            "exception": f"{type(exc).__name__}: {exc}" if exc is not None else None,
            "params": {
                k: v for k, v in (context.get("params") or {}).items() if isinstance(v, (str, int, float, bool))
            },
        }

    def notify(self, context: Context) -> None:
        import logging

        log = logging.getLogger("ml.stages.alerts")
        try:
            from ml.platform.config import get_settings
            from ml.stages.alerts.events import raise_event

            d = self._details(context)
            message = self.message or (
                f"{d['dag_id']}: task {d['task_id']} failed in run {d['run_id']}"
                + (f" ({d['exception']})" if d["exception"] else "")
            )
            raise_event(self.rule, get_settings().model_name, message, d, severity=self.severity)
            if d["dag_id"] == "sentiment_retraining":
                self._mark_retraining_failed(context, message)
        except Exception as e:  # noqa: BLE001 - a failure callback must never fail the run further
            log.error("PlatformAlertNotifier could not send the alert: %s", e)

    @staticmethod
    def _mark_retraining_failed(context: Context, message: str) -> None:
        from ml.stages.retraining.records import mark_failed

        rid = (context.get("params") or {}).get("retraining_id")
        if rid in (None, "", "None"):
            ti = context.get("ti") or context.get("task_instance")
            try:
                prep = ti.xcom_pull(task_ids="prepare") if ti is not None else None
                rid = (prep or {}).get("retraining_id")
            except Exception:  # noqa: BLE001
                rid = None
        if rid not in (None, "", "None"):
            mark_failed(rid, message)


class RetrainingTriggerFailedNotifier(BaseNotifier):
    """``trigger_retraining`` failed (after its retries): the retraining that ``check_retraining`` recorded
    never got a DAG run; mark it failed (``ml.stages.retraining.records.mark_failed``). Never raises."""

    def __init__(self, decision_task_id: str = "check_retraining") -> None:
        super().__init__()
        self.decision_task_id = decision_task_id

    def notify(self, context: Context) -> None:
        import logging

        try:
            from ml.stages.retraining.records import mark_failed

            ti = context.get("ti") or context.get("task_instance")
            decision = (ti.xcom_pull(task_ids=self.decision_task_id) if ti is not None else None) or {}
            if decision.get("retraining_id") is not None:
                exc = context.get("exception")
                mark_failed(
                    decision["retraining_id"],
                    "sentiment_monitoring: trigger_retraining failed, no "
                    "sentiment_retraining run" + (f" ({type(exc).__name__}: {exc})" if exc else ""),
                )
        except Exception as e:  # noqa: BLE001 - a failure callback must never fail the run further
            logging.getLogger("ml.stages.retraining").error("could not mark the retraining failed: %s", e)
