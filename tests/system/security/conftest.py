"""Fixtures of the attack tests: a real champion of the module's own (``own_champion``: its model name in
the environment while it is open, so live API servers started by the tests serve it) and the API test
helpers (tests/system/api: ``live``, ``api_helpers``) on the import path, as pytest puts that folder there for
its own tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

API_TESTS = str(Path(__file__).resolve().parents[1] / "api")
if API_TESTS not in sys.path:
    sys.path.insert(0, API_TESTS)


@pytest.fixture(scope="module")
def champion(own_champion, tweets_csv):
    """A real TF-IDF champion under a model name of the module's own (behavioural checks off: speed)."""
    with own_champion("tweet-sentiment-sec", tweets_csv, sample_size=300, SENTIMENT_BEHAVIOUR_CHECKS="false") as c:
        yield c
