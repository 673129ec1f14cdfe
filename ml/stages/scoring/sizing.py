"""Automatic shard size (``shard_rows=0``): one shard per available CPU, from an estimate of the
input's row count."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq

from ml.data.read import detect_format


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


#: auto-sized shards never go below this: a shard's fixed cost (a task process, loading the
#: model) must stay small against its scoring time
MIN_AUTO_SHARD_ROWS = 50_000


def estimate_rows(path: Path, fmt: str | None = None) -> int:
    """Rows in ``path``: exact for Parquet (metadata), else file size / mean line length of the
    first MiB."""
    fmt = fmt or detect_format(path)
    if fmt == "parquet":
        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception:  # noqa: BLE001 - unreadable: the reader says why
            return 0
    size = path.stat().st_size
    if size <= 4 << 20:  # small: count
        with path.open("rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    # large: mean line length from 256 KiB at 8 places (files are often sorted, e.g. by label)
    sampled = lines = 0
    with path.open("rb") as f:
        for i in range(8):
            f.seek(int((size - (256 << 10)) * i / 7))
            block = f.read(256 << 10)
            sampled += len(block)
            lines += block.count(b"\n")
    return int(size * lines / sampled) if sampled else 0


def auto_shard_rows(path: Path, fmt: str | None = None, workers: int | None = None) -> int:
    """Shard size for ``shard_rows=0``: one shard per available CPU (each mapped task pays a
    process start and a model load once), never smaller than MIN_AUTO_SHARD_ROWS. (The plan lets
    the last auto-sized shard grow by AUTO_TAIL_SLACK instead of leaving a tiny extra shard when
    the estimate is a little low.)"""
    workers = workers or available_cpus()
    est = estimate_rows(path, fmt)
    return max(MIN_AUTO_SHARD_ROWS, -(-est // workers))


#: an auto-sized plan folds a remainder of up to this share of a shard into the last shard
AUTO_TAIL_SLACK = 0.1
