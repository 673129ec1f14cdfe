"""The platform's views in the Airflow UI (Airflow 3 plugin interface: ``fastapi_apps`` + ``external_views``).

A small FastAPI app mounted by Airflow's API server under ``/sentiment-platform``:

- ``/sentiment-platform/reports``: the latest drift reports (``ml.stages.monitoring.archive.list_reports``), each
  linking to its Evidently HTML; ``reports.json`` the same as JSON;
- ``/sentiment-platform/history``: the drift history (``ml.stages.monitoring.history``): drift share,
  CBPE estimated accuracy and report rate across the stored reports, one line per model version,
  drawn server-side as inline SVG; ``history.json`` the numbers;
- ``/sentiment-platform/model-card``: the champion's model card (version, metrics, the confusion matrix
  and ROC logged to MLflow, links to the MLflow run and registered version, intended use and
  limitations, snapshot and its lineage, behavioural checks, feedback against the retraining threshold,
  retrainings, alerts); ``model-card.json`` the same as JSON (without the images).

Three ``external_views`` put them in the UI's navigation ("Browse"), embedded as iframes. Links are
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

**Headers.** The pages are embedded by the Airflow UI, in its origin, where the UI's cookie alone
is accepted by Airflow's REST API: nothing in them may run as script. The model card and the
report list are escaped server-made HTML with no script, sent with a CSP that allows none
(``script-src`` unset under ``default-src 'none'``); a drift report's Evidently page (its data
escaped inside its scripts: ml/stages/monitoring/report_html.py) is sent with
``Content-Security-Policy: sandbox allow-scripts; …`` so its scripts run in an opaque origin with no
access to the UI's cookie, storage or API, and no network (ml/platform/http_headers.py). Each page
also gets ``X-Frame-Options: SAMEORIGIN`` (the UI frames them), ``nosniff`` and ``no-referrer``.
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


@app.middleware("http")
async def _security_headers(request: Request, call_next: Any) -> Any:
    """Every answer (the JSON endpoints, redirects, errors) gets nosniff, no-referrer, SAMEORIGIN framing and
    a CSP that loads nothing, unless its route set its own (the pages, the reports)."""
    from ml.platform import http_headers

    response = await call_next(request)
    for key, value in http_headers.plugin_headers(http_headers.API_CSP).items():
        response.headers.setdefault(key, value)
    return response


@app.exception_handler(LoginRequired)
async def _to_login(request: Request, exc: LoginRequired) -> RedirectResponse:
    from airflow.api_fastapi.app import get_auth_manager

    return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)


def _headers(csp: str | None = None) -> dict[str, str]:
    from ml.platform import http_headers

    return http_headers.plugin_headers(csp or http_headers.HTML_NO_SCRIPT_CSP)


def _settings():
    from ml.platform.config import get_settings

    return get_settings()


@app.get("/", include_in_schema=False)
def index() -> RedirectResponse:
    return RedirectResponse("model-card")


@app.get("/model-card.json")
def model_card_json() -> dict[str, Any]:
    from ml.views.model_card import model_card

    return model_card(_settings(), images=False)


@app.get("/model-card", response_class=HTMLResponse)
def model_card_page() -> HTMLResponse:
    from ml.views.model_card import card_html, model_card

    return HTMLResponse(card_html(model_card(_settings())), headers=_headers())


@app.get("/reports.json")
def reports_json(limit: int = Query(30, ge=1, le=500)) -> list[dict[str, Any]]:
    from ml.stages.monitoring.archive import list_reports

    return list_reports(limit, settings=_settings())


def _rows_cell(r: dict[str, Any]) -> str:
    """The period's predictions, and how many of them (the version serving at its end) were compared."""
    total, mine = r["n_current_total"], r.get("n_version_predictions")
    if mine is None or mine == total:
        return html.escape(str(total))
    return html.escape(f"{total} ({mine} of v{r['reference_version']} compared)")


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
                f"<td class='{e(r['status'])}'>{e(r['status'])}</td><td>{_rows_cell(r)}</td>"
                f"<td>{r['n_reported_wrong']}</td><td>{e(r['verdict'])}</td></tr>"
            )
        out.append("</table>")
    out.append(
        "<p><a id='history-link' href='history'>Drift history</a> · <a href='model-card'>Champion model card</a>"
        " · <a href='reports.json'>JSON</a></p></body></html>"
    )
    return HTMLResponse("".join(out), headers=_headers())


@app.get("/history.json")
def history_json(limit: int = Query(365, ge=1, le=5000)) -> list[dict[str, Any]]:
    from ml.stages.monitoring.archive import history

    s = _settings()
    return history(s.model_name, limit, settings=s)


@app.get("/history", response_class=HTMLResponse)
def history_page(limit: int = Query(365, ge=1, le=5000)) -> HTMLResponse:
    """Drift share, estimated accuracy and report rate across the stored reports: inline SVG, no script
    (the page CSP's ``default-src 'none'`` with inline styles, as the other pages)."""
    from ml.stages.monitoring import history
    from ml.stages.monitoring.archive import history as rows_of

    s = _settings()
    return HTMLResponse(history.page(rows_of(s.model_name, limit, settings=s), s.model_name), headers=_headers())


@app.get("/reports/history/html", include_in_schema=False)
def history_from_a_report() -> RedirectResponse:
    """Where a report's verdict block links (``../history/html``, the API's path too): the history page."""
    return RedirectResponse("../../history")


@app.get("/reports/{report_id}/html", response_class=FileResponse)
def report_html(report_id: str) -> FileResponse:
    from ml.platform.http_headers import report_headers
    from ml.stages.monitoring.archive import report_html_path

    path = report_html_path(report_id, settings=_settings())
    if path is None or not path.exists():
        raise HTTPException(404, detail=f"no HTML for drift report {report_id!r}")
    csp = report_headers(frame_ancestors="'self'")["Content-Security-Policy"]
    return FileResponse(path, media_type="text/html", headers=_headers(csp))


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
            "name": "Drift history",
            "href": URL_PREFIX.lstrip("/") + "/history",
            "destination": "nav",
            "category": "browse",
            "url_route": "sentiment-drift-history",
        },
        {
            "name": "Champion model card",
            "href": URL_PREFIX.lstrip("/") + "/model-card",
            "destination": "nav",
            "category": "browse",
            "url_route": "sentiment-model-card",
        },
    ]
