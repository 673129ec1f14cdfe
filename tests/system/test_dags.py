"""DAG files: import cleanly, stay thin, and run for real under `airflow dags test`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from ml import models
from ml.platform import db
from ml.platform.config import get_settings
from ml.platform.orchestration import airflow_env

DAGS = Path(__file__).resolve().parents[2] / "dags"
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
    res = subprocess.run(
        [sys.executable, "-c", DAGBAG_PROBE % str(DAGS)],
        env=airflow_env(platform_env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["errors"] == {}
    dag = out["dags"]["sentiment_training"]
    assert set(dag["tasks"]) == {
        "validate",
        "plan",
        "search",
        "search_gpu",  # the transformer, on the Celery queue "gpu" (skipped when not requested)
        "evaluate",
        "compare",
        "promotion.register",
        "promotion.gate",
        "promotion.promote",
        "shadow.window",  # waits only for a progressive run's winner in shadow (tests/system/test_progressive.py)
        "shadow.decide",
        "champion",  # the sentiment_champion asset's event, only after a promotion (tests/system/test_assets.py)
    }
    assert set(dag["params"]) >= {
        "data_path",
        "families",
        "sample_sizes",
        "sample_size",
        "profile",
        "search_space",
        "progressive_id",
    }


IMPORT_PROBE = """
import importlib.util, json, sys
sys.path.insert(0, %r)  # plugins/, as Airflow puts it on the path
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("dag_under_test", %r)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - before})))
"""


@pytest.mark.parametrize("path", sorted(DAGS.glob("*.py")), ids=lambda p: p.name)
def test_dag_files_import_nothing_heavy_at_parse_time(path, platform_env):
    """Parse (import) each DAG file in a fresh interpreter, as the scheduler does, and look at
    what it loaded: no ML framework, no pandas/numpy, no ``ml`` package (those load in task bodies)."""
    res = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE % (str(DAGS.parent / "plugins"), str(path))],
        env=airflow_env(platform_env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    loaded = set(json.loads(res.stdout.strip().splitlines()[-1]))
    assert "airflow" in loaded  # the probe really imported the DAG file
    assert not loaded & HEAVY, f"{path.name} imports {sorted(loaded & HEAVY)} at parse time"


@pytest.mark.slow
def test_comparison_dag_runs_mapped_families(airflow_cli, model_name, tweets_csv, conn):
    """Two families (one mapped search task each) on a tiny sample: comparison written with one
    row per family, the best registered and gated; the decision is recorded either way."""
    conf = json.dumps(
        {
            "data_path": str(tweets_csv),
            "families": ["tfidf_lr", "cnn"],
            "sample_sizes": {"tfidf_lr": 600, "cnn": 300},
            "search_space": {
                "tfidf_lr": {"params": {"C": [1.0]}},
                "cnn": {
                    "n_trials": 1,
                    "params": {
                        "epochs": [1],
                        "vocab_size": [2000],
                        "embedding_dim": [16],
                        "filters": [16],
                        "embeddings": ["scratch"],
                    },
                },
            },
        }
    )
    before = conn.execute("SELECT coalesce(max(id), 0) FROM comparisons").fetchone()[0]
    # the outcome is forced, not read back: no candidate can pass a behavioural pass rate above 1, so the
    # winner is gated and rejected (the promoted path and its champion asset: tests/system/test_assets.py)
    res = airflow_cli(
        "dags",
        "test",
        "sentiment_training",
        "-c",
        conf,
        extra_env={
            "SENTIMENT_MODEL_NAME": model_name,
            "SENTIMENT_BEHAVIOUR_CHECKS": "true",  # whatever an earlier test left in the environment
            "SENTIMENT_BEHAVIOUR_MIN_FUNCTIONALITY": "1.01",
        },
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    # this run's comparison: exactly one new row (never another test's, read as the newest)
    new = conn.execute(
        "SELECT families, table_json, markdown, winner_family, winner_run_id, winner_version, airflow_run_id,"
        " parent_run_id, chart_path FROM comparisons WHERE id > %s",
        (before,),
    ).fetchall()
    assert len(new) == 1, new
    cmp = new[0]
    assert cmp[6] is not None  # written by the DAG run (its Airflow run id recorded)
    families, table, markdown, winner, winner_run, version, airflow_run_id, parent, chart = cmp
    assert families == ["tfidf_lr", "cnn"]
    assert [r["family"] for r in table] == ["tfidf_lr", "cnn"]  # one row per family
    assert all(r["sample_size"] == n for r, n in zip(table, (600, 300)))
    assert all(r["n_test"] == table[0]["n_test"] for r in table)  # the same held-out split
    assert winner in families and version is not None and Path(chart).exists()
    assert markdown.count("\n| ") >= 2
    status, decision, behaviour, run_parent = conn.execute(
        "SELECT status, decision, behaviour, parent_run_id FROM training_runs WHERE run_id = %s", (winner_run,)
    ).fetchone()
    assert status == "rejected" and decision and behaviour is not None and run_parent == parent
    assert "behaviour" in json.dumps(decision).lower(), decision  # rejected for the forced reason
    # Airflow assets of this run (plugins/sentiment_assets.py): the snapshot always, the champion only when
    # the winner was promoted (the `champion` task is skipped otherwise, and a skipped task emits nothing)
    events = _asset_events(airflow_run_id)
    snapshot_hash = conn.execute("SELECT snapshot_hash FROM comparisons WHERE airflow_run_id = %s", (airflow_run_id,))
    assert [e["hash"] for e in events["sentiment_training_snapshot"]] == [snapshot_hash.fetchone()[0]]
    assert "sentiment_champion" not in events, events
    # both family winners were evaluated on the held-out split and recorded
    n = conn.execute(
        "SELECT count(*) FROM training_runs WHERE parent_run_id = %s AND metrics IS NOT NULL", (parent,)
    ).fetchone()[0]
    assert n == 2


def _asset_events(run_id: str) -> dict[str, list[dict]]:
    """{asset name: [event extra]} of the sentiment_training run ``run_id``, from Airflow's metadata DB."""
    with psycopg.connect(db.libpq_url(db.airflow_db_url(get_settings())), autocommit=True) as c:
        rows = c.execute(
            "SELECT a.name, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id"
            " WHERE e.source_dag_id = 'sentiment_training' AND e.source_run_id = %s ORDER BY e.id",
            (run_id,),
        ).fetchall()
    out: dict[str, list[dict]] = {}
    for name, extra in rows:
        out.setdefault(name, []).append(extra if isinstance(extra, dict) else json.loads(extra or "{}"))
    return out


