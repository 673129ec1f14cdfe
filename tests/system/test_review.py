"""Labels the loop can trust (ml/stages/review.py) and the review queue (api/routes/review.py), for real:
a real champion, its predictions of real tweets in PostgreSQL, reports from several identities, and
reviewers' decisions through the real API with real `review` keys.

- agreement: reports from 3 keyed identities make a label; from 1 identity (however many times) they do
  not, and anonymous addresses never do;
- a reviewer's rejection wins over any agreement, and a reviewer's accept makes a label on its own;
- ``prepare`` takes trusted labels only (``trusted_training_rows``);
- the queue: reported texts and least-confident live predictions, one item per text; review keys only.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
import realdata
from fastapi.testclient import TestClient

from api.main import create_app
from api.runtime import serving
from ml.models.base import label_name
from ml.platform import registry, security
from ml.platform.config import get_settings
from ml.stages import review
from ml.stages.retraining.trigger import champion_context
from ml.store import predictions as prediction_store


@pytest.fixture
def champion(own_champion, tweets_csv):
    with own_champion(
        "tweet-sentiment-review",
        tweets_csv,
        sample_size=300,
        SENTIMENT_BEHAVIOUR_CHECKS="false",
        SENTIMENT_RATE_LIMITS_ENABLED="false",
    ) as c:
        yield c


def _predict(texts: list[str]) -> list[serving.PredictionRow]:
    """The champion's predictions of ``texts``, stored as the API stores them."""
    s = get_settings()
    champ = registry.champion(s)
    model = registry.load_version(champ.version, s)
    rows = serving.prediction_rows(texts, model.predict_proba(texts), s.model_name, champ.version)
    with psycopg.connect(s.database_url, autocommit=True) as c:
        prediction_store.copy_rows(c, rows)
    return rows


def _report(conn, row, label: int, *reporters: str) -> list[int]:
    return [
        conn.execute(
            "INSERT INTO feedback (prediction_id, correct_label, reporter) VALUES (%s, %s, %s) RETURNING id",
            (row.id, label, who),
        ).fetchone()[0]
        for who in reporters
    ]


def _key(*scopes: str) -> tuple[dict[str, str], str]:
    key, row = security.create_key(f"t-{uuid.uuid4().hex[:8]}", list(scopes), get_settings(), created_by="tests")
    return {"Authorization": f"Bearer {key}"}, f"key:{row['name']}#{row['key_id']}"


def _pending(conn):
    ctx = champion_context()
    return review.pending(conn, ctx.model_name, ctx.version, ctx.trained_at, 10, get_settings())


