"""GET /model: the champion being served, with its MLflow run's metrics and lineage tags."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response

from api import views
from api.deps import ModelDep, SettingsDep, open_db
from api.schemas import ModelInfo
from ml.platform import progressive
from ml.store import training_runs as training_runs_store

router = APIRouter(tags=["model"])


@router.get(
    "/model", response_model=ModelInfo, responses={**views.HTML_200, 503: {"description": "no champion model yet"}}
)
def model_info(loaded: ModelDep, settings: SettingsDep, request: Request, response: Response) -> Any:
    """The model answering /predict now (read at load time; no registry call here). A browser (``Accept``
    preferring ``text/html``) gets it as a page, with the champion history (``model_events``)."""
    views.vary(response)
    run = loaded.run
    tags: dict[str, str] = run.get("tags", {})
    info = ModelInfo(
        name=loaded.name,
        alias=settings.champion_alias,
        version=loaded.version,
        run_id=loaded.run_id,
        loaded_at=loaded.loaded_at,
        trained_at=run.get("started_at"),
        metrics=run.get("metrics", {}),
        dataset_hash=tags.get("dataset_hash"),
        git_commit=tags.get("git_commit"),
        family=tags.get("family"),
        tags=tags,
        external=_external(run.get("metrics", {}), tags),
    )
    events: list[dict[str, Any]] | None = None
    try:  # the challenger of make up's background comparison, with its progress (ml.platform.progressive)
        with open_db(settings) as conn:
            info.challenger = progressive.describe(settings, conn)
            if views.wants_html(request):
                events = training_runs_store.recent_events(conn, loaded.name, 50)
    except HTTPException:  # 503 from open_db: the model is still shown, without challenger and history
        pass
    if not views.wants_html(request):
        return info
    return views.model_page(info.model_dump(), events)


def _external(metrics: dict[str, float], tags: dict[str, str]) -> dict[str, Any] | None:
    """The champion's figures on the external evaluation set (MLflow ``external_*``), if evaluated on one."""
    ext: dict[str, Any] = {k[9:]: v for k, v in metrics.items() if k.startswith("external_") and "_vs_" not in k}
    if not ext:
        return None
    return {**ext, "content_hash": tags.get("external_eval_hash"), "path": tags.get("external_eval_path")}
