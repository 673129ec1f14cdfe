"""One micro-batcher for every model family.

Concurrent callers :meth:`MicroBatcher.submit` one item each and get their own result back; the
batcher runs ``fn(key, items)`` once for the items gathered meanwhile (one vectorizer / one
forward pass per batch). Items with different keys (e.g. two model versions during a swap) never
share a batch.

Gathering: when the batcher is idle, a request is run at once (light traffic keeps its low
latency). Items that arrive while a batch runs form the next batch; when the last batch held more
than one item (concurrent traffic), the batcher waits up to ``max_wait`` for more before it runs,
and never takes more than ``max_size`` items at a time.

``fn`` runs on the event loop when ``inline(key)`` is true (a fast model: ~1 ms, cheaper than a
thread hand-off), else in one worker thread (a transformer, ONNX: the loop stays free). If ``fn``
raises, every request of that batch gets the exception, and only those; if it returns the wrong
number of results, the same (a ``RuntimeError``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from anyio import to_thread

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        fn: Callable[[Any, list[T]], Sequence[R]],
        max_size: int = 64,
        max_wait: float = 0.001,
        inline: Callable[[Any], bool] = lambda key: False,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.fn = fn
        self.max_size = int(max_size)
        self.max_wait = max(0.0, float(max_wait))
        self.inline = inline
        self._queue: deque[tuple[Hashable, T, asyncio.Future]] = deque()
        self._task: asyncio.Task | None = None
        self._last_size = 0
        self.batches = 0
        self.items = 0

    async def submit(self, key: Any, item: T) -> R:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((key, item, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            if self._last_size > 1 and self.max_wait > 0 and len(self._queue) < self.max_size:
                await asyncio.sleep(self.max_wait)  # concurrent traffic: let the batch fill a little
            key = self._queue[0][0]
            batch: list[tuple[Hashable, T, asyncio.Future]] = []
            while self._queue and len(batch) < self.max_size and self._queue[0][0] is key:
                batch.append(self._queue.popleft())
            live = [b for b in batch if not b[2].done()]  # a caller that went away is skipped
            self._last_size = len(live)
            if not live:
                continue
            items = [b[1] for b in live]
            try:
                if self.inline(key):
                    results = self.fn(key, items)
                else:
                    results = await to_thread.run_sync(self.fn, key, items)
                if len(results) != len(items):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
            except Exception as exc:  # noqa: BLE001 - this batch's requests fail; the next batch runs
                for _, _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self.batches += 1
                self.items += len(items)
            for (_, _, fut), res in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
            await asyncio.sleep(0)  # let the requests just served (and new ones) run before the next batch
