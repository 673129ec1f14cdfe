"""Background writer: predictions go to PostgreSQL off the request path.

Requests hand rows to :meth:`PredictionWriter.submit` (a list append under a lock, no I/O).
A thread writes the buffer with one COPY every ``prediction_flush_seconds``, or as soon as
``prediction_flush_rows`` rows wait. A failed write keeps the rows (in order) and is retried.
The buffer is bounded (``prediction_buffer_max_rows``): past it :meth:`submit` raises
:class:`BufferFull` and the API answers 503 with Retry-After; nothing is dropped silently.

The spool (``var/spool/``) keeps rows across a restart while the database is down:

* shutdown: the buffer is flushed; what cannot be written is saved as
  ``predictions-<time>-<pid>-<id>.jsonl`` (written as ``<name>.tmp``, fsynced, renamed). A full
  disk is logged at CRITICAL; the rows are saved in smaller files as far as they fit, and the
  rest are written into the log as JSON (never lost silently).
* start: every spool file is *claimed*: locked with ``flock`` and renamed to
  ``<name>.claimed-<pid>``. The writer thread replays claimed files (write + commit, then delete
  the file) as soon as the database answers. A claim is held by the open, locked file; the
  kernel drops the lock when its process dies, so a ``.claimed-*`` file nobody holds (its
  process is gone, whatever its PID says) is claimed again. At shutdown the claims not yet
  replayed are released (renamed back): their rows are never copied into a new file, so
  restarts with the database down do not multiply them.
* ``.tmp`` files: a spool write in progress holds the lock on its ``.tmp``; a ``.tmp`` nobody
  holds was left by a process that died while writing. Its complete lines (newline-terminated
  JSON rows) are completed into a new spool file; a torn last line is kept beside it as
  ``corrupt-<name>`` and logged. Then the ``.tmp`` is deleted.
* replays are idempotent: rows are keyed by their uuid and a duplicate is skipped
  (``ON CONFLICT DO NOTHING``), so a crash between commit and delete writes nothing twice.

Rows the database refuses one by one (never expected: input is validated) go to
``var/spool/rejected-*.jsonl``.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import psycopg

from ml import serving
from ml.config import Settings
from ml.serving import PredictionRow

log = logging.getLogger(__name__)

SPOOL_PREFIX = "predictions-"
REJECTED_PREFIX = "rejected-"
CORRUPT_PREFIX = "corrupt-"
CLAIM_MARK = ".claimed-"
DEFAULT_MAX_BUFFER_ROWS = 100_000
SPOOL_SCAN_SECONDS = 10.0


def max_buffer_rows(settings: Settings) -> int:
    """``prediction_buffer_max_rows``: from the settings object when it has it, else the
    ``SENTIMENT_PREDICTION_BUFFER_MAX_ROWS`` environment variable, else 100,000."""
    value = getattr(settings, "prediction_buffer_max_rows", None)
    if value is None:
        value = os.environ.get("SENTIMENT_PREDICTION_BUFFER_MAX_ROWS") or DEFAULT_MAX_BUFFER_ROWS
    value = int(value)
    if value < 1:
        raise ValueError(f"prediction_buffer_max_rows must be >= 1, got {value}")
    return value


class FlushError(RuntimeError):
    """The buffered predictions could not be written (they stay buffered)."""


class BufferFull(RuntimeError):
    """The in-memory buffer is at its bound: the rows were not accepted."""

    def __init__(self, pending: int, adding: int, limit: int, last_error: str | None) -> None:
        self.pending, self.adding, self.limit = pending, adding, limit
        why = f" (last write error: {last_error})" if last_error else ""
        super().__init__(
            f"prediction buffer full: {pending} predictions wait to be written to the database, the limit "
            f"is {limit} (prediction_buffer_max_rows); {adding} more cannot be recorded now{why}. Retry later."
        )


@dataclass
class _Claim:
    path: Path      # its current name: <original>.claimed-<pid>
    original: Path  # the name it goes back to when released
    fd: int         # open and flock'ed while claimed


class PredictionWriter:
    def __init__(
        self,
        settings: Settings,
        connect: Callable[[], psycopg.Connection] | None = None,
        spool_dir: Path | None = None,
        max_rows: int | None = None,
    ) -> None:
        self.settings = settings
        self.flush_seconds = max(0.01, float(settings.prediction_flush_seconds))
        self.flush_rows = max(1, int(settings.prediction_flush_rows))
        self.max_buffer_rows = max_rows if max_rows is not None else max_buffer_rows(settings)
        self.spool_dir = spool_dir or settings.var / "spool"
        self._connect = connect or self._default_connect
        self._conn: psycopg.Connection | None = None
        self._buffer: list[PredictionRow] = []
        self._inflight = 0                     # rows taken out of the buffer by the write in progress
        self._buffer_lock = threading.Lock()   # guards _buffer only (held for microseconds)
        self._flush_lock = threading.Lock()    # one write at a time; guards _conn and _claims
        self._claims: list[_Claim] = []
        self._bad_files: set[Path] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_scan = 0.0
        self.written = 0
        self.replayed = 0                      # rows written from spool files by this writer
        self.failures = 0
        self.last_error: str | None = None
        self.last_flush_at: float | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self._flush_lock:
            self._scan_spool()
        try:
            self.replay_spool()  # the database is usually there: write the saved rows right away
        except FlushError:
            pass  # logged; the thread retries
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prediction-writer", daemon=True)
        self._thread.start()

    def close(self, attempts: int = 3, retry_delay: float = 0.5) -> None:
        """Stop the thread and write everything still buffered; spool what cannot be written
        and release the spool files not replayed (they stay for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for attempt in range(attempts):
            try:
                self.flush()
                self.replay_spool()
                break
            except FlushError:
                if attempt + 1 < attempts:
                    time.sleep(retry_delay)
        with self._flush_lock:
            self._spool_remaining()
            self._release_claims()
            self._reset_connection()

    # ------------------------------------------------------------ request side
    def has_room(self, n: int) -> bool:
        with self._buffer_lock:
            return len(self._buffer) + self._inflight + n <= self.max_buffer_rows

    def submit(self, rows: Iterable[PredictionRow]) -> None:
        """Buffer rows for writing; never blocks on the database. Raises :class:`BufferFull`
        (nothing buffered) when they would take the buffer past its bound."""
        rows = list(rows)
        with self._buffer_lock:
            pending = len(self._buffer) + self._inflight
            if pending + len(rows) > self.max_buffer_rows:
                raise BufferFull(pending, len(rows), self.max_buffer_rows, self.last_error)
            self._buffer.extend(rows)
            full = len(self._buffer) >= self.flush_rows
        if full:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Rows not yet committed (buffered, or in the write in progress)."""
        with self._buffer_lock:
            return len(self._buffer) + self._inflight

    @property
    def spooled_files(self) -> int:
        """Spool files this writer holds and has not replayed yet."""
        return len(self._claims)

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
                raise self._failed(exc, f"writing {len(rows)} predictions failed ({pending} kept buffered, will retry)")
            with self._buffer_lock:
                self._inflight = 0
            if rejected:
                self._dead_letter(rejected)
            self.written += len(rows) - len(rejected)
            self.last_error = None
            self.last_flush_at = time.time()
            return len(rows) - len(rejected)

    def replay_spool(self) -> int:
        """Write the rows of the spool files this writer claimed, one file per commit; each file
        is deleted once its rows are committed. Raises :class:`FlushError` (files kept) when the
        database cannot be reached."""
        total = 0
        with self._flush_lock:
            while self._claims:
                claim = self._claims[0]
                try:
                    rows = self._read_claim(claim)
                except Exception:
                    log.exception("could not read spooled predictions %s; released for a person to look at",
                                  claim.original.name)
                    self._bad_files.add(claim.original)
                    self._release(claim)
                    self._claims.pop(0)
                    continue
                try:
                    conn = self._connection()
                    rejected = serving.write_predictions(conn, rows)
                except Exception as exc:
                    raise self._failed(exc, f"replaying {len(rows)} spooled predictions from "
                                            f"{claim.original.name} failed (file kept, will retry)")
                if rejected:
                    self._dead_letter(rejected)
                self._done(claim)
                self._claims.pop(0)
                n = len(rows) - len(rejected)
                total += n
                self.replayed += n
                self.written += n
                self.last_error = None
                log.info("replayed %d spooled predictions from %s", n, claim.original.name)
        return total

    # ------------------------------------------------------------ internals
    def _failed(self, exc: BaseException, what: str) -> FlushError:
        self._reset_connection()
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}".strip()
        log.error("%s: %s", what, self.last_error)
        err = FlushError(self.last_error)
        err.__cause__ = exc
        return err

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
                if time.monotonic() >= self._next_scan:
                    with self._flush_lock:
                        self._scan_spool()  # files another process released, or left behind dying
                self.replay_spool()
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

    # ------------------------------------------------------------ spool: saving
    def _spool_remaining(self) -> None:
        with self._buffer_lock:
            rows, self._buffer = self._buffer, []
        if not rows:
            return
        records = [r.as_json() for r in rows]
        saved, unsaved, error = self._save(SPOOL_PREFIX, records)
        if saved:
            log.error("database unavailable at shutdown: %d predictions spooled to %s (%d file%s; written at "
                      "the next start)", len(records) - len(unsaved), self.spool_dir, len(saved),
                      "" if len(saved) == 1 else "s")
        if unsaved:
            log.critical(
                "COULD NOT SPOOL %d of %d predictions to %s (%s: disk full?). They are not in the database; "
                "each follows in this log as one 'unsaved prediction' JSON line, to be loaded by hand.",
                len(unsaved), len(records), self.spool_dir, error,
            )
            for rec in unsaved:
                log.critical("unsaved prediction: %s", json.dumps(rec, ensure_ascii=False))

    def _save(self, prefix: str, records: list[dict]) -> tuple[list[Path], list[dict], str | None]:
        """Write ``records`` to spool files: all in one file if it can, else (a full disk, a file
        size limit) in halves, and so on down to single rows. Returns (files written, records
        not saved, the last error)."""
        saved: list[Path] = []
        unsaved: list[dict] = []
        error: str | None = None
        failures_in_a_row = 0
        stack = [records]
        while stack:
            chunk = stack.pop()
            if failures_in_a_row >= 64:  # nothing fits any more: do not try a file per row
                unsaved.extend(chunk)
                continue
            try:
                saved.append(self._write_jsonl(prefix, chunk))
                failures_in_a_row = 0
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
                failures_in_a_row += 1
                if len(chunk) == 1:
                    unsaved.extend(chunk)
                else:
                    mid = len(chunk) // 2
                    stack += [chunk[mid:], chunk[:mid]]  # first half next: order kept
        return saved, unsaved, error

    def _dead_letter(self, rejected: list[tuple[PredictionRow, BaseException]]) -> None:
        records = [{**r.as_json(), "error": str(e)} for r, e in rejected]
        saved, unsaved, error = self._save(REJECTED_PREFIX, records)
        log.error("the database refused %d prediction rows (ids %s); saved to %s",
                  len(rejected), ", ".join(str(r.id) for r, _ in rejected[:10]), ", ".join(p.name for p in saved))
        for rec in unsaved:
            log.critical("refused prediction could not be saved (%s): %s", error, json.dumps(rec, ensure_ascii=False))

    def _write_jsonl(self, prefix: str, records: list[dict]) -> Path:
        """One complete spool file, or none: written under ``.tmp`` (locked while written), fsynced,
        renamed. A partial ``.tmp`` is removed when the write fails."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records).encode("utf-8")
        for _ in range(5):
            path = self.spool_dir / f"{prefix}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not _same_file(tmp, fd):  # taken as abandoned before we locked it: start again
                    continue
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                    os.rename(tmp, path)
                except BaseException:
                    _unlink(tmp)
                    raise
                _fsync_dir(self.spool_dir)
                return path
            finally:
                os.close(fd)
        raise OSError(f"could not create a spool file in {self.spool_dir}")

    # ------------------------------------------------------------ spool: loading
    def _scan_spool(self) -> None:
        """Complete abandoned ``.tmp`` files, then claim every spool file nobody holds (caller
        holds ``_flush_lock``)."""
        self._next_scan = time.monotonic() + SPOOL_SCAN_SECONDS
        if not self.spool_dir.is_dir():
            return
        for tmp in sorted(self.spool_dir.glob(f"{SPOOL_PREFIX}*.tmp")):
            self._recover_tmp(tmp)
        mine = {c.path for c in self._claims}
        for path in sorted(self.spool_dir.glob(f"{SPOOL_PREFIX}*.jsonl*")):
            if path in mine:
                continue
            name = path.name
            if name.endswith(".jsonl"):
                original = path
            elif CLAIM_MARK in name and name.split(CLAIM_MARK)[0].endswith(".jsonl"):
                original = path.with_name(name.split(CLAIM_MARK)[0])  # claimed by a process; held?
            else:
                continue
            if original in self._bad_files:
                continue
            claim = self._try_claim(path, original)
            if claim is None:
                continue  # another live process holds it
            if path != original:
                log.warning("took over %s: the process that claimed it is gone", name)
            self._claims.append(claim)

    def _try_claim(self, path: Path, original: Path) -> _Claim | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        mine = original.with_name(f"{original.name}{CLAIM_MARK}{os.getpid()}")
        try:
            if not _same_file(path, fd):  # replayed or moved since we opened it
                os.close(fd)
                return None
            if path != mine:
                os.rename(path, mine)
        except OSError:
            os.close(fd)
            return None
        return _Claim(mine, original, fd)

    @staticmethod
    def _read_claim(claim: _Claim) -> list[PredictionRow]:
        os.lseek(claim.fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(claim.fd, 1 << 20):
            chunks.append(chunk)
        text = b"".join(chunks).decode("utf-8")
        return [PredictionRow.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]

    def _done(self, claim: _Claim) -> None:
        _unlink(claim.path)
        os.close(claim.fd)  # drops the lock

    def _release(self, claim: _Claim) -> None:
        try:
            os.rename(claim.path, claim.original)
        except OSError:
            log.exception("could not rename %s back to %s (it is claimed again at the next start: the lock "
                          "goes with this process)", claim.path.name, claim.original.name)
        os.close(claim.fd)

    def _release_claims(self) -> None:
        claims, self._claims = self._claims, []
        for claim in claims:
            self._release(claim)
        if claims:
            log.error("database unavailable at shutdown: %d spool file%s left in %s for the next start",
                      len(claims), "" if len(claims) == 1 else "s", self.spool_dir)

    def _recover_tmp(self, tmp: Path) -> None:
        """A ``.tmp`` nobody holds was being written by a process that died: keep its complete
        lines as a new spool file, its torn remainder as ``corrupt-*``, then delete it."""
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # being written right now
            if not _same_file(tmp, fd):
                return
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
            complete, _, torn = data.rpartition(b"\n")
            good: list[dict] = []
            bad: list[bytes] = []
            for line in complete.split(b"\n") if complete else []:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    PredictionRow.from_json(rec)
                    good.append(rec)
                except Exception:
                    bad.append(line)
            if torn.strip():
                bad.append(torn)
            prefix = REJECTED_PREFIX if tmp.name.startswith(REJECTED_PREFIX) else SPOOL_PREFIX
            if good:
                path = self._write_jsonl(prefix, good)
                log.warning("completed %s left by a process that died while writing it: %d rows kept in %s",
                            tmp.name, len(good), path.name)
            if bad:
                corrupt = self.spool_dir / f"{CORRUPT_PREFIX}{tmp.name}"
                corrupt.write_bytes(b"\n".join(bad) + b"\n")
                log.error("%s held %d incomplete or unreadable line%s (a write cut short); kept in %s for a "
                          "person to look at", tmp.name, len(bad), "" if len(bad) == 1 else "s", corrupt.name)
            _unlink(tmp)  # while holding the lock: a writer that locks it afterwards starts again
        finally:
            os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
