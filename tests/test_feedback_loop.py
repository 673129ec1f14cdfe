"""The closed loop, for real: misclassification reports in PostgreSQL -> the retraining trigger
(exactly once) -> sentiment_retraining (snapshot + reports, challenger vs champion on the same
held-out set) -> promotion only of a winner -> the API serves it within seconds -> lineage of a
prediction names the retraining and its reports -> rollback restores the previous champion.

One registered model of this module's own: a deliberately weak TF-IDF champion (300 of the 2,000
real tweets) so that a challenger with the champion's family and params on the whole training
split + the reports wins, and one with 5 features loses. Behavioural checks are recorded but do not
gate here (a 300-tweet model cannot pass them; the gate is tested in test_training/test_comparison).
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import realdata
from fastapi.testclient import TestClient

from ml import data, registry, retraining, serving
from ml.config import Settings, get_settings

FRACTION = 0.005  # of ~1,990 snapshot rows -> 10 reports


@pytest.fixture(scope="module")
def loop(own_champion, tweets_csv):
    with own_champion("tweet-sentiment-loop", tweets_csv, sample_size=300, SENTIMENT_BEHAVIOUR_CHECKS="false",
                      SENTIMENT_RETRAINING_FEEDBACK_FRACTION=str(FRACTION)) as c:
        yield _loop_state(c)


def _loop_state(c) -> dict:
    name, env, snap, v1, run_id = c.name, c.env, c.snapshot, c.version, c.run_id
    in_snapshot = set(snap.load()["text"])
    pool = [(y, t.strip()) for y, t in realdata.shuffled(realdata.SHARED_DATA, seed=11)]
    pool = [(y, t) for y, t in pool if t and t not in in_snapshot]
    state = {"name": name, "env": env, "snapshot": snap, "v1": v1, "run1": run_id, "pool": iter(pool),
             "threshold": retraining.threshold_for(snap.n_rows, get_settings())}
    return state


def add_reports(n: int, s: Settings | None = None) -> list[int]:
    """``n`` real tweets the champion gets wrong, stored as its predictions (as the API does) and
    reported with their true label. Returns the feedback ids."""
    s = s or get_settings()
    champ = registry.champion(s)
    model = registry.load_version(champ.version, s)
    st = _STATE
    ids: list[int] = []
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        while len(ids) < n:
            batch = [next(st["pool"]) for _ in range(50)]
            proba = model.predict_proba([t for _, t in batch])
            rows = serving.prediction_rows([t for _, t in batch], proba, s.model_name, champ.version)
            serving.copy_predictions(conn, rows)
            for (y, _), row in zip(batch, rows):
                if row.label != y and len(ids) < n:
                    ids.append(conn.execute("INSERT INTO feedback (prediction_id, correct_label) VALUES (%s, %s)"
                                            " RETURNING id", (row.id, y)).fetchone()[0])
    return ids


_STATE: dict = {}


@pytest.fixture(autouse=True)
def _bind(loop):
    _STATE.update(loop)


def _retrainings(conn, name):
    return conn.execute("SELECT id, reason, status, n_feedback, threshold, feedback_ids, champion_before, champion_after"
                        " FROM retrainings WHERE model_name = %s ORDER BY id", (name,)).fetchall()


def test_fraction_is_validated(platform_env):
    for bad in (0.0005, 0.02):
        with pytest.raises(ValueError, match=r"between 0.001 \(0.1%\) and 0.01 \(1%\)"):
            Settings(retraining_feedback_fraction=bad)
    with pytest.raises(ValueError, match="between 0.001"):
        retraining.threshold_for(100_000, get_settings().model_copy(update={"retraining_feedback_fraction": 0.5}))
    assert retraining.threshold_for(99_338, Settings(retraining_feedback_fraction=0.005)) == 497


def test_a_retraining_without_new_content_fails_and_leaves_the_parent_alone(loop, conn):
    """No pending report (a manual retraining): the set would hash to the champion's snapshot. It is
    refused (recorded as failed, with the reason) before anything is written into the parent's directory."""
    parent = loop["snapshot"]
    split_file = parent.path.parent / data.SPLIT_FILE
    before = split_file.stat().st_mtime_ns if split_file.exists() else None
    kind_before = conn.execute("SELECT kind, parent_hash FROM dataset_snapshots WHERE hash = %s",
                               (parent.hash,)).fetchone()
    with pytest.raises(retraining.RetrainingError, match="add nothing to the champion's snapshot"):
        retraining.prepare(None)
    rid, status, error, snap = conn.execute("SELECT id, status, error, snapshot_hash FROM retrainings"
                                            " WHERE model_name = %s ORDER BY id DESC LIMIT 1", (loop["name"],)).fetchone()
    assert (status, snap) == ("failed", None) and "add nothing" in error
    assert (split_file.stat().st_mtime_ns if split_file.exists() else None) == before
    assert conn.execute("SELECT kind, parent_hash FROM dataset_snapshots WHERE hash = %s",
                        (parent.hash,)).fetchone() == kind_before
    conn.execute("DELETE FROM retrainings WHERE id = %s", (rid,))  # the next tests count the retrainings


