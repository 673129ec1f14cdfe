"""Every control-plane change is atomic (issue 21, item 6). Promotion and rollback take the same lock
(``lock_promotions``) and move the alias and record the event together (``registry.move_champion``):
the event and its artifact digest are written in a transaction that holds the lock, the alias is moved,
and only then the transaction commits; a failure before the commit rolls the event back (and puts the
alias back if the registry applied the move), a failed commit puts the alias back (compensation).

A failure is injected into each step (the store function, the MLflow client method, the commit), with a
real MLflow registry and a real PostgreSQL. After each: the alias still names the previous champion,
the latest ``promoted``/``rollback`` event in model_events names that same version (with its digest),
no event of the failed change is left, the API serves the previous champion, and the next rollback /
promotion works. Before the fix the rollback moved the alias first and recorded the event after,
outside the lock, and the promotion did the same inside it: a failure between the two left an alias
that the API refuses and later rollbacks reject."""

from __future__ import annotations

import threading
import uuid
from types import SimpleNamespace

import psycopg
import pytest
from api_helpers import running_app, settings_with

from ml.data.snapshots import validate_and_snapshot
from ml.platform import registry
from ml.stages import promotion, train
from ml.store import training_runs as store

STEPS = ["insert_event", "set_event_digest", "set_alias", "set_alias_applied_then_failed", "commit"]


class Injected(RuntimeError):
    pass


def _boom(*args, **kwargs):
    raise Injected("injected failure")


def _inject(monkeypatch, step: str) -> None:
    import mlflow

    if step in ("insert_event", "set_event_digest"):
        monkeypatch.setattr(store, step, _boom)
    elif step == "set_alias":  # the registry refuses the move
        monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", _boom)
    elif step == "set_alias_applied_then_failed":  # the registry applies the move, its answer is lost
        original = mlflow.MlflowClient.set_registered_model_alias
        calls = []

        def applied_then_lost(self, *args, **kwargs):
            original(self, *args, **kwargs)
            calls.append(args)
            if len(calls) == 1:
                raise Injected("injected failure after the alias moved")

        monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", applied_then_lost)
    elif step == "commit":  # the database fails to commit after the alias moved
        monkeypatch.setattr(registry, "_commit", _boom)
    else:  # pragma: no cover
        raise AssertionError(step)


@pytest.fixture(scope="module")
def snapshot(platform_env, mlflow_tracking, tweets_csv):
    return validate_and_snapshot(tweets_csv, platform_env)


@pytest.fixture
def model(platform_env, snapshot):
    """A registered model of the test's own with two trained, evaluated, registered versions; v1 promoted."""
    s = settings_with(
        platform_env,
        model_name=f"test-atomic-{uuid.uuid4().hex[:8]}",
        promotion_gate="margin",
        promotion_margin=-1.0,
        behaviour_checks=False,
        champion_verify_grace_seconds=0.5,
    )

    def candidate(c: float) -> SimpleNamespace:
        run_id = train.train(snapshot.hash, "tfidf_lr", params={"C": c}, sample_size=400, settings=s)
        train.evaluate(run_id, s)
        return SimpleNamespace(run_id=run_id, version=train.register(run_id, s))

    first = candidate(1.0)
    assert promotion.promote(first.run_id, s)["promoted"]
    second = candidate(0.5)  # evaluated against v1, registered, not promoted yet
    return SimpleNamespace(settings=s, first=first, second=second)


def _state(conn, s) -> tuple[int | None, tuple[int, str | None] | None, int]:
    """(alias version, (version, digest) of the latest promoted/rollback event, number of such events)."""
    champ = registry.champion(s)
    n = conn.execute(
        "SELECT count(*) FROM model_events WHERE model_name = %s AND event IN ('promoted', 'rollback')",
        (s.model_name,),
    ).fetchone()[0]
    return (champ.version if champ else None), store.serving_event(conn, s.model_name), n


def _assert_consistent(conn, s, version: int, events: int) -> None:
    alias, event, n = _state(conn, s)
    assert alias == version, f"the alias names v{alias}, the previous champion was v{version}"
    assert event is not None and event[0] == version, f"the latest event names {event}, the alias v{alias}"
    assert event[1] == registry.version_artifact_digest(version, s), "the event's digest is not the version's"
    assert n == events, f"{n - events} event(s) of the failed change were left in model_events"


def _serves(s) -> int:
    with running_app(s) as client:
        r = client.get("/model")
        assert r.status_code == 200, r.text
        return r.json()["version"]


@pytest.mark.parametrize("step", STEPS)
def test_a_failed_promotion_leaves_the_previous_champion_and_a_consistent_history(monkeypatch, conn, model, step):
    s, v1, v2 = model.settings, model.first.version, model.second.version
    _assert_consistent(conn, s, v1, 1)
    with monkeypatch.context() as m:
        _inject(m, step)
        with pytest.raises(Injected):
            promotion.promote(model.second.run_id, s)
    _assert_consistent(conn, s, v1, 1)
    assert _serves(s) == v1
    # the next promotion works, and so does a rollback after it
    assert promotion.promote(model.second.run_id, s)["promoted"]
    _assert_consistent(conn, s, v2, 2)
    assert registry.rollback(s)["to_version"] == v1
    _assert_consistent(conn, s, v1, 3)


@pytest.mark.parametrize("step", STEPS)
def test_a_failed_rollback_leaves_the_previous_champion_and_a_consistent_history(monkeypatch, conn, model, step):
    s, v1, v2 = model.settings, model.first.version, model.second.version
    assert promotion.promote(model.second.run_id, s)["promoted"]
    _assert_consistent(conn, s, v2, 2)
    with monkeypatch.context() as m:
        _inject(m, step)
        with pytest.raises(Injected):
            registry.rollback(s, reason="test")
    _assert_consistent(conn, s, v2, 2)
    assert _serves(s) == v2
    # the next rollback works (the history still leads back to v1), and the promotion after it too
    assert registry.rollback(s)["to_version"] == v1
    _assert_consistent(conn, s, v1, 3)
    assert promotion.promote(model.second.run_id, s)["promoted"]
    _assert_consistent(conn, s, v2, 4)


def test_rollback_waits_for_a_promotion_holding_the_lock(conn, model):
    """The rollback takes the promotion lock: while another transaction holds it, the rollback waits."""
    s = model.settings
    assert promotion.promote(model.second.run_id, s)["promoted"]
    done = threading.Event()
    with psycopg.connect(s.database_url) as holder:
        store.lock_promotions(holder, s.model_name)
        t = threading.Thread(target=lambda: (registry.rollback(s), done.set()), daemon=True)
        t.start()
        assert not done.wait(3.0), "the rollback did not wait for the promotion lock"
        _assert_consistent(conn, s, model.second.version, 2)
    t.join(60)
    assert done.is_set()
    _assert_consistent(conn, s, model.first.version, 3)
