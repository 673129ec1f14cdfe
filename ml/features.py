"""Text preprocessing shared by every family (a searched hyperparameter, not a code fork)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib.metadata import version

URL_RE = re.compile(r"(https?://\S+|www\.\S+)", re.IGNORECASE)
MENTION_RE = re.compile(r"@\w+")
HASHTAG_RE = re.compile(r"#(\w+)")
REPEAT_RE = re.compile(r"(\w)\1{2,}")
SPACE_RE = re.compile(r"\s+")

PREPROCESSORS = ("none", "basic", "lemma")
ALIASES = {"lemmatise": "lemma", "lemmatize": "lemma", "lemmatised": "lemma"}
WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
# without a POS tagger, a word's lemma is taken from the first of these tags lemminflect knows it as
# ("tired" stays an adjective, "movies" -> "movie", "went" -> "go", "better" -> "good")
_LEMMA_POS = ("ADJ", "NOUN", "VERB", "ADV", "AUX", "PROPN")


def clean(text: str) -> str:
    """Basic tweet cleaning: HTML entities, URLs, @mentions, #hashtags, letters repeated 3+ times."""
    t = html.unescape(text)
    t = URL_RE.sub(" URL ", t)
    t = MENTION_RE.sub(" USER ", t)
    t = HASHTAG_RE.sub(r" \1 ", t)
    t = REPEAT_RE.sub(r"\1\1", t)
    return SPACE_RE.sub(" ", t).strip()


@lru_cache(maxsize=200_000)
def lemma(word: str) -> str:
    """Dictionary form of one lower-case word (lemminflect's tables, offline); unknown words as they are."""
    # a served model's environment has lemminflect only when its mode needs it (requirements_for)
    from lemminflect import getAllLemmas  # noqa: PLC0415 - optional at inference

    found = getAllLemmas(word)
    for pos in _LEMMA_POS:
        if found.get(pos):
            return found[pos][0]
    return word


def lemmatise(text: str) -> str:
    """Basic cleaning, lower case, every word replaced by its lemma ("loved movies" -> "love movie")."""
    return WORD_RE.sub(lambda m: lemma(m.group(0).lower()), clean(text))


def requirements_for(mode: str | None) -> list[str]:
    """Extra pip requirements a preprocessing mode needs at inference time."""
    if ALIASES.get(mode or "", mode) == "lemma":
        return [f"lemminflect=={version('lemminflect')}"]
    return []


def preprocess(texts: Iterable[str], mode: str = "basic") -> list[str]:
    mode = ALIASES.get(mode, mode)
    if mode == "lemma":
        return [lemmatise(str(t)) for t in texts]
    if mode == "none":
        return [str(t) for t in texts]
    if mode == "basic":
        return [clean(str(t)) for t in texts]
    raise ValueError(f"unknown preprocessing {mode!r}; choose one of {PREPROCESSORS}")
