"""GET /models/comparison: the latest model comparison (one row per family), as JSON, as an
HTML page, and its accuracy-vs-inference-time chart."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse, HTMLResponse

from api.auth import OptionalCaller
from api.deps import SettingsDep
from api.read_models import Comparison
from ml.platform.http_headers import HTML_NO_SCRIPT_CSP
from ml.stages.compare import latest_comparison

router = APIRouter(tags=["models"])

_NONE = "no model comparison yet: run the sentiment_training DAG (or `ml compare`) first"


def _latest(settings: Any) -> dict[str, Any]:
    comp = latest_comparison(settings)
    if comp is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _NONE)
    return comp


@router.get(
    "/models/comparison",
    response_model=Comparison,
    response_model_exclude_unset=True,
    responses={
        404: {"description": "no comparison yet"},
        200: {
            "content": {"text/html": {"schema": {"type": "string"}}},
            "description": "the comparison (JSON), or with ?format=html a page",
        },
    },
)
def comparison(
    settings: SettingsDep, caller: OptionalCaller, format: str = Query("json", pattern="^(json|html)$")
) -> Any:
    """The latest comparison: ``?format=html`` gives a page with the table and the chart. The chart's
    file path (``chart_path``) only with an ``admin`` key; anyone gets ``chart_url``."""
    comp = _latest(settings)
    if format == "json":
        return comp if caller.has("admin") else public(comp)
    w = comp["winner"]
    chart = (
        '<p><img src="/models/comparison/chart.png" alt="accuracy vs inference time"></p>'
        if comp.get("chart_path")
        else ""
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Model comparison</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}</style></head><body>"
        f"<h1>Model comparison #{comp['id']}</h1>"
        f"<p>{html.escape(comp['created_at'])} · snapshot <code>{html.escape(comp['snapshot_hash'][:16])}</code>"
        f" · profile {html.escape(str(comp['profile']))} · winner <b>{html.escape(str(w['family']))}</b>"
        f" (version {w['version']}, {html.escape(str(w['status']))}: {html.escape(str(w['decision'] or ''))})</p>"
        f"{comp['html']}{chart}</body></html>"
    )
    return HTMLResponse(page, headers={"Content-Security-Policy": HTML_NO_SCRIPT_CSP})


def public(comp: dict[str, Any]) -> dict[str, Any]:
    """The comparison without server paths: ``chart_path`` becomes ``chart_url`` (the route that serves it)."""
    out = {k: v for k, v in comp.items() if k != "chart_path"}
    out["chart_url"] = "/models/comparison/chart.png" if comp.get("chart_path") else None
    return out


@router.get(
    "/models/comparison/chart.png",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/png": {}}, "description": "the chart (PNG)"},
        404: {"description": "no comparison or chart"},
    },
)
def comparison_chart(settings: SettingsDep) -> FileResponse:
    comp = _latest(settings)
    path = comp.get("chart_path")
    if not path or not Path(path).exists():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the latest comparison has no chart file")
    return FileResponse(path, media_type="image/png")
