"""Response models of the read routes (batches, drift reports, lineage, model comparison).

The records these routes return are wide and grow with the platform (per-column drift scores,
per-family metrics), so each model names and types the fields a client relies on and keeps the
rest (``extra="allow"``): OpenAPI documents the contract, nothing stored is dropped."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------- batches
class BatchSummary(_Open):
    """Server paths (``input_path``, ``output_path``) only for ``admin`` keys; others get ``input_name``
    and ``redacted: true``."""

    id: str
    input_path: str | None = None
    input_name: str | None = None
    redacted: bool | None = None
    status: str
    model_version: int | None = None
    rows_read: int | None = None
    rows_scored: int | None = None
    rows_rejected: int | None = None
    rows_per_second: float | None = None
    created_at: datetime
    finished_at: datetime | None = None


class BatchShard(_Open):
    shard: int
    status: str
    n_rows: int
    rows_scored: int | None = None
    seconds: float | None = None
    attempts: int


class BatchReject(_Open):
    line: int
    reason: str


class Batch(BatchSummary):
    input_format: str | None = None
    output_path: str | None = None
    model_name: str | None = None
    n_shards: int | None = None
    label_counts: dict[str, int] | None = None
    summary: dict[str, Any] | None = None
    shards: list[BatchShard]
    rejects: list[BatchReject]


# ---------------------------------------------------------------- drift reports
class DriftReportSummary(_Open):
    id: str
    created_at: str
    period_start: str
    period_end: str
    status: str  # ok | drift | empty
    drift_detected: bool | None = None
    concept_drift: bool | None = None
    verdict: str
    model_name: str
    reference_version: int | None = None
    n_current: int | None = None
    n_current_total: int | None = None
    n_feedback: int | None = None
    n_reported_wrong: int | None = None
    live_accuracy_upper_bound: float | None = None
    training_accuracy: float | None = None
    accuracy_statement: str | None = None


class DriftReport(_Open):
    """A report's full stored summary (per-metric verdicts, per-column scores, feedback, estimate)."""

    id: str
    created_at: str
    status: str
    verdict: str
    model_name: str
    period: dict[str, Any]
    metrics: dict[str, Any] | None = None
    feedback: dict[str, Any] | None = None
    estimate: dict[str, Any] | None = None


# ---------------------------------------------------------------- lineage
class Lineage(_Open):
    """Everything that led to one prediction (redacted to counts without an ``admin`` key)."""

    prediction: dict[str, Any]
    model: dict[str, Any]
    summary: str
    redacted: bool | None = None
    git_commit: str | None = None
    snapshot: dict[str, Any] | None = None
    snapshot_chain: list[dict[str, Any]] | None = None
    retraining: dict[str, Any] | None = None
    feedback: Any = None  # the reports on this prediction (a count when redacted)
    errors: list[str] | None = None


# ---------------------------------------------------------------- comparison
class ComparisonWinner(_Open):
    family: str | None = None
    run_id: str | None = None
    version: int | None = None
    status: str | None = None
    decision: str | None = None


class Comparison(_Open):
    id: int
    created_at: str
    parent_run_id: str
    snapshot_hash: str
    profile: str
    families: list[str]
    selection_metric: str
    table: list[dict[str, Any]]
    winner: ComparisonWinner
    chart_path: str | None = None  # admin keys only
    chart_url: str | None = None  # callers without admin: the chart's route
