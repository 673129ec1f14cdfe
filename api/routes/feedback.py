"""POST /feedback: a user's correction of a prediction, stored in ``feedback``."""
from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, status

from api.deps import SettingsDep, WriterDep, database_unavailable, open_db
from api.schemas import FeedbackRequest, FeedbackResponse
from api.writer import FlushError
from ml import alerts, serving

log = logging.getLogger(__name__)

router = APIRouter(tags=["feedback"])


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    status_code=status.HTTP_201_CREATED,
    responses={404: {"description": "no prediction with that id"}, 503: {"description": "database unavailable"}},
)
def create_feedback(body: FeedbackRequest, writer: WriterDep, settings: SettingsDep) -> FeedbackResponse:
    """Record the correct label for a prediction made earlier (by this API or a batch job)."""
    try:
        writer.flush()  # a prediction made a moment ago may still be buffered: store it first
    except FlushError as exc:
        raise database_unavailable(f"recent predictions cannot be stored right now: {exc}") from exc
    with open_db(settings) as conn:
        stored = serving.insert_feedback(conn, body.prediction_id, body.correct_label, body.comment)
    if stored is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"no prediction with id {body.prediction_id}; nothing was stored"
        )
    feedback_id, created_at = stored
    # the feedback is committed: now the alert rule (ml.alerts; counted in PostgreSQL, webhook / e-mail
    # sent by a background thread). Whatever happens there, the feedback request succeeds.
    try:
        alerts.evaluate_feedback(feedback_id, settings)
    except Exception:  # noqa: BLE001
        log.exception("alert evaluation failed for feedback %s (the feedback is stored)", feedback_id)
    return FeedbackResponse(
        id=feedback_id,
        prediction_id=body.prediction_id,
        correct_label=serving.label_name(body.correct_label),
        correct_label_id=body.correct_label,
        comment=body.comment,
        created_at=created_at,
    )