def test_below_threshold_no_trigger_then_exactly_once(loop, conn):
    thr = loop["threshold"]
    assert thr == 10
    first = add_reports(thr - 1)
    d = retraining.check_trigger()
    assert not d["trigger"] and d["reason"] == "below_threshold"
    assert (d["pending_reports"], d["threshold"]) == (thr - 1, thr) and f"{thr - 1}/{thr}" in d["detail"]
    assert _retrainings(conn, loop["name"]) == []

    last = add_reports(1)
    d1, d2 = retraining.check_trigger(), retraining.check_trigger()  # the trigger, run twice
    assert d1["trigger"] and d1["reason"] == "feedback_threshold" and d1["airflow_run_id"] == f"retraining__{d1['retraining_id']}"
    assert not d2["trigger"] and d2["pending_reports"] == 0
    rows = _retrainings(conn, loop["name"])
    assert len(rows) == 1
    rid, reason, status, n, threshold, ids, before, after = rows[0]
    assert (reason, status, n, threshold, before, after) == ("feedback_threshold", "triggered", thr, thr, loop["v1"], None)
    assert sorted(ids) == sorted(first + last)
    assert conn.execute("SELECT count(*) FROM retraining_feedback WHERE retraining_id = %s", (rid,)).fetchone()[0] == thr
    loop["r1"] = rid


def test_worse_challenger_is_not_promoted(loop, conn):
    out = retraining.run_retraining(loop["r1"], hyperparams={"max_features": 5}, sample_size=200)
    assert not out["promoted"] and "does not beat" in out["reason"]
    assert registry.champion().version == loop["v1"]
    r = retraining.get_retraining(loop["r1"])
    assert (r["status"], r["champion_before"], r["champion_after"]) == ("rejected", loop["v1"], loop["v1"])
    m = r["metrics"]
    assert m["held_out"]["challenger"]["accuracy"] < m["held_out"]["champion"]["accuracy"]
    assert m["reported_eval"]["n"] + m["reported_train"]["n"] == loop["threshold"]

    # the new training set: a content-hashed snapshot of kind 'retraining' whose parent is the champion's
    kind, parent, n_rows = conn.execute("SELECT kind, parent_hash, n_rows FROM dataset_snapshots WHERE hash = %s",
                                        (r["snapshot_hash"],)).fetchone()
    assert (kind, parent) == ("retraining", loop["snapshot"].hash)
    assert n_rows == loop["snapshot"].n_rows + r["dataset_report"]["new_texts"] - r["dataset_report"]["conflicts_tied_dropped"]
    # the same held-out set as the champion's (its parent's), never a reported tweet
    s = get_settings()
    _, parent_test = data.split(loop["snapshot"].load(), s.test_size, s.seed)
    new_train, new_test = data.split(data.get_snapshot(r["snapshot_hash"]).load(), s.test_size, s.seed)
    reported = {t for (t,) in conn.execute("SELECT p.text FROM feedback f JOIN predictions p ON p.id = f.prediction_id"
                                           " WHERE f.id = ANY(%s)", (r["feedback_ids"],)).fetchall()}
    assert set(new_test["text"]) == set(parent_test["text"]) - reported
    assert not reported & set(new_test["text"])
    assert not set(new_train["text"]) & set(new_test["text"])
    assert reported & set(new_train["text"])  # most reports are trained on (20% held out to score)


