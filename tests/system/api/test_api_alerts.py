"""Alerts from POST /feedback: 3 misclassification reports within 5 minutes -> exactly one alert per
burst, counted in PostgreSQL (two app instances, a restart), sent to a real local webhook and SMTP
server off the request path; a failing channel never fails the feedback request."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta

import pytest
from api_helpers import fresh_model_name, running_app, settings_with, wait_for
from api_helpers import report as send_report
from ports import refused_port
from receivers import smtp_receiver, webhook_receiver

from ml.stages.alerts.burst import burst_message, evaluate_feedback
from ml.store import predictions as store

TEXTS = [
    "I love this, best day ever",
    "so bored and sad today",
    "what a great game tonight",
    "my phone broke again",
    "thanks for the awesome party",
    "stuck in traffic, so annoyed",
    "happy birthday to my best friend",
    "worst monday ever",
    "cannot wait for the weekend",
    "I miss you so much",
]


# ---------------------------------------------------------------- local receivers (tests/system/receivers.py)
@pytest.fixture
def webhook():
    with webhook_receiver() as hook:
        yield hook


@pytest.fixture
def smtp():
    with smtp_receiver() as box:
        yield box


# ---------------------------------------------------------------- helpers
def _report_wrong(client, text):
    """A prediction, then feedback with the other label (a misclassification report)."""
    pred = client.post("/predict", json={"text": text}).json()
    client.app.state.writer.flush()  # the prediction is stored: the report goes straight into feedback
    other = "negative" if pred["label"] == "positive" else "positive"
    r = send_report(client, pred, other)
    assert r.status_code == 201, r.text
    client.app.state.alerts.join()  # the rule runs in the app's alert thread, off the request path
    return r.json()["id"]


def _settle(*clients):
    """Every prediction stored, every pending report moved, every alert evaluation done."""
    for c in clients:
        c.app.state.writer.flush()
    for c in clients:
        c.app.state.alerts.join()


def _alerts(conn, model):
    return conn.execute(
        "SELECT id, n_reports, feedback_ids, later_feedback_ids, channels, resolved_at FROM alerts"
        " WHERE rule = 'misclassification_burst' AND model_name = %s ORDER BY id",
        (model,),
    ).fetchall()


# ---------------------------------------------------------------- tests
def test_three_reports_one_alert_per_burst_across_two_apps(platform_env, publish, conn, webhook, smtp):
    url, received = webhook
    smtp_port, mails = smtp
    settings = settings_with(
        platform_env,
        model_name=fresh_model_name(),
        alert_webhook_url=url,
        alert_smtp_host="127.0.0.1",
        alert_smtp_port=smtp_port,
        alert_email_to="oncall@example.org, ml@example.org",
    )
    publish(settings)
    with running_app(settings) as c1, running_app(settings) as c2:  # two app instances, one database
        # a confirmation (the prediction was right) is not a misclassification report
        pred = c1.post("/predict", json={"text": TEXTS[0]}).json()
        assert send_report(c1, pred, pred["label"]).status_code == 201
        f1 = _report_wrong(c1, TEXTS[1])
        f2 = _report_wrong(c2, TEXTS[2])
        assert _alerts(conn, settings.model_name) == []  # 2 reports: no alert
        f3 = _report_wrong(c1, TEXTS[3])
        rows = _alerts(conn, settings.model_name)
        assert len(rows) == 1  # the 3rd raises exactly one
        alert_id, n, ids, later, _, resolved = rows[0]
        assert (n, sorted(ids), later, resolved) == (3, sorted([f1, f2, f3]), [], None)

        wait_for(lambda: received and mails)  # sent by the background thread
        assert len(received) == 1
        hook = received[0]
        assert hook["path"] == "/hooks/sentiment" and hook["content_type"] == "application/json"
        body = hook["json"]
        assert body["alert_id"] == alert_id and body["rule"] == "misclassification_burst"
        assert body["model_name"] == settings.model_name and body["threshold"] == 3 and body["window_seconds"] == 300
        assert sorted(body["feedback_ids"]) == sorted([f1, f2, f3]) and "reported wrong" in body["message"]
        assert len(mails) == 1 and sorted(mails[0]["rcpt"]) == ["ml@example.org", "oncall@example.org"]
        assert "misclassification_burst" in mails[0]["subject"] and "3 predictions" in mails[0]["body"]
        assert body["kind"] == "alert" and body["message"].startswith(
            f"3 predictions of {settings.model_name} reported"
        )

        def channels():
            got = {c["channel"]: c["status"] for c in _alerts(conn, settings.model_name)[0][4]}
            return got if len(got) == 3 else None

        assert wait_for(channels) == {"log": "sent", "webhook": "sent", "email": "sent"}

        f4 = _report_wrong(c2, TEXTS[4])  # the same burst: appended, and the alert's count and text follow
        rows = _alerts(conn, settings.model_name)
        assert len(rows) == 1 and rows[0][3] == [f4] and rows[0][1] == 4
        msg = conn.execute("SELECT message FROM alerts WHERE id = %s", (alert_id,)).fetchone()[0]
        assert msg.startswith(f"4 predictions of {settings.model_name} reported wrong in ")
    assert len(received) == 1  # no second webhook call


def test_concurrent_reports_on_two_apps_raise_one_alert(platform_env, publish, conn):
    settings = settings_with(platform_env, model_name=fresh_model_name())
    publish(settings)
    with running_app(settings) as c1, running_app(settings) as c2:
        preds = [(c, c.post("/predict", json={"text": t}).json()) for c, t in zip([c1, c2] * 4, TEXTS[:8])]

        def report(item):
            client, pred = item
            other = "negative" if pred["label"] == "positive" else "positive"
            return send_report(client, pred, other).status_code

        with ThreadPoolExecutor(8) as ex:
            assert list(ex.map(report, preds)) == [201] * 8
        _settle(c1, c2)
    rows = _alerts(conn, settings.model_name)
    assert len(rows) == 1
    assert len(rows[0][2]) + len(rows[0][3]) == 8  # every report is on the one alert


def test_window_is_counted_in_postgres_across_restarts_and_bursts(platform_env, publish, conn):
    settings = settings_with(platform_env, model_name=fresh_model_name())
    publish(settings)
    with running_app(settings) as c:
        old = _report_wrong(c, TEXTS[0])
        conn.execute("UPDATE feedback SET created_at = now() - interval '6 minutes' WHERE id = %s", (old,))
        _report_wrong(c, TEXTS[1])
        _report_wrong(c, TEXTS[2])
        assert _alerts(conn, settings.model_name) == []  # 3 reports, but only 2 within 5 minutes
    with running_app(settings) as c:  # a restarted API: the window is in PostgreSQL
        f3 = _report_wrong(c, TEXTS[3])
        rows = _alerts(conn, settings.model_name)
        assert len(rows) == 1 and f3 in rows[0][2] and old not in rows[0][2]
        # the burst ends (its reports age out of the window); the next crossing is a new alert
        conn.execute(
            "UPDATE feedback f SET created_at = f.created_at - interval '10 minutes' FROM predictions p"
            " WHERE p.id = f.prediction_id AND p.model_name = %s",
            (settings.model_name,),
        )
        conn.execute(
            "UPDATE alerts SET last_report_at = last_report_at - interval '10 minutes' WHERE model_name = %s",
            (settings.model_name,),
        )
        for t in TEXTS[4:7]:
            _report_wrong(c, t)
    rows = _alerts(conn, settings.model_name)
    assert len(rows) == 2 and rows[0][5] is not None and rows[1][5] is None


def test_failing_channel_never_fails_the_feedback_request(platform_env, publish, conn):
    with refused_port() as port:  # bound for the whole test, never listening: connections are refused
        settings = settings_with(
            platform_env,
            model_name=fresh_model_name(),
            alert_webhook_url=f"http://127.0.0.1:{port}/nobody-listens?token=s3cret",
            alert_webhook_timeout_seconds=1.0,
        )
        publish(settings)
        hook = _failing_outcome(settings, publish, conn)
    assert hook["status"] == "failed" and "ConnectError" in hook["error"]
    assert "s3cret" not in json.dumps(hook) and "nobody-listens" not in json.dumps(hook)  # the URL is redacted


def _failing_outcome(settings, publish, conn):
    with running_app(settings) as c:
        for t in TEXTS[:3]:
            _report_wrong(c, t)  # asserts 201 each time

        def outcome():
            rows = _alerts(conn, settings.model_name)
            hooks = [ch for ch in rows[0][4] if ch["channel"] == "webhook"] if rows else []
            return hooks[0] if hooks else None

        return wait_for(outcome)


def test_burst_alert_says_how_many_reports_over_what_period(platform_env, conn):
    """The reported incident: 1,497 reports in 30 s gave an alert saying "3 predictions reported wrong".
    The alert is raised at the 3rd report; every later report of the burst rewrites its count and text."""
    model = fresh_model_name()
    n_total = 1497
    conn.execute(
        "INSERT INTO predictions (text, label, p_negative, p_positive, model_name, model_version, source)"
        " SELECT 'burst tweet ' || i, 1, 0.2, 0.8, %s, 1, 'api' FROM generate_series(1, %s) i",
        (model, n_total),
    )
    pids = [
        r[0]
        for r in conn.execute(
            'SELECT id FROM predictions WHERE model_name = %s ORDER BY text COLLATE "C"', (model,)
        ).fetchall()
    ]
    t0 = conn.execute("SELECT date_trunc('second', now()) - interval '40 seconds'").fetchone()[0]
    step = 30.0 / (n_total - 1)  # the reports span exactly 30 s: t0 .. t0 + 30 s

    def report(i):  # reports in timestamp order, as the API would store them
        return conn.execute(
            "INSERT INTO feedback (prediction_id, correct_label, created_at) VALUES (%s, 0, %s) RETURNING id",
            (pids[i], t0 + timedelta(seconds=i * step)),
        ).fetchone()[0]

    s = settings_with(platform_env, model_name=model)
    outs = [evaluate_feedback(report(i), s, dispatch=False) for i in range(3)]  # each evaluated once stored
    assert [o["raised"] for o in outs] == [False, False, True]
    alert_id = outs[-1]["alert_id"]
    row = conn.execute("SELECT n_reports, message FROM alerts WHERE id = %s", (alert_id,)).fetchone()
    assert row[0] == 3 and row[1].startswith(f"3 predictions of {model} reported wrong in ")

    for i in range(3, n_total - 1):  # the rest of the burst, stored at once; evaluated by the last one
        report(i)
    last = report(n_total - 1)
    out = evaluate_feedback(last, s, dispatch=False)
    assert out["raised"] is False and out["alert_id"] == alert_id
    n, msg, first_at, last_at, resolved = conn.execute(
        "SELECT n_reports, message, first_report_at, last_report_at, resolved_at FROM alerts WHERE id = %s", (alert_id,)
    ).fetchone()
    assert (n, resolved) == (n_total, None)
    assert (last_at - first_at).total_seconds() == pytest.approx(30.0, abs=1e-3)
    assert msg.startswith(f"1,497 predictions of {model} reported wrong in 30 s (")
    assert msg == burst_message(n_total, model, first_at, last_at, 3, 300)
    assert f"{first_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} -> " in msg
    assert "alert rule: 3 reports within 300 s" in msg
    assert (
        conn.execute(
            "SELECT count(*) FROM alerts WHERE model_name = %s AND rule = 'misclassification_burst'", (model,)
        ).fetchone()[0]
        == 1
    )
    # the burst guard (rule feedback_burst) saw it too: one alert, from one (unidentified) reporter, whole burst
    [(b_n, b_msg)] = conn.execute(
        "SELECT n_reports, message FROM alerts WHERE model_name = %s AND rule = 'feedback_burst'", (model,)
    ).fetchall()
    assert b_n == n_total and "1,497 predictions reported wrong" in b_msg and "unidentified (1,497)" in b_msg


def test_a_report_stored_late_counts_in_the_burst_it_was_made_in(platform_env, conn):
    """A report on a prediction still in a worker's prediction log waits in ``pending_feedback`` and is
    moved into ``feedback`` (its own time kept) once the writer stores the prediction, which can be
    after later reports on stored predictions have raised both alerts. Both alerts then count it and
    start at it (found as 610 of 611 reports in the poisoning test under CI load)."""
    model = fresh_model_name()
    reporter = f"key:mallory#{uuid.uuid4().hex[:6]}"
    s = settings_with(platform_env, model_name=model)
    n_direct = s.feedback_burst_identity_count + 4  # enough to raise both alerts before the late one lands

    def prediction(text, pid=None):
        return conn.execute(
            "INSERT INTO predictions (id, text, label, p_negative, p_positive, model_name, model_version, source)"
            " VALUES (coalesce(%s, gen_random_uuid()), %s, 1, 0.2, 0.8, %s, 1, 'api') RETURNING id",
            (pid, text, model),
        ).fetchone()[0]

    late_pid = uuid.uuid4()  # acknowledged by the API, not written yet
    late_id, late_at = store.insert_pending_feedback(conn, late_pid, 0, None, reporter)
    for i in range(n_direct):
        fid, _, wrong = store.insert_feedback(conn, prediction(f"stored tweet {i}"), 0, None, reporter)
        assert wrong
        evaluate_feedback(fid, s, dispatch=False)

    def alert(rule):
        [row] = conn.execute(
            "SELECT id, n_reports, first_report_at, message FROM alerts WHERE rule = %s AND model_name = %s",
            (rule, model),
        ).fetchall()
        return row

    assert alert("misclassification_burst")[1] == n_direct and alert("feedback_burst")[1] == n_direct
    assert alert("feedback_burst")[2] > late_at

    prediction("the late tweet", late_pid)  # the writer stores the prediction, then moves the report
    assert store.resolve_pending_feedback(conn) == [(late_id, True)]
    evaluate_feedback(late_id, s, dispatch=False)

    for rule in ("misclassification_burst", "feedback_burst"):
        _, n, first_at, message = alert(rule)
        assert (n, first_at) == (n_direct + 1, late_at), rule
    assert f"{n_direct + 1} predictions reported wrong" in alert("feedback_burst")[3]
    assert alert("misclassification_burst")[3].startswith(f"{n_direct + 1} predictions of {model} reported wrong")
