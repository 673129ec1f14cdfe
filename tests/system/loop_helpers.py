"""Helpers for the closed-loop tests (imported by name: pytest puts tests/ on sys.path).

A :class:`Loop` is one registered model of a test's own: a deliberately weak TF-IDF champion (300 of
the 2,000 real tweets, behavioural checks off when it is promoted: a 300-tweet model cannot pass
them) and a pool of real tweets it was not trained on, from which :meth:`Loop.add_reports` stores
predictions the champion gets wrong and reports them with their true label, as the API does.
Nothing here is shared between tests: every test builds its own ``Loop`` through a fixture.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from api.runtime import serving
from ml.platform import registry
from ml.platform.config import get_settings
from ml.stages.retraining.trigger import check_trigger, threshold_for
from ml.store import predictions as prediction_store

FRACTION = 0.005  # of ~1,990 snapshot rows -> 10 reports
IDENTITIES = (
    3  # feedback_min_identities: each reported tweet is reported by 3 identities of its own (ml/stages/review.py)
)


@dataclass
class Loop:
    name: str
    env: dict[str, str]
    snapshot: object
    v1: int
    run1: str
    pool: Iterator[tuple[int, str]]
    threshold: int
    notes: dict = field(default_factory=dict)

    def add_reports(self, n: int) -> list[int]:
        """``n`` real tweets the champion gets wrong, stored as its predictions and reported with their
        true label by ``IDENTITIES`` distinct identities each (so the loop trusts the label: ml/stages/review.py),
        identities of their own per tweet (no identity reaches the per-identity cap). Returns the
        feedback ids, ``IDENTITIES`` consecutive ones per tweet."""
        s = get_settings()
        champ = registry.champion(s)
        model = registry.load_version(champ.version, s)
        ids: list[int] = []
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            while len(ids) < n:
                batch = [next(self.pool) for _ in range(50)]
                proba = model.predict_proba([t for _, t in batch])
                rows = serving.prediction_rows([t for _, t in batch], proba, s.model_name, champ.version)
                prediction_store.copy_rows(conn, rows)
                for (y, _), row in zip(batch, rows, strict=True):
                    if row.label != y and len(ids) < n * IDENTITIES:
                        for k in range(IDENTITIES):  # the label is trusted: enough identities agree
                            ids.append(
                                conn.execute(
                                    "INSERT INTO feedback (prediction_id, correct_label, reporter) VALUES (%s, %s, %s)"
                                    " RETURNING id",
                                    (row.id, y, f"key:{self.name}-user-{row.id}-{k}#test"),
                                ).fetchone()[0]
                            )
        return ids

    def trigger(self) -> int:
        """Reports up to the threshold, then the trigger: the id of the recorded retraining."""
        self.add_reports(self.threshold)
        d = check_trigger()
        assert d["trigger"], d
        return d["retraining_id"]


def make_loop(champion, pool_rows: tuple[tuple[int, str], ...], seed: str) -> Loop:
    """``champion``: what ``own_champion`` yields. The pool is the real tweets not in the champion's
    snapshot, in an order of the test's own (``seed``), so two tests never report the same tweets."""
    in_snapshot = set(champion.snapshot.load()["text"])
    pool = [(y, t) for y, t in pool_rows if t not in in_snapshot]
    random.Random(seed).shuffle(pool)
    return Loop(
        name=champion.name,
        env=champion.env,
        snapshot=champion.snapshot,
        v1=champion.version,
        run1=champion.run_id,
        pool=iter(pool),
        threshold=threshold_for(champion.snapshot.n_rows, get_settings()),
    )


def after_polls(models, n: int = 3, timeout: float = 60.0) -> None:
    """Wait until the API's champion poller (``app.state.models``) has completed ``n`` more checks of
    the alias: "still serving X after several polls" is then counted, never assumed from a sleep.
    ``timeout`` only keeps a broken test from hanging."""
    deadline = time.monotonic() + timeout
    for _ in range(n):
        seen = models.last_check_at
        while models.last_check_at == seen:
            assert time.monotonic() < deadline, f"the champion poller completed fewer than {n} checks"
            time.sleep(0.02)


def artifact_dir(run_id: str) -> Path:
    """Where the run's logged model lies in the (local, file://) MLflow artifact store."""
    import mlflow

    client = mlflow.MlflowClient()
    model_id = client.get_run(run_id).data.tags["model_uri"].rsplit("/", 1)[-1]
    path = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    assert path.is_dir(), path
    return path
