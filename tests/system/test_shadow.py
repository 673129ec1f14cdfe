"""Shadow before promotion (ml/stages/shadow.py), for real: ``sentiment_retraining`` through ``airflow dags test``
while the API serves live requests. The challenger passes the gate, goes into shadow (the API answers
with the champion and scores the same texts with the challenger off the request path), the
``shadow.window`` sensor reschedules until the window is full, and ``shadow.decide`` promotes it or not.

- promoted: reviewers label some shadowed live tweets with their true labels; agreement, the CBPE
  estimate and the reviewed accuracy hold up -> the alias moves, the API serves the new version.
- not promoted: the same, but the reviewers judge the live texts differently from the training labels
  (a concept shift the held-out set cannot see): on every reviewed text where the two models disagree
  they give the champion's answer -> the challenger's reviewed accuracy drops -> rejected, the champion stays.

Run with ``-s`` to see the shadow numbers of both runs.
"""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest
import realdata
from fastapi.testclient import TestClient
from loop_helpers import FRACTION, after_polls, make_loop

from api.main import create_app
from ml.platform import db, registry
from ml.platform.config import get_settings
from ml.stages import review
from ml.stages import shadow as shadow_mod
from ml.stages.retraining.records import get_retraining
from ml.views import model_card

WINDOW = 100  # shadowed requests
REVIEWED = 24  # shadowed texts a reviewer labels (>= shadow_min_reviewed: a criterion)
LIMIT = 900  # seconds: only keeps a broken test from hanging


@pytest.fixture(scope="session")
def pool_rows() -> tuple[tuple[int, str], ...]:
    return tuple((y, t.strip()) for y, t in realdata.read(realdata.SHARED_DATA) if t.strip())


@pytest.fixture
def loop(own_champion, tweets_csv, pool_rows, request):
    with own_champion(
        "tweet-sentiment-shadow",
        tweets_csv,
        sample_size=300,
        SENTIMENT_BEHAVIOUR_CHECKS="false",
        SENTIMENT_RETRAINING_FEEDBACK_FRACTION=str(FRACTION),
        SENTIMENT_SHADOW_REQUESTS=str(WINDOW),
        SENTIMENT_SHADOW_HOURS="1",
        SENTIMENT_SHADOW_MIN_AGREEMENT="0.6",
        SENTIMENT_SHADOW_MAX_ACCURACY_DROP="0.02",
        SENTIMENT_SHADOW_MIN_REVIEWED=str(REVIEWED),
        SENTIMENT_SHADOW_POKE_SECONDS="2",
    ) as c:
        yield make_loop(c, pool_rows, seed=request.node.nodeid)


def _airflow(settings, sql: str, args: tuple) -> list[tuple]:
    with psycopg.connect(db.libpq_url(db.airflow_db_url(settings))) as aconn:
        return aconn.execute(sql, args).fetchall()


def _shadow_rows(conn, name: str) -> list[tuple]:
    return conn.execute(
        "SELECT sp.prediction_id, sp.champion_label, sp.challenger_label FROM shadow_predictions sp"
        " JOIN shadows s ON s.id = sp.shadow_id WHERE s.model_name = %s AND s.status = 'running'"
        " ORDER BY sp.created_at, sp.prediction_id",
        (name,),
    ).fetchall()


