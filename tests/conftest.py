"""Fixtures and rules of both speeds of tests: ``tests/unit/`` (no service: no PostgreSQL, MLflow,
Airflow, live server or browser; ``make test-fast``) and ``tests/system/`` (real services: its own
conftest.py creates the throw-away databases). Only what needs no service is here, so a unit test that
asks for ``platform_env`` or ``conn`` fails at once ("fixture not found") instead of reaching a database.

Every test gets the marker of its folder (``unit`` or ``system``, declared in pyproject.toml):
``-m unit`` / ``-m system`` select one speed from any path.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import realdata

TESTS = Path(__file__).resolve().parent
SHARED_DATA = realdata.SHARED_DATA

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The folder's marker on every test under tests/unit/ or tests/system/."""
    for item in items:
        path = Path(item.path).resolve()
        if path.is_relative_to(TESTS):
            speed = path.relative_to(TESTS).parts[0]
            if speed in ("unit", "system"):
                item.add_marker(speed)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared 100k real tweets (CI always has ../shared beside the clone): fails loudly if absent."""
    return realdata.require(SHARED_DATA)


@pytest.fixture(scope="session")
def tweets_csv(tmp_path_factory) -> Path:
    """2,000 real tweets (balanced), two-column polarity,text CSV."""
    path = tmp_path_factory.mktemp("data") / "tweets_2k.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(realdata.balanced(2000))
    return path