def test_three_identities_make_a_label_one_does_not_and_a_reviewers_rejection_wins(champion, conn):
    tweets = [t for _, t in realdata.balanced(6, seed=5)]
    a, b, c, d = _predict(tweets[:4])
    flip = {r.id: 1 - r.label for r in (a, b, c, d)}
    ids_a = _report(conn, a, flip[a.id], "key:u1#1", "key:u2#2", "key:u3#3")
    _report(conn, b, flip[b.id], *(["key:solo#9"] * 6))  # one identity, six times
    ids_c = _report(conn, c, flip[c.id], "key:u1#1", "key:u2#2", "key:u3#3")
    _report(conn, d, flip[d.id], "key:u1#1", "key:u2#2")  # two: not enough
    # a second prediction of a's text (another caller's) reported by a fourth, anonymous identity: one item,
    # four votes, but only the three keys make the agreement (an address is no key: it only ranks the text)
    [a2] = _predict([tweets[0] + "  "])
    _report(conn, a2, flip[a.id], "anon:203.0.113.7")

    p = _pending(conn)
    assert {j.text for j in p["items"]} == {tweets[0].strip(), tweets[2].strip()}
    assert (p["reports"], p["untrusted_texts"], p["rejected_texts"]) == (2, 2, 0)
    judged = {
        j.text: j
        for j in review.judge_texts(
            conn, champion.name, review.store.reports_of_version(conn, champion.name, champion.version), get_settings()
        ).values()
    }
    ja = judged[tweets[0].strip()]
    assert (ja.status, ja.source, ja.label, len(ja.supporters)) == ("trusted", "agreement", flip[a.id], 3)
    assert len(ja.votes[flip[a.id]]) == 4 and "anon:203.0.113.7" not in ja.supporters
    assert judged[tweets[1].strip()].status == "untrusted" and judged[tweets[3].strip()].status == "untrusted"

    reviewer_headers, reviewer = _key("review")
    with TestClient(create_app(get_settings())) as client:
        r = client.post(f"/review/{c.id}", json={"decision": "reject"}, headers=reviewer_headers)
        assert r.status_code == 201, r.text
        assert (r.json()["decision"], r.json()["reviewer"], r.json()["label"]) == ("reject", reviewer, None)
        r = client.post(f"/review/{b.id}", json={"decision": "accept"}, headers=reviewer_headers)
        assert r.status_code == 201 and r.json()["label"] == label_name(flip[b.id]), r.text

    p = _pending(conn)
    assert {j.text for j in p["items"]} == {tweets[0].strip(), tweets[1].strip()}  # c rejected, b accepted
    assert p["rejected_texts"] == 1
    assert not set(ids_c) & set(p["feedback_ids"]) and set(ids_a) <= set(p["feedback_ids"])

    # prepare's selection: trusted labels only (a by agreement, b by the reviewer; never c, never d)
    consumed = conn.execute(
        "SELECT f.id, f.prediction_id, p.text, f.correct_label, f.created_at FROM feedback f"
        " JOIN predictions p ON p.id = f.prediction_id WHERE p.model_name = %s ORDER BY f.id",
        (champion.name,),
    ).fetchall()
    keep, dropped = review.trusted_training_rows(conn, champion.name, champion.version, consumed, get_settings())
    assert {row[2].strip() for row in keep} == {tweets[0].strip(), tweets[1].strip()}
    assert dropped["rejected"] == 3 and dropped["untrusted"] == 2

    # each identity counts at most feedback_max_identity_share of the threshold: one identity, 30 texts -> 1
    many = _predict([f"{t} #{i}" for i, (_, t) in enumerate(realdata.balanced(30, seed=9))])
    for row in many:
        _report(conn, row, 1 - row.label, "key:loud#1")
        conn.execute(
            "INSERT INTO reviews (model_name, text, text_sha256, prediction_id, decision, label, reviewer)"
            " VALUES (%s, %s, %s, %s, 'accept', %s, 'key:rev#1')",
            (champion.name, row.text.strip(), review.text_key(row.text), row.id, 1 - row.label),
        )
    p = _pending(conn)
    assert p["identity_cap"] == 1.0 and "key:loud#1" in p["capped_identities"]
    assert p["reports"] == 32 and p["counted"] < 4  # 30 reviewed texts of one identity count as 1


def test_review_queue_reported_and_uncertain_items_for_review_keys_only(champion, conn):
    tweets = [t for _, t in realdata.balanced(40, seed=21)]
    rows = _predict(tweets)
    reported, again = rows[0], _predict([tweets[0]])[0]  # the same text predicted twice: one item
    _report(conn, reported, 1 - reported.label, "key:x#1")
    _report(conn, again, 1 - reported.label, "key:y#2")
    review_headers, reviewer = _key("review")
    predict_headers, _ = _key("predict", "feedback")
    with TestClient(create_app(get_settings())) as client:
        assert client.get("/review/queue").status_code == 401
        assert client.get("/review/queue", headers=predict_headers).status_code == 403
        assert (
            client.post(f"/review/{reported.id}", json={"decision": "reject"}, headers=predict_headers).status_code
            == 403
        )
        q = client.get("/review/queue?limit=10", headers=review_headers).json()
        assert q["reviewer"] == reviewer
        items = q["items"]
        assert len({i["key"] for i in items}) == len(items) == 10  # deduplicated by text
        [rep] = [i for i in items if i["kind"] == "reported"]
        assert rep["text"] == tweets[0].strip() and rep["identities"] == 2
        assert rep["proposed_label"] == label_name(1 - reported.label)
        unc = [i for i in items if i["kind"] == "uncertain"]
        assert len(unc) == 9 and tweets[0].strip() not in {i["text"] for i in unc}
        conf = [i["confidence"] for i in unc]
        assert conf == sorted(conf)  # least confident first
        everything = sorted(max(r.p_positive, 1 - r.p_positive) for r in rows[1:])
        assert conf[0] == pytest.approx(everything[0], abs=1e-4)  # the least confident live prediction

        r = client.post(f"/review/{unc[0]['id']}", json={"decision": "relabel"}, headers=review_headers)
        assert r.status_code == 422 and "label" in r.json()["message"]
        r = client.post(f"/review/{uuid.uuid4()}", json={"decision": "reject"}, headers=review_headers)
        assert r.status_code == 404
        r = client.post(
            f"/review/{unc[0]['id']}", json={"decision": "relabel", "label": "positive"}, headers=review_headers
        )
        assert r.status_code == 201 and r.json()["feedback_id"], r.text
        assert conn.execute(
            "SELECT reporter, correct_label, review_id FROM feedback WHERE id = %s", (r.json()["feedback_id"],)
        ).fetchone() == (reviewer, 1, r.json()["id"])
        q2 = client.get("/review/queue?limit=10", headers=review_headers).json()
        assert unc[0]["key"] not in {i["key"] for i in q2["items"]}  # reviewed: out of the queue


