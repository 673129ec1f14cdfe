"""sentiment_retraining: retrain the champion on its data + the users' corrections; promote only a winner.

prepare (the champion's snapshot + the reported tweets with their corrected labels, deduplicated,
conflicts by majority, reviewed-only if ``feedback_review_required``: a new snapshot of kind
``retraining`` with ``parent_hash``) -> train (the champion's family and params, or a comparison of
families with ``mode: compare``) -> evaluate (challenger and champion on the SAME held-out set, the
parent's, and on the reported tweets) -> the ``promotion`` task group shared with sentiment_training
(plugins/sentiment_promotion.py): register -> gate (behavioural checks, ``ml.evaluation.behaviour``) -> promote
(the promotion gate with ``retraining_promotion_margin``; otherwise the champion stays) -> shadow: with a
shadow window (``shadow_requests`` / ``shadow_hours``, ``ml/stages/shadow.py``) a challenger that passed the gate
serves in shadow first; ``shadow.window`` (a sensor in reschedule mode: no worker slot held between pokes,
poke interval ``SENTIMENT_SHADOW_POKE_SECONDS``) waits for the window, ``shadow.decide`` promotes it only if
agreement with the champion and its estimated (and reviewed) live accuracy hold up. Window 0: both return
at once.
The outcome is recorded in ``retrainings`` either way; the API serves a new champion within its
poll interval.

Assets (plugins/sentiment_assets.py): ``prepare`` reads the champion (inlet: its snapshot is extended) and produces
``sentiment_training_snapshot`` (the new snapshot, extra: its hash and parent's); ``champion`` (after
``shadow.decide``) produces ``sentiment_champion`` only when the challenger became champion, at once or
after its shadow window (skipped otherwise).

Triggered by ``sentiment_monitoring`` (TriggerDagRunOperator, run id ``retraining__<id>``,
conf ``{"retraining_id": id}``) when the misclassification reports since the champion was trained
reach ``retraining_feedback_fraction`` of its training corpus; by hand without ``retraining_id``
(a manual retraining on the pending reports). Held-out choice: see ``ml/stages/retraining/``.
"""

from __future__ import annotations

from typing import Any, cast

from airflow.sdk import Param, dag, get_current_context, task
from sentiment_assets import CHAMPION, SNAPSHOT, json_extra
from sentiment_dag_defaults import (  # plugins/ (on sys.path in every Airflow process)
    MODEL_FAMILIES,
    platform_dag_kwargs,
)
from sentiment_promotion import promotion, publish_champion, shadow


@dag(
    dag_id="sentiment_retraining",
    description="Retrain on the champion's data + reported tweets; promote the challenger only if it wins",
    schedule=None,
    tags=["sentiment", "training", "feedback"],
    params={
        "retraining_id": Param(
            None,
            type=["null", "integer", "string"],
            description="The triggered retraining (set by sentiment_monitoring); empty: a manual "
            "retraining on the pending reports",
        ),
        "mode": Param(
            "",
            type="string",
            enum=["", "champion", "compare"],
            description="champion: its family + params; compare: compare `families`; empty: retraining_mode",
        ),
        "families": Param(
            MODEL_FAMILIES,
            type="array",
            items={"type": "string", "enum": MODEL_FAMILIES},
            minItems=1,
            description="Families to compare (mode compare)",
        ),
        "profile": Param("quick", type="string", enum=["quick", "full"], description="Search profile (mode compare)"),
        "hyperparams": Param({}, type="object", description="Overrides of the champion's params (mode champion)"),
        "sample_size": Param(
            None,
            type=["null", "integer"],
            minimum=20,
            description="Stratified sample of the training split (tests, quick runs)",
        ),
    },
    **platform_dag_kwargs(),
    doc_md=__doc__,
)
def sentiment_retraining():
    @task(multiple_outputs=True, inlets=[CHAMPION], outlets=[SNAPSHOT])
    def prepare() -> dict:
        from ml.stages.retraining.training_set import prepare as build_set

        ctx = get_current_context()
        prep = build_set(ctx["params"]["retraining_id"], airflow_run_id=ctx["run_id"])
        ctx["outlet_events"][SNAPSHOT].extra.update(
            json_extra(
                {
                    "hash": prep.get("snapshot_hash"),
                    "kind": "retraining",
                    "rows": prep.get("rows_out"),
                    "parent_hash": prep.get("parent"),
                    "reports": prep.get("reports"),
                    "retraining_id": prep.get("retraining_id"),
                }
            )
        )
        return prep

    @task
    def train(retraining_id: int) -> str:
        from ml.stages.retraining.challenger import train_challenger
        from ml.views.comparison import render

        ctx = get_current_context()
        p = ctx["params"]
        return train_challenger(
            retraining_id,
            p["mode"] or None,
            p["families"],
            p["hyperparams"],
            p["sample_size"],
            p["profile"],
            airflow_run_id=ctx["run_id"],
            render=render,  # mode compare: the comparison's Markdown, HTML and chart
        )

    @task
    def evaluate(retraining_id: int, mlflow_run_id: str) -> str:
        from ml.stages.retraining.challenger import evaluate as evaluate_both

        evaluate_both(retraining_id, mlflow_run_id)
        return mlflow_run_id

    rid = prepare()["retraining_id"]
    # a task group's call returns its function's XComArg (typed DAGNode): what publish_champion receives
    publish_champion(cast("dict[str, Any]", shadow(promotion(evaluate(rid, train(rid)), rid))))


sentiment_retraining()
