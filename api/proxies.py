"""Who the peer is: ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are honoured only when the socket's peer
is one of the ``trusted_proxies`` (addresses or CIDRs; empty by default: no header is ever trusted).

The setting is the one source: every launcher of ours starts uvicorn with ``--no-proxy-headers``
(``make up``, compose, the image), so uvicorn never rewrites the client on its own (its default
trusts 127.0.0.1, and ``make up`` binds to loopback: every local caller would be a "proxy"), and this
middleware applies uvicorn's own parsing (``ProxyHeadersMiddleware``, the right-most untrusted hop)
with the configured list. The identity built from the result is validated again in
:func:`ml.platform.security.anonymous` (an address, else ``unknown``).
"""

from __future__ import annotations

from typing import Any

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ml.platform.config import Settings


class TrustedProxies:
    """ASGI middleware: uvicorn's proxy-header handling with ``settings.trusted_proxies`` (read from the
    app's settings, set in the lifespan); a pass-through while the list is empty."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._for: tuple[str, ...] | None = None
        self._inner: ProxyHeadersMiddleware | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            settings: Settings | None = getattr(getattr(scope.get("app"), "state", None), "settings", None)
            proxies = tuple(settings.trusted_proxies) if settings is not None else ()
            if proxies:
                if self._inner is None or self._for != proxies:
                    self._inner, self._for = ProxyHeadersMiddleware(self.app, trusted_hosts=list(proxies)), proxies
                await self._inner(scope, receive, send)
                return
        await self.app(scope, receive, send)
