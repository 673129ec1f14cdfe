"""POST /predict and /predict/batch: inference on the champion; rows recorded off the request path."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool

from api.auth import BatchCaller, PredictCaller, charge
from api.deps import ModelDep, SettingsDep, WriterDep, check_batch, check_text_length
from api.model_manager import LoadedModel
from api.schemas import BatchPredictRequest, BatchPrediction, Prediction, PredictRequest, Probabilities
from api.writer import BufferFull, PredictionWriter
from ml import security, serving
from ml.security import Identity

router = APIRouter(tags=["predict"])

_NO_CHAMPION = {503: {"description": "no champion model yet, or the prediction buffer is full (Retry-After)"},
                401: {"description": "an API key is needed (anonymous_predict is off) or the key is invalid"},
                403: {"description": "the key lacks scope `predict`"},
                429: {"description": "the caller's predict quota is spent (Retry-After)"}}


def _buffer_full(exc: BufferFull, writer: PredictionWriter) -> HTTPException:
    retry = max(1, round(writer.flush_seconds * 2))
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc), headers={"Retry-After": str(retry)})


def _check_room(n: int, writer: PredictionWriter) -> None:
    """Refuse before the model runs when the rows could not be recorded (no silent loss)."""
    if not writer.has_room(n):
        raise _buffer_full(BufferFull(writer.pending, n, writer.max_buffer_rows, writer.last_error), writer)


def _predict(texts: list[str], loaded: LoadedModel, writer: PredictionWriter) -> list[Prediction]:
    proba = loaded.model.predict_proba(texts)  # one call for the whole batch
    rows = serving.prediction_rows(texts, proba, loaded.name, loaded.version, source="api")
    try:
        writer.submit(rows)  # buffered; the writer thread COPYs them to PostgreSQL
    except BufferFull as exc:  # filled up by concurrent requests since the check
        raise _buffer_full(exc, writer) from exc
    return [
        Prediction(
            id=r.id,
            label=serving.label_name(r.label),
            label_id=r.label,
            probabilities=Probabilities(negative=r.p_negative, positive=r.p_positive),
            model_name=r.model_name,
            model_version=r.model_version,
        )
        for r in rows
    ]


def _with_tokens(predictions: list[Prediction], caller: Identity, request: Request) -> list[Prediction]:
    """Each prediction's ``feedback_token``: signed for (prediction id, caller); /feedback wants it back."""
    key = request.app.state.token_key
    for p in predictions:
        p.feedback_token = security.feedback_token(key, p.id, caller.id)
    return predictions


# One text through TF-IDF takes ~0.4 ms, cheaper than the hand-off to the threadpool, so it runs on
# the event loop (measured: benchmarks/api_load.py); slower families (a transformer: ~20 ms) run in
# the threadpool so they never block the loop.
INLINE_FAMILIES = {"tfidf_lr"}


@router.post("/predict", response_model=Prediction, responses=_NO_CHAMPION)
async def predict(body: PredictRequest, loaded: ModelDep, writer: WriterDep, settings: SettingsDep,
                  caller: PredictCaller, request: Request) -> Prediction:
    """Classify one text. ``feedback_token`` lets this caller report on this prediction (POST /feedback)."""
    check_text_length(body.text, settings, ("body", "text"))
    _check_room(1, writer)
    if getattr(loaded.model, "family", None) in INLINE_FAMILIES:
        return _with_tokens(_predict([body.text], loaded, writer), caller, request)[0]
    return _with_tokens(await run_in_threadpool(_predict, [body.text], loaded, writer), caller, request)[0]


# Batches (up to max_batch_size texts) are sync: FastAPI runs them in its threadpool, so a long
# model call never blocks the event loop.
@router.post("/predict/batch", response_model=BatchPrediction, responses=_NO_CHAMPION)
def predict_batch(body: BatchPredictRequest, loaded: ModelDep, writer: WriterDep, settings: SettingsDep,
                  caller: BatchCaller, request: Request) -> BatchPrediction:
    """Classify up to ``max_batch_size`` texts with one model call; all from the same model version.
    Each text counts against the caller's ``predict`` quota; each prediction has its ``feedback_token``."""
    check_batch(body.texts, settings)
    charge(request, caller, "predict", len(body.texts))
    _check_room(len(body.texts), writer)
    predictions = _with_tokens(_predict(body.texts, loaded, writer), caller, request)
    return BatchPrediction(
        count=len(predictions), model_name=loaded.name, model_version=loaded.version, predictions=predictions
    )
