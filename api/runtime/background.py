"""One daemon thread's lifecycle, for the API's background loops (the champion poller, the shadow
scorer, the prediction writer).

:class:`BackgroundLoop` owns the thread and its stop event; what the thread does is the owner's
``body(stopping)``, which returns once ``stopping`` is set (each loop decides how: the poller at its
next tick, the shadow scorer once its queue is empty, the writer after its current write). The
errors a body logs and survives stay the body's own business: this class adds no handling of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class BackgroundLoop:
    """``body(stopping)`` in one daemon thread named ``name``, from :meth:`start` until :meth:`stop`.

    ``wake`` (optional) is called by :meth:`stop` right after ``stopping`` is set, for a body that waits
    on something else than ``stopping`` (the writer's wake-up event)."""

    def __init__(
        self, name: str, body: Callable[[threading.Event], None], wake: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self._body = body
        self._wake = wake
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def every(cls, name: str, seconds: float, run_once: Callable[[], None]) -> BackgroundLoop:
        """``run_once()`` every ``seconds`` (the first one ``seconds`` after :meth:`start`) until stopped."""

        def body(stopping: threading.Event) -> None:
            while not stopping.wait(seconds):
                run_once()

        return cls(name, body)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self.stopping.clear()
        self._thread = threading.Thread(target=self._body, args=(self.stopping,), name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Set ``stopping`` (then ``wake``), and join the thread: up to ``timeout`` seconds, or until it
        ends when ``timeout`` is None. A thread still running after ``timeout`` is left to finish
        (daemon: it does not hold the process)."""
        self.stopping.set()
        if self._wake is not None:
            self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
