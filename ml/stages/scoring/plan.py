"""Plan a batch: read the input once, record rejects, write shard files, fix the champion version
(serialised per content on a PostgreSQL advisory lock; a done batch is not planned again)."""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from ml.data import DataError
from ml.data.read import detect_format
from ml.platform import db, registry, tracking
from ml.platform.config import Settings, get_settings
from ml.platform.storage import SharedStore, reading
from ml.stages.scoring.files import batches_store, check_text, confined_input, file_sha256, iter_rows, model_dir
from ml.stages.scoring.sizing import AUTO_TAIL_SLACK, auto_shard_rows
from ml.store import batches as store
from ml.store import training_runs as training_runs_store

log = logging.getLogger(__name__)

#: rows per Parquet row group of a shard file: what the plan buffers, and what a shard reads at a time
PLAN_GROUP_ROWS = 50_000
#: a shard file: the input's row (line) number and the text
SHARD_SCHEMA = pa.schema([("source_row", pa.int64()), ("text", pa.string())])


@dataclass
class Plan:
    batch_id: str
    model_version: int
    shards: list[int]
    status: str


def plan(
    input_path: str | Path,
    shard_rows: int = 0,
    airflow_run_id: str | None = None,
    force: bool = False,
    settings: Settings | None = None,
    text_column: str | None = None,
) -> Plan:
    """Read the input once in bounded chunks, record rejects, write shard files, fix the
    champion version. A batch already done is not planned again (unless ``force``).
    ``shard_rows=0``: one shard per available CPU (see :func:`auto_shard_rows`).
    ``text_column``: the CSV header's / Parquet column holding the texts.

    The input must resolve (symlinks followed) under an allowed input root (the inbox or
    ``batch_input_roots``), checked before a byte of it is read. An input that is empty, not
    text, has no text column, or whose rejected rows exceed ``batch_max_reject_share`` fails
    here, before anything reaches ``predictions``: :class:`DataError` with the reason, the
    batch recorded ``failed`` with it.

    Two runs planning the same content at once (a manual run and the inbox's) serialise on a
    PostgreSQL advisory lock: the second waits, logging why, then resumes the first's plan."""
    if input_path is None or not str(input_path).strip():
        raise DataError(
            "no input_path given: pass the file to score (drop files in var/inbox/ for the"
            " sentiment_inbox DAG to pick them up)"
        )
    if shard_rows is None or int(shard_rows) < 0:
        raise DataError(f"shard_rows must be 0 (auto) or a positive number of rows, got {shard_rows!r}")
    s = settings or get_settings()
    path = confined_input(input_path, s)  # before a byte is read
    digest = file_sha256(path)
    batch_id = f"b-{digest[:16]}"
    with db.connect(s) as lock_conn:  # held (session advisory lock) for the whole plan
        key = int(digest[:15], 16)
        if not store.try_lock_plan(lock_conn, key):
            log.warning("batch %s (%s) is being planned by another run: waiting for it", batch_id, path.name)
            store.lock_plan(lock_conn, key)
        try:
            return _plan_locked(path, digest, batch_id, int(shard_rows), airflow_run_id, force, s, text_column)
        finally:
            store.unlock_plan(lock_conn, key)


def _plan_locked(
    path: Path,
    digest: str,
    batch_id: str,
    shard_rows: int,
    airflow_run_id: str | None,
    force: bool,
    settings: Settings,
    text_column: str | None = None,
) -> Plan:
    """The plan under the content's lock: done or resumed, else check the input, write the shards, record it."""
    fmt = detect_format(path)
    existing = _existing_plan(path, batch_id, force, settings)
    if existing is not None:
        return existing
    champ = _served_champion(settings)

    # what the batch row records whether the plan succeeds or fails
    batch_row: dict[str, Any] = {
        "batch_id": batch_id,
        "input_path": str(path),
        "input_format": fmt,
        "input_sha256": digest,
        "model_name": settings.model_name,
        "model_version": champ.version,
        "airflow_run_id": airflow_run_id,
    }

    try:
        check_text(path, fmt)  # empty, binary, UTF-16: refused from the first block
    except DataError as e:
        raise _failed(batch_row, settings, str(e)) from None

    slack = 0
    if shard_rows == 0:
        shard_rows = auto_shard_rows(path, fmt)
        slack = int(shard_rows * AUTO_TAIL_SLACK)
    # the shards go to the shared store (ml/platform/storage.py): any worker host reads them
    bstore = batches_store(settings)
    bstore.remove(batch_id, recursive=True)
    bstore.makedirs(batch_id, "shards")  # local: 0700, the texts and scores are this account's only
    local_model = model_dir(batch_id, settings)
    t0 = time.perf_counter()
    # streamed: each shard's Parquet is written row group by row group as the rows are read, so the
    # plan's memory does not grow with the input (nor with the shard size). An auto-sized plan keeps
    # the shard before the one being filled open while the latter holds no more than the slack, and
    # folds that tail back into it at the end (no tiny last shard), reading it back group by group.
    out = _ShardWriter(bstore, batch_id, shard_rows, slack, max(1, min(PLAN_GROUP_ROWS, shard_rows)))

    # meanwhile the model version is fetched once into the batch folder and verified against its
    # recorded digest: the shards load that copy (re-checked) instead of each asking MLflow
    fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan-model-fetch")
    model_copy = fetcher.submit(registry.fetch_verified, champ.version, champ.sha256, local_model, settings)
    read = _read_into_shards(path, fmt, text_column, out, model_copy, fetcher)

    # every row has been read: the batch fails here, before any shard writes into predictions
    reason = _reject_reason(path, batch_id, read, settings)
    if reason is not None:
        bstore.remove(batch_id, recursive=True)  # shards and the model copy: nothing is kept
        shutil.rmtree(local_model, ignore_errors=True)
        raise _failed(batch_row, settings, reason, read.rows_read, read.rejects)

    _record_plan(batch_row, champ, read, out, settings)
    log.info(
        "batch %s: %s rows read from %s (%s, %s lines decoded as Latin-1), %s rejected, %d shards of up to %s"
        " rows, champion v%s (%.1fs)",
        batch_id,
        f"{read.rows_read:,}",
        path.name,
        fmt,
        f"{read.encoding['latin1_lines']:,}",
        f"{len(read.rejects):,}",
        len(out.shards),
        f"{shard_rows:,}",
        champ.version,
        time.perf_counter() - t0,
    )
    return Plan(batch_id, champ.version, [sh["shard"] for sh in out.shards], "planned")


