"""Finalize a batch: check every shard is done, merge the scored parts into one Parquet (with the
prediction ids and the API's label names) in the batch's own folder, store the summary; copy it
where the caller asks (:func:`copy_output`)."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ml.data import DataError
from ml.models.base import label_name
from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.platform.storage import SharedStore, open_url, reading
from ml.stages.scoring.files import batches_store, make_private_dir, model_dir, output_root
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
    bstore = batches_store(s)  # the shared store: the shards' parts may come from several hosts
    out = bstore.where(batch_id, OUTPUT_NAME)
    with db.connect(s) as conn:  # the ids are read chunk by chunk beside the parts
        _merge_parts([str(sh[2]) for sh in shards], conn, bstore, batch_id)
    summary = {
        "batch_id": batch_id,
        "input": str(input_path),
        "output": out,
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
        store.mark_done(conn, batch_id, out, summary)
    shutil.rmtree(model_dir(batch_id, s), ignore_errors=True)  # the plan's model copy (a re-score fetches anew)
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


def copy_output(summary: dict, dest: str | Path, confine: bool = True, settings: Settings | None = None) -> Path | str:
    """Copy a batch's scored file to ``dest`` (see :func:`output_destination`), 0600, under a
    temporary name then renamed; returns where (a URL when the batches are on an object store: ``dest``
    is then a key under their root)."""
    bstore = batches_store(settings)
    if confine and not bstore.is_local:  # the output root is an object store: a key under it
        key = posixpath.normpath(str(dest).strip("/"))
        if str(dest).startswith("/") or key.startswith("..") or not key.lower().endswith((".parquet", ".pq")):
            raise DataError(
                f"output_path {dest}: give a .parquet path relative to the batch output root {bstore.where()}"
            )
        with open_url(summary["output"]) as r, bstore.writer(key) as w:
            shutil.copyfileobj(r, w, 1 << 20)
        return bstore.where(key)
    d = output_destination(dest, summary["batch_id"], confine, settings)
    src = summary["output"]
    if "://" not in src and Path(src).resolve() == d:
        return d
    if confine:
        make_private_dir(d.parent)
    tmp = d.with_name(f".{d.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f, open_url(src) as r:
            shutil.copyfileobj(r, f)
        tmp.replace(d)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"output {dest}: cannot write it ({e.strerror or e})") from e
    log.info("batch %s: scored file copied to %s", summary["batch_id"], d)
    return d


#: rows merged at a time: what finalize holds in memory, whatever the batch's size
MERGE_CHUNK_ROWS = 50_000


def _merge_parts(shard_files: list[str], conn: psycopg.Connection, bstore: SharedStore, batch_id: str) -> None:
    """One Parquet of every scored row, in input order: each shard's texts (its shard file) beside
    its scores (its ``.scored.parquet`` part, same rows in the same order) and the ids of its rows in
    ``predictions``; labels named as the API names them. Streamed :data:`MERGE_CHUNK_ROWS` rows at a
    time (one row group each; the ids read by COPY for the chunk's rows), so memory does not grow with
    the batch. Written 0600 to a temporary name and renamed, so a reader never sees half a file."""
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
    names = pa.array([label_name(0), label_name(1)], pa.string())
    bstore.makedirs(batch_id)
    # written through the store: 0600 under a temporary name (local) and renamed / uploaded whole (object store)
    with bstore.writer(batch_id, OUTPUT_NAME) as f, pq.ParquetWriter(f, schema) as writer:
        for shard_file in shard_files:
            with (
                reading(shard_file.removesuffix(".parquet") + ".scored.parquet") as part,
                reading(shard_file) as sf,
            ):
                scored = pq.ParquetFile(part)
                old = "text" in scored.schema_arrow.names  # parts of an earlier version held the texts too
                texts = (
                    None
                    if old
                    else _Rows(pq.ParquetFile(sf).iter_batches(MERGE_CHUNK_ROWS, columns=["source_row", "text"]))
                )
                for t in scored.iter_batches(MERGE_CHUNK_ROWS):
                    src_rows = t.column("source_row").cast(pa.int64())
                    if texts is None:
                        text = t.column("text")
                    else:
                        src = texts.take(t.num_rows)
                        if not src.column("source_row").combine_chunks().cast(pa.int64()).equals(src_rows):
                            raise RuntimeError(f"{shard_file}: its scored part does not hold the shard's rows in order")
                        text = src.column("text")
                    ids = _ids(conn, batch_id, src_rows)
                    if not ids.column("source_row").combine_chunks().equals(src_rows):
                        raise RuntimeError(f"{shard_file}: its rows in predictions are not the rows of its scored part")
                    label_ids = t.column("label").cast(pa.int8())
                    writer.write_table(
                        pa.table(
                            {
                                "source_row": src_rows,
                                "prediction_id": ids.column("prediction_id"),
                                "text": text.cast(pa.string()),
                                "label": pc.take(names, label_ids),
                                "label_id": label_ids,
                                "p_negative": t.column("p_negative").cast(pa.float32()),
                                "p_positive": t.column("p_positive").cast(pa.float32()),
                                "model_version": t.column("model_version").cast(pa.int32()),
                            },
                            schema=schema,
                        )
                    )
                if texts is not None and texts.take(1).num_rows:
                    raise RuntimeError(f"{shard_file}: its scored part does not hold the shard's rows in order")


_IDS_READ = pacsv.ReadOptions(column_names=["source_row", "prediction_id"])
_IDS_CONVERT = pacsv.ConvertOptions(column_types={"source_row": pa.int64(), "prediction_id": pa.string()})


def _ids(conn: psycopg.Connection, batch_id: str, src_rows: pa.Array) -> pa.Table:
    """(source_row, prediction_id) of the stored rows from the chunk's first to its last source row."""
    if not len(src_rows):
        return pa.table({"source_row": pa.array([], pa.int64()), "prediction_id": pa.array([], pa.string())})
    data = store.prediction_ids_csv(conn, batch_id, src_rows[0].as_py(), src_rows[-1].as_py())
    return pacsv.read_csv(pa.BufferReader(data), read_options=_IDS_READ, convert_options=_IDS_CONVERT)


class _Rows:
    """Record batches re-cut to the sizes asked for (a shard file's texts beside its scored part)."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._it = batches
        self._pending: list[pa.RecordBatch] = []
        self._n = 0

    def take(self, n: int) -> pa.Table:
        while self._n < n:
            b = next(self._it, None)
            if b is None:
                break
            self._pending.append(b)
            self._n += b.num_rows
        t = pa.Table.from_batches(self._pending) if self._pending else pa.table({"source_row": [], "text": []})
        head, rest = t.slice(0, n), t.slice(n)
        self._pending, self._n = rest.to_batches(), rest.num_rows
        return head
