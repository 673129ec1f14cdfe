"""Monitoring: drift reports of stored predictions against the champion's held-out predictions.

A real TF-IDF champion (20,000 real tweets, 4,000 held out = the reference) under this module's
own model name; predictions written to the real ``predictions`` table for fixed past periods:
- matching: 3,000 other tweets from the same source -> no drift;
- drifted: 3,000 tweets about one topic (work / school / exams) -> drift; 1,200 reported wrong
  -> concept drift;
- empty: no predictions -> a stored report that says so.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import realdata
from fastapi.testclient import TestClient
from ports import refused_port
from receivers import smtp_receiver, webhook_receiver
from typer.testing import CliRunner

from api.main import create_app
from ml.cli import app
from ml.data.snapshots import validate_and_snapshot
from ml.data.splits import split
from ml.platform import registry
from ml.platform.config import get_settings, reset_settings
from ml.stages import promotion, train
from ml.stages.alerts.drift_reports import deliver_report
from ml.stages.monitoring import MonitoringError
from ml.stages.monitoring.archive import get_report, list_reports, report_html_path
from ml.stages.monitoring.build import build_report
from ml.stages.monitoring.descriptors import DESCRIPTORS
from ml.stages.monitoring.period import resolve_period, run_period_end
from ml.stages.monitoring.reference import load_reference, reference_dir
from ml.stages.monitoring.wording import accuracy_statement

TOPIC = ("work", "school", "exam", "class", "office", "boss", "homework", "study")
DAY = timedelta(days=1)
MATCHING = datetime(2025, 3, 1, tzinfo=UTC)
DRIFTED = datetime(2025, 3, 2, tzinfo=UTC)
EMPTY = datetime(2025, 3, 3, tzinfo=UTC)
PER_CLASS = 10_000  # snapshot: 20,000 real tweets -> 4,000 held out = the reference
N_CURRENT = 3000  # predictions stored per period
N_WRONG = 1200  # drifted period: predictions reported wrong


def _pool() -> list[tuple[int, str]]:
    """The shared 100k real tweets, shuffled with a fixed seed (fails loudly where absent)."""
    return realdata.shuffled(realdata.SHARED_DATA, seed=7)


def _on_topic(text: str) -> bool:
    words = set(text.lower().split())
    return any(w in words for w in TOPIC)


@pytest.fixture(scope="module")
def setup(platform_env, mlflow_tracking, tmp_path_factory):
    name = f"tweet-sentiment-monitoring-{uuid.uuid4().hex[:6]}"
    mp = pytest.MonkeyPatch()  # module scope: undone in `finally`, whatever fails in between
    try:
        mp.setenv("SENTIMENT_MODEL_NAME", name)
        reset_settings()
        yield _setup(name, tmp_path_factory)
    finally:
        mp.undo()
        reset_settings()


def _setup(name, tmp_path_factory) -> dict:
    pool = _pool()
    off_topic = [r for r in pool if not _on_topic(r[1])]
    neg = [r for r in off_topic if r[0] == 0]
    pos = [r for r in off_topic if r[0] == 1]
    snapshot_rows = neg[:PER_CLASS] + pos[:PER_CLASS]
    # the same distribution as the reference: off-topic, balanced by true label, interleaved
    matching = [r for pair in zip(neg[PER_CLASS:], pos[PER_CLASS:]) for r in pair][:N_CURRENT]
    topic = [r for r in pool if _on_topic(r[1])]
    assert len(topic) >= N_CURRENT, f"only {len(topic)} on-topic real tweets"
    path = tmp_path_factory.mktemp("mon") / "tweets.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows([(4 if y else 0, t) for y, t in snapshot_rows])
    snap = validate_and_snapshot(path)
    run_id = train.train(snap.hash, "tfidf_lr")
    metrics = train.evaluate(run_id)
    version = train.register(run_id)
    decision = promotion.promote(run_id)  # the platform's own path: behavioural gate + promotion rule
    assert decision["promoted"], decision
    model = registry.load_version(version)
    s = get_settings()
    periods = {
        "matching": (MATCHING, [t for _, t in matching]),
        "drifted": (DRIFTED, [t for _, t in topic[:N_CURRENT]]),
    }
    ids: dict[str, list[str]] = {}

    with psycopg.connect(s.database_url, autocommit=True) as conn:
        for key, (start, texts) in periods.items():
            proba = model.predict_proba(texts)
            rows = [
                (
                    t,
                    int(p[1] >= 0.5),
                    float(p[0]),
                    float(p[1]),
                    name,
                    version,
                    "api" if i % 3 else "batch",
                    start + timedelta(seconds=25 * i + 1),
                )
                for i, (t, p) in enumerate(zip(texts, proba))
            ]
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY predictions (text, label, p_negative, p_positive, model_name, model_version, source,"
                    " created_at) FROM STDIN"
                ) as cp:
                    for r in rows:
                        cp.write_row(r)
            ids[key] = [
                r[0]
                for r in conn.execute(
                    "SELECT id::text FROM predictions WHERE model_name=%s AND created_at >= %s AND created_at < %s"
                    " ORDER BY created_at",
                    (name, start, start + DAY),
                ).fetchall()
            ]

        # feedback: matching window 10 reported wrong + 10 confirmed; drifted window 1,200 reported wrong
        def give(pid_list, wrong):
            for pid in pid_list:
                label = conn.execute("SELECT label FROM predictions WHERE id=%s", (pid,)).fetchone()[0]
                conn.execute(
                    "INSERT INTO feedback (prediction_id, correct_label) VALUES (%s, %s)",
                    (pid, 1 - label if wrong else label),
                )

        give(ids["matching"][:10], wrong=True)
        give(ids["matching"][10:20], wrong=False)
        give(ids["drifted"][:N_WRONG], wrong=True)
        give(ids["drifted"][:1], wrong=True)  # a second report on the same prediction counts once
    n_ref = len(split(snap.load(), s.test_size, s.seed)[1])
    return {"name": name, "version": version, "accuracy": metrics["accuracy"], "settings": s, "n_ref": n_ref}


@pytest.fixture(scope="module")
def matching_report(setup):
    return build_report(start=MATCHING, end=MATCHING + DAY)


def test_periods():
    from airflow.sdk.api.datamodels._generated import DagRunType

    a, b = resolve_period(end="2025-03-02T00:00:00", hours=6)
    assert (a.isoformat(), b.isoformat()) == ("2025-03-01T18:00:00+00:00", "2025-03-02T00:00:00+00:00")
    a, b = resolve_period(start="2025-03-01T00:00:00+02:00")
    assert (a.hour, (b - a).total_seconds()) == (22, 24 * 3600)
    nightly = datetime(2025, 3, 2, tzinfo=UTC)
    assert run_period_end(None, DagRunType.SCHEDULED, nightly) == nightly.isoformat()
    assert run_period_end(None, DagRunType.MANUAL, nightly) is None  # manual: up to now
    assert run_period_end("2025-01-01", DagRunType.SCHEDULED, nightly) == "2025-01-01"


def test_matching_period_has_no_drift(setup, matching_report, conn):
    r = matching_report
    assert r["status"] == "ok" and r["drift_detected"] is False, r["verdict"]
    assert r["verdict"].startswith("No drift")
    assert r["current"]["rows"] == r["current"]["rows_in_period"] == N_CURRENT
    assert r["current"]["by_source"] == {"api": 2000, "batch": 1000}
    assert r["compared_version"] == setup["version"] and r["current"]["not_compared"] == {}
    assert r["current"]["rows_of_version"] == N_CURRENT and r["current"]["sampled"] is False
    assert r["reference"]["rows"] == setup["n_ref"] and r["reference_version"] == setup["version"]
    assert r["reference"]["vocabulary_source"] == "model"
    assert r["tests"].startswith("distance")
    for key in ("prediction_label", "probability", "text_descriptors", "raw_text"):
        assert r["metrics"][key]["detected"] is False, (key, r["metrics"][key])
    assert r["drifted_columns"]["count"] == 0 and r["drifted_columns"]["of"] == 10
    fb = r["feedback"]
    assert (fb["with_feedback"], fb["reported_wrong"], fb["confirmed_right"]) == (20, 10, 10)
    assert fb["live_accuracy_upper_bound"] == pytest.approx(1 - 10 / N_CURRENT)
    assert fb["feedback_accuracy"] == 0.5
    assert fb["training_accuracy"] == pytest.approx(setup["accuracy"])
    assert fb["concept_drift"] is False
    # files and the stored row
    html = open(r["files"]["html"], encoding="utf-8").read()
    assert len(html) > 100_000 and "oov_share" in html and "p_positive" in html
    # the verdict block opens the page, before Evidently's root element
    block = html[html.index("<body>") : html.index('id="root_')]
    assert "id='sentiment-verdict' data-status='ok'" in block and f"data-version='{setup['version']}'" in block
    assert "NO DRIFT" in block and f"3,000 of v{setup['version']}&#x27;s 3,000 predictions compared" in block
    # build_report alone neither alerts nor retrains; once delivered (another test, any order): no drift
    assert "nothing: built outside the monitoring DAG" in block or "nothing: no drift" in block
    assert json.load(open(r["files"]["json"]))["metrics"]
    assert json.load(open(r["files"]["summary"]))["id"] == r["id"]
    row = conn.execute(
        "SELECT status, drift_detected, n_current, n_reference, n_feedback, concept_drift, verdict"
        " FROM drift_reports WHERE id=%s",
        (r["id"],),
    ).fetchone()
    assert row == ("ok", False, N_CURRENT, setup["n_ref"], 20, False, r["verdict"])
    assert get_report(r["id"])["metrics"] == r["metrics"]
    assert str(report_html_path(r["id"])) == r["files"]["html"]
    assert get_report("nope") is None and report_html_path("../../etc") is None


def test_reference_is_cached_per_champion_version(setup, matching_report):
    ref_dir = reference_dir(setup["version"])
    meta = json.loads((ref_dir / "meta.json").read_text())
    assert meta["rows"] == meta["held_out_rows"] == setup["n_ref"] and meta["version"] == setup["version"]
    mtime = (ref_dir / "reference.parquet").stat().st_mtime_ns
    frame, meta2, vocab = load_reference()
    assert (ref_dir / "reference.parquet").stat().st_mtime_ns == mtime and meta2 == meta
    assert len(frame) == setup["n_ref"] and len(vocab) == meta["vocabulary_size"] > 1000
    assert set(DESCRIPTORS) <= set(frame.columns)


def test_drifted_period_says_drift_and_concept_drift(setup, conn):
    r = build_report(start=DRIFTED.isoformat(), hours=24)
    assert r["status"] == "drift" and r["drift_detected"] is True
    assert r["verdict"].startswith("DRIFT in") and "raw text" in r["verdict"] and "CONCEPT DRIFT" in r["verdict"]
    assert r["metrics"]["raw_text"]["detected"] is True
    assert r["metrics"]["raw_text"]["score"] > 0.7  # ROC AUC of the reference-vs-current classifier
    assert r["metrics"]["text_descriptors"]["columns"]["oov_share"]["score"] > 0.1
    assert r["drifted_columns"]["share"] >= 0.3
    fb = r["feedback"]
    assert fb["reported_wrong"] == fb["with_feedback"] == N_WRONG
    assert fb["live_accuracy_upper_bound"] == pytest.approx(1 - N_WRONG / N_CURRENT)
    assert fb["concept_drift"] is True
    stored = conn.execute(
        "SELECT status, concept_drift, live_accuracy_upper_bound FROM drift_reports WHERE id=%s", (r["id"],)
    ).fetchone()
    assert stored[:2] == ("drift", True) and stored[2] == pytest.approx(1 - N_WRONG / N_CURRENT)


def test_empty_period_is_a_stored_empty_report(setup, conn):
    r = build_report(start=EMPTY, end=EMPTY + DAY)
    assert r["status"] == "empty" and r["drift_detected"] is False
    assert r["verdict"].startswith("EMPTY") and r["current"]["rows"] == 0
    assert r["reference_version"] == setup["version"]
    page = open(report_html_path(r["id"]), encoding="utf-8").read()
    assert "No predictions in this period" in page and "<pre>" not in page and "<script" not in page
    assert "id='sentiment-verdict' data-status='empty'" in page and "EMPTY" in page
    assert "no predictions in this period" in page  # the verdict block's rows line
    assert conn.execute("SELECT status, n_current FROM drift_reports WHERE id=%s", (r["id"],)).fetchone() == (
        "empty",
        0,
    )
    assert r["id"] in [x["id"] for x in list_reports(10, model_name=setup["name"])]


def test_max_rows_sample_and_small_sample_tests(setup):
    s = get_settings().model_copy(update={"monitoring_max_rows": 400})
    r = build_report(start=MATCHING, end=MATCHING + DAY, settings=s)
    assert r["current"] == {**r["current"], "rows": 400, "rows_in_period": N_CURRENT, "sampled": True}
    assert r["tests"].startswith("p-value")
    assert r["metrics"]["raw_text"]["method"] == "perc_text_content_drift"
    assert r["feedback"]["predictions"] == N_CURRENT  # the accuracy bound counts the whole period


def test_bad_period_is_a_clear_error(setup):
    with pytest.raises(MonitoringError, match="not before"):
        build_report(start=EMPTY + DAY, end=EMPTY)


def test_api_lists_and_serves_reports(setup, matching_report):
    with TestClient(create_app(setup["settings"])) as client:
        listed = client.get("/reports", params={"limit": 100})
        assert listed.status_code == 200
        mine = [x for x in listed.json() if x["id"] == matching_report["id"]]
        assert mine and mine[0]["status"] == "ok" and mine[0]["n_current"] == N_CURRENT
        one = client.get(f"/reports/{matching_report['id']}")
        assert one.status_code == 200 and one.json()["verdict"] == matching_report["verdict"]
        page = client.get(f"/reports/{matching_report['id']}/html")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert len(page.content) > 100_000
        assert client.get("/reports/no-such-report").status_code == 404
        assert client.get("/reports/no-such-report/html").status_code == 404


def test_cli_reports_lists_them(setup, matching_report):
    res = CliRunner().invoke(app, ["reports", "--limit", "100"])
    assert res.exit_code == 0 and matching_report["id"] in res.output
    res = CliRunner().invoke(app, ["monitor", "--start", (EMPTY + 2 * DAY).isoformat(), "--hours", "2"])
    assert res.exit_code == 0 and "EMPTY: no predictions" in res.output
    res = CliRunner().invoke(app, ["monitor", "--start", EMPTY.isoformat(), "--end", EMPTY.isoformat()])
    assert res.exit_code == 2 and "not before" in res.output


MATCHING_ACCURACY = (
    "at most 99.7% of the period's 3,000 predictions were right: 10 were reported wrong; "
    "unreported predictions are counted as right"
)
DRIFTED_ACCURACY = (
    "at most 60.0% of the period's 3,000 predictions were right: 1,200 were reported wrong; "
    "unreported predictions are counted as right"
)


def test_accuracy_bound_is_said_in_words(setup, matching_report):
    """The live-accuracy bound says what it means wherever it is shown: the verdict, the stored
    summary, the API (list and one report) and the Airflow plugin's report list."""
    r = matching_report
    assert r["feedback"]["accuracy_statement"] == MATCHING_ACCURACY
    assert MATCHING_ACCURACY in r["verdict"] and "live accuracy <=" not in r["verdict"]
    assert accuracy_statement(61_000, 611, 1 - 611 / 61_000) == (
        "at most 99.0% of the period's 61,000 predictions were right: 611 were reported wrong; "
        "unreported predictions are counted as right"
    )
    assert accuracy_statement(3000, 1, None).startswith("at most 99.97% ")  # never "100.0%" with an error
    with TestClient(create_app(setup["settings"])) as client:
        one = client.get(f"/reports/{r['id']}").json()
        assert one["feedback"]["accuracy_statement"] == MATCHING_ACCURACY and MATCHING_ACCURACY in one["verdict"]
        mine = [x for x in client.get("/reports", params={"limit": 500}).json() if x["id"] == r["id"]]
        assert mine and mine[0]["accuracy_statement"] == MATCHING_ACCURACY
    plugins = Path(__file__).resolve().parents[2] / "plugins"
    spec = importlib.util.spec_from_file_location("_plugin_for_wording", plugins / "sentiment_platform_plugin.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    plugin.app.dependency_overrides[plugin.require_airflow_login] = lambda: None  # a logged-in viewer
    page = TestClient(plugin.app).get("/reports", params={"limit": 500})
    assert page.status_code == 200 and html.escape(MATCHING_ACCURACY) in page.text


def _drift_alerts(conn, name):
    return conn.execute(
        "SELECT id, n_reports, message, details, channels, resolved_at FROM alerts"
        " WHERE rule = 'drift' AND model_name = %s ORDER BY id",
        (name,),
    ).fetchall()


def test_report_goes_to_webhook_and_smtp_and_drift_raises_one_alert(setup, matching_report, conn):
    """A real webhook receiver and a real SMTP server (aiosmtpd), both started here on port 0."""
    with webhook_receiver() as (url, received), smtp_receiver() as (smtp_port, mails):
        s = get_settings().model_copy(
            update={
                "alert_webhook_url": url,
                "alert_smtp_host": "127.0.0.1",
                "alert_smtp_port": smtp_port,
                "report_recipients": "ml-team@example.org",
                "alert_email_to": "oncall@example.org",
                "public_api_url": "https://sentiment.example.org/",
            }
        )
        drifted = build_report(start=DRIFTED, end=DRIFTED + DAY, settings=s)
        out = deliver_report(drifted["id"], settings=s)
        link = f"https://sentiment.example.org/reports/{drifted['id']}/html"

        # the webhook: the report's digest (kind drift_report), then the drift alert (kind alert)
        kinds = [x["json"]["kind"] for x in received]
        assert kinds == ["drift_report", "alert"], kinds
        d = received[0]["json"]
        assert (d["report_id"], d["model_name"], d["status"], d["verdict"]) == (
            drifted["id"],
            setup["name"],
            "drift",
            "DRIFT",
        )
        assert "raw text" in d["drifted_signals"] and any("concept drift" in x for x in d["drifted_signals"])
        assert (d["predictions"], d["predictions_compared"], d["reported_wrong"]) == (N_CURRENT, N_CURRENT, N_WRONG)
        assert d["accuracy"] == DRIFTED_ACCURACY
        assert 0.5 < d["estimated_accuracy"] < 1 and "CBPE" in d["estimated_accuracy_status"]
        assert d["report_url"] == link and d["summary_url"] == link[: -len("/html")]
        retr = d["retraining"]
        assert isinstance(retr["reports"], int) and retr["threshold"] >= 1
        assert f"retraining threshold {retr['threshold']:,}" in retr["text"]
        a = received[1]["json"]
        assert a["rule"] == "drift" and a["model_name"] == setup["name"] and a["alert_id"] == out["alert"]["alert_id"]
        assert a["message"].startswith("DRIFT in ") and link in a["message"] and d["alert_id"] == a["alert_id"]

        # e-mail: the report to report_recipients, the alert to alert_email_to
        by_rcpt = {m["rcpt"][0]: m for m in mails}
        assert sorted(by_rcpt) == ["ml-team@example.org", "oncall@example.org"], mails
        rep = by_rcpt["ml-team@example.org"]
        assert rep["subject"].startswith(f"[sentiment] drift report {setup['name']} 2025-03-03: DRIFT in ")
        for line in (
            "Verdict: DRIFT in ",
            "Predictions in the period: 3,000 (3,000 compared)",
            "Reported wrong: 1,200",
            f"Accuracy: {DRIFTED_ACCURACY}",
            f"Estimated accuracy (label-free): {d['estimated_accuracy']:.1%}",
            f"Full report: {link}",
            f"retraining threshold {retr['threshold']:,}",
        ):
            assert line in rep["body"], (line, rep["body"])
        assert "ALERT drift" in by_rcpt["oncall@example.org"]["subject"]

        # stored: every channel's outcome on the report and on the alert
        stored = get_report(drifted["id"])
        assert {c["channel"]: c["status"] for c in stored["delivery"]} == {
            "log": "sent",
            "webhook": "sent",
            "email": "sent",
        }
        rows = _drift_alerts(conn, setup["name"])
        assert len(rows) == 1 and rows[0][5] is None and rows[0][1] == 1
        # what the platform did: in the stored summary and in the saved page's verdict block
        assert stored["action"]["kind"] == "alert" and stored["action"]["alert_id"] == out["alert"]["alert_id"]
        page = open(report_html_path(drifted["id"]), encoding="utf-8").read()
        assert f"alert: drift alert #{out['alert']['alert_id']} raised and sent" in page[: page.index('id="root_')]
        assert {c["channel"]: c["status"] for c in rows[0][4]} == {"log": "sent", "webhook": "sent", "email": "sent"}

        # a second drift report: the same open alert counts it, nothing new is raised or sent as an alert
        again = build_report(start=DRIFTED, end=DRIFTED + DAY, settings=s)
        out2 = deliver_report(again["id"], settings=s)
        assert out2["alert"]["continued"] and not out2["alert"]["raised"]
        rows = _drift_alerts(conn, setup["name"])
        assert len(rows) == 1 and rows[0][1] == 2 and rows[0][3]["report_ids"] == [drifted["id"], again["id"]]
        assert "drift in 2 reports in a row" in rows[0][2]
        assert [x["json"]["kind"] for x in received] == ["drift_report", "alert", "drift_report"]

        # a report without drift resolves it; the report itself still goes out
        out3 = deliver_report(matching_report["id"], settings=s)
        assert out3["alert"]["resolved"] and out3["status"] == "ok"
        assert get_report(matching_report["id"])["action"]["kind"] == "nothing"
        assert "nothing: no drift, drift alert #" in open(matching_report["files"]["html"], encoding="utf-8").read()
        assert _drift_alerts(conn, setup["name"])[0][5] is not None
        assert received[-1]["json"]["kind"] == "drift_report" and received[-1]["json"]["verdict"] == "NO DRIFT"
        assert received[-1]["json"]["accuracy"] == MATCHING_ACCURACY and len(mails) == 4


def test_failing_channels_never_fail_the_report(setup, matching_report):
    with refused_port() as dead:
        s = get_settings().model_copy(
            update={
                "alert_webhook_url": f"http://127.0.0.1:{dead}/hook/s3cret-token",
                "alert_webhook_timeout_seconds": 1.0,
                "alert_smtp_host": "127.0.0.1",
                "alert_smtp_port": dead,
                "report_recipients": "ml-team@example.org",
            }
        )
        out = deliver_report(matching_report["id"], settings=s)
    got = {c["channel"]: c for c in out["channels"]}
    assert got["log"]["status"] == "sent"
    assert got["webhook"]["status"] == "failed" and "ConnectError" in got["webhook"]["error"]
    assert got["email"]["status"] == "failed" and "Connection refused" in got["email"]["error"]
    stored = get_report(matching_report["id"])["delivery"]
    assert "s3cret" not in json.dumps(stored)  # the webhook URL is redacted in the record
    assert [c["status"] for c in stored[-3:]] == ["sent", "failed", "failed"]


@pytest.mark.slow
def test_monitoring_dag_stores_and_delivers_a_report(airflow_cli, setup, conn):
    conf = json.dumps({"start": MATCHING.isoformat(), "end": (MATCHING + DAY).isoformat()})
    with webhook_receiver() as (url, received), smtp_receiver() as (smtp_port, mails):
        res = airflow_cli(
            "dags",
            "test",
            "sentiment_monitoring",
            "-c",
            conf,
            extra_env={
                "SENTIMENT_MODEL_NAME": setup["name"],
                "SENTIMENT_ALERT_WEBHOOK_URL": url,
                "SENTIMENT_ALERT_SMTP_HOST": "127.0.0.1",
                "SENTIMENT_ALERT_SMTP_PORT": str(smtp_port),
                "SENTIMENT_REPORT_RECIPIENTS": "ml-team@example.org",
                "SENTIMENT_PUBLIC_API_URL": "http://api.test:8000",
            },
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        row = conn.execute(
            "SELECT id, status, n_current, airflow_run_id, summary->'delivery', summary->'action', html_path"
            " FROM drift_reports"
            " WHERE model_name=%s AND airflow_run_id IS NOT NULL ORDER BY created_at DESC LIMIT 1",
            (setup["name"],),
        ).fetchone()
        assert row is not None and row[1:3] == ("ok", N_CURRENT) and row[3].startswith("manual__")
        assert {c["channel"]: c["status"] for c in row[4]} == {"log": "sent", "webhook": "sent", "email": "sent"}
        reports = [x["json"] for x in received if x["json"]["kind"] == "drift_report"]
        assert len(reports) == 1 and reports[0]["report_id"] == row[0] and reports[0]["verdict"] == "NO DRIFT"
        assert reports[0]["predictions"] == N_CURRENT and reports[0]["accuracy"] == MATCHING_ACCURACY
        assert reports[0]["report_url"] == f"http://api.test:8000/reports/{row[0]}/html"
        assert reports[0]["retraining"]["threshold"] >= 1  # check_retraining's decision, passed on
        # what the platform did (no drift: no alert; the retraining check's decision) is in the summary and
        # has replaced the verdict block's "pending" line in the saved page
        action = row[5]
        assert action["kind"] in ("nothing", "retraining") and action["alert"] in (None, "resolved")
        assert action["retraining_triggered"] == reports[0]["retraining"]["triggered"]
        page = open(row[6], encoding="utf-8").read()
        block = html.unescape(page[: page.index('id="root_')])
        assert action["text"] in block and "pending:" not in block
        assert len(mails) == 1 and mails[0]["rcpt"] == ["ml-team@example.org"]
        assert "Verdict: NO DRIFT" in mails[0]["body"] and f"/reports/{row[0]}/html" in mails[0]["body"]
