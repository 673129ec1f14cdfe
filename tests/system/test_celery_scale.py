"""Rehearsal of Airflow across hosts on this machine (README "Scaling out"): the CeleryExecutor with two
Celery workers, each started as ``make up EXECUTOR=celery`` starts it (``ml.platform.startup.commands.
celery_worker``: its OWN var/, the queues default + scoring, a name of its own), and a shared store
(``shared_storage_url``) in a third folder standing for the object store; scheduler, dag-processor and
api-server of their own (a fresh Airflow metadata database, every DAG paused but the batch one).

1. A batch of 8,000 real tweets (the issue says 200k; 8,000 in 4 shards keeps the test short on 2 cores: the
   point is where the shards run, not the rate, which benchmarks/ measures) is scored across both workers:
   each ran at least one shard (the task instances' hostnames), every row landed once (counted by id).
2. Worker 1 is killed with SIGKILL (its whole process tree: the host dies) while it runs a shard: the
   scheduler finds the task without heartbeat, the retry runs on worker 2, no row is lost or doubled.

Redis on 127.0.0.1:6379 is the broker (database 13, this test's own, flushed at the end).
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
import realdata
import redis
from ports import free_port, listens, stop_group

from ml.platform import db
from ml.platform.config import get_settings, reset_settings
from ml.platform.orchestration import airflow_env
from ml.platform.startup.commands import celery_worker

REDIS_DB = 13
ROWS, SHARD_ROWS = 8000, 2000
DAG = "sentiment_batch_scoring"


@pytest.fixture(scope="module")
def champion(own_champion, tweets_csv, tmp_path_factory):
    roots = json.dumps([str(tmp_path_factory.getbasetemp())])
    with own_champion("tweet-sentiment-celery", tweets_csv, SENTIMENT_BATCH_INPUT_ROOTS=roots) as c:
        yield c


def _batch_file(folder: Path, tag: str) -> Path:
    """ROWS real tweets (polarity,text), each made unique by a suffix: a batch (content hash) of its own."""
    tweets = realdata.balanced(2000)
    p = folder / f"batch_{tag}.csv"
    with p.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        for i in range(ROWS):
            pol, text = tweets[i % len(tweets)]
            w.writerow([pol, f"{text} #{tag}{i}"])
    return p


def _rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(sql, params).fetchall()


def _start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL to a process and every descendant at once (a host that dies)."""
    try:
        root = psutil.Process(proc.pid)
        victims = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(10)


