"""The micro-batcher (api/batcher.py) alone: concurrent requests share model calls; each gets its own answer; a
failing batch fails only its own requests."""

from __future__ import annotations

import asyncio

import pytest

from api.runtime.batcher import MicroBatcher


@pytest.mark.parametrize("inline", [True, False])
def test_every_answer_goes_to_its_own_request_under_64_concurrent_clients(inline):
    batches: list[list[int]] = []

    def fn(key, items):
        batches.append(list(items))
        return [(key, i * i) for i in items]

    async def main():
        b = MicroBatcher(fn, max_size=16, max_wait=0.001, inline=lambda key: inline)

        async def client(n):  # 64 clients, each sends 20 requests one after the other
            return [await b.submit(n % 3, n * 1000 + j) for j in range(20)]

        return await asyncio.gather(*(client(n) for n in range(64)))

    results = asyncio.run(main())
    for n, answers in enumerate(results):
        assert answers == [(n % 3, (n * 1000 + j) ** 2) for j in range(20)]
    assert sum(len(x) for x in batches) == 64 * 20
    assert max(len(x) for x in batches) <= 16  # the size cap
    assert len(batches) < 64 * 20  # requests shared model calls


def test_a_failing_batch_fails_only_its_own_requests():
    batches: list[list[int]] = []

    def fn(key, items):
        batches.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError("bad input in this batch")
        return [i + 1 for i in items]

    async def main():
        b = MicroBatcher(fn, max_size=8, max_wait=0.001, inline=lambda key: True)

        async def one(i):
            try:
                return await b.submit("m", i)
            except ValueError as exc:
                return exc

        return await asyncio.gather(*(one(i) for i in [*range(1, 60), -1, *range(60, 120), -2, *range(120, 128)]))

    results = asyncio.run(main())
    failed_batches = [x for x in batches if any(i < 0 for i in x)]
    doomed = {i for x in failed_batches for i in x}
    inputs = [*range(1, 60), -1, *range(60, 120), -2, *range(120, 128)]
    for i, r in zip(inputs, results, strict=True):
        if i in doomed:
            assert isinstance(r, ValueError)
        else:
            assert r == i + 1
    assert len(doomed) < len(inputs) // 2  # the other batches were served


def test_wrong_result_count_is_an_error_for_that_batch_only():
    async def main():
        b = MicroBatcher(lambda key, items: items[:-1] if key == "broken" else items, inline=lambda key: True)
        ok = asyncio.create_task(b.submit("fine", 1))
        broken = asyncio.create_task(b.submit("broken", 2))
        return await asyncio.gather(ok, broken, return_exceptions=True)

    ok, broken = asyncio.run(main())
    assert ok == 1 and isinstance(broken, RuntimeError)
