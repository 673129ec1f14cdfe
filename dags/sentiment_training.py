"""sentiment_training: compare model families, register the best, gate it, promote it.

validate -> plan -> search (one mapped task per family) -> evaluate (all winners on the same
held-out split) -> compare (table + chart, MLflow + PostgreSQL) -> register (the best) ->
gate (behavioural checks) -> promote (the promotion gate vs the champion): the last three are the
``promotion`` task group (plugins/sentiment_promotion.py) shared with sentiment_retraining; then the
``shadow`` group, which waits only when the winner went into a shadow window (``make up``'s background
comparison, param ``progressive_id``: ml/platform/progressive.py), and returns at once otherwise.

Assets (plugins/sentiment_assets.py): ``validate`` produces ``sentiment_training_snapshot`` (extra: the
snapshot hash); ``champion`` produces ``sentiment_champion`` only when the candidate became champion
(skipped otherwise), which runs ``sentiment_reference`` (the new champion's drift reference).

The default run compares ``["tfidf_lr"]`` only, so it stays fast; a full comparison is e.g.
``{"families": ["tfidf_lr", "cnn", "bilstm", "transformer"], "profile": "full",
"sample_sizes": {"cnn": 50000, "bilstm": 30000, "transformer": 20000}}``.
Search spaces: config/search_space.yaml (``search_space`` merges over the profile).

Thin on purpose: each task calls one function of ``ml`` (imported inside the task, so the
DAG file parses in milliseconds); the same functions back the ``ml`` CLI (``ml compare``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from airflow.sdk import Param, XComArg, dag, get_current_context, task
from sentiment_assets import SNAPSHOT, json_extra
from sentiment_dag_defaults import (  # plugins/ (on sys.path in every Airflow process)
    MODEL_FAMILIES,
    platform_dag_kwargs,
)
from sentiment_promotion import promotion, publish_champion, shadow

if TYPE_CHECKING:  # (no `ml` import at parse time)
    from ml.stages.compare import ComparisonResult
    from ml.stages.search.plan import ComparisonPlan

#: families trained on the Celery queue "gpu" (task search_gpu); the others are mapped over "search"
GPU_FAMILIES = ("transformer",)


def _background_priority(context) -> None:
    """A progressive run (``make up``'s background comparison): lower this task process's CPU priority
    (``progressive_nice``) so the API keeps its latency; other runs are left as they are."""
    if context["params"].get("progressive_id") is not None:
        from ml.platform.progressive import lower_priority

        lower_priority()


@dag(
    dag_id="sentiment_training",
    description="Compare model families (search + tracking), register the best, gate and promote it",
    schedule=None,
    tags=["sentiment", "training", "comparison"],
    params={
        "data_path": Param("", type="string", description="Labelled CSV: Sentiment140 (6 columns) or polarity,text"),
        "families": Param(
            ["tfidf_lr"],
            type="array",
            items={"type": "string", "enum": MODEL_FAMILIES},
            minItems=1,
            description="Model families to compare (one mapped search task each)",
        ),
        "profile": Param(
            "quick", type="string", enum=["quick", "full"], description="Search profile of config/search_space.yaml"
        ),
        "sample_sizes": Param(
            {}, type="object", description='Training sample per family, e.g. {"cnn": 5000} (default: the profile\'s)'
        ),
        "sample_size": Param(
            None,
            type=["null", "integer"],
            minimum=20,
            description="Training sample for every family not in sample_sizes (empty = profile's)",
        ),
        "search_space": Param(
            {},
            type="object",
            description='Merged over the profile, e.g. {"cnn": {"n_trials": 1, "params": {"epochs": [1]}}}',
        ),
        "progressive_id": Param(
            None,
            type=["null", "integer"],
            description="Set by `make up` (ml.platform.progressive): a background comparison, low priority, "
            "its winner through the gate and the shadow window",
        ),
    },
    **platform_dag_kwargs(on_execute_callback=[_background_priority]),
    doc_md=__doc__,
)
def sentiment_training():
    @task(outlets=[SNAPSHOT])
    def validate() -> str:
        from ml.data import DataError
        from ml.data.snapshots import validate_and_snapshot

        ctx = get_current_context()
        path = ctx["params"]["data_path"]
        if not path:
            raise DataError("DAG param data_path is empty: give the path of a labelled CSV")
        snap = validate_and_snapshot(path)
        ctx["outlet_events"][SNAPSHOT].extra.update(
            json_extra({"hash": snap.hash, "kind": "training", "rows": snap.n_rows, "source": str(path)})
        )
        return snap.hash

    @task
    def plan(snapshot_hash: str) -> list:
        """Check the request, open the parent MLflow run. The families are the return value, because
        Airflow maps only over a task's return value; the plan itself goes to XCom key "comparison"."""
        from ml.stages.search.plan import plan_comparison

        ctx = get_current_context()
        p = ctx["params"]
        comparison = plan_comparison(
            snapshot_hash,
            p["families"],
            p["profile"],
            p["sample_sizes"],
            p["sample_size"],
            p["search_space"],
            airflow_run_id=ctx["run_id"],
        )
        ctx["ti"].xcom_push(key="comparison", value=comparison)
        return [f for f in comparison["families"] if f not in GPU_FAMILIES]  # search_gpu takes the others

    # one family at a time: each already uses every core of the machine, and memory stays bounded
    @task(max_active_tis_per_dagrun=1, map_index_template="{{ family_name }}")
    def search(family: str, comparison: ComparisonPlan) -> dict:
        from ml.stages.progressive import search as search_family

        ctx = get_current_context()
        ctx["family_name"] = family  # type: ignore[typeddict-unknown-key]  # map_index_template renders the context
        return search_family(comparison, family, ctx["params"].get("progressive_id"))

    # the transformer on the Celery queue "gpu" (a GPU host's worker takes only that queue; the LocalExecutor
    # ignores queues), after the CPU families: still one family at a time on a single host
    @task(queue="gpu", trigger_rule="none_failed")
    def search_gpu(comparison: ComparisonPlan) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from ml.stages.progressive import search as search_family

        families = [f for f in comparison["families"] if f in GPU_FAMILIES]
        if not families:
            raise AirflowSkipException("no GPU family requested")
        return search_family(comparison, families[0], get_current_context()["params"].get("progressive_id"))

    @task(trigger_rule="none_failed_min_one_success")  # a family group may be empty (skipped)
    def evaluate(comparison: ComparisonPlan, winners: list, gpu_winner: dict | None = None) -> list:
        from ml.stages.search.winners import evaluate_winners

        found = list(winners[:]) if winners is not None else []  # one slice read, no probing past the end
        return evaluate_winners(comparison, found + ([gpu_winner] if gpu_winner else []))

    @task(multiple_outputs=True)
    def compare(comparison: ComparisonPlan, rows: list) -> ComparisonResult:
        from ml.views.comparison import publish

        return publish(comparison, rows)

    families = plan(validate())
    # the plan (plan's XCom key "comparison"): an XComArg here, the ComparisonPlan when a task runs
    comparison = cast("ComparisonPlan", XComArg(families.operator, key="comparison"))
    winners = search.partial(comparison=comparison).expand(family=families)
    gpu_winner = search_gpu(comparison)
    winners >> gpu_winner
    # the mapped searches' XComArg: the list of winners when evaluate runs
    result = compare(comparison, evaluate(comparison, cast("list[dict[str, Any]]", winners), gpu_winner))
    # a task group's call returns its function's XComArg (typed DAGNode): what publish_champion receives
    publish_champion(cast("dict[str, Any]", shadow(promotion(result["winner_run_id"]))))


sentiment_training()
