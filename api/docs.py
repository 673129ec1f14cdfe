"""API docs that work offline: Swagger UI at /docs and ReDoc at /redoc, their assets served by the
app itself from the installed ``fastapi-offline`` package (``/docs-assets/…``: Swagger UI's bundle
and CSS, ReDoc's standalone bundle), never from a CDN. FastAPI's own /docs and /redoc (CDN) are
off (``docs_url=None``). No inline script: Swagger UI starts from /static/swagger-init.js, ReDoc
from its ``<redoc spec-url>`` element, so both run under the docs' Content-Security-Policy
(``script-src 'self'``, api/headers.py). The OpenAPI document declares the bearer scheme
(api/contract.py), so Swagger UI has an "Authorize" button."""

from __future__ import annotations

import html
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


def _urls(request: Request) -> tuple[str, str, str]:
    root = request.scope.get("root_path", "").rstrip("/")
    return root, f"{root}{request.app.openapi_url}", html.escape(request.app.title)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root, openapi, title = _urls(request)
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title} - Swagger UI</title>"
        f"<link rel='stylesheet' href='{root}{ASSETS_URL}/swagger-ui.css'>"
        f"<link rel='icon' type='image/png' href='{root}{ASSETS_URL}/favicon.png'></head><body>"
        f"<div id='swagger-ui' data-openapi-url='{html.escape(openapi, quote=True)}'></div>"
        f"<script src='{root}{ASSETS_URL}/swagger-ui-bundle.js'></script>"
        f"<script src='{root}/static/swagger-init.js'></script></body></html>"
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root, openapi, title = _urls(request)
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title} - ReDoc</title><meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<link rel='icon' type='image/png' href='{root}{ASSETS_URL}/favicon.png'>"
        "<style>body{margin:0;padding:0}</style></head><body>"
        f"<redoc spec-url='{html.escape(openapi, quote=True)}'></redoc>"
        f"<script src='{root}{ASSETS_URL}/redoc.standalone.js'></script></body></html>"
    )


def install(app: FastAPI) -> None:
    """/docs, /redoc and their assets (create the app with ``docs_url=None, redoc_url=None``)."""
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
