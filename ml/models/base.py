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


class SentimentModel(ABC):
    family: ClassVar[str]

    def __init__(self, **params: Any) -> None:
        self.params = {**self.default_params(), **params}

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {}

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    @abstractmethod
    def fit(self, texts: Sequence[str], labels: Sequence[int] | np.ndarray) -> "SentimentModel": ...

    @abstractmethod
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Array of shape (n, 2): P(negative), P(positive)."""

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return (self.predict_proba(texts)[:, 1] >= 0.5).astype(np.int8)

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
