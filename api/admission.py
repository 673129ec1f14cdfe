"""Admission control and the request-size limit, as one pure ASGI middleware (no per-request task).

- More than ``api_max_inflight`` requests in this worker at once: the next one is answered 503 at
  once, with ``Retry-After: 1`` (load is shed instead of queued into one-second latencies).
  ``/health/live`` is never shed (a liveness probe must not fail because the API is busy).
- A request body larger than ``api_max_body_bytes`` is answered 413: by its ``Content-Length``
  before it is read, or, for a chunked body, as soon as more than that has arrived.

Both answers have the one error shape of :mod:`api.errors`.
"""

from __future__ import annotations

import json
from typing import Any

from api.errors import error_body

NEVER_SHED = ("/health/live",)


class Admission:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.inflight = 0
        self.shed = 0

    @staticmethod
    def _limits(scope) -> tuple[int, int]:
        settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
        return (
            int(getattr(settings, "api_max_inflight", 32)),
            int(getattr(settings, "api_max_body_bytes", 8 * 1024 * 1024)),
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_inflight, max_body = self._limits(scope)
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
                    )
                    return
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
        received = 0
        too_large = False

        async def limited_receive():
            nonlocal received, too_large
            if too_large:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:  # the app sees the body end here; its answer is replaced by a 413
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def limited_send(message):
            if not too_large:
                await send(message)
            elif message["type"] == "http.response.start":
                await _answer(send, 413, f"request body too large: more than {max_body} bytes (api_max_body_bytes)")

        try:
            await self.app(scope, limited_receive, limited_send)
        finally:
            self.inflight -= 1


async def _answer(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
