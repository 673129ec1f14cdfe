"""Score one shard with the batch's fixed model version: its rows replaced in PostgreSQL in one
transaction (idempotent, retry-safe) and its scored part file (the scores, keyed by source row)
written."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ml.data import DataError
from ml.models.base import decide
from ml.platform import db, registry, tracking
from ml.platform.config import Settings, get_settings
from ml.stages.scoring.files import batch_dir
from ml.store import batches as store

log = logging.getLogger(__name__)

_MODEL_CACHE: dict[tuple[str, str, int, str | None], Any] = {}  # one entry: the batch in progress


def _model(batch_id: str, version: int, model_sha256: str | None, s: Settings):
    """The batch's model: the plan's verified copy in the batch folder (re-hashed before it is
    unpickled; fetched again if missing or altered), loaded without MLflow. A process scoring
    several shards of one batch (``ml score --workers 1``) loads it once."""
    key = (batch_id, s.model_name, version, model_sha256)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        if model_sha256 is None:  # planned before batches recorded digests: the registry's copy
            tracking.configure(s)
            _MODEL_CACHE[key] = registry.load_version(version, s)
        else:
            local = registry.fetch_verified(version, model_sha256, batch_dir(batch_id, s) / "model", s)
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
    table = pq.read_table(shard_path)
    texts = table.column("text").to_pylist()
    src = table.column("source_row").to_numpy()
    parts = []
    for i in range(0, len(texts), chunk_rows):
        parts.append(model.predict_proba(texts[i : i + chunk_rows]))
    proba = np.vstack(parts) if parts else np.zeros((0, 2))
    labels = decide(proba[:, 1])
    t_pred = time.perf_counter() - t0

    pq.write_table(  # the scores only: finalize takes the texts from the shard file (written once, not twice)
        pa.table(
            {
                "source_row": src,
                "label": labels,
                "p_negative": proba[:, 0].astype(np.float32),
                "p_positive": proba[:, 1].astype(np.float32),
                "model_version": np.full(len(texts), version, np.int32),
            }
        ),
        Path(shard_path).with_suffix(".scored.parquet"),
    )
    pn, pp, lab, srcl = proba[:, 0].tolist(), proba[:, 1].tolist(), labels.tolist(), src.tolist()
    rows = (
        (texts[i], lab[i], pn[i], pp[i], model_name, version, "batch", batch_id, srcl[i]) for i in range(len(texts))
    )
    with db.connect(s) as conn:
        # one writer per shard at a time (two runs of the same content): the second waits here,
        # then sees the first's rows and upserts over them -- never a duplicate row
        store.lock_shard(conn, batch_id, shard)
        if not store.shard_has_rows(conn, batch_id, first_row, last_row):  # the usual case: one COPY
            store.copy_scored(conn, rows)
        else:  # a retry or a forced re-score: upsert, keeping ids (feedback may reference them)
            store.upsert_scored(conn, rows)
        store.finish_shard(conn, batch_id, shard, len(texts), time.perf_counter() - t0)
    secs = time.perf_counter() - t0
    log.info(
        "batch %s shard %d: %s rows scored with v%s in %.2fs (predict %.2fs, %s rows/s)",
        batch_id,
        shard,
        f"{len(texts):,}",
        version,
        secs,
        t_pred,
        f"{len(texts) / max(secs, 1e-9):,.0f}",
    )
    return {"batch_id": batch_id, "shard": shard, "rows": len(texts), "seconds": secs}
