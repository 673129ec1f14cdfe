"""The compose deployment's one-shot ``seed`` service (``python -m ml.platform.startup.seeding``): the
training file it picks, and for real against the session's Airflow metadata DB (no scheduler): it
triggers ``sentiment_training`` once, with the file as ``data_path``, and follows that same run on a
second start."""

from __future__ import annotations

import psycopg
import pytest

from ml.platform import db
from ml.platform.startup.seeding import SEED_RUN_PREFIX, seed
from ml.platform.startup.sources import BUNDLED_SAMPLE
from ml.platform.startup.up import experiment_ui_url
from ml.platform.supervisor import ServiceError


@pytest.mark.slow
def test_seed_triggers_the_training_dag_once(platform_env, airflow_cli, mlflow_tracking, model_name):
    """No champion: the seed unpauses and triggers sentiment_training (run id seed__<file hash>, conf
    data_path = the bundled sample) and follows it; with no scheduler here the run stays queued, so the
    seed gives up after its run timeout. A second start follows the same run (no second trigger)."""
    res = airflow_cli("dags", "reserialize")  # the DAG known to Airflow, as the dag-processor does
    assert res.returncode == 0, res.stderr[-2000:]
    # (the session's Airflow settings are in this process's environment: conftest's platform_env)

    def runs() -> list[tuple]:
        with psycopg.connect(db.libpq_url(db.airflow_db_url(platform_env))) as c:
            return c.execute(
                "SELECT run_id, state, conf::jsonb->>'data_path' FROM dag_run WHERE dag_id = 'sentiment_training'"
                " AND run_id LIKE %s",
                (SEED_RUN_PREFIX + "%",),
            ).fetchall()

    before = runs()
    for _ in range(2):
        with pytest.raises(ServiceError, match=r"still queued after 0s"):
            seed(None, poll=0.5, run_timeout=0)
    new = [r for r in runs() if r not in before]
    assert len(new) == 1 and new[0][1] == "queued" and new[0][2] == str(BUNDLED_SAMPLE), new


def test_make_up_links_the_experiment_in_the_training_view(platform_env, mlflow_tracking):
    """The MLflow link `make up` prints opens the platform's experiment in MLflow's classic training view
    (ml.platform.tracking.ui_url), not the server's landing page."""
    import mlflow

    exp = mlflow.MlflowClient().get_experiment_by_name(platform_env.experiment_name)
    url = experiment_ui_url(platform_env, "http://127.0.0.1:5000/")
    assert url == f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}?workflowType=machine_learning"
