"""One shape for every error response:

``{"status": <HTTP status>, "message": "<one line saying why>", "detail": [{"type", "loc", "msg"}, ...]}``

``detail`` is always a list: one item per invalid field for a 422 (``loc`` names the field,
e.g. ``["body", "texts", 2]``), a single item with an empty ``loc`` otherwise. A body that is not
JSON is a 400 (its item's ``loc`` is ``["body", <character position>]``, the message gives line and
column); a value the database refuses (psycopg ``DataError``) that got past validation is a 422. Headers of the
error (``Retry-After`` on a 503) are kept. The rejected input is not echoed back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException, Request, status
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


def error_response(
    status: int, message: str, detail: Sequence[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, detail), status_code=status, headers=headers)


# in errors (not deps): the runtime's feedback recorder raises it too, and deps imports the runtime
RETRY_AFTER_SECONDS = 5


def database_unavailable(exc: BaseException | str) -> HTTPException:
    """503 + Retry-After: the database cannot be reached; nothing was stored."""
    why = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}".strip()
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail=f"database unavailable, nothing was stored; retry later ({why})",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _loc(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # registered for that type only
    message = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code).replace("_", " ")
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


def _position(doc: Any, pos: int) -> str:
    """``line L, column C (character P)`` of a position in the JSON text that failed to parse."""
    if isinstance(doc, bytes | bytearray):
        doc = bytes(doc).decode("utf-8", errors="replace")
    if not isinstance(doc, str):
        return f"character {pos}"
    line = doc.count("\n", 0, pos) + 1
    column = pos - (doc.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {column} (character {pos})"


def _not_json(exc: RequestValidationError) -> JSONResponse | None:
    """A body that is not JSON: 400 (the README and the OpenAPI document say so), naming where it breaks.
    FastAPI reports it as a validation error of type ``json_invalid`` at ``["body", <position>]``."""
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            loc = list(e.get("loc", ()))
            pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
            why = str((e.get("ctx") or {}).get("error", "JSON decode error"))
            message = f"the body is not valid JSON: {why} at {_position(exc.body, pos)}"
            return error_response(400, message, [{"type": "json_invalid", "loc": ["body", pos], "msg": message}])
    return None


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # registered for that type only
    not_json = _not_json(exc)
    if not_json is not None:
        return not_json
    items: list[dict[str, Any]] = [
        {"type": str(e.get("type", "invalid")), "loc": [p for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    message = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in items) or "invalid request"
    return error_response(422, message, items)


async def _database_refused(request: Request, exc: Exception) -> JSONResponse:
    """Last resort: a value PostgreSQL refuses (psycopg ``DataError``: NUL in text, a number out of range,
    an invalid encoding) is the caller's input, not a server fault. The request validation refuses these
    first (api/schemas.py); this only keeps one that slipped through from becoming a 500."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    log.warning("database refused a value on %s %s: %s", request.method, request.url.path, reason)
    message = f"a value in the request was refused by the database: {reason}"
    return error_response(422, message, [{"type": "invalid_value", "loc": [], "msg": message}])


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); it is logged on the server")


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(psycopg.DataError, _database_refused)
    app.add_exception_handler(Exception, _unexpected)
