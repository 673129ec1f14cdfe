"""The shadow challenger beside the champion (ml/stages/shadow.py), scored off the request path.

:meth:`ShadowScorer.offer` is called after a /predict answer is built: it only puts (prediction id,
text, the champion's label and P(positive)) on a bounded queue (``shadow_queue_max``) and returns;
a full queue drops the item and counts it (``dropped``). One daemon thread takes items in batches,
scores them with the shadow challenger (one ``predict_proba`` per batch) and writes the rows to
``shadow_predictions`` (one transaction per batch). A failed write is logged and counted, never
retried into the request path.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from api.runtime.background import BackgroundLoop
from ml.models import SentimentModel
from ml.models.base import decide
from ml.platform import db
from ml.platform.config import Settings
from ml.stages.review import text_key
from ml.store import shadow as store

log = logging.getLogger(__name__)

BATCH = 256


@dataclass(frozen=True)
class LoadedShadow:
    shadow_id: int
    model: SentimentModel
    version: int
    champion_version: int


class ShadowScorer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._q: queue.Queue = queue.Queue(maxsize=settings.shadow_queue_max)
        self._loop = BackgroundLoop("shadow-scorer", self._run)
        self.offered = 0
        self.scored = 0
        self.dropped = 0
        self.errors = 0
        self.last_error: str | None = None

    def offer(
        self, shadow: LoadedShadow | None, champion_version: int, items: list[tuple[Any, str, int, float]]
    ) -> None:
        """(prediction id, text, champion label, champion P(positive)) of answers the champion
        ``champion_version`` gave; ignored unless ``shadow`` shadows that version. Never blocks."""
        if shadow is None or shadow.champion_version != champion_version:
            return
        for item in items:
            try:
                self._q.put_nowait((shadow, item))
                self.offered += 1
            except queue.Full:
                self.dropped += 1

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._loop.stop(timeout)

    def stats(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "scored": self.scored,
            "dropped": self.dropped,
            "errors": self.errors,
            "queued": self._q.qsize(),
            "last_error": self.last_error,
        }

    def _run(self, stopping: threading.Event) -> None:
        while not (stopping.is_set() and self._q.empty()):
            try:
                first = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            by_shadow: dict[int, list] = {}
            for sh, item in batch:
                by_shadow.setdefault(id(sh), []).append((sh, item))
            for group in by_shadow.values():
                try:
                    self._score(group[0][0], [item for _, item in group])
                except Exception as exc:  # noqa: BLE001 - logged and counted; the API keeps answering
                    self.errors += len(group)
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("shadow scoring of %d requests failed: %s", len(group), self.last_error)

    def _score(self, sh: LoadedShadow, items: list[tuple[Any, str, int, float]]) -> None:
        proba = np.asarray(sh.model.predict_proba([t for _, t, _, _ in items]))
        p = [float(x) for x in proba[:, 1]]
        labels = [int(x) for x in decide(proba[:, 1])]
        rows = [
            (str(pid), text_key(text), int(label), float(pp), lab, pc)
            for (pid, text, label, pp), lab, pc in zip(items, labels, p, strict=True)
        ]
        with db.connect(
            self.settings, start_embedded=False, connect_timeout=5, application_name="sentiment-api-shadow"
        ) as conn:
            store.insert_predictions(conn, sh.shadow_id, rows)
        self.scored += len(rows)
