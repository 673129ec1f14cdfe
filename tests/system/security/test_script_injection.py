"""Tweet text never runs as script (issue 21, item 3), in a real chromium.

Payloads (tests/system/security/security_browser.py: ``</script>``, ``"><svg onload>``, ``javascript:``,
entity tricks, U+2028) are posted through a real uvicorn API as predicted texts and as feedback
comments; a drift report is built over those predictions by the monitoring stage itself; then every
page that shows texts is opened in chromium. A payload that runs sets ``document.title`` and
requests a canary HTTP server of the test's own: neither may happen. Each page carries its
Content-Security-Policy, ``X-Frame-Options`` and ``nosniff``.

A report saved the way Evidently's own ``save_html`` writes it (as before the fix: a page whose
payload does run) is still contained by the report's CSP sandbox: no request leaves it, its origin is
opaque and it cannot read the site's cookies. The plugin's views are loaded from a real Airflow
api-server with the UI's session cookie."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from api_helpers import bearer, make_key
from ports import free_port, listens
from security_browser import canary_server, chromium, payloads, serve_champion

from ml.platform import db
from ml.platform.orchestration import airflow_env
from ml.stages.monitoring import report_html
from ml.stages.monitoring.build import build_report
from ml.store import training_runs as store
from ml.views.comparison import to_html
from ml.views.model_card import card_html, model_card

pytestmark = [pytest.mark.slow]

FILLER = 80  # more texts carrying the payloads: Evidently's text drift needs a sample


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def canary():
    with canary_server() as c:
        yield c


@pytest.fixture(scope="module")
def live(platform_env, mlflow_tracking, tweets_csv):
    with serve_champion(platform_env, tweets_csv, "tweet-sentiment-xss") as served:
        yield served


@pytest.fixture(scope="module")
def posted(live, canary, platform_env):
    """Every payload predicted (anonymously) and reported wrong with itself as the comment, plus
    ordinary tweets; all stored."""
    conn = psycopg.connect(platform_env.database_url, autocommit=True)
    base = live["base"]
    texts = payloads(canary.url)
    preds = {}
    for name, text in texts.items():
        r = httpx.post(f"{base}/predict", json={"text": text}, timeout=30)
        assert r.status_code == 200, r.text
        preds[name] = p = r.json()
        fb = httpx.post(
            f"{base}/feedback",
            json={
                "prediction_id": p["id"],
                "correct_label": "negative" if p["label"] == "positive" else "positive",
                "feedback_token": p["feedback_token"],
                "comment": text,
            },
            timeout=30,
        )
        assert fb.status_code in (200, 201, 202), fb.text
    # the period's texts differ from the reference (so Evidently's text drift shows typical examples:
    # the texts themselves) and carry the payloads
    variants = list(texts.values())
    filler = [f"{variants[i % len(variants)]} exam school homework office boss {i}" for i in range(FILLER)]
    r = httpx.post(f"{base}/predict/batch", json={"texts": filler}, timeout=60)
    assert r.status_code == 200, r.text
    ids = [p["id"] for p in preds.values()] + [p["id"] for p in r.json()["predictions"]]
    deadline = time.monotonic() + 60
    while conn.execute("SELECT count(*) FROM predictions WHERE id = ANY(%s::uuid[])", (ids,)).fetchone()[0] < len(ids):
        assert time.monotonic() < deadline, "the predictions were not stored"
        time.sleep(0.2)
    stored = {
        row[0]
        for row in conn.execute(
            "SELECT text FROM predictions WHERE id = ANY(%s::uuid[])", ([p["id"] for p in preds.values()],)
        )
    }
    conn.close()
    assert stored == set(texts.values())  # stored as sent: the pages must make them safe
    return {"texts": texts, "predictions": preds}


@pytest.fixture(scope="module")
def reports(live, posted, monkeypatch_module):
    """Two drift reports over the payload predictions: one built by the monitoring stage as it is,
    one written as Evidently's own ``save_html`` writes it (what reports saved before the fix hold)."""
    s = live["settings"]
    safe = build_report(hours=1, settings=s)
    assert safe["status"] in ("ok", "drift") and safe["current"]["rows"] >= len(posted["texts"]), safe
    monkeypatch_module.setattr(report_html, "save", lambda snapshot, path, summary=None: snapshot.save_html(str(path)))
    legacy = build_report(hours=1, settings=s)
    monkeypatch_module.undo()
    return {"safe": safe, "legacy": legacy}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-xss")) as driver:
        yield driver


