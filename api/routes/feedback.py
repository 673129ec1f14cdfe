"""POST /feedback: a user's correction of a prediction, stored in ``feedback`` with its reporter.

Only on one's own predictions: the request carries the ``feedback_token`` that /predict returned with
the prediction (bound to the prediction and to the caller's identity), unless the caller holds a
``review`` or ``admin`` key (reviewers may report on any prediction)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request, status

from api.auth import FeedbackCaller
from api.deps import SettingsDep, WriterDep
from api.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse
from ml.platform import security
from ml.stages import serving

log = logging.getLogger(__name__)

router = APIRouter(tags=["feedback"])


def _check_token(body: FeedbackRequest, caller: security.Identity, request: Request, settings) -> None:
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
        401: {"model": ErrorResponse, "description": "an API key is needed, or the key is invalid"},
        403: {
            "model": ErrorResponse,
            "description": "no valid feedback_token for this prediction and caller, or the key lacks scope `feedback`",
        },
        404: {"description": "no prediction with that id"},
        429: {"model": ErrorResponse, "description": "the caller's feedback quota is spent (Retry-After)"},
        503: {"description": "database unavailable"},
    },
)
def create_feedback(
    body: FeedbackRequest, writer: WriterDep, settings: SettingsDep, caller: FeedbackCaller, request: Request
) -> FeedbackResponse:
    """Record the correct label for a prediction this caller made (its ``feedback_token``), or any
    prediction with a ``review`` / ``admin`` key."""
    _check_token(body, caller, request, settings)
    # one statement on a pooled connection; a prediction still in a log gets a pending report
    # (moved into feedback when it lands); the alert rule runs in a background thread (api/recording.py)
    stored = request.app.state.feedback.record(body.prediction_id, body.correct_label, body.comment, caller.id)
    if stored is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"no prediction with id {body.prediction_id}; nothing was stored"
        )
    feedback_id, created_at = stored
    return FeedbackResponse(
        id=feedback_id,
        prediction_id=body.prediction_id,
        correct_label=serving.label_name(body.correct_label),
        correct_label_id=1 if body.correct_label == 1 else 0,
        comment=body.comment,
        created_at=created_at,
        reporter=caller.id,
    )
