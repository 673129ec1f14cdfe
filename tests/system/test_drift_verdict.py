"""Issue 23, items 3-5: a drift report that leads with the platform's verdict, the drift history, and
the model card's plots, MLflow links, intended use and limitations.

Two real TF-IDF versions of one registered model (v1 the first champion, v2 trained on a smaller
sample of the same snapshot, then made champion); real predictions of each stored in the real
``predictions`` table for fixed past periods:
- mixed: v1 served the first 240 predictions, v2 the last 360 -> only v2's are compared, with v2's
  own reference (the rule of ml/stages/monitoring/build.py: the version serving at the period's end);
- v1 only: a period before the promotion -> v1's predictions with v1's reference, although v2 is champion now;
- empty: the plain "no predictions in this period" page with the same block.
The pages are opened in Debian's chromium (tests/system/test_browser.py's rule: skipped without it, failed
under CI=true), served by the plugin's own app under uvicorn with the login dependency overridden
(the login itself: tests/system/test_plugin_auth.py, against Airflow's api-server). Screenshots go to
var/screenshots/issue23-drift/.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import realdata
import uvicorn
from fastapi.testclient import TestClient

from api.main import create_app
from ml.platform import db, registry
from ml.platform.config import get_settings, reset_settings
from ml.stages import train
from ml.stages.monitoring.archive import get_report, history, store_summary
from ml.stages.monitoring.build import build_report
from ml.store import training_runs as training_runs_store

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
SHOTS = REPO / "var" / "screenshots" / "issue23-drift"
DAY = timedelta(days=1)
MIXED = datetime(2025, 5, 1, tzinfo=UTC)
V1_ONLY = datetime(2025, 4, 30, tzinfo=UTC)
EMPTY = datetime(2025, 5, 2, tzinfo=UTC)
N_V1, N_V2 = 240, 360


def _store_predictions(conn, name: str, model, version: int, texts: list[str], start: datetime) -> list[str]:
    proba = model.predict_proba(texts)
    with conn.cursor() as cur:
        with cur.copy(
            "COPY predictions (text, label, p_negative, p_positive, model_name, model_version, source, created_at)"
            " FROM STDIN"
        ) as cp:
            for i, (t, p) in enumerate(zip(texts, proba, strict=True)):
                cp.write_row(
                    (
                        t,
                        int(p[1] >= 0.5),
                        float(p[0]),
                        float(p[1]),
                        name,
                        version,
                        "api",
                        start + timedelta(seconds=60 * i + 1),
                    )
                )
    return [
        r[0]
        for r in conn.execute(
            "SELECT id::text FROM predictions WHERE model_name = %s AND model_version = %s AND created_at >= %s"
            " ORDER BY created_at LIMIT %s",
            (name, version, start, len(texts)),
        ).fetchall()
    ]


def _report_wrong(conn, ids: list[str]) -> None:
    for pid in ids:
        label = conn.execute("SELECT label FROM predictions WHERE id = %s", (pid,)).fetchone()[0]
        conn.execute("INSERT INTO feedback (prediction_id, correct_label) VALUES (%s, %s)", (pid, 1 - label))


@pytest.fixture(scope="module")
def two_versions(own_champion, tweets_csv, platform_env):
    with own_champion("tweet-sentiment-verdict", tweets_csv, SENTIMENT_BEHAVIOUR_CHECKS="false") as c:
        run2 = train.train(c.snapshot.hash, "tfidf_lr", sample_size=800)
        train.evaluate(run2)
        v2 = train.register(run2)
        s = get_settings()

        with db.connect(s) as conn:  # v2 serves from now on (the platform's own move; the gate is not tested here)
            training_runs_store.lock_promotions(conn, s.model_name)
            digest = registry.version_artifact_digest(v2, s)
            registry.move_champion(conn, v2, c.version, "promoted", "test: v2 serves", digest, s)
        texts = [t for _, t in realdata.shuffled(seed=23)][: N_V1 + N_V2 + 200]
        m1, m2 = registry.load_version(c.version), registry.load_version(v2)
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            ids1 = _store_predictions(conn, c.name, m1, c.version, texts[:N_V1], MIXED)
            ids2 = _store_predictions(conn, c.name, m2, v2, texts[N_V1 : N_V1 + N_V2], MIXED + timedelta(hours=5))
            _store_predictions(conn, c.name, m1, c.version, texts[N_V1 + N_V2 :], V1_ONLY)
            _report_wrong(conn, ids1[:5] + ids2[:3])  # 5 on v1's predictions, 3 on v2's
        yield {"name": c.name, "v1": c.version, "v2": v2, "run1": c.run_id, "run2": run2, "settings": s}


@pytest.fixture(scope="module")
def mixed_report(two_versions):
    return build_report(start=MIXED, end=MIXED + DAY)


@pytest.fixture(scope="module")
def plugin_module():
    spec = importlib.util.spec_from_file_location("sentiment_platform_plugin", PLUGINS / "sentiment_platform_plugin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.app.dependency_overrides[mod.require_airflow_login] = lambda: None  # the login: test_plugin_auth.py
    return mod


@contextmanager
def _serve(app):
    """``app`` under a real uvicorn in a thread, on a port-0 socket (as tests/system/test_browser.py)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-plugin", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextmanager
