"""Anyone can be anyone (issue 21, item 1), for real: the API under uvicorn with 2 workers, started with the
flags ``make up`` gives it (``ml.platform.startup.commands``), over the session's PostgreSQL.

- a forged ``X-Forwarded-For`` changes nothing: the identity (the stored reporter) is the socket's peer;
- it cannot bypass the per-identity predict quota (a new forged address per request still meets 429);
- three forged addresses predicting and reporting one text do not make its label trusted (and even three
  real addresses would not: agreement counts API keys only; ml/stages/review.py);
- with ``trusted_proxies`` naming the proxy, its header is honoured, and a forwarded value that is not an
  address becomes ``anon:unknown``: the reporter string is always built by the platform.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import yaml
from api_helpers import bearer, make_key, wait_for
from live import live_server

from ml.platform.config import get_settings
from ml.platform.startup import commands
from ml.stages import review

TEXT = "my flight got cancelled again, what a great airline"


def _env(tmp_path, **extra: str) -> dict[str, str]:
    return {"SENTIMENT_VAR_DIR": str(tmp_path / "var"), **extra}


def _xff(addr: str) -> dict[str, str]:
    return {"X-Forwarded-For": addr}


def test_the_launchers_never_let_uvicorn_trust_forwarded_headers(platform_env):
    """``make up`` and compose start uvicorn with --no-proxy-headers (its default trusts 127.0.0.1, and the
    API binds to loopback); the app applies ``trusted_proxies`` itself."""
    s = get_settings()
    _, argv, _ = commands.command("api", s)
    assert "--no-proxy-headers" in argv and "--proxy-headers" not in argv
    assert commands.api_proxy_args(s) == ["--no-proxy-headers"]

    compose = yaml.safe_load((Path(__file__).resolve().parents[3] / "docker-compose.yaml").read_text())
    assert "--no-proxy-headers" in compose["services"]["api"]["command"]


def test_forged_x_forwarded_for_changes_no_identity_quota_or_trust(champion, tmp_path, conn):
    s = get_settings()
    text = f"{TEXT} #{uuid.uuid4().hex[:8]}"  # this test's own: other tests report TEXT too
    reviewer = bearer(make_key(s, "review"))
    env = _env(tmp_path, SENTIMENT_RATE_LIMITS_ENABLED="true", SENTIMENT_RATE_LIMIT_PREDICT="5/minute")
    with (
        live_server(tmp_path, workers=2, env=env, extra_args=commands.api_proxy_args(s)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        # three "people" (forged addresses) predict the same text and report it as the other label
        preds = []
        for addr in ("10.0.0.1", "10.0.0.2", "<i>x</i> evil"):
            r = c.post("/predict", json={"text": text}, headers=_xff(addr))
            assert r.status_code == 200, r.text
            preds.append(r.json())
        other = "negative" if preds[0]["label"] == "positive" else "positive"
        reporters = []
        for addr, p in zip(("10.0.0.1", "10.0.0.2", "<i>x</i> evil"), preds, strict=True):
            r = c.post(
                "/feedback",
                json={"prediction_id": p["id"], "correct_label": other, "feedback_token": p["feedback_token"]},
                headers=_xff(addr),
            )
            assert r.status_code == 201, r.text
            reporters.append(r.json()["reporter"])
        assert reporters == ["anon:127.0.0.1"] * 3  # the peer, whatever the header said
        ids = [p["id"] for p in preds]

        def stored() -> list[str]:
            return [
                row[0]
                for row in conn.execute(
                    "SELECT reporter FROM feedback WHERE prediction_id = ANY(%s::uuid[])"
                    " UNION ALL SELECT reporter FROM pending_feedback WHERE prediction_id = ANY(%s::uuid[])",
                    (ids, ids),
                ).fetchall()
            ]

        assert stored() == ["anon:127.0.0.1"] * 3

        # the quota: 5 a minute for the one real caller, whatever address each request claims
        codes = [
            c.post("/predict", json={"text": f"{TEXT} {i}"}, headers=_xff(f"10.9.{i}.1")).status_code for i in range(6)
        ]
        assert codes == [200, 200] + [429] * 4, codes  # 3 of the 5 were spent above

        # the label is not trusted: one identity (and addresses never make agreement, only the queue's order)
        def queued():
            q = c.get("/review/queue?limit=50", headers=reviewer)
            assert q.status_code == 200, q.text
            return [i for i in q.json()["items"] if i["text"] == text]

        wait_for(  # the writer stored the predictions and moved the reports into feedback
            lambda: (
                conn.execute("SELECT count(*) FROM feedback WHERE prediction_id = ANY(%s::uuid[])", (ids,)).fetchone()[
                    0
                ]
                == 3
            )
        )
        [item] = queued()
        assert (item["status"], item["identities"], item["keyed_identities"]) == ("untrusted", 1, 0), item

    # the rule itself: even three real, distinct addresses agreeing make no label without a reviewer

    def report(reporter: str) -> dict:
        return {
            "feedback_id": 1,
            "prediction_id": ids[0],
            "text": TEXT,
            "reporter": reporter,
            "label": 0,
            "predicted": 1,
            "created_at": None,
            "consumed": False,
            "reviewed": False,
            "review_id": None,
            "quarantined": False,
        }

    anon = [report(f"anon:198.51.100.{i}") for i in range(1, 6)]
    [j] = review.judge(anon, {}, s).values()
    assert (j.status, len(j.votes[0])) == ("untrusted", 5)
    keys = [report(f"key:user{i}#k{i}") for i in range(3)]
    [j] = review.judge(keys, {}, s).values()
    assert (j.status, j.source) == ("trusted", "agreement")


def test_trusted_proxies_is_the_one_source_and_reporters_are_built_by_the_platform(champion, tmp_path):
    s = get_settings()
    env = _env(tmp_path, SENTIMENT_TRUSTED_PROXIES='["127.0.0.1"]')
    with (
        live_server(tmp_path, workers=2, env=env, extra_args=commands.api_proxy_args(s)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        seen = {}
        for addr in ("203.0.113.9", "<i>x</i> evil", "::ffff:198.51.100.7"):
            p = c.post("/predict", json={"text": TEXT}, headers=_xff(addr)).json()
            r = c.post(
                "/feedback",
                json={"prediction_id": p["id"], "correct_label": 0, "feedback_token": p["feedback_token"]},
                headers=_xff(addr),
            )
            assert r.status_code == 201, r.text
            seen[addr] = r.json()["reporter"]
        assert seen == {
            "203.0.113.9": "anon:203.0.113.9",  # from the trusted proxy: honoured
            "<i>x</i> evil": "anon:unknown",  # not an address: never stored as sent
            "::ffff:198.51.100.7": "anon:198.51.100.7",  # normalized
        }
