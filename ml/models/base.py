"""The one interface every model family implements (scikit-learn style).

The rest of the platform never asks which family it holds: it calls ``fit``,
``predict_proba`` (columns: P(negative), P(positive)), ``save`` and ``load``.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import numpy.typing as npt

from ml.features import requirements_for
from ml.models import calibration as calib

META_FILE = "family.json"

#: The decision rule of every family, in one place: positive when P(positive) >= this.
DECISION_THRESHOLD = 0.5


def decide(p_positive: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """Labels (0 negative, 1 positive) from P(positive): the platform's one decision rule."""
    return (np.asarray(p_positive, dtype=float) >= DECISION_THRESHOLD).astype(np.int8)


#: the labels' names, by label (0 negative, 1 positive): the API's answers, the batch scores' label column
LABELS: tuple[str, str] = ("negative", "positive")
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(LABELS)}


def label_name(label: int) -> Literal["negative", "positive"]:
    if int(label) not in (0, 1):
        raise ValueError(f"a label is 0 (negative) or 1 (positive), got {label!r}")
    return "positive" if int(label) == 1 else "negative"


def pinned(distribution: str) -> str:
    """``name==installed version`` without a local label (torch ``2.13.0+cpu`` -> ``torch==2.13.0``)."""
    try:
        return f"{distribution}=={version(distribution).split('+')[0]}"
    except PackageNotFoundError:
        return distribution


