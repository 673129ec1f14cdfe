"""GET /health: is the database reachable, which model is loaded, is the writer keeping up."""
from __future__ import annotations

from fastapi import APIRouter

from api.deps import ManagerDep, SettingsDep, WriterDep, connect_db
from api.schemas import DatabaseHealth, Health, ModelHealth, WriterHealth

router = APIRouter(tags=["health"])


def _database(settings) -> DatabaseHealth:
    try:
        with connect_db(settings, timeout=2) as conn:
            conn.execute("SELECT 1").fetchone()
        return DatabaseHealth(reachable=True)
    except Exception as exc:  # any failure means "not reachable"; say why
        return DatabaseHealth(reachable=False, error=f"{type(exc).__name__}: {exc}".strip())


@router.get("/health", response_model=Health)
def health(manager: ManagerDep, writer: WriterDep, settings: SettingsDep) -> Health:
    """Always 200 while the process serves; ``status`` is ``ok`` when the database is reachable
    and a model is loaded, else ``degraded`` (the details say which)."""
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
    return Health(
        status="ok" if database.reachable and loaded is not None else "degraded",
        database=database,
        model=model,
        writer=WriterHealth(pending_rows=writer.pending, written_rows=writer.written, last_error=writer.last_error),
    )