def _browser(tmp_path: Path, size: str = "1280,1000"):
    sys.path.insert(0, str(Path(__file__).parent / "security"))
    try:
        from security_browser import chromium  # noqa: PLC0415 - tests/system/security is on sys.path only for this import
    finally:
        sys.path.pop(0)
    with chromium(tmp_path / "profile") as driver:
        w, h = (int(x) for x in size.split(","))
        driver.set_window_size(w, h)
        yield driver


def _shoot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / name))


# ---------------------------------------------------------------- item 3: one version per report, the verdict block
def test_mixed_period_compares_only_the_version_serving_at_its_end(two_versions, mixed_report, conn):
    r, v1, v2 = mixed_report, two_versions["v1"], two_versions["v2"]
    assert r["compared_version"] == r["reference_version"] == v2
    assert r["reference"]["run_id"] == two_versions["run2"]  # v2's own reference, not v1's
    cur = r["current"]
    assert (cur["rows"], cur["rows_of_version"], cur["rows_in_period"]) == (N_V2, N_V2, N_V1 + N_V2)
    assert cur["by_model_version"] == {str(v1): N_V1, str(v2): N_V2}
    assert cur["not_compared"] == {str(v1): N_V1} and cur["sampled"] is False
    # the reported-wrong bound and the CBPE estimate are of v2's predictions only
    fb = r["feedback"]
    assert (fb["version"], fb["predictions"], fb["reported_wrong"]) == (v2, N_V2, 3)
    assert fb["live_accuracy_upper_bound"] == pytest.approx(1 - 3 / N_V2)
    assert r["estimate"]["rows"] == N_V2 and r["estimate"]["rows_other_versions"] == 0
    assert f"not compared: v{v1} ({N_V1})" in r["verdict"]
    stored = conn.execute(
        "SELECT reference_version, n_current, n_current_total, n_reported_wrong FROM drift_reports WHERE id = %s",
        (r["id"],),
    ).fetchone()
    assert stored == (v2, N_V2, N_V1 + N_V2, 3)


def test_a_past_period_is_compared_with_its_own_versions_reference(two_versions):
    r = build_report(start=V1_ONLY, end=V1_ONLY + DAY)
    assert registry.champion().version == two_versions["v2"]
    assert r["compared_version"] == r["reference_version"] == two_versions["v1"]
    assert r["reference"]["run_id"] == two_versions["run1"]
    assert r["current"]["rows"] == 200 and r["current"]["not_compared"] == {}


def test_saved_html_opens_with_the_verdict_block(two_versions, mixed_report, plugin_module, tmp_path):
    from selenium.webdriver.common.by import By

    r, v2 = mixed_report, two_versions["v2"]
    page = Path(r["files"]["html"]).read_text(encoding="utf-8")
    head = page[: page.index('id="root_')]
    assert head.count("id='sentiment-verdict'") == 1 and "<script" not in head[head.index("<body>") :]
    # the API serves the same file in its sandbox

    with TestClient(create_app(two_versions["settings"])) as api:
        res = api.get(f"/reports/{r['id']}/html")
        assert res.status_code == 200 and res.headers["content-security-policy"].startswith("sandbox allow-scripts")
        assert "id='sentiment-verdict'" in res.text
        hist = api.get("/reports/history")
        assert hist.status_code == 200 and r["id"] in [x["id"] for x in hist.json()]
        charts = api.get("/reports/history/html")  # where the block's link leads on the API
        assert charts.status_code == 200 and charts.text.count("<svg") == 3
        assert "script-src" not in charts.headers["content-security-policy"]
        assert f"href='../{r['id']}/html'" in charts.text
    with _serve(plugin_module.app) as base, _browser(tmp_path) as driver:
        driver.get(f"{base}/reports/{r['id']}/html")
        deadline = time.monotonic() + 30
        while not driver.find_elements(By.CSS_SELECTOR, "[id^=root_metric_] *"):
            assert time.monotonic() < deadline, "the Evidently report did not render under its CSP"
            time.sleep(0.3)
        block = driver.find_element(By.ID, "sentiment-verdict")
        root = driver.find_element(By.CSS_SELECTOR, "[id^=root_metric_]")
        assert block.is_displayed() and block.rect["height"] > 100
        assert block.rect["y"] + block.rect["height"] <= root.rect["y"] + 1, (block.rect, root.rect)
        text = block.text
        expected_head = "DRIFT" if r["status"] == "drift" else "NO DRIFT"
        assert driver.find_element(By.ID, "verdict-head").text.startswith(expected_head)
        assert f"v{v2} (reference: its own predictions on" in text
        assert f"{N_V2} of v{v2}'s {N_V2} predictions compared" in text
        assert f"not compared: v{two_versions['v1']}: {N_V1}" in text
        assert "estimated accuracy (CBPE, label-free)" in text and "95% interval" in text
        assert "3 were reported wrong" in text and "what the platform did" in text
        assert "Drift" in driver.find_element(By.TAG_NAME, "body").text
        _shoot(driver, "report-verdict-block.png")
        # the block links the drift history (../history/html: the API's page, a redirect in the plugin)
        driver.find_element(By.ID, "history-link").click()
        deadline = time.monotonic() + 20
        while not driver.current_url.endswith("/history"):
            assert time.monotonic() < deadline, driver.current_url
            time.sleep(0.2)
        assert len(driver.find_elements(By.CSS_SELECTOR, "figure svg")) == 3


