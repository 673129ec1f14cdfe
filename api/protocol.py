"""uvicorn's HTTP protocol with a deadline for the request head (slow-header clients, "slowloris").

uvicorn bounds the idle time between requests (``--timeout-keep-alive``) but not the time a client may
take to send a request's head: a socket that sends its headers a byte at a time, or nothing at all after
connecting, is held for as long as the client likes. Such sockets never reach the app (so they never
take an admission slot, api/admission.py), but each holds a file descriptor and a parser.

:class:`HeadDeadlineProtocol` is uvicorn's httptools protocol with one timer: armed when a connection is
made and when a request's first byte arrives, cleared when its head is complete. A head that has not
arrived within ``api_body_timeout_seconds`` is answered 408 (the one error shape, ``Connection: close``)
and the connection closed. The body's own deadline (from its first read) is api/admission.py's.

The API service runs with it: ``uvicorn api.main:app --http api.protocol:HeadDeadlineProtocol``
(ml/platform/startup/commands.py). Without httptools installed it is uvicorn's h11 protocol, unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from api.errors import error_body
from ml.platform.config import get_settings

log = logging.getLogger(__name__)

_TIMEOUT: float | None = None


def head_timeout() -> float:
    """``api_body_timeout_seconds``, read once per process."""
    global _TIMEOUT
    if _TIMEOUT is None:
        _TIMEOUT = float(get_settings().api_body_timeout_seconds)
    return _TIMEOUT


def _late_response(timeout: float) -> bytes:
    body = json.dumps(
        error_body(408, f"request head not received within {timeout:g} s (api_body_timeout_seconds)")
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools not installed: uvicorn's h11 protocol as it is
    from uvicorn.protocols.http.h11_impl import H11Protocol as HeadDeadlineProtocol

    log.warning("httptools is not installed: no deadline for request heads (api/protocol.py)")
else:

    class HeadDeadlineProtocol(HttpToolsProtocol):  # type: ignore[no-redef]
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout(), self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.write(_late_response(head_timeout()))
                self.transport.close()


__all__ = ["HeadDeadlineProtocol", "head_timeout"]
