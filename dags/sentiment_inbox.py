"""sentiment_inbox: every new file in the inbox folder (``var/inbox/``) becomes its own
``sentiment_batch_scoring`` run.

Every minute, ``list_new_files`` lists the inbox files whose content is not scored yet
(hidden files and files modified in the last ``settle_seconds`` wait: write big files under
a ``.name`` and rename them), and ``trigger`` starts one batch run per file, mapped, with
the deterministic run id ``inbox__<content hash>``: a file already triggered is skipped, never
triggered twice. Each triggered run carries a note naming the file. The batch DAG itself
has no schedule and no sensor, so a manual run never waits behind the inbox.

Not an AssetWatcher: the file triggers Airflow ships for event-driven scheduling
(``FileDeleteTrigger``) delete the file they find, and the batch needs it.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task
from sentiment_dag_defaults import platform_dag_kwargs  # plugins/ (on sys.path in every Airflow process)


@dag(
    dag_id="sentiment_inbox",
    description="Trigger one sentiment_batch_scoring run per new file in var/inbox/",
    schedule=timedelta(minutes=1),
    tags=["sentiment", "scoring"],
    params={
        "settle_seconds": Param(
            10, type="number", minimum=0, description="A file must be unchanged this long before it is scored"
        ),
    },
    **platform_dag_kwargs(),
    doc_md=__doc__,
)
def sentiment_inbox():
    @task
    def list_new_files() -> list[dict]:
        from ml.stages.scoring.inbox import inbox_trigger_kwargs

        return inbox_trigger_kwargs(settle_seconds=get_current_context()["params"]["settle_seconds"])

    TriggerDagRunOperator.partial(
        task_id="trigger",
        trigger_dag_id="sentiment_batch_scoring",
        skip_when_already_exists=True,
        wait_for_completion=False,
        logical_date=None,
        openlineage_inject_parent_info=False,
    ).expand_kwargs(list_new_files())


sentiment_inbox()