def _record_plan(
    batch_row: dict[str, Any], champ: _Champion, read: _Read, out: _ShardWriter, settings: Settings
) -> None:
    """Record the planned batch: its rows read, rejects, shard files and the model digest."""
    with db.connect(settings) as conn:
        store.replace_plan(
            conn,
            **batch_row,
            model_sha256=champ.sha256,
            rows_read=read.rows_read,
            rejects=read.rejects,
            shards=[(sh["shard"], sh["path"], sh["first"], sh["last"], sh["n"]) for sh in out.shards],
        )


def _existing_plan(path: Path, batch_id: str, force: bool, settings: Settings) -> Plan | None:
    """A batch already done, or planned and being scored, is not planned again (unless ``force``)."""
    with db.connect(settings) as conn:
        row = store.batch_state(conn, batch_id)
    if row and row[0] == "done" and not force:
        log.info("batch %s (%s) already scored with v%s: nothing to do", batch_id, path.name, row[1])
        return Plan(batch_id, row[1], [], "done")
    if row and row[0] in ("planned", "scoring") and not force:
        # resume: the shards are on disk, only unfinished ones are scored again
        with db.connect(settings) as conn:
            pending = store.unfinished_shards(conn, batch_id)
        log.info("batch %s resumes: %d of %d shards left", batch_id, len(pending), row[2])
        return Plan(batch_id, row[1], pending, row[0])
    return None


class _Champion(NamedTuple):
    """The champion version a batch is scored with, and its recorded artifact digest."""

    version: int
    sha256: str


def _served_champion(settings: Settings) -> _Champion:
    """The champion version to score with and its recorded artifact digest (the API's rule)."""
    tracking.configure(settings)
    champ = registry.champion(settings)
    if champ is None:
        raise RuntimeError("no champion model to score with; train one first (sentiment_training DAG / ml pipeline)")
    with db.connect(settings) as conn:
        event = training_runs_store.serving_event(conn, settings.model_name)
    if event is None or event[0] != champ.version or not event[1]:
        # the API's rule: only the version a promotion/rollback event names, with its recorded digest
        raise RuntimeError(
            f"the {settings.champion_alias!r} alias of {settings.model_name!r} points at v{champ.version}, but "
            + (
                "no promotion or rollback event records it"
                if event is None
                else f"the platform's latest promotion/rollback is of v{event[0]}"
                if event[0] != champ.version
                else "its promotion event has no artifact digest"
            )
            + ": the alias was moved outside the platform; refusing to score with it (promote with `ml promote`)"
        )
    return _Champion(champ.version, event[1])


def _failed(
    batch_row: dict[str, Any],
    settings: Settings,
    reason: str,
    rows_read: int = 0,
    rejects: list[tuple[int, str]] | None = None,
) -> DataError:
    """Record the batch as failed with ``reason`` (nothing in predictions) and return the error."""
    with db.connect(settings) as conn:
        store.record_failed(conn, **batch_row, rows_read=rows_read, rejects=rejects or [], reason=reason)
    log.error("batch %s failed: %s", batch_row["batch_id"], reason)
    return DataError(reason)


