"""Health: ``/health/live`` (the process serves), ``/health/ready`` (it can do its job: the
database answers and a model is loaded), ``/health`` (the details; 503 when degraded)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ManagerDep, SettingsDep, WriterDep, connect_db
from api.errors import error_response
from api.runtime.model_manager import ModelManager
from api.runtime.writer import PredictionWriter
from api.schemas import DatabaseHealth, ErrorResponse, Health, ModelHealth, Readiness, WriterHealth
from ml.platform.config import Settings
from ml.store import schema

router = APIRouter(tags=["health"])


def _database(settings: Settings) -> DatabaseHealth:
    try:
        with connect_db(settings, timeout=2) as conn:
            schema.ping(conn)
        return DatabaseHealth(reachable=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"; say why
        return DatabaseHealth(reachable=False, error=f"{type(exc).__name__}: {exc}".strip())


def _health(manager: ModelManager, writer: PredictionWriter, settings: Settings) -> Health:
    database = _database(settings)
    loaded = manager.current
    model = ModelHealth(
        loaded=loaded is not None,
        name=settings.model_name,
        version=loaded.version if loaded else None,
        run_id=loaded.run_id if loaded else None,
        loaded_at=loaded.loaded_at if loaded else None,
        last_error=manager.last_error,
    )
    pending = writer.pending
    used = writer.log.used_bytes
    reasons = []
    if not database.reachable:
        reasons.append(f"database unreachable: {database.error}")
    if loaded is None:
        reasons.append(
            f"no model loaded: registered model {settings.model_name!r} has no "
            f"{settings.champion_alias!r} alias yet" + (f" ({manager.last_error})" if manager.last_error else "")
        )
    if not writer.has_room():
        reasons.append(
            f"prediction log full: {used} bytes wait to be written to the database "
            f"(cap {writer.max_bytes}, prediction_log_max_bytes)"
        )
    return Health(
        status="degraded" if reasons else "ok",
        reasons=reasons,
        database=database,
        model=model,
        writer=WriterHealth(
            pending_rows=pending,
            log_bytes=used,
            max_log_bytes=writer.max_bytes,
            log_segments=writer.log.segments,
            written_rows=writer.written,
            last_error=writer.last_error,
        ),
    )


@router.get("/health/live", response_model=Readiness)
async def live() -> Readiness:
    """200 while the process serves requests (for a liveness probe: restart when it fails)."""
    return Readiness(ready=True)


@router.get(
    "/health/ready",
    response_model=Readiness,
    responses={503: {"model": ErrorResponse, "description": "not ready; the message says why"}},
)
def ready(manager: ManagerDep, writer: WriterDep, settings: SettingsDep) -> Readiness | JSONResponse:
    """200 when the database answers, a model is loaded and the prediction log has room;
    else 503 with the reasons (for a readiness probe: send no traffic while it fails)."""
    h = _health(manager, writer, settings)
    if h.reasons:
        return error_response(503, "not ready: " + "; ".join(h.reasons), headers={"Retry-After": "5"})
    return Readiness(ready=True)


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "degraded"}})
def health(manager: ManagerDep, writer: WriterDep, settings: SettingsDep) -> JSONResponse:
    """The details: database, model, writer (buffer, spool). ``status`` is ``ok`` (200) when the
    database is reachable, a model is loaded and the buffer has room, else ``degraded`` (503)
    with ``reasons``."""
    h = _health(manager, writer, settings)
    return JSONResponse(h.model_dump(mode="json"), status_code=200 if h.status == "ok" else 503)
