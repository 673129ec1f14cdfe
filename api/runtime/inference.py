"""The /predict path: micro-batched model calls (api/runtime/batcher.py), signed prediction ids, rows made
durable in the prediction log (api/runtime/writer.py) before an answer leaves."""

from __future__ import annotations

from fastapi import HTTPException, status

from api.runtime import serving
from api.runtime.batcher import MicroBatcher
from api.runtime.model_manager import LoadedModel
from api.runtime.predlog import LogFull, LogWriteError
from api.runtime.serving import PredictionIds, PredictionRow
from api.runtime.writer import PredictionWriter
from api.schemas import Prediction, Probabilities, TokenWeight
from ml.models import INLINE_FAMILIES
from ml.models.base import explain as explain_texts
from ml.models.base import label_name
from ml.platform.config import Settings


def predict_rows(loaded: LoadedModel, texts: list[str], ids: PredictionIds) -> list[PredictionRow]:
    """One model call for ``texts``: their rows, each with a signed id."""
    proba = loaded.model.predict_proba(texts)
    return serving.prediction_rows(texts, proba, loaded.name, loaded.version, source="api", new_id=ids.new)


def make_batcher(settings: Settings, ids: PredictionIds) -> MicroBatcher[str, PredictionRow]:
    return MicroBatcher(
        lambda loaded, texts: predict_rows(loaded, texts, ids),
        max_size=settings.predict_batch_max_size,
        max_wait=settings.predict_batch_wait_ms / 1000.0,
        inline=lambda loaded: getattr(loaded.model, "family", None) in INLINE_FAMILIES,
    )


def to_predictions(rows: list[PredictionRow]) -> list[Prediction]:
    return [
        Prediction(
            id=r.id,
            label=label_name(r.label),
            label_id=r.label,  # type: ignore[arg-type]  # 0/1 by rule
            probabilities=Probabilities(negative=r.p_negative, positive=r.p_positive),
            model_name=r.model_name,
            model_version=r.model_version,
        )
        for r in rows
    ]


def not_recorded(exc: BaseException, writer: PredictionWriter) -> HTTPException:
    """503 + Retry-After: the prediction could not be made durable, so no id is given out."""
    retry = max(1, round(writer.flush_seconds * 4))
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc), headers={"Retry-After": str(retry)})


def check_room(writer: PredictionWriter, n: int = 1) -> None:
    """Refuse before the model runs when the log is at its cap (nothing could be recorded)."""
    if not writer.has_room(n):
        raise not_recorded(LogFull(writer.log.used_bytes, 0, writer.max_bytes, writer.last_error), writer)


async def predict_one(text: str, loaded: LoadedModel, batcher: MicroBatcher, writer: PredictionWriter) -> Prediction:
    row = await batcher.submit(loaded, text)
    try:
        await writer.record_async([row])
    except (LogFull, LogWriteError) as exc:
        raise not_recorded(exc, writer) from exc
    return to_predictions([row])[0]


def predict_many(
    texts: list[str], loaded: LoadedModel, writer: PredictionWriter, ids: PredictionIds
) -> list[Prediction]:
    rows = predict_rows(loaded, texts, ids)
    try:
        writer.record(rows)
    except (LogFull, LogWriteError) as exc:
        raise not_recorded(exc, writer) from exc
    return to_predictions(rows)


def explain(predictions: list[Prediction], texts: list[str], loaded: LoadedModel) -> list[Prediction]:
    """``?explain=true``: each prediction's words and weights from the model that made it (its family's
    method: the TF-IDF coefficients, or occlusion in one extra model call). Off the micro-batcher."""
    method, per_text = explain_texts(loaded.model, texts)
    for p, words in zip(predictions, per_text, strict=True):
        p.explanation = [TokenWeight(**w) for w in words]
        p.explanation_method = method
    return predictions
