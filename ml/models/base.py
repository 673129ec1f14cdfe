"""The one interface every model family implements (scikit-learn style).

The rest of the platform never asks which family it holds: it calls ``fit``,
``predict_proba`` (columns: P(negative), P(positive)), ``save`` and ``load``.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

META_FILE = "family.json"

#: The decision rule of every family, in one place: positive when P(positive) >= this.
DECISION_THRESHOLD = 0.5


def decide(p_positive: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """Labels (0 negative, 1 positive) from P(positive): the platform's one decision rule."""
    return (np.asarray(p_positive, dtype=float) >= DECISION_THRESHOLD).astype(np.int8)


def pinned(distribution: str) -> str:
    """``name==installed version`` without a local label (torch ``2.13.0+cpu`` -> ``torch==2.13.0``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{distribution}=={version(distribution).split('+')[0]}"
    except PackageNotFoundError:
        return distribution


def seed_everything(seed: int) -> None:
    """Seed python, numpy and, when already imported, TensorFlow/Keras (with op determinism: a rerun
    reproduces its fit exactly, process-wide) and torch (reruns reproduce)."""
    import os
    import random
    import sys

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


class SentimentModel(ABC):
    family: ClassVar[str]
    #: distributions the family needs at inference time, beyond the platform's base ones
    requirements: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any) -> None:
        self.params = {**self.default_params(), **params}

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {}

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    def pip_requirements(self) -> list[str]:
        """Pinned extra requirements of this model's MLflow pyfunc environment."""
        from ml.features import requirements_for

        return [pinned(r) for r in self.requirements] + requirements_for(self.params.get("preprocess"))

    @abstractmethod
    def fit(self, texts: Sequence[str], labels: Sequence[int] | np.ndarray) -> "SentimentModel": ...

    @staticmethod
    def _check_labels(labels: Sequence[int] | np.ndarray, dtype=np.int8) -> np.ndarray:
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

    # --- persistence: a directory with family.json plus the family's own files
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / META_FILE).write_text(json.dumps({"family": self.family, "params": self.params}, indent=2))
        self._save(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SentimentModel":
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        obj = cls.__new__(cls)
        obj.params = meta["params"]
        obj._load(path)
        return obj

    @abstractmethod
    def _save(self, path: Path) -> None: ...

    @abstractmethod
    def _load(self, path: Path) -> None: ...
