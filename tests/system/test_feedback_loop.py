"""The closed loop, for real: misclassification reports in PostgreSQL -> the retraining trigger
(exactly once) -> sentiment_retraining (snapshot + reports, challenger vs champion on the same
held-out set) -> promotion only of a winner (behavioural gate included) -> the API serves it ->
lineage of a prediction names the retraining and its reports -> rollback restores the previous champion.

Every test has a registered model of its own (``loop``, tests/system/loop_helpers.py): a deliberately weak
TF-IDF champion (300 of the 2,000 real tweets) so that a challenger with the champion's family and
params on the whole training split + the reports wins, and one with 5 features loses. Behavioural
checks do not gate by default here (a 300-tweet model cannot pass them); the one test that turns them
on makes a more accurate challenger genuinely fail one and checks it is not promoted.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import psycopg
import pytest
import realdata
from fastapi.testclient import TestClient
from loop_helpers import FRACTION, IDENTITIES, Loop, make_loop
from typer.testing import CliRunner

from api.main import create_app
from ml.cli import app
from ml.data.snapshots import SPLIT_FILE, get_snapshot
from ml.data.splits import split
from ml.platform import db, registry, security
from ml.platform.config import Settings, get_settings, reset_settings
from ml.stages.retraining import RetrainingError
from ml.stages.retraining.challenger import run_retraining
from ml.stages.retraining.records import get_retraining
from ml.stages.retraining.training_set import prepare
from ml.stages.retraining.trigger import champion_context, check_trigger, pending_count, threshold_for

POLL_LIMIT = 120  # seconds: only keeps a broken test from hanging, never a speed claim


@pytest.fixture(scope="session")
def pool_rows() -> tuple[tuple[int, str], ...]:
    """Real tweets (the shared 100k) to report on: read once, never mutated."""
    return tuple((y, t.strip()) for y, t in realdata.read(realdata.SHARED_DATA) if t.strip())


@pytest.fixture
def loop(own_champion, tweets_csv, pool_rows, request) -> Loop:
    with own_champion(
        "tweet-sentiment-loop",
        tweets_csv,
        sample_size=300,
        SENTIMENT_BEHAVIOUR_CHECKS="false",
        SENTIMENT_RETRAINING_FEEDBACK_FRACTION=str(FRACTION),
    ) as c:
        yield make_loop(c, pool_rows, seed=request.node.nodeid)


@pytest.fixture
def triggered(loop) -> int:
    """A retraining triggered by the feedback threshold on this test's champion."""
    return loop.trigger()


@pytest.fixture
def promoted(loop, triggered) -> dict:
    """The retraining run in-process (``ml retrain``'s path) with the champion's family on the whole
    training split + the reports: the challenger wins and becomes champion."""
    out = run_retraining(triggered)
    assert out["promoted"], out
    return {
        "rid": triggered,
        "version": out["version"],
        "run_id": out["run_id"],
        "retraining": get_retraining(triggered),
    }


def _retrainings(conn, name):
    return conn.execute(
        "SELECT id, reason, status, n_feedback, threshold, feedback_ids, champion_before,"
        " champion_after"
        " FROM retrainings WHERE model_name = %s ORDER BY id",
        (name,),
    ).fetchall()


def _airflow_db(settings) -> str:
    return db.libpq_url(db.airflow_db_url(settings))


def _wait_for(predicate, what: str):
    deadline = time.monotonic() + POLL_LIMIT
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)
    return value


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_fraction_is_validated(platform_env):
    for bad in (0.0005, 0.02):
        with pytest.raises(ValueError, match=r"between 0.001 \(0.1%\) and 0.01 \(1%\)"):
            Settings(retraining_feedback_fraction=bad)
    with pytest.raises(ValueError, match="between 0.001"):
        threshold_for(100_000, get_settings().model_copy(update={"retraining_feedback_fraction": 0.5}))
    assert threshold_for(99_338, Settings(retraining_feedback_fraction=0.005)) == 497


