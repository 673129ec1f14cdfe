"""Batch scoring at corpus scale: plan (read + shard) -> score shards (mapped) -> finalize.

- Inputs: Sentiment140 six-column CSV, ``polarity,text`` CSV, one-column text/CSV, Parquet
  (a ``text`` column). Read in bounded chunks; malformed rows are recorded with their line
  number in ``batch_rejects`` and never abort the batch.
- A batch is named by the input's content hash: re-running it never duplicates rows.
- Every shard uses the champion version fixed when the batch was planned.
- Each shard's predictions are written with COPY, replacing that shard's rows in one
  transaction, so a retried shard leaves exactly one row per input row.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ml.config import Settings, get_settings
from ml.data import MAX_FIELD, DataError, _decoded_lines

log = logging.getLogger(__name__)

csv.field_size_limit(MAX_FIELD)
SCORE_COLUMNS = ("text", "label", "p_negative", "p_positive", "model_name", "model_version", "source", "batch_id",
                 "source_row")


# ---------------------------------------------------------------- reading inputs
def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".txt", ".text"):
        return "text"
    return "csv"


def _checked(line: int, text: str) -> tuple[int, str | None, str | None]:
    if not text:
        return line, None, "empty text"
    if "\x00" in text:  # PostgreSQL text cannot hold NUL: reject the row, never the batch
        return line, None, "NUL byte in text"
    return line, text, None


def iter_rows(path: Path, fmt: str) -> Iterator[tuple[int, str | None, str | None]]:
    """Yield (line/row number, text or None, reject reason or None)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise DataError(f"{path}: Parquet input needs a 'text' column, found {pf.schema_arrow.names}")
        n = 0
        for batch in pf.iter_batches(batch_size=65536, columns=["text"]):
            for t in batch.column(0).to_pylist():
                n += 1
                yield _checked(n, "" if t is None else str(t).strip())
        return
    counter: dict = {}
    if fmt == "text":
        for n, line in enumerate(_decoded_lines(path, counter), start=1):
            yield _checked(n, line.rstrip("\r\n").strip())
        return
    reader = csv.reader(_decoded_lines(path, counter), strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield reader.line_num, None, f"malformed CSV: {e}"
            continue
        line = reader.line_num
        if not row:
            continue
        if len(row) == 6:
            text = row[5]
        elif len(row) == 2:
            text = row[1]
            if line == 1 and row[0].strip().lower() in {"polarity", "label", "sentiment", "target"}:
                continue
        elif len(row) == 1:
            text = row[0]
            if line == 1 and text.strip().lower() == "text":
                continue
        else:
            yield line, None, f"wrong column count: expected 1, 2 or 6, got {len(row)}"
            continue
        text = text.strip()
        yield _checked(line, text)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- plan
@dataclass
class Plan:
    batch_id: str
    model_version: int
    shards: list[int]
    status: str


def batch_dir(batch_id: str, settings: Settings | None = None) -> Path:
    return (settings or get_settings()).var / "batches" / batch_id


def plan(
    input_path: str | Path,
    shard_rows: int = 200_000,
    airflow_run_id: str | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> Plan:
    """Read the input once in bounded chunks, record rejects, write shard files, fix the
    champion version. A batch already done is not planned again (unless ``force``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml import db, registry, tracking

    s = settings or get_settings()
    path = Path(input_path).expanduser().resolve()
    if not path.exists() or path.is_dir():
        raise DataError(f"batch input not found (or a directory): {path}")
    fmt = detect_format(path)
    digest = file_sha256(path)
    batch_id = f"b-{digest[:16]}"
    with db.connect() as conn:
        row = conn.execute("SELECT status, model_version, n_shards FROM batches WHERE id=%s", (batch_id,)).fetchone()
    if row and row[0] == "done" and not force:
        log.info("batch %s (%s) already scored with v%s: nothing to do", batch_id, path.name, row[1])
        return Plan(batch_id, row[1], [], "done")
    if row and row[0] in ("planned", "scoring") and not force:
        # resume: the shards are on disk, only unfinished ones are scored again
        with db.connect() as conn:
            pending = [r[0] for r in conn.execute(
                "SELECT shard FROM batch_shards WHERE batch_id=%s AND status <> 'done' ORDER BY shard", (batch_id,))]
        log.info("batch %s resumes: %d of %d shards left", batch_id, len(pending), row[2])
        return Plan(batch_id, row[1], [int(p) for p in pending], row[0])

    tracking.configure(s)
    champ = registry.champion(s)
    if champ is None:
        raise RuntimeError("no champion model to score with; train one first (sentiment_training DAG / ml pipeline)")

    out_dir = batch_dir(batch_id, s)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "shards").mkdir(parents=True)
    t0 = time.perf_counter()
    shards: list[dict[str, Any]] = []
    rejects: list[tuple[str, int, str]] = []
    rows_read = 0
    buf_rows: list[int] = []
    buf_text: list[str] = []

    def flush_shard() -> None:
        if not buf_rows:
            return
        i = len(shards)
        p = out_dir / "shards" / f"{i:05d}.parquet"
        pq.write_table(pa.table({"source_row": pa.array(buf_rows, pa.int64()), "text": pa.array(buf_text)}), p)
        shards.append({"shard": i, "path": str(p), "first": buf_rows[0], "last": buf_rows[-1], "n": len(buf_rows)})
        buf_rows.clear()
        buf_text.clear()

    for line, text, reason in iter_rows(path, fmt):
        rows_read += 1
        if reason:
            rejects.append((batch_id, line, reason))
            continue
        buf_rows.append(line)
        buf_text.append(text)  # type: ignore[arg-type]
        if len(buf_rows) >= shard_rows:
            flush_shard()
            log.info("planned %d shards (%s rows read)", len(shards), f"{rows_read:,}")
    flush_shard()

    with db.connect() as conn:
        # a forced re-plan: shards/rejects cascade; the batch's predictions stay (users' feedback may
        # point at them) and are updated in place by the shards, keyed on (batch_id, source_row)
        conn.execute("DELETE FROM batches WHERE id=%s", (batch_id,))
        conn.execute(
            "INSERT INTO batches (id, input_path, input_format, input_sha256, status, model_name, model_version,"
            " n_shards, rows_read, rows_rejected, airflow_run_id) VALUES (%s,%s,%s,%s,'planned',%s,%s,%s,%s,%s,%s)",
            (batch_id, str(path), fmt, digest, s.model_name, champ.version, len(shards), rows_read, len(rejects),
             airflow_run_id),
        )
        with conn.cursor() as cur:
            with cur.copy("COPY batch_shards (batch_id, shard, path, first_row, last_row, n_rows) FROM STDIN") as cp:
                for sh in shards:
                    cp.write_row((batch_id, sh["shard"], sh["path"], sh["first"], sh["last"], sh["n"]))
            with cur.copy("COPY batch_rejects (batch_id, line, reason) FROM STDIN") as cp:
                for r in rejects:
                    cp.write_row(r)
    log.info(
        "batch %s: %s rows read from %s (%s), %s rejected, %d shards, champion v%s (%.1fs)",
        batch_id, f"{rows_read:,}", path.name, fmt, f"{len(rejects):,}", len(shards), champ.version,
        time.perf_counter() - t0,
    )
    return Plan(batch_id, champ.version, [sh["shard"] for sh in shards], "planned")


# ---------------------------------------------------------------- score one shard
_MODEL_CACHE: dict[tuple[str, int], Any] = {}


def _model(version: int, s: Settings):
    from ml import registry, tracking

    key = (s.model_name, version)
    if key not in _MODEL_CACHE:
        tracking.configure(s)
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = registry.load_version(version, s)
    return _MODEL_CACHE[key]


def copy_predictions(conn, rows: Iterator[tuple] | list[tuple]) -> None:
    """Bulk-write prediction rows (in SCORE_COLUMNS order) with COPY."""
    with conn.cursor() as cur:
        with cur.copy(f"COPY predictions ({', '.join(SCORE_COLUMNS)}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)


def score_shard(batch_id: str, shard: int, chunk_rows: int = 50_000, settings: Settings | None = None) -> dict:
    """Score one shard with the batch's fixed model version; replace the shard's rows in
    PostgreSQL in one transaction (idempotent, retry-safe); write the scored part file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml import db

    s = settings or get_settings()
    with db.connect() as conn:
        row = conn.execute(
            "SELECT b.model_name, b.model_version, sh.path, sh.first_row, sh.last_row, sh.status FROM batches b"
            " JOIN batch_shards sh ON sh.batch_id = b.id WHERE b.id=%s AND sh.shard=%s",
            (batch_id, shard),
        ).fetchone()
        if row is None:
            raise DataError(f"unknown shard {shard} of batch {batch_id}")
        conn.execute("UPDATE batch_shards SET attempts = attempts + 1 WHERE batch_id=%s AND shard=%s", (batch_id, shard))
        conn.execute("UPDATE batches SET status='scoring' WHERE id=%s AND status='planned'", (batch_id,))
    model_name, version, shard_path, first_row, last_row, status = row
    if model_name != s.model_name:
        s = s.model_copy(update={"model_name": model_name})
    model = _model(version, s)
    t0 = time.perf_counter()
    table = pq.read_table(shard_path)
    texts = table.column("text").to_pylist()
    src = table.column("source_row").to_numpy()
    parts = []
    for i in range(0, len(texts), chunk_rows):
        parts.append(model.predict_proba(texts[i:i + chunk_rows]))
    proba = np.vstack(parts) if parts else np.zeros((0, 2))
    labels = (proba[:, 1] >= 0.5).astype(np.int8)
    t_pred = time.perf_counter() - t0

    pq.write_table(
        pa.table({"source_row": src, "text": texts, "label": labels, "p_negative": proba[:, 0].astype(np.float32),
                  "p_positive": proba[:, 1].astype(np.float32), "model_version": np.full(len(texts), version, np.int32)}),
        Path(shard_path).with_suffix(".scored.parquet"),
    )
    pn, pp, lab, srcl = proba[:, 0].tolist(), proba[:, 1].tolist(), labels.tolist(), src.tolist()
    rows = ((texts[i], lab[i], pn[i], pp[i], model_name, version, "batch", batch_id, srcl[i]) for i in range(len(texts)))
    with db.connect() as conn:
        scored_before = conn.execute(
            "SELECT 1 FROM predictions WHERE batch_id=%s AND source_row BETWEEN %s AND %s LIMIT 1",
            (batch_id, first_row, last_row)).fetchone()
        if scored_before is None:  # the usual case: one COPY straight into the table
            copy_predictions(conn, rows)
        else:  # a retry or a forced re-score: upsert, keeping ids (feedback may reference them)
            _upsert_predictions(conn, rows)
        conn.execute(
            "UPDATE batch_shards SET status='done', rows_scored=%s, seconds=%s, finished_at=now()"
            " WHERE batch_id=%s AND shard=%s",
            (len(texts), time.perf_counter() - t0, batch_id, shard),
        )
    secs = time.perf_counter() - t0
    log.info("batch %s shard %d: %s rows scored with v%s in %.2fs (predict %.2fs, %s rows/s)",
             batch_id, shard, f"{len(texts):,}", version, secs, t_pred, f"{len(texts) / max(secs, 1e-9):,.0f}")
    return {"batch_id": batch_id, "shard": shard, "rows": len(texts), "seconds": secs}


def _upsert_predictions(conn, rows) -> None:
    """COPY into a temporary table, then insert-or-update on (batch_id, source_row)."""
    conn.execute("CREATE TEMP TABLE scored_rows (LIKE predictions INCLUDING DEFAULTS) ON COMMIT DROP")
    with conn.cursor() as cur:
        with cur.copy(f"COPY scored_rows ({', '.join(SCORE_COLUMNS)}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
    cols = ", ".join(SCORE_COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in SCORE_COLUMNS if c not in ("batch_id", "source_row"))
    conn.execute(
        f"INSERT INTO predictions (id, created_at, {cols}) SELECT id, created_at, {cols} FROM scored_rows"
        f" ON CONFLICT (batch_id, source_row) WHERE batch_id IS NOT NULL DO UPDATE SET {updates},"
        " created_at = now()"
    )


# ---------------------------------------------------------------- finalize
def finalize(batch_id: str, settings: Settings | None = None) -> dict:
    """Check every shard is done, merge the scored parts into one Parquet beside the input
    (or under var/batches/ when that folder is read-only), and store the summary."""
    from ml import db

    s = settings or get_settings()
    with db.connect() as conn:
        b = conn.execute(
            "SELECT input_path, model_version, rows_read, rows_rejected, created_at, status, summary FROM batches"
            " WHERE id=%s", (batch_id,),
        ).fetchone()
        if b is None:
            raise DataError(f"unknown batch {batch_id}")
        if b[5] == "done":
            return b[6]
        shards = conn.execute("SELECT shard, status, path FROM batch_shards WHERE batch_id=%s ORDER BY shard",
                              (batch_id,)).fetchall()
        not_done = [sh[0] for sh in shards if sh[1] != "done"]
        if not_done:
            raise RuntimeError(f"batch {batch_id}: shards {not_done} are not scored; retry them")
        n_scored, n_pos = conn.execute(
            "SELECT count(*), coalesce(sum(label), 0) FROM predictions WHERE batch_id=%s", (batch_id,)).fetchone()
        first_rejects = conn.execute(
            "SELECT line, reason FROM batch_rejects WHERE batch_id=%s ORDER BY line LIMIT 20", (batch_id,)).fetchall()
        seconds = conn.execute("SELECT extract(epoch FROM now() - %s)", (b[4],)).fetchone()[0]

    input_path = Path(b[0])
    out_name = input_path.name + ".scored.parquet"  # a.csv and a.txt in one folder never collide
    out = input_path.with_name(out_name)
    if not _writable(input_path.parent):  # e.g. a read-only data share: keep the output under var/
        out = batch_dir(batch_id, s) / out_name
    _merge_parts([Path(sh[2]).with_suffix(".scored.parquet") for sh in shards], out)
    n_scored, n_pos = int(n_scored), int(n_pos)
    summary = {
        "batch_id": batch_id,
        "input": str(input_path),
        "output": str(out),
        "model_version": b[1],
        "rows_read": int(b[2]),
        "rows_scored": n_scored,
        "rows_rejected": int(b[3]),
        "label_counts": {"negative": n_scored - n_pos, "positive": n_pos},
        "positive_share": round(n_pos / n_scored, 4) if n_scored else None,
        "shards": len(shards),
        "seconds": round(float(seconds), 2),
        "rows_per_second": round(n_scored / float(seconds), 1) if seconds else None,
        "first_rejects": [{"line": int(line), "reason": r} for line, r in first_rejects],
    }
    if summary["rows_read"] != n_scored + summary["rows_rejected"]:
        raise RuntimeError(f"batch {batch_id}: {n_scored} scored + {b[3]} rejected != {b[2]} read")
    with db.connect() as conn:
        conn.execute(
            "UPDATE batches SET status='done', output_path=%s, rows_scored=%s, label_counts=%s, rows_per_second=%s,"
            " summary=%s, finished_at=now() WHERE id=%s",
            (str(out), n_scored, json.dumps(summary["label_counts"]), summary["rows_per_second"], json.dumps(summary),
             batch_id),
        )
    log.info("batch %s done: %s", batch_id, json.dumps(summary))
    return summary


def _writable(folder: Path) -> bool:
    """Writable for us *and* not marked read-only (root passes os.access on a r-x folder)."""
    import os

    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _merge_parts(parts: list[Path], out: Path) -> None:
    import pyarrow.parquet as pq

    tmp = out.with_name(out.name + ".tmp")
    writer = None
    try:
        for p in parts:
            t = pq.read_table(p)
            if writer is None:
                writer = pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no scorable rows at all
        import pyarrow as pa

        pq.write_table(pa.table({"source_row": pa.array([], pa.int64()), "text": pa.array([], pa.string())}), tmp)
    tmp.replace(out)


# ---------------------------------------------------------------- queries
def get_batch(batch_id: str) -> dict | None:
    from ml import db

    with db.connect() as conn:
        cur = conn.execute(
            "SELECT id, input_path, input_format, output_path, status, model_name, model_version, n_shards, rows_read,"
            " rows_scored, rows_rejected, label_counts, rows_per_second, summary, created_at, finished_at"
            " FROM batches WHERE id=%s", (batch_id,))
        row = cur.fetchone()
        if row is None:
            return None
        out = dict(zip([d.name for d in cur.description], row))
        out["shards"] = [dict(zip(("shard", "status", "n_rows", "rows_scored", "seconds", "attempts"), r)) for r in
                         conn.execute("SELECT shard, status, n_rows, rows_scored, seconds, attempts FROM batch_shards"
                                      " WHERE batch_id=%s ORDER BY shard", (batch_id,))]
        out["rejects"] = [{"line": r[0], "reason": r[1]} for r in conn.execute(
            "SELECT line, reason FROM batch_rejects WHERE batch_id=%s ORDER BY line LIMIT 1000", (batch_id,))]
    return out


def list_batches(limit: int = 50) -> list[dict]:
    from ml import db

    with db.connect() as conn:
        cur = conn.execute(
            "SELECT id, input_path, status, model_version, rows_read, rows_scored, rows_rejected, rows_per_second,"
            " created_at, finished_at FROM batches ORDER BY created_at DESC LIMIT %s", (limit,))
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def pending_inbox_file(settings: Settings | None = None) -> str | None:
    """The oldest file in the inbox folder whose content has not been scored yet."""
    from ml import db

    s = settings or get_settings()
    inbox = s.var / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    files = sorted((p for p in inbox.iterdir() if p.is_file() and not p.name.startswith(".")
                    and ".scored." not in p.name), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    with db.connect() as conn:
        done = {r[0] for r in conn.execute("SELECT input_sha256 FROM batches WHERE status='done'")}
    for p in files:
        if file_sha256(p) not in done:
            return str(p)
    return None


def score_file(input_path: str | Path, shard_rows: int = 200_000, force: bool = False, workers: int = 1,
               settings: Settings | None = None) -> dict:
    """The whole batch without Airflow (CLI / benchmarks): plan, every shard (in ``workers``
    processes, as an executor would run the mapped tasks), finalize."""
    p = plan(input_path, shard_rows=shard_rows, force=force, settings=settings)
    if workers > 1 and len(p.shards) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(score_shard, [p.batch_id] * len(p.shards), p.shards))
    else:
        for sh in p.shards:
            score_shard(p.batch_id, sh, settings=settings)
    return finalize(p.batch_id, settings=settings)
