"""Request and response bodies.

Static rules (types, blank text, label values) live here; the limits that come from the
settings (``max_text_chars``, ``max_batch_size``) are checked in the routes against the
app's own settings and answered with the same 422 error shape.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from ml.stages.serving import LABEL_IDS, LABELS

LabelName = Literal["negative", "positive"]
MAX_COMMENT_CHARS = 2000


def _check_chars(value: Any, info: ValidationInfo) -> Any:
    """Every text field: no NUL (PostgreSQL text cannot hold it) and no lone surrogate (not
    encodable as UTF-8). Runs before the string check, so a surrogate gets this message."""
    if not isinstance(value, str):
        return value  # the type check that follows says what is wrong
    field = "text" if info.field_name == "texts" else (info.field_name or "text")
    if "\x00" in value:
        raise PydanticCustomError("invalid_text", "{field} must not contain NUL (\\u0000) characters", {"field": field})
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "invalid_text", "{field} is not valid Unicode (it holds a lone surrogate)", {"field": field}
        ) from None
    return value


def _check_not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank_text", "text must not be empty or whitespace-only")
    return value


Text = Annotated[StrictStr, BeforeValidator(_check_chars), AfterValidator(_check_not_blank)]
Comment = Annotated[StrictStr, StringConstraints(max_length=MAX_COMMENT_CHARS), BeforeValidator(_check_chars)]


def _parse_label(value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() in LABEL_IDS:
        return LABEL_IDS[value.strip().lower()]
    if type(value) is int and value in (0, 1):  # not bool, not 1.0, not "1"
        return value
    raise PydanticCustomError(
        "invalid_label",
        "correct_label must be 'positive' or 'negative' (or 1 / 0), got {value}",
        {"value": repr(value)[:50]},
    )


LabelId = Annotated[
    int,
    BeforeValidator(_parse_label),
    WithJsonSchema({"anyOf": [{"type": "string", "enum": list(LABELS)}, {"type": "integer", "enum": [0, 1]}]}),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Request):
    text: Text = Field(description="the tweet to classify", examples=["I love this, best day ever"])


class BatchPredictRequest(_Request):
    texts: list[Text] = Field(description="the tweets to classify (one model call for all)")


class Probabilities(BaseModel):
    negative: float
    positive: float


class Prediction(BaseModel):
    id: uuid.UUID = Field(description="prediction id; send it back with POST /feedback")
    label: LabelName
    label_id: Literal[0, 1]
    probabilities: Probabilities
    model_name: str
    model_version: int
    feedback_token: str | None = Field(
        default=None, description="send it back with POST /feedback: it binds this prediction to this caller"
    )


class BatchPrediction(BaseModel):
    count: int
    model_name: str
    model_version: int
    predictions: list[Prediction]


class FeedbackRequest(_Request):
    prediction_id: uuid.UUID
    feedback_token: StrictStr | None = Field(
        default=None,
        max_length=200,
        description="the prediction's feedback_token (from /predict); not needed with a `review` or `admin` key",
    )
    correct_label: LabelId = Field(description="'positive' / 'negative' (or 1 / 0)")
    comment: Comment | None = Field(default=None, description=f"optional, at most {MAX_COMMENT_CHARS} characters")


class FeedbackResponse(BaseModel):
    id: int
    prediction_id: uuid.UUID
    correct_label: LabelName
    correct_label_id: Literal[0, 1]
    comment: str | None
    created_at: datetime
    reporter: str | None = Field(default=None, description="who reported it: key:<name>#<key id> or anon:<address>")


class DatabaseHealth(BaseModel):
    reachable: bool
    error: str | None = None


class ModelHealth(BaseModel):
    loaded: bool
    name: str
    version: int | None = None
    run_id: str | None = None
    loaded_at: datetime | None = None
    last_error: str | None = None


class WriterHealth(BaseModel):
    pending_rows: int = Field(
        description="predictions acknowledged (in this worker's prediction log), not yet in PostgreSQL"
    )
    log_bytes: int = Field(description="bytes of this worker's prediction log on disk")
    max_log_bytes: int = Field(description="the log's cap (prediction_log_max_bytes): past it /predict answers 503")
    log_segments: int = Field(description="log files this worker holds (the active one included)")
    written_rows: int
    last_error: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    reasons: list[str] = Field(default_factory=list, description="why it is degraded (empty when ok)")
    database: DatabaseHealth
    model: ModelHealth
    writer: WriterHealth


class Readiness(BaseModel):
    ready: bool
    reasons: list[str] = Field(default_factory=list)


class ErrorItem(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class ErrorResponse(BaseModel):
    """The body of every error response."""

    status: int
    message: str
    detail: list[ErrorItem]


class ModelInfo(BaseModel):
    name: str
    alias: str
    version: int
    run_id: str
    loaded_at: datetime
    trained_at: datetime | None = Field(description="start time of the MLflow training run")
    metrics: dict[str, float]
    dataset_hash: str | None
    git_commit: str | None
    family: str | None
    tags: dict[str, str]
    external: dict[str, Any] | None = Field(
        default=None, description="accuracy, f1, roc_auc, n, content_hash, path on external_eval_path (evaluation)"
    )


__all__ = [
    "LABELS",
    "BatchPredictRequest",
    "BatchPrediction",
    "ErrorResponse",
    "FeedbackRequest",
    "FeedbackResponse",
    "Health",
    "Readiness",
    "ModelInfo",
    "PredictRequest",
    "Prediction",
    "Probabilities",
]
