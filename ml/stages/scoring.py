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

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import DataError
from ml.data.read import detect_format, iter_records
from ml.models.base import decide
from ml.platform.config import Settings, get_settings
from ml.store import batches as store

log = logging.getLogger(__name__)

SCORE_COLUMNS = store.SCORE_COLUMNS


# ---------------------------------------------------------------- reading inputs
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


# ---------------------------------------------------------------- plan
@dataclass
class Plan:
    batch_id: str
    model_version: int
    shards: list[int]
    status: str


def batch_dir(batch_id: str, settings: Settings | None = None) -> Path:
    return (settings or get_settings()).var / "batches" / batch_id


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
        import pyarrow.parquet as pq

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


def plan(
    input_path: str | Path,
    shard_rows: int = 0,
    airflow_run_id: str | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> Plan:
    """Read the input once in bounded chunks, record rejects, write shard files, fix the
    champion version. A batch already done is not planned again (unless ``force``).
    ``shard_rows=0``: one shard per available CPU (see :func:`auto_shard_rows`).

    Two runs planning the same content at once (a manual run and the inbox's) serialise on a
    PostgreSQL advisory lock: the second waits, logging why, then resumes the first's plan."""
    from ml.platform import db

    if input_path is None or not str(input_path).strip():
        raise DataError(
            "no input_path given: pass the file to score (drop files in var/inbox/ for the"
            " sentiment_inbox DAG to pick them up)"
        )
    if shard_rows is None or int(shard_rows) < 0:
        raise DataError(f"shard_rows must be 0 (auto) or a positive number of rows, got {shard_rows!r}")
    path = Path(input_path).expanduser().resolve()
    if not path.exists() or path.is_dir():
        raise DataError(f"batch input not found (or a directory): {path}")
    digest = file_sha256(path)
    batch_id = f"b-{digest[:16]}"
    s = settings or get_settings()
    with db.connect(s) as lock_conn:  # held (session advisory lock) for the whole plan
        key = int(digest[:15], 16)
        if not store.try_lock_plan(lock_conn, key):
            log.warning("batch %s (%s) is being planned by another run: waiting for it", batch_id, path.name)
            store.lock_plan(lock_conn, key)
        try:
            return _plan_locked(path, digest, batch_id, int(shard_rows), airflow_run_id, force, s)
        finally:
            store.unlock_plan(lock_conn, key)


def _plan_locked(
    path: Path, digest: str, batch_id: str, shard_rows: int, airflow_run_id: str | None, force: bool, s: Settings
) -> Plan:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml.platform import db, registry, tracking

    fmt = detect_format(path)
    with db.connect(s) as conn:
        row = store.batch_state(conn, batch_id)
    if row and row[0] == "done" and not force:
        log.info("batch %s (%s) already scored with v%s: nothing to do", batch_id, path.name, row[1])
        return Plan(batch_id, row[1], [], "done")
    if row and row[0] in ("planned", "scoring") and not force:
        # resume: the shards are on disk, only unfinished ones are scored again
        with db.connect(s) as conn:
            pending = store.unfinished_shards(conn, batch_id)
        log.info("batch %s resumes: %d of %d shards left", batch_id, len(pending), row[2])
        return Plan(batch_id, row[1], pending, row[0])

    tracking.configure(s)
    champ = registry.champion(s)
    if champ is None:
        raise RuntimeError("no champion model to score with; train one first (sentiment_training DAG / ml pipeline)")

    slack = 0
    if shard_rows == 0:
        shard_rows = auto_shard_rows(path, fmt)
        slack = int(shard_rows * AUTO_TAIL_SLACK)
    out_dir = batch_dir(batch_id, s)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "shards").mkdir(parents=True)
    t0 = time.perf_counter()
    shards: list[dict[str, Any]] = []
    rejects: list[tuple[int, str]] = []
    rows_read = 0
    buf_rows: list[int] = []
    buf_text: list[str] = []

    def flush_shard(n: int | None = None) -> None:
        """Write the first ``n`` buffered rows (all by default) as the next shard."""
        n = len(buf_rows) if n is None else n
        if not n:
            return
        i = len(shards)
        p = out_dir / "shards" / f"{i:05d}.parquet"
        pq.write_table(pa.table({"source_row": pa.array(buf_rows[:n], pa.int64()), "text": pa.array(buf_text[:n])}), p)
        shards.append({"shard": i, "path": str(p), "first": buf_rows[0], "last": buf_rows[n - 1], "n": n})
        del buf_rows[:n], buf_text[:n]

    encoding: Counter = Counter()
    for line, text, reason in iter_rows(path, fmt, encoding):
        rows_read += 1
        if reason:
            rejects.append((line, reason))
            continue
        buf_rows.append(line)
        buf_text.append(text)  # type: ignore[arg-type]
        if len(buf_rows) > shard_rows + slack:  # the rows past shard_rows start the next shard
            flush_shard(shard_rows)
            log.info("planned %d shards (%s rows read)", len(shards), f"{rows_read:,}")
    flush_shard()

    with db.connect(s) as conn:
        store.replace_plan(
            conn,
            batch_id=batch_id,
            input_path=str(path),
            input_format=fmt,
            input_sha256=digest,
            model_name=s.model_name,
            model_version=champ.version,
            rows_read=rows_read,
            airflow_run_id=airflow_run_id,
            rejects=rejects,
            shards=[(sh["shard"], sh["path"], sh["first"], sh["last"], sh["n"]) for sh in shards],
        )
    log.info(
        "batch %s: %s rows read from %s (%s, %s lines decoded as Latin-1), %s rejected, %d shards of up to %s"
        " rows, champion v%s (%.1fs)",
        batch_id,
        f"{rows_read:,}",
        path.name,
        fmt,
        f"{encoding['latin1_lines']:,}",
        f"{len(rejects):,}",
        len(shards),
        f"{shard_rows:,}",
        champ.version,
        time.perf_counter() - t0,
    )
    return Plan(batch_id, champ.version, [sh["shard"] for sh in shards], "planned")


