"""sentiment_monitoring: nightly drift report of the stored predictions against the champion.

build_report: the period's predictions (API + batch) from PostgreSQL vs the champion's
predictions on its held-out set; Evidently HTML + JSON under ``var/reports/<id>/``, the
summary in ``drift_reports`` (see ``ml/monitoring.py``). An empty period is a stored
report with status ``empty``, not a failure.

Period: ``start``/``end`` (ISO timestamps, UTC when no zone) if given; else ``hours``
back from the end of the run's data interval (scheduled runs: exactly the day before)
or from now (manual runs).

Hook for what comes next: ``build_report`` returns the summary (XCom ``return_value``:
``status``, ``drift_detected``, ``feedback.concept_drift``, ``metrics``, ``verdict``...);
a downstream task (e.g. a retraining trigger) takes it as its argument:
``maybe_retrain(report)`` below ``report = build_report()``.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="sentiment_monitoring",
    description="Drift report (Evidently) of the stored predictions against the champion's held-out predictions",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["sentiment", "monitoring"],
    params={
        "start": Param("", type="string", description="Period start (ISO timestamp); empty: end - hours"),
        "end": Param("", type="string", description="Period end (ISO timestamp); empty: the data interval's end "
                                                    "(scheduled) or now (manual)"),
        "hours": Param(None, type=["null", "number"], exclusiveMinimum=0,
                       description="Period length in hours when start is empty (default: monitoring_hours, 24)"),
    },
    doc_md=__doc__,
)
def sentiment_monitoring():
    @task
    def build_report() -> dict:
        from ml.monitoring import build_report as build

        ctx = get_current_context()
        p = ctx["params"]
        end = p["end"] or None
        dag_run = ctx.get("dag_run")
        if not end and dag_run is not None and str(getattr(dag_run, "run_type", "")).endswith("scheduled"):
            interval_end = ctx.get("data_interval_end")
            end = interval_end.isoformat() if interval_end else None
        return build(start=p["start"] or None, end=end, hours=p["hours"], airflow_run_id=ctx["run_id"])

    build_report()  # the retraining trigger will consume this task's summary


sentiment_monitoring()
