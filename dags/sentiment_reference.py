"""sentiment_reference: a new champion's drift reference, computed as soon as it is promoted.

Scheduled on the ``sentiment_champion`` asset (plugins/sentiment_assets.py): sentiment_training and
sentiment_retraining emit it only when a version really became champion, so each promotion starts
one run here. ``refresh_reference`` computes the champion's predictions on its held-out set and caches
them (``ml.stages.monitoring.reference.load_reference``, ``var/reference/<model>/v<version>/``) for the
model named in the latest triggering event (by its timestamp: a run may consume several), and produces the ``sentiment_monitoring_reference`` asset that
sentiment_monitoring's ``build_report`` reads (its inlet). The nightly drift report keeps its own
schedule (``@daily``: a report covers a day of predictions, whatever the promotions); it no longer pays
for the reference after a promotion, and a reference that cannot be computed (the model's artifacts,
its snapshot) fails here, at promotion time, with an alert, rather than in the night's report.

A manual run (no triggering event) refreshes the configured model's champion.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task
from sentiment_assets import CHAMPION, REFERENCE, json_extra
from sentiment_dag_defaults import platform_dag_kwargs  # plugins/ (on sys.path in every Airflow process)


@dag(
    dag_id="sentiment_reference",
    description="Compute and cache the new champion's drift reference when a champion is promoted",
    schedule=[CHAMPION],
    tags=["sentiment", "monitoring"],
    **platform_dag_kwargs(),
    doc_md=__doc__,
)
def sentiment_reference():
    @task(outlets=[REFERENCE])
    def refresh_reference() -> dict:
        from ml.platform.config import get_settings
        from ml.stages.monitoring.reference import latest_promoted_model, load_reference, reference_location

        ctx = get_current_context()
        s = get_settings()
        model = latest_promoted_model((ctx.get("triggering_asset_events") or {}).get(CHAMPION) or [])
        if model and model != s.model_name:  # the promoted model, whatever this worker's default name
            s = s.model_copy(update={"model_name": model})
        frame, meta, vocab = load_reference(s)
        version = meta.get("version") or meta.get("model_version")
        out = json_extra(
            {
                "model": s.model_name,
                "version": version,
                "rows": len(frame),
                "vocabulary": len(vocab),
                "path": reference_location(int(version), s) if version is not None else None,
            }
        )
        ctx["outlet_events"][REFERENCE].extra.update(out)
        return out

    refresh_reference()


sentiment_reference()
