"""What MLflow's users expect of a registered version, read back through MLflow's own client: a signature
and an input example, the run's datasets (snapshot, held-out split, external file) with digests and
sources, the experiment's type (the classic training view), descriptions and tags (family, snapshot,
what it was evaluated on, the gate's verdict and McNemar p-value), requirements pinned to the running
environment, and ``mlflow models serve`` answering ``/invocations`` in a fresh virtual environment
built from the version's logged requirements.

Real training path (``ml.stages.train``: train -> evaluate -> register -> promote) on real tweets, real
MLflow store in the session's PostgreSQL."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
import realdata
import requests

from ml.data.snapshots import content_hash
from ml.data.splits import split_for
from ml.evaluation import external
from ml.platform.config import get_settings
from ml.stages import promotion, train
from ml.stages.train import MODEL_DESCRIPTION


@pytest.fixture(scope="module")
def external_csv(tmp_path_factory) -> Path:
    """300 real tweets (not the snapshot's sample) as the external evaluation file."""
    path = tmp_path_factory.mktemp("external") / "external_eval.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(realdata.balanced(300, seed=11))
    return path


@pytest.fixture(scope="module")
def published(own_champion, tweets_csv, external_csv):
    """A first champion (v1, no champion to compare with) and a second candidate gated against it (v2),
    with an external evaluation file: (champion namespace, v2's run id)."""
    with own_champion(
        "mlflow-meta",
        tweets_csv,
        sample_size=300,
        SENTIMENT_BEHAVIOUR_CHECKS="false",
        SENTIMENT_EXTERNAL_EVAL_PATH=str(external_csv),
    ) as champ:
        run2 = train.train(champ.snapshot.hash, "tfidf_lr", params={"C": 0.5}, sample_size=400)
        train.evaluate(run2)
        v2 = train.register(run2)
        promotion.promote(run2)
        yield champ, run2, v2, get_settings()


@pytest.fixture(scope="module")
def client(published):
    import mlflow

    return mlflow.MlflowClient()


def test_every_version_has_a_signature_and_an_input_example(published, tmp_path):
    import mlflow
    from mlflow.models import Model

    champ, _, v2, _ = published
    for version in (champ.version, v2):
        uri = f"models:/{champ.name}/{version}"
        sig = mlflow.models.get_model_info(uri).signature
        assert sig is not None
        assert [(c.name, c.type.name) for c in sig.inputs.inputs] == [("text", "string")]
        assert [(c.name, c.type.name) for c in sig.outputs.inputs] == [
            ("label", "long"),
            ("p_negative", "double"),
            ("p_positive", "double"),
        ]
    local = mlflow.artifacts.download_artifacts(f"models:/{champ.name}/{champ.version}", dst_path=str(tmp_path))
    example = Model.load(local).load_input_example(local)
    assert list(example.columns) == ["text"] and 1 <= len(example) <= 5
    assert all(isinstance(t, str) and 0 < len(t) < 100 for t in example["text"])
    # the logged pyfunc answers what the signature says, on its own example
    out = mlflow.pyfunc.load_model(local).predict(example)
    assert list(out.columns) == ["label", "p_negative", "p_positive"]
    assert out["label"].isin([0, 1]).all() and ((out["p_negative"] + out["p_positive"] - 1).abs() < 1e-6).all()
    serving = json.loads((Path(local) / "serving_input_example.json").read_text())
    assert serving["dataframe_split"]["columns"] == ["text"]


def test_the_run_lists_its_snapshot_held_out_split_and_external_file_as_datasets(published, client, external_csv):
    champ, _, _, s = published
    inputs = client.get_run(champ.run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i for i in inputs}
    assert set(by_context) == {"training", "validation", "evaluation"}, by_context

    training = by_context["training"].dataset
    assert training.name == f"snapshot-{champ.snapshot.hash[:8]}"
    assert training.digest == champ.snapshot.hash[:16]
    assert json.loads(training.source)["uri"] == champ.snapshot.path.resolve().as_uri()
    assert json.loads(training.profile)["num_rows"] == champ.snapshot.n_rows
    assert {c["name"] for c in json.loads(training.schema)["mlflow_colspec"]} == {"text", "label"}
    assert {t.key: t.value for t in by_context["training"].tags}["trained_on_rows"] == "300"

    _, _, test_df = split_for(champ.snapshot.hash, s)
    validation = by_context["validation"].dataset
    assert validation.name == f"snapshot-{champ.snapshot.hash[:8]}-held-out"
    assert validation.digest == content_hash(test_df)[:16]
    assert json.loads(validation.profile)["num_rows"] == len(test_df)

    ext = external.load(s)
    assert ext is not None
    evaluation = by_context["evaluation"].dataset
    assert evaluation.digest == ext.content_hash[:16]
    assert json.loads(evaluation.source)["uri"] == external_csv.resolve().as_uri()
    assert json.loads(evaluation.profile)["num_rows"] == ext.n


def test_the_experiment_opens_in_the_training_view(published, client):
    _, _, _, s = published
    exp = client.get_experiment_by_name(s.experiment_name)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_registered_model_and_its_versions_are_described_and_tagged(published, client):
    champ, run2, v2, s = published
    assert client.get_registered_model(champ.name).description == MODEL_DESCRIPTION

    first = client.get_model_version(champ.name, str(champ.version))
    assert first.tags["family"] == "tfidf_lr"
    assert first.tags["dataset_hash"] == champ.snapshot.hash
    assert first.tags["run_id"] == champ.run_id
    assert first.tags["gate_verdict"] == "promoted"
    assert first.tags["mcnemar_p_value"].startswith("n/a")  # the first model has no champion to compare with
    assert "held-out split of snapshot" in first.tags["evaluated_on"]
    assert "external file external_eval.csv (300 tweets" in first.tags["evaluated_on"]
    assert "tfidf_lr trained on snapshot" in first.description and "Gate: promoted" in first.description

    second = client.get_model_version(champ.name, str(v2))
    assert second.tags["gate_verdict"] in ("promoted", "rejected")
    assert 0.0 <= float(second.tags["mcnemar_p_value"]) <= 1.0  # paired against v1 on the held-out split
    assert second.tags["gate_reason"]
    assert f"Gate: {second.tags['gate_verdict']}" in second.description


def _requirements(model_uri: str) -> list[str]:
    import mlflow

    path = mlflow.pyfunc.get_model_dependencies(model_uri)
    return [r.strip() for r in Path(path).read_text().splitlines() if r.strip() and not r.startswith("#")]


def test_requirements_are_pinned_to_the_running_environment(published):
    champ, _, _, _ = published
    reqs = _requirements(f"models:/{champ.name}/{champ.version}")
    names = set()
    for r in reqs:
        name, sep, pin = r.partition("==")
        assert sep, f"{r!r} is not pinned"
        assert pin == installed_version(name).split("+")[0], r
        names.add(name.lower())
    assert {"scikit-learn", "numpy", "pandas", "joblib", "cloudpickle", "mlflow"} <= names


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_in_a_fresh_environment_built_from_the_logged_requirements(published, tmp_path):
    """``python -m venv`` + ``pip install -r requirements.txt`` of the version (pip's own configuration from the
    environment), without this project; then that environment's ``mlflow models serve`` on the version
    answers ``POST /invocations`` with its logged serving example."""
    import mlflow

    champ, _, _, _ = published
    (tmp_path / "model").mkdir()
    model = Path(
        mlflow.artifacts.download_artifacts(f"models:/{champ.name}/{champ.version}", dst_path=str(tmp_path / "model"))
    )
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "-r", str(model / "requirements.txt")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    # the project is not importable there: the model brings its own code (code/ml)
    assert subprocess.run([str(venv / "bin" / "python"), "-c", "import ml"], cwd=tmp_path, env=env).returncode != 0

    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(venv / "bin" / "mlflow"), "models", "serve", "-m", str(model), "--env-manager", "local"]
        + ["--host", "127.0.0.1", "-p", str(port), "-w", "1"],
        cwd=tmp_path,
        env={**env, "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240  # a cold first start of a fresh environment on a busy machine
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"{base}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        payload = (model / "serving_input_example.json").read_text()
        r = requests.post(f"{base}/invocations", data=payload, headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert len(preds) == len(json.loads(payload)["dataframe_split"]["data"])
        assert all(set(p) == {"label", "p_negative", "p_positive"} and p["label"] in (0, 1) for p in preds)
        # the documented payload: a DataFrame of one `text` column
        r = requests.post(
            f"{base}/invocations",
            json={"dataframe_split": {"columns": ["text"], "data": [["what a lovely day"], ["this is awful"]]}},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert [set(p) for p in r.json()["predictions"]] == [{"label", "p_negative", "p_positive"}] * 2
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
