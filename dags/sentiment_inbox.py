"""sentiment_inbox: every new file in the inbox folder (``var/inbox/``) becomes its own
``sentiment_batch_scoring`` run.

Every minute, ``list_new_files`` lists the inbox files whose content is not scored yet
(hidden files and files modified in the last ``settle_seconds`` wait: write big files under
a ``.name`` and rename them), and ``trigger`` starts one batch run per file, mapped, with
the deterministic run id ``inbox__<content hash>``: a file already triggered is skipped, never
triggered twice. Each triggered run carries a note naming the file. The batch DAG itself
has no schedule and no sensor, so a manual run never waits behind the inbox. A symlink leading
out of the allowed input folders (or to anything but a regular file) is skipped with a warning,
never read; content whose batch failed (empty, binary, no text column, too many rejects) is not
listed again (clear its failed run to retry). Scored files go to ``var/batches/<batch id>/``,
never into the inbox.

Not an AssetWatcher: an AssetWatcher needs an event trigger (``BaseEventTrigger``), and the only file
ones Airflow 3.3 ships (``FileDeleteTrigger``, ``DirectoryFileDeleteTrigger``) delete the file they
find, which the batch still has to read (and the plain ``FileTrigger`` is not an event trigger: it
would fire again for the same file after every restart of the triggerer). A trigger of our own would
have to remember which files it reported; the inbox's deterministic run ids already do exactly that.
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
