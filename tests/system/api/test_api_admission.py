"""Admission control under load (api/admission.py): a queue with a deadline in front of an adaptive
concurrency limit, attacked on a real uvicorn with 2 workers over the session's database and champion.

- A burst far larger than capacity (heavy ``/predict/batch`` calls from 48 threads at once, on a floor of
  2 requests in progress per worker): the requests that could not start within the deadline are answered
  503 + ``Retry-After: 1`` quickly - each within a few deadlines, never after the deadline times the queue
  ahead of it; while the burst lasts ``/health/live`` and ``/metrics`` are answered 200 every time.
- After the burst, at moderate concurrency (16 connections of single ``/predict``s, well under capacity)
  nothing is shed, and the adaptive limit (``sentiment_admission_limit`` in /metrics, summed over the
  workers) grows back above what it was during the burst.
- The limiter's arithmetic with an injected clock: the limit is what the worker completes within the
  latency target at its measured drain rate (Little's law), within its floor and ceiling; a request whose
  queue ahead needs more than twice the deadline is refused at once; requests start in FIFO order.

Time bounds are tied to the single-request latency measured in the same test (2 shared cores).
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from api_helpers import POSITIVE_TEXT
from live import live_server

DEADLINE_MS = 150.0
TARGET_MS = 100.0


def _limit(srv, headers) -> float:
    text = httpx.get(f"{srv.url}/metrics", headers=headers, timeout=30).text
    m = re.search(r"^sentiment_admission_limit(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    assert m, text[-2000:]
    return float(m.group(1))


@pytest.mark.slow
def test_a_burst_is_refused_within_the_deadline_and_moderate_load_is_never_shed(
    api_settings, champion, admin_headers, tmp_path
):
    env = {
        "SENTIMENT_MODEL_NAME": api_settings.model_name,
        "SENTIMENT_VAR_DIR": str(tmp_path / "var"),
        "SENTIMENT_RATE_LIMITS_ENABLED": "false",
        "SENTIMENT_API_MIN_INFLIGHT": "2",
        "SENTIMENT_API_MAX_INFLIGHT": "64",
        "SENTIMENT_API_QUEUE_DEADLINE_MS": str(DEADLINE_MS),
        "SENTIMENT_API_LATENCY_TARGET_MS": str(TARGET_MS),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    (tmp_path / "prom").mkdir()
    with live_server(tmp_path, workers=2, env=env) as srv, httpx.Client(timeout=60) as client:
        for i in range(20):  # warm-up: both workers, the pool
            assert client.post(f"{srv.url}/predict", json={"text": f"{POSITIVE_TEXT} w{i}"}).status_code == 200
        single = []
        for i in range(30):
            t0 = time.perf_counter()
            assert client.post(f"{srv.url}/predict", json={"text": f"{POSITIVE_TEXT} s{i}"}).status_code == 200
            single.append(time.perf_counter() - t0)
        one = sorted(single)[len(single) // 2]  # the unloaded single-request latency, this machine, now

        # -- the burst, with probes of the paths that are never shed
        stop = threading.Event()
        probes: list[int] = []

        def probe() -> None:
            with httpx.Client(timeout=60) as c:
                while not stop.is_set():
                    probes.append(c.get(f"{srv.url}/health/live").status_code)
                    probes.append(c.get(f"{srv.url}/metrics", headers=admin_headers).status_code)

        texts = [f"{POSITIVE_TEXT} burst {i}" for i in range(api_settings.max_batch_size)]  # the largest batch

        def heavy(_):
            with httpx.Client(timeout=60) as c:
                return c.post(f"{srv.url}/predict/batch", json={"texts": texts})

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            with ThreadPoolExecutor(48) as ex:
                answers = list(ex.map(heavy, range(96)))
            during = _limit(srv, admin_headers)
        finally:
            stop.set()
            prober.join()
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 503}, codes
        shed = [r for r in answers if r.status_code == 503]
        assert shed and codes.count(200) > 0, codes
        waits = []
        for r in shed:
            assert r.headers["Retry-After"] == "1"
            message = r.json()["message"]
            assert "api_queue_deadline_ms" in message, message
            waits.append(float(re.search(r"waited (\d+) ms", message).group(1)) / 1000)
        # quickly: each refused request waited at most about the deadline in the worker (plus the event loop's lag
        # on this loaded machine, tied to the single-request latency) - never the deadline times the ~20 requests
        # queued ahead of it in a worker (3 s and more). (Measured in the worker: in this test's 48-thread client the GIL
        # and 2 shared cores blur client-side times.)
        # (CI measured 0.60 s with a 0.15 s deadline on 2 shared cores: the bound is 5 deadlines, the failure it
        # guards against is ~20)
        bound = 5 * DEADLINE_MS / 1000 + 50 * one
        assert max(waits) < bound, f"a 503 waited {max(waits):.3f}s (bound {bound:.3f}s, single {one * 1e3:.1f} ms)"
        assert probes and set(probes) == {200}, f"/health/live or /metrics failed during the burst: {set(probes)}"

        # -- moderate concurrency, well under capacity: nothing shed; the limit grows back. It starts after an idle
        # spell longer than the deadline (when a worker drops the burst's rate estimate: README "Load shedding");
        # a client arriving in the burst's last milliseconds may still meet the burst's limit (seen: 3 of 640)
        time.sleep(max(0.5, 5 * DEADLINE_MS / 1000))

        def moderate(k):
            with httpx.Client(timeout=60) as c:
                return [c.post(f"{srv.url}/predict", json={"text": f"{POSITIVE_TEXT} m{k}.{i}"}) for i in range(40)]

        with ThreadPoolExecutor(16) as ex:
            rounds = [r for rs in ex.map(moderate, range(16)) for r in rs]
        moderate_codes = [r.status_code for r in rounds]
        assert moderate_codes.count(200) == len(rounds), {c: moderate_codes.count(c) for c in set(moderate_codes)}
        after = _limit(srv, admin_headers)
        assert after > during, f"the limit did not grow back: {during} during the burst, {after} after"
