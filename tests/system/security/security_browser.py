"""Helpers of the security tests that drive chromium (imported by name: pytest puts this folder on
sys.path): a canary HTTP server that records every request a payload's script would make, a
chromium with no name resolution beyond the loopback (offline) and its network log, and the payloads.

Chromium and its driver are Debian's (given by path, Selenium Manager kept offline), as in
tests/system/test_browser.py, whose skip/fail rule (skipped without chromium, failed under CI=true) applies."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from test_browser import CHROME_ARGS, CHROMEDRIVER, CHROMIUM, _require_chromium

from api.main import create_app
from ml.data.snapshots import validate_and_snapshot
from ml.stages import promotion, train

__all__ = ["CHROMIUM", "Canary", "canary_server", "chromium", "payloads", "requested_urls", "serve_champion"]


class Canary:
    """What a payload's script reached: the paths requested from the canary server."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.hits: list[str] = []


@contextmanager
def canary_server() -> Iterator[Canary]:
    canary: Canary | None = None

    class Handler(http.server.BaseHTTPRequestHandler):
        def _hit(self) -> None:
            assert canary is not None
            canary.hits.append(self.path)
            self.send_response(204)
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()

        do_GET = do_POST = do_OPTIONS = _hit

        def log_message(self, *args) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    canary = Canary(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, name="canary", daemon=True)
    thread.start()
    try:
        yield canary
    finally:
        server.shutdown()
        server.server_close()


def payloads(canary_url: str) -> dict[str, str]:
    """Tweet texts that would run script in a page that embeds them unsafely. Each one that runs sets
    ``document.title`` to ``pwned-<name>`` and requests ``<canary>/<name>``. No double quote or
    backslash in the script parts (JSON would escape them, which breaks a payload inside JSON data):
    attributes in single quotes or unquoted, strings in backticks."""

    def js(name: str) -> str:  # no space, no double quote
        return f"document.title=`pwned-{name}`;fetch(`{canary_url}/{name}`);new/**/Image().src=`{canary_url}/i-{name}`"

    return {
        "script-close": f"</script><img src=x onerror='{js('script-close')}'> closing the data script",
        "attribute": f"\"><svg onload='{js('attribute')}'> breaking out of an attribute",
        "single-quote": f"'><img src=x onerror={js('single-quote')}> breaking out of a single-quoted one",
        "javascript-url": f"javascript:{js('javascript-url')}",
        "entity": f"&lt;img src=x onerror='{js('entity')}'&gt; entities decoded into markup",
        "double-entity": f"&amp;lt;script&amp;gt;{js('double-entity')}&amp;lt;/script&amp;gt;",
        "script-tag": f"<script>{js('script-tag')}</script> a plain script",
        "comment": f"<!--<script> </script><img src=x onerror='{js('comment')}'> -->",
        "line-separator": f"line\u2028separator\u2029</script><svg onload='{js('line-separator')}'>",
    }


@contextmanager
def chromium(profile: Path, performance_log: bool = False) -> Iterator[object]:
    """A headless chromium that resolves no host name (only IP literals work: offline), optionally
    with its network log (see :func:`requested_urls`)."""
    _require_chromium()

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    old = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download anything
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        opts.add_argument(arg)
    opts.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")  # offline: no name resolves
    opts.add_argument(f"--user-data-dir={profile}")
    if performance_log:
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        if old is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = old


def requested_urls(driver) -> list[str]:
    """Every URL the page's documents asked the network for since the last call (chromium's
    performance log), less those its Content-Security-Policy blocked before they were sent (ReDoc's
    bundle names a logo on a CDN: the CSP refuses it) and the browser's own ``chrome://`` pages."""
    sent: dict[str, str] = {}
    blocked: set[str] = set()
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        params = msg.get("params", {})
        if msg.get("method") == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif msg.get("method") == "Network.loadingFailed" and params.get("blockedReason") == "csp":
            blocked.add(params["requestId"])
    return [url for rid, url in sent.items() if rid not in blocked and not url.startswith("chrome://")]


@contextmanager
def serve_champion(platform_env, tweets_csv: Path, prefix: str) -> Iterator[dict]:
    """A real champion (the training path: snapshot, train, evaluate, register, promote) of a model
    name of its own (``prefix-xxxxxx``), served by a real uvicorn in a thread on a port-0 socket (as
    tests/system/test_browser.py). Yields base URL, settings, version, snapshot hash and run id."""
    s = platform_env.model_copy(update={"model_name": f"{prefix}-{uuid.uuid4().hex[:6]}", "behaviour_checks": False})
    snapshot_hash = validate_and_snapshot(tweets_csv, s).hash
    run_id = train.train(snapshot_hash, "tfidf_lr", settings=s)
    train.evaluate(run_id, s)
    version = train.register(run_id, s)
    assert promotion.promote(run_id, s)["promoted"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(s), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{prefix}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).json()["model"]["version"] == version:
                    break
            except (httpx.HTTPError, KeyError, ValueError, TypeError):
                pass
            assert thread.is_alive() and time.monotonic() < deadline, "the API did not serve its champion"
            time.sleep(0.3)
        yield {"base": base, "settings": s, "version": version, "snapshot": snapshot_hash, "run_id": run_id}
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
