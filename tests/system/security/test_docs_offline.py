"""API docs offline (issue 22, item 1; issue 21, item 8: the bearer scheme), in a real chromium that
resolves no host name (only the loopback IP works) against a real uvicorn with a real champion.

/docs lists the operations, has the "Authorize" button, and "Try it out" on /predict answers 200;
/redoc renders the operations. Chromium's network log shows no request to any other host. Both pages
work under their Content-Security-Policy (no inline script)."""

from __future__ import annotations

import os
import time

import httpx
import pytest
from security_browser import chromium, requested_urls, serve_champion

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def live(platform_env, mlflow_tracking, tweets_csv):
    with serve_champion(platform_env, tweets_csv, "tweet-sentiment-docs") as served:
        yield served


def _until(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)
    return value


def test_openapi_declares_the_bearer_scheme(live):
    doc = httpx.get(live["base"] + "/openapi.json", timeout=30).json()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    paths = doc["paths"]
    assert paths["/admin/promote"]["post"]["security"] == [{"bearer": []}]  # a key is needed
    assert paths["/review/queue"]["get"]["security"] == [{"bearer": []}]
    assert paths["/predict"]["post"]["security"] == [{"bearer": []}, {}]  # a key is accepted, or none
    assert paths["/predictions/{prediction_id}/lineage"]["get"]["security"] == [{"bearer": []}, {}]
    assert "security" not in paths["/health"]["get"]  # public


def test_docs_render_offline_with_authorize_and_try_it_out(live, tmp_path):
    from selenium.webdriver.common.by import By

    base = live["base"]
    for path in ("/docs", "/redoc"):
        r = httpx.get(base + path, timeout=30)
        assert r.status_code == 200 and "cdn" not in r.text.lower() and "<script>" not in r.text, r.text[:500]
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"

    with chromium(tmp_path / "profile", performance_log=True) as browser:
        browser.get(base + "/docs")
        ops = _until(lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock"), "Swagger UI lists the operations")
        n_ops = len(httpx.get(base + "/openapi.json", timeout=30).json()["paths"])
        _until(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) >= n_ops, "every path is listed")
        if os.environ.get("SCREENSHOT_DIR"):  # for the issue notes: /docs rendered offline
            browser.save_screenshot(os.path.join(os.environ["SCREENSHOT_DIR"], "docs-offline.png"))
        assert browser.find_elements(By.CSS_SELECTOR, "button.authorize"), "no Authorize button"
        shot = tmp_path / "docs.png"
        browser.save_screenshot(str(shot))

        # "Try it out" on POST /predict: Swagger UI calls the API from the page (connect-src 'self')
        predict = next(op for op in ops if op.get_attribute("id") == "operations-predict-predict_predict_post")
        predict.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        _until(lambda: predict.find_elements(By.CSS_SELECTOR, "button.try-out__btn"), "Try it out").pop().click()
        body = _until(lambda: predict.find_elements(By.CSS_SELECTOR, "textarea.body-param__text"), "the body editor")
        browser.execute_script(
            "const t = arguments[0]; const set = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype,"
            " 'value').set; set.call(t, arguments[1]); t.dispatchEvent(new Event('input', {bubbles: true}));",
            body[0],
            '{"text": "I love this, best day ever"}',
        )
        predict.find_element(By.CSS_SELECTOR, "button.execute").click()
        status = _until(
            lambda: [
                e.text
                for e in predict.find_elements(By.CSS_SELECTOR, ".live-responses-table .response-col_status")
                if e.text.strip() not in ("", "Code")  # the header cell
            ],
            "the request's answer",
        )
        assert status[0].strip().startswith("200"), status
        assert "positive" in predict.find_element(By.CSS_SELECTOR, ".live-responses-table").text

        browser.get(base + "/redoc")
        _until(lambda: "/predict/batch" in browser.find_element(By.TAG_NAME, "body").text, "ReDoc lists the operations")

        urls = requested_urls(browser)
        assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in urls), urls
        assert any(u.endswith("/docs-assets/redoc.standalone.js") for u in urls), urls
        foreign = [u for u in urls if not u.startswith((base + "/", "data:", "blob:"))]
        assert foreign == [], f"requests beyond the app: {foreign}"
