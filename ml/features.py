"""Text preprocessing shared by every family (a searched hyperparameter, not a code fork)."""
from __future__ import annotations

import html
import re
from typing import Iterable

URL_RE = re.compile(r"(https?://\S+|www\.\S+)", re.IGNORECASE)
MENTION_RE = re.compile(r"@\w+")
HASHTAG_RE = re.compile(r"#(\w+)")
REPEAT_RE = re.compile(r"(\w)\1{2,}")
SPACE_RE = re.compile(r"\s+")

PREPROCESSORS = ("none", "basic")


def clean(text: str) -> str:
    """Basic tweet cleaning: HTML entities, URLs, @mentions, #hashtags, letters repeated 3+ times."""
    t = html.unescape(text)
    t = URL_RE.sub(" URL ", t)
    t = MENTION_RE.sub(" USER ", t)
    t = HASHTAG_RE.sub(r" \1 ", t)
    t = REPEAT_RE.sub(r"\1\1", t)
    return SPACE_RE.sub(" ", t).strip()


def preprocess(texts: Iterable[str], mode: str = "basic") -> list[str]:
    if mode == "none":
        return [str(t) for t in texts]
    if mode == "basic":
        return [clean(str(t)) for t in texts]
    raise ValueError(f"unknown preprocessing {mode!r}; choose one of {PREPROCESSORS}")
