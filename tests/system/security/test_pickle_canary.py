"""The malicious-pickle canary (issue 21, Tests). The champion's artifacts in the MLflow artifact store are
replaced, after its promotion recorded their sha256, by pickles whose ``__reduce__`` writes a marker file
(the way a tampered champion is made in tests/system/api/test_api_control_plane.py, with a payload). The digest no
longer matches the promotion event, so nothing may unpickle them: the marker never appears through

- the API (api/runtime/model_manager.py: ``registry.load_verified``; /model and /predict answer 503),
- batch scoring (``plan`` fetches a verified copy; a shard of a batch planned without a digest loads the
  registry's version through ``registry.load_version``, which verifies too),
- evaluation (``train.evaluate`` scores the champion beside a new candidate: ``registry.load_version``),
- the CLI (``ml evaluate``, ``ml score``).

A last test proves the canary is armed: loading the same artifacts without the check writes the marker."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from api_helpers import running_app
from loop_helpers import artifact_dir
from typer.testing import CliRunner

from ml.cli import app
from ml.platform import registry
from ml.platform.config import get_settings
from ml.stages import train
from ml.stages.scoring import shard
from ml.stages.scoring.files import inbox_dir
from ml.stages.scoring.plan import plan

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".cloudpickle")


class _Canary:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('unpickled')",))


@pytest.fixture(scope="module")
def marker(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("canary") / "MARKER"


@pytest.fixture(scope="module")
def tampered(champion, marker):
    """The module's champion, its pickles replaced by the canary after the promotion recorded the digest."""
    s = get_settings()
    recorded = registry.version_artifact_digest(champion.version, s)
    root = artifact_dir(champion.run_id)
    pickles = [p for p in root.rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES]
    assert pickles, sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    payload = pickle.dumps(_Canary(marker))
    for p in pickles:
        p.write_bytes(payload)
    assert registry.version_artifact_digest(champion.version, s) != recorded
    assert not marker.exists()
    return champion


def test_the_api_never_unpickles_it(tampered, marker):
    with running_app(get_settings()) as client:
        assert client.get("/model").status_code == 503
        assert client.post("/predict", json={"text": "hello"}).status_code == 503
        assert "differ from the recorded" in (client.get("/health").json()["model"]["last_error"] or "")
    assert not marker.exists()


def test_batch_scoring_never_unpickles_it(tampered, marker):
    s = get_settings()
    inbox = inbox_dir(s)
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / "canary.txt"
    path.write_text("a fine tweet\nanother one\n")
    try:
        with pytest.raises(registry.ArtifactMismatch, match="differ from the recorded"):
            plan(path, settings=s)
    finally:
        path.unlink()  # the inbox is shared with other tests
    assert not marker.exists()
    # a batch planned before batches recorded digests: the shard loads the registry's version, verified
    with pytest.raises(registry.ArtifactMismatch, match="differ from the recorded"):
        shard._model("b-canary", tampered.version, None, s)
    assert not marker.exists()


def test_evaluation_never_unpickles_it(tampered, marker):
    run_id = train.train(tampered.snapshot.hash, "tfidf_lr", sample_size=300)
    with pytest.raises(registry.ArtifactMismatch, match="differ from the recorded"):
        train.evaluate(run_id)  # scores the champion beside the candidate
    assert not marker.exists()


def test_the_cli_never_unpickles_it(tampered, marker):
    runner = CliRunner()
    run_id = train.train(tampered.snapshot.hash, "tfidf_lr", sample_size=300)
    res = runner.invoke(app, ["evaluate", run_id])
    assert res.exit_code != 0
    assert not marker.exists()
    inbox = inbox_dir(get_settings())
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "canary-cli.txt").write_text("a fine tweet\n")
    try:
        res = runner.invoke(app, ["score", str(inbox / "canary-cli.txt")])
    finally:
        (inbox / "canary-cli.txt").unlink()
    assert res.exit_code != 0
    assert not marker.exists()


def test_the_canary_is_armed(tampered, marker):
    """Without the digest check the same artifacts run the payload: the tests above prove the check."""
    import mlflow

    try:
        with pytest.raises(Exception):  # noqa: B017 - the payload returns None, not a model: any error after it ran
            mlflow.pyfunc.load_model(str(artifact_dir(tampered.run_id)))
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)