def _new_hits(canary) -> list[str]:
    """The canary's requests since the last look (each check sees only its own page's)."""
    hits = list(canary.hits)
    del canary.hits[: len(hits)]
    return hits


def _assert_nothing_ran(driver, canary, where: str) -> None:
    time.sleep(1.0)  # onerror/onload handlers and their requests fire right after load
    title = driver.execute_script("return document.title")
    hits = _new_hits(canary)
    assert not title.startswith("pwned"), f"{where}: a payload ran (title {title!r}; canary: {hits})"
    assert hits == [], f"{where}: a payload reached the canary: {hits}"


def _assert_headers(r: httpx.Response, where: str, frame: str = "DENY") -> str:
    csp = r.headers.get("content-security-policy", "")
    assert csp and "default-src 'none'" in csp, f"{where}: CSP {csp!r}"
    assert r.headers.get("x-frame-options") == frame, f"{where}: {r.headers.get('x-frame-options')}"
    assert r.headers.get("x-content-type-options") == "nosniff", where
    return csp


# ---------------------------------------------------------------- the saved report file
def _data_script(page: str) -> tuple[str, str]:
    """The report's data script: from its ``<script>`` to the first ``</script`` after it, and its id."""
    m = re.search(r"<script>\s*var (metric_[0-9a-f]+) = ", page)
    assert m, "no data script"
    return page[m.end(0) - len(f"var {m.group(1)} = ") : page.index("</script", m.end(0))], m.group(1)


def _data(page: str) -> list[object]:
    """The values of the data script, decoded: fails if the script element ends before its data does."""
    block, name = _data_script(page)
    m = re.fullmatch(rf"var {name} = (.*);\s*var additional_graphs_{name} = (.*);\s*", block, flags=re.DOTALL)
    assert m, f"the data script ends inside its data: ...{block[-300:]!r}"
    return [json.loads(m.group(1)), json.loads(m.group(2))]


def test_saved_report_keeps_payloads_inside_its_data_script(reports, posted):
    page = Path(reports["safe"]["files"]["html"]).read_text(encoding="utf-8")
    block, _ = _data_script(page)
    assert "<" not in block and ">" not in block and "\u2028" not in block  # no raw </script, <!--, LS
    decoded = json.dumps(_data(page), ensure_ascii=False)  # the whole data is inside its script
    # Evidently shows the texts' words; they are there, intact once decoded
    assert any(w in decoded for w in ("onerror", "svg", "pwned")), "the report shows none of the texts"
    # what Evidently's own save_html wrote (the reports saved before the fix): the payload ends the script
    legacy = Path(reports["legacy"]["files"]["html"]).read_text(encoding="utf-8")
    legacy_block, _ = _data_script(legacy)
    assert "</script><img src=x onerror=" in legacy[legacy.index(legacy_block) :]
    with pytest.raises(AssertionError, match="ends inside its data"):
        _data(legacy)


# ---------------------------------------------------------------- the API's pages
def test_api_report_pages_run_no_payload_and_render(live, reports, posted, canary, browser):
    from selenium.webdriver.common.by import By

    base = live["base"]
    url = f"{base}/reports/{reports['safe']['id']}/html"
    browser.get(url)
    _assert_nothing_ran(browser, canary, url)
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200
    csp = _assert_headers(r, url)
    assert csp.startswith("sandbox allow-scripts") and "connect-src 'none'" in csp
    # Evidently's page renders under its CSP: the dashboard is drawn from its inline scripts
    deadline = time.monotonic() + 30
    while not browser.find_elements(By.CSS_SELECTOR, "[id^=root_metric_] *"):
        assert time.monotonic() < deadline, "the Evidently report did not render under its CSP"
        time.sleep(0.3)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Drift" in body or "drift" in body, body[:500]
    assert browser.execute_script("return window.origin") == "null"  # sandboxed: an opaque origin


