"""The admission limiter's arithmetic (api/admission.py) with an injected clock: the limit is what the worker
completes within the latency target at its measured drain rate (Little's law), within its floor and ceiling; a
request whose queue ahead needs more than twice the deadline is refused at once; requests start in FIFO order.
(Moved from tests/system/api/test_api_admission.py, which attacks a live server.)"""

from __future__ import annotations

import asyncio
import time

import pytest

from api.admission import Limiter


def test_the_limit_follows_the_drain_rate_and_hopeless_requests_are_refused_at_once():
    now = [0.0]
    lim = Limiter(2, 50, target_s=0.010, deadline_s=0.005, clock=lambda: now[0])

    async def run() -> None:
        assert await lim.acquire() is None and await lim.acquire() is None  # the floor: 2 at once
        order: list[int] = []

        async def queued(i: int) -> None:
            if await lim.acquire() is None:
                order.append(i)

        tasks = [asyncio.create_task(queued(i)) for i in range(2)]
        await asyncio.sleep(0)
        assert len(lim.waiters) == 2 and lim.inflight == 2
        for _ in range(2):  # completions 1 ms apart while others wait: 1,000/s, so 10 ms holds 10 requests
            now[0] += 0.001
            lim.release()
        await asyncio.gather(*tasks)
        assert order == [0, 1], order  # first come, first started
        assert lim.interval == pytest.approx(0.001)
        assert lim.limit == pytest.approx(10.0)
        # a slow drain (20 ms between completions) brings it back to the floor, never below
        for _ in range(200):
            now[0] += 0.020
            lim.release()
            assert await lim.acquire() is None
        assert lim.limit == 2.0
        # the queue ahead needs 2 x 20 ms > 2 x 5 ms: refused at once, without waiting
        while lim.inflight < int(lim.limit):
            assert await lim.acquire() is None
        first = asyncio.create_task(lim.acquire())
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        refused = await lim.acquire()
        assert refused is not None and "api_queue_deadline_ms" in refused and time.perf_counter() - t0 < 0.004
        assert lim.shed_early == 1
        # the first in line waits for the deadline, then is refused
        assert (await first) is not None and lim.shed_late == 1
        assert not lim.waiters

    asyncio.run(run())
