"""GET /batches, GET /batches/{id}: batch-scoring summaries (rows, rejects, label shares,
throughput, model version), their shards and their rejected rows with line numbers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, status

from api.deps import SettingsDep
from api.read_models import Batch, BatchSummary

router = APIRouter(tags=["batches"])


@router.get("/batches", response_model=list[BatchSummary])
def list_batches(settings: SettingsDep, limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
    """The most recent batches first."""
    from ml.stages.scoring.queries import list_batches as _list

    return _list(limit, settings)


@router.get(
    "/batches/{batch_id}",
    response_model=Batch,
    response_model_exclude_unset=True,
    responses={404: {"description": "unknown batch"}},
)
def get_batch(batch_id: str, settings: SettingsDep) -> dict[str, Any]:
    """One batch: summary, shards, and its rejected rows (first 1,000) with line numbers."""
    from ml.stages.scoring.queries import get_batch as _get

    batch = _get(batch_id, settings)
    if batch is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no batch with id {batch_id!r}")
    return batch