def _run_with_traffic(loop, conn, airflow_cli, oracle) -> dict:
    """Trigger a retraining, run sentiment_retraining while live requests flow through the API; once
    WINDOW - 20 requests are shadowed, traffic pauses (the window is not full yet) and a reviewer labels
    REVIEWED of them with ``oracle(true label, champion label, challenger label)``; traffic resumes until
    the DAG run ends."""
    s = get_settings()
    rid = loop.trigger()
    live = [next(loop.pool) for _ in range(3000)]  # real tweets neither model trained on
    out: dict = {"rid": rid, "answers": [], "reviewed": []}
    with TestClient(create_app(s)) as client:

        def dag():
            out["res"] = airflow_cli(
                "dags",
                "test",
                "sentiment_retraining",
                "-c",
                json.dumps({"retraining_id": rid}),
                extra_env={**loop.env, "SENTIMENT_SHADOW_POKE_SECONDS": "2"},
            )

        th = threading.Thread(target=dag)
        th.start()
        truth: dict[str, tuple[str, int]] = {}
        deadline = time.monotonic() + LIMIT
        i = 0
        while th.is_alive():
            assert time.monotonic() < deadline, "the DAG run never ended"
            y, text = live[i % len(live)]
            i += 1
            r = client.post("/predict", json={"text": text})
            assert r.status_code == 200, r.text
            body = r.json()
            out["answers"].append(body["model_version"])
            truth[body["id"]] = (text, y)
            if not out["reviewed"]:
                rows = _shadow_rows(conn, loop.name)
                if len(rows) >= WINDOW - 20:  # traffic pauses here: the window (WINDOW) is not full
                    # reviewers look at disputed texts first (where the two models disagree): that is
                    # where the paired test has evidence (~20 of 80 texts here)
                    picked = sorted(rows, key=lambda r: r[1] == r[2])[:REVIEWED]
                    ids = [str(pid) for pid, *_ in picked]
                    stored_by = time.monotonic() + 120  # the API's writer stores the champion's rows
                    while conn.execute(
                        "SELECT count(*) FROM predictions WHERE id = ANY(%s::uuid[])", (ids,)
                    ).fetchone()[0] < len(ids):
                        assert time.monotonic() < stored_by, "the API's writer did not store the rows in 120 s"
                        time.sleep(0.2)
                    for pid, champ_label, chall_label in picked:
                        text, y = truth[str(pid)]
                        label = oracle(y, champ_label, chall_label)
                        review.decide(conn, pid, "relabel", label, "key:shadow-reviewer#test", s)
                        out["reviewed"].append((str(pid), y, champ_label, chall_label, label))
            time.sleep(0.03)
        th.join()
        # the API serves whatever the platform decided, once its poller has looked again (counted checks)
        after_polls(client.app.state.models, n=2)
        out["after"] = client.post("/predict", json={"text": "what a day"}).json()["model_version"]
        out["shadow_stats"] = client.app.state.models.shadow_scorer.stats()
    res = out["res"]
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    out["retraining"] = get_retraining(rid)
    out["shadow"] = conn.execute(
        "SELECT id, status, results, decision, challenger_version, champion_version"
        " FROM shadows WHERE retraining_id = %s",
        (rid,),
    ).fetchone()
    out["events"] = conn.execute(
        "SELECT event, version, previous_version FROM model_events WHERE model_name = %s ORDER BY id", (loop.name,)
    ).fetchall()
    [(run_id,)] = _airflow(
        s,
        "SELECT run_id FROM dag_run WHERE dag_id = 'sentiment_retraining' AND conf->>'retraining_id' = %s",
        (str(rid),),
    ) or [(None,)]
    out["task_states"] = dict(
        _airflow(
            s,
            "SELECT task_id, state FROM task_instance WHERE dag_id = 'sentiment_retraining' AND run_id = %s",
            (run_id,),
        )
    )
    out["reschedules"] = _airflow(
        s,
        "SELECT count(*) FROM task_reschedule tr JOIN task_instance ti ON ti.id = tr.ti_id"
        " WHERE ti.dag_id = 'sentiment_retraining' AND ti.run_id = %s"
        " AND ti.task_id = 'shadow.window'",
        (run_id,),
    )[0][0]
    sid, status, results, decision, v2, v1 = out["shadow"]
    print(
        f"\nshadow #{sid} v{v2} beside v{v1}: {status}; n={results['n']}, agreement {results['agreement']:.3f}, "
        f"CBPE challenger {results['estimate']['challenger']['estimated_accuracy']:.4f} vs champion "
        f"{results['estimate']['champion']['estimated_accuracy']:.4f}, reviewed n={results['reviewed']['n']}: "
        f"{results['reviewed'].get('challenger_accuracy')} vs {results['reviewed'].get('champion_accuracy')}; "
        f"sensor reschedules {out['reschedules']}; scorer {out['shadow_stats']}\n  decision: {decision}"
    )
    return out


