"""HTML views of the read routes and Prometheus /metrics (issue 22, items 4 and 7), on a real
``uvicorn --workers 2`` over the session's PostgreSQL.

- Each view answers HTML to a browser's ``Accept`` and the unchanged JSON otherwise, and shows the data
  of its JSON twin (the model's version and run, a batch's row count, a report's verdict, the lineage's
  run id); values escaped (a ``</script><img onerror>`` prediction text is shown as text); the same
  redactions as the JSON for anonymous callers.
- /metrics: after N predictions spread over the two workers the prediction counter has grown by N; its
  version label and ``sentiment_model_version`` match /model; refused without a key (401) and with a
  key lacking ``admin`` (403).
"""

from __future__ import annotations

import html
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from api_helpers import bearer, make_key, wait_for
from live import live_server
from prometheus_client.parser import text_string_to_metric_families
from test_browser import browser  # noqa: F401 - the chromium fixture

from ml.platform.startup import commands
from ml.stages.monitoring.archive import store_summary

pytestmark = pytest.mark.slow

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
PAYLOAD = '</script><img src=x onerror="alert(1)"> views test'


@pytest.fixture(scope="module")
def srv(api_settings, champion, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    (tmp / "prom").mkdir()
    env = {
        "SENTIMENT_MODEL_NAME": api_settings.model_name,
        "SENTIMENT_VAR_DIR": str(tmp / "var"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom"),
        "SENTIMENT_API_MAX_BODY_BYTES": "65536",
    }
    with live_server(tmp, workers=2, env=env) as server:
        server.prom = tmp / "prom"
        yield server


def _html(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/html"), r.headers["content-type"]
    assert r.headers.get("vary") == "Accept"
    assert "script-src" not in r.headers["content-security-policy"] and "<script" not in r.text.lower()
    return r.text


def _json(r: httpx.Response):
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def test_model_view_shows_the_json_version_and_run(srv, champion):
    info = _json(httpx.get(f"{srv.url}/model"))
    assert info["version"] == champion.version
    page = _html(httpx.get(f"{srv.url}/model", headers=BROWSER))
    assert f"v{info['version']}" in page and info["run_id"] in page
    assert "Champion history" in page and "Metrics" in page
    # an explicit JSON preference, or a tie, keeps the JSON
    again = _json(httpx.get(f"{srv.url}/model", headers={"Accept": "application/json, text/html;q=0.5"}))
    assert (again["version"], again["run_id"]) == (info["version"], info["run_id"])  # loaded_at: per worker


def test_batch_views_show_the_row_count_and_hide_paths_anonymously(srv, platform_env, admin_headers, tmp_path):
    batch_id = f"b-views-{uuid.uuid4().hex[:12]}"
    input_path = str(tmp_path / "secret-folder" / "input.csv")
    with psycopg.connect(platform_env.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO batches (id, input_path, input_format, input_sha256, output_path, status, model_name,"
            " model_version, rows_read, rows_scored, summary, finished_at)"
            " VALUES (%s, %s, 'csv', %s, %s, 'done', 'm', 1, 4321, 4320, %s, now())",
            (batch_id, input_path, uuid.uuid4().hex * 2, input_path + ".parquet", json.dumps({"batch_id": batch_id})),
        )
        try:
            listed = _json(httpx.get(f"{srv.url}/batches", params={"limit": 500}))
            assert next(b for b in listed if b["id"] == batch_id)["rows_read"] == 4321
            one = _json(httpx.get(f"{srv.url}/batches/{batch_id}"))
            assert one["rows_read"] == 4321 and "input_path" not in one
            for path in ("/batches?limit=500", f"/batches/{batch_id}"):
                page = _html(httpx.get(srv.url + path, headers=BROWSER))
                assert batch_id in page and "4321" in page and "secret-folder" not in page, path
            admin_page = _html(httpx.get(f"{srv.url}/batches/{batch_id}", headers={**BROWSER, **admin_headers}))
            assert "secret-folder" in admin_page
        finally:
            conn.execute("DELETE FROM batches WHERE id = %s", (batch_id,))


def test_reports_view_shows_the_verdict_escaped(srv, api_settings, platform_env, tmp_path):
    rid = f"views-{uuid.uuid4().hex[:12]}"
    verdict = f"no drift <b>{rid}</b>"
    now = datetime.now(UTC).isoformat()
    store_summary(
        {
            "id": rid,
            "created_at": now,
            "period": {"start": now, "end": now},
            "status": "ok",
            "drift_detected": False,
            "verdict": verdict,
            "model_name": api_settings.model_name,
            "reference_version": 1,
            "current": {"rows": 12, "rows_in_period": 12},
            "reference": {"rows": 100},
            "seconds": 0.1,
            "files": {"html": str(tmp_path / "r.html"), "json": str(tmp_path / "r.json")},
        },
        platform_env,
    )
    try:
        listed = _json(httpx.get(f"{srv.url}/reports", params={"limit": 500}))
        assert next(r for r in listed if r["id"] == rid)["verdict"] == verdict
        page = _html(httpx.get(f"{srv.url}/reports?limit=500", headers=BROWSER))
        assert html.escape(verdict) in page and f"<b>{rid}</b>" not in page
        assert f"/reports/{rid}/html" in page
    finally:
        with psycopg.connect(platform_env.database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM drift_reports WHERE id = %s", (rid,))


def test_lineage_view_is_a_chain_with_the_text_escaped(srv, admin_headers):
    pred = httpx.post(f"{srv.url}/predict", json={"text": PAYLOAD}, headers=admin_headers)
    assert pred.status_code == 200, pred.text
    url = f"{srv.url}/predictions/{pred.json()['id']}/lineage"
    # the other worker may hold the row in its log until its next flush (prediction_flush_seconds)
    out = _json(wait_for(lambda: (r := httpx.get(url, headers=admin_headers)).status_code == 200 and r))
    run_id = out["model"]["run_id"]
    page = _html(httpx.get(url, headers={**BROWSER, **admin_headers}))
    assert run_id in page and html.escape(PAYLOAD) in page and "<img" not in page
    for step in ("Prediction", "Model version", "Training run", "Dataset snapshot", "Retraining", "Feedback reports"):
        assert f"<h2>{step}</h2>" in page, step
    anonymous = _html(httpx.get(url, headers=BROWSER))
    assert "views test" not in anonymous and "Redacted" in anonymous


def test_chromium_opens_the_views_from_the_web_page(srv, browser):  # noqa: F811
    """The web page's links, followed by chromium (its own Accept header), lead to pages, not JSON."""
    from selenium.webdriver.common.by import By

    info = _json(httpx.get(f"{srv.url}/model"))
    browser.get(srv.url + "/")
    for text, title in (("Serving model", f"v{info['version']}"), ("Batches", "Batches"), ("Drift reports", "Drift")):
        browser.get(srv.url + "/")
        browser.find_element(By.LINK_TEXT, text).click()
        assert title in browser.title, (text, browser.title)
        assert info["run_id"] in browser.page_source if text == "Serving model" else "<h1>" in browser.page_source
        assert "<pre" not in browser.page_source[:200], "raw JSON shown"
        if shots := os.environ.get("SCREENSHOT_DIR"):  # for the note: where the pages can be seen
            browser.set_window_size(1200, 1000)
            browser.save_screenshot(str(Path(shots) / f"view-{text.lower().replace(' ', '-')}.png"))


def _scrape(srv, headers) -> dict[str, list]:
    r = httpx.get(f"{srv.url}/metrics", headers=headers)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def _predictions(metrics: dict[str, list], version: int) -> float:
    return sum(
        s.value
        for s in metrics.get("sentiment_predictions", [])
        if s.name == "sentiment_predictions_total" and s.labels["model_version"] == str(version)
    )


def test_metrics_sum_over_both_workers_and_need_admin(srv, api_settings, admin_headers, tweets):
    assert httpx.get(f"{srv.url}/metrics").status_code == 401
    assert httpx.get(f"{srv.url}/metrics", headers=bearer(make_key(api_settings, "predict"))).status_code == 403
    version = _json(httpx.get(f"{srv.url}/model"))["version"]
    before = _predictions(_scrape(srv, admin_headers), version)
    n = 0
    pids: set[str] = set()
    # a fresh connection per request (uvicorn's workers share the socket): until both workers have counted
    while n < 40 or (len(pids) < 2 and n < 400):
        r = httpx.post(f"{srv.url}/predict", json={"text": tweets[0][n % len(tweets[0])]})
        assert r.status_code == 200, r.text
        n += 1
        pids = {p.stem.rsplit("_", 1)[-1] for p in Path(srv.prom).glob("counter_*.db")}
    assert len(pids) >= 2, f"one worker answered all {n} predictions"
    assert httpx.post(f"{srv.url}/predict", content=b"x" * 70000).status_code == 413
    assert httpx.post(f"{srv.url}/feedback", json={"prediction_id": str(uuid.uuid4())}).status_code == 422
    metrics = _scrape(srv, admin_headers)
    assert _predictions(metrics, version) - before == n
    refused = {s.labels["reason"]: s.value for s in metrics["sentiment_refused"] if s.name.endswith("_total")}
    feedback = {s.labels["outcome"]: s.value for s in metrics["sentiment_feedback"] if s.name.endswith("_total")}
    assert refused["too_large"] >= 1 and feedback["422"] >= 1
    versions = {s.labels["model"]: s.value for s in metrics["sentiment_model_version"]}
    assert versions[api_settings.model_name] == version
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in metrics["sentiment_http_requests"]
        if s.name == "sentiment_http_requests_total"
    }
    assert requests[("/predict", "200")] >= n
    assert requests[("/metrics", "401")] >= 1 and requests[("/metrics", "403")] >= 1
    assert "sentiment_http_request_duration_seconds" in metrics and "sentiment_writer_lag_seconds" in metrics


def test_the_launcher_gives_the_api_a_fresh_multiprocess_folder(platform_env, tmp_path):
    """``make up``: PROMETHEUS_MULTIPROC_DIR is var/prometheus/api, emptied at every API start; MLflow
    exposes its metrics from var/prometheus/mlflow."""
    s = platform_env.model_copy(update={"var_dir": tmp_path / "var"})
    stale = tmp_path / "var" / "prometheus" / "api" / "counter_1234.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    _, _, env = commands.command("api", s)
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(stale.parent)
    assert stale.parent.is_dir() and not stale.exists()
    _, argv, _ = commands.command("mlflow", s)  # MLflow's own /metrics (prometheus-flask-exporter)
    assert argv[argv.index("--expose-prometheus") + 1] == str(tmp_path / "var" / "prometheus" / "mlflow")
