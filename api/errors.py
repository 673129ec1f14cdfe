"""One shape for every error response:

``{"status": <HTTP status>, "message": "<one line saying why>", "detail": [{"type", "loc", "msg"}, ...]}``

``detail`` is always a list: one item per invalid field for a 422 (``loc`` names the field,
e.g. ``["body", "texts", 2]``), a single item with an empty ``loc`` otherwise. Headers of the
error (``Retry-After`` on a 503) are kept. The rejected input is not echoed back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_")
    except ValueError:  # pragma: no cover
        return "error"


def error_body(status: int, message: str, detail: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    items = list(detail) if detail else [{"type": _phrase(status), "loc": [], "msg": message}]
    return {"status": status, "message": message, "detail": items}


def error_response(status: int, message: str, detail=None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, detail), status_code=status, headers=headers)


def _loc(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # registered for that type only
    message = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code).replace("_", " ")
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # registered for that type only
    items: list[dict[str, Any]] = [
        {"type": str(e.get("type", "invalid")), "loc": [p for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    message = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in items) or "invalid request"
    return error_response(422, message, items)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); it is logged on the server")


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
