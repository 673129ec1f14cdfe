"""The web page in a real headless browser: predict, then "This is wrong" stores the feedback.

Debian's chromium + chromium-driver driven by Selenium (nothing downloads a browser: the binary
and the driver are given by path and Selenium Manager is kept offline); the API runs under
uvicorn on a free port against the test database with a real champion. A screenshot of the page
after the feedback is written to ``var/screenshots/web_page_feedback.png``.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from ml import data, train
from ml.config import REPO_ROOT, reset_settings

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--window-size=1000,820"]
SCREENSHOT = REPO_ROOT / "var" / "screenshots" / "web_page_feedback.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="chromium / chromedriver not found (apt-get install chromium chromium-driver; "
                              ".ci/run installs them)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_api(platform_env, mlflow_tracking, tweets_csv, tmp_path_factory):
    name = f"tweet-sentiment-browser-{uuid.uuid4().hex[:6]}"
    os.environ.update({"SENTIMENT_MODEL_NAME": name, "SENTIMENT_BEHAVIOUR_CHECKS": "false"})
    reset_settings()
    snap = data.validate_and_snapshot(tweets_csv)
    run_id = train.train(snap.hash, "tfidf_lr")
    train.evaluate(run_id)
    version = train.register(run_id)
    assert train.promote(run_id)["promoted"]
    port = _free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "api.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=REPO_ROOT, env=dict(os.environ), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).json()["model"]["version"] == version:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield {"base": base, "version": version, "name": name}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        os.environ.pop("SENTIMENT_MODEL_NAME")
        os.environ.pop("SENTIMENT_BEHAVIOUR_CHECKS")
        reset_settings()


@pytest.fixture
def browser(tmp_path, monkeypatch):
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


def test_this_is_wrong_button_stores_feedback(live_api, browser, conn):
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

    browser.find_element(By.ID, "wrong").click()
    status = wait.until(lambda d: d.find_element(By.ID, "feedback-status").text.startswith("Thanks") and
                        d.find_element(By.ID, "feedback-status").text)
    expected = "negative" if label == "positive" else "positive"
    assert f"Recorded as {expected}" in status
    assert not browser.find_element(By.ID, "wrong").is_enabled()  # one report per prediction from the page
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))

    rows = conn.execute("SELECT correct_label FROM feedback WHERE prediction_id = %s", (pid,)).fetchall()
    assert rows == [(1 if expected == "positive" else 0,)]
    assert conn.execute("SELECT model_version FROM predictions WHERE id = %s", (pid,)).fetchone()[0] == live_api["version"]

    # the page links to the drift reports, and the link works
    href = browser.find_element(By.ID, "reports-link").get_attribute("href")
    assert href == live_api["base"] + "/reports"
    assert httpx.get(href, timeout=10).status_code == 200
