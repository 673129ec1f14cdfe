"""Drift reports of the monitoring DAG: GET /reports, /reports/{id}, /reports/{id}/html."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse

from api.deps import SettingsDep, open_db
from api.read_models import DriftReport, DriftReportSummary
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
    responses={503: {"description": "database unavailable"}},
)
def list_reports(settings: SettingsDep, limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
    """Drift reports, newest first: period, status (ok | drift | empty), the one-line verdict,
    row and feedback counts, live-accuracy bound."""
    with open_db(settings) as conn:
        return archive.list_reports(limit, conn=conn)


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
    """The Evidently HTML report (plots per column; a plain page for an empty period)."""
    with open_db(settings) as conn:
        path = archive.report_html_path(report_id, conn=conn)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no HTML for drift report {report_id!r}")
    return FileResponse(path, media_type="text/html")