@pytest.mark.slow
def test_sentiment_training_dag_fails_on_bad_data(airflow_cli, model_name, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,valid\nfile,at,all\n")
    res = airflow_cli(
        "dags",
        "test",
        "sentiment_training",
        "-c",
        json.dumps({"data_path": str(bad)}),
        extra_env={"SENTIMENT_MODEL_NAME": model_name},
    )
    assert res.returncode != 0
    assert "no usable rows" in res.stdout + res.stderr


def test_dag_family_names_come_from_the_library():
    """The DAG params' family enum is the registry of ml.models (plugins/sentiment_dag_defaults.py derives it)."""
    sys.path.insert(0, str(DAGS.parent / "plugins"))
    try:
        import sentiment_dag_defaults  # noqa: PLC0415 - plugins/ is on sys.path only for this import
    finally:
        sys.path.remove(str(DAGS.parent / "plugins"))
    assert sentiment_dag_defaults.MODEL_FAMILIES == list(models.FAMILIES)


def test_batch_scoring_is_unscheduled_and_the_inbox_triggers_it(platform_env):
    """sentiment_batch_scoring has no sensor (manual runs never wait behind the inbox);
    sentiment_inbox lists new files and triggers one run each (tests/system/test_scoring.py runs both)."""
    res = subprocess.run(
        [sys.executable, "-c", DAGBAG_PROBE % str(DAGS)],
        env=airflow_env(platform_env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    dags = json.loads(res.stdout.strip().splitlines()[-1])["dags"]
    assert dags["sentiment_batch_scoring"]["tasks"] == ["finalize", "plan", "score_shard"]
    assert dags["sentiment_inbox"]["tasks"] == ["list_new_files", "trigger"]
