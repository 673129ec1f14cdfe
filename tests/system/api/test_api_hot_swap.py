"""A new champion is served without a restart, and no request fails while it is swapped in."""

from __future__ import annotations

import logging
import threading

from api_helpers import POSITIVE_TEXT, fresh_model_name, running_app, settings_with, wait_for

from ml.platform import registry


def test_hot_swap_under_load_then_rollback(platform_env, publish, conn, caplog):
    caplog.set_level(logging.INFO, logger="api")
    settings = settings_with(platform_env, model_name=fresh_model_name())
    v1 = publish(settings)
    with running_app(settings) as client:
        assert client.get("/model").json()["version"] == v1.version

        results: list[tuple[int, dict]] = []
        stop = threading.Event()

        per_thread: list[list[str]] = [[], []]  # the versions each client saw, in its own order

        def hammer(seen: list[str]) -> None:
            while not stop.is_set():
                r = client.post("/predict/batch", json={"texts": [POSITIVE_TEXT, "so bored and sad today"]})
                results.append((r.status_code, r.json()))
                seen.append(r.json().get("model_version"))

        threads = [threading.Thread(target=hammer, args=(seen,)) for seen in per_thread]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(results) >= 5)
            v2 = publish(settings, C=0.5)  # a different model; the poller loads it, then swaps
            assert v2.version != v1.version
            wait_for(lambda: any(b.get("model_version") == v2.version for _, b in results[-4:]))
            n_at_swap = len(results)
            wait_for(lambda: len(results) >= n_at_swap + 5)
        finally:
            stop.set()
            for t in threads:
                t.join()

        assert all(code == 200 for code, _ in results), [b for code, b in results if code != 200][:3]
        versions = [b["model_version"] for _, b in results]
        assert set(versions) == {v1.version, v2.version}
        assert versions.count(v1.version) >= 5 and versions.count(v2.version) >= 5
        for seen in per_thread:  # the swap is one-way: once a client got v2, it never gets v1 again
            first_v2 = seen.index(v2.version)
            assert v1.version not in seen[first_v2:], seen
        for _, b in results:  # one consistent (model, version) per request
            assert b["model_version"] == b["predictions"][0]["model_version"] == b["predictions"][1]["model_version"]
        assert any(f"-> version {v2.version}" in m for m in caplog.messages if "model swap" in m)

        r = client.get("/model").json()
        assert (r["version"], r["run_id"]) == (v2.version, v2.run_id)
        assert client.get("/health").json()["model"]["version"] == v2.version

        # every response's version is what PostgreSQL recorded for its rows
        client.app.state.writer.flush()
        ids = [p["id"] for _, b in results for p in b["predictions"]]
        stored = dict(
            conn.execute(
                "SELECT id::text, model_version FROM predictions WHERE id = ANY(%s::uuid[])", (ids,)
            ).fetchall()
        )
        assert stored == {p["id"]: p["model_version"] for _, b in results for p in b["predictions"]}

        # the platform's rollback (alias + `rollback` event with the artifact digest) is followed the same way

        assert registry.rollback(settings)["to_version"] == v1.version
        wait_for(
            lambda: client.post("/predict", json={"text": POSITIVE_TEXT}).json()["model_version"] == v1.version,
            timeout=20,
        )