def test_a_retraining_without_new_content_fails_and_leaves_the_parent_alone(loop, conn):
    """No pending report (a manual retraining): the set would hash to the champion's snapshot. It is
    refused (recorded as failed, with the reason) before anything is written into the parent's directory."""
    parent = loop.snapshot
    split_file = parent.path.parent / SPLIT_FILE
    before = split_file.stat().st_mtime_ns if split_file.exists() else None
    kind_before = conn.execute(
        "SELECT kind, parent_hash FROM dataset_snapshots WHERE hash = %s", (parent.hash,)
    ).fetchone()
    with pytest.raises(RetrainingError, match="add nothing to the champion's snapshot"):
        prepare(None)
    [(rid, status, error, snap)] = conn.execute(
        "SELECT id, status, error, snapshot_hash FROM retrainings WHERE model_name = %s", (loop.name,)
    ).fetchall()
    assert (status, snap) == ("failed", None) and "add nothing" in error
    assert (split_file.stat().st_mtime_ns if split_file.exists() else None) == before
    assert (
        conn.execute("SELECT kind, parent_hash FROM dataset_snapshots WHERE hash = %s", (parent.hash,)).fetchone()
        == kind_before
    )


def test_below_threshold_no_trigger_then_exactly_once(loop, conn):
    thr = loop.threshold
    assert thr == 10
    first = loop.add_reports(thr - 1)
    d = check_trigger()
    assert not d["trigger"] and d["reason"] == "below_threshold"
    assert (d["pending_reports"], d["threshold"]) == (thr - 1, thr) and f"{thr - 1}/{thr}" in d["detail"]
    assert _retrainings(conn, loop.name) == []

    last = loop.add_reports(1)
    d1, d2 = check_trigger(), check_trigger()  # the trigger, run twice
    assert d1["trigger"] and d1["reason"] == "feedback_threshold"
    assert d1["airflow_run_id"] == f"retraining__{d1['retraining_id']}"
    assert not d2["trigger"] and d2["pending_reports"] == 0
    [row] = _retrainings(conn, loop.name)
    rid, reason, status, n, threshold, ids, before, after = row
    assert rid == d1["retraining_id"]
    assert (reason, status, n, threshold, before, after) == ("feedback_threshold", "triggered", thr, thr, loop.v1, None)
    assert sorted(ids) == sorted(first + last)
    consumed = conn.execute("SELECT count(*) FROM retraining_feedback WHERE retraining_id = %s", (rid,)).fetchone()[0]
    assert consumed == thr * IDENTITIES


