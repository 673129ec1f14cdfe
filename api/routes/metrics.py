"""GET /metrics: the Prometheus text format of every API worker (api/metrics.py), for ``admin`` keys.

Protected by the ``admin`` scope (a bearer key, like the other operator routes): the API binds one
address and port, every local caller comes from 127.0.0.1 (an address allow-list would let any local
process in), and Prometheus sends a bearer key from a file (``authorization: {credentials_file: ...}``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from api import metrics
from api.auth import AdminCaller
from api.routes.admin import AUTH

router = APIRouter(tags=["admin"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format 0.0.4"},
    **AUTH,
}


@router.get("/metrics", response_class=Response, responses=RESPONSES)
def prometheus_metrics(caller: AdminCaller, request: Request) -> Response:
    """Request counts and latencies per route and status, predictions by label and model version, feedback
    by outcome, refused requests, the prediction log's bytes and the writer's lag, the model's version and
    load time: summed over the uvicorn workers (multiprocess mode)."""
    metrics.refresh(request.app.state)
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
