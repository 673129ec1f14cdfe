"""Background writer: predictions go to PostgreSQL off the request path.

Requests hand rows to :meth:`PredictionWriter.submit` (a list append under a lock, no I/O).
A thread writes the buffer with one COPY every ``prediction_flush_seconds``, or as soon as
``prediction_flush_rows`` rows wait. A failed write keeps the rows (in order) and is retried;
on shutdown everything left is flushed, and what still cannot be written (database down) is
spooled to ``var/spool/`` and logged, then loaded again by the next start. Rows the database
refuses one by one (never expected: input is validated) go to ``var/spool/rejected-*.jsonl``.
Nothing is dropped silently.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import psycopg

from ml import serving
from ml.config import Settings
from ml.serving import PredictionRow

log = logging.getLogger(__name__)

SPOOL_PREFIX = "predictions-"
REJECTED_PREFIX = "rejected-"


class FlushError(RuntimeError):
    """The buffered predictions could not be written (they stay buffered)."""


class PredictionWriter:
    def __init__(
        self,
        settings: Settings,
        connect: Callable[[], psycopg.Connection] | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.flush_seconds = max(0.01, float(settings.prediction_flush_seconds))
        self.flush_rows = max(1, int(settings.prediction_flush_rows))
        self.spool_dir = spool_dir or settings.var / "spool"
        self._connect = connect or self._default_connect
        self._conn: psycopg.Connection | None = None
        self._buffer: list[PredictionRow] = []
        self._inflight = 0                     # rows taken out of the buffer by the write in progress
        self._buffer_lock = threading.Lock()   # guards _buffer only (held for microseconds)
        self._flush_lock = threading.Lock()    # one write at a time; guards _conn
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_flush_at: float | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._load_spool()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prediction-writer", daemon=True)
        self._thread.start()

    def close(self, attempts: int = 3, retry_delay: float = 0.5) -> None:
        """Stop the thread and write everything still buffered; spool what cannot be written."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for attempt in range(attempts):
            try:
                self.flush()
                break
            except FlushError:
                if attempt + 1 < attempts:
                    time.sleep(retry_delay)
        self._spool_remaining()
        with self._flush_lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

    # ------------------------------------------------------------ request side
    def submit(self, rows: Iterable[PredictionRow]) -> None:
        """Buffer rows for writing; never blocks on the database."""
        with self._buffer_lock:
            self._buffer.extend(rows)
            full = len(self._buffer) >= self.flush_rows
        if full:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Rows not yet committed (buffered, or in the write in progress)."""
        with self._buffer_lock:
            return len(self._buffer) + self._inflight

    def flush(self) -> int:
        """Write all rows buffered before this call (waits for a write in progress).
        Returns how many rows it wrote; raises :class:`FlushError` (rows kept) on failure."""
        with self._flush_lock:
            with self._buffer_lock:
                rows, self._buffer = self._buffer, []
                self._inflight = len(rows)
            if not rows:
                return 0
            try:
                conn = self._connection()
                rejected = serving.write_predictions(conn, rows)
            except Exception as exc:
                with self._buffer_lock:  # keep them, in order, ahead of newer rows
                    self._buffer[:0] = rows
                    self._inflight = 0
                    pending = len(self._buffer)
                self._reset_connection()
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}".strip()
                log.error("writing %d predictions failed (%d kept buffered, will retry): %s",
                          len(rows), pending, self.last_error)
                raise FlushError(self.last_error) from exc
            with self._buffer_lock:
                self._inflight = 0
            if rejected:
                self._dead_letter(rejected)
            self.written += len(rows) - len(rejected)
            self.last_error = None
            self.last_flush_at = time.time()
            return len(rows) - len(rejected)

    # ------------------------------------------------------------ internals
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
            except FlushError:
                # already logged; back off a little so a dead database is not hammered
                self._stop.wait(min(5.0, self.flush_seconds * 2))
            except Exception:  # pragma: no cover - a bug; keep the thread alive
                log.exception("prediction writer: unexpected error")

    def _default_connect(self) -> psycopg.Connection:
        from ml import db

        url = db.database_url(self.settings, start_embedded=False)
        return psycopg.connect(url, connect_timeout=5, application_name="sentiment-api-writer")

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _reset_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover
                pass

    # ------------------------------------------------------------ spool (database down at shutdown)
    def _spool_remaining(self) -> None:
        with self._buffer_lock:
            rows, self._buffer = self._buffer, []
        if not rows:
            return
        path = self._write_jsonl(SPOOL_PREFIX, [r.as_json() for r in rows])
        log.error("database unavailable at shutdown: %d predictions spooled to %s "
                  "(written at the next start)", len(rows), path)

    def _dead_letter(self, rejected: list[tuple[PredictionRow, BaseException]]) -> None:
        path = self._write_jsonl(REJECTED_PREFIX, [{**r.as_json(), "error": str(e)} for r, e in rejected])
        log.error("the database refused %d prediction rows (ids %s); saved to %s",
                  len(rejected), ", ".join(str(r.id) for r, _ in rejected[:10]), path)

    def _write_jsonl(self, prefix: str, records: list[dict]) -> Path:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        path = self.spool_dir / f"{prefix}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        return path

    def _load_spool(self) -> None:
        """Buffer the rows a previous run spooled; the files go once the rows are written."""
        if not self.spool_dir.is_dir():
            return
        claimed: list[tuple[Path, Path]] = []
        for path in sorted(self.spool_dir.glob(f"{SPOOL_PREFIX}*.jsonl")):
            mine = path.with_name(path.name + f".claimed-{os.getpid()}")
            try:
                path.rename(mine)  # atomic: with several workers only one takes a file
            except FileNotFoundError:
                continue
            try:
                with mine.open(encoding="utf-8") as f:
                    rows = [PredictionRow.from_json(json.loads(line)) for line in f if line.strip()]
            except Exception:
                log.exception("could not read spooled predictions %s; left in place for the next start", path)
                mine.rename(path)  # back under its own name, so it is tried again (never silently dropped)
                continue
            self.submit(rows)
            claimed.append((path, mine))
            log.info("loaded %d spooled predictions from %s", len(rows), path.name)
        if not claimed:
            return
        try:
            self.flush()
        except FlushError:
            # still buffered here, and the files stay for the next start (rewriting is idempotent)
            for path, mine in claimed:
                mine.rename(path)
            return
        for _, mine in claimed:
            mine.unlink()
