"""Airflow assets and DAG conventions: every DAG owned by the platform and failing through its notifier,
the asset graph as designed (plugins/sentiment_assets.py), and for real: a training run that promotes
emits the ``sentiment_champion`` asset event (and the snapshot's), and a real scheduler starts the DAG
scheduled on it (``sentiment_reference``)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from ports import free_port, listens, stop_group

from ml.platform import db
from ml.platform.orchestration import airflow_env

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"

STRUCTURE_PROBE = """
import json
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Asset

bag = DagBag(dag_folder=%r)

def assets(xs):
    return sorted(a.name for a in xs if isinstance(a, Asset))

def schedule(dag):
    tt = dag.timetable
    out = {"timetable": type(tt).__name__, "assets": []}
    def walk(cond):
        if isinstance(cond, Asset):
            return [cond.name]
        return [n for o in getattr(cond, "objects", ()) for n in walk(o)]

    out["assets"] = sorted(walk(getattr(tt, "asset_condition", None)))
    return out

print(json.dumps({
    "errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
    "dags": {
        d: {
            "owner": bag.dags[d].owner,
            "schedule": schedule(bag.dags[d]),
            "tasks": {
                t.task_id: {
                    "owner": t.owner,
                    "on_failure": sorted({type(c).__name__ for c in (t.on_failure_callback or [])}),
                    "outlets": assets(t.outlets),
                    "inlets": assets(t.inlets),
                }
                for t in bag.dags[d].tasks
            },
        }
        for d in bag.dag_ids
    },
}))
"""

CHAMPION, SNAPSHOT, REFERENCE, SCORED = (
    "sentiment_champion",
    "sentiment_training_snapshot",
    "sentiment_monitoring_reference",
    "sentiment_scored_batch",
)


@pytest.fixture(scope="module")
def dags(platform_env) -> dict:
    """Every DAG as Airflow parses it (a DagBag in a subprocess with the platform's Airflow env)."""
    res = subprocess.run(
        [sys.executable, "-c", STRUCTURE_PROBE % str(DAGS)],
        env=airflow_env(platform_env),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["errors"] == {}
    return out["dags"]


def test_every_dag_is_owned_by_the_platform_and_notifies_failures(dags):
    spec = importlib.util.spec_from_file_location("defaults_probe", REPO / "plugins" / "sentiment_dag_defaults.py")
    sys.path.insert(0, str(REPO / "plugins"))
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "plugins"))
    assert module.OWNER == "sentiment-platform"
    assert set(dags) == {
        "sentiment_training",
        "sentiment_retraining",
        "sentiment_monitoring",
        "sentiment_reference",
        "sentiment_batch_scoring",
        "sentiment_inbox",
        "sentiment_distillation",
    }
    for dag_id, dag in dags.items():
        assert dag["owner"] == module.OWNER, dag_id
        for task_id, t in dag["tasks"].items():
            assert t["owner"] == module.OWNER, (dag_id, task_id)
            # Airflow's notifier interface (BaseNotifier) on every task, never a hand-wired function
            assert "PlatformAlertNotifier" in t["on_failure"], (dag_id, task_id, t["on_failure"])
            assert all(c.endswith("Notifier") for c in t["on_failure"]), (dag_id, task_id, t["on_failure"])
    trigger = dags["sentiment_monitoring"]["tasks"]["trigger_retraining"]["on_failure"]
    assert trigger == ["PlatformAlertNotifier", "RetrainingTriggerFailedNotifier"]


def test_the_asset_graph_is_as_designed(dags):
    def produced(asset: str) -> set[tuple[str, str]]:
        return {(d, t) for d, dag in dags.items() for t, x in dag["tasks"].items() if asset in x["outlets"]}

    def read(asset: str) -> set[tuple[str, str]]:
        return {(d, t) for d, dag in dags.items() for t, x in dag["tasks"].items() if asset in x["inlets"]}

    # the champion: only the promotion's last task of the DAGs that make candidates (training, retraining,
    # distillation), skipped unless a version was promoted
    assert produced(CHAMPION) == {
        ("sentiment_training", "champion"),
        ("sentiment_retraining", "champion"),
        ("sentiment_distillation", "champion"),
    }
    assert produced(SNAPSHOT) == {("sentiment_training", "validate"), ("sentiment_retraining", "prepare")}
    assert produced(REFERENCE) == {("sentiment_reference", "refresh_reference")}
    assert produced(SCORED) == {("sentiment_batch_scoring", "finalize")}
    assert read(CHAMPION) == {("sentiment_batch_scoring", "plan"), ("sentiment_retraining", "prepare")}
    assert read(REFERENCE) == {("sentiment_monitoring", "build_report")}
    # the retraining's champion task follows the shadow window's decision, the training's the promotion
    assert "shadow.decide" in dags["sentiment_retraining"]["tasks"]
    # schedules: the reference follows the champion; the drift report stays nightly; the batch DAG is
    # unscheduled (a new champion does not re-score old files); the inbox polls (no AssetWatcher: see its doc)
    sched = {d: dag["schedule"] for d, dag in dags.items()}
    assert sched["sentiment_reference"] == {"timetable": "AssetTriggeredTimetable", "assets": [CHAMPION]}
    assert sched["sentiment_monitoring"]["timetable"] == "CronTriggerTimetable"
    assert sched["sentiment_inbox"]["timetable"] == "DeltaTriggerTimetable"
    for d in ("sentiment_training", "sentiment_retraining", "sentiment_batch_scoring", "sentiment_distillation"):
        assert sched[d]["timetable"] == "NullTimetable", d


