"""The API serves only what the platform promoted: an alias moved outside the platform (no promotion
event in model_events) is not loaded and raises an alert; a version whose artifacts differ from the
sha256 recorded at registration/promotion is not loaded either. Real MLflow registry, real PostgreSQL."""

from __future__ import annotations

from api_helpers import fresh_model_name, running_app, settings_with, wait_for
from loop_helpers import after_polls, artifact_dir

from ml.stages import train


def _alerts(conn, model, rule="unverified_champion"):
    return conn.execute(
        "SELECT message, details FROM alerts WHERE rule = %s AND model_name = %s ORDER BY id", (rule, model)
    ).fetchall()


def test_alias_moved_outside_the_platform_is_not_loaded_and_alerts(platform_env, publish, snapshot, conn):
    import mlflow

    s = settings_with(
        platform_env,
        model_name=fresh_model_name(),
        champion_verify_grace_seconds=0.5,
        promotion_margin=-1.0,
        behaviour_checks=False,
        promotion_gate="margin",
    )
    v1 = publish(s).version
    digest = conn.execute(
        "SELECT artifact_sha256 FROM model_events WHERE model_name = %s AND event = 'promoted'", (s.model_name,)
    ).fetchone()[0]
    assert digest and len(digest) == 64
    run_id = train.train(snapshot.hash, "tfidf_lr", params={"C": 0.5}, settings=s)
    train.evaluate(run_id, s)
    v2 = train.register(run_id, s)
    with running_app(s) as client:
        assert client.get("/model").json()["version"] == v1
        # someone with registry access moves the alias directly (no ml.stages.promotion.promote, no event)
        mlflow.MlflowClient().set_registered_model_alias(s.model_name, s.champion_alias, str(v2))
        rows = wait_for(lambda: _alerts(conn, s.model_name))
        assert len(rows) == 1 and f"v{v2} was not loaded" in rows[0][0] and "outside the platform" in rows[0][0]
        after_polls(client.app.state.models)  # several more polls: still v1, and one alert per version
        assert client.get("/model").json()["version"] == v1
        assert len(_alerts(conn, s.model_name)) == 1
        assert "not serving" in client.get("/health").json()["model"]["last_error"]
        # the alias put back where the platform left it: served as before, no new alert
        mlflow.MlflowClient().set_registered_model_alias(s.model_name, s.champion_alias, str(v1))
        after_polls(client.app.state.models)
        assert client.get("/model").json()["version"] == v1 and len(_alerts(conn, s.model_name)) == 1


def test_artifacts_that_differ_from_the_recorded_digest_are_not_loaded(platform_env, publish, conn):
    s = settings_with(platform_env, model_name=fresh_model_name(), champion_verify_grace_seconds=0.5)
    published = publish(s)
    # someone with write access to the artifact store changes the promoted model's files after the
    # promotion recorded their digest: bytes appended to each file (a pickle with a tail still unpickles,
    # so only the digest can tell)
    files = [p for p in (artifact_dir(published.run_id) / "artifacts").rglob("*") if p.is_file()]
    assert files
    for p in files:
        with p.open("ab") as f:
            f.write(b"\n# changed after promotion\n")
    with running_app(s) as client:
        r = client.get("/model")
        assert r.status_code == 503  # nothing unverified is ever loaded
        rows = wait_for(lambda: _alerts(conn, s.model_name))
        assert "differ from the recorded" in rows[0][0]
        assert client.post("/predict", json={"text": "hello"}).status_code == 503