def test_concurrent_trigger_checks_record_one_retraining(loop, conn):
    """Two trigger checks at once (two monitoring runs, say): one retraining."""
    loop.add_reports(loop.threshold)
    results: list[dict] = []
    start = threading.Barrier(2)  # both checks leave the gate together: a real race, not two turns

    def check() -> None:
        start.wait(timeout=30)
        results.append(check_trigger())

    ts = [threading.Thread(target=check) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(r["trigger"] for r in results) == [False, True]
    rid = next(r["retraining_id"] for r in results if r["trigger"])
    assert [r[0] for r in _retrainings(conn, loop.name)] == [rid]


def test_worse_challenger_is_not_promoted(loop, triggered, conn):
    rid = triggered
    out = run_retraining(rid, hyperparams={"max_features": 5}, sample_size=200)
    assert not out["promoted"] and "does not beat" in out["reason"]
    assert registry.champion().version == loop.v1
    r = get_retraining(rid)
    assert (r["status"], r["champion_before"], r["champion_after"]) == ("rejected", loop.v1, loop.v1)
    assert conn.execute(
        "SELECT event, previous_version FROM model_events WHERE model_name = %s AND version = %s",
        (loop.name, out["version"]),
    ).fetchall() == [("rejected", loop.v1)]
    m = r["metrics"]
    assert m["held_out"]["challenger"]["accuracy"] < m["held_out"]["champion"]["accuracy"]
    assert m["reported_eval"]["n"] + m["reported_train"]["n"] == loop.threshold

    # the new training set: a content-hashed snapshot of kind 'retraining' whose parent is the champion's
    kind, parent, n_rows = conn.execute(
        "SELECT kind, parent_hash, n_rows FROM dataset_snapshots WHERE hash = %s", (r["snapshot_hash"],)
    ).fetchone()
    assert (kind, parent) == ("retraining", loop.snapshot.hash)
    rep = r["dataset_report"]
    assert n_rows == loop.snapshot.n_rows + rep["new_texts"] - rep["conflicts_tied_dropped"]
    # the same held-out set as the champion's (its parent's), never a reported tweet
    s = get_settings()
    _, parent_test = split(loop.snapshot.load(), s.test_size, s.seed)
    new_train, new_test = split(get_snapshot(r["snapshot_hash"]).load(), s.test_size, s.seed)
    reported = {
        t
        for (t,) in conn.execute(
            "SELECT p.text FROM feedback f JOIN predictions p ON p.id = f.prediction_id WHERE f.id = ANY(%s)",
            (r["feedback_ids"],),
        ).fetchall()
    }
    assert set(new_test["text"]) == set(parent_test["text"])  # all of it, with the parent's labels
    assert dict(zip(new_test["text"], new_test["label"])) == dict(zip(parent_test["text"], parent_test["label"]))
    assert not reported & set(new_test["text"])
    assert not set(new_train["text"]) & set(new_test["text"])
    assert reported & set(new_train["text"])  # most reports are trained on (20% held out to score)


def test_a_rejected_retrainings_reports_enter_the_next_one(loop, triggered):
    """The reports of a rejected retraining of the same champion are trained on by the next one."""
    first = run_retraining(triggered, hyperparams={"max_features": 5}, sample_size=200)
    assert not first["promoted"]
    second = loop.trigger()
    out = run_retraining(second)
    r1, r2 = get_retraining(triggered), get_retraining(second)
    assert set(r2["feedback_ids"]).isdisjoint(r1["feedback_ids"])  # each consumed its own reports ...
    assert set(r1["feedback_ids"]) | set(r2["feedback_ids"]) == set(r2["training_feedback_ids"])  # ... trained on both
    assert out["promoted"] and r2["status"] == "promoted"


def test_preparing_the_same_retraining_twice_gives_one_snapshot_and_no_version(loop, triggered, conn):
    """A re-run of prepare (an Airflow retry, a cleared task) rebuilds nothing: the same snapshot, no
    second snapshot row, no model version; re-running the whole retraining registers no second version."""
    import mlflow

    def versions():
        return sorted(int(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name = '{loop.name}'"))

    def snapshots():
        return conn.execute(
            "SELECT hash, n_rows FROM dataset_snapshots WHERE source LIKE %s ORDER BY hash",
            (f"retraining #{triggered} of {loop.name}:%",),
        ).fetchall()

    p1 = prepare(triggered)
    after_first = snapshots()
    p2 = prepare(triggered)
    assert p2["snapshot_hash"] == p1["snapshot_hash"] and p2["rows_out"] == p1["rows_out"]
    assert snapshots() == after_first and [h for h, _ in after_first] == [p1["snapshot_hash"]]
    assert versions() == [loop.v1]  # preparing registers nothing

    out1 = run_retraining(triggered)
    assert out1["snapshot_hash"] == p1["snapshot_hash"] and versions() == [loop.v1, out1["version"]]
    out2 = run_retraining(triggered)  # the whole retraining once more: same challenger, same version
    assert (out2["run_id"], out2["version"]) == (out1["run_id"], out1["version"])
    assert versions() == [loop.v1, out1["version"]]
    assert snapshots() == after_first
    assert registry.champion().version == out1["version"]


def test_a_report_corrected_to_agree_no_longer_counts(loop, conn):
    """Each identity's latest word on a text counts: when one of the three reporters of a tweet corrects
    itself to agree with the prediction (one report per prediction and reporter: it predicts the text
    again and reports on that prediction), two identities are left, too few to trust the label: not
    pending any more."""
    ctx = champion_context()
    assert pending_count(ctx)["reports"] == 0
    ids = loop.add_reports(2)
    assert pending_count(ctx)["reports"] == 2
    for n, fid in enumerate(ids[::IDENTITIES], start=1):
        conn.execute(
            "WITH again AS (INSERT INTO predictions (text, label, p_negative, p_positive, model_name, model_version,"
            " source) SELECT p.text, p.label, p.p_negative, p.p_positive, p.model_name, p.model_version, p.source"
            " FROM feedback f JOIN predictions p ON p.id = f.prediction_id WHERE f.id = %s RETURNING id, label)"
            " INSERT INTO feedback (prediction_id, correct_label, reporter)"
            " SELECT again.id, again.label, f.reporter FROM again, feedback f WHERE f.id = %s",
            (fid, fid),
        )
        assert pending_count(ctx)["reports"] == 2 - n
    d = check_trigger()
    assert d["pending_reports"] == 0 and not set(ids) & set(d.get("feedback_ids") or [])


def test_drift_is_reported_and_may_trigger(loop, conn):
    report = {
        "id": f"drift-{uuid.uuid4().hex[:6]}",
        "status": "drift",
        "drift_detected": True,
        "feedback": {"concept_drift": False},
        "verdict": "DRIFT in raw text",
    }
    d = check_trigger(report)
    assert not d["trigger"] and "retraining_on_drift is off" in d["detail"] and d["drift"]["drift_detected"]
    on = get_settings().model_copy(update={"retraining_on_drift": True})
    d1, d2 = check_trigger(report, settings=on), check_trigger(report, settings=on)
    assert d1["trigger"] and d1["reason"] == "drift"
    assert not d2["trigger"] and d2["reason"] == "already_triggered"
    assert [r[:3] for r in _retrainings(conn, loop.name)] == [(d1["retraining_id"], "drift", "triggered")]


@pytest.mark.parametrize(
    ("sample_size", "outcome"),
    [("5000", "promoted"), ("60", "rejected")],  # all the snapshot's rows against the champion's 300 / 60 of them
)
def test_compare_mode_retrains_through_a_comparison(loop, conn, sample_size, outcome):
    """mode compare: the challenger is the winner of a comparison of families on the retraining snapshot
    (the same held-out split: the snapshot's own). Each outcome is forced: a challenger trained on every
    row beats the 300-row champion; one trained on 60 rows does not."""
    loop.add_reports(3)
    res = _cli("retrain", "--mode", "compare", "--families", "tfidf_lr", "--sample-size", sample_size)
    assert res.exit_code == 0, res.output
    [(rid,)] = conn.execute("SELECT id FROM retrainings WHERE model_name = %s", (loop.name,)).fetchall()
    r = get_retraining(rid)
    assert (r["mode"], r["reason"], r["n_feedback"]) == ("compare", "manual", 3)
    held = r["metrics"]["held_out"]
    # the promotion gate (ml.evaluation.gate): a promotion needs a higher accuracy AND a significant paired win
    gate = r["gate"]
    assert gate["held_out"]["accuracy_a"] == pytest.approx(held["challenger"]["accuracy"])
    beats = (
        held["challenger"]["accuracy"] > held["champion"]["accuracy"]
        and gate["held_out"]["verdict"] == "better"
        and all(c["passed"] for c in gate["decision"]["checks"].values())
    )
    assert gate["decision"]["promoted"] == beats == (outcome == "promoted")
    expected = ("promoted", r["candidate_version"]) if outcome == "promoted" else ("rejected", loop.v1)
    assert (r["status"], r["champion_after"]) == expected
    families, winner, table = conn.execute(
        "SELECT families, winner_run_id, table_json FROM comparisons WHERE snapshot_hash = %s", (r["snapshot_hash"],)
    ).fetchone()
    assert families == ["tfidf_lr"] and winner == r["run_id"]
    assert table[0]["n_test"] == r["metrics"]["held_out"]["n"] == r["dataset_report"]["held_out"]["rows"]


def test_retraining_with_checks_on_rejects_a_more_accurate_challenger_failing_a_check(
    loop, triggered, conn, monkeypatch
):
    """The gate against an existing champion: with behavioural checks on and every minimum-functionality
    sentence required right (threshold 1.0), the retrained challenger (more accurate on the same held-out
    set) gets at least one of the 10 plain sentences wrong (its failures are asserted), fails that check
    for real, and is not promoted; the rejection is recorded."""
    monkeypatch.setenv("SENTIMENT_BEHAVIOUR_CHECKS", "true")
    monkeypatch.setenv("SENTIMENT_BEHAVIOUR_MIN_FUNCTIONALITY", "1.0")
    reset_settings()
    try:
        out = run_retraining(triggered)
    finally:
        monkeypatch.undo()
        reset_settings()
    r = get_retraining(triggered)
    held = r["metrics"]["held_out"]
    assert held["challenger"]["accuracy"] > held["champion"]["accuracy"]  # accuracy alone would promote it
    assert not out["promoted"] and out["behaviour_passed"] is False
    assert out["reason"].startswith("failed behavioural checks: minimum_functionality")
    assert registry.champion().version == loop.v1
    assert (r["status"], r["champion_after"], r["decision"]) == ("rejected", loop.v1, out["reason"])
    behaviour, status, decision = conn.execute(
        "SELECT behaviour, status, decision FROM training_runs WHERE run_id = %s", (out["run_id"],)
    ).fetchone()
    mf = behaviour["types"]["minimum_functionality"]
    assert (mf["passed"], mf["threshold"]) == (False, 1.0) and mf["pass_rate"] < 1.0 and mf["failures"]
    assert (status, decision) == ("rejected", out["reason"])
    assert conn.execute(
        "SELECT event, previous_version, reason FROM model_events WHERE model_name = %s AND version = %s",
        (loop.name, out["version"]),
    ).fetchall() == [("rejected", loop.v1, out["reason"])]


def test_lineage_of_a_prediction_names_the_retraining_and_its_reports(loop, promoted):
    s = get_settings()
    r, new_version = promoted["retraining"], promoted["version"]

    admin = {"Authorization": "Bearer " + security.create_key("lineage-test", ["admin"], s)[0]}  # the full lineage
    with TestClient(create_app(s)) as client:
        assert client.get("/model").json()["version"] == new_version
        pred = client.post("/predict", json={"text": "this retrained model is great"}).json()
        assert pred["model_version"] == new_version
        lin = _wait_for(
            lambda: (x := client.get(f"/predictions/{pred['id']}/lineage", headers=admin)).status_code == 200 and x,
            "the prediction is written and has a lineage",
        )
        lin = lin.json()
        assert lin["model"]["version"] == new_version and lin["model"]["run_id"] == promoted["run_id"] == r["run_id"]
        assert lin["git_commit"] and lin["snapshot"]["hash"] == r["snapshot_hash"]
        assert lin["snapshot"]["kind"] == "retraining"
        assert [c["hash"] for c in lin["snapshot_chain"]] == [r["snapshot_hash"], loop.snapshot.hash]
        assert lin["retraining"]["id"] == promoted["rid"] and lin["retraining"]["reason"] == "feedback_threshold"
        assert {x["feedback_id"] for x in lin["retraining"]["reports"]} == set(r["training_feedback_ids"])
        assert set(r["training_feedback_ids"]) == set(r["feedback_ids"])
        assert f"retraining #{promoted['rid']}" in lin["summary"]
        assert client.get(f"/predictions/{uuid.uuid4()}/lineage").status_code == 404

    out = _cli("lineage", pred["id"])
    assert out.exit_code == 0, out.output
    cli = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert (cli["retraining"]["id"], cli["model"]["version"]) == (promoted["rid"], new_version)


def test_rollback_restores_the_previous_champion(loop, promoted, conn):
    with TestClient(create_app(get_settings())) as client:
        assert client.get("/model").json()["version"] == promoted["version"]
        res = _cli("promote", "--rollback")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["to_version"] == loop.v1
        assert registry.champion().version == loop.v1
        _wait_for(
            lambda: client.post("/predict", json={"text": "back to the old model"}).json()["model_version"] == loop.v1,
            f"the API serves v{loop.v1} again",
        )
    ev = conn.execute(
        "SELECT event, version, previous_version FROM model_events WHERE model_name = %s ORDER BY id DESC LIMIT 1",
        (loop.name,),
    ).fetchone()
    assert ev == ("rollback", loop.v1, promoted["version"])
    again = _cli("promote", "--rollback")  # nothing before the first champion
    assert again.exit_code == 2 and "first recorded champion" in again.output
    assert registry.champion().version == loop.v1


def _dag_runs(settings, dag_id: str) -> list[tuple]:
    with psycopg.connect(_airflow_db(settings)) as aconn:
        return aconn.execute(
            "SELECT run_id, state, conf FROM dag_run WHERE dag_id = %s ORDER BY id", (dag_id,)
        ).fetchall()


def _task_states(settings, dag_id: str, run_id: str) -> dict[str, str]:
    with psycopg.connect(_airflow_db(settings)) as aconn:
        return dict(
            aconn.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id = %s AND run_id = %s", (dag_id, run_id)
            ).fetchall()
        )


@pytest.mark.slow
def test_better_challenger_promoted_by_the_dag_and_served(loop, triggered, conn, airflow_cli):
    """sentiment_retraining via ``airflow dags test`` while requests keep flowing: every request answers,
    the API serves the old champion, then (after the promotion event) the new one, and never goes back."""
    s = get_settings()
    rid = triggered

    with TestClient(create_app(s)) as client:
        assert client.post("/predict", json={"text": "I love it"}).json()["model_version"] == loop.v1
        seen: list[tuple[int, int | None]] = []  # (status, version), in order
        stop = threading.Event()

        def traffic():  # requests keep flowing while the DAG runs and the champion changes
            while not stop.is_set():
                r = client.post("/predict", json={"text": "what a day"})
                seen.append((r.status_code, r.json().get("model_version")))
                stop.wait(0.1)

        runs_before = {run_id for run_id, *_ in _dag_runs(s, "sentiment_retraining")}
        th = threading.Thread(target=traffic)
        th.start()
        try:
            res = airflow_cli(
                "dags", "test", "sentiment_retraining", "-c", json.dumps({"retraining_id": rid}), extra_env=loop.env
            )
            assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
            r = get_retraining(rid)
            assert r["status"] == "promoted", r
            new_version = r["champion_after"]
            assert new_version != loop.v1 and registry.champion().version == new_version
            n_at_promotion = len(seen)  # the promotion event is recorded: every request from here on may see it
            _wait_for(
                lambda: any(v == new_version for _, v in seen[n_at_promotion:]),
                f"the API serves v{new_version} after its promotion",
            )
        finally:
            stop.set()
            th.join()
    assert seen and {code for code, _ in seen} == {200}  # no failed request, before, during or after
    versions = [v for _, v in seen]
    first_new = versions.index(new_version)
    # one swap, no flip-back
    assert set(versions[:first_new]) == {loop.v1} and set(versions[first_new:]) == {new_version}
    events = conn.execute(
        "SELECT event, version, previous_version FROM model_events WHERE model_name = %s ORDER BY id", (loop.name,)
    ).fetchall()
    assert events == [("promoted", loop.v1, None), ("promoted", new_version, loop.v1)]

    # the run that did it: the one sentiment_retraining run of this test, conf = this retraining
    [(run_id, state, conf)] = [x for x in _dag_runs(s, "sentiment_retraining") if x[0] not in runs_before]
    assert (state, str(conf["retraining_id"])) == ("success", str(rid))
    assert r["airflow_run_id"] == run_id
    assert (
        conn.execute("SELECT airflow_run_id FROM training_runs WHERE run_id = %s", (r["run_id"],)).fetchone()[0]
        == run_id
    )
    # evaluated on the same held-out set, and on the reported tweets
    m = r["metrics"]
    assert m["held_out"]["challenger"]["accuracy"] > m["held_out"]["champion"]["accuracy"]
    assert m["held_out"]["champion_version"] == loop.v1
    assert set(r["feedback_ids"]) == set(r["training_feedback_ids"])
    behaviour = conn.execute("SELECT behaviour FROM training_runs WHERE run_id = %s", (r["run_id"],)).fetchone()[0]
    assert set(behaviour["types"]) == {"minimum_functionality", "negation", "invariance"}  # the DAG's gate ran


@pytest.mark.slow
def test_monitoring_dag_triggers_the_retraining_dag(loop, conn, airflow_cli):
    """End of sentiment_monitoring: the trigger records the retraining and starts sentiment_retraining
    (a queued run ``retraining__<id>`` in Airflow's database; no scheduler runs it here)."""
    s = get_settings()
    loop.add_reports(loop.threshold)
    before = {run_id for run_id, *_ in _dag_runs(s, "sentiment_monitoring")}
    res = airflow_cli("dags", "test", "sentiment_monitoring", "-c", json.dumps({"hours": 1}), extra_env=loop.env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    [(mon_run, state, _)] = [x for x in _dag_runs(s, "sentiment_monitoring") if x[0] not in before]
    [(rid, reason, status, *_)] = _retrainings(conn, loop.name)
    assert (reason, status) == ("feedback_threshold", "triggered")
    trig, drift_id = conn.execute(
        "SELECT trigger_airflow_run_id, drift_report_id FROM retrainings WHERE id = %s", (rid,)
    ).fetchone()
    assert trig == mon_run and drift_id is not None  # the report was built and named in the decision
    run = [x for x in _dag_runs(s, "sentiment_retraining") if x[0] == f"retraining__{rid}"]
    assert len(run) == 1, out[-3000:]
    assert str(run[0][2]["retraining_id"]) == str(rid)


@pytest.mark.slow
def test_retraining_is_checked_when_the_drift_report_fails(loop, conn, airflow_cli):
    """sentiment_monitoring with an invalid period (start after end): build_report fails for real, and
    check_retraining (trigger rule all_done) still runs and decides on the threshold alone: the
    retraining is recorded without a drift report and sentiment_retraining is started."""
    s = get_settings()
    loop.add_reports(loop.threshold)
    before = {run_id for run_id, *_ in _dag_runs(s, "sentiment_monitoring")}
    conf = {"start": "2030-01-02T00:00:00", "end": "2030-01-01T00:00:00"}
    res = airflow_cli("dags", "test", "sentiment_monitoring", "-c", json.dumps(conf), extra_env=loop.env)
    out = res.stdout + res.stderr
    assert "empty period" in out
    [(mon_run, _, _)] = [x for x in _dag_runs(s, "sentiment_monitoring") if x[0] not in before]
    states = _task_states(s, "sentiment_monitoring", mon_run)
    assert states["build_report"] == "failed"
    assert (states["check_retraining"], states["retraining_needed"], states["trigger_retraining"]) == (
        "success",
        "success",
        "success",
    ), states
    [(rid, reason, status, n, *_)] = _retrainings(conn, loop.name)
    assert (reason, status, n) == ("feedback_threshold", "triggered", loop.threshold)
    trig, drift_id = conn.execute(
        "SELECT trigger_airflow_run_id, drift_report_id FROM retrainings WHERE id = %s", (rid,)
    ).fetchone()
    assert (trig, drift_id) == (mon_run, None)
    started = [x[0] for x in _dag_runs(s, "sentiment_retraining") if x[0] == f"retraining__{rid}"]
    assert started == [f"retraining__{rid}"]
    # the failed drift report is a platform alert too (the DAG's notifier)
    [(msg,)] = conn.execute(
        "SELECT message FROM alerts WHERE rule = 'dag_failure' AND model_name = %s", (loop.name,)
    ).fetchall()
    assert msg.startswith(
        f"sentiment_monitoring: task build_report failed in run {mon_run} (MonitoringError: empty period"
    )


@pytest.mark.slow
def test_a_failed_trigger_marks_the_retraining_failed(loop, conn, airflow_cli):
    """trigger_retraining fails for real (Airflow's database refuses the new sentiment_retraining run):
    its failure callback marks the retraining failed, so that its consumed reports are trained on by the
    next one."""
    s = get_settings()
    loop.add_reports(loop.threshold)
    constraint = f"test_refuse_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_airflow_db(s), autocommit=True) as aconn:  # no new retraining__* run while it holds
        aconn.execute(
            f"ALTER TABLE dag_run ADD CONSTRAINT {constraint} CHECK (run_id NOT LIKE 'retraining%') NOT VALID"
        )
        try:
            res = airflow_cli(
                "dags", "test", "sentiment_monitoring", "-c", json.dumps({"hours": 1}), extra_env=loop.env
            )
        finally:
            aconn.execute(f"ALTER TABLE dag_run DROP CONSTRAINT {constraint}")
    out = res.stdout + res.stderr
    [(rid, reason, status, *_)] = _retrainings(conn, loop.name)
    error = conn.execute("SELECT error FROM retrainings WHERE id = %s", (rid,)).fetchone()[0]
    assert (reason, status) == ("feedback_threshold", "failed"), out[-5000:]
    assert "trigger_retraining failed" in error
    assert not [x for x in _dag_runs(s, "sentiment_retraining") if x[0] == f"retraining__{rid}"]


@pytest.mark.slow
def test_failed_retraining_is_notified_and_recorded(loop, conn, airflow_cli):
    """A task failure goes through the DAG's notifier (BaseNotifier): a `dag_failure` alert, and the
    retraining (a manual one here: no retraining_id) is marked failed with the error."""
    s = get_settings()
    loop.add_reports(2)
    before = {run_id for run_id, *_ in _dag_runs(s, "sentiment_retraining")}
    conf = {"hyperparams": {"no_such_param": 1}}
    res = airflow_cli("dags", "test", "sentiment_retraining", "-c", json.dumps(conf), extra_env=loop.env)
    assert res.returncode != 0
    [(run_id, _, _)] = [x for x in _dag_runs(s, "sentiment_retraining") if x[0] not in before]
    [(msg, details)] = conn.execute(
        "SELECT message, details FROM alerts WHERE rule = 'dag_failure' AND model_name = %s", (loop.name,)
    ).fetchall()
    assert msg.startswith(f"sentiment_retraining: task train failed in run {run_id} (") and "no_such_param" in msg
    assert (details["dag_id"], details["task_id"], details["run_id"]) == ("sentiment_retraining", "train", run_id)
    [(reason, status, error, n, airflow_run_id)] = conn.execute(
        "SELECT reason, status, error, n_feedback, airflow_run_id FROM retrainings WHERE model_name = %s", (loop.name,)
    ).fetchall()
    assert (reason, status, n, airflow_run_id) == ("manual", "failed", 2, run_id) and "no_such_param" in error
