"""Sources of training data: the file ``make up`` trains its first model on (:mod:`.seeding`)."""

from __future__ import annotations

import io
import logging
import urllib.request
import zipfile
from pathlib import Path

from ml.platform.config import REPO_ROOT, Settings, get_settings
from ml.platform.errors import DataError

log = logging.getLogger(__name__)

SENTIMENT140_URL = "https://cs.stanford.edu/people/alecmgo/trainingandtestdata.zip"

# A real 20k-tweet sample of Sentiment140 shipped with the project (tests/data/README.md):
# the tests' data and the offline first model of ``make up``. Never generated text.
BUNDLED_SAMPLE = REPO_ROOT / "tests" / "data" / "sentiment140_20k.csv"


def default_source(data: str | None = None, settings: Settings | None = None, timeout: float = 10.0) -> Path:
    """The training file for ``make up``: ``DATA=`` if given; else the official Sentiment140
    download when the network allows it; else, loudly, the bundled real 20k sample."""
    s = settings or get_settings()
    if data:
        p = Path(data).expanduser().resolve()
        if not p.exists():
            raise DataError(f"DATA={data}: file not found")
        return p
    target = s.var / "data" / "training.1600000.processed.noemoticon.csv"
    if target.exists():
        return target
    try:
        log.info("downloading Sentiment140 from %s ...", SENTIMENT140_URL)
        with urllib.request.urlopen(SENTIMENT140_URL, timeout=timeout) as resp:
            blob = resp.read()
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(target.name))
        return target
    except Exception as e:  # no network: the bundled real sample, said loudly
        if not BUNDLED_SAMPLE.exists():
            raise DataError(
                f"no DATA= given, Sentiment140 could not be downloaded ({type(e).__name__}: {e}) "
                f"and the bundled sample {BUNDLED_SAMPLE} is missing: pass DATA=/path/to/tweets.csv"
            ) from e
        banner = "!" * 78
        msg = (
            f"\n{banner}\n  No DATA= given and Sentiment140 could not be downloaded ({type(e).__name__}: {e}).\n"
            f"  Training on the BUNDLED SAMPLE: {BUNDLED_SAMPLE.name}, 20,000 real Sentiment140 tweets\n"
            f"  (tests/data/README.md). A usable first model, not the best one: re-run with\n"
            f"  DATA=/path/to/training.1600000.processed.noemoticon.csv for the full corpus.\n{banner}\n"
        )
        print(msg, flush=True)
        log.warning(msg)
        return BUNDLED_SAMPLE
