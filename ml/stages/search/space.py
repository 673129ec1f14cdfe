"""The search spaces (``config/search_space.yaml``): a family's spec in a profile with overrides
merged over it, the parameter sets it tries (grid or seeded random) and the selection metric."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from typing import Any

import yaml

from ml.platform.config import Settings, get_settings
from ml.stages.search import SearchSpaceError

PROFILES = ("quick", "full")
SPEC_KEYS = {"method", "n_trials", "sample_size", "budget_seconds", "params", "fixed"}


def load_search_space(settings: Settings | None = None) -> dict[str, Any]:
    s = settings or get_settings()
    path = s.search_space_file
    if not path.exists():
        raise SearchSpaceError(f"search space file not found: {path}")
    doc = yaml.safe_load(path.read_text()) or {}
    doc.setdefault("selection", {})
    doc.setdefault("timing", {})
    doc.setdefault("profiles", {})
    return doc


def _merge_spec(base: dict[str, Any], override: dict[str, Any], family: str) -> dict[str, Any]:
    unknown = set(override) - SPEC_KEYS
    if unknown:
        raise SearchSpaceError(
            f"search space override for {family}: unknown key(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}"
        )
    out = copy.deepcopy(base)
    for k, v in override.items():
        if k in ("params", "fixed"):
            if not isinstance(v, dict):
                raise SearchSpaceError(f"search space override for {family}: {k} must be an object")
            out.setdefault(k, {})
            for name, val in v.items():
                if k == "params":  # a searched value given alone means "just this one"
                    val = val if isinstance(val, (list, dict)) else [val]
                    out.setdefault("fixed", {}).pop(name, None)
                else:
                    out.get("params", {}).pop(name, None)
                out[k][name] = val
        else:
            out[k] = v
    return out


def family_spec(
    family: str,
    profile: str,
    override: dict[str, Any] | None = None,
    space: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The search spec of ``family`` in ``profile`` with ``override`` (``{family: {...}}``) merged over it."""
    space = space or load_search_space(settings)
    profiles = space["profiles"]
    if profile not in profiles:
        raise SearchSpaceError(f"unknown search profile {profile!r}; known: {', '.join(sorted(profiles))}")
    spec = copy.deepcopy((profiles[profile] or {}).get(family) or {"method": "grid", "params": {}})
    spec = _merge_spec(spec, (override or {}).get(family) or {}, family)
    spec.setdefault("method", "grid")
    spec.setdefault("params", {})
    spec.setdefault("fixed", {})
    if spec["method"] not in ("grid", "random"):
        raise SearchSpaceError(f"{family}: method must be grid or random, got {spec['method']!r}")
    if spec["method"] == "random" and not spec.get("n_trials"):
        raise SearchSpaceError(f"{family}: random search needs n_trials")
    return spec


def _draw(values: Any, rng: random.Random) -> Any:
    if isinstance(values, list):
        return rng.choice(values)
    lo, hi = values["low"], values["high"]
    if values.get("log"):
        v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        v = rng.uniform(lo, hi)
    return int(round(v)) if isinstance(lo, int) and isinstance(hi, int) else float(f"{v:.4g}")


def trials(spec: dict[str, Any], seed: int = 42) -> list[dict[str, Any]]:
    """The parameter sets to try (searched params over fixed ones), deterministic for a seed."""
    params, fixed = spec.get("params") or {}, spec.get("fixed") or {}
    n = spec.get("n_trials")
    if spec.get("method", "grid") == "grid":
        for k, v in params.items():
            if not isinstance(v, list):
                raise SearchSpaceError(f"grid search needs a list of values for {k!r}, got {v!r}")
        keys = list(params)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(params[k] for k in keys))]
        combos = combos[: int(n)] if n else combos
    else:
        rng = random.Random(seed)
        if not n:
            raise SearchSpaceError("random search needs n_trials")
        combos, seen = [], set()
        all_lists = all(isinstance(v, list) for v in params.values())
        space_size = math.prod(len(v) for v in params.values()) if all_lists else float("inf")
        attempts = 0
        while len(combos) < min(int(n), space_size) and attempts < 1000:
            attempts += 1
            c = {k: _draw(v, rng) for k, v in params.items()}
            key = json.dumps(c, sort_keys=True)
            if key not in seen:
                seen.add(key)
                combos.append(c)
    return [{**fixed, **c} for c in combos] or [dict(fixed)]


def selection_metric(space: dict[str, Any], settings: Settings) -> str:
    return space.get("selection", {}).get("metric") or settings.promotion_metric
