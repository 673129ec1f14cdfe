"""The web page in a real headless browser: predict, then "This is wrong" stores the feedback.

Debian's chromium + chromium-driver driven by Selenium (nothing downloads a browser: the binary
and the driver are given by path and Selenium Manager is kept offline); the API runs under a real
uvicorn server (in a thread) on a socket bound to port 0 and handed to uvicorn, against the test
database with a real champion. A screenshot of the page after the feedback goes to the test's
tmp_path. Without chromium the test is skipped, saying why, except under CI=true: it fails there.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid

import httpx
import pytest
import uvicorn
from ports import in_ci

from api.main import create_app
from ml.data.snapshots import validate_and_snapshot
from ml.stages import promotion, train

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)
CHROME_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,820",
]

pytestmark = [pytest.mark.slow]


def _require_chromium() -> None:
    if CHROMIUM is not None and CHROMEDRIVER is not None:
        return
    why = "chromium / chromedriver not found (apt-get install chromium chromium-driver; .ci/run installs them)"
    if in_ci():
        pytest.fail(f"CI=true: the browser test must run here, but {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def live_api(platform_env, mlflow_tracking, tweets_csv):
    _require_chromium()
    name = f"tweet-sentiment-browser-{uuid.uuid4().hex[:6]}"
    s = platform_env.model_copy(update={"model_name": name, "behaviour_checks": False})
    snap = validate_and_snapshot(tweets_csv, s)
    run_id = train.train(snap.hash, "tfidf_lr", settings=s)
    train.evaluate(run_id, s)
    version = train.register(run_id, s)
    assert promotion.promote(run_id, s)["promoted"]

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port and it stays ours: no race
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(s), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).json()["model"]["version"] == version:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            assert thread.is_alive(), "uvicorn stopped before serving"
            assert time.monotonic() < deadline, "the API did not load its champion in 90 s"
            time.sleep(0.3)
        yield {"base": base, "version": version, "name": name}
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture
def browser(tmp_path, monkeypatch):
    _require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        opts.add_argument(arg)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_this_is_wrong_button_stores_feedback(live_api, browser, conn, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(live_api["base"] + "/")
    assert browser.title == "Tweet sentiment"
    browser.find_element(By.ID, "text").send_keys("I love this, best day ever")
    browser.find_element(By.ID, "predict").click()
    result = wait.until(ec.visibility_of_element_located((By.ID, "result")))
    wait.until(lambda d: d.find_element(By.ID, "label").text in ("positive", "negative"))
    pid = result.get_attribute("data-prediction-id")
    label = browser.find_element(By.ID, "label").text
    assert uuid.UUID(pid) and result.get_attribute("data-model-version") == str(live_api["version"])
    assert browser.find_element(By.ID, "lineage").get_attribute("href").endswith(f"/predictions/{pid}/lineage")
    # why this label (?explain=true): the words as coloured spans, "love" pushed toward positive
    words = browser.find_elements(By.CSS_SELECTOR, "#why .why-token")
    assert words and any(w.text.startswith("love ") and "toward-positive" in w.get_attribute("class") for w in words), [
        w.text for w in words
    ]

    browser.find_element(By.ID, "wrong").click()
    status = wait.until(
        lambda d: (
            d.find_element(By.ID, "feedback-status").text.startswith("Thanks")
            and d.find_element(By.ID, "feedback-status").text
        )
    )
    expected = "negative" if label == "positive" else "positive"
    assert f"Recorded as {expected}" in status
    assert not browser.find_element(By.ID, "wrong").is_enabled()  # one report per prediction from the page
    shot = tmp_path / "web_page_feedback.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0

    # the report answered at once; while its prediction is still in the worker's log it waits in
    # pending_feedback and lands in feedback with the prediction (the writer's next pass)
    deadline = time.monotonic() + 30
    while True:
        rows = conn.execute("SELECT correct_label FROM feedback WHERE prediction_id = %s", (pid,)).fetchall()
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows == [(1 if expected == "positive" else 0,)]
    assert (
        conn.execute("SELECT model_version FROM predictions WHERE id = %s", (pid,)).fetchone()[0] == live_api["version"]
    )

    # the page links to the drift reports, and the link works
    href = browser.find_element(By.ID, "reports-link").get_attribute("href")
    assert href == live_api["base"] + "/reports"
    assert httpx.get(href, timeout=10).status_code == 200
