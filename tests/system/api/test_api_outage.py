"""A real database outage through the app, the log's cap, and real crashes of real API processes.

The outage is real: the test's own database refuses connections (``ALTER DATABASE ...
ALLOW_CONNECTIONS false`` + ``pg_terminate_backend``); the crash is a real ``SIGKILL`` of a real
uvicorn worker under load."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
from api_helpers import running_app, settings_with, wait_for
from live import live_server

from api.runtime.predlog import decode


def logged(directory) -> list[str]:
    ids = []
    for path in directory.glob("wal-*.log"):
        rows, _ = decode(path.read_bytes())
        ids += [r[0] for r in rows]
    return ids


def stored(conn, ids) -> list[str]:
    return [r[0] for r in conn.execute("SELECT id::text FROM predictions WHERE id = ANY(%s::uuid[])", (list(ids),))]


def with_serving_events(outage_db, conn, model_name: str) -> None:
    """The test's own database gets the platform's promotion events of ``model_name`` (the API serves
    only a champion whose promotion event it finds in its database)."""
    with conn.cursor() as src, outage_db.connect() as dst, dst.cursor() as cur:
        with (
            src.copy("COPY (SELECT * FROM model_events WHERE model_name = %s) TO STDOUT", (model_name,)) as out,
            cur.copy("COPY model_events FROM STDIN") as into,
        ):
            for chunk in out:
                into.write(chunk)


def test_outage_predict_answers_ready_503_feedback_503_rows_kept_once(
    api_settings, champion, outage_db, tweets, tmp_path, conn
):
    with_serving_events(outage_db, conn, api_settings.model_name)
    s = settings_with(
        api_settings,
        database_url=outage_db.url,
        var_dir=tmp_path / "var",
        prediction_flush_seconds=60,
        prediction_flush_rows=100_000,
    )
    log_dir = tmp_path / "var" / "spool"
    texts = tweets[0]
    with running_app(s) as client:
        before_preds = [client.post("/predict", json={"text": t}).json() for t in texts[:5]]
        before = [p["id"] for p in before_preds]
        client.app.state.writer.flush()
        outage_db.down()

        single = [client.post("/predict", json={"text": t}) for t in texts[5:25]]
        batch = client.post("/predict/batch", json={"texts": texts[25:55]})
        assert all(r.status_code == 200 for r in single) and batch.status_code == 200  # still answered
        ids = [r.json()["id"] for r in single] + [p["id"] for p in batch.json()["predictions"]]

        assert client.get("/health/live").status_code == 200
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and "database unreachable" in ready.json()["message"]
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["database"]["reachable"] is False
        assert health.json()["model"]["loaded"] is True
        assert health.json()["writer"]["pending_rows"] == 50

        fb = client.post(
            "/feedback",
            json={
                "prediction_id": before[0],
                "correct_label": "negative",
                "feedback_token": before_preds[0]["feedback_token"],
            },
        )
        assert fb.status_code == 503, fb.text
        assert "database unavailable" in fb.json()["message"] and fb.headers["Retry-After"]
    # shutdown with the database down: every acknowledged row stays in the log, once
    assert sorted(logged(log_dir)) == sorted(ids)

    for i in range(5):  # restarts with the database still down: kept, not multiplied
        with running_app(s) as client:
            assert client.get("/health/ready").status_code == 503
            # a process started while the database is down may have no verified champion (503), or serve
            r = client.post("/predict", json={"text": texts[60 + i]})
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:  # then for that reason, never a failed write
                assert "no champion model yet" in r.json()["message"], r.text
            if r.status_code == 200:
                ids.append(r.json()["id"])
        assert sorted(logged(log_dir)) == sorted(ids)  # 50 (+ one per restart that served), each once
    assert len(ids) == len(set(ids)) >= 50

    outage_db.up()
    with running_app(s) as client:  # back: replayed at start, exactly once
        assert client.get("/health/ready").status_code == 200
        assert (
            client.post(
                "/feedback",
                json={
                    "prediction_id": ids[0],
                    "correct_label": 0,
                    "feedback_token": single[0].json()["feedback_token"],
                },
            ).status_code
            == 201
        )
    with outage_db.connect() as conn:
        assert sorted(stored(conn, ids)) == sorted(ids)
        assert sorted(stored(conn, before)) == sorted(before)
        n = conn.execute("SELECT count(*) FROM predictions WHERE id = ANY(%s::uuid[])", (ids,)).fetchone()[0]
        assert n == len(ids)
    assert logged(log_dir) == [] and not list(log_dir.glob("corrupt-*")) and not list(log_dir.glob("rejected-*"))


def test_log_cap_answers_503_with_retry_after_and_the_reason(api_settings, champion, outage_db, tweets, tmp_path, conn):
    with_serving_events(outage_db, conn, api_settings.model_name)
    s = settings_with(
        api_settings,
        database_url=outage_db.url,
        var_dir=tmp_path / "var",
        prediction_log_max_bytes=8192,
        prediction_flush_seconds=0.05,
    )
    with running_app(s) as client:
        outage_db.down()  # nothing drains: the log fills up
        answered, refused = [], None
        for t in tweets[0][:200]:
            r = client.post("/predict", json={"text": t})
            if r.status_code != 200:
                refused = r
                break
            answered.append(r.json()["id"])
        assert refused is not None and refused.status_code == 503, "the cap never answered"
        assert int(refused.headers.get("Retry-After", 0)) >= 1, refused.text
        assert "prediction log full" in refused.json()["message"]
        assert "prediction_log_max_bytes" in refused.json()["message"]
        assert client.post("/predict/batch", json={"texts": tweets[0][300:302]}).status_code == 503
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and "prediction log full" in ready.json()["message"]
        outage_db.up()  # the writer drains the log: room again
        wait_for(lambda: client.post("/predict", json={"text": tweets[0][400]}).status_code == 200)
    with outage_db.connect() as conn:
        assert sorted(stored(conn, answered)) == sorted(answered)


def _load(url: str, answered: list, stop: threading.Event, texts: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        i = 0
        while not stop.is_set():
            try:
                r = c.post("/predict", json={"text": texts[i % len(texts)]})
            except httpx.HTTPError:
                continue  # in flight when its worker died: never acknowledged
            if r.status_code == 200:
                answered.append(r.json())
            i += 1


def test_kill_9_of_a_worker_under_load_loses_no_acknowledged_prediction(api_settings, champion, tweets, tmp_path, conn):
    env = {
        "SENTIMENT_MODEL_NAME": api_settings.model_name,
        "SENTIMENT_VAR_DIR": str(tmp_path / "var"),
        "SENTIMENT_PREDICTION_FLUSH_SECONDS": "1",
    }
    with live_server(tmp_path, workers=2, env=env) as srv:
        answered: list[dict] = []
        stop = threading.Event()
        threads = [threading.Thread(target=_load, args=(srv.url, answered, stop, tweets[0][i::8])) for i in range(8)]
        for t in threads:
            t.start()
        wait_for(lambda: len(answered) >= 300)
        victim = srv.worker_pids()[0]

        os.kill(victim, signal.SIGKILL)  # mid-load: its log holds acknowledged rows not yet in PostgreSQL
        at_kill = len(answered)
        wait_for(lambda: len(answered) >= at_kill + 300)  # the other worker (and the restarted one) serve
        stop.set()
        for t in threads:
            t.join()
        ids = [p["id"] for p in answered]
        # reports right away, also on predictions only the dead worker's log holds
        sample = answered[:: max(1, len(answered) // 50)]
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            fb = [
                c.post(
                    "/feedback",
                    json={
                        "prediction_id": p["id"],
                        "correct_label": 1 - p["label_id"],
                        "feedback_token": p["feedback_token"],
                    },
                )
                for p in sample
            ]
        assert all(r.status_code == 201 for r in fb), [r.text for r in fb if r.status_code != 201][:3]
        fids = [r.json()["id"] for r in fb]
        # the dead worker's segments are claimed (restarted worker at start, or the other one's scan) and replayed
        wait_for(lambda: len(stored(conn, ids)) == len(ids))
        wait_for(
            lambda: (
                conn.execute("SELECT count(*) FROM feedback WHERE id = ANY(%s)", (fids,)).fetchone()[0] == len(fids)
            ),
            timeout=30,
        )
        assert victim not in srv.worker_pids()
    assert len(set(ids)) == len(ids)
    n = conn.execute("SELECT count(*) FROM predictions WHERE id = ANY(%s::uuid[])", (ids,)).fetchone()[0]
    assert n == len(ids)  # each once
    assert logged(tmp_path / "var" / "spool") == []  # graceful shutdown drained the logs
    time.sleep(0)
