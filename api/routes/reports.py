"""Drift reports of the monitoring DAG: GET /reports, /reports/{id}, /reports/{id}/html."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, HTMLResponse

from api import views
from api.deps import SettingsDep, open_db
from api.read_models import DriftReport, DriftReportSummary
from ml.platform.http_headers import report_headers
from ml.stages.monitoring import archive

router = APIRouter(tags=["reports"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no report with that id"},
    503: {"description": "database unavailable"},
}


@router.get(
    "/reports",
    response_model=list[DriftReportSummary],
    response_model_exclude_unset=True,
    responses={**views.HTML_200, 503: {"description": "database unavailable"}},
)
def list_reports(
    settings: SettingsDep, request: Request, response: Response, limit: int = Query(50, ge=1, le=500)
) -> Any:
    """Drift reports, newest first: period, status (ok | drift | empty), the one-line verdict,
    row and feedback counts, live-accuracy bound. A browser gets them as a page linking each report's HTML."""
    views.vary(response)
    with open_db(settings) as conn:
        rows = archive.list_reports(limit, conn=conn)
    return views.reports_page(rows) if views.wants_html(request) else rows


@router.get("/reports/history", responses={503: {"description": "database unavailable"}})
def report_history(settings: SettingsDep, limit: int = Query(365, ge=1, le=5000)) -> list[dict[str, Any]]:
    """The drift history of the served model, oldest first: per stored report its period end, the model
    version compared, drift share, CBPE estimated accuracy and report rate (reported wrong per compared
    prediction). Drawn as charts by the Airflow plugin's /sentiment-platform/history page."""
    with open_db(settings) as conn:
        return archive.history(settings.model_name, limit, conn=conn)


@router.get(
    "/reports/history/html", response_class=HTMLResponse, responses={503: {"description": "database unavailable"}}
)
def report_history_html(settings: SettingsDep, limit: int = Query(365, ge=1, le=5000)) -> HTMLResponse:
    """The drift history as charts (inline SVG drawn server-side, no script): the page the verdict block of
    each report links to, also served by the Airflow plugin (/sentiment-platform/history)."""
    from ml.stages.monitoring import history

    with open_db(settings) as conn:
        rows = archive.history(settings.model_name, limit, conn=conn)
    return HTMLResponse(
        history.page(
            rows, settings.model_name, report_href="../{id}/html", list_href="../../reports", json_href="../history"
        )
    )


@router.get("/reports/{report_id}", response_model=DriftReport, response_model_exclude_unset=True, responses=NOT_FOUND)
def get_report(report_id: str, settings: SettingsDep) -> dict[str, Any]:
    """One report's full summary: per-metric drift verdicts, per-column scores, feedback."""
    with open_db(settings) as conn:
        summary = archive.get_report(report_id, conn=conn)
    if summary is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no drift report {report_id!r}")
    return summary


@router.get("/reports/{report_id}/html", response_class=FileResponse, responses=NOT_FOUND)
def get_report_html(report_id: str, settings: SettingsDep) -> FileResponse:
    """The Evidently HTML report (plots per column; a plain page for an empty period), served in a CSP
    sandbox: its scripts run in an opaque origin that can reach nothing (ml/platform/http_headers.py)."""
    with open_db(settings) as conn:
        path = archive.report_html_path(report_id, conn=conn)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no HTML for drift report {report_id!r}")
    return FileResponse(path, media_type="text/html", headers=report_headers())
