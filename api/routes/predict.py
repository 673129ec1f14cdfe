"""POST /predict and /predict/batch: inference on the champion; rows recorded off the request path."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from api.auth import BatchCaller, PredictCaller, charge
from api.deps import ModelDep, SettingsDep, WriterDep, check_batch, check_text_length
from api.runtime import inference
from api.runtime.model_manager import LoadedModel
from api.runtime.writer import PredictionWriter
from api.schemas import BatchPrediction, BatchPredictRequest, Prediction, PredictRequest
from ml.platform import security
from ml.platform.security import Identity

router = APIRouter(tags=["predict"])

_NO_CHAMPION: dict[int | str, dict[str, Any]] = {
    503: {"description": "no champion model yet, or the prediction log is full (Retry-After)"},
    401: {"description": "an API key is needed (anonymous_predict is off) or the key is invalid"},
    403: {"description": "the key lacks scope `predict`"},
    429: {"description": "the caller's predict quota is spent (Retry-After)"},
}


def _check_room(n: int, writer: PredictionWriter) -> None:
    """Refuse before the model runs when the rows could not be recorded (no silent loss)."""
    inference.check_room(writer, n)


def _predict(texts: list[str], loaded: LoadedModel, writer: PredictionWriter, request: Request) -> list[Prediction]:
    """One model call; the rows are durable in the prediction log when this returns (api/runtime/inference.py)."""
    return inference.predict_many(texts, loaded, writer, request.app.state.prediction_ids)


def _with_tokens(predictions: list[Prediction], caller: Identity, request: Request) -> list[Prediction]:
    """Each prediction's ``feedback_token``: signed for (prediction id, caller); /feedback wants it back."""
    key = request.app.state.token_key
    for p in predictions:
        p.feedback_token = security.feedback_token(key, p.id, caller.id)
    return predictions


_EXPLAIN = Query(
    False,
    description="also return `explanation` (the words that pushed the prediction, with weights) and "
    "`explanation_method`; runs off the micro-batcher (TF-IDF: its coefficients; other families: occlusion, "
    "at most 40 words in one extra model call)",
)


@router.post("/predict", response_model=Prediction, response_model_exclude_none=True, responses=_NO_CHAMPION)
async def predict(
    body: PredictRequest,
    loaded: ModelDep,
    writer: WriterDep,
    settings: SettingsDep,
    caller: PredictCaller,
    request: Request,
    explain: bool = _EXPLAIN,
) -> Prediction:
    """Classify one text. ``feedback_token`` lets this caller report on this prediction (POST /feedback)."""
    check_text_length(body.text, settings, ("body", "text"))
    _check_room(1, writer)
    if explain:  # off the micro-batcher, in the threadpool: the plain path below is untouched
        explained = await run_in_threadpool(
            lambda: inference.explain(_predict([body.text], loaded, writer, request), [body.text], loaded)
        )
        request.app.state.models.offer_shadow(loaded.version, [body.text], explained)
        return _with_tokens(explained, caller, request)[0]
    # micro-batched with concurrent requests; durable in the prediction log before it returns
    prediction = await inference.predict_one(body.text, loaded, request.app.state.batcher, writer)
    request.app.state.models.offer_shadow(loaded.version, [body.text], [prediction])  # queued, never awaited
    return _with_tokens([prediction], caller, request)[0]


# Batches (up to max_batch_size texts) are sync: FastAPI runs them in its threadpool, so a long
# model call never blocks the event loop.
@router.post("/predict/batch", response_model=BatchPrediction, response_model_exclude_none=True, responses=_NO_CHAMPION)
def predict_batch(
    body: BatchPredictRequest,
    loaded: ModelDep,
    writer: WriterDep,
    settings: SettingsDep,
    caller: BatchCaller,
    request: Request,
    explain: bool = _EXPLAIN,
) -> BatchPrediction:
    """Classify up to ``max_batch_size`` texts with one model call; all from the same model version.
    Each text counts against the caller's ``predict`` quota; each prediction has its ``feedback_token``."""
    check_batch(body.texts, settings)
    charge(request, caller, "predict", len(body.texts))
    _check_room(len(body.texts), writer)
    predictions = _with_tokens(_predict(body.texts, loaded, writer, request), caller, request)
    if explain:
        inference.explain(predictions, body.texts, loaded)
    request.app.state.models.offer_shadow(loaded.version, body.texts, predictions)  # queued, never awaited
    return BatchPrediction(
        count=len(predictions), model_name=loaded.name, model_version=loaded.version, predictions=predictions
    )
