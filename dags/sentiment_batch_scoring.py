"""sentiment_batch_scoring: score a large tweet file with the champion, shard by shard.

plan (read in bounded chunks, record malformed rows, write shards, fix the champion
version) -> score_shard (dynamic task mapping: one task per shard, retried alone on
failure) -> finalize (check every row is accounted for, merge the scored Parquet, store
the summary).

Triggers: by hand with ``input_path``; on its schedule; and when a file lands in the inbox
folder (``var/inbox`` by default): with no ``input_path`` the first task is a sensor that
waits for an unscored file there.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task
from sentiment_dag_defaults import platform_dag_kwargs  # plugins/ (on sys.path in every Airflow process)


@dag(
    dag_id="sentiment_batch_scoring",
    description="Score a large tweet file with the champion model (sharded, resumable, bulk-written)",
    schedule="@hourly",
    tags=["sentiment", "scoring"],
    params={
        "input_path": Param("", type="string",
                            description="File to score (CSV: Sentiment140 / polarity,text / one column; .txt; .parquet)."
                                        " Empty: wait for a new file in the inbox folder."),
        "shard_rows": Param(200_000, type="integer", minimum=1, description="Rows per shard (one mapped task each)"),
        "force": Param(False, type="boolean", description="Re-score a batch that is already done"),
    },
    **platform_dag_kwargs(retries=2, retry_delay=timedelta(seconds=10)),
    doc_md=__doc__,
)
def sentiment_batch_scoring():
    @task.sensor(poke_interval=30, timeout=3300, mode="reschedule", soft_fail=True)
    def find_input():
        from airflow.sdk import PokeReturnValue

        from ml.scoring import pending_inbox_file

        path = get_current_context()["params"]["input_path"] or pending_inbox_file()
        return PokeReturnValue(is_done=bool(path), xcom_value=path)

    @task
    def plan(input_path: str) -> list[dict]:
        from ml.scoring import plan as plan_batch

        ctx = get_current_context()
        p = plan_batch(input_path, shard_rows=ctx["params"]["shard_rows"], force=ctx["params"]["force"],
                       airflow_run_id=ctx["run_id"])
        return [{"batch_id": p.batch_id, "shard": s} for s in p.shards] or [{"batch_id": p.batch_id, "shard": None}]

    @task(max_active_tis_per_dagrun=8)
    def score_shard(batch_id: str, shard: int | None) -> dict:
        from ml.scoring import score_shard as score

        if shard is None:  # nothing left to score (already done, or resumed with no pending shard)
            return {"batch_id": batch_id, "shard": None, "rows": 0}
        return score(batch_id, shard)

    @task
    def finalize(results: list[dict]) -> dict:
        from ml.scoring import finalize as fin

        return fin(results[0]["batch_id"])

    shards = plan(find_input())
    finalize(score_shard.expand_kwargs(shards))


sentiment_batch_scoring()
