"""The platform's Airflow assets, named in one place (data-aware scheduling: the Assets page shows
which DAG produces and which consumes each).

================  ==========================================  ============================================
asset             produced by (task)                          consumed by
================  ==========================================  ============================================
``CHAMPION``      sentiment_training / sentiment_retraining:  sentiment_reference (its schedule); inlets:
                  ``champion``, only when a version really    sentiment_batch_scoring.plan (the champion
                  became champion (skipped otherwise)         it scores with), sentiment_retraining.prepare
``SNAPSHOT``      sentiment_training.validate,                (the record of what was trained on)
                  sentiment_retraining.prepare (extra: the
                  snapshot hash)
``REFERENCE``     sentiment_reference.refresh_reference       sentiment_monitoring.build_report (inlet)
``SCORED_BATCH``  sentiment_batch_scoring.finalize            (people, downstream systems)
================  ==========================================  ============================================

The URIs use an ``x-`` scheme (Airflow's convention for a scheme of one's own): they name things in
the platform (registry alias, snapshot store, reference cache, batch store), not files that Airflow
could read. Every event carries what identifies its object in ``extra`` (model name and version,
snapshot hash, batch id...).

Lives in ``plugins/`` (on ``sys.path`` in every Airflow process): the DAG files import it by name and
stay free of ``ml`` imports at parse time.
"""

from __future__ import annotations

from airflow.sdk import Asset

GROUP = "sentiment"

#: the registered model's ``champion`` alias moved to a new version (extra: model, version, run_id, reason)
CHAMPION = Asset(name="sentiment_champion", uri="x-sentiment://registry/champion", group=GROUP)
#: a validated training snapshot was written (extra: hash, kind, rows; retraining: parent_hash)
SNAPSHOT = Asset(name="sentiment_training_snapshot", uri="x-sentiment://snapshots/training", group=GROUP)
#: the champion's drift reference (its predictions on its held-out set) is cached (extra: model, version, rows)
REFERENCE = Asset(name="sentiment_monitoring_reference", uri="x-sentiment://monitoring/reference", group=GROUP)
#: a batch was scored and its Parquet written (extra: batch_id, rows, output path)
SCORED_BATCH = Asset(name="sentiment_scored_batch", uri="x-sentiment://batches/scored", group=GROUP)

ALL = (CHAMPION, SNAPSHOT, REFERENCE, SCORED_BATCH)


def json_extra(values: dict) -> dict:
    """An asset event's ``extra``: JSON scalars only (None and other objects as strings or dropped)."""
    out: dict = {}
    for k, v in values.items():
        if v is None:
            continue
        out[str(k)] = v if isinstance(v, (str, int, float, bool)) else str(v)
    return out
