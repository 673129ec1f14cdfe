"""Validated snapshots named by the sha256 of their content: files first (atomically), then the
database record; a snapshot's own held-out definition (``split.parquet``); lookup by hash prefix."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ml.data import DataError
from ml.data.validation import report_markdown, validate
from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.store import snapshots as snapshots_store

log = logging.getLogger(__name__)


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 over the (label, text) rows in canonical (sorted) order: same content, same hash.

    A row is ``label TAB text LF``. A text holding a line feed would let one row pass for two
    (``(0, "a\\n1\\tb")`` against ``(0, "a"), (1, "b")``), so such a text alone is written with its
    length: ``label TAB NUL <utf-8 length> : text LF``. Reading it back is unambiguous (a row without a
    line feed in its text ends at the first LF; a NUL-prefixed row counts as one only when its text
    holds a line feed), and every snapshot whose texts have no line feed keeps the hash it had."""
    h = hashlib.sha256()
    for label, text in sorted(zip(frame["label"].tolist(), frame["text"].tolist()), key=lambda r: (r[1], r[0])):
        body = str(text).encode()
        if b"\n" in body:
            h.update(f"{label}\t\x00{len(body)}:".encode() + body + b"\n")
        else:
            h.update(f"{label}\t".encode() + body + b"\n")
    return h.hexdigest()


#: a snapshot's own held-out definition (text, part in {"test", "excluded"}), beside data.parquet
SPLIT_FILE = "split.parquet"


@dataclass
class Snapshot:
    hash: str
    path: Path
    n_rows: int
    report: dict[str, Any]
    created: bool

    def load(self) -> pd.DataFrame:
        frame = pd.read_parquet(self.path)
        spec = self.path.parent / SPLIT_FILE
        if spec.exists():  # a stored split (retraining snapshots): splits.split() honours it
            frame.attrs["split_path"] = str(spec)
        return frame


def snapshot_dir(h: str, settings: Settings | None = None) -> Path:
    return (settings or get_settings()).snapshots_dir / h[:16]


def store_snapshot(
    frame: pd.DataFrame,
    report: dict[str, Any],
    source: str,
    kind: str = "validated",
    parent: str | None = None,
    settings: Settings | None = None,
) -> Snapshot:
    """Write the frame as a content-addressed snapshot (files first, atomically; then the DB
    record). Storing the same content twice returns the existing snapshot."""
    s = settings or get_settings()
    h = content_hash(frame)
    report = {**report, "snapshot": h}
    target = snapshot_dir(h, s)
    created = False
    if not (target / "data.parquet").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        frame[["text", "label"]].reset_index(drop=True).to_parquet(tmp / "data.parquet", index=False)
        (tmp / "validation.json").write_text(json.dumps(report, indent=2))
        (tmp / "validation.md").write_text(report_markdown(report))
        try:
            os.rename(tmp, target)
            created = True
        except OSError:  # a concurrent writer stored the same content
            shutil.rmtree(tmp, ignore_errors=True)
    with db.connect(s) as conn:
        snapshots_store.insert(
            conn,
            snapshot_hash=h,
            source=source,
            kind=kind,
            parent_hash=parent,
            n_rows=len(frame),
            n_positive=int(frame["label"].sum()),
            path=str(target / "data.parquet"),
            report=report,
        )
    return Snapshot(hash=h, path=target / "data.parquet", n_rows=len(frame), report=report, created=created)


def store_split(snap: Snapshot, test_texts: Iterable[str], excluded_texts: Iterable[str] = ()) -> Path:
    """Give a snapshot its own held-out definition (see :func:`ml.data.splits.split`); written
    once, atomically. The content hash covers the rows only; the split of a given content is
    deterministic by construction (its parent's held-out set), so an existing file is kept."""
    target = snap.path.parent / SPLIT_FILE
    if target.exists():
        return target
    parts = pd.DataFrame({"text": list(test_texts), "part": "test"})
    excl = pd.DataFrame({"text": list(excluded_texts), "part": "excluded"})
    parts = pd.concat([parts, excl], ignore_index=True).drop_duplicates("text", keep="first")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".split-", suffix=".parquet")
    os.close(fd)
    parts.to_parquet(tmp, index=False)
    os.replace(tmp, target)
    return target


def get_snapshot(h: str, settings: Settings | None = None) -> Snapshot:
    h = (h or "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", h):
        raise DataError(f"dataset snapshot must be a sha256 hash or a prefix of at least 8 hex digits, got {h!r}")
    with db.connect(settings or get_settings()) as conn:
        rows = snapshots_store.by_prefix(conn, h)
    if not rows:
        raise DataError(f"unknown dataset snapshot {h!r}; run `ml data validate <file>` first")
    if len(rows) > 1:
        raise DataError(f"snapshot prefix {h!r} is ambiguous; give more digits")
    row = rows[0]
    return Snapshot(hash=row[0], path=Path(row[1]), n_rows=row[2], report=row[3], created=False)


def validate_and_snapshot(path: str | Path, settings: Settings | None = None) -> Snapshot:
    """The DAG's first task: validate a file, store its snapshot, return it."""
    v = validate(path)
    snap = store_snapshot(v.frame, v.report, source=str(Path(path).resolve()), settings=settings)
    log.info(
        "validated %s: %s rows read, %s rejected, %s kept -> snapshot %s",
        path,
        f"{v.report['rows_read']:,}",
        f"{v.report['rows_rejected']:,}",
        f"{v.report['rows_out']:,}",
        snap.hash[:16],
    )
    return snap
