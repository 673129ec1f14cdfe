"""The platform's views in the Airflow UI (Airflow 3 plugin interface: ``fastapi_apps`` + ``external_views``).

A small FastAPI app mounted by Airflow's API server under ``/sentiment-platform``:

- ``/sentiment-platform/reports``: the latest drift reports (``ml.stages.monitoring.archive.list_reports``), each
  linking to its Evidently HTML; ``reports.json`` the same as JSON;
- ``/sentiment-platform/model-card``: the champion's model card (version, metrics, snapshot and its
  lineage, behavioural checks, feedback against the retraining threshold, retrainings, alerts);
  ``model-card.json`` the same as JSON.

Two ``external_views`` put them in the UI's navigation ("Browse"), embedded as iframes. Links are
relative (the UI sets ``<base href>``), so a non-root ``AIRFLOW__API__BASE_URL`` works too.

Importing this file does no I/O and imports no ``ml`` module: the plugin manager loads it in every
Airflow process; the handlers import ``ml`` when called. The platform's settings come from the
environment Airflow runs with (``ml.platform.orchestration.airflow_env``: ``DATABASE_URL``,
``SENTIMENT_*``).

**Login required.** Airflow mounts a plugin app with ``app.mount()``, which inherits none of the
core API's auth dependencies, so this app requires the Airflow login itself: every route depends on
``require_airflow_login``, which resolves the user with Airflow's own ``get_user`` (the
``Authorization: Bearer`` token from ``POST /auth/token``, or the UI's ``_token`` cookie that the
embedded iframes carry) and asks the configured auth manager ``is_authorized_view(WEBSITE)`` (any
role that may use the UI: simple auth manager or FAB Viewer and up). No credential → 401 for the
JSON endpoints and a redirect to the auth manager's login page for the HTML pages; an invalid
token → 403; a user without the permission → 403. Airflow's security module is imported on the
first request, so importing the plugin stays cheap.
"""

from __future__ import annotations

import html
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

URL_PREFIX = "/sentiment-platform"

_bearer = HTTPBearer(auto_error=False)
_JSON_SUFFIX = ".json"


class LoginRequired(Exception):
    """No Airflow credential on a request for an HTML page: answered with a redirect to the login."""


async def require_airflow_login(
    request: Request, bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Any:
    """The Airflow user of this request, by Airflow's own rules (``get_user``: bearer token first,
    else the UI's JWT cookie), authorised for the UI (``AccessView.WEBSITE``) by the configured
    auth manager. Raises 401 (no or expired token), 403 (invalid token, or not authorised)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import get_user

    try:
        user = await get_user(request, None, bearer)
    except HTTPException as exc:
        if exc.status_code == 401 and not request.url.path.endswith(_JSON_SUFFIX):
            raise LoginRequired() from exc
        raise
    if not get_auth_manager().is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(403, detail="Forbidden")
    return user


app = FastAPI(
    title="Sentiment platform views",
    description="Drift reports and the champion's model card",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
    dependencies=[Depends(require_airflow_login)],
)


@app.exception_handler(LoginRequired)
async def _to_login(request: Request, exc: LoginRequired) -> RedirectResponse:
    from airflow.api_fastapi.app import get_auth_manager

    return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)


def _settings():
    from ml.platform.config import get_settings

    return get_settings()


@app.get("/", include_in_schema=False)
def index() -> RedirectResponse:
    return RedirectResponse("model-card")


@app.get("/model-card.json")
def model_card_json() -> dict[str, Any]:
    from ml.reports.model_card import model_card

    return model_card(_settings())


@app.get("/model-card", response_class=HTMLResponse)
def model_card_page() -> HTMLResponse:
    from ml.reports.model_card import card_html, model_card

    return HTMLResponse(card_html(model_card(_settings())))


@app.get("/reports.json")
def reports_json(limit: int = Query(30, ge=1, le=500)) -> list[dict[str, Any]]:
    from ml.stages.monitoring.archive import list_reports

    return list_reports(limit, settings=_settings())


@app.get("/reports", response_class=HTMLResponse)
def reports_page(limit: int = Query(30, ge=1, le=500)) -> HTMLResponse:
    from ml.stages.monitoring.archive import list_reports

    s = _settings()
    rows = list_reports(limit, settings=s)
    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Drift reports</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2330}table{border-collapse:collapse}"
        "td,th{border:1px solid #dde1e8;padding:.25rem .6rem;font-size:.9rem;text-align:left}th{background:#f3f5f8}"
        ".drift{color:#b00020;font-weight:600}.ok{color:#2b7a3d}.empty{color:#5b6475}</style></head><body>",
        f"<h1>Drift reports <small>({e(s.model_name)})</small></h1>",
    ]
    if not rows:
        out.append("<p id='no-reports'>No drift report yet: the sentiment_monitoring DAG writes one per run.</p>")
    else:
        out.append(
            "<table id='reports'><tr><th>report</th><th>period</th><th>status</th><th>rows</th>"
            "<th>reported wrong</th><th>verdict</th></tr>"
        )
        for r in rows:
            out.append(
                f"<tr><td><a href='reports/{e(r['id'])}/html' target='_blank'>{e(r['id'])}</a></td>"
                f"<td>{e(str(r['period_start'])[:16])} → {e(str(r['period_end'])[:16])}</td>"
                f"<td class='{e(r['status'])}'>{e(r['status'])}</td><td>{r['n_current_total']}</td>"
                f"<td>{r['n_reported_wrong']}</td><td>{e(r['verdict'])}</td></tr>"
            )
        out.append("</table>")
    out.append("<p><a href='model-card'>Champion model card</a> · <a href='reports.json'>JSON</a></p></body></html>")
    return HTMLResponse("".join(out))


@app.get("/reports/{report_id}/html", response_class=FileResponse)
def report_html(report_id: str) -> FileResponse:
    from ml.stages.monitoring.archive import report_html_path

    path = report_html_path(report_id, settings=_settings())
    if path is None or not path.exists():
        raise HTTPException(404, detail=f"no HTML for drift report {report_id!r}")
    return FileResponse(path, media_type="text/html")


class SentimentPlatformPlugin(AirflowPlugin):
    name = "sentiment_platform"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Sentiment platform"}]
    external_views = [
        {
            "name": "Drift reports",
            "href": URL_PREFIX.lstrip("/") + "/reports",
            "destination": "nav",
            "category": "browse",
            "url_route": "sentiment-drift-reports",
        },
        {
            "name": "Champion model card",
            "href": URL_PREFIX.lstrip("/") + "/model-card",
            "destination": "nav",
            "category": "browse",
            "url_route": "sentiment-model-card",
        },
    ]
