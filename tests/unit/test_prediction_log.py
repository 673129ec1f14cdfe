"""The prediction log (api/predlog.py) alone, in a temporary folder: group commit and its cap."""

from __future__ import annotations

import asyncio

import pytest

from api.runtime.predlog import LogFull, PredictionLog, encode


def test_group_commit_one_fsync_covers_concurrent_appends(tmp_path):
    log = PredictionLog(tmp_path, max_bytes=1 << 20)
    log.open()

    async def main():
        await asyncio.gather(*(log.append_async(*encode([[str(i), "x"]])) for i in range(64)))

    asyncio.run(main())
    assert log.stats.appends == 64
    assert log.stats.commits < 64  # appends that arrived together shared a sync
    log.close()
    seg = log.sealed()[0]
    assert sorted(int(r[0]) for r in log.read(seg)) == list(range(64))
    log.release_all()


def test_the_log_has_a_cap_and_says_so(tmp_path):
    log = PredictionLog(tmp_path, max_bytes=4096)
    log.open()
    data, n = encode([["x" * 1000]])
    for _ in range(4):
        log.append(data, n)
    with pytest.raises(LogFull, match="prediction log full.*prediction_log_max_bytes"):
        log.append(data, n)
    assert log.stats.appends == 4  # the refused one wrote nothing
    seg = log.seal()
    log.release(seg)  # committed elsewhere: room again
    log.append(data, n)
    log.close()
    log.release_all()