def test_a_report_saved_before_the_fix_is_contained_by_the_sandbox(live, reports, canary, browser):
    url = f"{live['base']}/reports/{reports['legacy']['id']}/html"
    r = httpx.get(url, timeout=30)
    assert _assert_headers(r, url).startswith("sandbox allow-scripts")
    browser.get(url)
    time.sleep(1.5)
    # its payload does run (the file is as Evidently wrote it), but in an opaque origin with no network:
    # nothing leaves, no cookie, no storage
    assert browser.title.startswith("pwned"), "the old report's payload should run (in its sandbox)"
    hits = _new_hits(canary)
    assert hits == [], f"a payload of the old report reached the canary: {hits}"
    assert browser.execute_script("return window.origin") == "null"
    cookie = browser.execute_script("try { return 'read:' + document.cookie } catch (e) { return e.name }")
    assert cookie == "SecurityError", cookie
    stored = browser.execute_script("try { localStorage.length; return 'read' } catch (e) { return e.name }")
    assert stored == "SecurityError", stored


def test_web_page_and_review_page_show_payloads_as_text(live, posted, canary, browser, platform_env):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base = live["base"]
    wait = WebDriverWait(browser, 30)
    for path in ("/", "/review"):
        r = httpx.get(base + path, timeout=30)
        csp = _assert_headers(r, path)
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp, csp
        assert r.headers.get("referrer-policy") == "no-referrer"

    # the web page: each payload typed and predicted; the page works under its CSP
    browser.get(base + "/")
    assert browser.title == "Tweet sentiment"
    for name, text in list(posted["texts"].items())[:4]:
        box = browser.find_element(By.ID, "text")
        box.clear()
        browser.execute_script("arguments[0].value = arguments[1]", box, text)
        browser.find_element(By.ID, "predict").click()
        wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-prediction-id"))
        wait.until(lambda d: d.find_element(By.ID, "label").text in ("positive", "negative"))
        _assert_nothing_ran(browser, canary, f"/ ({name})")
    assert browser.title == "Tweet sentiment"

    # the review page (a review key): the reported payloads come up, shown verbatim as text
    key = make_key(platform_env, "review")
    browser.get(base + "/review")
    wait.until(ec.visibility_of_element_located((By.ID, "key"))).send_keys(key)
    browser.find_element(By.ID, "key-save").click()
    wait.until(ec.visibility_of_element_located((By.ID, "item")))
    seen = set()
    for _ in range(len(posted["texts"]) + 6):
        if not browser.find_element(By.ID, "item").is_displayed():
            break
        shown = browser.execute_script("return document.getElementById('item-text').textContent")
        seen.add(shown)
        before = browser.find_element(By.ID, "item").get_attribute("data-item-id")
        browser.find_element(By.TAG_NAME, "body").send_keys("s")  # skip to the next item
        time.sleep(0.2)
        if browser.find_element(By.ID, "item").get_attribute("data-item-id") == before:
            break
    _assert_nothing_ran(browser, canary, "/review")
    shown_payloads = seen & set(posted["texts"].values())
    assert shown_payloads, f"no payload reached the review page: {sorted(seen)[:5]}"
    assert browser.title == "Review queue"


