"""Admission control, the request-size limit and the body deadline, as one pure ASGI middleware.

- The body is read here first, before the request is admitted: a request counts toward
  ``api_max_inflight`` only once its whole body has arrived, so clients that send their body slowly
  (or never) hold a socket, never an admission slot. The body must arrive within
  ``api_body_timeout_seconds`` of the first read (one deadline for the whole body, not per chunk);
  a body that is late is answered 408 with ``Connection: close`` and the connection is closed.
  The body read is then replayed to the app as one message.
- More than ``api_max_inflight`` requests in this worker at once: the next one is answered 503 at
  once, with ``Retry-After: 1`` (load is shed instead of queued into one-second latencies).
  ``/health/live`` is never shed (a liveness probe must not fail because the API is busy).
- A request body larger than ``api_max_body_bytes`` is answered 413: by its ``Content-Length``
  before it is read, or, for a chunked body, as soon as more than that has arrived (the rest is not
  read; the connection is closed).

Every answer has the one error shape of :mod:`api.errors`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from api.errors import error_body

NEVER_SHED = ("/health/live",)


class _Late(Exception):
    """The body did not arrive within the deadline."""


class Admission:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.inflight = 0
        self.shed = 0
        self.reading = 0  # requests whose body is being read (not admitted yet)
        self.timed_out = 0

    @staticmethod
    def _limits(scope) -> tuple[int, int, float]:
        settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
        return (
            int(getattr(settings, "api_max_inflight", 32)),
            int(getattr(settings, "api_max_body_bytes", 8 * 1024 * 1024)),
            float(getattr(settings, "api_body_timeout_seconds", 5.0)),
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_inflight, max_body, body_timeout = self._limits(scope)
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
        if self.inflight >= max_inflight and scope.get("path") not in NEVER_SHED:
            self.shed += 1
            await _answer(
                send,
                503,
                f"overloaded: {self.inflight} requests in progress in this worker, the limit "
                f"is {max_inflight} (api_max_inflight); retry in a moment",
                {"retry-after": "1"},
            )
            return
        self.inflight += 1
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the server's http.disconnect, when it comes

        try:
            await self.app(scope, replay, send)
        finally:
            self.inflight -= 1


async def _answer(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
