"""The plugin's views under ``/sentiment-platform/`` require the Airflow login.

A real ``airflow api-server`` (the session's PostgreSQL metadata DB, the simple auth manager with
its generated password file, a port chosen free by the kernel and retried when taken) serves the
plugin: without a credential the JSON endpoints answer 401 and the HTML pages redirect to the
login; a forged token answers 403; with a token from ``POST /auth/token`` (or the UI's ``_token``
cookie, as the embedded iframes send it) every view answers 200."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
from ports import free_port, listens
from test_browser import browser  # noqa: F401 - the chromium fixture (Debian chromium, offline)

from ml.platform.orchestration import airflow_env

VIEWS_JSON = [
    "/sentiment-platform/model-card.json",
    "/sentiment-platform/reports.json",
    "/sentiment-platform/history.json",
]
VIEWS_HTML = [
    "/sentiment-platform/model-card",
    "/sentiment-platform/reports",
    "/sentiment-platform/reports/x/html",
    "/sentiment-platform/history",
    "/sentiment-platform/reports/history/html",
]


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def api_server(platform_env, airflow_cli, tmp_path_factory):
    """Airflow's API server with the plugin, on a free port; yields (base URL, env, model name)."""
    model = f"tweet-sentiment-auth-{uuid.uuid4().hex[:6]}"
    env = airflow_env(platform_env)
    env.update(
        {
            "SENTIMENT_MODEL_NAME": model,
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
        }
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    logs = tmp_path_factory.mktemp("api-server")
    for attempt in range(3):
        port = free_port()
        env.update({"AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}"})
        log = logs / f"api-{attempt}.log"
        proc = subprocess.Popen(
            [airflow, "api-server", "--port", str(port), "--workers", "1"],
            env=env,
            start_new_session=True,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"{base}/api/v2/monitor/health", timeout=2)
                if health.status_code == 200 and listens(proc.pid, port):  # our server's answer, not a squatter's
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        if proc.poll() is None and time.time() < deadline:
            try:
                yield base, env, model
            finally:
                _stop(proc)
            return
        _stop(proc)
        if "address already in use" not in log.read_text().lower():
            break
    pytest.fail("Airflow api-server did not start: " + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def token(api_server) -> str:
    base, env, _ = api_server
    passwords = json.loads(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())
    user = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")[0].split(":")[0]
    res = httpx.post(f"{base}/auth/token", json={"username": user, "password": passwords[user]}, timeout=30)
    assert res.status_code in (200, 201), res.text
    return res.json()["access_token"]


def test_views_refuse_anonymous_requests(api_server):
    base, _, _ = api_server
    # the server itself is up and answers its public health endpoint without a login
    assert httpx.get(f"{base}/api/v2/monitor/health", timeout=10).status_code == 200
    for path in VIEWS_JSON:
        res = httpx.get(base + path, timeout=30, follow_redirects=False)
        assert res.status_code == 401, (path, res.status_code, res.text[:300])
        assert "champion" not in res.text and "model_name" not in res.text
    for path in VIEWS_HTML + ["/sentiment-platform/"]:
        res = httpx.get(base + path, timeout=30, follow_redirects=False)
        assert res.status_code == 303, (path, res.status_code, res.text[:300])
        location = res.headers["location"]
        assert "/auth/login" in location and "next=" in location, location
        assert "Drift reports" not in res.text and "model card" not in res.text.lower()
        assert "Drift history" not in res.text and "<svg" not in res.text


def test_views_refuse_forged_or_wrong_tokens(api_server, token):
    base, _, _ = api_server
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")  # bad signature
    for bad in (forged, "not-a-jwt"):
        for path in VIEWS_JSON + VIEWS_HTML:
            res = httpx.get(base + path, headers={"Authorization": f"Bearer {bad}"}, timeout=30, follow_redirects=False)
            assert res.status_code == 403, (path, res.status_code, res.text[:300])
    # a token signed with another secret is refused too

    other = jwt.encode(
        {"sub": "admin", "role": "ADMIN", "aud": "apache-airflow", "exp": int(time.time()) + 600},
        secrets.token_urlsafe(64),
        algorithm="HS512",
    )
    res = httpx.get(base + VIEWS_JSON[0], headers={"Authorization": f"Bearer {other}"}, timeout=30)
    assert res.status_code == 403, res.text[:300]


def test_views_answer_with_the_airflow_login(api_server, token):
    base, _, model = api_server
    auth = {"Authorization": f"Bearer {token}"}
    card = httpx.get(base + "/sentiment-platform/model-card.json", headers=auth, timeout=120)
    assert card.status_code == 200, card.text[:500]
    assert card.json()["model_name"] == model and card.json()["champion"] is None  # the server's own settings
    reports = httpx.get(base + "/sentiment-platform/reports.json", headers=auth, timeout=60)
    assert reports.status_code == 200 and isinstance(reports.json(), list), reports.text[:500]
    page = httpx.get(base + "/sentiment-platform/model-card", headers=auth, timeout=60)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"], page.text[:500]
    page = httpx.get(base + "/sentiment-platform/reports", headers=auth, timeout=60)
    assert page.status_code == 200 and "Drift reports" in page.text
    page = httpx.get(base + "/sentiment-platform/history", headers=auth, timeout=60)
    assert page.status_code == 200 and "Drift history" in page.text and page.text.count("<svg") == 3
    # a missing report is a 404 only once logged in
    assert httpx.get(base + "/sentiment-platform/reports/nope/html", headers=auth, timeout=30).status_code == 404
    # the UI's session cookie (what the embedded iframes send) is accepted like the bearer token
    res = httpx.get(base + "/sentiment-platform/reports", cookies={"_token": token}, timeout=60, follow_redirects=False)
    assert res.status_code == 200 and "Drift reports" in res.text


@pytest.mark.slow
def test_a_person_logs_in_through_airflows_page_and_opens_the_views_from_browse(api_server, browser):  # noqa: F811
    """In chromium, the way a person gets there: the plugin's page while logged out leads to Airflow's
    login form; after typing the generated password, the UI's Browse entries embed the views (the
    ``_token`` cookie path, no header anywhere) and the model card and reports render inside them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, env, model = api_server
    passwords = json.loads(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())
    user = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")[0].split(":")[0]
    wait = WebDriverWait(browser, 60)

    def page(what: str) -> str:
        return f"{what} at {browser.current_url}:\n{browser.page_source[:3000]}"

    browser.get(base + "/sentiment-platform/model-card")  # logged out: sent to the login page
    try:
        name = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "input[name='username']")))
    except Exception as exc:
        raise AssertionError(page("no login form")) from exc
    assert "/auth/login" in browser.current_url, browser.current_url
    assert not any(c["name"] == "_token" for c in browser.get_cookies())
    name.send_keys(user)
    browser.find_element(By.CSS_SELECTOR, "input[name='password']").send_keys(passwords[user], Keys.ENTER)
    wait.until(lambda d: any(c["name"] == "_token" for c in d.get_cookies()))

    # the UI's own route for the Browse entry embeds the view in an iframe
    for route, heading in (("sentiment-model-card", model), ("sentiment-drift-reports", "Drift reports")):
        browser.get(f"{base}/plugin/{route}")
        try:
            frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
        except Exception as exc:
            raise AssertionError(page(f"no iframe for {route}")) from exc
        browser.switch_to.frame(frame)
        try:
            wait.until(lambda d, h=heading: h in d.find_element(By.TAG_NAME, "body").text)
        except Exception as exc:
            raise AssertionError(page(f"{route}'s view did not render {heading!r}")) from exc
        finally:
            browser.switch_to.default_content()
    # the Browse menu lists the three views
    browser.get(base + "/")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "nav, [role='navigation'], button")))
    wait.until(lambda d: "Browse" in d.find_element(By.TAG_NAME, "body").text)
