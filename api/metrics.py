"""Prometheus metrics of the API (``GET /metrics``, ``admin`` scope), summed over uvicorn's workers.

Multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set (the launcher, ml/platform/startup/commands.py,
sets a folder under var/ and wipes it at every API start; it must be set before this module is imported,
which it is: it comes from the environment of ``uvicorn --workers N``), every worker writes its values to
memory-mapped files there and a scrape, answered by any one worker, reads them all
(:class:`prometheus_client.multiprocess.MultiProcessCollector`). Without it (a single process, the unit
tests' TestClient) the process's own registry is exposed.

- ``sentiment_http_requests_total{method,route,status}`` and ``sentiment_http_request_duration_seconds``:
  per route *template* (``/batches/{batch_id}``, never the id), ``unmatched`` when no route answered
  (404 on an unknown path, or a request refused by api/admission.py before routing);
- ``sentiment_predictions_total{label,model_version}``: rows made durable by the prediction writer;
- ``sentiment_feedback_total{outcome}``: POST /feedback by answer (stored 201, repeat 200, conflict 409,
  forbidden 403, ...);
- ``sentiment_refused_total{reason}``: shed (503 of admission), too_large (413), rate_limited (429),
  body_timeout (408);
- gauges, refreshed at most once a second per worker (at a request) and at every scrape:
  ``sentiment_prediction_log_bytes`` and ``sentiment_writer_pending_rows`` (summed over live workers),
  ``sentiment_writer_lag_seconds`` (the oldest unwritten row's age bound: seconds since the last flush
  while rows are pending; max over workers), ``sentiment_model_version`` and
  ``sentiment_model_load_seconds`` (the most recent value written by a live worker),
  ``sentiment_admission_limit``, ``sentiment_admission_inflight`` and ``sentiment_admission_waiting``
  (api/admission.py's adaptive concurrency limit, requests in progress and queued; summed over live workers).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("sentiment_http_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "sentiment_http_request_duration_seconds",
    "Time to answer an HTTP request (head sent)",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PREDICTIONS = Counter("sentiment_predictions", "Predictions made durable", ["label", "model_version"])
FEEDBACK = Counter("sentiment_feedback", "POST /feedback answers by outcome", ["outcome"])
REFUSED = Counter("sentiment_refused", "Requests refused before the route ran", ["reason"])
LOG_BYTES = Gauge("sentiment_prediction_log_bytes", "Bytes in the prediction logs", multiprocess_mode="livesum")
PENDING = Gauge(
    "sentiment_writer_pending_rows", "Rows acknowledged, not yet in PostgreSQL", multiprocess_mode="livesum"
)
LAG = Gauge(
    "sentiment_writer_lag_seconds", "Seconds since the last flush while rows are pending", multiprocess_mode="max"
)
MODEL_VERSION = Gauge(
    "sentiment_model_version", "Version of the champion served", ["model"], multiprocess_mode="livemostrecent"
)
MODEL_LOAD = Gauge(
    "sentiment_model_load_seconds", "Seconds the last model load took", ["model"], multiprocess_mode="livemostrecent"
)

ADMISSION_LIMIT = Gauge(
    "sentiment_admission_limit", "Adaptive concurrency limit (api/admission.py)", multiprocess_mode="livesum"
)
ADMISSION_INFLIGHT = Gauge(
    "sentiment_admission_inflight", "Requests admitted and in progress", multiprocess_mode="livesum"
)
ADMISSION_WAITING = Gauge(
    "sentiment_admission_waiting", "Requests queued for an admission slot", multiprocess_mode="livesum"
)

_LABELS = {0: "negative", 1: "positive"}
_FEEDBACK = {201: "stored", 200: "repeat", 409: "conflict", 403: "forbidden", 401: "unauthenticated", 404: "unknown"}
_REFUSED = {413: "too_large", 429: "rate_limited", 408: "body_timeout"}
_REFRESH_SECONDS = 1.0


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> tuple[bytes, str]:
    """The text format: every worker's values in multiprocess mode, else this process's."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_exit() -> None:
    """At a worker's graceful exit: its live gauges leave the sums (a worker that dies keeps its last
    values until the next API start wipes the folder)."""
    if multiprocess_dir():
        _mp.mark_process_dead(os.getpid())


def count_predictions(rows: Iterable[Any]) -> None:
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (_LABELS.get(r.label, str(r.label)), str(r.model_version))
        counts[key] = counts.get(key, 0) + 1
    for (label, version), n in counts.items():
        PREDICTIONS.labels(label, version).inc(n)


def model_loaded(name: str, version: int, seconds: float) -> None:
    MODEL_VERSION.labels(name).set(version)
    MODEL_LOAD.labels(name).set(seconds)


def refresh(state: Any) -> None:
    """The gauges from the writer's counters (read only) and the current model."""
    limiter = getattr(state, "admission", None)
    if limiter is not None:
        ADMISSION_LIMIT.set(int(limiter.limit))
        ADMISSION_INFLIGHT.set(limiter.inflight)
        ADMISSION_WAITING.set(len(limiter.waiters))
    writer = getattr(state, "writer", None)
    if writer is not None:
        try:
            LOG_BYTES.set(writer.log.used_bytes)
            pending = writer.pending
            PENDING.set(pending)
            last = getattr(writer, "last_flush_at", None)
            LAG.set(max(0.0, time.time() - last) if pending and last else 0.0)
        except Exception:  # noqa: BLE001 - a gauge must never fail a request
            pass


class MetricsMiddleware:
    """Counts every answer (outermost middleware, so admission's refusals are counted too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._refreshed = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def send_counted(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self._observe(scope, status_code, time.perf_counter() - started)

    def _observe(self, scope: Scope, status_code: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope.get("method", "")
        REQUESTS.labels(method, route, str(status_code)).inc()
        LATENCY.labels(method, route).observe(seconds)
        if route == "/feedback" and method == "POST":
            FEEDBACK.labels(_FEEDBACK.get(status_code, str(status_code))).inc()
        reason = _REFUSED.get(status_code) or ("shed" if status_code == 503 and route == "unmatched" else None)
        if reason:
            REFUSED.labels(reason).inc()
        now = time.monotonic()
        if now - self._refreshed >= _REFRESH_SECONDS:
            self._refreshed = now
            refresh(getattr(scope.get("app"), "state", None))
