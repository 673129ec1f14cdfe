"""Every answer of the API carries ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer`` and a Content-Security-Policy suited to it (issue 21, item 3):
pages load scripts from /static only, the docs their packaged assets, a drift report runs sandboxed,
JSON and files load nothing; errors (401, 404, 422) too. The real app over the session's PostgreSQL
(no champion needed: the pages and errors do not use one). The pages' behaviour under their CSP is
checked in chromium by test_script_injection.py and test_docs_offline.py."""

from __future__ import annotations

import uuid

import pytest
from api_helpers import running_app, settings_with


@pytest.fixture(scope="module")
def client(platform_env):
    with running_app(settings_with(platform_env, model_name=f"headers-{uuid.uuid4().hex[:6]}")) as c:
        yield c


PAGES = {
    "/": "script-src 'self'",
    "/review": "script-src 'self'",
    "/docs": "script-src 'self'",
    "/redoc": "worker-src blob:",
}
OTHERS = [
    ("GET", "/openapi.json", 200),
    ("GET", "/health/live", 200),
    ("GET", "/reports", 200),
    ("GET", "/reports/history", 200),
    ("GET", "/batches", 200),
    ("GET", "/static/app.js", 200),
    ("GET", "/docs-assets/swagger-ui.css", 200),
    ("GET", "/no-such-page", 404),
    ("GET", "/review/queue", 401),
    ("POST", "/predict", 503),  # no champion yet: the error shape, with the headers
]


def _common(r, where: str) -> str:
    assert r.headers.get("x-frame-options") == "DENY", where
    assert r.headers.get("x-content-type-options") == "nosniff", where
    assert r.headers.get("referrer-policy") == "no-referrer", where
    csp = r.headers.get("content-security-policy", "")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, (where, csp)
    return csp


def test_pages_send_their_policy(client):
    for path, directive in PAGES.items():
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        csp = _common(r, path)
        assert directive in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0], (path, csp)
        assert "<script>" not in r.text, f"{path}: an inline script (blocked by its CSP)"


def test_everything_else_loads_nothing(client):
    for method, path, status in OTHERS:
        r = client.request(method, path, json={} if method == "POST" else None)
        assert r.status_code == status, (path, r.status_code, r.text[:200])
        csp = _common(r, path)
        assert "script-src" not in csp and "style-src" not in csp, (path, csp)
