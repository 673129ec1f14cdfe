"""The transformer family's ONNX serving path: a tiny MiniLM fine-tuned for a few steps on real
tweets is exported (fp32 + int8) when saved; ONNX Runtime's probabilities match torch's on fixed
tweets; the int8-or-fp32 choice follows the validation accuracies; loading runs ONNX without
importing torch; MLflow logs the export with the model."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import realdata
from ports import in_ci
from sklearn.linear_model import LogisticRegression

from ml import models
from ml.data.read import read_labelled
from ml.features import preprocess
from ml.models import onnx_runtime as ox
from ml.platform import registry
from ml.platform.config import reset_settings

# the deep extra (make env installs it) brings both; without them these tests skip with the reason,
# except under CI=true, where they must run: a missing one is a collection error there
for _needed in ("onnxruntime", "torch"):
    if in_ci():
        __import__(_needed)
    else:
        pytest.importorskip(_needed)


@pytest.fixture(autouse=True)
def _fresh_settings():
    """``transformer_runtime`` is a setting (``SENTIMENT_TRANSFORMER_RUNTIME``): the cached settings are
    forgotten around each test and after each change of the variable."""
    reset_settings()
    yield
    reset_settings()


TINY = {
    "batch_size": 16,
    "max_length": 48,
    "max_steps": 6,
    "eval_batch_size": 64,
    "threads": 1,
    "eval_max_rows": 200,
    "warmup_steps": 1,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch model, saved folder, fixed tweets): 200 real tweets, 6 steps, 100 validation, 40 fixed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = realdata.balanced(340, seed=7)
    texts = [t for _, t in rows]
    y = np.array([1 if p == 4 else 0 for p, _ in rows])
    m = models.create("transformer", **TINY).fit(texts[:200], y[:200], validation=(texts[200:300], y[200:300]))
    path = m.save(tmp_path_factory.mktemp("onnx") / "transformer")
    return m, path, texts[300:]


def test_export_files_and_metadata(tiny):
    _, path, _ = tiny
    meta = json.loads((path / ox.ONNX_DIR / ox.EXPORT_META).read_text())
    assert (path / ox.ONNX_DIR / ox.FP32_FILE).exists() and (path / ox.ONNX_DIR / ox.INT8_FILE).exists()
    assert (path / "hf" / "tokenizer.json").exists()
    assert meta["int8_mb"] < meta["fp32_mb"] / 2
    assert meta["n_validation"] == 100
    # the recorded choice follows the README's rule, written out here rather than asked of the code under
    # test: int8 when it loses at most int8_max_drop (0.5 point) of validation accuracy, else fp32 ONNX
    drop = meta["torch_val_accuracy"] - meta["int8_val_accuracy"]
    assert meta["int8_max_drop"] == 0.005
    assert meta["runtime"] == ("onnx-int8" if drop <= 0.005 + 1e-9 else "onnx"), meta


def test_choose_runtime_rule():
    assert ox.choose_runtime(0.800, 0.796, 0.005) == "onnx-int8"
    assert ox.choose_runtime(0.800, 0.795, 0.005) == "onnx-int8"  # exactly 0.5 point: still int8
    assert ox.choose_runtime(0.800, 0.794, 0.005) == "onnx"
    assert ox.choose_runtime(0.800, 0.830, 0.005) == "onnx-int8"
    assert ox.choose_runtime(None, None, 0.005) == "onnx"  # nothing to check int8 against: fp32


@pytest.mark.parametrize("runtime, tol", [("onnx", 1e-2), ("onnx-int8", None)])
def test_onnx_parity_with_torch(tiny, runtime, tol, monkeypatch):
    m, path, fixed = tiny
    torch_p = m.predict_proba(fixed)
    monkeypatch.setenv(ox.RUNTIME_ENV, runtime)
    reset_settings()
    loaded = models.load(path)
    assert loaded.runtime_ == runtime and loaded.model_ is None
    p = loaded.predict_proba(fixed)
    assert p.shape == (len(fixed), 2) and np.allclose(p.sum(axis=1), 1)
    diff = float(np.abs(p - torch_p).max())
    print(f"{runtime}: max |P_onnx - P_torch| = {diff:.2e} over {len(fixed)} tweets")
    if tol is not None:
        assert diff <= tol
    else:  # int8: reported; quantisation moves probabilities a little, never the whole picture
        assert diff <= 0.15
    # input order is kept though batches run sorted by length
    np.testing.assert_allclose(loaded.predict_proba(fixed[::-1]), p[::-1], atol=1e-6)
    assert loaded.predict_proba([]).shape == (0, 2)


def test_auto_loads_the_chosen_runtime_and_torch_on_request(tiny, monkeypatch):
    m, path, fixed = tiny
    monkeypatch.delenv(ox.RUNTIME_ENV, raising=False)
    reset_settings()
    meta = ox.read_meta(path / ox.ONNX_DIR)
    assert models.load(path).runtime_ == meta["runtime"]
    monkeypatch.setenv(ox.RUNTIME_ENV, "torch")
    reset_settings()
    t = models.load(path)
    assert t.runtime_ == "torch" and t.onnx_ is None
    np.testing.assert_allclose(t.predict_proba(fixed), m.predict_proba(fixed), atol=1e-6)


def test_onnx_load_imports_no_torch(tiny):
    _, path, fixed = tiny
    probe = (
        "import sys, json; from ml import models; m = models.load(sys.argv[1]); "
        "p = m.predict_proba(json.loads(sys.argv[2])); "
        "print(m.runtime_, p.shape, sorted(x for x in ('torch', 'transformers') if x in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k != ox.RUNTIME_ENV}
    out = subprocess.run(
        [sys.executable, "-c", probe, str(path), json.dumps(fixed[:5])],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=realdata.REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("(5, 2) []"), out.stdout


def test_resave_of_an_onnx_loaded_model_keeps_the_export(tiny, tmp_path, monkeypatch):
    _, path, fixed = tiny
    monkeypatch.setenv(ox.RUNTIME_ENV, "onnx")
    reset_settings()
    loaded = models.load(path)
    again = loaded.save(tmp_path / "again")
    for f in (ox.FP32_FILE, ox.INT8_FILE, ox.EXPORT_META):
        assert (again / ox.ONNX_DIR / f).read_bytes() == (path / ox.ONNX_DIR / f).read_bytes()
    np.testing.assert_array_equal(models.load(again).predict_proba(fixed), loaded.predict_proba(fixed))


def test_mlflow_logs_the_export_with_the_model(tiny, mlflow_tracking, monkeypatch):
    import mlflow

    m, _, fixed = tiny
    monkeypatch.delenv(ox.RUNTIME_ENV, raising=False)
    reset_settings()
    mlflow.set_experiment("test-onnx")
    with mlflow.start_run():
        info = registry.log_model(m)
    served = mlflow.pyfunc.load_model(info.model_uri).unwrap_python_model().model
    assert served.runtime_ in ("onnx", "onnx-int8") and served.model_ is None
    assert "onnxruntime" in " ".join(m.pip_requirements())
    assert served.predict_proba(fixed).shape == (len(fixed), 2)


#: a MiniLM whose classification head has really learned (the 6-step ``tiny`` one is near chance: its labels
#: sit at P ~ 0.5, where any rounding flips them, so an accuracy bound on it would say nothing). Fine-tuning
#: far enough takes minutes on 2 cores, so the head is fitted as a logistic regression on the frozen encoder's
#: pooled output of real tweets (forward passes only), then saved through the family's own export.
HEAD_ROWS = 1200
#: the fixed sample of the external uniform file (issue 27: "int8 against torch on a fixed sample")
UNIFORM_SAMPLE, UNIFORM_SEED = 300, 2027


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(saved folder): the family's fit (1 step) with a logistic-regression head fitted on 1,200 real tweets of
    the bundled sample, exported (fp32 + int8, int8 checked on 100 validation tweets) by ``save``."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = realdata.balanced(HEAD_ROWS + 100, seed=8)
    texts = [t for _, t in rows]
    y = np.array([1 if p == 4 else 0 for p, _ in rows])
    m = models.create("transformer", **{**TINY, "max_steps": 1, "threads": 2})
    m.fit(texts[:32], y[:32], validation=(texts[HEAD_ROWS:], y[HEAD_ROWS:]))
    m.model_.eval()
    feats = []
    with torch.no_grad():
        for i in range(0, HEAD_ROWS, 64):
            enc = m._encode(preprocess(texts[i : min(i + 64, HEAD_ROWS)], m.params["preprocess"]))
            feats.append(m.model_.base_model(**enc).pooler_output.numpy())
    lr = LogisticRegression(C=0.1, max_iter=2000).fit(np.vstack(feats), y[:HEAD_ROWS])
    w, b = torch.tensor(lr.coef_[0], dtype=torch.float32), float(lr.intercept_[0])
    with torch.no_grad():  # logits (-z/2, z/2): softmax gives P(positive) = sigmoid(w.x + b)
        m.model_.classifier.weight.copy_(torch.stack([-w / 2, w / 2]))
        m.model_.classifier.bias.copy_(torch.tensor([-b / 2, b / 2]))
    return m.save(tmp_path_factory.mktemp("onnx-trained") / "transformer")


def test_int8_accuracy_within_half_a_point_of_torch_on_the_uniform_file(trained, monkeypatch):
    """The int8 ONNX export loses at most 0.5 point of accuracy against torch on a fixed sample of 300 tweets of
    the external uniform file (never trained on), and labels almost every tweet the same way."""
    # the six-column Sentiment140 layout: read by the platform's reader (labels 0/1)
    res = read_labelled(realdata.require(realdata.SHARED_DATA.with_name("sentiment140_uniform_eval.csv")))
    rows = list(zip(res.labels, res.texts, strict=True))
    sample = random.Random(UNIFORM_SEED).sample(rows, UNIFORM_SAMPLE)
    texts, y = [t for _, t in sample], np.array([label for label, _ in sample])
    p = {}
    for runtime in ("torch", "onnx-int8"):
        monkeypatch.setenv(ox.RUNTIME_ENV, runtime)
        reset_settings()
        loaded = models.load(trained)
        assert loaded.runtime_ == runtime
        p[runtime] = loaded.predict_proba(texts)[:, 1]
    pred_torch, pred_int8 = (p["torch"] >= 0.5).astype(int), (p["onnx-int8"] >= 0.5).astype(int)
    acc_torch, acc_int8 = float((pred_torch == y).mean()), float((pred_int8 == y).mean())
    agreement = float((pred_torch == pred_int8).mean())
    print(
        f"uniform sample n={len(y)}: accuracy torch {acc_torch:.4f}, int8 {acc_int8:.4f} "
        f"(drop {acc_torch - acc_int8:+.4f}); label agreement {agreement:.4f}; "
        f"max |dP| {np.abs(p['torch'] - p['onnx-int8']).max():.4f}"
    )
    assert acc_torch >= 0.6  # the head has learned: the bound below means something
    assert acc_torch - acc_int8 <= 0.005 + 1e-12  # issue 27: at most 0.5 point lost
    # labels change only where torch itself is unsure (this frozen-encoder head leaves many tweets near 0.5:
    # measured 93.3% agreement, every flip within 0.05 of it); a confident label never flips
    flips = pred_torch != pred_int8
    assert agreement >= 0.9
    assert np.all(np.abs(p["torch"][flips] - 0.5) < 0.1)
