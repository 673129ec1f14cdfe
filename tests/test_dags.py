"""DAG files: import cleanly, stay thin, and run for real under `airflow dags test`."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parent.parent / "dags"
HEAVY = {"tensorflow", "torch", "transformers", "sklearn", "mlflow", "pandas", "numpy", "evidently", "ml", "keras"}


DAGBAG_PROBE = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=%r)
print(json.dumps({"errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
                  "dags": {d: {"tasks": sorted(bag.dags[d].task_ids), "params": sorted(bag.dags[d].params.keys())}
                           for d in bag.dag_ids}}))
"""


def test_dagbag_has_no_import_errors(platform_env):
    """Parse every DAG file the way Airflow does (in a subprocess with the platform's Airflow env)."""
    import subprocess
    import sys

    from ml.orchestration import airflow_env

    res = subprocess.run([sys.executable, "-c", DAGBAG_PROBE % str(DAGS)], env=airflow_env(platform_env),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["errors"] == {}
    dag = out["dags"]["sentiment_training"]
    assert set(dag["tasks"]) == {"validate", "train", "evaluate", "register", "promote"}
    assert set(dag["params"]) >= {"data_path", "family", "hyperparams", "sample_size"}


@pytest.mark.parametrize("path", sorted(DAGS.glob("*.py")), ids=lambda p: p.name)
def test_dag_files_have_no_heavy_top_level_imports(path):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for n in names:
            assert n.split(".")[0] not in HEAVY, f"{path.name} imports {n} at module top"


@pytest.mark.slow
def test_sentiment_training_dag_runs(airflow_cli, model_name, tweets_csv, conn):
    conf = json.dumps({"data_path": str(tweets_csv), "sample_size": 500})
    res = airflow_cli("dags", "test", "sentiment_training", "-c", conf,
                      extra_env={"SENTIMENT_MODEL_NAME": model_name})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    row = conn.execute(
        "SELECT status, airflow_run_id, model_version FROM training_runs r JOIN model_events e"
        " ON e.version = r.model_version AND e.model_name = %s ORDER BY r.created_at DESC LIMIT 1",
        (model_name,),
    ).fetchone()
    assert row is not None and row[0] == "promoted" and row[1].startswith("manual__")


@pytest.mark.slow
def test_sentiment_training_dag_fails_on_bad_data(airflow_cli, model_name, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,valid\nfile,at,all\n")
    res = airflow_cli("dags", "test", "sentiment_training", "-c", json.dumps({"data_path": str(bad)}),
                      extra_env={"SENTIMENT_MODEL_NAME": model_name})
    assert res.returncode != 0
    assert "no usable rows" in res.stdout + res.stderr