def test_a_report_corrected_to_agree_no_longer_counts(loop, conn):
    """The user's latest word per prediction: a misclassification report followed by feedback agreeing
    with the prediction is not pending any more."""
    ctx = retraining.champion_context()
    assert retraining.pending_count(ctx)["reports"] == 0
    ids = add_reports(2)
    assert retraining.pending_count(ctx)["reports"] == 2
    for n, fid in enumerate(ids, start=1):
        conn.execute("INSERT INTO feedback (prediction_id, correct_label) SELECT f.prediction_id, p.label"
                     " FROM feedback f JOIN predictions p ON p.id = f.prediction_id WHERE f.id = %s", (fid,))
        assert retraining.pending_count(ctx)["reports"] == 2 - n
    d = retraining.check_trigger()
    assert d["pending_reports"] == 0 and not set(ids) & set(d.get("feedback_ids") or [])


def test_a_failed_trigger_marks_the_retraining_failed(loop, conn, monkeypatch):
    """sentiment_monitoring: check_retraining runs whatever build_report did; a trigger_retraining that
    fails marks its retraining failed, so that its consumed reports are trained on by the next one."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    monkeypatch.syspath_prepend(str(root / "plugins"))
    spec = importlib.util.spec_from_file_location("_dag_sentiment_monitoring", root / "dags" / "sentiment_monitoring.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dag = mod.sentiment_monitoring()
    assert dag.get_task("check_retraining").trigger_rule == "all_done"
    assert mod._trigger_failed in dag.get_task("trigger_retraining").on_failure_callback

    rid = conn.execute("INSERT INTO retrainings (model_name, trigger_key, reason, detail, champion_before,"
                       " base_snapshot) VALUES (%s, %s, 'drift', 'test', %s, %s) RETURNING id",
                       (loop["name"], f"test:{uuid.uuid4().hex}", loop["v1"], loop["snapshot"].hash)).fetchone()[0]

    class TI:
        def xcom_pull(self, task_ids):
            assert task_ids == "check_retraining"
            return {"trigger": True, "retraining_id": rid, "airflow_run_id": f"retraining__{rid}"}

    mod._trigger_failed({"ti": TI(), "exception": RuntimeError("no API server")})
    status, error = conn.execute("SELECT status, error FROM retrainings WHERE id = %s", (rid,)).fetchone()
    assert status == "failed" and "trigger_retraining failed" in error and "no API server" in error


def _airflow_db(settings) -> str:
    from ml import db

    return db.libpq_url(db.airflow_db_url(settings))


@pytest.mark.slow
def test_better_challenger_promoted_by_the_dag_and_served(loop, conn, airflow_cli):
    s = get_settings()
    from api.main import create_app

    with TestClient(create_app(s)) as client:
        assert client.post("/predict", json={"text": "I love it"}).json()["model_version"] == loop["v1"]
        ids = add_reports(loop["threshold"])
        # two trigger checks at once (two monitoring runs, say): one retraining
        results: list[dict] = []
        ts = [threading.Thread(target=lambda: results.append(retraining.check_trigger())) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert sorted(r["trigger"] for r in results) == [False, True]
        rid = next(r["retraining_id"] for r in results if r["trigger"])

        seen: list[tuple[float, int, int | None]] = []  # (wall time, status, version)
        stop = threading.Event()

        def traffic():  # requests keep flowing while the DAG runs and the champion changes
            while not stop.is_set():
                r = client.post("/predict", json={"text": "what a day"})
                seen.append((time.time(), r.status_code, r.json().get("model_version")))
                time.sleep(0.1)

        th = threading.Thread(target=traffic)
        th.start()
        try:
            res = airflow_cli("dags", "test", "sentiment_retraining", "-c", json.dumps({"retraining_id": rid}),
                              extra_env=loop["env"])
            assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
            r = retraining.get_retraining(rid)
            assert r["status"] == "promoted", r
            new_version = r["champion_after"]
            assert new_version != loop["v1"] and registry.champion().version == new_version
            wait = time.monotonic() + 10
            while not any(v == new_version for _, _, v in seen[-3:]):
                assert time.monotonic() < wait, "the API did not serve the new champion within 10 s"
                time.sleep(0.1)
        finally:
            stop.set()
            th.join()
        assert seen and {code for _, code, _ in seen} == {200}  # no failed request, before, during or after
        promoted_at = conn.execute("SELECT extract(epoch FROM created_at) FROM model_events WHERE model_name = %s"
                                   " AND event = 'promoted' AND version = %s", (loop["name"], new_version)).fetchone()[0]
        first_served = min(t for t, _, v in seen if v == new_version)
        assert first_served - float(promoted_at) < 5.0  # poll interval 0.5 s + loading the model
        print(f"new champion v{new_version} served {first_served - float(promoted_at):.2f}s after its promotion")

        # evaluated on the same held-out set, and on the reported tweets
        m = r["metrics"]
        assert m["held_out"]["challenger"]["accuracy"] > m["held_out"]["champion"]["accuracy"]
        assert m["held_out"]["champion_version"] == loop["v1"]
        assert r["airflow_run_id"].startswith("manual__") or r["airflow_run_id"]
        assert set(ids) <= set(r["training_feedback_ids"])  # this retraining's reports ...
        assert set(retraining.get_retraining(loop["r1"])["feedback_ids"]) <= set(r["training_feedback_ids"])  # + the rejected one's
        behaviour = conn.execute("SELECT behaviour FROM training_runs WHERE run_id = %s", (r["run_id"],)).fetchone()[0]
        assert behaviour is not None  # the gate ran (recorded; not gating in this module)

        # lineage of a prediction made after the retraining
        pred = client.post("/predict", json={"text": "this retrained model is great"}).json()
        lin = client.get(f"/predictions/{pred['id']}/lineage")
        assert lin.status_code == 200, lin.text
        lin = lin.json()
        assert lin["model"]["version"] == new_version and lin["model"]["run_id"] == r["run_id"]
        assert lin["git_commit"] and lin["snapshot"]["hash"] == r["snapshot_hash"]
        assert lin["snapshot"]["kind"] == "retraining"
        assert [c["hash"] for c in lin["snapshot_chain"]] == [r["snapshot_hash"], loop["snapshot"].hash]
        assert lin["retraining"]["id"] == rid and lin["retraining"]["reason"] == "feedback_threshold"
        assert {x["feedback_id"] for x in lin["retraining"]["reports"]} == set(r["training_feedback_ids"])
        assert f"retraining #{rid}" in lin["summary"]
        assert client.get(f"/predictions/{uuid.uuid4()}/lineage").status_code == 404
    loop["r2"], loop["v_new"] = rid, new_version

    from typer.testing import CliRunner

    from ml.cli import app

    out = CliRunner().invoke(app, ["lineage", pred["id"]])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout[: out.stdout.rindex("}") + 1])["retraining"]["id"] == rid


@pytest.mark.slow
def test_rollback_restores_the_previous_champion(loop, conn):
    from typer.testing import CliRunner

    from ml.cli import app

    assert registry.champion().version == loop["v_new"]
    res = CliRunner().invoke(app, ["promote", "--rollback"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["to_version"] == loop["v1"]
    assert registry.champion().version == loop["v1"]
    ev = conn.execute("SELECT event, version, previous_version FROM model_events WHERE model_name = %s"
                      " ORDER BY id DESC LIMIT 1", (loop["name"],)).fetchone()
    assert ev == ("rollback", loop["v1"], loop["v_new"])
    again = CliRunner().invoke(app, ["promote", "--rollback"])  # nothing before the first champion
    assert again.exit_code == 2 and "first recorded champion" in again.output


@pytest.mark.slow
def test_monitoring_dag_triggers_the_retraining_dag(loop, conn, airflow_cli):
    """End of sentiment_monitoring: the trigger records the retraining and starts sentiment_retraining
    (a queued run ``retraining__<id>`` in Airflow's database; no scheduler runs it here)."""
    assert registry.champion().version == loop["v1"]
    add_reports(loop["threshold"])
    res = airflow_cli("dags", "test", "sentiment_monitoring", "-c", json.dumps({"hours": 1}), extra_env=loop["env"])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    rows = _retrainings(conn, loop["name"])
    rid = rows[-1][0]
    assert rows[-1][1:3] == ("feedback_threshold", "triggered")
    trig = conn.execute("SELECT trigger_airflow_run_id FROM retrainings WHERE id = %s", (rid,)).fetchone()[0]
    assert trig and trig.startswith("manual__")
    with psycopg.connect(_airflow_db(get_settings())) as aconn:
        run = aconn.execute("SELECT run_id, conf FROM dag_run WHERE dag_id = 'sentiment_retraining' AND run_id = %s",
                            (f"retraining__{rid}",)).fetchone()
    assert run is not None, out[-3000:]
    assert str(run[1]["retraining_id"]) == str(rid)


def test_drift_is_reported_and_may_trigger(loop, conn):
    report = {"id": f"drift-{uuid.uuid4().hex[:6]}", "status": "drift", "drift_detected": True,
              "feedback": {"concept_drift": False}, "verdict": "DRIFT in raw text"}
    d = retraining.check_trigger(report)
    assert not d["trigger"] and "retraining_on_drift is off" in d["detail"] and d["drift"]["drift_detected"]
    on = get_settings().model_copy(update={"retraining_on_drift": True})
    d1, d2 = retraining.check_trigger(report, settings=on), retraining.check_trigger(report, settings=on)
    assert d1["trigger"] and d1["reason"] == "drift"
    assert not d2["trigger"] and d2["reason"] == "already_triggered"


@pytest.mark.slow
def test_failed_retraining_is_notified_and_recorded(loop, conn, airflow_cli):
    """A task failure goes through the DAG's notifier (BaseNotifier): a `dag_failure` alert, and the
    retraining (a manual one here: no retraining_id) is marked failed with the error."""
    conf = {"hyperparams": {"no_such_param": 1}}
    res = airflow_cli("dags", "test", "sentiment_retraining", "-c", json.dumps(conf), extra_env=loop["env"])
    assert res.returncode != 0
    msg, details = conn.execute("SELECT message, details FROM alerts WHERE rule = 'dag_failure' AND model_name = %s"
                                " ORDER BY id DESC LIMIT 1", (loop["name"],)).fetchone()
    assert "sentiment_retraining: task train failed" in msg and "no_such_param" in msg
    assert details["dag_id"] == "sentiment_retraining" and details["task_id"] == "train"
    reason, status, error = conn.execute("SELECT reason, status, error FROM retrainings WHERE model_name = %s"
                                         " ORDER BY id DESC LIMIT 1", (loop["name"],)).fetchone()
    assert (reason, status) == ("manual", "failed") and "no_such_param" in error


def test_compare_mode_retrains_through_a_comparison(loop, conn):
    """mode compare: the challenger is the winner of a comparison of families on the retraining snapshot
    (the same held-out split: the snapshot's own)."""
    from typer.testing import CliRunner

    from ml.cli import app

    add_reports(3)
    res = CliRunner().invoke(app, ["retrain", "--mode", "compare", "--families", "tfidf_lr", "--sample-size", "300"])
    assert res.exit_code == 0, res.output
    rid = conn.execute("SELECT max(id) FROM retrainings WHERE model_name = %s", (loop["name"],)).fetchone()[0]
    r = retraining.get_retraining(rid)
    assert (r["mode"], r["reason"]) == ("compare", "manual") and r["status"] in ("promoted", "rejected")
    families, winner, table = conn.execute("SELECT families, winner_run_id, table_json FROM comparisons"
                                           " WHERE snapshot_hash = %s", (r["snapshot_hash"],)).fetchone()
    assert families == ["tfidf_lr"] and winner == r["run_id"]
    assert table[0]["n_test"] == r["metrics"]["held_out"]["n"] == r["dataset_report"]["held_out"]["rows"]
