"""The review queue, for keys with scope ``review`` (or ``admin``): ``GET /review`` (the page),
``GET /review/queue`` (reported texts + least-confident live predictions, deduplicated by text) and
``POST /review/{item}`` (accept / reject / relabel; the item is the id of a prediction of the text).
The reviewer recorded is the key's identity (:mod:`ml.stages.review` holds the rules)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from api.auth import ReviewCaller
from api.deps import SettingsDep, open_db
from api.schemas import ErrorResponse, LabelId
from ml.stages import review
from ml.stages.serving import label_name

router = APIRouter(tags=["review"])

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
def review_queue(caller: ReviewCaller, settings: SettingsDep, limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    """Items to review, none reviewed yet, one per text: ``reported`` (most reporting identities
    first) and ``uncertain`` (the serving model's live predictions closest to p = 0.5)."""
    with open_db(settings) as conn:
        out = review.queue(conn, settings.model_name, settings, limit)
    return {**out, "reviewer": caller.id}


@router.post(
    "/review/{item:uuid}",
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