def test_undo_withdraws_the_decision_and_its_report_unless_a_retraining_consumed_it(champion, conn):
    """DELETE /review/decisions/{id}: only its reviewer or an admin; the review row and the report it
    stored go together (the item returns to the queue); 409 once a retraining consumed the report.
    The queue shows the reporters' comments and the report count."""
    tweets = [t for _, t in realdata.balanced(20, seed=33)]
    rows = _predict(tweets)
    reported = rows[0]
    conn.execute(
        "INSERT INTO feedback (prediction_id, correct_label, reporter, comment) VALUES (%s, %s, %s, %s)",
        (reported.id, 1 - reported.label, "key:c#9", "<img src=x onerror=alert(1)> sarcasm!"),
    )
    _report(conn, reported, 1 - reported.label, "key:d#8")
    (a_headers, a_id), (b_headers, _), (admin, _) = _key("review"), _key("review"), _key("admin")
    with TestClient(create_app(get_settings())) as client:
        q = client.get("/review/queue?limit=10", headers=a_headers).json()
        [rep] = [i for i in q["items"] if i["kind"] == "reported"]
        assert rep["report_count"] == 2 and rep["identities"] == 2
        assert [c["comment"] for c in rep["comments"]] == ["<img src=x onerror=alert(1)> sarcasm!"]
        waiting = q["reported_waiting"] + q["uncertain_waiting"]

        r = client.post(f"/review/{rep['id']}", json={"decision": "accept"}, headers=a_headers)
        assert r.status_code == 201, r.text
        decision, feedback_id = r.json()["id"], r.json()["feedback_id"]
        assert feedback_id
        q = client.get("/review/queue?limit=10", headers=a_headers).json()
        assert rep["key"] not in {i["key"] for i in q["items"]}
        assert q["reported_waiting"] + q["uncertain_waiting"] == waiting - 1

        assert client.delete(f"/review/decisions/{decision}").status_code == 401
        r = client.delete(f"/review/decisions/{decision}", headers=b_headers)  # another reviewer
        assert r.status_code == 403 and a_id in r.json()["message"], r.text
        assert client.delete("/review/decisions/987654321", headers=a_headers).status_code == 404
        r = client.delete(f"/review/decisions/{decision}", headers=a_headers)
        assert r.status_code == 200 and r.json()["feedback_deleted"] == 1, r.text
        assert conn.execute("SELECT count(*) FROM reviews WHERE id = %s", (decision,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM feedback WHERE id = %s", (feedback_id,)).fetchone()[0] == 0
        q = client.get("/review/queue?limit=10", headers=a_headers).json()
        assert rep["key"] in {i["key"] for i in q["items"]}  # back in the queue
        assert q["reported_waiting"] + q["uncertain_waiting"] == waiting

        # decided again, and its report consumed by a retraining: the undo is refused with the reason
        r = client.post(f"/review/{rep['id']}", json={"decision": "relabel", "label": "positive"}, headers=a_headers)
        decision, feedback_id = r.json()["id"], r.json()["feedback_id"]
        retraining = conn.execute(
            "INSERT INTO retrainings (model_name, trigger_key, reason, detail) VALUES (%s, %s, 'manual', 'test')"
            " RETURNING id",
            (get_settings().model_name, f"manual:undo-{uuid.uuid4().hex}"),
        ).fetchone()[0]
        conn.execute("INSERT INTO retraining_feedback VALUES (%s, %s)", (feedback_id, retraining))
        r = client.delete(f"/review/decisions/{decision}", headers=admin)
        assert r.status_code == 409 and f"retraining #{retraining}" in r.json()["message"], r.text
        assert conn.execute("SELECT count(*) FROM reviews WHERE id = %s", (decision,)).fetchone()[0] == 1
        conn.execute("DELETE FROM retraining_feedback WHERE feedback_id = %s", (feedback_id,))
        r = client.delete(f"/review/decisions/{decision}", headers=admin)  # an admin may undo anyone's
        assert r.status_code == 200, r.text
