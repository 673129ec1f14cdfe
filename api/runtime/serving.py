"""The API's prediction rows, their signed ids, and a champion's MLflow run.

Small, I/O-explicit pieces: a prediction row (its log record and JSON), the ids the API issues, and
reading a champion's MLflow run (metrics, tags, time). The label names are ``ml.models.base``'s
(:func:`~ml.models.base.label_name`, the batch scores use them too); the SQL of storing rows is
``ml.store.predictions``'s (``copy_rows`` / ``write_rows``), the one route to the ``predictions`` table.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.models.base import decide
from ml.platform.config import Settings

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def label_id(p_positive: float) -> int:
    """The decision rule of every family (``ml.models.base.decide``) for one probability."""
    return int(decide(p_positive))


@dataclass(frozen=True, slots=True)
class PredictionRow:
    id: uuid.UUID
    created_at: datetime
    text: str
    label: int
    p_negative: float
    p_positive: float
    model_name: str
    model_version: int
    source: str = "api"

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.created_at,
            self.text,
            self.label,
            self.p_negative,
            self.p_positive,
            self.model_name,
            self.model_version,
            self.source,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "created_at": self.created_at.isoformat(),
            "text": self.text,
            "label": self.label,
            "p_negative": self.p_negative,
            "p_positive": self.p_positive,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PredictionRow:
        return cls(
            id=uuid.UUID(d["id"]),
            created_at=datetime.fromisoformat(d["created_at"]),
            text=d["text"],
            label=int(d["label"]),
            p_negative=float(d["p_negative"]),
            p_positive=float(d["p_positive"]),
            model_name=d["model_name"],
            model_version=int(d["model_version"]),
            source=d.get("source", "api"),
        )

    def as_log_record(self) -> list[Any]:
        """The row as the API's prediction log stores it (``ml.store.predictions.COLUMNS`` order, JSON types)."""
        return [
            str(self.id),
            self.created_at.isoformat(),
            self.text,
            self.label,
            self.p_negative,
            self.p_positive,
            self.model_name,
            self.model_version,
            self.source,
        ]


class PredictionIds:
    """The ids the API issues: UUIDs (version 8, RFC 9562) of 66 random bits followed by a 56-bit
    HMAC-SHA256 of them under the platform's key. Any API process can tell an id it (or another
    worker) issued from one never issued, before the prediction reaches PostgreSQL."""

    KEY_FILE = "prediction-ids.key"

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the prediction id key must have at least 16 bytes")
        self._key = key

    @classmethod
    def for_settings(cls, settings: Settings) -> PredictionIds:
        """The key of ``prediction_id_secret``, else of ``var/secrets/prediction-ids.key`` (made on
        first use, mode 0600; every worker and restart reads the same file)."""
        secret = settings.prediction_id_secret
        if secret:
            return cls(hashlib.sha256(str(secret).encode("utf-8")).digest())
        path = Path(settings.var) / "secrets" / cls.KEY_FILE
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_bytes(os.urandom(32).hex().encode())
            os.chmod(tmp, 0o600)
            try:
                os.link(tmp, path)  # atomic; the first worker wins, the others read its key
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return cls(bytes.fromhex(path.read_text().strip()))

    def _mac(self, head: bytes) -> bytes:
        return hmac.digest(self._key, head, "sha256")[:7]

    def new(self) -> uuid.UUID:
        head = bytearray(os.urandom(9))
        head[6] = 0x80 | (head[6] & 0x0F)  # version 8
        head[8] = 0x80 | (head[8] & 0x3F)  # RFC 9562 variant
        return uuid.UUID(bytes=bytes(head) + self._mac(bytes(head)))

    def issued(self, value: uuid.UUID) -> bool:
        b = value.bytes
        return value.version == 8 and hmac.compare_digest(b[9:], self._mac(b[:9]))


def prediction_rows(
    texts: Sequence[str],
    proba: np.ndarray,
    model_name: str,
    model_version: int,
    source: str = "api",
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> list[PredictionRow]:
    """One row per text from a ``predict_proba`` result (columns P(neg), P(pos)); ids from
    ``new_id`` (uuid4 by default; the API passes :meth:`PredictionIds.new`)."""
    now = datetime.now(UTC)
    rows = []
    for text, (p_neg, p_pos) in zip(texts, proba.tolist(), strict=True):
        rows.append(
            PredictionRow(
                id=new_id(),
                created_at=now,
                text=text,
                label=label_id(p_pos),
                p_negative=float(p_neg),
                p_positive=float(p_pos),
                model_name=model_name,
                model_version=int(model_version),
                source=source,
            )
        )
    return rows


# ---------------------------------------------------------------- champion details
def run_details(run_id: str) -> dict[str, Any]:
    """Metrics, user tags (no ``mlflow.*`` system tags) and start/end time of an MLflow run."""
    import mlflow

    run = mlflow.MlflowClient().get_run(run_id)

    def ts(ms: int | None) -> datetime | None:
        return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None

    return {
        "metrics": dict(run.data.metrics),
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "started_at": ts(run.info.start_time),
        "ended_at": ts(run.info.end_time),
        "experiment_id": run.info.experiment_id,
    }
