"""API fixtures: real champions made by the real training path (``ml.stages.train`` train ->
evaluate -> register -> promote, on 2,000 real tweets: a TF-IDF + logistic regression), in the
session's real MLflow store; apps over the session's real PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import psycopg
import pytest
import realdata
from api_helpers import bearer, make_key, running_app, settings_with
from fastapi.testclient import TestClient

from ml.data.snapshots import validate_and_snapshot
from ml.platform import db
from ml.stages import promotion, train


@dataclass(frozen=True)
class Published:
    version: int
    run_id: str
    snapshot_hash: str


@pytest.fixture(scope="session")
def tweets() -> tuple[list[str], list[int]]:
    """2,000 real tweets (tests/realdata.py), not those of the training snapshot: (texts, labels)."""
    rows = realdata.balanced(2000, seed=7)
    return [t for _, t in rows], [1 if p == 4 else 0 for p, _ in rows]


@pytest.fixture(scope="session")
def snapshot(platform_env, tweets_csv):
    """The 2,000 real tweets, validated and stored as a dataset snapshot (as the DAG's first task)."""
    return validate_and_snapshot(tweets_csv, platform_env)


@pytest.fixture(scope="session")
def publish(mlflow_tracking, snapshot) -> Callable[..., Published]:
    """``publish(settings, **params)``: ``ml.stages.train`` trains a TF-IDF model on the snapshot's
    training split, evaluates it on the held-out split, registers it under
    ``settings.model_name`` and promotes it. The promotion runs the real rule with
    ``promotion_gate = margin`` and ``promotion_margin = -1`` (a newer version always wins: these tests
    need each publish to become the champion; the paired significance test, slices and golden set of
    the strict gate are covered by tests/unit/test_gate_rules.py and tests/system/test_gate.py) and without the behavioural checks
    (tests/unit/test_promotion.py covers them)."""

    def _publish(settings, **params) -> Published:
        s = settings_with(settings, promotion_gate="margin", promotion_margin=-1.0, behaviour_checks=False)
        run_id = train.train(snapshot.hash, "tfidf_lr", params=params or None, settings=s)
        train.evaluate(run_id, s)
        version = train.register(run_id, s)
        decision = promotion.promote(run_id, s)
        assert decision["promoted"], decision
        return Published(version, run_id, snapshot.hash)

    return _publish


@pytest.fixture(scope="session")
def api_settings(platform_env):
    """The session's settings with a registered model name of the API tests' own, so that other
    tests promoting versions of the default name never change what these apps serve."""
    return settings_with(platform_env, model_name="tweet-sentiment-api-tests")


@pytest.fixture(scope="session")
def champion(api_settings, publish) -> Published:
    """A real champion of ``api_settings.model_name``."""
    return publish(api_settings)


@pytest.fixture(scope="session")
def review_headers(platform_env) -> dict[str, str]:
    """Authorization of a real `review` key (may report on any prediction, no token needed)."""
    return bearer(make_key(platform_env, "review"))


@pytest.fixture(scope="session")
def admin_headers(platform_env) -> dict[str, str]:
    return bearer(make_key(platform_env, "admin"))


@pytest.fixture(scope="module")
def client(api_settings, champion) -> Iterator[TestClient]:
    with running_app(api_settings) as c:
        yield c


@pytest.fixture
def outage_db(platform_env):
    """A migrated database of the test's own on the session's server, with ``down()`` (the server
    refuses new connections to it: ``ALLOW_CONNECTIONS false``, and every open one is terminated)
    and ``up()``. Dropped at the end."""
    base = db.libpq_url(platform_env.database_url)
    admin = db.with_database(base, "postgres")
    name = f"{base.rsplit('/', 1)[-1].split('?')[0]}_out_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = db.with_database(base, name)
    db.migrate(url)

    def down() -> None:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )

    def up() -> None:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    def connect():
        return psycopg.connect(url, autocommit=True)

    yield SimpleNamespace(url=url, name=name, down=down, up=up, connect=connect)
    up()
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
