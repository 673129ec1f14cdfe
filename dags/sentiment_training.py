"""sentiment_training: validate -> train -> evaluate -> register -> promote.

Thin on purpose: each task calls one function of ``ml`` (imported inside the task, so the
DAG file parses in milliseconds); the same functions are the ``ml`` CLI commands.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="sentiment_training",
    description="Train, evaluate, register and (if it beats the champion) promote a tweet-sentiment model",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["sentiment", "training"],
    params={
        "data_path": Param("", type="string", description="Labelled CSV: Sentiment140 (6 columns) or polarity,text"),
        "family": Param("tfidf_lr", type="string", enum=["tfidf_lr"], description="Model family"),
        "hyperparams": Param({}, type="object", description='Model hyperparameters, e.g. {"C": 2.0, "ngram_max": 2}'),
        "sample_size": Param(None, type=["null", "integer"], minimum=100,
                             description="Stratified sample of the training split (empty = all)"),
    },
    doc_md=__doc__,
)
def sentiment_training():
    @task
    def validate() -> str:
        from ml.data import DataError, validate_and_snapshot

        path = get_current_context()["params"]["data_path"]
        if not path:
            raise DataError("DAG param data_path is empty: give the path of a labelled CSV")
        return validate_and_snapshot(path).hash

    @task
    def train(snapshot_hash: str) -> str:
        from ml.train import train as train_model

        ctx = get_current_context()
        p = ctx["params"]
        return train_model(snapshot_hash, p["family"], p["hyperparams"], p["sample_size"],
                           airflow_run_id=ctx["run_id"])

    @task
    def evaluate(mlflow_run_id: str) -> str:
        from ml.train import evaluate as evaluate_run

        evaluate_run(mlflow_run_id)
        return mlflow_run_id

    @task
    def register(mlflow_run_id: str) -> str:
        from ml.train import register as register_run

        register_run(mlflow_run_id)
        return mlflow_run_id

    @task
    def promote(mlflow_run_id: str) -> dict:
        from ml.train import promote as promote_run

        return promote_run(mlflow_run_id)

    promote(register(evaluate(train(validate()))))


sentiment_training()
