"""The progressive champion (ml/platform/progressive.py, ml/stages/progressive.py): after `make up`'s first
champion serves, a background comparison that includes the transformer, through Airflow, at low priority;
its winner goes through the same gate and shadow window as any challenger; `make status` and the web page
show the challenger's progress.

Fast tests, in process on real PostgreSQL and MLflow (no Airflow): the promotion paths of a progressive
winner (a loser stays challenger; a winner that passes the gate waits in a shadow window; the alias does not
move either way), the heartbeat of the search task and the status line built on it, the idempotency key,
the switch that turns it off, the niceness of a background task. The end-to-end test (slow) runs
`up()` on free ports with a real Airflow scheduler: the first champion serves, the background comparison is
triggered through Airflow's REST API and runs, its winner is promoted through the gate, the API serves it
without a restart, a second `up()` starts nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from ports import free_port

from api.runtime import serving
from ml.platform import db, progressive, registry
from ml.platform.config import get_settings, reset_settings
from ml.platform.startup.down import down
from ml.platform.startup.status import status
from ml.platform.startup.up import up
from ml.stages import progressive as progressive_stage
from ml.stages import promotion, train
from ml.stages.search.plan import plan_comparison
from ml.store import predictions as predictions_store
from ml.store import progressive as store

REPO = Path(__file__).resolve().parents[2]


def _claim(s, snapshot_hash: str, families: list[str], profile: str = "full", version: int | None = None):
    with db.connect(s) as c:
        return store.claim(c, s.model_name, snapshot_hash, "/data/x.csv", families, profile, version)


def _settings(monkeypatch, **env: str):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    return get_settings()


def test_off_starts_nothing_and_one_comparison_per_snapshot(platform_env, model_name, monkeypatch):
    """Turned off (the flag, or the setting): nothing is claimed, nothing triggered. The idempotency key:
    of two claims for the same (model, snapshot) only the first starts one; a failed one is claimed again."""
    s = get_settings()
    out = progressive.start(s, enabled=False)
    assert out == {"started": False, "reason": out["reason"]} and "off" in out["reason"]
    s = _settings(monkeypatch, SENTIMENT_PROGRESSIVE_CHAMPION="false")
    assert not progressive.start(s)["started"]
    with db.connect(s) as c:
        assert store.latest(c, s.model_name) is None  # nothing recorded, so nothing to trigger
    snap = f"snap-{uuid.uuid4().hex[:8]}"
    row, claimed = _claim(s, snap, ["tfidf_lr", "transformer"])
    again, claimed_again = _claim(s, snap, ["tfidf_lr", "transformer"])
    assert claimed and not claimed_again and again["id"] == row["id"] and again["state"] == "queued"
    with db.connect(s) as c:
        store.finish(c, int(row["id"]), "promoted", "test")
    assert not _claim(s, snap, ["tfidf_lr", "transformer"])[1]  # finished: not started again
    with db.connect(s) as c:
        store.finish(c, int(row["id"]), "failed", "its Airflow run failed")
    retry, claimed_retry = _claim(s, snap, ["tfidf_lr", "transformer"])
    assert claimed_retry and retry["id"] == row["id"] and retry["state"] == "queued" and retry["reason"] is None


def test_the_winner_goes_through_the_gate_and_the_shadow_window(own_champion, tweets_csv, monkeypatch):
    """A progressive winner is a challenger like any other: a loser under the strict gate is rejected (the
    alias stays); a winner that passes the gate with a shadow window configured goes into shadow (the alias
    stays until the window decides). Both outcomes are on the progressive row the status line reads."""
    with own_champion("prog-gate", tweets_csv, sample_size=1200) as ch:
        s = get_settings()
        row, _ = _claim(s, ch.snapshot.hash, ["tfidf_lr", "transformer"], version=ch.version)
        loser = train.train(ch.snapshot.hash, "tfidf_lr", sample_size=60)  # far worse than the champion
        train.evaluate(loser)
        train.register(loser)
        out = promotion.promote_candidate(loser, None, progressive_id=row["id"])
        assert not out["promoted"] and registry.champion(s).version == ch.version
        d = progressive.describe(s)
        assert d is not None and d["state"] == "rejected" and "not promoted by the gate" in d["text"], d

        # a winner under a permissive gate, with a shadow window of 5 requests, beside a champion that has
        # answered live requests (the window has traffic to observe)
        s = _settings(
            monkeypatch,
            SENTIMENT_PROMOTION_GATE="margin",
            SENTIMENT_PROMOTION_MARGIN="-1",
            SENTIMENT_BEHAVIOUR_CHECKS="false",
            SENTIMENT_SHADOW_REQUESTS="5",
        )
        _live_request(s, ch.version)
        row2, _ = _claim(s, f"{ch.snapshot.hash[:20]}-{uuid.uuid4().hex[:6]}", ["transformer"], version=ch.version)
        winner = train.train(ch.snapshot.hash, "tfidf_lr", sample_size=1500)
        train.evaluate(winner)
        version = train.register(winner)
        out = promotion.promote_candidate(winner, None, progressive_id=row2["id"])
        try:
            assert out["status"] == "shadow" and out["shadow_id"] and not out["promoted"], out
            assert registry.champion(s).version == ch.version  # the alias waits for the window
            d = progressive.describe(s)
            assert d["state"] == "shadow" and d["version"] == version, d
            assert d["text"] == f"transformer v{version} passed the gate, in shadow (0/5 requests)"
        finally:
            with db.connect(s) as c:  # close the window: no running shadow left for this model
                c.execute("UPDATE shadows SET status = 'superseded' WHERE id = %s", (out.get("shadow_id"),))


def _live_request(s, version: int, source: str = "api") -> None:
    """One prediction of ``version`` stored as the API (or a batch) stores it."""
    texts = ["what a lovely day"]
    rows = serving.prediction_rows(texts, np.array([[0.2, 0.8]]), s.model_name, version, source=source)
    with db.connect(s) as c:
        predictions_store.copy_rows(c, rows)


def test_an_unused_platform_promotes_the_winner_on_the_gate_and_a_used_one_shadows_it(
    own_champion, tweets_csv, monkeypatch
):
    """A shadow window observes live traffic: while the champion has answered no live request since it began
    serving (batch scoring does not count), the window would end empty and reject the winner, so the gate alone
    decides and the progressive row says why; with progressive_shadow_needs_traffic off, the window opens anyway."""
    with own_champion("prog-idle", tweets_csv, sample_size=1200) as ch:
        s = _settings(
            monkeypatch,
            SENTIMENT_PROMOTION_GATE="margin",
            SENTIMENT_PROMOTION_MARGIN="-1",
            SENTIMENT_BEHAVIOUR_CHECKS="false",
            SENTIMENT_SHADOW_REQUESTS="5",
            SENTIMENT_SHADOW_HOURS="24",
        )
        _live_request(s, ch.version, source="batch")  # a scored batch is not traffic a window can observe
        with db.connect(s) as c:
            assert not predictions_store.answered_live_since_serving(c, s.model_name, ch.version)
        row, _ = _claim(s, f"{ch.snapshot.hash[:20]}-{uuid.uuid4().hex[:6]}", ["transformer"], version=ch.version)
        winner = train.train(ch.snapshot.hash, "tfidf_lr", sample_size=1500)
        train.evaluate(winner)
        version = train.register(winner)
        out = promotion.promote_candidate(winner, None, progressive_id=row["id"])
        assert out["promoted"] and out.get("status") != "shadow" and not out.get("shadow_id"), out
        assert "no shadow window" in out["reason"] and "no live request" in out["reason"], out
        assert registry.champion(s).version == version
        d = progressive.describe(s)
        assert d["state"] == "promoted" and d["version"] == version, d

        # the same switch off: the window opens even with no traffic
        s = _settings(monkeypatch, SENTIMENT_PROGRESSIVE_SHADOW_NEEDS_TRAFFIC="false")
        row2, _ = _claim(s, f"{ch.snapshot.hash[:20]}-{uuid.uuid4().hex[:6]}", ["transformer"], version=version)
        third = train.train(ch.snapshot.hash, "tfidf_lr", sample_size=1500)
        train.evaluate(third)
        train.register(third)
        out = promotion.promote_candidate(third, None, progressive_id=row2["id"])
        try:
            assert out["status"] == "shadow" and out["shadow_id"] and not out["promoted"], out
            assert registry.champion(s).version == version
        finally:
            with db.connect(s) as c:
                c.execute("UPDATE shadows SET status = 'superseded' WHERE id = %s", (out.get("shadow_id"),))


def test_search_heartbeat_and_the_status_line(own_champion, tweets_csv, monkeypatch):
    """The search task of a progressive run writes its progress (fit seconds against the families'
    budgets) while it runs, and its whole budget once done; the status line shows the challenger with its
    percentage and an ETA from the measured rate."""
    with own_champion("prog-beat", tweets_csv, sample_size=1200) as ch:
        # the test process keeps its priority (a background run's tasks get progressive_nice: next test)
        s = _settings(monkeypatch, SENTIMENT_PROGRESSIVE_HEARTBEAT_SECONDS="0.2", SENTIMENT_PROGRESSIVE_NICE="0")
        row, _ = _claim(s, ch.snapshot.hash, ["tfidf_lr"], profile="quick", version=ch.version)
        plan = plan_comparison(
            ch.snapshot.hash, ["tfidf_lr"], "quick", {"tfidf_lr": 400}, None, {"tfidf_lr": {"params": {"C": [1.0]}}}
        )
        out = progressive_stage.search(plan, "tfidf_lr", row["id"], s)
        assert out["family"] == "tfidf_lr"
        with db.connect(s) as c:
            after = store.get(c, int(row["id"]))
        assert after["state"] == "evaluating" and after["total"] == 45.0 and after["done"] == 45.0  # quick budget
        assert after["training_started_at"] is not None  # the heartbeat ran during the search
        assert progressive.status_line(s) == (
            f"champion: tfidf_lr v{ch.version}; challenger: tfidf_lr evaluating on the held-out split"
        )
        # the transformer's search, 35% through the comparison's budget after 21 minutes
        with db.connect(s) as c:
            c.execute(
                "UPDATE progressive_challengers SET state = 'training', family = 'transformer',"
                ' families = \'["tfidf_lr", "transformer"]\', total = 4200, done = 1470,'
                " training_started_at = now() - interval '1470 seconds' WHERE id = %s",
                (row["id"],),
            )
        line = progressive.status_line(s)
        assert line == f"champion: tfidf_lr v{ch.version}; challenger: transformer training, 35% (ETA 46 min)", line
        d = progressive.describe(s)
        assert d["percent"] == 35 and 2700 <= d["eta_seconds"] <= 2740, d


def test_a_background_task_lowers_its_own_priority(platform_env):
    """What every task of a progressive run does first (the DAG's on_execute_callback): nice 19."""
    code = "import os; from ml.platform.progressive import lower_priority; print(os.nice(0), lower_priority())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = map(int, r.stdout.split())
    assert after == max(before, 19), r.stdout


def test_make_up_progressive_flag():
    r = subprocess.run(["make", "-n", "up", "PROGRESSIVE=0"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "--no-progressive" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(["make", "-n", "up"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert "progressive" not in r.stdout  # default: the setting (on)


@pytest.fixture
def own_platform(platform_env, model_name, monkeypatch, tmp_path):
    """Settings of a platform of this test's own: var/, kernel-chosen ports, MLflow and Airflow databases
    (dropped after), a permissive gate (the test is about the path, the strict gate has its test above),
    a tiny background comparison: TF-IDF standing in for the transformer (the same DAG, tasks and gate)."""
    own = f"{db.database_name(platform_env.database_url)}_prog_{uuid.uuid4().hex[:6]}"
    # the session's MLflow login, put in this process's environment by any earlier test's tracking.configure,
    # would be inherited by this platform's services and refused by its own MLflow server (401)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    # and its tracking URI (mlflow.set_tracking_uri exports it): this platform tracks in its own MLflow server
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = _settings(
        monkeypatch,
        SENTIMENT_VAR_DIR=str(tmp_path / "var"),
        SENTIMENT_API_PORT=str(free_port()),
        SENTIMENT_MLFLOW_PORT=str(free_port()),
        SENTIMENT_AIRFLOW_PORT=str(free_port()),
        SENTIMENT_MLFLOW_DATABASE=f"{own}_mlflow",
        SENTIMENT_AIRFLOW_DATABASE=f"{own}_airflow",
        SENTIMENT_BEHAVIOUR_CHECKS="false",
        SENTIMENT_PROMOTION_GATE="margin",
        SENTIMENT_PROMOTION_MARGIN="-1",
        SENTIMENT_PROGRESSIVE_FAMILIES='["tfidf_lr"]',
        SENTIMENT_PROGRESSIVE_PROFILE="quick",
        SENTIMENT_PROGRESSIVE_SEARCH_SPACE='{"tfidf_lr": {"params": {"C": [0.5]}}}',
        SENTIMENT_PROGRESSIVE_HEARTBEAT_SECONDS="1",
    )
    yield s
    down(s)
    with psycopg.connect(db.with_database(db.libpq_url(platform_env.database_url), "postgres"), autocommit=True) as c:
        for name in (f"{own}_mlflow", f"{own}_airflow"):
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
def test_up_serves_then_promotes_the_background_winner(own_platform, tweets_csv):
    """`up()`: the first champion serves; the background comparison is triggered through Airflow (the
    training DAG, progressive_id set) and runs under the scheduler; the status line shows the challenger; its
    winner passes the gate and the API serves it without a restart; a second `up()` starts no second one."""
    s = own_platform
    t0 = time.monotonic()
    first = up(data=str(tweets_csv), settings=s)
    t_up = time.monotonic() - t0
    v1 = first["serving_version"]
    assert v1 is not None and first["progressive"]["started"], first["progressive"]
    api = first["api"]
    assert httpx.get(f"{api}/model", timeout=10).json()["version"] == v1  # the first champion serves
    seen: set[str] = set()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        d = progressive.describe(s)
        assert d is not None
        seen.add(d["state"])
        if d["state"] in ("promoted", "rejected", "failed"):
            break
        time.sleep(2)
    t_bg = time.monotonic() - t0 - t_up
    assert d["state"] == "promoted", (d, seen)
    assert d["dag_run_id"] == first["progressive"]["dag_run_id"]
    v2 = d["version"]
    assert v2 > v1 and registry.champion(s).version == v2
    # the API picks the new champion up on its poll (no restart), and says who the challenger was
    deadline = time.monotonic() + 240  # a hang guard: the poll is model_poll_seconds, the load a loaded CI machine
    while httpx.get(f"{api}/model", timeout=10).json()["version"] != v2 and time.monotonic() < deadline:
        time.sleep(0.5)
    t_api = time.monotonic() - t0 - t_up - t_bg
    info = httpx.get(f"{api}/model", timeout=10).json()
    assert info["version"] == v2 and info["challenger"]["text"] == f"tfidf_lr v{v2} promoted", info
    assert httpx.post(f"{api}/predict", json={"text": "what a lovely day"}, timeout=10).json()["model_version"] == v2
    assert status(s, quiet=True)["models"] == f"champion: tfidf_lr v{v2}; challenger: tfidf_lr v{v2} promoted"
    # again (what a second `up()` calls once its champion serves): this snapshot's comparison is done
    again = progressive.start(s)
    assert not again["started"] and "already promoted" in again["reason"], again
    print(
        f"states seen: {sorted(seen)}; phases: up {t_up:.0f}s, background comparison {t_bg:.0f}s, API on the new champion {t_api:.0f}s"
    )
