"""Finalize a batch: check every shard is done, merge the scored parts into one Parquet, store
the summary."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ml.data import DataError
from ml.platform.config import Settings, get_settings
from ml.stages.scoring.files import batch_dir
from ml.store import batches as store

log = logging.getLogger(__name__)


def finalize(batch_id: str, settings: Settings | None = None) -> dict:
    """Check every shard is done, merge the scored parts into one Parquet beside the input
    (or under var/batches/ when that folder is read-only), and store the summary."""
    from ml.platform import db

    s = settings or get_settings()
    with db.connect(s) as conn:
        b = store.finalize_inputs(conn, batch_id)
    if b is None:
        raise DataError(f"unknown batch {batch_id}")
    if b["status"] == "done":
        return b["summary"]
    shards = b["shards"]
    not_done = [sh[0] for sh in shards if sh[1] != "done"]
    if not_done:
        raise RuntimeError(f"batch {batch_id}: shards {not_done} are not scored; retry them")
    n_scored, n_pos, seconds, first_rejects = b["n_scored"], b["n_positive"], b["seconds"], b["first_rejects"]

    input_path = Path(b["input_path"])
    out_name = input_path.name + ".scored.parquet"  # a.csv and a.txt in one folder never collide
    out = input_path.with_name(out_name)
    if not _writable(input_path.parent):  # e.g. a read-only data share: keep the output under var/
        out = batch_dir(batch_id, s) / out_name
    _merge_parts([Path(sh[2]) for sh in shards], out)
    summary = {
        "batch_id": batch_id,
        "input": str(input_path),
        "output": str(out),
        "model_version": b["model_version"],
        "rows_read": int(b["rows_read"]),
        "rows_scored": n_scored,
        "rows_rejected": int(b["rows_rejected"]),
        "label_counts": {"negative": n_scored - n_pos, "positive": n_pos},
        "positive_share": round(n_pos / n_scored, 4) if n_scored else None,
        "shards": len(shards),
        "seconds": round(float(seconds), 2),
        "rows_per_second": round(n_scored / float(seconds), 1) if seconds else None,
        "first_rejects": [{"line": int(line), "reason": r} for line, r in first_rejects],
    }
    if summary["rows_read"] != n_scored + summary["rows_rejected"]:
        raise RuntimeError(
            f"batch {batch_id}: {n_scored} scored + {b['rows_rejected']} rejected != {b['rows_read']} read"
        )
    with db.connect(s) as conn:
        store.mark_done(conn, batch_id, str(out), summary)
    shutil.rmtree(
        batch_dir(batch_id, s) / "model", ignore_errors=True
    )  # the plan's model copy (a re-score fetches anew)
    log.info("batch %s done: %s", batch_id, json.dumps(summary))
    return summary


def _writable(folder: Path) -> bool:
    """Writable for us *and* not marked read-only (root passes os.access on a r-x folder)."""
    import os

    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _merge_parts(shard_files: list[Path], out: Path) -> None:
    """One Parquet of every scored row, in input order: each shard's texts (its shard file) beside
    its scores (its ``.scored.parquet`` part, same rows in the same order), written to a temporary
    name and renamed, so a reader never sees half a file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = out.with_name(out.name + ".tmp")
    writer = None
    try:
        for shard_file in shard_files:
            t = pq.read_table(shard_file.with_suffix(".scored.parquet"))
            if "text" not in t.column_names:  # parts of this version hold the scores only
                src = pq.read_table(shard_file, columns=["source_row", "text"])
                if not src.column("source_row").equals(t.column("source_row")):
                    raise RuntimeError(f"{shard_file}: its scored part does not hold the shard's rows in order")
                t = t.add_column(1, "text", src.column("text"))
            if writer is None:
                writer = pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no scorable rows at all
        pq.write_table(pa.table({"source_row": pa.array([], pa.int64()), "text": pa.array([], pa.string())}), tmp)
    tmp.replace(out)
