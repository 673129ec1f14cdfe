"""Finalize a batch: check every shard is done, merge the scored parts into one Parquet (with the
prediction ids and the API's label names) in the batch's own folder, store the summary; copy it
where the caller asks (:func:`copy_output`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ml.data import DataError
from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.stages.scoring.files import batch_dir, make_private_dir, output_root
from ml.stages.serving import label_name
from ml.store import batches as store

#: the scored file of a batch, in its folder ``<output root>/<batch id>/``
OUTPUT_NAME = "scored.parquet"

log = logging.getLogger(__name__)


def finalize(batch_id: str, settings: Settings | None = None) -> dict:
    """Check every shard is done, merge the scored parts into one Parquet in the batch's folder
    (``<batch_output_root or var/batches>/<batch id>/scored.parquet``, 0600), and store the
    summary. Never writes beside the input."""
    s = settings or get_settings()
    with db.connect(s) as conn:
        b = store.finalize_inputs(conn, batch_id)
    if b is None:
        raise DataError(f"unknown batch {batch_id}")
    if b["status"] == "done":
        return b["summary"]
    if b["status"] == "failed":
        raise DataError((b["summary"] or {}).get("error") or f"batch {batch_id} failed at its plan")
    shards = b["shards"]
    not_done = [sh[0] for sh in shards if sh[1] != "done"]
    if not_done:
        raise RuntimeError(f"batch {batch_id}: shards {not_done} are not scored; retry them")
    n_scored, n_pos, seconds, first_rejects = b["n_scored"], b["n_positive"], b["seconds"], b["first_rejects"]

    input_path = Path(b["input_path"])
    out = make_private_dir(batch_dir(batch_id, s)) / OUTPUT_NAME
    with db.connect(s) as conn:
        ids = [store.prediction_ids(conn, batch_id, int(sh[3]), int(sh[4])) for sh in shards]
    _merge_parts([Path(sh[2]) for sh in shards], ids, out)
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


def output_destination(dest: str | Path, batch_id: str, confine: bool = True, settings: Settings | None = None) -> Path:
    """Where :func:`copy_output` writes ``dest``: a ``.parquet`` file path, or an existing folder
    (then ``<folder>/<batch id>.scored.parquet``); :class:`DataError` when it may not.

    ``confine=True`` (the DAG's ``output_path`` param: whoever triggers a run writes with the
    worker's rights): ``dest`` must resolve under the output root (a relative ``dest`` is taken
    from it). ``confine=False`` (``ml score --output``: the operator's own command, run with the
    operator's own rights): anywhere this account can write."""
    root = output_root(settings).resolve()
    d = Path(dest).expanduser()
    if confine and not d.is_absolute():
        d = root / d
    d = d.resolve()
    if d.is_dir():
        d = d / f"{batch_id}.scored.parquet"
    if confine and not d.is_relative_to(root):
        raise DataError(
            f"output_path {dest} is outside the batch output folder {root}: give a path under it (or relative"
            " to it), or set batch_output_root"
        )
    if d.suffix.lower() not in (".parquet", ".pq"):
        raise DataError(f"output {dest}: the scored file is Parquet; give a path ending in .parquet, or a folder")
    if not confine and not d.parent.is_dir():
        raise DataError(f"output {dest}: folder {d.parent} does not exist")
    return d


def copy_output(summary: dict, dest: str | Path, confine: bool = True, settings: Settings | None = None) -> Path:
    """Copy a batch's scored file to ``dest`` (see :func:`output_destination`), 0600, under a
    temporary name then renamed; returns where."""
    d = output_destination(dest, summary["batch_id"], confine, settings)
    src = Path(summary["output"])
    if src.resolve() == d:
        return d
    if confine:
        make_private_dir(d.parent)
    tmp = d.with_name(f".{d.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f, src.open("rb") as r:
            shutil.copyfileobj(r, f)
        tmp.replace(d)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"output {dest}: cannot write it ({e.strerror or e})") from e
    log.info("batch %s: scored file copied to %s", summary["batch_id"], d)
    return d


def _merge_parts(shard_files: list[Path], shard_ids: list[list[tuple[int, str]]], out: Path) -> None:
    """One Parquet of every scored row, in input order: each shard's texts (its shard file) beside
    its scores (its ``.scored.parquet`` part, same rows in the same order) and the ids of its rows in
    ``predictions``; labels named as the API names them. Written 0600 to a temporary name and
    renamed, so a reader never sees half a file."""
    schema = pa.schema(
        [
            ("source_row", pa.int64()),
            ("prediction_id", pa.string()),
            ("text", pa.string()),
            ("label", pa.string()),
            ("label_id", pa.int8()),
            ("p_negative", pa.float32()),
            ("p_positive", pa.float32()),
            ("model_version", pa.int32()),
        ]
    )
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # created 0600 before a byte is written
    with pq.ParquetWriter(tmp, schema) as writer:
        for shard_file, ids in zip(shard_files, shard_ids, strict=True):
            t = pq.read_table(shard_file.with_suffix(".scored.parquet"))
            src_rows = t.column("source_row").to_pylist()
            if "text" in t.column_names:  # parts of an earlier version held the texts too
                texts = t.column("text")
            else:
                src = pq.read_table(shard_file, columns=["source_row", "text"])
                if not src.column("source_row").equals(t.column("source_row")):
                    raise RuntimeError(f"{shard_file}: its scored part does not hold the shard's rows in order")
                texts = src.column("text")
            if [r for r, _ in ids] != src_rows:
                raise RuntimeError(f"{shard_file}: its rows in predictions are not the rows of its scored part")
            label_ids = t.column("label").to_pylist()
            writer.write_table(
                pa.table(
                    {
                        "source_row": t.column("source_row").cast(pa.int64()),
                        "prediction_id": pa.array([i for _, i in ids], pa.string()),
                        "text": texts.cast(pa.string()),
                        "label": pa.array([label_name(x) for x in label_ids], pa.string()),
                        "label_id": pa.array(label_ids, pa.int8()),
                        "p_negative": t.column("p_negative").cast(pa.float32()),
                        "p_positive": t.column("p_positive").cast(pa.float32()),
                        "model_version": t.column("model_version").cast(pa.int32()),
                    },
                    schema=schema,
                )
            )
    tmp.replace(out)