def seed_everything(seed: int) -> None:
    """Seed python, numpy and, when already imported, TensorFlow/Keras (with op determinism: a rerun
    reproduces its fit exactly, process-wide) and torch (reruns reproduce)."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    if "keras" in sys.modules or "tensorflow" in sys.modules:
        import keras

        keras.utils.set_random_seed(seed)  # python, numpy and the backend (tf)
        import tensorflow as tf

        # the same seed gives the same fit: without this, TF's parallel reductions may reorder floats
        tf.config.experimental.enable_op_determinism()
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


class Budget:
    """The training budget of one fit: wall time (``seconds``, measured from the start of ``fit``,
    so preprocessing, vocabulary, embeddings and validation all count: honest on a loaded machine)
    and/or a number of optimiser ``steps``; None or 0 means no limit of that kind."""

    def __init__(self, seconds: float | None = None, steps: int | None = None) -> None:
        self.seconds = float(seconds) if seconds else None
        self.steps = int(steps) if steps else None
        self._clock = time.perf_counter
        self.t0 = self._clock()

    def elapsed(self) -> float:
        return self._clock() - self.t0

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - self.elapsed()

    def spent(self, step: int = 0, reserve: float = 0.0) -> str | None:
        """Why training must stop now (``"budget"``, ``"max_steps"``), or None. ``reserve``: seconds
        still needed after stopping (one more validation), taken from the time left."""
        if self.steps is not None and step >= self.steps:
            return "max_steps"
        if self.seconds is not None and self.elapsed() + reserve >= self.seconds:
            return "budget"
        return None

    def progress(self, step: int, total_steps: int | None = None) -> float:
        """How much of the budget is used, 0..1: the largest of the time, step and epoch fractions
        (drives learning-rate decay when the number of steps is not known in advance)."""
        fr = [0.0]
        if self.seconds:
            fr.append(self.elapsed() / self.seconds)
        if self.steps:
            fr.append(step / self.steps)
        if total_steps:
            fr.append(step / total_steps)
        return min(1.0, max(fr))


def new_history(n_train: int, n_eval: int, budget: Budget) -> dict[str, Any]:
    """The training record every family fills in (saved with the model, logged per trial):
    budget and seconds used, steps, epochs (fractional), examples seen, why it stopped, and the
    learning curve (validation accuracy/loss against steps)."""
    return {
        "n_train": int(n_train),
        "n_eval": int(n_eval),
        "budget_seconds": budget.seconds,
        "max_steps": budget.steps,
        "seconds": None,
        "steps": 0,
        "epochs": 0.0,
        "examples_seen": 0,
        "stopped": None,
        "best_step": None,
        "best_val_accuracy": None,
        "curve": {"step": [], "examples": [], "seconds": [], "val_accuracy": [], "val_loss": []},
    }


def plot_learning_curve(history: dict[str, Any], path: str | Path, title: str = "learning curve") -> Path | None:
    """PNG of validation accuracy against training steps (None when there is no curve)."""
    curve = (history or {}).get("curve") or {}
    if not curve.get("step"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(curve["step"], curve["val_accuracy"], marker="o", ms=3, color="tab:blue", label="validation accuracy")
    if history.get("best_step") is not None:
        ax.axvline(history["best_step"], color="tab:green", ls="--", lw=1, label=f"best (step {history['best_step']})")
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation accuracy")
    n = history.get("examples_seen") or 0
    ax.set_title(
        f"{title}: {history.get('epochs', 0):.2f} epochs, {n:,} examples, "
        f"{history.get('seconds') or 0:.0f}s"
        + (f" of {history['budget_seconds']:.0f}s" if history.get("budget_seconds") else ""),
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


Validation = tuple[Sequence[str], Sequence[int] | np.ndarray]


class Scorer(Protocol):
    """Anything with ``predict_proba`` (a :class:`SentimentModel`, or a test's stand-in): what the
    evaluation functions score."""

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


#: "Why this label": at most this many distinct words of a text are occluded (one model call of at
#: most 1 + EXPLAIN_MAX_WORDS texts per explained text: the time budget of the neural families).
EXPLAIN_MAX_WORDS = 40
EXPLAIN_TOP_K = 10


def occlusion(
    predict_proba: Any, texts: Sequence[str], top_k: int = EXPLAIN_TOP_K, max_words: int = EXPLAIN_MAX_WORDS
) -> list[list[dict[str, Any]]]:
    """Model-agnostic explanation: for each text, remove each distinct whitespace word (every
    occurrence; the first ``max_words`` distinct words), re-score all variants in ONE call of
    ``predict_proba``, and weigh each word by p_positive(text) - p_positive(text without it): positive
    pushed toward positive. The ``top_k`` words by |weight|, largest first."""
    batch: list[str] = []
    spans: list[tuple[int, list[str]]] = []
    for text in texts:
        words = str(text).split()
        distinct = list(dict.fromkeys(words))[: max(0, int(max_words))]
        spans.append((len(batch), distinct))
        batch.append(str(text))
        batch += [" ".join(w for w in words if w != word) for word in distinct]
    if not batch:
        return []
    p = np.asarray(predict_proba(batch), dtype=float)[:, 1]
    out: list[list[dict[str, Any]]] = []
    for start, distinct in spans:
        weights = [(w, float(p[start] - p[start + 1 + i])) for i, w in enumerate(distinct)]
        weights.sort(key=lambda tw: -abs(tw[1]))
        out.append([{"token": t, "weight": round(w, 6)} for t, w in weights[: max(0, int(top_k))]])
    return out


def explain(model: Any, texts: Sequence[str], top_k: int = EXPLAIN_TOP_K) -> tuple[str, list[list[dict[str, Any]]]]:
    """(method, per-text ``[{"token", "weight"}]``) for any served model: the family's own
    :meth:`SentimentModel.explain` when it has one, occlusion over ``predict_proba`` otherwise."""
    own = getattr(model, "explain", None)
    if callable(own):
        return str(getattr(model, "explanation_method", "occlusion")), own(texts, top_k=top_k)
    return "occlusion", occlusion(model.predict_proba, texts, top_k=top_k)


class SentimentModel(ABC):
    family: ClassVar[str]
    #: distributions the family needs at inference time, beyond the platform's base ones
    requirements: ClassVar[tuple[str, ...]] = ()
    #: the fitted calibration of P(positive) (:mod:`ml.models.calibration`), None: raw probabilities
    calibration_: calib.Calibrator | None = None

    def __init__(self, **params: Any) -> None:
        self.params = {**self.default_params(), **params}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every family's own ``predict_proba`` is wrapped here, once: it returns the calibrated probabilities
        when the model holds a calibration (:meth:`calibrate`), and ``raw_predict_proba`` keeps the family's
        own. The one place calibration is applied, whatever serves the model (API, batch scoring, pyfunc)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("predict_proba")
        if own is None or getattr(own, "_calibrated", False):
            return

        @functools.wraps(own)
        def predict_proba(self: SentimentModel, texts: Sequence[str]) -> np.ndarray:
            proba = own(self, texts)
            cal = self.calibration_
            return proba if cal is None else cal.apply_proba(proba)

        predict_proba._calibrated = True  # type: ignore[attr-defined]
        cls.predict_proba = predict_proba  # type: ignore[method-assign]
        cls._raw_predict_proba = own  # type: ignore[attr-defined]

    def raw_predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """The family's own probabilities, before calibration."""
        return type(self)._raw_predict_proba(self, texts)  # type: ignore[attr-defined]

    def calibrate(
        self, texts: Sequence[str], labels: Sequence[int] | np.ndarray, method: str = "temperature"
    ) -> calib.Calibrator:
        """Fit the calibration of P(positive) on a labelled split the model was NOT trained on (never the
        held-out split the gate scores on) and keep it: ``predict_proba`` applies it from now on and
        ``save`` stores it. ``method``: ``temperature`` | ``platt`` | ``none`` (:mod:`ml.models.calibration`)."""
        y = np.asarray(labels, dtype=int)
        raw = np.asarray(self.raw_predict_proba(list(texts)))[:, 1]
        cal = calib.fit(raw, y, method)
        self.calibration_ = None if method == "none" else cal
        return cal

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {}

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    def pip_requirements(self) -> list[str]:
        """Pinned extra requirements of this model's MLflow pyfunc environment."""
        return [pinned(r) for r in self.requirements] + requirements_for(self.params.get("preprocess"))

    @abstractmethod
    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        validation: Validation | None = None,
        budget_seconds: float | None = None,
    ) -> SentimentModel:
        """Train on ``texts``. ``validation`` (texts, labels): the split that early stopping and the
        learning curve watch (None: the family carves ``validation_fraction`` from ``texts``);
        ``budget_seconds``: wall time of this fit, the iterative families stop when it is spent
        (keeping their best state so far). ``self.history_`` records what was used (:func:`new_history`)."""

    @staticmethod
    def _check_labels(labels: Sequence[int] | np.ndarray, dtype: npt.DTypeLike = np.int8) -> np.ndarray:
        """Labels as an array; a clear error when only one class is present."""
        y = np.asarray(labels, dtype=dtype)
        if len(set(y.tolist())) < 2:
            raise ValueError("training data holds only one class; need both negative and positive tweets")
        return y

    @abstractmethod
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Array of shape (n, 2): P(negative), P(positive)."""

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return decide(self.predict_proba(texts)[:, 1])

    #: what :meth:`explain` computes (shown with each explanation)
    explanation_method: ClassVar[str] = "occlusion"

    def explain(self, texts: Sequence[str], top_k: int = EXPLAIN_TOP_K) -> list[list[dict[str, Any]]]:
        """Why each text got its label: ``[{"token", "weight"}]`` per text, the ``top_k`` largest
        |weight| first, weight > 0 pushing toward positive. Default: :func:`occlusion` (any family)."""
        return occlusion(self.predict_proba, texts, top_k=top_k)

    # --- persistence: a directory with family.json plus the family's own files
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / META_FILE).write_text(json.dumps({"family": self.family, "params": self.params}, indent=2))
        self._save(path)
        cal_file = path / calib.CALIBRATION_FILE
        if self.calibration_ is not None:
            cal_file.write_text(json.dumps(self.calibration_.to_dict(), indent=2))
        elif cal_file.exists():
            cal_file.unlink()
        return path

    @classmethod
    def load(cls, path: str | Path) -> SentimentModel:
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        obj = cls.__new__(cls)
        obj.params = meta["params"]
        obj._load(path)
        cal_file = path / calib.CALIBRATION_FILE
        obj.calibration_ = calib.Calibrator.from_dict(json.loads(cal_file.read_text())) if cal_file.exists() else None
        return obj

    @abstractmethod
    def _save(self, path: Path) -> None: ...

    @abstractmethod
    def _load(self, path: Path) -> None: ...
