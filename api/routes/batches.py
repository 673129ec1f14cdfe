"""GET /batches, GET /batches/{id}: batch-scoring summaries (rows, rejects, label shares,
throughput, model version), their shards and their rejected rows with line numbers."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from api import views
from api.auth import OptionalCaller
from api.deps import SettingsDep
from api.read_models import Batch, BatchSummary
from ml.stages.scoring.queries import get_batch as _get
from ml.stages.scoring.queries import list_batches as _list

router = APIRouter(tags=["batches"])


@router.get("/batches", response_model=list[BatchSummary], response_model_exclude_unset=True, responses=views.HTML_200)
def list_batches(
    settings: SettingsDep,
    caller: OptionalCaller,
    request: Request,
    response: Response,
    limit: int = Query(50, ge=1, le=500),
) -> Any:
    """The most recent batches first. Server paths (``input_path``) only with an ``admin`` key; anyone
    gets the file's name (``input_name``)."""
    views.vary(response)
    rows = _list(limit, settings)
    rows = rows if caller.has("admin") else [public(b) for b in rows]
    return views.batches_page(rows) if views.wants_html(request) else rows


@router.get(
    "/batches/{batch_id}",
    response_model=Batch,
    response_model_exclude_unset=True,
    responses={**views.HTML_200, 404: {"description": "unknown batch"}},
)
def get_batch(
    batch_id: str, settings: SettingsDep, caller: OptionalCaller, request: Request, response: Response
) -> Any:
    """One batch: summary, shards, and its rejected rows (first 1,000) with line numbers. Server paths
    (``input_path``, ``output_path``, the summary's ``input``/``output``/``error``) only with an ``admin`` key."""
    batch = _get(batch_id, settings)
    if batch is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no batch with id {batch_id!r}")
    views.vary(response)
    batch = batch if caller.has("admin") else public(batch)
    return views.batch_page(batch) if views.wants_html(request) else batch


# what a caller without `admin` sees of a batch's summary (a whitelist: a field added later stays private)
_SUMMARY_PUBLIC = (
    "batch_id",
    "model_version",
    "rows_read",
    "rows_scored",
    "rows_rejected",
    "label_counts",
    "positive_share",
    "shards",
    "seconds",
    "rows_per_second",
    "first_rejects",
)


def public(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch without server paths: ``input_path`` becomes ``input_name`` (the file's name), no
    ``output_path``; the summary keeps its counts (``redacted: true``)."""
    out = {k: v for k, v in batch.items() if k not in ("input_path", "output_path", "summary")}
    out["input_name"] = PurePath(batch["input_path"]).name if batch.get("input_path") else None
    if "summary" in batch:
        summary = batch["summary"] or {}
        out["summary"] = {k: summary[k] for k in _SUMMARY_PUBLIC if k in summary} if batch["summary"] else None
    out["redacted"] = True
    return out
