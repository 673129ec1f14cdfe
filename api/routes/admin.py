"""The control plane over HTTP, for keys with scope ``admin`` (review marks: ``review`` too).

Each route calls the same ``ml`` function as its CLI command: ``POST /admin/promote`` = ``ml promote
RUN_ID`` (:func:`ml.stages.promotion.promote`: behavioural gate + promotion rule), ``POST /admin/rollback`` =
``ml promote --rollback`` (:func:`ml.stages.promotion.rollback`), ``POST /admin/review`` = ``ml review``
(:func:`ml.stages.retraining.trigger.review_feedback`, the reviewer recorded is the key), ``POST /admin/retrain``
triggers the ``sentiment_retraining`` DAG through Airflow's REST API (a manual retraining:
:func:`ml.platform.airflow_client.trigger_dag`)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from api.auth import AdminCaller, ReviewCaller
from api.deps import SettingsDep
from api.errors import database_unavailable
from api.schemas import ErrorResponse, FreeText, Identifier
from ml.platform import airflow_client
from ml.stages import promotion
from ml.stages.retraining.trigger import review_feedback

log = logging.getLogger(__name__)

router = APIRouter(prefix="/admin", tags=["admin"])

AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no API key, or an invalid one"},
    403: {"model": ErrorResponse, "description": "the key lacks the scope"},
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromoteRequest(_Body):
    run_id: Identifier = Field(
        min_length=1, max_length=64, description="MLflow run id of an evaluated, registered candidate"
    )


class RollbackRequest(_Body):
    reason: FreeText | None = Field(default=None, max_length=500)


class ReviewRequest(_Body):
    feedback_ids: list[StrictInt] = Field(min_length=1, max_length=10_000)  # strict: `false` is not report 0


class RetrainRequest(_Body):
    mode: StrictStr | None = Field(default=None, pattern="^(champion|compare)$")  # no control character either
    note: FreeText | None = Field(default=None, max_length=500)


def _conflict(exc: Exception) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))


@router.post("/promote", responses={**AUTH, 409: {"description": "not evaluated / registered, or stale"}})
def promote(body: PromoteRequest, caller: AdminCaller, settings: SettingsDep) -> dict[str, Any]:
    """The champion/challenger gate on a candidate (``ml promote RUN_ID``); moves the alias if it wins."""
    log.warning("promotion of run %s asked by %s", body.run_id, caller.id)
    try:
        return dict(promotion.promote(body.run_id, settings))  # (the plain dict: no response model, JSON as is)
    except ValueError as exc:
        raise _conflict(exc) from exc


@router.post("/rollback", responses={**AUTH, 409: {"description": "nothing to roll back to"}})
def rollback(body: RollbackRequest, caller: AdminCaller, settings: SettingsDep) -> dict[str, Any]:
    """The previous champion back (``ml promote --rollback``), recorded as a ``rollback`` event."""
    reason = body.reason or f"rollback asked by {caller.id}"
    try:
        return promotion.rollback(settings, reason=reason)
    except ValueError as exc:
        raise _conflict(exc) from exc


@router.post("/review", responses=AUTH)
def review(body: ReviewRequest, caller: ReviewCaller, settings: SettingsDep) -> dict[str, Any]:
    """Mark reports reviewed (``ml review``); the reviewer recorded is the key's identity."""
    try:
        n = review_feedback(body.feedback_ids, reviewer=caller.id, settings=settings)
    except Exception as exc:
        raise database_unavailable(exc) from exc
    return {"reviewed": n, "feedback_ids": body.feedback_ids, "reviewer": caller.id}


@router.post(
    "/retrain",
    status_code=status.HTTP_202_ACCEPTED,
    responses={**AUTH, 503: {"description": "Airflow cannot be reached; nothing was triggered"}},
)
def retrain(body: RetrainRequest, caller: AdminCaller, settings: SettingsDep) -> dict[str, Any]:
    """A manual retraining: one run of ``sentiment_retraining`` (it records the retraining and consumes
    the pending reports, whatever their number)."""
    conf: dict[str, Any] = {"retraining_id": None}
    if body.mode:
        conf["mode"] = body.mode
    try:
        return airflow_client.trigger_dag(
            "sentiment_retraining",
            conf,
            settings,
            note=f"manual retraining asked by {caller.id}: {body.note or ''}".strip(),
        )
    except Exception as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "30"},
            detail=f"Airflow could not trigger sentiment_retraining; nothing was triggered "
            f"({type(exc).__name__}: {exc})",
        ) from exc
