"""The micro-batcher: concurrent requests share model calls; each gets its own answer; a failing
batch fails only its own requests."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from api_helpers import running_app, settings_with


def test_predict_under_64_concurrent_clients_answers_each_its_own_text(api_settings, champion, tweets):
    """The real app and champion: 64 threads at once (admission limit above that: nothing shed);
    every answer is the model's answer for that request's own text, and the requests shared model calls."""
    with running_app(settings_with(api_settings, api_min_inflight=128, api_max_inflight=128)) as client:
        _each_its_own(client, tweets)


def _each_its_own(client, tweets):
    model = client.app.state.models.current.model
    texts = tweets[0][:640]
    before = client.app.state.batcher.batches
    barrier = threading.Barrier(64)

    def run(k):
        barrier.wait()
        out = []
        for t in texts[k::64]:
            r = client.post("/predict", json={"text": t})
            assert r.status_code == 200, r.text
            out.append((t, r.json()))
        return out

    with ThreadPoolExecutor(64) as ex:
        answers = [a for part in ex.map(run, range(64)) for a in part]
    assert len(answers) == 640
    expected = model.predict_proba([t for t, _ in answers])
    for (t, body), (p_neg, p_pos) in zip(answers, expected.tolist(), strict=True):
        assert body["probabilities"]["positive"] == pytest.approx(p_pos, abs=1e-9), t
        assert body["probabilities"]["negative"] == pytest.approx(p_neg, abs=1e-9), t
    assert client.app.state.batcher.batches - before < 640
