"""The text descriptors computed on both sides of a drift report (length, word count, non-letter
share, out-of-vocabulary share against the model's own vocabulary, mentions, URLs, hashtags)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ml.features import HASHTAG_RE, MENTION_RE, URL_RE, preprocess

NUMERIC_DESCRIPTORS = ("text_length", "word_count", "non_letter_share", "oov_share")
COUNT_DESCRIPTORS = ("n_mentions", "n_urls", "n_hashtags")
DESCRIPTORS = NUMERIC_DESCRIPTORS + COUNT_DESCRIPTORS
TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern (the TF-IDF family's)


def tokens(texts: list[str], preprocess_mode: str = "basic") -> list[list[str]]:
    """Word tokens as the TF-IDF family sees them: its preprocessing, lower case, 2+ characters."""
    return [TOKEN_RE.findall(t.lower()) for t in preprocess(texts, preprocess_mode)]


def oov_shares(texts: list[str], vocabulary: set[str], preprocess_mode: str = "basic") -> np.ndarray:
    """Per text, the share of its word tokens not in ``vocabulary`` (a text with no word token
    at all counts as fully out of vocabulary: the model sees nothing it knows)."""
    out = np.ones(len(texts), dtype=np.float64)
    for i, toks in enumerate(tokens(texts, preprocess_mode)):
        if toks:
            out[i] = sum(t not in vocabulary for t in toks) / len(toks)
    return out


def add_descriptors(frame: pd.DataFrame, vocabulary: set[str], preprocess_mode: str = "basic") -> pd.DataFrame:
    """The text descriptor columns, computed in pandas (Evidently's own ``OOVWordsPercentage`` needs
    nltk downloads, which fail offline, and knows nothing of the model's vocabulary)."""
    text = frame["text"].astype(str)
    out = frame.copy()
    out["text_length"] = text.str.len().astype(np.int64)
    out["word_count"] = text.str.count(r"\S+").astype(np.int64)
    non_space = out["text_length"] - text.str.count(r"\s")  # share among visible characters
    letters = text.str.count(r"[^\W\d_]")
    out["non_letter_share"] = ((non_space - letters) / non_space.clip(lower=1)).astype(np.float64)
    out["oov_share"] = oov_shares(text.tolist(), vocabulary, preprocess_mode)
    out["n_mentions"] = text.str.count(MENTION_RE.pattern).astype(np.int64)
    out["n_urls"] = text.str.count(URL_RE.pattern, flags=URL_RE.flags).astype(np.int64)
    out["n_hashtags"] = text.str.count(HASHTAG_RE.pattern).astype(np.int64)
    return out
