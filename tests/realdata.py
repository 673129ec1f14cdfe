"""Real tweets for tests, and nothing else: the bundled 20k sample (tests/data, always present)
and the shared 100k file for the few tests that need more rows. A missing file fails the test
loudly; no test ever swaps in generated text."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "sentiment140_20k.csv"
SHARED_DATA = REPO.parent / "shared" / "data" / "sentiment140_100k.csv"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"real tweets missing at {path}: this test needs them (no generated stand-in)", pytrace=False)
    return path


def read(path: Path = SAMPLE) -> list[tuple[int, str]]:
    """(label 0/1, text) for every row of a two-column ``polarity,text`` file of real tweets."""
    with require(path).open(encoding="utf-8", newline="") as f:
        return [(1 if r[0] == "4" else 0, r[1]) for r in csv.reader(f)]


def shuffled(path: Path = SAMPLE, seed: int = 0) -> list[tuple[int, str]]:
    rows = read(path)
    random.Random(seed).shuffle(rows)
    return rows


def balanced(n: int, seed: int = 0, path: Path = SAMPLE) -> list[tuple[int, str]]:
    """A balanced random sample of ``n`` real tweets as (polarity 0/4, text)."""
    rows = read(path)
    rng = random.Random(seed)
    neg = [r for r in rows if r[0] == 0]
    pos = [r for r in rows if r[0] == 1]
    out = [(0, t) for _, t in rng.sample(neg, n // 2)] + [(4, t) for _, t in rng.sample(pos, n - n // 2)]
    rng.shuffle(out)
    return out
