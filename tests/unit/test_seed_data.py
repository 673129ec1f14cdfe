"""Which file seeds the first model (ml/platform/startup/seeding.py): the mounted one or the bundled sample."""

from __future__ import annotations

import pytest

from ml.data import DataError
from ml.platform.startup.seeding import seed_data_path
from ml.platform.startup.sources import BUNDLED_SAMPLE


def test_seed_data_is_the_mounted_file_or_the_bundled_sample(tmp_path):
    assert seed_data_path(None) == BUNDLED_SAMPLE and BUNDLED_SAMPLE.is_file()
    f = tmp_path / "mine.csv"
    f.write_text('4,"a tweet"\n')
    assert seed_data_path(str(f)) == f.resolve()
    with pytest.raises(DataError, match="not found.*mount it under ./data"):
        seed_data_path(str(tmp_path / "missing.csv"))
