"""Admission control, the request-size limit and the body deadline, as one pure ASGI middleware.

- The body is read here first, before the request is admitted: a request asks for an admission slot
  only once its whole body has arrived, so clients that send their body slowly (or never) hold a
  socket, never a slot. The body must arrive within ``api_body_timeout_seconds`` of the first read
  (one deadline for the whole body, not per chunk); a body that is late is answered 408 with
  ``Connection: close`` and the connection is closed. The body read is then replayed to the app as
  one message.
- **Admission is a queue with a deadline in front of an adaptive concurrency limit** (:class:`Limiter`,
  one per worker). A request starts at once while fewer than ``limit`` requests are in progress;
  otherwise it waits in a FIFO queue. A request that cannot *start* within ``api_queue_deadline_ms``
  is answered 503 with ``Retry-After: 1``: at once when the queue ahead of it needs more than twice
  the deadline to drain (its position times the measured interval between completions), else when
  the deadline passes - never after more than the deadline, whatever the length of the queue. (A
  client that ignores Retry-After and retries at once - wrk, a naive retry loop - would otherwise
  keep the worker busy answering 503s; one that waited for the deadline first costs nothing.)
  The limit follows the worker's measured drain rate (Little's law): it is the number of requests the
  worker completes within ``api_latency_target_ms`` at the rate measured in busy periods (an EWMA of
  the interval between completions while other requests are in progress), within
  [``api_min_inflight``, ``api_max_inflight``]. A faster drain is believed sooner than a slower one
  (EWMA weights 0.25 and 0.05), and an estimate older than an idle gap longer than the deadline is
  dropped, so the limit grows back within a few dozen requests after a burst. So a request waits at
  most the deadline to start and then spends about the latency target in the app: it is shed only
  when the worker cannot serve it within target + deadline. Closed-loop load within capacity (64
  connections on 2 workers) waits in the queue instead of being shed; a burst beyond capacity is
  refused within the deadline.
  The floor (default 32, the fixed cap this replaced) keeps the micro-batcher's batches full and keeps
  the limit from collapsing when the machine, not the API, is slow: measured on 2 shared cores, a limit
  driven down to 4-8 by latency (AIMD on a target, as Netflix's concurrency-limits) queued and shed most
  of 64 connections (up to 95%, goodput 0.3x the 8-connection rate), because a CPU stall of another
  process slows every sample. The limit rises above the floor when a worker drains faster than
  floor / target (1,600 requests/s with the defaults).
- ``/health/live`` and ``/metrics`` are never queued nor shed (a liveness probe and the scrape that
  shows the overload must not fail because the API is busy; /metrics needs an ``admin`` key, and a
  wrong key is refused from api/auth.py's negative cache). ``/health/ready`` is admitted like any
  request: it opens a database connection and needs no key, so exempting it would give anyone an
  unlimited path to the database; a worker that cannot start it within the deadline is not ready.
- A request body larger than ``api_max_body_bytes`` is answered 413: by its ``Content-Length``
  before it is read, or, for a chunked body, as soon as more than that has arrived (the rest is not
  read; the connection is closed).

Every answer has the one error shape of :mod:`api.errors`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from api.errors import error_body
from ml.platform.config import Settings

NEVER_SHED = ("/health/live", "/metrics")
INTERVAL_ALPHA = 0.05  # EWMA weight of one interval between completions (a slower one)
FASTER_ALPHA = 0.25  # ... of an interval shorter than the average (recovery after a burst is quick)
EARLY_REFUSAL = 2.0  # refused at once when the expected wait is past this many deadlines


class _Late(Exception):
    """The body did not arrive within the deadline."""


class Limiter:
    """One worker's adaptive concurrency limit with a FIFO queue whose wait is bounded by a deadline.

    Not thread-safe: used from one event loop. ``clock`` is injectable for tests of the arithmetic."""

    def __init__(
        self,
        min_limit: int,
        max_limit: int,
        target_s: float,
        deadline_s: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.max_limit = max(1, int(max_limit))
        self.min_limit = max(1, min(int(min_limit), self.max_limit))
        self.target = float(target_s)
        self.deadline = float(deadline_s)
        self.clock = clock
        self.limit = float(self.min_limit)
        self.inflight = 0
        self.waiters: deque[asyncio.Future] = deque()
        self.interval = 0.0  # EWMA of seconds between completions in busy periods (1 / drain rate)
        self._last_done = 0.0
        self._busy_since = 0.0  # when the worker last went from no request in progress to one
        # counters (tests, /metrics)
        self.admitted = 0
        self.queued = 0
        self.shed_early = 0  # refused at once: the queue ahead needs longer than the deadline
        self.shed_late = 0  # refused when the deadline passed in the queue

    @property
    def shed(self) -> int:
        return self.shed_early + self.shed_late

    def expected_wait(self, position: int) -> float:
        """Seconds until the request at queue ``position`` (1 = next) gets a slot, at the measured drain rate."""
        return position * self.interval

    async def acquire(self) -> str | None:
        """Take a slot (None), or the reason this request cannot start within the deadline."""
        if self.inflight < int(self.limit) and not self.waiters:
            if self.inflight == 0:
                now = self.clock()
                if now - self._last_done > self.deadline:  # idle for a while: the old drain rate is stale
                    self.interval = 0.0
                self._busy_since = now
            self.inflight += 1
            self.admitted += 1
            return None
        position = len(self.waiters) + 1
        expected = self.expected_wait(position)
        # hopeless (the queue ahead needs twice the deadline): refused at once. Otherwise it waits, at most the
        # deadline: a client that retries at once (ignoring Retry-After) then costs the worker no busy loop of 503s
        if position > 1 and expected > EARLY_REFUSAL * self.deadline:
            self.shed_early += 1
            return (
                f"refused at once (waited 0 ms): {position - 1} requests wait ahead of this one and {self.inflight} "
                f"are in progress in this worker (adaptive limit {int(self.limit)}): it would start in about "
                f"{expected * 1e3:.0f} ms, past twice api_queue_deadline_ms ({self.deadline * 1e3:g} ms)"
            )
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        entered = self.clock()
        self.queued += 1
        try:
            # asyncio.wait never cancels fut: a slot handed over as the time runs out is seen as handed over
            await asyncio.wait((fut,), timeout=self.deadline)
        except asyncio.CancelledError:  # the client went away while waiting
            self._abandon(fut)
            raise
        if fut.done():
            self.admitted += 1
            return None
        self._abandon(fut)
        self.shed_late += 1
        return (
            f"it could not start within api_queue_deadline_ms ({self.deadline * 1e3:g} ms; waited "
            f"{(self.clock() - entered) * 1e3:.0f} ms): {self.inflight} requests in progress in this worker "
            f"(adaptive limit {int(self.limit)}), {len(self.waiters)} waiting"
        )

    def _abandon(self, fut: asyncio.Future) -> None:
        if fut.done() and not fut.cancelled():
            self.release(completed=False)  # the slot was handed over: give it back
            return
        fut.cancel()
        try:
            self.waiters.remove(fut)
        except ValueError:  # pragma: no cover - already taken off by release()
            pass

    def release(self, completed: bool = True) -> None:
        """A request left the app (``completed``) or gave back a slot it never used. Measures the drain
        rate, sets the limit from it and hands freed slots to the queue in order."""
        now = self.clock()
        concurrent = self.inflight >= 2 or bool(self.waiters)
        self.inflight -= 1
        if completed:
            if concurrent:  # a completion gap inside a busy period (an idle gap is no sample)
                gap = now - max(self._last_done, self._busy_since)
                alpha = INTERVAL_ALPHA if gap > self.interval else FASTER_ALPHA  # quicker to believe a faster drain
                self.interval = gap if self.interval == 0.0 else self.interval + alpha * (gap - self.interval)
                if self.interval > 0:
                    # Little's law: the requests this worker completes within the latency target
                    self.limit = min(float(self.max_limit), max(float(self.min_limit), self.target / self.interval))
            self._last_done = now
        while self.waiters and self.inflight < int(self.limit):
            fut = self.waiters.popleft()
            if fut.done():  # abandoned
                continue
            self.inflight += 1
            fut.set_result(None)


class Admission:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.reading = 0  # requests whose body is being read (not admitted yet)
        self.timed_out = 0
        self.limiter: Limiter | None = None

    @property
    def inflight(self) -> int:
        return self.limiter.inflight if self.limiter else 0

    @property
    def shed(self) -> int:
        return self.limiter.shed if self.limiter else 0

    def _limits(self, scope: Scope) -> tuple[Limiter, int, float]:
        state = getattr(scope.get("app"), "state", None)
        settings: Settings | None = getattr(state, "settings", None)  # set by the app's lifespan
        if settings is None:  # no lifespan ran: the fields' defaults (the environment is not read)
            settings = Settings.model_construct()
        if self.limiter is None:  # settings are read once per worker, at its first request
            self.limiter = Limiter(
                int(settings.api_min_inflight),
                int(settings.api_max_inflight),
                float(settings.api_latency_target_ms) / 1000.0,
                float(settings.api_queue_deadline_ms) / 1000.0,
            )
            if state is not None:
                state.admission = self.limiter  # read by api/metrics.py's gauges
        return (
            self.limiter,
            int(settings.api_max_body_bytes),
            float(settings.api_body_timeout_seconds),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limiter, max_body, body_timeout = self._limits(scope)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    too_large = int(v) > max_body
                except ValueError:
                    too_large = False
                if too_large:
                    await _answer(
                        send,
                        413,
                        f"request body too large: {int(v)} bytes, the limit is {max_body} (api_max_body_bytes)",
                        {"connection": "close"},
                    )
                    return
        # 1. the whole body, within the deadline, before the request is admitted
        chunks: list[bytes] = []
        received = 0
        self.reading += 1
        try:
            async with asyncio.timeout(body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # the client left: nobody to answer
                    if message["type"] != "http.request":  # pragma: no cover - not sent by ASGI servers
                        continue
                    body = message.get("body", b"")
                    received += len(body)
                    if received > max_body:
                        await _answer(
                            send,
                            413,
                            f"request body too large: more than {max_body} bytes (api_max_body_bytes)",
                            {"connection": "close"},
                        )
                        return
                    if body:
                        chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            self.timed_out += 1
            await _answer(
                send,
                408,
                f"request body not received within {body_timeout:g} s (api_body_timeout_seconds): "
                f"{received} bytes arrived; the connection is closed",
                {"connection": "close"},
            )
            return
        finally:
            self.reading -= 1
        # 2. admission: the request holds a slot only while the app works on it
        if scope.get("path") in NEVER_SHED:
            await self.app(scope, _replay(b"".join(chunks), receive), send)
            return
        refused = await limiter.acquire()
        if refused is not None:
            await _answer(send, 503, f"overloaded: {refused}; retry in a moment", {"retry-after": "1"})
            return
        try:
            await self.app(scope, _replay(b"".join(chunks), receive), send)
        finally:
            limiter.release()


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the server's http.disconnect, when it comes

    return replay


async def _answer(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
