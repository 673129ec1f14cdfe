"""Replays, bursts and key floods (issue 21, items 2 and 7), for real: the API under uvicorn with 2 workers
(pool of 2 connections each), the session's PostgreSQL, the real retraining trigger.

- a feedback token is good for one report: the same report again answers 200 with the stored one, another
  label 409, and nothing new is stored; 32 concurrent posts of one token store one row;
- bursts count distinct predictions: replayed rows (old data) do not make a burst;
- one identity's burst raises the alert and quarantines its reports (no agreement, nothing toward the
  threshold until a reviewer accepts), but does not pause retraining for everyone; a rate burst from
  several identities still does;
- a flood of random well-formed keys keeps the API's connections within workers x pool size.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from api_helpers import bearer, fresh_model_name, make_key, settings_with, wait_for
from live import live_server
from psycopg_pool import ConnectionPool

from api.auth import KeyCache
from ml.platform.config import get_settings
from ml.platform.startup import commands
from ml.stages import review
from ml.stages.alerts.burst import _sha, evaluate_burst
from ml.stages.retraining.trigger import check_trigger

WORKERS, POOL = 2, 2


@pytest.fixture(scope="module")
def server(champion, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec-api")
    env = {
        "SENTIMENT_VAR_DIR": str(tmp / "var"),
        "SENTIMENT_API_DB_POOL_SIZE": str(POOL),
        # the champion is loaded at start; no poll during the tests (the poller's own short connections)
        "SENTIMENT_MODEL_POLL_SECONDS": "3600",
    }
    with live_server(tmp, workers=WORKERS, env=env, extra_args=commands.api_proxy_args(get_settings())) as srv:
        yield srv


def _other(pred: dict) -> str:
    return "negative" if pred["label"] == "positive" else "positive"


def _rows(conn, prediction_id: str) -> list[tuple]:
    return conn.execute(
        "SELECT id, correct_label, reporter FROM feedback WHERE prediction_id = %s"
        " UNION ALL SELECT id, correct_label, reporter FROM pending_feedback WHERE prediction_id = %s ORDER BY 1",
        (prediction_id, prediction_id),
    ).fetchall()


def _made_up(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    words = ["great", "awful", "lovely", "terrible", "happy", "sad", "best", "worst", "fun", "boring"]
    return [f"{words[i % 10]} {words[(i * 7 + 3) % 10]} evening #{tag}{i} at the beach" for i in range(n)]


# ---------------------------------------------------------------- one report per prediction and reporter
def test_a_replayed_token_stores_nothing_new(server, conn, champion):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        p = c.post("/predict", json={"text": "worst concert of my life, I want my money back"}).json()
        body = {"prediction_id": p["id"], "correct_label": _other(p), "feedback_token": p["feedback_token"]}
        first = c.post("/feedback", json=body)
        assert first.status_code == 201, first.text
        fid = first.json()["id"]
        assert [r[0] for r in _rows(conn, p["id"])] == [fid]
        for _ in range(20):  # the replays that used to open a feedback_burst
            r = c.post("/feedback", json=body)
            assert (r.status_code, r.json()["id"], r.json()["correct_label"]) == (200, fid, _other(p)), r.text
        r = c.post("/feedback", json={**body, "correct_label": p["label"]})  # changing one's mind: 409
        assert r.status_code == 409, r.text
        assert r.json()["existing"]["id"] == fid and "predict the text again" in r.json()["message"]
        assert [r[0] for r in _rows(conn, p["id"])] == [fid]
        # still so once the prediction is stored and the report moved into feedback
        wait_for(lambda: conn.execute("SELECT 1 FROM feedback WHERE id = %s", (fid,)).fetchone())
        assert c.post("/feedback", json=body).json()["id"] == fid
        assert [r[0] for r in _rows(conn, p["id"])] == [fid]
        # a reviewer (no token needed) follows the same rule
        rev = bearer(make_key(get_settings(), "review"))
        rb = {"prediction_id": p["id"], "correct_label": _other(p)}
        codes = [c.post("/feedback", json=rb, headers=rev).status_code for _ in range(3)]
        assert codes == [201, 200, 200]
        assert len(_rows(conn, p["id"])) == 2  # the caller's and the reviewer's


def test_concurrent_posts_of_one_token_store_one_row(server, conn, champion):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        p = c.post("/predict", json={"text": "the new update broke everything, thanks a lot"}).json()
    body = {"prediction_id": p["id"], "correct_label": _other(p), "feedback_token": p["feedback_token"]}
    start = threading.Barrier(16)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=30) as c:  # a connection each: both workers take them
            start.wait()
            return c.post("/feedback", json=body)

    with ThreadPoolExecutor(16) as ex:
        answers = list(ex.map(post, range(16)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 15 + [201], [r.text for r in answers if r.status_code not in (200, 201)][:3]
    assert len({r.json()["id"] for r in answers}) == 1
    assert len(_rows(conn, p["id"])) == 1


def test_bursts_count_distinct_predictions(platform_env, conn):
    """Rows repeated on one prediction (data stored before the one-report rule) are one report to the
    burst guard: 25 rows of one reporter on one prediction make no burst."""
    model = fresh_model_name()
    s = settings_with(platform_env, model_name=model)
    pid = conn.execute(
        "INSERT INTO predictions (text, label, p_negative, p_positive, model_name, model_version, source)"
        " VALUES ('replayed tweet', 1, 0.2, 0.8, %s, 1, 'api') RETURNING id",
        (model,),
    ).fetchone()[0]
    for _ in range(s.feedback_burst_identity_count + 5):
        conn.execute(
            "INSERT INTO feedback (prediction_id, correct_label, reporter) VALUES (%s, 0, 'anon:10.1.1.1')", (pid,)
        )
    with conn.transaction():
        out = evaluate_burst(conn, model, s)
    assert (out["open"], out["raised"]) == (False, False), out


# ---------------------------------------------------------------- one identity cannot pause retraining
def test_one_identitys_burst_quarantines_it_and_does_not_pause_retraining(server, conn, champion):
    s = get_settings()
    assert s.model_name == champion.name
    mallory, bob, carol, dave = (
        make_key(s, "predict", "feedback", name=f"{n}-{uuid.uuid4().hex[:6]}")
        for n in ("mallory", "bob", "carol", "dave")
    )
    shared = _made_up(3)  # texts mallory, bob and carol all report (three keys: agreement, without quarantine)
    flood = _made_up(s.feedback_burst_identity_count + 2)
    with httpx.Client(base_url=server.url, timeout=60) as c:

        def predict_and_report(key: str, texts: list[str]) -> list[dict]:
            preds = c.post("/predict/batch", json={"texts": texts}, headers=bearer(key)).json()["predictions"]
            for p in preds:
                r = c.post(
                    "/feedback",
                    json={"prediction_id": p["id"], "correct_label": _other(p), "feedback_token": p["feedback_token"]},
                    headers=bearer(key),
                )
                assert r.status_code == 201, r.text
            return preds

        for key in (bob, carol):
            predict_and_report(key, shared)
        mine = predict_and_report(mallory, shared + flood)
        who = conn.execute("SELECT name, key_id FROM api_keys WHERE key_id = %s", (mallory.split("_")[1],)).fetchone()
        who = f"key:{who[0]}#{who[1]}"

        def alert():
            return conn.execute(
                "SELECT id, details, message FROM alerts WHERE rule = 'feedback_burst' AND model_name = %s"
                " AND resolved_at IS NULL AND details->'identity_sha256' ? %s",
                (s.model_name, _sha(who)),
            ).fetchone()

        ids = [p["id"] for p in mine]
        wait_for(  # every report stored (moved from pending_feedback) and the alert thread saw the burst
            lambda: (
                conn.execute("SELECT count(*) FROM feedback WHERE prediction_id = ANY(%s::uuid[])", (ids,)).fetchone()[
                    0
                ]
                == len(ids)
                and alert()
            )
        )
        alert_id, details, message = alert()
        d = check_trigger()
        assert d["reason"] != "paused_burst" and d["reason"] == "below_threshold", d
        assert details["kind"] == "identity" and details["pauses"] is False
        assert "quarantined" in message and "not paused" in message, message
        assert d["burst_alert_id"] == alert_id and d["quarantined_reports"] == len(mine), d

        # mallory's reports make no agreement: the shared texts have three keys behind them, two count
        judged = review.judge_texts(
            conn, s.model_name, review.store.reports_of_version(conn, s.model_name, champion.version), s
        )
        for text in shared:
            j = judged[review.text_key(text)]
            label = 1 - int(j.predicted)
            assert (j.status, len(j.votes[label]), len(j.keyed[label]), j.quarantined) == ("untrusted", 3, 2, 1)

        # a reviewer's accept makes the text a label, mallory's report among its supporters again
        rev = bearer(make_key(s, "review"))
        r = c.post(f"/review/{mine[0]['id']}", json={"decision": "accept"}, headers=rev)
        assert r.status_code == 201, r.text
        judged = review.judge_texts(
            conn, s.model_name, review.store.reports_of_version(conn, s.model_name, champion.version), s
        )
        j = judged[review.text_key(shared[0])]
        assert j.status == "trusted" and who in j.supporters

        # a rate burst (several identities at once) still pauses the trigger
        daves = [p["id"] for p in predict_and_report(dave, shared)]
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM feedback WHERE prediction_id = ANY(%s::uuid[])", (daves,)
                ).fetchone()[0]
                == len(daves)
            )
        )
        d = check_trigger(settings=s.model_copy(update={"feedback_burst_rate_min": 5}))
        assert d["reason"] == "paused_burst" and d["burst_alert_id"] == alert_id, d


# ---------------------------------------------------------------- key checks are bounded
def _random_key() -> str:
    return f"smk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def test_a_flood_of_random_keys_stays_within_the_pool(server, conn, champion):
    db = conn.execute("SELECT current_database()").fetchone()[0]
    peak, stop = [0], threading.Event()

    def watch() -> None:
        with conn.cursor() as cur:
            while not stop.is_set():
                n = cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'sentiment-api'",
                    (db,),
                ).fetchone()[0]
                peak[0] = max(peak[0], n)
                time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=48)) as c:

            def hit(_: int) -> int:
                return c.post("/predict", json={"text": "hello"}, headers=bearer(_random_key())).status_code

            with ThreadPoolExecutor(48) as ex:
                codes = list(ex.map(hit, range(400)))
    finally:
        stop.set()
        watcher.join()
    assert set(codes) <= {401, 503}, set(codes)
    assert codes.count(401) >= len(codes) // 2, (codes.count(401), codes.count(503))
    assert peak[0] <= WORKERS * POOL, peak[0]
    # the API still serves a real key at once
    with httpx.Client(base_url=server.url, timeout=30) as c:
        key = make_key(get_settings(), "predict")
        assert c.post("/predict", json={"text": "hello"}, headers=bearer(key)).status_code == 200


def test_unknown_keys_are_cached_briefly_and_checked_on_the_pool(platform_env):
    """A miss is remembered for api_key_negative_cache_seconds (no second lookup), then looked up again;
    the lookups run on the pool's connections."""
    with ConnectionPool(platform_env.database_url, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        cache = KeyCache(5.0, 0.3)
        cache.use_pool(lambda: pool)
        key = _random_key()
        assert cache.get(key, platform_env) is None and cache.checks == 1
        assert cache.get(key, platform_env) is None and cache.checks == 1  # from the negative cache
        time.sleep(0.35)
        assert cache.get(key, platform_env) is None and cache.checks == 2
        assert cache.get("smk_short", platform_env) is None and cache.checks == 2  # malformed: no lookup
        real = make_key(platform_env, "predict")
        ident = cache.get(real, platform_env)
        assert ident is not None and cache.checks == 3 and pool.get_stats()["connections_num"] <= 1
