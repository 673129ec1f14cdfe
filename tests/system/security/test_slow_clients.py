"""Slow clients cannot hold the API (issue 21, item 5). A real uvicorn with 2 workers over the session's
database and a real champion:

- 200 sockets from one client send their headers and 8 bytes of a 100-byte body, then nothing. While they
  hold, another client's ``/predict`` answers 200 with a p99 within 2x of the unloaded p99 (measured in the
  same test, before the slow sockets open and after they are gone), and ``/health/ready`` stays 200:
  a request counts toward ``api_max_inflight`` only once its body has arrived (api/admission.py).
- Each slow socket is answered 408 (the one error shape) once ``api_body_timeout_seconds`` have passed,
  and the server closes it.
- The same for 200 sockets that send part of a request head and stop (slowloris): they never reach the
  app, and the service's HTTP protocol (api/protocol.py, ``--http`` in the ``api`` service's argv) answers
  them 408 and closes them at the same deadline (uvicorn alone keeps them open for as long as they like).

On the old middleware (the request counted as in flight before its body) the 2 x 32 admission slots are
taken by the first 64 slow sockets and every route answers 503 "overloaded".
"""

from __future__ import annotations

import json
import select
import socket
import time

import httpx
import pytest
from api_helpers import POSITIVE_TEXT
from live import live_server

from ml.platform.config import get_settings
from ml.platform.startup.commands import command

pytestmark = pytest.mark.slow

SLOW_SOCKETS = 200
BODY_TIMEOUT = 12.0  # seconds: long enough to measure while every slow socket holds
SAMPLES = 300


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _measure(client: httpx.Client, url: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = client.post(f"{url}/predict", json={"text": f"{POSITIVE_TEXT} {i}"})
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, (r.status_code, r.text[:300])
    return out


def _slow_socket(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"text":'
    )
    return s


def _read_until_closed(socks: list[socket.socket], deadline: float) -> dict[socket.socket, bytes]:
    """Everything each socket receives until the server closes it (or the deadline passes)."""
    got = {s: b"" for s in socks}
    open_ = set(socks)
    for s in socks:
        s.setblocking(False)
    while open_ and time.monotonic() < deadline:
        ready, _, _ = select.select(list(open_), [], [], 0.5)
        for s in ready:
            try:
                chunk = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                got[s] += chunk
            else:
                open_.discard(s)
    return {s: got[s] for s in socks if s not in open_} | {s: b"<still open>" + got[s] for s in open_}


def _service_args(settings) -> list[str]:
    """The uvicorn options of the ``api`` service as ``make up`` starts it (ml/platform/startup/commands.py)
    that concern slow clients: the HTTP protocol (head deadline) and the keep-alive timeout."""
    _, argv, _ = command("api", settings)
    out = []
    for opt in ("--http", "--timeout-keep-alive"):
        if opt in argv:
            out += [opt, argv[argv.index(opt) + 1]]
    return out


def _slow_head(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
    return s


def _under_slow_clients(champion, tmp_path, open_slow, what: str) -> tuple[dict, list[int], float, float]:
    """Start the API (2 workers, the service's slow-client options), measure /predict unloaded, open
    200 slow sockets, measure again while they hold, read what each slow socket gets until it is closed,
    measure once more. Returns (answers, /health/ready codes, unloaded p99, loaded p99)."""
    env = {
        "SENTIMENT_MODEL_NAME": champion.name,
        "SENTIMENT_VAR_DIR": str(tmp_path / "var"),
        "SENTIMENT_API_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "SENTIMENT_API_MAX_INFLIGHT": "32",
    }
    args = _service_args(get_settings())
    with live_server(tmp_path, workers=2, env=env, extra_args=args) as srv, httpx.Client(timeout=30) as client:
        port = int(srv.url.rsplit(":", 1)[1])
        _measure(client, srv.url, 30)  # warm-up: both workers' first requests, connection pool
        before = _measure(client, srv.url, SAMPLES)

        opened = time.monotonic()
        slow = [open_slow(port) for _ in range(SLOW_SOCKETS)]
        time.sleep(1.0)  # every slow socket has reached a worker
        loaded = _measure(client, srv.url, SAMPLES)
        ready = [httpx.get(f"{srv.url}/health/ready", timeout=10).status_code for _ in range(10)]
        measured_within = time.monotonic() - opened
        assert measured_within < BODY_TIMEOUT, f"measuring took {measured_within:.1f}s: the slow sockets had expired"

        answers = _read_until_closed(slow, opened + BODY_TIMEOUT + 15)
        after = _measure(client, srv.url, SAMPLES)
    unloaded, under_load = _p99(before + after), _p99(loaded)
    print(
        f"/predict p99 (uvicorn {' '.join(args)}, 2 workers): unloaded {unloaded * 1000:.1f} ms, "
        f"with {SLOW_SOCKETS} {what} {under_load * 1000:.1f} ms"
    )
    return answers, ready, unloaded, under_load


def _assert_408_and_closed(answers: dict, deadline_setting: str = "api_body_timeout_seconds") -> None:
    still_open = [a for a in answers.values() if a.startswith(b"<still open>")]
    assert not still_open, f"{len(still_open)} slow sockets not closed {BODY_TIMEOUT + 15:.0f}s after they opened"
    for raw in answers.values():
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), raw[:300]
        assert b"connection: close" in head.lower(), head
        err = json.loads(body)
        assert err["status"] == 408 and deadline_setting in err["message"]


def test_200_slow_bodies_leave_other_clients_served_and_are_answered_408(champion, tmp_path):
    answers, ready, unloaded, under_load = _under_slow_clients(champion, tmp_path, _slow_socket, "slow bodies")
    assert ready == [200] * 10
    _assert_408_and_closed(answers)
    assert under_load <= 2 * unloaded, (
        f"p99 with {SLOW_SOCKETS} slow bodies {under_load * 1000:.1f} ms > 2 x unloaded {unloaded * 1000:.1f} ms"
    )


def test_200_slow_heads_leave_other_clients_served_and_are_closed(champion, tmp_path):
    """Sockets that send part of a request head and stop never reach the app; the service's protocol
    (api/protocol.py) answers them 408 and closes them once the deadline has passed."""
    answers, ready, unloaded, under_load = _under_slow_clients(champion, tmp_path, _slow_head, "slow heads")
    assert ready == [200] * 10
    _assert_408_and_closed(answers)
    assert under_load <= 2 * unloaded, (
        f"p99 with {SLOW_SOCKETS} slow heads {under_load * 1000:.1f} ms > 2 x unloaded {unloaded * 1000:.1f} ms"
    )
