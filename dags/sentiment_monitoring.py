"""sentiment_monitoring: nightly drift report of the stored predictions against the champion.

build_report: the period's predictions (API + batch) from PostgreSQL vs the champion's
predictions on its held-out set; Evidently HTML + JSON under ``var/reports/<id>/``, the
summary in ``drift_reports`` (see ``ml/stages/monitoring/``). An empty period is a stored
report with status ``empty``, not a failure.

Period: ``start``/``end`` (ISO timestamps, UTC when no zone) if given; else ``hours``
back from the end of the run's data interval (scheduled runs: exactly the day before)
or from now (manual runs).

The reference is the ``sentiment_monitoring_reference`` asset (``build_report``'s inlet): the
``sentiment_reference`` DAG computes and caches it when a champion is promoted (scheduled on the
``sentiment_champion`` asset); a report finding none cached computes it itself. The report keeps its
nightly schedule: it covers a day of predictions, whatever the promotions.

Then the retraining trigger (``ml.stages.retraining.trigger.check_trigger``): misclassification reports since the
champion was trained against ``retraining_feedback_fraction`` of its corpus (drift reported, and a
trigger too with ``retraining_on_drift``); when due, ``trigger_retraining`` starts
``sentiment_retraining`` (run id ``retraining__<id>``), exactly once per set of reports.

Last, ``deliver_report`` (``ml.stages.alerts.drift_reports.deliver_report``) tells people: the report's short summary
(verdict, drifted signals, volume, accuracy bound, reports against the retraining threshold, link
to the HTML) by e-mail to ``report_recipients`` and to the webhook; a drift verdict also raises the
``drift`` alert. Each channel's outcome is stored on the report; a failing channel fails nothing.
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task
from sentiment_assets import REFERENCE
from sentiment_dag_defaults import platform_dag_kwargs  # plugins/ (on sys.path in every Airflow process)
from sentiment_notifiers import PlatformAlertNotifier, RetrainingTriggerFailedNotifier


@dag(
    dag_id="sentiment_monitoring",
    description="Drift report (Evidently) of the stored predictions against the champion's held-out predictions",
    schedule="@daily",
    tags=["sentiment", "monitoring"],
    params={
        "start": Param("", type="string", description="Period start (ISO timestamp); empty: end - hours"),
        "end": Param(
            "",
            type="string",
            description="Period end (ISO timestamp); empty: the data interval's end (scheduled) or now (manual)",
        ),
        "hours": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            description="Period length in hours when start is empty (default: monitoring_hours, 24)",
        ),
    },
    **platform_dag_kwargs(),
    doc_md=__doc__,
)
def sentiment_monitoring():
    @task(inlets=[REFERENCE])  # the champion's reference, computed by sentiment_reference at its promotion
    def build_report() -> dict:
        from ml.stages.monitoring.build import build_report as build
        from ml.stages.monitoring.period import run_period_end

        ctx = get_current_context()
        p = ctx["params"]
        end = run_period_end(p["end"], getattr(ctx.get("dag_run"), "run_type", None), ctx.get("data_interval_end"))
        return build(start=p["start"] or None, end=end, hours=p["hours"], airflow_run_id=ctx["run_id"])

    @task(trigger_rule="all_done")  # the feedback threshold is checked even when the drift report failed
    def check_retraining(report: dict | None) -> dict:
        """Misclassification reports since the champion was trained vs the threshold (and drift, reported;
        a trigger too with retraining_on_drift): records the retraining once, see ml/stages/retraining/trigger.py.
        ``report`` is None when build_report failed: the threshold alone decides."""
        from ml.stages.retraining.trigger import check_trigger

        return check_trigger(report, airflow_run_id=get_current_context()["run_id"])

    @task.short_circuit
    def retraining_needed(decision: dict) -> bool:
        return bool(decision["trigger"])

    @task(trigger_rule="all_done")  # the report goes out whatever the retraining check did
    def deliver_report(report: dict | None, decision: dict | None) -> dict:
        """The report's summary to the configured channels, and the drift alert (ml/stages/alerts/drift_reports.py)."""
        from ml.stages.alerts.drift_reports import deliver_report as deliver

        if not report:  # build_report failed: its failure alert (PlatformAlertNotifier) says why
            return {"report_id": None, "channels": [], "skipped": "no report"}
        return deliver(report["id"], decision or None)

    report = build_report()
    decision = check_retraining(report)
    deliver_report(report, decision)
    retraining_needed(decision) >> TriggerDagRunOperator(
        task_id="trigger_retraining",
        trigger_dag_id="sentiment_retraining",
        trigger_run_id="{{ ti.xcom_pull(task_ids='check_retraining')['airflow_run_id'] }}",
        conf={"retraining_id": "{{ ti.xcom_pull(task_ids='check_retraining')['retraining_id'] }}"},
        wait_for_completion=False,
        skip_when_already_exists=True,  # a retried trigger task never starts a second run
        # its reports are consumed already: a run that could not be started marks the retraining failed,
        # so that the next retraining of the champion trains on them (ml.stages.retraining.training_set._training_reports)
        on_failure_callback=[PlatformAlertNotifier(), RetrainingTriggerFailedNotifier()],
    )


sentiment_monitoring()
