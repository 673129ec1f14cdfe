"""sentiment_batch_scoring: score one tweet file with the champion, shard by shard.

plan (read in bounded chunks, record malformed rows, write shards, fix the champion
version) -> score_shard (dynamic task mapping: one task per shard, retried alone on
failure) -> finalize (check every row is accounted for, merge the scored Parquet, store
the summary).

Unscheduled and sensor-free: every run scores the ``input_path`` it was given, at once.
Runs come from a person (``input_path`` in the trigger form) or from ``sentiment_inbox``,
which triggers one run per new file in ``var/inbox/`` (run id ``inbox__<content hash>``,
with a note naming the file). Several runs may be active at once; runs beyond that limit
wait in the ``queued`` state, and two runs of the same content share one batch (the
second waits for the first's plan, logging why, and never writes a duplicate row).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task
from sentiment_dag_defaults import platform_dag_kwargs  # plugins/ (on sys.path in every Airflow process)

#: batches scored at the same time; more runs wait (state "queued") until one finishes
MAX_ACTIVE_BATCHES = 4


@dag(
    dag_id="sentiment_batch_scoring",
    description="Score a tweet file with the champion model (sharded, resumable, bulk-written)",
    schedule=None,
    tags=["sentiment", "scoring"],
    params={
        "input_path": Param(
            "",
            type="string",
            description="File to score (CSV: Sentiment140 / polarity,text / one column; .txt; .parquet)."
            " Required: files dropped in var/inbox/ are triggered by sentiment_inbox.",
        ),
        "shard_rows": Param(
            0, type="integer", minimum=0, description="Rows per shard (one mapped task each); 0: one shard per CPU"
        ),
        "force": Param(False, type="boolean", description="Re-score a batch that is already done"),
    },
    **{**platform_dag_kwargs(retries=2, retry_delay=timedelta(seconds=10)), "max_active_runs": MAX_ACTIVE_BATCHES},
    doc_md=__doc__,
)
def sentiment_batch_scoring():
    @task
    def plan() -> list[dict]:
        from ml.stages.scoring.plan import plan as plan_batch

        ctx = get_current_context()
        p = plan_batch(
            ctx["params"]["input_path"],
            shard_rows=ctx["params"]["shard_rows"],
            force=ctx["params"]["force"],
            airflow_run_id=ctx["run_id"],
        )
        return [{"batch_id": p.batch_id, "shard": s} for s in p.shards] or [{"batch_id": p.batch_id, "shard": None}]

    @task(max_active_tis_per_dagrun=8)
    def score_shard(batch_id: str, shard: int | None) -> dict:
        from ml.stages.scoring.shard import score_shard as score

        if shard is None:  # nothing left to score (already done, or resumed with no pending shard)
            return {"batch_id": batch_id, "shard": None, "rows": 0}
        return score(batch_id, shard)

    @task
    def finalize(results: list[dict]) -> dict:
        from ml.stages.scoring.finalize import finalize as fin

        return fin(results[0]["batch_id"])

    finalize(score_shard.expand_kwargs(plan()))


sentiment_batch_scoring()
