"""sentiment_training: compare model families, register the best, gate it, promote it.

validate -> plan -> search (one mapped task per family) -> evaluate (all winners on the same
held-out split) -> compare (table + chart, MLflow + PostgreSQL) -> register (the best) ->
gate (behavioural checks) -> promote (the promotion gate vs the champion): the last three are the
``promotion`` task group (plugins/sentiment_promotion.py) shared with sentiment_retraining.

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

from airflow.sdk import Param, XComArg, dag, get_current_context, task
from sentiment_assets import SNAPSHOT, json_extra
from sentiment_dag_defaults import (  # plugins/ (on sys.path in every Airflow process)
    MODEL_FAMILIES,
    platform_dag_kwargs,
)
from sentiment_promotion import promotion, publish_champion


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
    },
    **platform_dag_kwargs(),
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
        return comparison["families"]

    # one family at a time: each already uses every core of the machine, and memory stays bounded
    @task(max_active_tis_per_dagrun=1, map_index_template="{{ family_name }}")
    def search(family: str, comparison: dict) -> dict:
        from ml.stages.search.family import search_family

        get_current_context()["family_name"] = family
        return search_family(comparison, family)

    @task
    def evaluate(comparison: dict, winners: list) -> list:
        from ml.stages.search.winners import evaluate_winners

        return evaluate_winners(comparison, list(winners[:]))  # one slice read, no probing past the end

    @task(multiple_outputs=True)
    def compare(comparison: dict, rows: list) -> dict:
        from ml.stages.compare import write_comparison

        return write_comparison(comparison, rows)

    families = plan(validate())
    comparison = XComArg(families.operator, key="comparison")
    winners = search.partial(comparison=comparison).expand(family=families)
    result = compare(comparison, evaluate(comparison, winners))
    publish_champion(promotion(result["winner_run_id"]))


sentiment_training()
