"""Security headers on every answer of the API (one pure ASGI middleware, cheap on /predict).

Every response gets ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer`` and a Content-Security-Policy suited to what it is
(:mod:`ml.platform.http_headers`): the web page and the review page load scripts and styles from
/static only; /docs and /redoc their packaged assets; a route that sets its own policy keeps it
(the drift reports' sandbox, the comparison page); any other HTML answer gets
:data:`~ml.platform.http_headers.HTML_NO_SCRIPT_CSP` (inline styles and same-origin images, no
script: a page that needs one serves it from /static and is listed in :data:`PAGES`); anything else
(JSON, static files) may load and run nothing.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml.platform import http_headers

PAGES = {"/": http_headers.PAGE_CSP, "/review": http_headers.PAGE_CSP}
DOCS = {"/docs", "/redoc"}

_CSP = b"content-security-policy"


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


_COMMON = _encoded(http_headers.COMMON)
_BY_PATH = {path: csp.encode("latin-1") for path, csp in PAGES.items()} | {
    path: http_headers.DOCS_CSP.encode("latin-1") for path in DOCS
}
_DEFAULT = http_headers.API_CSP.encode("latin-1")
_HTML = http_headers.HTML_NO_SCRIPT_CSP.encode("latin-1")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        csp = _BY_PATH.get(path)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend(h for h in _COMMON if h[0] not in present)
                if _CSP not in present:
                    html = any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers)
                    headers.append((_CSP, csp or (_HTML if html else _DEFAULT)))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