def test_comparison_page_and_json_answers_carry_the_headers(live, posted, canary, browser, conn, tmp_path):
    """The comparison page (no tweet text, but names and links from the training run) escapes what it
    shows and loads no script; a link that is not http(s) is not made a link. JSON answers (lineage,
    reports) carry the strict CSP and nosniff."""
    base, s = live["base"], live["settings"]
    bad = posted["texts"]["attribute"]
    rows = [
        {
            "family": bad,
            "accuracy": 0.8,
            "learning_curve": {"url": posted["texts"]["javascript-url"]},
        }
    ]
    parent = f"xss-{uuid.uuid4().hex[:8]}"
    with db.connect(s) as c:
        cid = store.upsert_comparison(
            c,
            parent_run_id=parent,
            snapshot_hash=live["snapshot"],
            profile=bad,
            families=[bad],
            selection_metric="accuracy",
            table=rows,
            markdown="",
            html=to_html(rows, bad),
            chart_path="",
            winner_family=bad,
            winner_run_id=live["run_id"],
            airflow_run_id=None,
        )
    try:
        url = f"{base}/models/comparison?format=html"
        r = httpx.get(url, timeout=30)
        assert r.status_code == 200 and f"Model comparison #{cid}" in r.text
        csp = _assert_headers(r, url)
        assert "script-src" not in csp  # default-src 'none': no script at all
        assert "javascript:" not in r.text.replace(html.escape(posted["texts"]["javascript-url"]), "")
        browser.get(url)
        _assert_nothing_ran(browser, canary, url)
        assert not browser.execute_script(
            "return Array.from(document.links).filter(a => !/^https?:/.test(a.href)).length"
        )
    finally:
        conn.execute("DELETE FROM comparisons WHERE id = %s", (cid,))

    pid = posted["predictions"]["script-close"]["id"]
    admin = bearer(make_key(s, "admin"))
    for path, headers in ((f"/predictions/{pid}/lineage", admin), ("/reports", {}), ("/model", {})):
        r = httpx.get(base + path, headers=headers, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), (path, r.text[:200])
        _assert_headers(r, path)
    browser.get(f"{base}/predictions/{pid}/lineage")  # the admin's JSON as a browser shows it: inert
    _assert_nothing_ran(browser, canary, "lineage")


# ---------------------------------------------------------------- the model card
def test_model_card_shows_decoded_texts_escaped(live, posted, canary, browser, tmp_path):
    """The card shows example texts of a promotion's flips: entities decoded once (Sentiment140 stores
    ``&quot;`` literally), then escaped; a payload is text, whatever entities it hides behind."""
    texts = list(posted["texts"].values()) + ["I &quot;love&quot; it &amp; more"]
    card = model_card(live["settings"])
    assert card["champion"] is not None
    card["champion"]["what_changed"] = {
        "against_version": 1,
        "held_out": {
            "n": 100,
            "difference": 0.01,
            "interval": [-0.01, 0.03],
            "p_value": 0.5,
            "verdict": "no clear difference",
            "changed_label": len(texts),
            "right_to_wrong": len(texts),
            "wrong_to_right": 0,
            "right_to_wrong_examples": texts,
            "wrong_to_right_examples": [],
        },
        "golden": {
            "champion_accuracy": 0.9,
            "challenger_accuracy": 0.9,
            "right_to_wrong": 0,
            "right_to_wrong_uncertain": 0,
            "wrong_to_right": 0,
            "right_to_wrong_examples": texts,
            "wrong_to_right_examples": [],
        },
        "slices": {},
    }
    page = tmp_path / "card.html"
    page.write_text(card_html(card), encoding="utf-8")
    browser.get(page.as_uri())  # no header helps here: the markup itself must be inert
    _assert_nothing_ran(browser, canary, "model card")
    body = browser.execute_script("return document.body.textContent")
    assert 'I "love" it & more' in body and "&quot;" not in body
    assert html.unescape(posted["texts"]["entity"]) in body  # decoded once, shown as text
    # the only images are the card's own plots (data: PNGs fetched from MLflow); no payload made an element
    n_elements = browser.execute_script("return document.querySelectorAll('img:not(.plot), svg, script').length")
    assert n_elements == 0
    plots = browser.execute_script(
        "return Array.from(document.querySelectorAll('img')).map(i => [i.dataset.artifact, i.src.slice(0, 22)])"
    )
    assert sorted(plots) == [
        ["confusion_matrix.png", "data:image/png;base64,"],
        ["reliability_diagram.png", "data:image/png;base64,"],  # calibration (README "Calibrated probabilities")
        ["roc_curve.png", "data:image/png;base64,"],
    ]