@dataclass
class _ShardWriter:
    """The shard files of one plan, written as the rows are read."""

    bstore: SharedStore
    batch_id: str
    shard_rows: int
    slack: int
    group_rows: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    open_shards: list[dict[str, Any]] = field(default_factory=list)  # the one being filled, and the one before
    buf_rows: list[int] = field(default_factory=list)
    buf_text: list[str] = field(default_factory=list)

    def new_shard(self) -> dict[str, Any]:
        """Open the next shard file."""
        i = len(self.shards)
        key = f"{self.batch_id}/shards/{i:05d}.parquet"
        stack = ExitStack()
        f = stack.enter_context(self.bstore.writer(key))  # atomic: published when the shard is complete
        w = stack.enter_context(pq.ParquetWriter(f, SHARD_SCHEMA))
        sh = {
            "shard": i,
            "path": self.bstore.where(key),
            "key": key,
            "first": 0,
            "last": 0,
            "n": 0,
            "w": w,
            "stack": stack,
        }
        self.shards.append(sh)
        self.open_shards.append(sh)
        return sh

    def close_shard(self, sh: dict[str, Any]) -> None:
        """Complete (publish) a shard file."""
        self.open_shards.remove(sh)
        sh["stack"].close()

    def write(self, sh: dict[str, Any], table: pa.Table) -> None:
        """Append rows to a shard, keeping its first/last row numbers and count."""
        if not sh["n"]:
            sh["first"] = table.column(0)[0].as_py()
        sh["last"] = table.column(0)[-1].as_py()
        sh["n"] += table.num_rows
        sh["w"].write_table(table, row_group_size=self.group_rows)

    def flush(self, rows_read: int) -> None:
        """The buffered rows into the shards: the one being filled up to shard_rows, then the next."""
        buf_rows, buf_text, open_shards = self.buf_rows, self.buf_text, self.open_shards
        while buf_rows:
            cur = open_shards[-1] if open_shards and open_shards[-1]["n"] < self.shard_rows else None
            if cur is None:
                if open_shards and not self.slack:
                    self.close_shard(open_shards[-1])
                cur = self.new_shard()
            take = min(self.shard_rows - cur["n"], len(buf_rows))
            self.write(
                cur,
                pa.table(
                    {
                        "source_row": pa.array(buf_rows[:take], pa.int64()),
                        "text": pa.array(buf_text[:take], pa.string()),
                    },
                    schema=SHARD_SCHEMA,
                ),
            )
            del buf_rows[:take], buf_text[:take]
            if len(open_shards) == 2 and open_shards[1]["n"] > self.slack:  # past the slack: a shard of its own
                self.close_shard(open_shards[0])
                log.info("planned %d shards (%s rows read)", len(self.shards) - 1, f"{rows_read:,}")

    def fold_tail(self) -> None:
        """The last shard holds no more than the slack: its rows go to the end of the one before."""
        prev, tail = self.open_shards
        self.close_shard(tail)
        with reading(tail["path"]) as f:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                self.write(prev, pf.read_row_group(g))
        self.bstore.remove(tail["key"])
        self.shards.remove(tail)


@dataclass
class _Read:
    """What reading the input left: rows read, rejects, encoding counts, the reader's error."""

    rows_read: int
    rejects: list[tuple[int, str]]
    encoding: Counter
    error: DataError | None


def _read_into_shards(
    path: Path,
    fmt: str,
    text_column: str | None,
    out: _ShardWriter,
    model_copy: Future[Any],
    fetcher: ThreadPoolExecutor,
) -> _Read:
    """Stream the input's rows into the shard files (rejects aside), and wait for the model copy."""
    read = _Read(0, [], Counter(), None)
    try:
        try:
            for line, text, reason in iter_rows(path, fmt, read.encoding, text_column):
                read.rows_read += 1
                if reason:
                    read.rejects.append((line, reason))
                    continue
                out.buf_rows.append(line)
                out.buf_text.append(text)  # type: ignore[arg-type]
                if len(out.buf_rows) >= out.group_rows:
                    out.flush(read.rows_read)
            out.flush(read.rows_read)
            if len(out.open_shards) == 2:
                out.fold_tail()
        finally:
            for sh in list(out.open_shards):  # every shard file is complete before the plan is recorded
                out.close_shard(sh)
        model_copy.result()  # and the verified model copy (ArtifactMismatch: nothing is planned)
    except DataError as e:  # no text column, unreadable Parquet: the batch fails with the reader's reason
        read.error = e
    finally:
        fetcher.shutdown(wait=True)
    return read


def _reject_reason(path: Path, batch_id: str, read: _Read, settings: Settings) -> str | None:
    """Why the batch fails once every row is read (reader's error, no rows, too many rejects), or None."""
    rejects, rows_read = read.rejects, read.rows_read
    share = len(rejects) / rows_read if rows_read else 0.0
    return (
        str(read.error)
        if read.error is not None
        else f"{path.name} has no rows to score (empty, or a header only)"
        if rows_read == 0
        else f"{path.name}: {len(rejects):,} of {rows_read:,} rows rejected ({share:.1%}), more than"
        f" batch_max_reject_share {settings.batch_max_reject_share:.1%}; first: line {rejects[0][0]}: {rejects[0][1]}"
        f" (`ml batches {batch_id}` lists them)"
        if share > settings.batch_max_reject_share
        else None
    )
