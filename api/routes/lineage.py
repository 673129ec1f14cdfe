"""GET /predictions/{id}/lineage: which model version made a prediction, on which data it was trained,
which retraining (and which feedback reports) produced that data, and which code commit ran."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status

from api import views
from api.auth import OptionalCaller
from api.deps import SettingsDep, WriterDep, open_db
from api.read_models import Lineage
from api.runtime.writer import FlushError
from ml.views import lineage

router = APIRouter(tags=["lineage"])


@router.get(
    "/predictions/{prediction_id}/lineage",
    response_model=Lineage,
    response_model_exclude_unset=True,
    responses={
        **views.HTML_200,
        404: {"description": "no prediction with that id"},
        503: {"description": "database unavailable"},
    },
)
def prediction_lineage(
    prediction_id: uuid.UUID,
    writer: WriterDep,
    settings: SettingsDep,
    caller: OptionalCaller,
    request: Request,
    response: Response,
) -> Any:
    """With an ``admin`` key: the prediction; its model version (MLflow run, metrics, events); the code commit; the dataset
    snapshot that trained it and its ancestors (``parent_hash``), each retraining snapshot with its
    retraining and the feedback reports it consumed; ``summary`` says it in one line. Without ``admin``:
    the same, redacted (``"redacted": true``): counts only; no texts, comments, reports, tags or paths."""
    try:
        writer.flush()  # a prediction made a moment ago may still be buffered
    except FlushError:
        pass  # the stored part of the history is still answered; an unstored id is a 404 below
    with open_db(settings) as conn:
        out = lineage.prediction_lineage(prediction_id, settings, conn=conn)
    if out is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no prediction with id {prediction_id}")
    views.vary(response)
    out = out if caller.has("admin") else lineage.redacted(out)
    return views.lineage_page(out) if views.wants_html(request) else out