def test_empty_period_renders_its_plain_page(two_versions, plugin_module, tmp_path):
    from selenium.webdriver.common.by import By

    r = build_report(start=EMPTY, end=EMPTY + DAY)
    assert r["status"] == "empty" and r["compared_version"] == two_versions["v2"]
    page = Path(r["files"]["html"]).read_text(encoding="utf-8")
    assert "<script" not in page and "<pre>" not in page
    with _serve(plugin_module.app) as base, _browser(tmp_path, "1100,600") as driver:
        driver.get(f"{base}/reports/{r['id']}/html")
        block = driver.find_element(By.ID, "sentiment-verdict")
        assert block.is_displayed() and driver.find_element(By.ID, "verdict-head").text.startswith("EMPTY")
        assert "no predictions in this period" in driver.find_element(By.ID, "verdict-rows").text
        plain = driver.find_element(By.ID, "no-predictions")
        assert plain.is_displayed() and plain.text.startswith("No predictions in this period")
        assert block.rect["y"] < plain.rect["y"]
        _shoot(driver, "report-empty-period.png")


# ---------------------------------------------------------------- item 4: drift history
def _summary(name: str, i: int, version: int, status: str = "ok") -> dict:
    end = datetime(2025, 6, 1, tzinfo=UTC) + i * DAY
    empty = status == "empty"
    rows = 0 if empty else 1000 + 100 * i
    wrong = 0 if empty else 5 + 3 * i
    return {
        "id": f"hist-{name[-6:]}-{i:02d}",
        "created_at": (end + timedelta(minutes=5)).isoformat(),
        "period": {"start": (end - DAY).isoformat(), "end": end.isoformat()},
        "model_name": name,
        "airflow_run_id": None,
        "status": status,
        "drift_detected": False,
        "verdict": f"report {i}",
        "reference_version": version,
        "compared_version": version,
        "current": {"rows": rows, "rows_in_period": rows},
        "reference": {"rows": 0 if empty else 400},
        "drifted_columns": None if empty else {"count": i % 4, "share": (i % 4) / 10, "of": 10},
        "feedback": {"predictions": rows, "with_feedback": wrong, "reported_wrong": wrong},
        "estimate": (
            {"estimated_accuracy": None, "status": "no predictions in the period"}
            if empty
            else {"estimated_accuracy": 0.78 - 0.01 * i, "standard_error": 0.01, "rows": rows, "status": "ok"}
        ),
        "seconds": 1.0,
        "files": {"html": f"/nonexistent/{i}/report.html", "json": f"/nonexistent/{i}/report.json"},
    }


def _points(page: str, series: str, version: int) -> int:
    """Markers drawn in a chart's line of one version (matplotlib's SVG: one <use> per point in its group)."""
    m = re.search(rf'<g id="{series}-v{version}">(.*?)</g>\s*</g>', page, re.S)
    return 0 if m is None else m.group(1).count("<use ")


