"""Feedback on the fast path, and the alert rule off it.

:class:`FeedbackRecorder` stores a report with one statement on a pooled connection
(psycopg_pool; ``api_db_pool_size`` per worker). A report on a prediction that is acknowledged
but still in some worker's prediction log (its id is signed: :class:`api.runtime.serving.PredictionIds`)
is stored in ``pending_feedback`` and moved into ``feedback`` by the writer once the prediction is
stored. An id that is neither stored nor signed was never issued: 404. Either way the report is
committed in PostgreSQL before the 201 leaves. One report per (prediction, reporter), across both
tables: a second post finds the first (checked and stored under a transaction-level advisory lock on
the pair, so two workers posting it at once store one row).

:class:`AlertQueue` runs the misclassification-burst rule (``ml.stages.alerts``) in one background thread
per worker, on a connection of its own, for the reports that say "wrong"; the request never waits
for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg
from fastapi import HTTPException
from psycopg_pool import ConnectionPool, PoolTimeout

from api.errors import database_unavailable
from api.runtime.serving import PredictionIds
from ml.platform import db
from ml.platform.config import Settings
from ml.stages.alerts.burst import evaluate_feedback
from ml.store import predictions as store
from ml.store import schema

log = logging.getLogger(__name__)

POOL_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class Recorded:
    """A report: the one just stored (``created``), or the one this reporter had already made on the
    prediction (nothing stored)."""

    id: int
    created_at: datetime
    correct_label: int
    comment: str | None
    created: bool = True


class FeedbackRecorder:
    def __init__(self, settings: Settings, ids: PredictionIds, alert_queue: AlertQueue | None = None) -> None:
        self.settings = settings
        self.ids = ids
        self.alerts = alert_queue
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        self.pending_stored = 0

    def _get_pool(self) -> ConnectionPool:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    url = db.database_url(self.settings, start_embedded=False)
                    pool = ConnectionPool(
                        url,
                        min_size=1,
                        max_size=int(getattr(self.settings, "api_db_pool_size", 4)),
                        kwargs={"autocommit": True, "application_name": "sentiment-api", "connect_timeout": 3},
                        timeout=POOL_TIMEOUT_SECONDS,
                        name="sentiment-api",
                        open=False,
                        check=ConnectionPool.check_connection,
                    )
                    pool.open(wait=False)
                    self._pool = pool
        return self._pool

    def open(self) -> None:
        try:
            self._get_pool()
        except Exception as exc:  # noqa: BLE001 - the database may come later: the first request tries again
            log.warning("feedback pool not opened yet: %s", exc)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def pool(self) -> ConnectionPool:
        """The worker's pool (``api_db_pool_size`` connections at most): feedback and API-key checks."""
        return self._get_pool()

    def record(
        self, prediction_id: uuid.UUID, correct_label: int, comment: str | None, reporter: str
    ) -> Recorded | None:
        """Store the report (committed on return), or find the one this reporter already made on this
        prediction (one report per prediction and reporter, stored or pending: nothing stored then,
        ``created`` false). ``None`` when the prediction id was never issued (nothing stored). 503 when
        the database cannot be reached."""
        try:
            with self._get_pool().connection() as conn:
                with conn.transaction():  # under a lock on (prediction, reporter): concurrent posts store one row
                    store.lock_report(conn, prediction_id, reporter)
                    old = store.existing_report(conn, prediction_id, reporter)
                    if old is not None:
                        return Recorded(old[0], old[1], old[2], old[3], created=False)
                    stored = store.insert_feedback(conn, prediction_id, correct_label, comment, reporter)
                    if stored is None:
                        if not self.ids.issued(prediction_id):
                            return None
                        # acknowledged, still in a prediction log: stored now, moved when the prediction lands
                        fid, created_at = store.insert_pending_feedback(
                            conn, prediction_id, correct_label, comment, reporter
                        )
                        self.pending_stored += 1
                        return Recorded(fid, created_at, correct_label, comment)
            fid, created_at, wrong = stored
            if wrong and self.alerts is not None:  # committed: the rule's thread sees it
                self.alerts.put(fid)
            return Recorded(fid, created_at, correct_label, comment)
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError, db.DatabaseUnavailable) as exc:
            raise database_unavailable(exc) from exc

    def ping(self) -> None:
        with self._get_pool().connection(timeout=2) as conn:
            schema.ping(conn)


class AlertQueue:
    """Feedback ids whose report says "wrong", evaluated by ``ml.stages.alerts`` in one thread."""

    def __init__(self, settings: Settings, maxsize: int = 10_000) -> None:
        self.settings = settings
        self._q: queue.Queue[int | None] = queue.Queue(maxsize=maxsize)
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None
        self.evaluated = 0
        self.skipped = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alert-rule", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Evaluate what is queued (up to ``timeout``), then stop."""
        if self._thread is None:
            return
        self._q.put(None)
        self._thread.join(timeout)
        self._thread = None
        if self._conn is not None:
            self._conn.close()

    def put(self, feedback_id: int) -> None:
        try:
            self._q.put_nowait(feedback_id)
        except queue.Full:  # the rule counts from PostgreSQL: the next wrong report counts this one too
            self.skipped += 1
            log.warning(
                "alert rule behind (%d reports queued): report %s is counted by the next evaluation",
                self._q.qsize(),
                feedback_id,
            )

    def put_many(self, moved: list[tuple[int, bool]]) -> None:
        for fid, wrong in moved:
            if wrong:
                self.put(fid)

    def join(self) -> None:
        """Wait until everything queued so far is evaluated (tests)."""
        self._q.join()

    def _run(self) -> None:
        while True:
            fid = self._q.get()
            try:
                if fid is None:
                    return
                self._evaluate(fid)
            finally:
                self._q.task_done()

    def _evaluate(self, fid: int) -> None:
        for attempt in range(2):
            try:
                if self._conn is None or self._conn.closed:
                    url = db.database_url(self.settings, start_embedded=False)
                    self._conn = psycopg.connect(
                        url, autocommit=True, connect_timeout=5, application_name="sentiment-alerts"
                    )
                evaluate_feedback(fid, self.settings, conn=self._conn)
                self.evaluated += 1
                return
            except (psycopg.OperationalError, psycopg.InterfaceError, db.DatabaseUnavailable) as exc:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if attempt:
                    log.error("alert evaluation of feedback %s failed (the feedback is stored): %s", fid, exc)
            except Exception:
                log.exception("alert evaluation failed for feedback %s (the feedback is stored)", fid)
                return


def not_found(prediction_id: uuid.UUID) -> HTTPException:
    return HTTPException(404, detail=f"no prediction with id {prediction_id}; nothing was stored")