def _common(out, loop):
    r, (sid, _status, results, decision, v2, v1) = out["retraining"], out["shadow"]
    assert v1 == loop.v1 and r["candidate_version"] == v2 != v1
    # every task succeeded; `champion` (the sentiment_champion asset event) only when the shadow promoted
    states = dict(out["task_states"])
    champion_task = states.pop("champion")
    assert champion_task == ("success" if out["shadow"][1] == "promoted" else "skipped"), champion_task
    assert states == {t: "success" for t in states} and {
        "promotion.promote",
        "shadow.window",
        "shadow.decide",
    } <= set(states)
    assert out["reschedules"] >= 1  # the sensor gave its slot back between pokes
    assert results["n"] >= WINDOW and results["reviewed"]["n"] == REVIEWED
    assert out["shadow_stats"]["dropped"] == 0 and out["shadow_stats"]["errors"] == 0
    # every answer during the window was the champion's: the challenger only ever answered in shadow
    first_v2 = out["answers"].index(v2) if v2 in out["answers"] else len(out["answers"])
    assert set(out["answers"][:first_v2]) == {loop.v1}
    # explainable: the flip report (held-out gate) and the shadow results, on the retraining
    assert r["gate"]["held_out"]["verdict"] == "better" and r["gate"]["decision"]["passed_gate"]
    assert r["gate"]["shadow"]["shadow_id"] == sid and r["decision"] == decision
    assert "shadow on" in decision and "agreement" in decision and "estimated accuracy" in decision


@pytest.mark.slow
def test_shadow_window_then_promoted(loop, conn, airflow_cli):
    out = _run_with_traffic(loop, conn, airflow_cli, oracle=lambda y, champ, chall: y)
    _common(out, loop)
    r, (sid, status, results, decision, v2, _) = out["retraining"], out["shadow"]
    assert status == "promoted" and r["status"] == "promoted" and r["champion_after"] == v2, decision
    assert registry.champion().version == v2 and out["after"] == v2
    assert (
        all(c["passed"] for c in results["criteria"].values()) and results["criteria"]["reviewed_accuracy"]["criterion"]
    )
    assert out["events"] == [("promoted", loop.v1, None), ("shadow_started", v2, loop.v1), ("promoted", v2, loop.v1)]
    card = model_card.model_card()
    assert card["champion"]["version"] == v2 and card["champion"]["shadow"]["status"] == "promoted"
    assert card["champion"]["shadow"]["n"] == results["n"]
    assert f"id='shadow-{sid}'" in model_card.card_html(card)


@pytest.mark.slow
def test_shadow_window_then_not_promoted(loop, conn, airflow_cli):
    out = _run_with_traffic(loop, conn, airflow_cli, oracle=lambda y, champ, chall: champ if champ != chall else y)
    _common(out, loop)
    r, (sid, status, results, decision, v2, _) = out["retraining"], out["shadow"]
    assert status == "rejected" and r["status"] == "rejected" and r["champion_after"] == loop.v1, decision
    assert registry.champion().version == loop.v1 and out["after"] == loop.v1
    crit = results["criteria"]["reviewed_accuracy"]
    assert crit["criterion"] and not crit["passed"] and "failed reviewed_accuracy" in decision
    assert out["events"] == [("promoted", loop.v1, None), ("shadow_started", v2, loop.v1), ("rejected", v2, loop.v1)]
    card = model_card.model_card()
    assert card["champion"]["version"] == loop.v1 and card["latest_shadow"]["status"] == "rejected"
    assert f"id='shadow-{sid}'" in model_card.card_html(card)


def test_assess_criteria_and_empty_window(platform_env):
    """The decision rule on its own: disagreement alone fails; an empty window is no evidence."""
    s = platform_env.model_copy(
        update={"shadow_min_agreement": 0.8, "shadow_max_accuracy_drop": 0.02, "shadow_min_reviewed": 5}
    )
    cal = {"kind": "isotonic", "x": [0.0, 1.0], "y": [0.0, 1.0], "n": 2}
    calibration = {"champion": cal, "challenger": cal}
    rows = [
        {
            "champion_label": 1,
            "champion_p_positive": 0.9,
            "challenger_label": int(i % 3 != 0),
            "challenger_p_positive": 0.9 if i % 3 else 0.1,
            "reviewed_label": None,
        }
        for i in range(30)
    ]
    a = shadow_mod.assess(rows, calibration, s)
    assert a["agreement"] == pytest.approx(20 / 30) and not a["criteria"]["agreement"]["passed"] and not a["promote"]
    assert a["criteria"]["estimated_accuracy"]["passed"]  # both equally confident: no estimated drop
    assert not a["criteria"]["reviewed_accuracy"]["criterion"]
    e = shadow_mod.assess([], calibration, s)
    assert not e["promote"] and "no evidence" in e["reason"]