# ---------------------------------------------------------------- score one shard
_MODEL_CACHE: dict[tuple[str, int], Any] = {}


def _model(version: int, s: Settings):
    from ml.platform import registry, tracking

    key = (s.model_name, version)
    if key not in _MODEL_CACHE:
        tracking.configure(s)
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = registry.load_version(version, s)
    return _MODEL_CACHE[key]


def score_shard(batch_id: str, shard: int, chunk_rows: int = 50_000, settings: Settings | None = None) -> dict:
    """Score one shard with the batch's fixed model version; replace the shard's rows in
    PostgreSQL in one transaction (idempotent, retry-safe); write the scored part file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml.platform import db

    s = settings or get_settings()
    with db.connect(s) as conn:
        row = store.start_shard(conn, batch_id, shard)
    if row is None:
        raise DataError(f"unknown shard {shard} of batch {batch_id}")
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
        parts.append(model.predict_proba(texts[i : i + chunk_rows]))
    proba = np.vstack(parts) if parts else np.zeros((0, 2))
    labels = decide(proba[:, 1])
    t_pred = time.perf_counter() - t0

    pq.write_table(
        pa.table(
            {
                "source_row": src,
                "text": texts,
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


# ---------------------------------------------------------------- finalize
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
    _merge_parts([Path(sh[2]).with_suffix(".scored.parquet") for sh in shards], out)
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
def get_batch(batch_id: str, settings: Settings | None = None) -> dict | None:
    from ml.platform import db

    with db.connect(settings or get_settings()) as conn:
        return store.get(conn, batch_id)


def list_batches(limit: int = 50, settings: Settings | None = None) -> list[dict]:
    from ml.platform import db

    with db.connect(settings or get_settings()) as conn:
        return store.latest(conn, limit)


def inbox_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).var / "inbox"


def pending_inbox_files(settings: Settings | None = None, settle_seconds: float = 10.0) -> list[dict]:
    """Files in the inbox folder whose content has not been scored yet, oldest first:
    ``{"path", "sha256", "run_id"}``. ``run_id`` is deterministic (``inbox__<content hash>``),
    so the inbox DAG triggers each content once. Hidden files (write to ``.name`` and rename)
    and files modified less than ``settle_seconds`` ago (still being written) wait."""
    from ml.platform import db

    inbox = inbox_dir(settings)
    inbox.mkdir(parents=True, exist_ok=True)
    now = time.time()
    files = []
    for p in inbox.iterdir():
        if not p.is_file() or p.name.startswith(".") or ".scored." in p.name:
            continue
        age = now - p.stat().st_mtime
        if age < settle_seconds:
            log.info(
                "inbox: %s was modified %.0fs ago; waiting until it is %.0fs old (still being written?)",
                p.name,
                age,
                settle_seconds,
            )
            continue
        files.append(p)
    files.sort(key=lambda p: (p.stat().st_mtime, p.name))
    if not files:
        return []
    with db.connect(settings or get_settings()) as conn:
        done = store.done_input_hashes(conn)
    out, seen = [], set()
    for p in files:
        digest = file_sha256(p)
        if digest in done or digest in seen:
            continue
        seen.add(digest)
        out.append({"path": str(p), "sha256": digest, "run_id": f"inbox__{digest[:16]}"})
    return out


def pending_inbox_file(settings: Settings | None = None) -> str | None:
    """The oldest file in the inbox folder whose content has not been scored yet."""
    files = pending_inbox_files(settings, settle_seconds=0)
    return files[0]["path"] if files else None


def score_file(
    input_path: str | Path, shard_rows: int = 0, force: bool = False, workers: int = 1, settings: Settings | None = None
) -> dict:
    """The whole batch without Airflow (CLI / benchmarks): plan, every shard (in ``workers``
    processes, as an executor would run the mapped tasks), finalize. ``shard_rows=0``: one
    shard per worker."""
    if workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    if shard_rows == 0 and input_path and Path(input_path).is_file():
        shard_rows = auto_shard_rows(Path(input_path), workers=workers)
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


def inbox_trigger_kwargs(settle_seconds: float = 10.0, settings: Settings | None = None) -> list[dict]:
    """``TriggerDagRunOperator`` arguments for each pending inbox file (the inbox DAG maps over
    them): a deterministic run id, the file as ``input_path``, and a note saying why the run
    exists (shown in the Airflow UI beside the run)."""
    out = []
    for f in pending_inbox_files(settings, settle_seconds=settle_seconds):
        out.append(
            {
                "trigger_run_id": f["run_id"],
                "conf": {"input_path": f["path"]},
                "note": f"Scores inbox file {Path(f['path']).name} (sha256 {f['sha256'][:16]}), triggered by"
                " sentiment_inbox. While this run is queued, other batches hold every active-run slot.",
            }
        )
    if out:
        log.info("inbox: %d new file(s): %s", len(out), ", ".join(o["conf"]["input_path"] for o in out))
    return out