# ---------------------------------------------------------------- the Airflow plugin
@pytest.fixture(scope="module")
def airflow_api(platform_env, airflow_cli, live, tmp_path_factory):
    """Airflow's api-server with the plugin, on the settings of ``live`` (its champion and reports);
    yields (base URL, a token of its admin user)."""
    env = airflow_env(platform_env)
    env.update(
        {
            "SENTIMENT_MODEL_NAME": live["settings"].model_name,
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
            "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
        }
    )
    logs = tmp_path_factory.mktemp("airflow-api-xss")
    for attempt in range(3):
        port = free_port()
        env.update({"AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}"})
        log = logs / f"api-{attempt}.log"
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "api-server", "--port", str(port), "--workers", "1"],
            env=env,
            start_new_session=True,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200 and listens(proc.pid, port):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        try:
            if proc.poll() is None and time.monotonic() < deadline:
                passwords = json.loads(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())
                user = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")[0].split(":")[0]
                res = httpx.post(f"{base}/auth/token", json={"username": user, "password": passwords[user]}, timeout=30)
                assert res.status_code in (200, 201), res.text
                yield base, res.json()["access_token"]
                return
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        if "address already in use" not in log.read_text().lower():
            break
    pytest.fail("Airflow api-server did not start: " + log.read_text()[-3000:])


def test_plugin_views_run_no_payload(airflow_api, reports, canary, browser):
    from selenium.webdriver.common.by import By

    base, token = airflow_api
    auth = {"Authorization": f"Bearer {token}"}
    browser.get(base + "/api/v2/monitor/health")
    browser.add_cookie({"name": "_token", "value": token, "path": "/"})  # what the UI's iframes send
    safe = f"{base}/sentiment-platform/reports/{reports['safe']['id']}/html"
    browser.get(safe)
    _assert_nothing_ran(browser, canary, safe)  # in the Airflow origin, where the cookie drives the REST API
    for which in ("safe", "legacy"):
        path = f"/sentiment-platform/reports/{reports[which]['id']}/html"
        r = httpx.get(base + path, headers=auth, timeout=60)
        assert r.status_code == 200, r.text[:300]
        csp = _assert_headers(r, path, frame="SAMEORIGIN")
        assert csp.startswith("sandbox allow-scripts") and "connect-src 'none'" in csp
    for path in ("/sentiment-platform/model-card", "/sentiment-platform/reports", "/sentiment-platform/reports.json"):
        r = httpx.get(base + path, headers=auth, timeout=120)
        assert r.status_code == 200, r.text[:300]
        assert "script-src" not in _assert_headers(r, path, frame="SAMEORIGIN")

    browser.get(safe)
    deadline = time.monotonic() + 30
    while not browser.find_elements(By.CSS_SELECTOR, "[id^=root_metric_] *"):
        assert time.monotonic() < deadline, "the Evidently report did not render in the plugin"
        time.sleep(0.3)
    legacy = f"{base}/sentiment-platform/reports/{reports['legacy']['id']}/html"
    browser.get(legacy)
    time.sleep(1.5)
    assert browser.title.startswith("pwned"), "the old report's payload should run (in its sandbox)"
    hits = _new_hits(canary)
    assert hits == [], f"the old report reached the canary from the Airflow origin: {hits}"
    assert browser.execute_script("try { return 'read:' + document.cookie } catch (e) { return e.name }") == (
        "SecurityError"
    )  # no access to the UI's _token cookie (Airflow's REST API accepts it)
    for path in ("/sentiment-platform/model-card", "/sentiment-platform/reports"):
        browser.get(base + path)
        _assert_nothing_ran(browser, canary, path)
