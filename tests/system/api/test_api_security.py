"""Identities, scopes, feedback tokens, quotas, lineage redaction and the admin routes: real keys in the
session's PostgreSQL (made by the function `ml keys create` calls, and by the CLI itself), real apps."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from api_helpers import POSITIVE_TEXT, bearer, fresh_model_name, make_key, running_app, settings_with, wait_for
from typer.testing import CliRunner

from ml.cli import app as cli
from ml.platform.quotas import Quotas
from ml.stages import train

TEXT = "what a lovely morning, coffee and sunshine"


def _assert_error(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"status", "message", "detail"} and body["status"] == status and body["message"]
    return body["message"]


# ---------------------------------------------------------------- keys
def test_cli_creates_a_key_once_stores_only_its_hash_lists_and_revokes_it(api_settings, champion, conn):
    runner = CliRunner()
    name = f"cli-bot-{uuid.uuid4().hex[:6]}"
    out = runner.invoke(cli, ["keys", "create", name, "--scope", "predict", "--scope", "feedback"])
    assert out.exit_code == 0, out.output
    key = out.stdout.strip().splitlines()[0]
    assert key.startswith("smk_") and len(key) > 50
    row = conn.execute(
        "SELECT key_id, key_sha256, scopes, revoked_at FROM api_keys WHERE name = %s", (name,)
    ).fetchone()
    key_id, digest, scopes, revoked = row
    assert digest == hashlib.sha256(key.encode()).hexdigest() and scopes == ["feedback", "predict"] and revoked is None
    dump = json.dumps(conn.execute("SELECT row_to_json(k) FROM api_keys k").fetchall(), default=str)
    assert key not in dump and key.split("_", 2)[2] not in dump  # never stored in plain text

    listed = runner.invoke(cli, ["keys", "list"])
    assert listed.exit_code == 0 and key_id in listed.stdout and name in listed.stdout and key not in listed.stdout
    assert runner.invoke(cli, ["keys", "create", "x", "--scope", "root"]).exit_code == 2  # unknown scope

    s = settings_with(api_settings, api_key_cache_seconds=0, anonymous_predict=False)
    with running_app(s) as client:
        assert client.post("/predict", json={"text": TEXT}, headers=bearer(key)).status_code == 200
        revoked = runner.invoke(cli, ["keys", "revoke", key_id])
        assert revoked.exit_code == 0 and key_id in revoked.stdout
        msg = _assert_error(client.post("/predict", json={"text": TEXT}, headers=bearer(key)), 401)
        assert "revoked" in msg
        assert "revoked" in runner.invoke(cli, ["keys", "list"]).stdout
        # a key with a wrong secret but a real key id, and a malformed one: 401
        forged = key[: len(key) - 4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        _assert_error(client.post("/predict", json={"text": TEXT}, headers=bearer(forged)), 401)
        _assert_error(client.post("/predict", json={"text": TEXT}, headers={"Authorization": "Basic eDp5"}), 401)


# ---------------------------------------------------------------- scopes on every state-changing endpoint
STATE_CHANGING = [
    ("/predict", {"text": TEXT}, "feedback"),
    ("/predict/batch", {"texts": [TEXT]}, "feedback"),
    ("/feedback", {"prediction_id": str(uuid.uuid4()), "correct_label": 1}, "predict"),
    ("/admin/promote", {"run_id": "0" * 32}, "review"),
    ("/admin/rollback", {}, "review"),
    ("/admin/review", {"feedback_ids": [1]}, "feedback"),
    ("/admin/retrain", {}, "review"),
]


@pytest.mark.parametrize(("path", "body", "wrong_scope"), STATE_CHANGING, ids=[p for p, _, _ in STATE_CHANGING])
def test_401_without_a_key_403_with_the_wrong_scope(api_settings, champion, path, body, wrong_scope):
    s = settings_with(api_settings, anonymous_predict=False)
    with running_app(s) as client:
        r = client.post(path, json=body)
        assert "needs an API key" in _assert_error(r, 401) and r.headers["WWW-Authenticate"] == "Bearer"
        _assert_error(client.post(path, json=body, headers=bearer("smk_000000000000_" + "x" * 43)), 401)
        msg = _assert_error(client.post(path, json=body, headers=bearer(make_key(s, wrong_scope))), 403)
        assert "lacks scope" in msg


def test_anonymous_callers_may_only_predict_and_report_on_their_own(api_settings, champion):
    with running_app(api_settings) as client:  # the default: /predict open
        for path, body, _ in STATE_CHANGING[3:]:
            _assert_error(client.post(path, json=body), 401)  # the control plane never is


# ---------------------------------------------------------------- feedback tokens
def test_feedback_needs_the_predictions_own_token(api_settings, champion, conn):
    a = make_key(api_settings, "predict", "feedback")
    b = make_key(api_settings, "predict", "feedback")
    reviewer = make_key(api_settings, "review")
    with running_app(api_settings) as client:
        anon = client.post("/predict", json={"text": TEXT}).json()
        assert anon["feedback_token"]
        batch = client.post("/predict/batch", json={"texts": [TEXT, POSITIVE_TEXT]}, headers=bearer(a)).json()
        tokens = [p["feedback_token"] for p in batch["predictions"]]
        assert all(tokens) and len(set(tokens)) == 2  # one per prediction
        mine = batch["predictions"][0]

        def fb(pred_id, token, headers=None, label=0):
            body = {"prediction_id": pred_id, "correct_label": label}
            if token is not None:
                body["feedback_token"] = token
            return client.post("/feedback", json=body, headers=headers or {})

        # without the token: refused, for an anonymous caller and for a `feedback` key
        assert "feedback_token is required" in _assert_error(fb(anon["id"], None), 403)
        _assert_error(fb(mine["id"], None, bearer(a)), 403)
        # another prediction's token, another caller's token, a forged one: refused
        _assert_error(fb(mine["id"], batch["predictions"][1]["feedback_token"], bearer(a)), 403)
        _assert_error(fb(mine["id"], mine["feedback_token"], bearer(b)), 403)  # b holds a's token
        _assert_error(fb(mine["id"], mine["feedback_token"]), 403)  # an anonymous caller holds a's token
        _assert_error(fb(anon["id"], anon["feedback_token"], bearer(a)), 403)  # a holds the anonymous one
        _assert_error(fb(mine["id"], "1700000000.AAAA", bearer(a)), 403)
        assert (
            conn.execute(
                "SELECT count(*) FROM feedback WHERE prediction_id = ANY(%s)",
                ([uuid.UUID(anon["id"]), uuid.UUID(mine["id"])],),
            ).fetchone()[0]
            == 0
        )
        # its own token: accepted, stored with the reporter
        r = fb(mine["id"], mine["feedback_token"], bearer(a))
        assert r.status_code == 201, r.text
        a_id = conn.execute("SELECT key_id, name FROM api_keys WHERE key_id = %s", (a.split("_")[1],)).fetchone()
        assert r.json()["reporter"] == f"key:{a_id[1]}#{a_id[0]}"
        r = fb(anon["id"], anon["feedback_token"])
        # TestClient's peer is "testclient", not an address: the anonymous identity is "unknown"
        assert r.status_code == 201 and r.json()["reporter"] == "anon:unknown"
        # a reviewer may report on any prediction, without a token
        r = fb(batch["predictions"][1]["id"], None, bearer(reviewer), label=1)
        assert r.status_code == 201 and r.json()["reporter"].startswith("key:")
        stored = wait_for(
            lambda: conn.execute("SELECT reporter FROM feedback WHERE id = %s", (r.json()["id"],)).fetchone()
        )  # lands with its prediction
        assert stored[0] == r.json()["reporter"]


# ---------------------------------------------------------------- quotas
def test_quota_429_with_retry_after_counted_across_two_app_instances(api_settings, champion):
    s = settings_with(api_settings, rate_limit_predict="5/minute", rate_limit_feedback="2/minute")
    k, other = make_key(s, "predict", "feedback"), make_key(s, "predict")
    with running_app(s) as c1, running_app(s) as c2:  # two API instances, one PostgreSQL
        preds = [c.post("/predict", json={"text": TEXT}, headers=bearer(k)) for c in (c1, c2, c1, c2)]
        assert [r.status_code for r in preds] == [200] * 4
        assert c2.post("/predict/batch", json={"texts": [TEXT]}, headers=bearer(k)).status_code == 200  # the 5th
        for c in (c1, c2):
            r = c.post("/predict", json={"text": TEXT}, headers=bearer(k))
            assert "rate limit exceeded" in _assert_error(r, 429)
            assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert c1.post("/predict", json={"text": TEXT}, headers=bearer(other)).status_code == 200  # per identity
        big = c1.post("/predict/batch", json={"texts": [TEXT] * 6}, headers=bearer(other))
        assert "exceeds" in _assert_error(big, 429) and big.headers["Retry-After"]
        # feedback: 2 a minute per identity, whichever instance takes them (a repeat of one report is
        # answered 200, nothing stored, and still costs a unit)
        pred = preds[0].json()
        for c, code in ((c1, 201), (c2, 200)):
            assert (
                c.post(
                    "/feedback",
                    json={"prediction_id": pred["id"], "correct_label": 0, "feedback_token": pred["feedback_token"]},
                    headers=bearer(k),
                ).status_code
                == code
            )
        r = c1.post(
            "/feedback",
            json={"prediction_id": pred["id"], "correct_label": 0, "feedback_token": pred["feedback_token"]},
            headers=bearer(k),
        )
        _assert_error(r, 429)
        assert int(r.headers["Retry-After"]) >= 1


def test_quota_pre_aggregation_bounds_the_overshoot_and_saves_round_trips(api_settings):
    """Each process admits up to rate_limit_local_share of a limit on its own: two "processes" (two
    Quotas on one PostgreSQL) admit the limit and at most one allowance each beyond it, with a small
    fraction of the round trips; a refused key is refused locally; small limits stay exact."""
    s = settings_with(api_settings, rate_limit_predict="1000/minute", rate_limit_feedback="30/minute")
    assert s.rate_limit_local_share == 0.02  # allowance: 20 units per process for 1000/minute
    procs = [Quotas(s), Quotas(s)]
    trips = [0]
    for q in procs:  # count the statements that reach the shared counter (the real storage runs them)
        incr = q.storage.incr

        def counted(*a, _incr=incr, **kw):
            trips[0] += 1
            return _incr(*a, **kw)

        q.storage.incr = counted
    who = f"caller-{uuid.uuid4().hex[:8]}"
    admitted = sum(procs[i % 2].hit("predict", who) is None for i in range(1200))
    assert 1000 <= admitted <= 1000 + 2 * 20, admitted
    assert trips[0] < 1200 / 5, trips[0]  # most hits were admitted (or refused) without a round trip
    before = trips[0]
    refusals = [procs[i % 2].hit("predict", who) for i in range(50)]
    assert all(r is not None and 1 <= r.retry_after <= 60 for r in refusals)
    assert trips[0] == before  # refused locally until the window resets
    # the event loop's path (api/auth.py): no I/O; "..." (ask the store) for a new key or a spent allowance
    fresh = f"caller-{uuid.uuid4().hex[:8]}"
    q = procs[0]
    assert q.hit_nowait("predict", fresh) is ...  # never seen: the store must be asked
    assert q.hit("predict", fresh) is None
    answers = [q.hit_nowait("predict", fresh) for _ in range(25)]
    assert answers[:20] == [None] * 20 and answers[20:] == [...] * 5  # 20 units of allowance after the sync
    assert q.hit_nowait("predict", who) is not None and q.hit_nowait("predict", who) is not ...  # refused locally
    # 30/minute: 30 x 0.02 < 1, no allowance: every hit is counted in the shared store, exactly
    who2 = f"caller-{uuid.uuid4().hex[:8]}"
    results = [procs[i % 2].hit("feedback", who2) for i in range(31)]
    assert [r is None for r in results] == [True] * 30 + [False]
    for q in procs:
        q.close()


# ---------------------------------------------------------------- lineage
def test_lineage_is_redacted_without_admin(api_settings, champion, admin_headers, review_headers):
    with running_app(api_settings) as client:
        pred = client.post("/predict", json={"text": "my private tweet about zanzibar"}).json()
        assert (
            client.post(
                "/feedback",
                json={
                    "prediction_id": pred["id"],
                    "correct_label": 0,
                    "comment": "secret note",
                    "feedback_token": pred["feedback_token"],
                },
            ).status_code
            == 201
        )
        url = f"/predictions/{pred['id']}/lineage"
        for headers in ({}, review_headers):
            r = client.get(url, headers=headers)
            assert r.status_code == 200, r.text
            body, raw = r.json(), r.text
            assert body["redacted"] is True and body["feedback"] == {"count": 1}
            assert body["prediction"]["id"] == pred["id"] and body["model"]["version"] == champion.version
            assert "zanzibar" not in raw and "secret note" not in raw and "text" not in body["prediction"]
            assert str(api_settings.var) not in raw and "model_uri" not in raw and "tags" not in body["model"]
            assert all("path" not in c and "source" not in c for c in body["snapshot_chain"])
        full = client.get(url, headers=admin_headers).json()
        assert "redacted" not in full and full["prediction"]["text"] == "my private tweet about zanzibar"
        _assert_error(client.get(url, headers=bearer("smk_000000000000_" + "y" * 43)), 401)


# ---------------------------------------------------------------- admin routes
def test_admin_promotes_rolls_back_and_reviews_through_the_api(platform_env, publish, snapshot, conn, admin_headers):
    s = settings_with(
        platform_env,
        model_name=fresh_model_name(),
        promotion_margin=-1.0,
        behaviour_checks=False,
        promotion_gate="margin",
    )  # the rule alone: a newer version wins
    v1 = publish(s).version
    run_id = train.train(snapshot.hash, "tfidf_lr", params={"C": 2.0}, settings=s)
    train.evaluate(run_id, s)
    v2 = train.register(run_id, s)
    reviewer = bearer(make_key(s, "review"))
    with running_app(s) as client:
        r = client.post("/admin/promote", json={"run_id": run_id}, headers=admin_headers)
        assert r.status_code == 200 and r.json()["promoted"] is True and r.json()["version"] == v2, r.text
        r = client.post("/admin/rollback", json={"reason": "bad release"}, headers=admin_headers)
        assert r.status_code == 200 and (r.json()["from_version"], r.json()["to_version"]) == (v2, v1), r.text
        assert conn.execute(
            "SELECT event, reason FROM model_events WHERE model_name = %s ORDER BY id DESC LIMIT 1", (s.model_name,)
        ).fetchone() == ("rollback", "bad release")
        _assert_error(client.post("/admin/rollback", json={}, headers=admin_headers), 409)  # v1 was the first

        pred = client.post("/predict", json={"text": TEXT}).json()
        fb = client.post(
            "/feedback",
            json={"prediction_id": pred["id"], "correct_label": 0, "feedback_token": pred["feedback_token"]},
        ).json()
        wait_for(lambda: conn.execute("SELECT 1 FROM feedback WHERE id = %s", (fb["id"],)).fetchone())
        r = client.post("/admin/review", json={"feedback_ids": [fb["id"]]}, headers=reviewer)
        assert r.status_code == 200 and r.json()["reviewed"] == 1
        assert conn.execute("SELECT reviewed, reviewed_by FROM feedback WHERE id = %s", (fb["id"],)).fetchone() == (
            True,
            r.json()["reviewer"],
        )
        # no Airflow in this test: the manual retraining says so, and nothing is triggered
        r = client.post("/admin/retrain", json={"note": "new slang"}, headers=admin_headers)
        assert "nothing was triggered" in _assert_error(r, 503)
