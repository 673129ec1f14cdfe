"""Progress of long work (``ml score``, ``ml compare``, ``ml monitor``, ``make up``'s training).

Library functions take an optional :data:`ProgressFn` (``progress(done, total, message)``) and never
print themselves, so the DAG tasks log as before. The CLI passes :func:`reporter`: a bar with
percentage, elapsed time and ETA (rich) when stderr is a terminal, else one plain line per step
(no carriage returns: CI logs stay readable). ``SENTIMENT_PROGRESS=plain|bar|off`` overrides the
choice."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

#: ``progress(done, total, message)``: ``done`` of ``total`` steps finished; ``message`` says what runs now
ProgressFn = Callable[[int, int, str], None]


def report(progress: ProgressFn | None, done: int, total: int, message: str = "") -> None:
    """Call ``progress`` when one is given (the library side's one-liner)."""
    if progress is not None:
        progress(done, total, message)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def mode(stream: TextIO | None = None) -> str:
    """``bar`` on a terminal (when rich is importable), ``plain`` otherwise; ``SENTIMENT_PROGRESS`` wins."""
    forced = os.environ.get("SENTIMENT_PROGRESS", "").strip().lower()
    if forced in ("plain", "off"):
        return forced
    stream = stream or sys.stderr
    tty = forced == "bar" or (hasattr(stream, "isatty") and stream.isatty())
    if not tty:
        return "plain"
    try:
        import rich.progress  # noqa: F401, PLC0415 - optional: loaded only when a terminal is attached
    except ImportError:  # typer pulls rich in; without it a terminal gets the plain lines
        return "plain"
    return "bar"


class PlainProgress:
    """One line per change of step: ``<what>: 3/8 (38%) <message> [elapsed 0:12, ETA 0:20]``."""

    def __init__(self, description: str, stream: TextIO | None = None) -> None:
        self.description = description
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._last: tuple[int, int, str] | None = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if (done, total, message) == self._last:
            return
        self._last = (done, total, message)
        elapsed = time.monotonic() - self.started
        pct = f" ({100 * done // total}%)" if total else ""
        eta = f", ETA {_clock(elapsed / done * (total - done))}" if total and 0 < done < total else ""
        msg = f" {message}" if message else ""
        count = f" {done}/{total}{pct}" if total else ""
        self.stream.write(f"{self.description}:{count}{msg} [elapsed {_clock(elapsed)}{eta}]\n")
        self.stream.flush()


@contextmanager
def _bar(description: str, stream: TextIO) -> Iterator[ProgressFn]:
    from rich.console import Console  # noqa: PLC0415 - only when a bar is drawn (see mode())
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=stream, stderr=stream is sys.stderr)
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[message]}"),
        console=console,
        transient=False,
    )
    task = bar.add_task(description, total=None, message="")

    def update(done: int, total: int, message: str = "") -> None:
        bar.update(task, completed=done, total=total or None, message=message)

    # log records go through rich's console too, above the bar (not through it)
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is stream
    ]
    with bar:
        if stream is sys.__stderr__ or stream is sys.stderr:
            for h in handlers:  # rich replaced sys.stderr with a proxy that prints above the live bar
                h.setStream(sys.stderr)
        try:
            yield update
        finally:
            for h in handlers:
                h.setStream(stream)


def _silent(done: int, total: int, message: str = "") -> None:
    """``SENTIMENT_PROGRESS=off``."""


@contextmanager
def reporter(description: str, stream: TextIO | None = None) -> Iterator[ProgressFn]:
    """A :data:`ProgressFn` for the duration of the block: a rich bar on a terminal, plain lines
    otherwise, nothing with ``SENTIMENT_PROGRESS=off``."""
    stream = stream or sys.stderr
    m = mode(stream)
    if m == "off":
        yield _silent
    elif m == "plain":
        yield PlainProgress(description, stream)
    else:
        with _bar(description, stream) as update:
            yield update
