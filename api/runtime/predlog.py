"""The prediction log: acknowledged means durable.

Before ``/predict`` returns an id, its prediction is in an append-only file on local disk. Every
request hands its encoded rows to :meth:`PredictionLog.append` and waits; one commit thread
writes everything that arrived meanwhile with one ``write`` and one ``fdatasync`` (group commit:
one fsync covers every request that arrived while the previous one ran), then wakes them all.

The log is a sequence of *segments* (``wal-<pid>-<ns>-<seq>.log`` in the log directory). The
prediction writer *seals* the active segment (a new one takes the appends), copies the sealed
segment's rows into PostgreSQL and deletes the file only after the commit. A segment is held by
an ``flock`` of the process that owns it: the kernel drops the lock when that process dies, so a
segment nobody holds (its worker was killed) is *claimed* by another process (or the restarted
worker) and replayed. Replays are idempotent (rows are keyed by id).

Record format: ``<u32 length><u32 crc32(payload)><payload>``, the payload one row as a JSON
array. A torn record at the end of a segment (a process killed inside a write) was never
acknowledged: it is dropped (kept in ``corrupt-<segment>`` for a person to look at).

The log has a size cap (``prediction_log_max_bytes``, all segments of the process together):
past it :meth:`append` raises :class:`LogFull`, and the API answers 503 with Retry-After. Nothing
is held in memory beyond the requests in flight.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEGMENT_PREFIX = "wal-"
SEGMENT_SUFFIX = ".log"
CORRUPT_PREFIX = "corrupt-"
_HEADER = struct.Struct("<II")


class LogFull(RuntimeError):
    """The log is at its size cap: nothing was recorded."""

    def __init__(self, used: int, adding: int, limit: int, why: str | None) -> None:
        self.used, self.adding, self.limit = used, adding, limit
        reason = f" (the database is not taking them: {why})" if why else ""
        super().__init__(
            f"prediction log full: {used} bytes of predictions wait on local disk to be written to the "
            f"database, the cap is {limit} (prediction_log_max_bytes){reason}; nothing was recorded. Retry later."
        )


class LogWriteError(RuntimeError):
    """The log could not be written or synced (disk full, I/O error): nothing was recorded."""


def encode(rows: Iterable[Sequence[Any]]) -> tuple[bytes, int]:
    """Records for ``rows`` (JSON-serialisable sequences): (bytes, number of rows)."""
    parts: list[bytes] = []
    n = 0
    for row in rows:
        payload = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        parts.append(_HEADER.pack(len(payload), zlib.crc32(payload)))
        parts.append(payload)
        n += 1
    return b"".join(parts), n


def decode(data: bytes) -> tuple[list[list[Any]], int]:
    """The rows of a segment's bytes, and the offset where valid records end (``len(data)`` when
    the whole segment is valid)."""
    rows: list[list[Any]] = []
    pos, end = 0, len(data)
    while pos + _HEADER.size <= end:
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        if start + length > end:
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            break
        try:
            rows.append(json.loads(payload))
        except ValueError:
            break
        pos = start + length
    return rows, pos


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int  # open and flock'ed while this process holds the segment
    size: int = 0  # bytes written and synced
    rows: int = 0  # rows in it (claimed segments: known once read)
    own: bool = True  # written by this process (False: claimed from a dead one)


class _SyncWaiter:
    __slots__ = ("event", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: BaseException | None = None


@dataclass
class _Pending:
    data: bytes
    rows: int
    waiter: Any  # _SyncWaiter | asyncio.Future
    loop: asyncio.AbstractEventLoop | None = None


@dataclass
class _Stats:
    commits: int = 0
    appends: int = 0
    synced_bytes: int = 0
    fsync_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class PredictionLog:
    def __init__(self, directory: Path, max_bytes: int, fsync: bool = True) -> None:
        if max_bytes < 1:
            raise ValueError(f"prediction_log_max_bytes must be >= 1, got {max_bytes}")
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)
        self.fsync = bool(fsync)
        self.stats = _Stats()
        # called by the commit thread with the active segment's row count
        self.on_commit: Callable[[int], None] | None = None
        self.last_db_error: str | None = None  # set by the writer: why segments are not being replayed
        self._lock = threading.Lock()  # _pending, _used, _sealed
        self._cond = threading.Condition(self._lock)
        self._io_lock = threading.Lock()  # the active segment (commit thread vs seal)
        self._pending: list[_Pending] = []
        self._used = 0  # bytes on disk + reserved for pending appends
        self._sealed: deque[Segment] = deque()
        self._seq = 0
        self._active: Segment | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------ lifecycle
    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._active = self._new_segment()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Commit what is pending, stop the commit thread; the active segment is sealed (or
        removed when empty). Segments stay held until :meth:`release_all`."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._io_lock:
            seg, self._active = self._active, None
        if seg is not None:
            if seg.size == 0:
                _unlink(seg.path)
                os.close(seg.fd)
            else:
                with self._lock:
                    self._sealed.append(seg)

    def release_all(self) -> list[Path]:
        """Drop every segment still held (unlock, keep the file): another process, or the next
        start, claims and replays it. Returns their paths."""
        with self._lock:
            segs, self._sealed = list(self._sealed), deque()
            self._used -= sum(s.size for s in segs)
        for s in segs:
            os.close(s.fd)
        return [s.path for s in segs]

    # ------------------------------------------------------------ appending
    def _reserve(self, data: bytes, rows: int, waiter: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        with self._cond:
            if self._stopping or self._thread is None:
                raise LogWriteError("the prediction log is closed (the API is shutting down)")
            if self._used + len(data) > self.max_bytes:
                raise LogFull(self._used, len(data), self.max_bytes, self.last_db_error)
            self._used += len(data)
            self._pending.append(_Pending(data, rows, waiter, loop))
            self._cond.notify()

    def append(self, data: bytes, rows: int, timeout: float | None = 30.0) -> None:
        """Write ``data`` (from :func:`encode`) durably; returns once it is synced. Raises
        :class:`LogFull` or :class:`LogWriteError` (nothing recorded)."""
        w = _SyncWaiter()
        self._reserve(data, rows, w)
        if not w.event.wait(timeout):
            raise LogWriteError(f"the prediction log did not sync within {timeout}s")
        if w.error is not None:
            raise w.error

    async def append_async(self, data: bytes, rows: int) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._reserve(data, rows, fut, loop)
        await fut

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            data = b"".join(p.data for p in batch)
            nrows = sum(p.rows for p in batch)
            error: BaseException | None = None
            with self._io_lock:
                seg = self._active
                try:
                    if seg is None:
                        raise LogWriteError("the prediction log is closed")
                    view = memoryview(data)
                    while view:
                        view = view[os.write(seg.fd, view) :]
                    t = time.perf_counter()
                    if self.fsync:
                        os.fdatasync(seg.fd)
                    self.stats.fsync_seconds += time.perf_counter() - t
                    seg.size += len(data)
                    seg.rows += nrows
                    active_rows = seg.rows
                except OSError as exc:
                    error = LogWriteError(
                        f"writing the prediction log {seg.path.name if seg else ''} failed: "
                        f"{type(exc).__name__}: {exc}; nothing was recorded"
                    )
                    log.error("%s", error)
                    if seg is not None:  # cut the partial write off: the file holds only whole, synced records
                        try:
                            os.ftruncate(seg.fd, seg.size)
                        except OSError:  # pragma: no cover
                            pass
                except LogWriteError as exc:
                    error = exc
            if error is not None:
                with self._lock:
                    self._used -= len(data)
            else:
                self.stats.commits += 1
                self.stats.appends += len(batch)
                self.stats.synced_bytes += len(data)
                if self.on_commit is not None:
                    try:
                        self.on_commit(active_rows)
                    except Exception:  # pragma: no cover
                        log.exception("prediction log: on_commit hook failed")
            self._wake(batch, error)

    @staticmethod
    def _wake(batch: list[_Pending], error: BaseException | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
        for p in batch:
            if p.loop is None:
                p.waiter.error = error
                p.waiter.event.set()
            else:
                by_loop.setdefault(p.loop, []).append(p.waiter)
        for loop, futs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, futs, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    # ------------------------------------------------------------ segments
    def _new_segment(self) -> Segment:
        self._seq += 1
        name = f"{SEGMENT_PREFIX}{os.getpid()}-{time.time_ns()}-{self._seq:06d}{SEGMENT_SUFFIX}"
        path = self.dir / name
        tmp = self.dir / f".{name}.new"  # locked before it gets a name a scanner looks at
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp, path)
        _fsync_dir(self.dir)
        return Segment(path, fd)

    def seal(self) -> Segment | None:
        """Start a new active segment and queue the current one for the writer (None when it is
        empty: nothing to do)."""
        with self._io_lock:
            seg = self._active
            if seg is None or seg.size == 0:
                return None
            self._active = self._new_segment()
        with self._lock:
            self._sealed.append(seg)
        return seg

    def sealed(self) -> list[Segment]:
        """Sealed segments, oldest first (own and claimed)."""
        with self._lock:
            return list(self._sealed)

    def release(self, seg: Segment) -> None:
        """The segment's rows are committed in PostgreSQL: delete it (truncation)."""
        _unlink(seg.path)
        os.close(seg.fd)
        with self._lock:
            try:
                self._sealed.remove(seg)
            except ValueError:  # pragma: no cover
                pass
            self._used -= seg.size

    def read(self, seg: Segment) -> list[list[Any]]:
        """The rows of a sealed segment. A torn tail is cut off (kept as ``corrupt-*``)."""
        chunks = []
        offset = 0
        while chunk := os.pread(seg.fd, 1 << 20, offset):
            chunks.append(chunk)
            offset += len(chunk)
        data = b"".join(chunks)
        rows, valid = decode(data)
        if valid < len(data):
            corrupt = self.dir / f"{CORRUPT_PREFIX}{seg.path.name}"
            try:
                corrupt.write_bytes(data[valid:])
            except OSError:  # pragma: no cover
                log.exception("could not keep the torn tail of %s", seg.path.name)
            log.error(
                "%s ends with %d bytes that are not a whole record (a write cut short: never acknowledged); kept in %s",
                seg.path.name,
                len(data) - valid,
                corrupt.name,
            )
        seg.rows = len(rows)
        return rows

    def claim_orphans(self) -> list[Segment]:
        """Claim every segment nobody holds (its process is gone), oldest first."""
        with self._lock:
            held = {s.path for s in self._sealed}
        if self._active is not None:
            held.add(self._active.path)
        claimed = []
        for path in sorted(self.dir.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"), key=_segment_order):
            if path in held:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # its process lives and holds it
            if not _same_file(path, fd):  # replayed and deleted since we opened it
                os.close(fd)
                continue
            seg = Segment(path, fd, size=os.fstat(fd).st_size, rows=0, own=False)
            claimed.append(seg)
        if claimed:
            with self._lock:
                self._sealed.extend(claimed)
                self._used += sum(s.size for s in claimed)
            log.warning(
                "claimed %d prediction log segment%s left by a process that is gone: %s",
                len(claimed),
                "" if len(claimed) == 1 else "s",
                ", ".join(s.path.name for s in claimed[:5]),
            )
        return claimed

    # ------------------------------------------------------------ state
    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    @property
    def pending_rows(self) -> int:
        """Rows acknowledged (synced) and not yet in PostgreSQL, as far as known."""
        with self._lock:
            n = sum(s.rows for s in self._sealed)
        active = self._active
        return n + (active.rows if active is not None else 0)

    @property
    def segments(self) -> int:
        with self._lock:
            return len(self._sealed) + (1 if self._active is not None else 0)

    def has_room(self, nbytes: int = 0) -> bool:
        with self._lock:
            return self._used + nbytes <= self.max_bytes


def _resolve(futs: list[asyncio.Future], error: BaseException | None) -> None:
    for f in futs:
        if f.done():
            continue
        if error is None:
            f.set_result(None)
        else:
            f.set_exception(error)


def _segment_order(path: Path) -> tuple:
    parts = path.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)].split("-")
    try:
        return (int(parts[1]), int(parts[2]), path.name)
    except (IndexError, ValueError):
        return (0, 0, path.name)


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
