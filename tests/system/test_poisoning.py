"""Poisoning, for real: one identity (a real API key with `predict` + `feedback`) asks the real API
for predictions of a few hundred made-up tweets and reports every one of them as the other label,
with the feedback tokens the API gave it, as fast as it can (quotas off: "unlimited reports").

What must hold (README "The closed loop", ml/stages/review.py, ml/stages/alerts/burst.py rule feedback_burst):
- the burst guard raises ONE `feedback_burst` alert naming the identity, the number of reports and
  the period, its count following the burst; it quarantines that identity's reports but does not
  pause the trigger (one identity must not hold retraining for everyone): the trigger answers
  `below_threshold`, the reports quarantined and counted nothing;
- replaying the reports (the same tokens again) stores nothing and counts nothing more;
- after the burst, the reports count nothing toward the threshold (one identity: not trusted; and
  capped at feedback_max_identity_share of the threshold anyway): no retraining starts;
- even a manual retraining finds no label of theirs to train on (it fails: nothing to retrain on);
- the champion is the same version and answers exactly as before, on real tweets and on the made-up ones.
"""

from __future__ import annotations

import uuid

import pytest
import realdata
from fastapi.testclient import TestClient

from api.main import create_app
from ml.platform import registry, security
from ml.platform.config import get_settings
from ml.stages.retraining import RetrainingError
from ml.stages.retraining.training_set import prepare
from ml.stages.retraining.trigger import check_trigger, threshold_for

FLOOD = 611  # the incident: 611 made-up tweets reported within 30 s by one client


@pytest.fixture
def champion(own_champion, tweets_csv):
    with own_champion(
        "tweet-sentiment-poison",
        tweets_csv,
        sample_size=300,
        SENTIMENT_BEHAVIOUR_CHECKS="false",
        SENTIMENT_RETRAINING_FEEDBACK_FRACTION="0.005",
        SENTIMENT_RATE_LIMITS_ENABLED="false",
    ) as c:
        yield c


def _made_up(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    words = ["great", "awful", "lovely", "terrible", "happy", "sad", "best", "worst", "fun", "boring"]
    return [f"{words[i % 10]} {words[(i * 7 + 3) % 10]} day #{tag}{i} with my friends" for i in range(n)]


def test_one_identity_flooding_reports_never_retrains_and_never_changes_the_champion(champion, conn):
    s = get_settings()
    assert (s.model_name, s.rate_limits_enabled) == (champion.name, False)
    key, row = security.create_key(f"mallory-{uuid.uuid4().hex[:6]}", ["predict", "feedback"], s, created_by="tests")
    who = f"key:{row['name']}#{row['key_id']}"
    auth = {"Authorization": f"Bearer {key}"}
    probe = [t for _, t in realdata.balanced(200, seed=11)]
    texts = _made_up(FLOOD)
    thr = threshold_for(champion.snapshot.n_rows, s)

    with TestClient(create_app(s)) as client:
        before = client.post("/predict/batch", json={"texts": probe + texts}).json()["predictions"]
        assert {p["model_version"] for p in before} == {champion.version}

        preds = client.post("/predict/batch", json={"texts": texts}, headers=auth).json()["predictions"]
        for p in preds:
            other = "negative" if p["label"] == "positive" else "positive"
            r = client.post(
                "/feedback",
                headers=auth,
                json={"prediction_id": p["id"], "correct_label": other, "feedback_token": p["feedback_token"]},
            )
            assert r.status_code == 201, r.text
        client.app.state.writer.flush()  # every prediction stored, every pending report moved into feedback
        client.app.state.alerts.join()  # the alert rules ran on every report
        stored = conn.execute("SELECT count(*) FROM feedback WHERE reporter = %s", (who,)).fetchone()[0]
        assert stored == FLOOD

        # replays of the same tokens: 200 with the stored report, nothing stored, the burst's count unchanged
        for p in preds[:25]:
            other = "negative" if p["label"] == "positive" else "positive"
            r = client.post(
                "/feedback",
                headers=auth,
                json={"prediction_id": p["id"], "correct_label": other, "feedback_token": p["feedback_token"]},
            )
            assert r.status_code == 200, r.text
        client.app.state.alerts.join()
        assert conn.execute("SELECT count(*) FROM feedback WHERE reporter = %s", (who,)).fetchone()[0] == FLOOD

        # the burst guard: one alert, saying how many, from whom, over what period; the identity is
        # quarantined, the trigger is not paused by one identity
        [(alert_id, n, message, details, resolved)] = conn.execute(
            "SELECT id, n_reports, message, details, resolved_at FROM alerts WHERE rule = 'feedback_burst'"
            " AND model_name = %s",
            (s.model_name,),
        ).fetchall()
        assert (n, resolved) == (FLOOD, None)
        assert f"{FLOOD} predictions reported wrong" in message and who in message and "UTC" in message
        assert "quarantined" in message and "not paused" in message, message
        assert details["identities"] == [who] and details["kind"] == "identity" and details["pauses"] is False
        d = check_trigger()
        assert not d["trigger"] and d["reason"] == "below_threshold" and f"#{alert_id}" in d["detail"], d
        assert (d["burst_alert_id"], d["quarantined_reports"], d["counted_reports"]) == (alert_id, FLOOD, 0), d

        # after the burst (its window and quiet time over): the reports count nothing, nothing retrains
        later = s.model_copy(update={"feedback_burst_window_seconds": 0.001, "feedback_burst_quiet_seconds": 0.0})
        d = check_trigger(settings=later)
        assert not d["trigger"] and d["reason"] == "below_threshold", d
        assert (d["pending_reports"], d["counted_reports"], d["untrusted_texts"]) == (0, 0, FLOOD), d
        assert conn.execute("SELECT resolved_at IS NOT NULL FROM alerts WHERE id = %s", (alert_id,)).fetchone()[0]
        assert (
            conn.execute("SELECT count(*) FROM retrainings WHERE model_name = %s", (s.model_name,)).fetchone()[0] == 0
        )
        # even a retraining asked for by hand has no label of theirs to train on
        with pytest.raises(RetrainingError, match="add nothing"):
            prepare(None, settings=later)
        assert (
            conn.execute(
                "SELECT count(*) FROM retraining_feedback rf JOIN feedback f ON f.id = rf.feedback_id"
                " WHERE f.reporter = %s",
                (who,),
            ).fetchone()[0]
            == 0
        )

        # the champion: same version, same answers
        assert registry.champion(s).version == champion.version
        after = client.post("/predict/batch", json={"texts": probe + texts}).json()["predictions"]
        assert [(p["model_version"], p["label"]) for p in after] == [(p["model_version"], p["label"]) for p in before]
    print(
        f"\npoisoning: {FLOOD} reports from {who} -> alert #{alert_id} ({n} reports, quarantined), trigger not paused, "
        f"then below_threshold 0/{thr} (untrusted {FLOOD}); retrainings started: 0; champion v{champion.version} "
        f"unchanged on {len(probe) + len(texts)} texts"
    )