def test_history_view_shows_a_point_per_stored_report(platform_env, plugin_module, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    name = f"tweet-sentiment-history-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("SENTIMENT_MODEL_NAME", name)
    reset_settings()
    try:
        s = get_settings()
        client = TestClient(plugin_module.app)
        empty = client.get("/history")
        assert (
            empty.status_code == 200 and empty.text.count("<svg") == 3 and _points(empty.text, "drifted_share", 1) == 0
        )
        n = 7
        for i in range(n):  # 4 nights of v1, then v2 (and one empty night: no point)
            store_summary(_summary(name, i, 1 if i < 4 else 2), s)
        store_summary(_summary(name, n, 2, status="empty"), s)
        page = client.get("/history")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src" not in csp and "img-src 'self' data:" in csp and "default-src 'none'" in csp
        for series in ("drifted_share", "estimated_accuracy", "report_rate"):
            assert (_points(page.text, series, 1), _points(page.text, series, 2)) == (4, 3), series
            assert f"<figure id='chart-{series}' data-points='{n}'>" in page.text
            assert page.text.count(f"data-series='{series}'") == n
        assert "<script" not in page.text
        # one more report: one more point, on v2's line
        store_summary(_summary(name, n + 1, 2), s)
        page = client.get("/history")
        assert _points(page.text, "report_rate", 2) == 4 and _points(page.text, "drifted_share", 1) == 4
        rows = history(name)
        assert len(rows) == n + 2 and rows[-1]["report_rate"] == pytest.approx(
            (5 + 3 * (n + 1)) / (1000 + 100 * (n + 1))
        )
        assert client.get("/history.json").json() == rows
        with _serve(plugin_module.app) as base, _browser(tmp_path, "1100,1300") as driver:
            driver.get(f"{base}/history")
            charts = driver.find_elements(By.CSS_SELECTOR, "figure svg")
            assert len(charts) == 3 and all(c.is_displayed() and c.size["height"] > 150 for c in charts)
            markers = driver.find_elements(By.CSS_SELECTOR, "g[id^='estimated_accuracy-v'] use")
            assert len(markers) == n + 1 and all(m.is_displayed() for m in markers)
            _shoot(driver, "history.png")
    finally:
        reset_settings()


# ---------------------------------------------------------------- item 5: the model card
def test_model_card_shows_plots_links_intended_use_and_metric_order(two_versions, plugin_module, tmp_path):
    from selenium.webdriver.common.by import By

    client = TestClient(plugin_module.app)
    card = client.get("/model-card.json").json()["champion"]
    assert card["version"] == two_versions["v2"]
    assert list(card["metrics"])[:5] == ["accuracy", "f1", "precision", "recall", "roc_auc"]
    assert list(card["metrics"]).index("model_size_mb") > 4 and card["metric_names"]["roc_auc"] == "ROC AUC"
    assert all("data_uri" not in p for p in card["plots"])  # the JSON names the artifacts, without the images
    assert card["weak_slices"] and {w["slice"] for w in card["weak_slices"]} >= {"short", "long"}
    page = client.get("/model-card")
    assert page.status_code == 200 and "<script" not in page.text
    html = page.text
    for artifact in ("confusion_matrix.png", "roc_curve.png"):
        m = re.search(rf"data-artifact='{re.escape(artifact)}' src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
        assert m, artifact
        png = base64.b64decode(m.group(1))
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    run2, v2, name = two_versions["run2"], two_versions["v2"], two_versions["name"]
    assert re.search(
        rf"id='mlflow-run' href='http[^']*/#/experiments/\d+/runs/{run2}\?workflowType=machine_learning'", html
    )
    assert f"/#/models/{name}/versions/{v2}?workflowType=machine_learning'" in html
    assert "id='intended-use'" in html and "id='limitations'" in html and "Sentiment140" in html
    assert "English only" in html and "positive or negative only" in html and "id='weak-slices'" in html
    assert html.index("data-metric='accuracy'") < html.index("data-metric='model_size_mb'")
    assert ">Accuracy</th>" in html and ">Model size (MB)</th>" in html
    with _serve(plugin_module.app) as base, _browser(tmp_path, "1200,1400") as driver:
        driver.get(f"{base}/model-card")
        imgs = driver.find_elements(By.CSS_SELECTOR, "img.plot")
        # confusion matrix, ROC and the reliability diagram (README "Calibrated probabilities")
        assert sorted(i.get_attribute("data-artifact") for i in imgs) == [
            "confusion_matrix.png",
            "reliability_diagram.png",
            "roc_curve.png",
        ]
        # drawn under the page's CSP (img-src data:): a blocked image has no natural size
        assert all(driver.execute_script("return arguments[0].naturalWidth", i) > 100 for i in imgs)
        assert driver.find_element(By.ID, "mlflow-run").is_displayed()
        _shoot(driver, "model-card.png")


def test_report_page_of_the_plugin_links_the_history(two_versions, mixed_report, plugin_module):
    client = TestClient(plugin_module.app)
    page = client.get("/reports")
    assert "id='history-link' href='history'" in page.text and mixed_report["id"] in page.text
    assert get_report(mixed_report["id"])["compared_version"] == two_versions["v2"]
    assert f"<td>{N_V1 + N_V2} ({N_V2} of v{two_versions['v2']} compared)</td>" in page.text
    [listed] = [x for x in client.get("/reports.json").json() if x["id"] == mixed_report["id"]]
    assert (listed["n_current_total"], listed["n_version_predictions"]) == (N_V1 + N_V2, N_V2)
    assert listed["accuracy_statement"].startswith(f"at most 99.2% of the period's {N_V2} predictions")
