"""Request and response bodies.

Static rules (types, blank text, label values) live here; the limits that come from the
settings (``max_text_chars``, ``max_batch_size``) are checked in the routes against the
app's own settings and answered with the same 422 error shape.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
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

from ml.models.base import LABEL_IDS, LABELS

LabelName = Literal["negative", "positive"]
MAX_COMMENT_CHARS = 2000


# Control characters, by field class (one rule per class, used by every request body, path and query):
# - identifiers, tokens, ids, path and query parameters: no C0 control character (U+0000-U+001F) and no DEL;
# - free text (tweet texts, comments, reasons, notes): no NUL (PostgreSQL text cannot hold it); tabs, line
#   breaks and the other control characters a tweet may carry are kept, as batch scoring keeps them.
# Both: no lone surrogate (not encodable as UTF-8).
IDENTIFIER_PATTERN = r"^[^\x00-\x1f\x7f]*$"
NO_NUL_PATTERN = r"^[^\x00]*$"


def control_character(value: str) -> str | None:
    """The first C0 control character or DEL in ``value`` as ``U+XXXX``, or None."""
    for ch in value:
        if ch < "\x20" or ch == "\x7f":
            return f"U+{ord(ch):04X}"
    return None


def _unicode_error(value: str, field: str) -> PydanticCustomError | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return PydanticCustomError(
            "invalid_text", "{field} is not valid Unicode (it holds a lone surrogate)", {"field": field}
        )
    return None


def _field(info: ValidationInfo) -> str:
    return "text" if info.field_name == "texts" else (info.field_name or "text")


def _check_chars(value: Any, info: ValidationInfo) -> Any:
    """Every free-text field: no NUL and no lone surrogate. Runs before the string check, so a
    surrogate gets this message."""
    if not isinstance(value, str):
        return value  # the type check that follows says what is wrong
    field = _field(info)
    if "\x00" in value:
        raise PydanticCustomError("invalid_text", "{field} must not contain NUL (\\u0000) characters", {"field": field})
    err = _unicode_error(value, field)
    if err is not None:
        raise err
    return value


def _check_identifier(value: Any, info: ValidationInfo) -> Any:
    """Every identifier-like field (ids, tokens, names): no control character at all, no lone surrogate."""
    if not isinstance(value, str):
        return value
    field = _field(info)
    bad = control_character(value)
    if bad is not None:
        raise PydanticCustomError(
            "control_character",
            "{field} must not contain control characters (found {char})",
            {"field": field, "char": bad},
        )
    err = _unicode_error(value, field)
    if err is not None:
        raise err
    return value


class _Pattern:
    """Adds a ``pattern`` to a string's JSON schema (the OpenAPI document states the rule the
    validator enforces; the validator gives the message)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        schema.setdefault("pattern", self.pattern)  # a field's own pattern (an enum-like one) is stricter
        return schema


#: "blank" as both Python (str.isspace) and ECMAScript regexes (\s in the OpenAPI pattern, which
#: clients and schemathesis evaluate) understand it: the union, so that the two never disagree
BLANK_CLASS = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_BLANK = re.compile(f"[{BLANK_CLASS}]*")


def _check_not_blank(value: str) -> str:
    if _BLANK.fullmatch(value):
        raise PydanticCustomError("blank_text", "text must not be empty or whitespace-only")
    return value


Text = Annotated[StrictStr, BeforeValidator(_check_chars), AfterValidator(_check_not_blank)]
Comment = Annotated[StrictStr, StringConstraints(max_length=MAX_COMMENT_CHARS), BeforeValidator(_check_chars)]
# every other string a request body holds is one of these two
FreeText = Annotated[StrictStr, BeforeValidator(_check_chars), _Pattern(NO_NUL_PATTERN)]
Identifier = Annotated[StrictStr, BeforeValidator(_check_identifier), _Pattern(IDENTIFIER_PATTERN)]


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


def checked_parameters(request: Request) -> None:
    """Every path and query parameter of every route (a dependency of the API router): no control
    character (identifier class). A 422 in FastAPI's validation shape, naming the parameter, before the
    route (and its key check) runs."""
    errors: list[dict[str, Any]] = []
    params = [("path", k, v) for k, v in request.path_params.items()]
    params += [("query", k, v) for k, v in request.query_params.multi_items()]
    for where, name, value in params:
        bad = control_character(value) if isinstance(value, str) else None
        if bad is not None:
            errors.append(
                {
                    "type": "control_character",
                    "loc": (where, name),
                    "msg": f"{name} must not contain control characters (found {bad})",
                    "input": None,  # never echoed back
                }
            )
    if errors:
        raise RequestValidationError(errors)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Request):
    text: Text = Field(description="the tweet to classify", examples=["I love this, best day ever"])


class BatchPredictRequest(_Request):
    texts: list[Text] = Field(description="the tweets to classify (one model call for all)")


class Probabilities(BaseModel):
    negative: float
    positive: float


class TokenWeight(BaseModel):
    token: str = Field(description="a word of the text (TF-IDF: a feature, word or word n-gram, as the model saw it)")
    weight: float = Field(description="how much it pushed the prediction: > 0 toward positive, < 0 toward negative")


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
    explanation: list[TokenWeight] | None = Field(
        default=None,
        description="only with `?explain=true`: the words that pushed this prediction, largest |weight| first "
        "(at most 10); absent otherwise",
    )
    explanation_method: str | None = Field(
        default=None,
        description="only with `?explain=true`: `tfidf_coefficients` (tf-idf value x the model's coefficient) or "
        "`occlusion` (p_positive minus p_positive without the word; at most 40 distinct words, one model call)",
    )


class BatchPrediction(BaseModel):
    count: int
    model_name: str
    model_version: int
    predictions: list[Prediction]


class FeedbackRequest(_Request):
    prediction_id: uuid.UUID
    feedback_token: Identifier | None = Field(
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
    challenger: dict[str, Any] | None = Field(
        default=None,
        description="make up's background comparison (ml.platform.progressive): state, family, percent, "
        "eta_seconds, version, text (e.g. 'transformer training, 35% (ETA 40 min)'); null when none was started",
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
    "TokenWeight",
]
