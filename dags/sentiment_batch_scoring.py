"""sentiment_batch_scoring: score one tweet file with the champion, shard by shard.

plan (read in bounded chunks, record malformed rows, write shards, fix the champion
version) -> score_shard (dynamic task mapping: one task per shard, retried alone on
failure) -> finalize (check every row is accounted for, merge the scored Parquet, store
the summary).

Unscheduled and sensor-free: every run scores the ``input_path`` it was given, at once. The
file must lie under the inbox or a folder of ``batch_input_roots``; a file outside them, an empty
or binary file, a CSV without a text column (name it with ``text_column``) or more rejected rows
than ``batch_max_reject_share`` fails the plan task at once (no retry), with the reason, and
nothing is stored. The scored file is ``<batch_output_root or var/batches>/<batch id>/scored.parquet``
(``output_path``: a copy under that root too).
Not scheduled on the ``sentiment_champion`` asset: a new champion does not re-score old files
(``plan`` reads the champion as an inlet, for the lineage); ``finalize`` produces the
``sentiment_scored_batch`` asset (extra: batch id, rows, model version, output).
Runs come from a person (``input_path`` in the trigger form) or from ``sentiment_inbox``,
which triggers one run per new file in ``var/inbox/`` (run id ``inbox__<content hash>``,
with a note naming the file). Several runs may be active at once; runs beyond that limit
wait in the ``queued`` state, and two runs of the same content share one batch (the
second waits for the first's plan, logging why, and never writes a duplicate row).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from airflow.sdk import Param, dag, get_current_context, task
from sentiment_assets import CHAMPION, SCORED_BATCH, json_extra
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
            description="File to score (CSV: Sentiment140 / polarity,text / one column / a header naming the"
            " text column; .txt; .parquet), under var/inbox/ or a folder of batch_input_roots. Required: files"
            " dropped in var/inbox/ are triggered by sentiment_inbox.",
        ),
        "text_column": Param(
            "",
            type="string",
            description="The column holding the tweets (CSV: named in its header line; Parquet). Empty: a 'text'"
            " column or the fixed layouts",
        ),
        "output_path": Param(
            "",
            type="string",
            description="Also copy the scored Parquet here: a path under the batch output root (var/batches), or"
            " relative to it. Empty: only <output root>/<batch id>/scored.parquet",
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
    @task(inlets=[CHAMPION])  # the plan fixes the champion version every shard scores with
    def plan() -> list[dict]:
        from airflow.sdk.exceptions import AirflowFailException

        from ml.data import DataError
        from ml.stages.scoring.finalize import output_destination
        from ml.stages.scoring.plan import plan as plan_batch

        ctx = get_current_context()
        try:
            if ctx["params"].get("output_path"):  # a bad destination fails before anything is scored
                output_destination(ctx["params"]["output_path"], "batch", confine=True)
            p = plan_batch(
                ctx["params"]["input_path"],
                shard_rows=ctx["params"]["shard_rows"],
                force=ctx["params"]["force"],
                airflow_run_id=ctx["run_id"],
                text_column=ctx["params"].get("text_column") or None,
            )
        except DataError as e:  # the input itself is unusable: a retry cannot help
            raise AirflowFailException(str(e)) from None
        return [{"batch_id": p.batch_id, "shard": s} for s in p.shards] or [{"batch_id": p.batch_id, "shard": None}]

    # the Celery queue "scoring": workers that take it score shards on any host (the files are in the shared
    # store, ml/platform/storage.py); the LocalExecutor ignores queues
    @task(max_active_tis_per_dagrun=8, queue="scoring")
    def score_shard(batch_id: str, shard: int | None) -> dict:
        from ml.stages.scoring.shard import score_shard as score

        if shard is None:  # nothing left to score (already done, or resumed with no pending shard)
            return {"batch_id": batch_id, "shard": None, "rows": 0}
        return score(batch_id, shard)

    @task(outlets=[SCORED_BATCH])
    def finalize(results: list[dict]) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from ml.data import DataError
        from ml.stages.scoring.finalize import copy_output
        from ml.stages.scoring.finalize import finalize as fin

        summary = fin(results[0]["batch_id"])
        dest = get_current_context()["params"].get("output_path")
        if dest:
            try:  # confined to the output root: whoever triggers a run writes with the worker's rights
                summary = {**summary, "copied_to": str(copy_output(summary, dest, confine=True))}
            except DataError as e:
                raise AirflowFailException(str(e)) from None
        get_current_context()["outlet_events"][SCORED_BATCH].extra.update(
            json_extra(
                {
                    k: summary.get(k)
                    for k in ("batch_id", "rows_scored", "rows_rejected", "model_version", "output", "copied_to")
                }
            )
        )
        return summary

    # expand_kwargs returns an XComArg (the mapped results, resolved to a list when finalize runs)
    finalize(cast("list[dict[str, Any]]", score_shard.expand_kwargs(plan())))


sentiment_batch_scoring()
