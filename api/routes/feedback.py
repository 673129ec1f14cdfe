"""POST /feedback: a user's correction of a prediction, stored in ``feedback`` with its reporter.

Only on one's own predictions: the request carries the ``feedback_token`` that /predict returned with
the prediction (bound to the prediction and to the caller's identity), unless the caller holds a
``review`` or ``admin`` key (reviewers may report on any prediction).

One report per prediction and reporter: a token is good for one report. The same report again is
answered 200 with the stored one (idempotent, nothing stored); another label is a 409 with the stored
one (to change one's mind, predict the text again and report on that prediction)."""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.auth import FeedbackCaller
from api.deps import SettingsDep, WriterDep
from api.errors import error_body
from api.runtime.recording import Recorded
from api.schemas import ErrorItem, ErrorResponse, FeedbackRequest, FeedbackResponse
from ml.models.base import label_name
from ml.platform import security
from ml.platform.config import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["feedback"])


class FeedbackConflict(BaseModel):
    """409: this reporter already reported this prediction with another label (nothing stored)."""

    status: int
    message: str
    detail: list[ErrorItem]
    existing: FeedbackResponse


def _response(rec: Recorded, prediction_id: uuid.UUID, reporter: str) -> FeedbackResponse:
    return FeedbackResponse(
        id=rec.id,
        prediction_id=prediction_id,
        correct_label=label_name(rec.correct_label),
        correct_label_id=1 if rec.correct_label == 1 else 0,
        comment=rec.comment,
        created_at=rec.created_at,
        reporter=reporter,
    )


def _check_token(body: FeedbackRequest, caller: security.Identity, request: Request, settings: Settings) -> None:
    if caller.has("review"):  # review / admin keys may report on any prediction
        return
    if not body.feedback_token:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=(
                "feedback_token is required: send the feedback_token that /predict returned with this prediction "
                "(reports are accepted on one's own predictions only; reviewers use a `review` key)"
            ),
        )
    why = security.check_feedback_token(
        request.app.state.token_key,
        body.feedback_token,
        body.prediction_id,
        caller.id,
        settings.feedback_token_max_age_seconds,
    )
    if why:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"{why}; nothing was stored")


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {
            "model": FeedbackResponse,
            "description": "this caller already reported this prediction with this label: the stored report "
            "(idempotent, nothing stored)",
        },
        201: {"description": "the report, stored"},
        401: {"model": ErrorResponse, "description": "an API key is needed, or the key is invalid"},
        403: {
            "model": ErrorResponse,
            "description": "no valid feedback_token for this prediction and caller, or the key lacks scope `feedback`",
        },
        404: {"description": "no prediction with that id"},
        409: {
            "model": FeedbackConflict,
            "description": "this caller already reported this prediction with the other label (`existing`); "
            "nothing stored. One report per prediction and caller: to change your mind, predict the text "
            "again and report on that prediction",
        },
        429: {"model": ErrorResponse, "description": "the caller's feedback quota is spent (Retry-After)"},
        503: {"description": "database unavailable"},
    },
)
def create_feedback(
    body: FeedbackRequest,
    writer: WriterDep,
    settings: SettingsDep,
    caller: FeedbackCaller,
    request: Request,
    response: Response,
) -> FeedbackResponse | JSONResponse:
    """Record the correct label for a prediction this caller made (its ``feedback_token``), or any
    prediction with a ``review`` / ``admin`` key. One report per prediction and caller: the same report
    again answers 200 with the stored one, another label 409."""
    _check_token(body, caller, request, settings)
    # one transaction on a pooled connection; a prediction still in a log gets a pending report
    # (moved into feedback when it lands); the alert rule runs in a background thread (api/runtime/recording.py)
    rec = request.app.state.feedback.record(body.prediction_id, body.correct_label, body.comment, caller.id)
    if rec is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"no prediction with id {body.prediction_id}; nothing was stored"
        )
    out = _response(rec, body.prediction_id, caller.id)
    if rec.created:
        return out
    if rec.correct_label == (1 if body.correct_label == 1 else 0):
        response.status_code = status.HTTP_200_OK  # the same report again: idempotent
        return out
    message = (
        f"prediction {body.prediction_id} was already reported by this caller as {out.correct_label} "
        f"(report {rec.id}); nothing was stored. One report per prediction and caller: to change your mind, "
        "predict the text again and report on that new prediction"
    )
    return JSONResponse(
        {**error_body(status.HTTP_409_CONFLICT, message), "existing": out.model_dump(mode="json")},
        status_code=status.HTTP_409_CONFLICT,
    )
