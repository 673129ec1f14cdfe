"""The prediction writer: the prediction log (api/runtime/predlog.py) into PostgreSQL, off the request path.

Requests record their rows with :meth:`PredictionWriter.record` / :meth:`record_async`: the rows
are durable in the log (group commit, fsync) when it returns. A thread seals the log's active
segment every ``prediction_flush_seconds`` (or as soon as ``prediction_flush_rows`` rows wait),
COPYs the segment's rows into ``predictions`` (idempotently: keyed by id), commits, and only then
deletes the segment. Then it moves the feedback that waited for those predictions
(``pending_feedback`` -> ``feedback``) and hands the reports that say "wrong" to the alert rule.

A database outage keeps the segments on disk and is retried with backoff; the log's cap
(``prediction_log_max_bytes``) turns a long outage into 503 + Retry-After, never into memory
growth or silent loss. Each worker process writes its own segments; segments of a process that
died (kill -9) are claimed by the next worker that scans (at start and every
``SCAN_SECONDS``), and replayed. At shutdown the writer drains the log into PostgreSQL; what the
database does not take stays on disk for the next start (or a live worker).

Spool files of the earlier writer (``predictions-*.jsonl`` under ``var/spool``) are replayed
once, the same way.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psycopg

from api import metrics
from api.runtime.background import BackgroundLoop
from api.runtime.predlog import LogFull, LogWriteError, PredictionLog, Segment, encode
from api.runtime.serving import PredictionRow
from ml.platform.config import Settings
from ml.store import predictions as store

log = logging.getLogger(__name__)

SCAN_SECONDS = 5.0
LEGACY_PREFIX = "predictions-"
REJECTED_PREFIX = "rejected-"
__all__ = ["FlushError", "LogFull", "LogWriteError", "PredictionWriter"]


class FlushError(RuntimeError):
    """The logged predictions could not be written to PostgreSQL (they stay in the log)."""


class PredictionWriter:
    def __init__(
        self,
        settings: Settings,
        connect: Callable[[], psycopg.Connection] | None = None,
        spool_dir: Path | None = None,
        max_bytes: int | None = None,
        on_feedback: Callable[[list[tuple[int, bool]]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.flush_seconds = max(0.01, float(settings.prediction_flush_seconds))
        self.flush_rows = max(1, int(settings.prediction_flush_rows))
        self.spool_dir = spool_dir or (settings.api_state_dir or settings.var) / "spool"  # private to this instance
        self.log = PredictionLog(
            self.spool_dir,
            max_bytes if max_bytes is not None else int(settings.prediction_log_max_bytes),
            fsync=bool(settings.prediction_log_fsync),
        )
        self.log.on_commit = self._on_commit
        self.on_feedback = on_feedback
        self._connect = connect or self._default_connect
        self._conn: psycopg.Connection | None = None
        self._with_reporter: bool | None = None
        self._flush_lock = threading.Lock()  # one write at a time; guards _conn
        self._wake = threading.Event()
        self._loop = BackgroundLoop("prediction-writer", self._run, wake=self._wake.set)
        self._next_scan = 0.0
        self.written = 0
        self.replayed = 0  # rows of segments claimed from processes that died
        self.feedback_resolved = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_flush_at: float | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.log.open()
        with self._flush_lock:
            self._scan()
        try:
            self._write_sealed()  # the database is usually there: write what was left right away
        except FlushError:
            pass  # logged; the thread retries
        self._loop.start()

    def close(self, attempts: int = 3, retry_delay: float = 0.5) -> None:
        """Stop taking rows, drain the log into PostgreSQL; what the database does not take stays
        on disk (released: the next start or another worker replays it)."""
        self._loop.stop()  # sets the stop event, wakes the thread, waits for its current write
        self.log.close()
        for attempt in range(attempts):
            try:
                self._write_sealed()
                break
            except FlushError:
                if attempt + 1 < attempts:
                    time.sleep(retry_delay)
        with self._flush_lock:
            left = self.log.release_all()
            self._reset_connection()
        if left:
            log.error(
                "database unavailable at shutdown: %d prediction log segment%s kept in %s (replayed "
                "at the next start, or by another worker)",
                len(left),
                "" if len(left) == 1 else "s",
                self.spool_dir,
            )

    # ------------------------------------------------------------ request side
    def has_room(self, n: int = 1) -> bool:
        """Whether the log has room for ``n`` more rows of a typical size (~400 bytes)."""
        return self.log.has_room(400 * n)

    def record(self, rows: Iterable[PredictionRow]) -> None:
        """Make ``rows`` durable (returns once they are synced to the log). Raises
        :class:`~api.runtime.predlog.LogFull` or :class:`~api.runtime.predlog.LogWriteError`: nothing recorded."""
        rows = list(rows)
        data, n = encode(r.as_log_record() for r in rows)
        self.log.append(data, n)
        metrics.count_predictions(rows)

    async def record_async(self, rows: Iterable[PredictionRow]) -> None:
        rows = list(rows)
        data, n = encode(r.as_log_record() for r in rows)
        await self.log.append_async(data, n)
        metrics.count_predictions(rows)

    @property
    def pending(self) -> int:
        """Rows acknowledged and not yet in PostgreSQL."""
        return self.log.pending_rows

    @property
    def max_bytes(self) -> int:
        return self.log.max_bytes

    def flush(self) -> int:
        """Write every row acknowledged before this call. Returns the rows written; raises
        :class:`FlushError` (rows kept in the log) when the database does not take them."""
        self.log.seal()
        return self._write_sealed()

    # ------------------------------------------------------------ writing
    def _on_commit(self, active_rows: int) -> None:
        if active_rows >= self.flush_rows:
            self._wake.set()

    def _write_sealed(self) -> int:
        total = 0
        with self._flush_lock:
            for seg in self.log.sealed():
                total += self._write_segment(seg)
            self._resolve_feedback()
        return total

    def _write_segment(self, seg: Segment) -> int:
        try:
            rows = self.log.read(seg)
        except OSError as exc:  # pragma: no cover - the disk itself fails
            raise self._failed(exc, f"reading prediction log {seg.path.name} failed (kept, will retry)") from exc
        n = 0
        if rows:
            try:
                conn = self._connection()
                with conn.transaction():
                    n = store.copy_predictions_idempotent(conn, rows)
            except store.TRANSIENT_ERRORS as exc:
                raise self._failed(
                    exc, f"writing {len(rows)} logged predictions failed (kept in {seg.path.name}, will retry)"
                ) from exc
            except Exception as exc:  # noqa: BLE001 - a row the database refuses: one by one, the bad ones set aside
                log.warning("COPY of %s failed (%s); writing its rows one by one", seg.path.name, exc)
                n = self._write_one_by_one(rows)
        self.log.release(seg)
        self.written += n
        if not seg.own:
            self.replayed += n
            log.info("replayed %d predictions from %s (%d already stored)", n, seg.path.name, len(rows) - n)
        self.last_error = None
        self.log.last_db_error = None
        self.last_flush_at = time.time()
        return n

    def _write_one_by_one(self, rows: list[list]) -> int:
        prows = [_row(r) for r in rows]
        try:
            rejected = store.write_rows(self._connection(), prows)
        except store.TRANSIENT_ERRORS as exc:
            raise self._failed(exc, "writing logged predictions one by one failed (kept, will retry)") from exc
        if rejected:
            self._dead_letter(rejected)
        return len(prows) - len(rejected)

    def _resolve_feedback(self) -> None:
        try:
            conn = self._connection()
            if self._with_reporter is None:
                self._with_reporter = store.feedback_has_reporter(conn)
            with conn.transaction():
                moved = store.resolve_pending_feedback(conn, self._with_reporter)
        except store.TRANSIENT_ERRORS as exc:
            raise self._failed(exc, "resolving pending feedback failed (kept, will retry)") from exc
        if moved:
            self.feedback_resolved += len(moved)
            if self.on_feedback is not None:
                try:
                    self.on_feedback(moved)
                except Exception:  # pragma: no cover
                    log.exception("feedback hook failed for %d reports", len(moved))

    def _dead_letter(self, rejected: list[tuple[PredictionRow, BaseException]]) -> None:
        path = self.spool_dir / f"{REJECTED_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.jsonl"
        with open(path, "a", encoding="utf-8") as f:
            for r, e in rejected:
                f.write(json.dumps({**r.as_json(), "error": str(e)}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        log.error(
            "the database refused %d prediction rows (ids %s); saved to %s",
            len(rejected),
            ", ".join(str(r.id) for r, _ in rejected[:10]),
            path.name,
        )

    def _failed(self, exc: BaseException, what: str) -> FlushError:
        self._reset_connection()
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}".strip()
        self.log.last_db_error = self.last_error
        log.error("%s: %s", what, self.last_error)
        err = FlushError(self.last_error)
        err.__cause__ = exc
        return err

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if stopping.is_set():
                break
            try:
                self.log.seal()
                if time.monotonic() >= self._next_scan:
                    with self._flush_lock:
                        self._scan()
                self._write_sealed()
            except FlushError:
                stopping.wait(min(5.0, self.flush_seconds * 2))  # logged; do not hammer a dead database
            except Exception:  # pragma: no cover - a bug; keep the thread alive
                log.exception("prediction writer: unexpected error")

    def _scan(self) -> None:
        """Claim segments of processes that died, and spool files of the earlier writer."""
        self._next_scan = time.monotonic() + SCAN_SECONDS
        self.log.claim_orphans()
        self._import_legacy_spool()

    def _import_legacy_spool(self) -> None:
        if not self.spool_dir.is_dir():
            return
        for path in sorted(self.spool_dir.glob(f"{LEGACY_PREFIX}*.jsonl*")):
            if path.name.endswith(".tmp"):
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                with os.fdopen(os.dup(fd), "rb") as f:
                    lines = f.read().decode("utf-8").splitlines()
                rows = [PredictionRow.from_json(json.loads(x)).as_log_record() for x in lines if x.strip()]
                try:
                    conn = self._connection()
                    with conn.transaction():
                        n = store.copy_predictions_idempotent(conn, rows)
                except Exception as exc:  # noqa: BLE001 - kept on disk, replayed at the next pass
                    log.warning("earlier spool file %s not replayed yet (%s)", path.name, exc)
                    self._reset_connection()
                    continue
                os.unlink(path)
                self.written += n
                log.info("replayed %d predictions from the earlier spool file %s", n, path.name)
            except Exception:
                log.exception("could not replay the earlier spool file %s (left for a person)", path.name)
            finally:
                os.close(fd)

    def _default_connect(self) -> psycopg.Connection:
        from ml.platform import db

        url = db.database_url(self.settings, start_embedded=False)
        return psycopg.connect(url, connect_timeout=5, autocommit=True, application_name="sentiment-api-writer")

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self._conn.autocommit = True
        return self._conn

    def _reset_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection  # pragma: no cover
                pass


def _row(rec: list) -> PredictionRow:
    keys = store.COLUMNS
    return PredictionRow.from_json(dict(zip(keys, rec, strict=True)))
