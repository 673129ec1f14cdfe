"""The review queue, for keys with scope ``review`` (or ``admin``): ``GET /review`` (the page),
``GET /review/queue`` (reported texts + least-confident live predictions, deduplicated by text) and
``POST /review/{item}`` (accept / reject / relabel; the item is the id of a prediction of the text) and
``DELETE /review/decisions/{id}`` (undo: the decision and the report it stored, while no retraining
consumed it; only its reviewer or an admin).
The reviewer recorded is the key's identity (:mod:`ml.stages.review` holds the rules)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor

from api.auth import ReviewCaller
from api.deps import ManagerDep, SettingsDep, open_db
from api.schemas import ErrorResponse, LabelId
from ml.models.base import explain as explain_texts
from ml.models.base import label_name
from ml.stages import review

router = APIRouter(tags=["review"])


class _ItemSegment(Convertor[str]):
    """The path segment of ``POST /review/{item}``: anything but ``queue`` (``GET /review/queue``)."""

    regex = r"(?!queue$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("review_item", _ItemSegment())
EXPLAIN_ITEMS = 50  # queue items explained per answer (the first ones; the page shows them in order)

STATIC = Path(__file__).resolve().parents[1] / "static"
AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no API key, or an invalid one"},
    403: {"model": ErrorResponse, "description": "the key lacks scope `review`"},
    503: {"description": "database unavailable"},
}


class ReviewDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["accept", "reject", "relabel"]
    label: LabelId | None = Field(
        default=None,
        description="relabel: the right label; accept: the label the item proposed (default: what it proposes now)",
    )


@router.get("/review", include_in_schema=False)
async def review_page() -> FileResponse:
    """The reviewer's page (it asks for the review key once and keeps it in sessionStorage)."""
    return FileResponse(STATIC / "review.html", media_type="text/html")


@router.get("/review/queue", responses=AUTH)
def review_queue(
    caller: ReviewCaller,
    settings: SettingsDep,
    manager: ManagerDep,
    limit: int = Query(50, ge=1, le=500),
    explain: bool = Query(True, description="the first 50 items' `explanation` by the serving model (why this label)"),
) -> dict[str, Any]:
    """Items to review, none reviewed yet, one per text: ``reported`` (most reporting identities
    first, with their comments) and ``uncertain`` (the serving model's live predictions closest to
    p = 0.5). With ``explain`` (default) each item has ``explanation`` ([{token, weight}], weight > 0
    toward positive), ``explanation_method`` and ``explained_by_version``: the serving model's, in
    one call for the whole queue (nothing is logged as a prediction)."""
    with open_db(settings) as conn:
        out = review.queue(conn, settings.model_name, settings, limit)
    loaded = manager.current
    if explain and loaded is not None and out["items"]:
        shown = out["items"][:EXPLAIN_ITEMS]  # the time budget: at most 50 x 41 texts in one call (occlusion)
        method, per_text = explain_texts(loaded.model, [it["text"] for it in shown])
        for it, words in zip(shown, per_text, strict=True):
            it.update(explanation=words, explanation_method=method, explained_by_version=loaded.version)
    return {**out, "reviewer": caller.id}


@router.post(
    # any segment but the sibling route's name (_ItemSegment): POST /review/queue is a 405 with its Allow
    # header, while a malformed id still reaches validation (a 422 naming it, control characters included)
    "/review/{item:review_item}",
    status_code=status.HTTP_201_CREATED,
    responses={
        **AUTH,
        404: {"description": "no prediction with that id"},
        422: {"description": "bad decision, or relabel without a label"},
    },
)
def review_item(item: uuid.UUID, body: ReviewDecision, caller: ReviewCaller, settings: SettingsDep) -> dict[str, Any]:
    """Accept, reject or relabel the item's text. Accept / relabel make its label a training label;
    reject keeps the text out of every retraining, whatever its reports say."""
    try:
        with open_db(settings) as conn:
            row = review.decide(conn, item, body.decision, body.label, caller.id, settings)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{exc}; nothing was stored") from exc
    except review.ReviewError as exc:
        raise HTTPException(422, detail=str(exc)) from exc
    return {
        "id": row["id"],
        "item": str(item),
        "key": row["text_sha256"],
        "decision": row["decision"],
        "label": label_name(row["label"]) if row["label"] is not None else None,
        "proposed_label": label_name(row["proposed_label"]) if row["proposed_label"] is not None else None,
        "reviewer": row["reviewer"],
        "feedback_id": row["feedback_id"],
        "created_at": row["created_at"],
    }


@router.delete(
    "/review/decisions/{review_id}",
    responses={
        **AUTH,
        403: {
            "model": ErrorResponse,
            "description": "the key lacks scope `review`, or the decision is another reviewer's",
        },
        404: {"description": "no decision with that id"},
        409: {"description": "a later decision on the text exists, or a retraining already consumed its label"},
    },
)
def undo_decision(review_id: int, caller: ReviewCaller, settings: SettingsDep) -> dict[str, Any]:
    """Undo a decision: its review row and the report it stored are deleted in one transaction, so
    the item returns to the queue. Only the reviewer who made it, or an admin; only the latest
    decision on its text; refused (409, with the reason) once a retraining consumed its label."""
    try:
        with open_db(settings) as conn:
            return review.undo(conn, review_id, caller.id, caller.has("admin"))
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except PermissionError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from exc
    except review.UndoRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
