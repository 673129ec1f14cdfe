"""Score one shard with the batch's fixed model version: its rows replaced in PostgreSQL in one
transaction (idempotent, retry-safe) and its scored part file (the scores, keyed by source row)
written."""

from __future__ import annotations

import binascii
import logging
import posixpath
import secrets
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ml.data import DataError
from ml.models.base import SentimentModel, decide
from ml.platform import db, registry, tracking
from ml.platform.config import Settings, get_settings
from ml.platform.storage import reading
from ml.stages.scoring.files import batches_store, model_dir
from ml.store import batches as store

log = logging.getLogger(__name__)

_MODEL_CACHE: dict[tuple[str, str, int, str | None], SentimentModel] = {}  # one entry: the batch in progress


def _model(batch_id: str, version: int, model_sha256: str | None, settings: Settings) -> SentimentModel:
    """The batch's model: the plan's verified copy in the batch folder (re-hashed before it is
    unpickled; fetched again if missing or altered), loaded without MLflow. A process scoring
    several shards of one batch (``ml score --workers 1``) loads it once."""
    key = (batch_id, settings.model_name, version, model_sha256)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        if model_sha256 is None:  # planned before batches recorded digests: the registry's copy
            tracking.configure(settings)
            _MODEL_CACHE[key] = registry.load_version(version, settings)
        else:
            local = registry.fetch_verified(version, model_sha256, model_dir(batch_id, settings), settings)
            _MODEL_CACHE[key] = registry.load_local(local)
    return _MODEL_CACHE[key]


def score_shard(batch_id: str, shard: int, chunk_rows: int = 50_000, settings: Settings | None = None) -> dict:
    """Score one shard with the batch's fixed model version; replace the shard's rows in
    PostgreSQL in one transaction (idempotent, retry-safe); write the scored part file."""
    s = settings or get_settings()
    with db.connect(s) as conn:
        row = store.start_shard(conn, batch_id, shard)
    if row is None:
        raise DataError(f"unknown shard {shard} of batch {batch_id}")
    model_name, version, model_sha256, shard_path, first_row, last_row, status = row
    if model_name != s.model_name:
        s = s.model_copy(update={"model_name": model_name})
    model = _model(batch_id, version, model_sha256, s)
    t0 = time.perf_counter()
    t_pred = 0.0
    n = 0
    part = posixpath.basename(shard_path).removesuffix(".parquet") + ".scored.parquet"
    # streamed chunk by chunk (memory does not grow with the shard): read a chunk of texts, predict it,
    # append its scores to the scored part (one row group) and COPY it -- all the shard's rows in one
    # transaction (committed after the part is complete)
    with db.connect(s) as conn:
        # one writer per shard at a time (two runs of the same content): the second waits here,
        # then sees the first's rows and upserts over them -- never a duplicate row
        store.lock_shard(conn, batch_id, shard)
        upsert = store.shard_has_rows(conn, batch_id, first_row, last_row)  # a retry or a forced re-score
        with (
            reading(shard_path) as f,  # the shared store: written by the plan, maybe on another host
            batches_store(s).writer(batch_id, "shards", part) as out,  # atomic, private
            pq.ParquetWriter(out, SCORES_SCHEMA) as scored,
        ):
            for chunk in pq.ParquetFile(f).iter_batches(batch_size=chunk_rows, columns=["source_row", "text"]):
                tp = time.perf_counter()
                proba = np.asarray(model.predict_proba(chunk.column("text").to_pylist()))
                t_pred += time.perf_counter() - tp
                scores = _scores(chunk.column("source_row"), proba, version)
                # the scores only: finalize takes the texts from the shard file (written once, not twice)
                scored.write_table(scores)
                store.copy_scored_csv(conn, _csv_rows(chunk, scores, model_name, batch_id, n), upsert)
                n += chunk.num_rows
        store.finish_shard(conn, batch_id, shard, n, time.perf_counter() - t0)
    secs = time.perf_counter() - t0
    log.info(
        "batch %s shard %d: %s rows scored with v%s in %.2fs (predict %.2fs, %s rows/s)",
        batch_id,
        shard,
        f"{n:,}",
        version,
        secs,
        t_pred,
        f"{n / max(secs, 1e-9):,.0f}",
    )
    return {"batch_id": batch_id, "shard": shard, "rows": n, "seconds": secs}