def _airflow_rows(settings, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(db.libpq_url(db.airflow_db_url(settings)), autocommit=True) as c:
        return c.execute(sql, params).fetchall()


@pytest.mark.slow
def test_a_promotion_emits_the_champion_asset_and_the_scheduler_starts_the_reference_dag(
    platform_env, airflow_cli, model_name, tweets_csv, conn, tmp_path
):
    """`airflow dags test sentiment_training` (TF-IDF, 2,000 real tweets: promoted, there is no champion
    yet): the snapshot and champion assets get one event each in Airflow's metadata, with what
    identifies them; sentiment_reference is queued on the champion asset; a real scheduler then creates
    its asset-triggered run, which consumed that event."""
    conf = {
        "data_path": str(tweets_csv),
        "families": ["tfidf_lr"],
        "search_space": {"tfidf_lr": {"params": {"C": [1.0]}}},
    }
    # a champion event of an earlier test in this session's Airflow may have queued sentiment_reference already:
    # Airflow keeps one queue row per (asset, DAG) with the time of the FIRST event, and a run consumes the events
    # up to that time, so this test's event would wait for the next run. Start from an empty queue.
    _airflow_rows(
        platform_env,
        "DELETE FROM asset_dag_run_queue WHERE target_dag_id = 'sentiment_reference' RETURNING target_dag_id",
    )
    res = airflow_cli(
        "dags", "test", "sentiment_training", "-c", json.dumps(conf), extra_env={"SENTIMENT_MODEL_NAME": model_name}
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    [(run_id,)] = _airflow_rows(
        platform_env,
        "SELECT run_id FROM dag_run WHERE dag_id = 'sentiment_training' AND conf::jsonb->>'data_path' = %s"
        " AND conf::jsonb->'families' = %s::jsonb",
        (str(tweets_csv), json.dumps(["tfidf_lr"])),
    )
    version, status = conn.execute(
        "SELECT winner_version, (SELECT status FROM training_runs WHERE run_id = c.winner_run_id)"
        " FROM comparisons c WHERE airflow_run_id = %s",
        (run_id,),
    ).fetchone()
    assert status == "promoted", out[-4000:]
    events = {
        name: (event_id, extra if isinstance(extra, dict) else json.loads(extra or "{}"), task)
        for event_id, name, extra, task in _airflow_rows(
            platform_env,
            "SELECT e.id, a.name, e.extra, e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id"
            " WHERE e.source_dag_id = 'sentiment_training' AND e.source_run_id = %s",
            (run_id,),
        )
    }
    assert set(events) == {CHAMPION, SNAPSHOT}, events
    champion_event, extra, task = events[CHAMPION]
    assert task == "champion" and extra["model"] == model_name and int(extra["version"]) == int(version), extra
    _, snap, task = events[SNAPSHOT]
    snapshot_hash = conn.execute(
        "SELECT snapshot_hash FROM training_runs WHERE run_id = (SELECT winner_run_id FROM comparisons"
        " WHERE airflow_run_id = %s)",
        (run_id,),
    ).fetchone()[0]
    assert task == "validate" and snap["hash"] == snapshot_hash and snap["kind"] == "training", snap
    # the DAG scheduled on the champion asset is queued for a run
    queued = {
        r[0]
        for r in _airflow_rows(
            platform_env,
            "SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id WHERE a.name = %s",
            (CHAMPION,),
        )
    }
    assert "sentiment_reference" in queued
    # a real scheduler (and the api-server its tasks report to) turns the queue into an asset-triggered run,
    # which computes the champion's reference (the other DAGs paused meanwhile, so that it starts nothing
    # else in the session's Airflow; restored after)
    paused = [
        r[0]
        for r in _airflow_rows(
            platform_env,
            "UPDATE dag SET is_paused = true WHERE dag_id <> 'sentiment_reference' AND NOT is_paused RETURNING dag_id",
        )
    ]
    env = airflow_env(platform_env)
    env.update(
        {
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # this test reads the REST API without a login
            # the workers' default model is another one: the reference follows the model the event names
            "SENTIMENT_MODEL_NAME": f"{model_name}-not-this-one",
        }
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    procs: list[subprocess.Popen] = []
    runs: list[tuple] = []
    try:
        api, port = _start_api_server(airflow, env, tmp_path)
        procs.append(api)
        procs.append(
            subprocess.Popen(
                [airflow, "scheduler"],
                env=env,
                start_new_session=True,
                stdout=(tmp_path / "scheduler.log").open("w"),
                stderr=subprocess.STDOUT,
            )
        )
        deadline = time.time() + 300
        while time.time() < deadline and not (runs and runs[0][2] in ("success", "failed")):
            runs = _airflow_rows(
                platform_env,
                "SELECT r.run_id, r.run_type, r.state, array_agg(x.event_id) FROM dag_run r"
                " JOIN dagrun_asset_event x ON x.dag_run_id = r.id"
                " WHERE r.dag_id = 'sentiment_reference' GROUP BY r.run_id, r.run_type, r.state"
                # only the run that consumed this test's event: an earlier test's scheduler may have left a finished
                # asset-triggered run of its own (seen in CI: the loop stopped at once on a run of event 3)
                " HAVING %s = ANY(array_agg(x.event_id))",
                (champion_event,),
            )
            time.sleep(2)
        # the Airflow REST API lists the champion asset with this run's event
        api_url = f"http://127.0.0.1:{port}/api/v2"
        assets = httpx.get(f"{api_url}/assets", params={"name_pattern": CHAMPION}, timeout=30).json()["assets"]
        [asset] = [a for a in assets if a["name"] == CHAMPION]
        listed = httpx.get(f"{api_url}/assets/events", params={"asset_id": asset["id"]}, timeout=30).json()
        by_run = [e for e in listed["asset_events"] if e["source_run_id"] == run_id]
        _screenshots(f"http://127.0.0.1:{port}", asset["id"])
    finally:
        for proc in reversed(procs):
            stop_group(proc, 30)
        if paused:
            _airflow_rows(
                platform_env, "UPDATE dag SET is_paused = false WHERE dag_id = ANY(%s) RETURNING dag_id", (paused,)
            )
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
    assert runs, logs
    [(ref_run, run_type, state, consumed)] = runs
    assert run_type == "asset_triggered" and champion_event in consumed, runs
    assert state == "success", logs
    assert len(by_run) == 1 and by_run[0]["extra"]["model"] == model_name, listed
    # the reference DAG computed the promoted model's reference (named by the event, not the worker's default)
    [(ref_extra,)] = _airflow_rows(
        platform_env,
        "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = %s AND e.source_run_id = %s",
        (REFERENCE, ref_run),
    )
    assert ref_extra["model"] == model_name and int(ref_extra["version"]) == int(version), ref_extra
    assert ref_extra["rows"] > 0 and Path(ref_extra["path"], "reference.parquet").is_file(), ref_extra


def _start_api_server(airflow: str, env: dict, logs: Path, attempts: int = 3) -> tuple[subprocess.Popen, int]:
    """An Airflow api-server on a free port (tried again on another port when someone takes it first)."""
    log = logs / "api-server.log"
    for _ in range(attempts):
        port = free_port()
        env.update(
            {
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            }
        )
        proc = subprocess.Popen(
            [airflow, "api-server", "--port", str(port)],
            env=env,
            start_new_session=True,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2)
                if health.status_code == 200 and listens(proc.pid, port):
                    return proc, port
            except httpx.HTTPError:
                pass
            time.sleep(1)
        stop_group(proc, 30)
        if "address already in use" not in log.read_text().lower():
            break
    pytest.fail("Airflow api-server did not start: " + log.read_text()[-2000:])


def _screenshots(ui: str, champion_id: int) -> None:
    """With SENTIMENT_SCREENSHOT_DIR set: Airflow's Assets page and the champion asset's page (its lineage),
    as headless Chromium renders them, for the record of what the UI shows."""
    out = os.environ.get("SENTIMENT_SCREENSHOT_DIR")
    chromium = shutil.which("chromium")
    if not out or not chromium:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, url in (
        ("airflow-assets.png", f"{ui}/assets"),
        ("airflow-asset-champion.png", f"{ui}/assets/{champion_id}"),
    ):
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1600,1000",
                "--virtual-time-budget=20000",
                f"--screenshot={Path(out) / name}",
                url,
            ],
            capture_output=True,
            timeout=120,
        )
