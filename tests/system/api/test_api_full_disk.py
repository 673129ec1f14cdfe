"""A full disk under a live API (issue 26): the uvicorn process gets a real file-size limit
(``RLIMIT_FSIZE``, set on the running process with ``prlimit``), so its prediction log's next write
fails with ``EFBIG`` (File too large) as a full disk's would with ``ENOSPC``: the kernel, not the test,
refuses the bytes. While it lasts /predict answers 503 with the reason and gives out no id; once the
limit is lifted (space returns) it answers 200 again, and after the shutdown drain the database holds
exactly the predictions that were acknowledged: none lost, none that was refused."""

from __future__ import annotations

import resource
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from live import live_server
from resilience_helpers import serve_from

from api.runtime.predlog import SEGMENT_PREFIX, decode

pytestmark = pytest.mark.slow


def _segments(spool: Path) -> list[Path]:
    return sorted(spool.glob(f"{SEGMENT_PREFIX}*.log"))


def test_full_disk_refuses_with_503_acknowledges_nothing_unwritten_and_loses_nothing(
    api_settings, champion, outage_db, conn, tweets, tmp_path
):
    texts = tweets[0]
    serve_from(outage_db, conn, api_settings.model_name)
    spool = tmp_path / "var" / "spool"
    env = {
        "DATABASE_URL": outage_db.url,  # a database of the test's own: its predictions are exactly this test's
        "SENTIMENT_MODEL_NAME": api_settings.model_name,
        "SENTIMENT_VAR_DIR": str(tmp_path / "var"),
        # the writer never seals on its own during the test: the active segment only grows (until the drain)
        "SENTIMENT_PREDICTION_FLUSH_SECONDS": "3600",
        "SENTIMENT_PREDICTION_FLUSH_ROWS": "1000000",
    }
    acknowledged: list[str] = []
    refused: list[httpx.Response] = []
    lock = threading.Lock()
    with live_server(tmp_path, env=env) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        assert srv.worker_pids() == []  # one process: uvicorn serves in the process the limit is set on
        soft, hard = resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE)
        assert soft == resource.RLIM_INFINITY

        def predict(i: int) -> None:
            r = client.post("/predict", json={"text": texts[i % len(texts)]})
            with lock:
                if r.status_code == 200:
                    acknowledged.append(r.json()["id"])
                else:
                    refused.append(r)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(predict, range(40)))
        assert len(acknowledged) == 40 and not refused, [r.text for r in refused[:3]]
        (active,) = _segments(spool)
        # the disk "fills": no file of this process may grow past ~24 KiB more than the largest it has now
        # (the log of the server itself included, so that its error lines are still written)
        limit = max(active.stat().st_size, srv.log.stat().st_size) + 24 * 1024
        resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))
        try:
            i = 40
            while len(refused) < 40:  # until 40 answers were refused (each ~400 bytes: ~60 rows fit first)
                assert i < 2000, "the log never filled up"
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(predict, range(i, i + 8)))
                i += 8
            during = list(refused)
            full_at = len(acknowledged)
            # still refused while the disk is full: nothing slips through
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(predict, range(i, i + 16)))
            assert len(acknowledged) == full_at
            assert len(refused) == len(during) + 16
            for r in refused:
                assert r.status_code == 503, r.text
                assert "File too large" in r.json()["message"] and "nothing was recorded" in r.json()["message"]
                assert int(r.headers["Retry-After"]) >= 1
            # the file holds only whole records, each of them acknowledged
            rows, valid = decode(active.read_bytes())
            assert valid == active.stat().st_size <= limit
            assert sorted(r[0] for r in rows) == sorted(acknowledged)
        finally:
            resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))  # space returns
        # the same worker answers 200 again, without a restart (the next answer: nothing else changed)
        refused.clear()
        predict(0)
        assert refused == [], refused[0].text
        before = len(acknowledged)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(predict, range(100)))
        assert len(acknowledged) == before + 100
        health = client.get("/health").json()
        assert health["status"] == "ok", health
    # the shutdown drained the log: the database holds exactly what was acknowledged, nothing refused
    with outage_db.connect() as c:
        stored = [r[0] for r in c.execute("SELECT id::text FROM predictions")]
    assert len(stored) == len(set(stored))
    assert sorted(stored) == sorted(acknowledged)
    assert [p.name for p in spool.iterdir()] == []  # no segment left, nothing torn kept as corrupt-*
