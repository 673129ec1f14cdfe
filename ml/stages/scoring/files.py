"""A batch's files: inputs read through the one tweet reader, their content hash, the batch folder."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ml.data.read import iter_records
from ml.platform.config import Settings, get_settings


def iter_rows(
    path: Path, fmt: str | None = None, encoding: Counter | None = None
) -> Iterator[tuple[int, str | None, str | None]]:
    """Yield (line/row number, text or None, reject reason or None), through the one tweet
    reader (:func:`ml.data.read.iter_records`) that training uses too."""
    for rec in iter_records(path, encoding, fmt):
        yield rec.line, rec.text, rec.reason


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def batch_dir(batch_id: str, settings: Settings | None = None) -> Path:
    return (settings or get_settings()).var / "batches" / batch_id
