"""ONNX export and ONNX Runtime inference of the fine-tuned ``transformer`` family.

Export (needs torch): :func:`export` traces the fine-tuned sequence classifier with
``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``: it needs no ``onnxscript`` and
takes ``dynamic_axes``) to ``model.onnx`` (fp32; inputs ``input_ids`` and ``attention_mask``, both
int64 with dynamic batch and sequence axes; output ``logits``), then
``onnxruntime.quantization.quantize_dynamic`` writes ``model.int8.onnx`` (int8 weights, QInt8).

Inference (no torch, no transformers): :class:`OnnxSession` reads the fast tokenizer's
``tokenizer.json`` with the ``tokenizers`` library (the same normaliser, vocabulary, truncation and
special tokens as the transformers tokenizer), pads each batch to its longest tweet, sorts the
texts by length so that a batch pads little, and runs one ``onnxruntime.InferenceSession``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_META = "export.json"
OPSET = 17
#: runtimes of the transformer family: ``auto`` is the one chosen at export (int8 when its
#: validation accuracy is within ``int8_max_drop`` of torch's, else fp32 ONNX), torch without an export
RUNTIMES = ("auto", "onnx-int8", "onnx", "torch")
RUNTIME_ENV = "SENTIMENT_TRANSFORMER_RUNTIME"  # the setting ``transformer_runtime``: forces the runtime at load


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------- export
def export(model: Any, out_dir: Path, sample_ids: Any = None) -> dict[str, Any]:
    """Export a (CPU, eval) ``AutoModelForSequenceClassification`` to ``out_dir/model.onnx`` and its
    dynamically quantised int8 copy to ``out_dir/model.int8.onnx``; returns sizes and seconds."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    class Logits(torch.nn.Module):  # positional inputs, one tensor out: a clean graph signature
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    wrapped = Logits(model.to("cpu").eval()).eval()
    ids = (
        torch.tensor(
            [[101, 2023, 2003, 1037, 7099, 1010, 2307, 999, 102], [101, 2919, 102, 0, 0, 0, 0, 0, 0]], dtype=torch.long
        )
        if sample_ids is None
        else sample_ids
    )
    mask = (ids != 0).long()
    t = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            wrapped,
            (ids, mask),
            str(out_dir / FP32_FILE),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "logits": {0: "batch"},
            },
        )
    export_s = time.perf_counter() - t
    t = time.perf_counter()
    logging.getLogger().disabled, was = True, logging.getLogger().disabled  # "consider pre-processing" noise
    try:
        quantize_dynamic(str(out_dir / FP32_FILE), str(out_dir / INT8_FILE), weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().disabled = was
    return {
        "opset": OPSET,
        "exporter": "torch.onnx (TorchScript, dynamo=False)",
        "quantization": "onnxruntime quantize_dynamic, QInt8 weights",
        "export_seconds": round(export_s, 2),
        "quantize_seconds": round(time.perf_counter() - t, 2),
        "fp32_mb": round((out_dir / FP32_FILE).stat().st_size / 2**20, 2),
        "int8_mb": round((out_dir / INT8_FILE).stat().st_size / 2**20, 2),
    }


def choose_runtime(torch_acc: float | None, int8_acc: float | None, max_drop: float) -> str:
    """``onnx-int8`` when the int8 model's validation accuracy is at most ``max_drop`` (a fraction:
    0.005 = 0.5 point) below torch's; else ``onnx`` (fp32, the same logits as torch). Without a
    validation split there is nothing to check int8 against: fp32."""
    if torch_acc is None or int8_acc is None:
        return "onnx"
    return "onnx-int8" if torch_acc - int8_acc <= max_drop + 1e-12 else "onnx"


def copy_export(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in (FP32_FILE, INT8_FILE, EXPORT_META):
        if (src / f).exists():
            shutil.copy2(src / f, dst / f)


def read_meta(folder: Path) -> dict[str, Any]:
    f = Path(folder) / EXPORT_META
    return json.loads(f.read_text()) if f.exists() else {}


# ---------------------------------------------------------------------------------------- inference
class OnnxSession:
    """One ONNX Runtime session plus the fast tokenizer: ``logits(texts)`` in input order."""

    def __init__(
        self,
        model_file: str | Path,
        tokenizer_file: str | Path,
        max_length: int = 64,
        batch_size: int = 128,
        threads: int = 1,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer  # noqa: PLC0415 - the transformer stack (the `deep` extra), as onnxruntime

        self.model_file = Path(model_file)
        self.batch_size = max(1, int(batch_size))
        tok = Tokenizer.from_file(str(tokenizer_file))
        cfg_file = Path(tokenizer_file).with_name("tokenizer_config.json")
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        pad_token = cfg.get("pad_token") or "[PAD]"
        if isinstance(pad_token, dict):
            pad_token = pad_token.get("content", "[PAD]")
        pad_id = tok.token_to_id(pad_token)
        tok.no_padding()
        tok.enable_truncation(max_length=int(max_length))
        tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad_token)  # to the longest in a batch
        self.tokenizer = tok
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # spinning worker threads steal the cores other processes (and our own event loop) need
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = so.intra_op_num_threads
        self.session = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}

    def _run(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
        }
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        return self.session.run(["logits"], feed)[0]

    def logits(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 2), dtype=np.float64)
        if not texts:
            return out
        order = np.argsort([len(t) for t in texts], kind="stable")
        for i in range(0, len(texts), self.batch_size):
            idx = order[i : i + self.batch_size]
            out[idx] = self._run([texts[j] for j in idx])
        return out


def _runtime_from_environment() -> str | None:
    return os.environ.get(RUNTIME_ENV) or None


#: where :func:`runtime_override` reads the ``transformer_runtime`` setting: the models read no settings
#: themselves, so ``ml.platform.config`` installs its reader here when it is imported; a process without the
#: platform's settings (a bare MLflow pyfunc) reads ``SENTIMENT_TRANSFORMER_RUNTIME`` directly
runtime_setting: Callable[[], str | None] = _runtime_from_environment


def runtime_override() -> str | None:
    """The ``transformer_runtime`` setting (``SENTIMENT_TRANSFORMER_RUNTIME``): forces a runtime at load."""
    return runtime_setting()
