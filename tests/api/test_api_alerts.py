"""Alerts from POST /feedback: 3 misclassification reports within 5 minutes -> exactly one alert per
burst, counted in PostgreSQL (two app instances, a restart), sent to a real local webhook and SMTP
server off the request path; a failing channel never fails the feedback request."""
from __future__ import annotations

import json
import socket
import socketserver
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from api_helpers import fresh_model_name, running_app, settings_with, wait_for

TEXTS = ["I love this, best day ever", "so bored and sad today", "what a great game tonight", "my phone broke again",
         "thanks for the awesome party", "stuck in traffic, so annoyed", "happy birthday to my best friend",
         "worst monday ever", "cannot wait for the weekend", "I miss you so much"]


# ---------------------------------------------------------------- local receivers
class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                     "json": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    srv.received = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hooks/sentiment", srv.received
    srv.shutdown()
    srv.server_close()


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib: EHLO/HELO, MAIL, RCPT, DATA, QUIT."""

    def handle(self):
        def say(line):
            self.wfile.write(line.encode() + b"\r\n")

        say("220 localhost test SMTP")
        mail = {"rcpt": [], "data": ""}
        while True:
            line = self.rfile.readline().decode(errors="replace").rstrip("\r\n")
            if not line:
                return
            cmd = line[:4].upper()
            if cmd in ("EHLO", "HELO"):
                say("250 localhost")
            elif cmd == "MAIL":
                mail["from"] = line
                say("250 OK")
            elif cmd == "RCPT":
                mail["rcpt"].append(line)
                say("250 OK")
            elif cmd == "DATA":
                say("354 end with .")
                lines = []
                while (chunk := self.rfile.readline().decode(errors="replace")) not in (".\r\n", ".\n", ""):
                    lines.append(chunk)
                mail["data"] = "".join(lines)
                self.server.mails.append(dict(mail))
                say("250 queued")
            elif cmd == "QUIT":
                say("221 bye")
                return
            else:
                say("250 OK")


@pytest.fixture
def smtp():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    srv.daemon_threads = True
    srv.mails = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], srv.mails
    srv.shutdown()
    srv.server_close()


# ---------------------------------------------------------------- helpers
def _report_wrong(client, text):
    """A prediction, then feedback with the other label (a misclassification report)."""
    pred = client.post("/predict", json={"text": text}).json()
    other = "negative" if pred["label"] == "positive" else "positive"
    r = client.post("/feedback", json={"prediction_id": pred["id"], "correct_label": other})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _alerts(conn, model):
    return conn.execute(
        "SELECT id, n_reports, feedback_ids, later_feedback_ids, channels, resolved_at FROM alerts"
        " WHERE rule = 'misclassification_burst' AND model_name = %s ORDER BY id", (model,)).fetchall()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- tests
def test_three_reports_one_alert_per_burst_across_two_apps(platform_env, publish, conn, webhook, smtp):
    url, received = webhook
    smtp_port, mails = smtp
    settings = settings_with(platform_env, model_name=fresh_model_name(), alert_webhook_url=url,
                             alert_smtp_host="127.0.0.1", alert_smtp_port=smtp_port,
                             alert_email_to="oncall@example.org, ml@example.org")
    publish(settings)
    with running_app(settings) as c1, running_app(settings) as c2:  # two app instances, one database
        # a confirmation (the prediction was right) is not a misclassification report
        pred = c1.post("/predict", json={"text": TEXTS[0]}).json()
        assert c1.post("/feedback", json={"prediction_id": pred["id"], "correct_label": pred["label"]}).status_code == 201
        f1 = _report_wrong(c1, TEXTS[1])
        f2 = _report_wrong(c2, TEXTS[2])
        assert _alerts(conn, settings.model_name) == []  # 2 reports: no alert
        f3 = _report_wrong(c1, TEXTS[3])
        rows = _alerts(conn, settings.model_name)
        assert len(rows) == 1  # the 3rd raises exactly one
        alert_id, n, ids, later, _, resolved = rows[0]
        assert (n, sorted(ids), later, resolved) == (3, sorted([f1, f2, f3]), [], None)

        wait_for(lambda: received and mails, timeout=15)  # sent by the background thread
        assert len(received) == 1
        hook = received[0]
        assert hook["path"] == "/hooks/sentiment" and hook["content_type"] == "application/json"
        body = hook["json"]
        assert body["alert_id"] == alert_id and body["rule"] == "misclassification_burst"
        assert body["model_name"] == settings.model_name and body["threshold"] == 3 and body["window_seconds"] == 300
        assert sorted(body["feedback_ids"]) == sorted([f1, f2, f3]) and "reported wrong" in body["message"]
        assert len(mails) == 1 and len(mails[0]["rcpt"]) == 2 and "misclassification_burst" in mails[0]["data"]

        def channels():
            got = {c["channel"]: c["status"] for c in _alerts(conn, settings.model_name)[0][4]}
            return got if len(got) == 3 else None
        assert wait_for(channels, timeout=10) == {"log": "sent", "webhook": "sent", "email": "sent"}

        f4 = _report_wrong(c2, TEXTS[4])  # the same burst
        rows = _alerts(conn, settings.model_name)
        assert len(rows) == 1 and rows[0][3] == [f4]
    assert len(received) == 1  # no second webhook call


def test_concurrent_reports_on_two_apps_raise_one_alert(platform_env, publish, conn):
    settings = settings_with(platform_env, model_name=fresh_model_name())
    publish(settings)
    with running_app(settings) as c1, running_app(settings) as c2:
        preds = [(c, c.post("/predict", json={"text": t}).json()) for c, t in zip([c1, c2] * 4, TEXTS[:8])]

        def report(item):
            client, pred = item
            other = "negative" if pred["label"] == "positive" else "positive"
            return client.post("/feedback", json={"prediction_id": pred["id"], "correct_label": other}).status_code

        with ThreadPoolExecutor(8) as ex:
            assert list(ex.map(report, preds)) == [201] * 8
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
        conn.execute("UPDATE feedback f SET created_at = f.created_at - interval '10 minutes' FROM predictions p"
                     " WHERE p.id = f.prediction_id AND p.model_name = %s", (settings.model_name,))
        conn.execute("UPDATE alerts SET last_report_at = last_report_at - interval '10 minutes' WHERE model_name = %s",
                     (settings.model_name,))
        for t in TEXTS[4:7]:
            _report_wrong(c, t)
    rows = _alerts(conn, settings.model_name)
    assert len(rows) == 2 and rows[0][5] is not None and rows[1][5] is None


def test_failing_channel_never_fails_the_feedback_request(platform_env, publish, conn):
    settings = settings_with(platform_env, model_name=fresh_model_name(),
                             alert_webhook_url=f"http://127.0.0.1:{_free_port()}/nobody-listens",
                             alert_webhook_timeout_seconds=1.0)
    publish(settings)
    with running_app(settings) as c:
        for t in TEXTS[:3]:
            _report_wrong(c, t)  # asserts 201 each time

        def outcome():
            rows = _alerts(conn, settings.model_name)
            hooks = [ch for ch in rows[0][4] if ch["channel"] == "webhook"] if rows else []
            return hooks[0] if hooks else None
        hook = wait_for(outcome, timeout=15)
    assert hook["status"] == "failed" and "ConnectError" in hook["error"]