@pytest.mark.slow
def test_two_celery_workers_share_a_batch_and_a_killed_workers_shard_is_retried_on_the_other(
    platform_env, champion, conn, tmp_path, monkeypatch
):
    r = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_connect_timeout=2)
    try:
        r.ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis on 127.0.0.1:6379 is the Celery broker of this test: {e}", pytrace=False)
    r.flushdb()
    af_db = f"{db.database_name(db.database_url(platform_env))}_celery_{uuid.uuid4().hex[:6]}"
    store = tmp_path / "object-store"
    monkeypatch.setenv("SENTIMENT_AIRFLOW_EXECUTOR", "celery")
    monkeypatch.setenv("SENTIMENT_CELERY_BROKER_URL", f"redis://127.0.0.1:6379/{REDIS_DB}")
    monkeypatch.setenv("SENTIMENT_CELERY_QUEUES", "default,scoring")
    monkeypatch.setenv("SENTIMENT_AIRFLOW_DATABASE", af_db)
    monkeypatch.setenv("SENTIMENT_SHARED_STORAGE_URL", store.as_uri())  # file:///...: a third folder
    monkeypatch.setenv("AIRFLOW__CELERY__WORKER_CONCURRENCY", "1")
    reset_settings()
    s = get_settings()
    af_url = db.libpq_url(db.airflow_db_url(s))
    env = airflow_env(s)  # creates the fresh metadata database
    env.update(
        {
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # only the batch DAG is unpaused below
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # the REST calls below need no login
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # a task whose worker died is found within seconds (default 300 s), then retried (the DAG's retries)
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
        }
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    logs = tmp_path / "logs"
    logs.mkdir()
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    procs: list[subprocess.Popen] = []
    workers: dict[int, subprocess.Popen] = {}
    try:
        # the dag-processor and the scheduler need no api-server: they start (and parse) while it boots
        _api_env(env, free_port())
        procs.append(_start([airflow, "dag-processor"], env, logs / "dag-processor.log"))
        procs.append(_start([airflow, "scheduler", "--skip-serve-logs"], env, logs / "scheduler.log"))
        port = _start_api_server(airflow, env, logs, procs)
        for i in (1, 2):  # as `make up EXECUTOR=celery` starts them (its own var/, the shared store)
            argv, wenv = celery_worker(s, i)
            wenv = {**wenv, **{k: v for k, v in env.items() if k.startswith("AIRFLOW__")}}
            wenv.pop("MLFLOW_TRACKING_URI", None)  # no MLflow server in the tests: the session's tracking store
            assert wenv["SENTIMENT_VAR_DIR"] == str(s.var / "workers" / str(i))
            assert wenv["SENTIMENT_SHARED_STORAGE_URL"] == store.as_uri()
            workers[i] = _start(argv, wenv, logs / f"worker-{i}.log")
            procs.append(workers[i])
        _unpause_when_parsed(af_url, logs)
        api = f"http://127.0.0.1:{port}/api/v2"

        # 1. one batch across both workers
        first = _batch_file(tmp_path, "a")
        run1 = _trigger(api, first)
        state = _wait_run(api, run1, logs, timeout=300)
        assert state == "success", _logs(logs)
        batch1 = _check_batch(conn, first)
        tis = _rows(
            af_url,
            "SELECT map_index, hostname, queue, state FROM task_instance WHERE dag_id=%s AND run_id=%s"
            " AND task_id='score_shard'",
            (DAG, run1),
        )
        assert len(tis) == ROWS // SHARD_ROWS and all(t[2:] == ("scoring", "success") for t in tis), tis
        hosts = {t[1].split(".")[0] for t in tis}
        assert hosts == {"worker-1", "worker-2"}, tis  # each worker ran at least one shard
        assert (store / "batches" / batch1 / "scored.parquet").is_file()  # in the shared store
        for i in (1, 2):  # each worker's own var/: its model copy cache, never another's files
            assert not (s.var / "workers" / str(i) / "batches").exists()

        # 2. worker 1 dies (SIGKILL, its whole tree) while it runs a shard
        second = _batch_file(tmp_path, "b")
        run2 = _trigger(api, second)
        killed = None
        deadline = time.time() + 240
        while killed is None and time.time() < deadline:
            running = _rows(
                af_url,
                "SELECT map_index FROM task_instance WHERE dag_id=%s AND run_id=%s AND task_id='score_shard'"
                " AND state='running' AND hostname LIKE 'worker-1.%%'",
                (DAG, run2),
            )
            if running:
                killed = running[0][0]
                _kill_tree(workers[1])
            time.sleep(0.2)
        assert killed is not None, "worker 1 never ran a shard of the second batch\n" + _logs(logs)
        state = _wait_run(api, run2, logs, timeout=300)
        assert state == "success", _logs(logs)
        _check_batch(conn, second)
        [(host, tries, final)] = _rows(
            af_url,
            "SELECT hostname, try_number, state FROM task_instance WHERE dag_id=%s AND run_id=%s"
            " AND task_id='score_shard' AND map_index=%s",
            (DAG, run2, killed),
        )
        assert final == "success" and host.startswith("worker-2.") and tries >= 2, (host, tries, final)
        earlier = _rows(
            af_url,
            "SELECT hostname, state FROM task_instance_history WHERE dag_id=%s AND run_id=%s"
            " AND task_id='score_shard' AND map_index=%s",
            (DAG, run2, killed),
        )
        assert any(h.startswith("worker-1.") and st != "success" for h, st in earlier), earlier
    finally:
        for proc in reversed(procs):
            stop_group(proc, 20)
        r.flushdb()
        monkeypatch.undo()
        reset_settings()
        with psycopg.connect(db.with_database(af_url, "postgres"), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{af_db}" WITH (FORCE)')


QUEUE_PROBE = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="dags", safe_mode=False)
print(json.dumps({d: {t.task_id: t.queue for t in bag.dags[d].tasks} for d in ("sentiment_batch_scoring",
      "sentiment_training")}))
"""


def test_the_dags_route_shards_and_the_transformer_to_their_celery_queues(platform_env):
    """Shards go to the queue "scoring", the transformer's search to "gpu" (a GPU host's worker takes only
    that one), everything else to "default"; the LocalExecutor ignores queues."""
    res = subprocess.run(
        [sys.executable, "-c", QUEUE_PROBE],
        env=airflow_env(platform_env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert res.returncode == 0, res.stderr[-2000:]
    queues = json.loads(res.stdout.strip().splitlines()[-1])
    assert queues["sentiment_batch_scoring"] == {"plan": "default", "score_shard": "scoring", "finalize": "default"}
    training = queues["sentiment_training"]
    assert training.pop("search_gpu") == "gpu" and set(training.values()) == {"default"}, training


def _check_batch(conn, path: Path) -> str:
    """The batch of ``path`` is done and every row is in predictions exactly once; returns its id."""
    [(batch_id, status, rows_scored)] = conn.execute(
        "SELECT id, status, rows_scored FROM batches WHERE input_path=%s", (str(path),)
    ).fetchall()
    assert (status, rows_scored) == ("done", ROWS)
    n, distinct_rows, distinct_ids = conn.execute(
        "SELECT count(*), count(DISTINCT source_row), count(DISTINCT id) FROM predictions WHERE batch_id=%s",
        (batch_id,),
    ).fetchone()
    assert n == distinct_rows == distinct_ids == ROWS, (n, distinct_rows, distinct_ids)
    return batch_id


def _unpause_when_parsed(af_url: str, logs: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _rows(af_url, "UPDATE dag SET is_paused=false WHERE dag_id=%s RETURNING dag_id", (DAG,)):
            return
        time.sleep(1)
    pytest.fail("the dag-processor did not parse the batch DAG\n" + _logs(logs))


def _trigger(api: str, path: Path) -> str:
    conf = {"input_path": str(path), "shard_rows": SHARD_ROWS}
    res = httpx.post(f"{api}/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=30)
    assert res.status_code == 200, res.text
    return res.json()["dag_run_id"]


def _wait_run(api: str, run_id: str, logs: Path, timeout: float) -> str:
    deadline = time.time() + timeout
    state = None
    while time.time() < deadline:
        state = httpx.get(f"{api}/dags/{DAG}/dagRuns/{run_id}", timeout=30).json()["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(1)
    pytest.fail(f"run {run_id} still {state} after {timeout:.0f}s\n" + _logs(logs))


def _logs(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(logs.glob("*.log")))


def _api_env(env: dict, port: int) -> int:
    env.update(
        {
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        }
    )
    return port


def _start_api_server(airflow: str, env: dict, logs: Path, procs: list, attempts: int = 3) -> int:
    """An Airflow api-server on a free port (again on another port when someone takes it first); every
    component (the workers too) is told its URL through ``env``."""
    for attempt in range(attempts):
        port = int(env["AIRFLOW__API__PORT"]) if attempt == 0 else _api_env(env, free_port())
        log = logs / f"api-server-{attempt}.log"
        proc = _start([airflow, "api-server", "--port", str(port)], env, log)
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2).status_code == 200 and (
                    listens(proc.pid, port)
                ):
                    procs.append(proc)
                    return port
            except httpx.HTTPError:
                pass
            time.sleep(1)
        stop_group(proc)
        if "address already in use" not in log.read_text().lower():
            break
    pytest.fail("Airflow api-server did not start: " + _logs(logs))