#: a scored part: the scores of a shard's rows, keyed by source row (finalize adds the texts and ids)
SCORES_SCHEMA = pa.schema(
    [
        ("source_row", pa.int64()),
        ("label", pa.int8()),
        ("p_negative", pa.float32()),
        ("p_positive", pa.float32()),
        ("model_version", pa.int32()),
    ]
)
_CSV = pacsv.WriteOptions(include_header=False)


def _scores(source_row: pa.Array, proba: np.ndarray, version: int) -> pa.Table:
    proba = proba.reshape(-1, 2)
    return pa.table(
        {
            "source_row": source_row.cast(pa.int64()),
            "label": decide(proba[:, 1]).astype(np.int8),
            "p_negative": proba[:, 0].astype(np.float32),
            "p_positive": proba[:, 1].astype(np.float32),
            "model_version": np.full(len(proba), version, np.int32),
        },
        schema=SCORES_SCHEMA,
    )


def row_ids(n: int, offset: int = 0) -> pa.StringArray:
    """``n`` prediction ids (UUIDv7 layout, RFC 9562, as 32 hex digits): this millisecond, then the row's
    position ``offset + i`` in the shard (26 bits, method 1's counter), then 48 random bits. They grow
    along the shard, so the primary key's index takes them at its end (random ``gen_random_uuid()`` ids
    touch a random index page per row: about 40% of the COPY's database CPU). Built without a Python
    object per row."""
    b = np.empty((n, 16), np.uint8)
    ms = int(time.time() * 1000)
    b[:, :6] = np.frombuffer(ms.to_bytes(8, "big")[2:], np.uint8)
    c = np.arange(offset, offset + n, dtype=np.uint64) & np.uint64((1 << 26) - 1)
    b[:, 6] = (0x70 | ((c >> np.uint64(22)) & np.uint64(0x0F))).astype(np.uint8)
    b[:, 7] = ((c >> np.uint64(14)) & np.uint64(0xFF)).astype(np.uint8)
    b[:, 8] = (0x80 | ((c >> np.uint64(8)) & np.uint64(0x3F))).astype(np.uint8)
    b[:, 9] = (c & np.uint64(0xFF)).astype(np.uint8)
    b[:, 10:] = np.frombuffer(secrets.token_bytes(6 * n), np.uint8).reshape(n, 6)
    hexed = binascii.hexlify(b.tobytes())
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(hexed))


def _const(value: str, n: int) -> pa.Array:
    return pc.take(pa.array([value], pa.string()), pa.array(np.zeros(n, np.int32)))


def _csv_rows(chunk: pa.RecordBatch, scores: pa.Table, model_name: str, batch_id: str, offset: int) -> pa.Buffer:
    """A chunk's rows for ``predictions`` as CSV (:data:`ml.store.batches.CSV_COLUMNS`), written by
    Arrow: no Python object per row."""
    n = chunk.num_rows
    table = pa.table(
        {
            "id": row_ids(n, offset),
            "text": chunk.column("text").cast(pa.string()),
            "label": scores.column("label"),
            "p_negative": scores.column("p_negative"),
            "p_positive": scores.column("p_positive"),
            "model_name": _const(model_name, n),
            "model_version": scores.column("model_version"),
            "source": _const("batch", n),
            "batch_id": _const(batch_id, n),
            "source_row": scores.column("source_row"),
        }
    )
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, _CSV)
    return sink.getvalue()
