"""Model families, looked up by name; heavy frameworks are imported only when used.

The one registry of the families is :mod:`ml.models.families` (``FAMILIES``, ``INLINE_FAMILIES``, exported
here): the search (``ml.stages.search.plan``), the API (``api/runtime/inference.py``) and the DAGs' ``families`` params
(``plugins/sentiment_dag_defaults.py``) read it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from ml.models.base import META_FILE, SentimentModel
from ml.models.families import FAMILIES, INLINE_FAMILIES


def family_class(family: str) -> type[SentimentModel]:
    try:
        target = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}") from None
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def create(family: str, **params: Any) -> SentimentModel:
    cls = family_class(family)
    unknown = set(params) - set(cls.default_params())
    if unknown:
        raise ValueError(
            f"unknown parameter(s) for {family}: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(cls.default_params()))}"
        )
    return cls(**params)


def load(path: str | Path) -> SentimentModel:
    """Load a saved model of any family from its directory."""
    meta = json.loads((Path(path) / META_FILE).read_text())
    return family_class(meta["family"]).load(path)


__all__ = ["FAMILIES", "INLINE_FAMILIES", "SentimentModel", "create", "family_class", "load"]
