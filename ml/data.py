"""Data: read tweet files, validate them, store validated snapshots named by content hash.

One reader (:func:`iter_records`) serves training, batch scoring and retraining. Layouts
(no header, or a header line that is skipped):
- Sentiment140's six columns ``polarity,id,date,query,user,text`` (Latin-1 in the original);
- two columns ``polarity,text``;
- one column (text only) and ``.txt`` (one tweet per line): scoring only, no label;
- Parquet with a ``text`` column (and ``polarity``/``label`` for training).
Polarity is 0/4 (Sentiment140) or 0/1; 2 (neutral) is rejected. Bytes are decoded as UTF-8
where valid, else Latin-1, line by line, so a mixed file still reads.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ml.platform.config import REPO_ROOT, Settings, get_settings
from ml.store import snapshots as snapshots_store

log = logging.getLogger(__name__)

POLARITY = {"0": 0, "4": 1, "1": 1}
SENTIMENT140_URL = "https://cs.stanford.edu/people/alecmgo/trainingandtestdata.zip"
MAX_FIELD = 1_000_000
MAX_REJECTS_LISTED = 1000

csv.field_size_limit(MAX_FIELD)


class DataError(ValueError):
    """The input cannot be used; the message says why."""


# ---------------------------------------------------------------- reading
# ONE reader for every tweet file: training (read_labelled -> validate), batch scoring
# (ml.stages.scoring.iter_rows) and anything else that reads tweets goes through iter_records, the
# only place that decodes bytes, splits CSV and recognises the layouts.
HEADER_WORDS = frozenset({"polarity", "label", "sentiment", "target"})
TEXT_SUFFIXES = (".txt", ".text")
PARQUET_SUFFIXES = (".parquet", ".pq")


def detect_format(path: Path) -> str:
    """``parquet`` (.parquet/.pq), ``text`` (.txt/.text: one tweet per line) or ``csv``."""
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in TEXT_SUFFIXES:
        return "text"
    return "csv"


def _decoded_lines(path: Path, counter: Counter) -> Iterator[str]:
    """Lines of ``path`` decoded as UTF-8 where valid, else Latin-1 (Sentiment140's own
    encoding), line by line; ``counter["latin1_lines"]`` counts the Latin-1 ones."""
    with path.open("rb") as f:
        for raw in f:
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                counter["latin1_lines"] += 1
                yield raw.decode("latin-1")


class Record(NamedTuple):
    """One row of a tweet file. ``line``: the physical line (CSV/text; the last line of a quoted
    multi-line record) or row number (Parquet), 1-based. ``polarity``: the raw label field
    (``None`` where the layout has none). ``text`` is stripped; ``None`` when ``reason`` says
    why the row is rejected."""

    line: int
    polarity: str | None
    text: str | None
    layout: str
    reason: str | None = None


def _checked(line: int, polarity: str | None, text: str, layout: str) -> Record:
    text = text.strip()
    if not text:
        return Record(line, polarity, None, layout, "empty text")
    if "\x00" in text:  # PostgreSQL text cannot hold NUL: reject the row, never the file
        return Record(line, polarity, None, layout, "NUL byte in text")
    return Record(line, polarity, text, layout)


def iter_records(path: str | Path, encoding: Counter | None = None, fmt: str | None = None) -> Iterator[Record]:
    """Every row of a tweet file, in order, malformed ones included (with ``reason``).

    Layouts: Sentiment140's six columns ``polarity,id,date,query,user,text``; two columns
    ``polarity,text``; one column (text only); ``.txt`` one tweet per line; Parquet with a
    ``text`` column (and optionally ``polarity`` or ``label``). A first line whose label field
    is a header word (``polarity``, ``label``, ...) or a one-column ``text`` is skipped.
    Blank CSV lines are skipped; a blank ``.txt`` line is a row with an empty text."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"data path is a directory, expected a file: {path}")
    counter = encoding if encoding is not None else Counter()
    fmt = fmt or detect_format(path)
    if fmt == "parquet":
        yield from _parquet_records(path)
        return
    if fmt == "text":
        for n, line in enumerate(_decoded_lines(path, counter), start=1):
            yield _checked(n, None, line.rstrip("\r\n"), "text")
        return
    if fmt != "csv":
        raise DataError(f"unknown input format {fmt!r}: expected csv, text or parquet")
    reader = csv.reader(_decoded_lines(path, counter), strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield Record(reader.line_num, None, None, "csv", f"malformed CSV: {e}")
            continue
        line_no = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) == 6:
            pol, text, layout = row[0].strip(), row[5], "sentiment140"
        elif len(row) == 2:
            pol, text, layout = row[0].strip(), row[1], "polarity,text"
        elif len(row) == 1:
            pol, text, layout = None, row[0], "text"
            if line_no == 1 and text.strip().lower() == "text":
                continue  # header
        else:
            yield Record(
                line_no,
                None,
                None,
                "csv",
                f"wrong column count: expected 1 (text), 2 (polarity,text) or 6 (Sentiment140), got {len(row)}",
            )
            continue
        if line_no == 1 and pol is not None and pol.lower() in HEADER_WORDS:
            continue  # header
        yield _checked(line_no, pol, text, layout)


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # not Parquet at all: say so, not a pyarrow traceback
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e
    names = pf.schema_arrow.names
    if "text" not in names:
        raise DataError(f"{path}: Parquet input needs a 'text' column, found {names}")
    label_col = next((c for c in ("polarity", "label") if c in names), None)
    cols = ["text"] + ([label_col] if label_col else [])
    n = 0
    for batch in pf.iter_batches(batch_size=65536, columns=cols):
        texts = batch.column(0).to_pylist()
        pols = batch.column(1).to_pylist() if label_col else [None] * len(texts)
        for t, p in zip(texts, pols):
            n += 1
            yield _checked(n, None if p is None else str(p).strip(), "" if t is None else str(t), "parquet")


@dataclass
class ReadResult:
    path: Path
    lines: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rejected_by_reason: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    encoding: Counter = field(default_factory=Counter)
    rows_read: int = 0

    def reject(self, line: int, reason: str) -> None:
        self.rejected_by_reason[reason.split(":")[0]] += 1
        if len(self.rejected) < MAX_REJECTS_LISTED:
            self.rejected.append({"line": line, "reason": reason})


def read_labelled(path: str | Path, progress_every: int = 200_000) -> ReadResult:
    """Read a labelled tweet file (through :func:`iter_records`), keeping line numbers and
    rejecting bad rows: unlabelled layouts, bad or neutral polarity, empty texts, malformed CSV."""
    path = Path(path)
    res = ReadResult(path=path)
    for rec in iter_records(path, res.encoding):
        res.rows_read += 1
        if rec.reason is not None:
            if rec.reason.startswith("wrong column count"):
                res.reject(rec.line, rec.reason.replace("1 (text), ", ""))
            else:
                res.reject(rec.line, rec.reason)
        elif rec.polarity is None:
            if rec.layout == "parquet":
                res.reject(rec.line, "no label: Parquet training data needs a 'polarity' or 'label' column")
            else:
                res.reject(rec.line, "wrong column count: expected 2 (polarity,text) or 6 (Sentiment140), got 1")
        elif rec.polarity not in POLARITY:
            pol = rec.polarity
            why = "neutral polarity 2 is not supported" if pol == "2" else f"expected 0, 1 or 4, got {pol[:20]!r}"
            res.reject(rec.line, f"bad polarity: {why}")
        else:
            res.formats[rec.layout] += 1
            res.lines.append(rec.line)
            res.labels.append(POLARITY[rec.polarity])
            res.texts.append(rec.text)  # type: ignore[arg-type]
        if progress_every and res.rows_read % progress_every == 0:
            log.info("read %s rows from %s", f"{res.rows_read:,}", path.name)
    return res


# ---------------------------------------------------------------- validation
@dataclass
class Validated:
    frame: pd.DataFrame  # columns: text, label (0/1), line
    report: dict[str, Any]


def validate(path: str | Path) -> Validated:
    """Read and clean a labelled file; the report says what was read, rejected and resolved."""
    t0 = time.perf_counter()
    res = read_labelled(path)
    df = pd.DataFrame({"line": res.lines, "label": np.asarray(res.labels, dtype=np.int8), "text": res.texts})
    n_valid = len(df)

    # duplicates and label conflicts
    g = df.groupby("text", sort=False)["label"].agg(["size", "sum"])
    dup = g[g["size"] > 1]
    conflict = dup[(dup["sum"] > 0) & (dup["sum"] < dup["size"])]
    tie = conflict[conflict["sum"] * 2 == conflict["size"]]
    majority = (g["sum"] * 2 > g["size"]).astype(np.int8)
    first = df.drop_duplicates("text", keep="first").set_index("text")
    first["label"] = majority.reindex(first.index).to_numpy()
    first = first.drop(index=tie.index)
    clean = first.reset_index()[["text", "label", "line"]]

    if len(clean) == 0:
        raise DataError(f"no usable rows in {path}: {dict(res.rejected_by_reason) or 'file is empty'}")
    n_pos = int(clean["label"].sum())
    if n_pos == 0 or n_pos == len(clean):
        raise DataError(f"{path} holds only one class ({'positive' if n_pos else 'negative'}); need both")

    report = {
        "source": str(Path(path).resolve()),
        "rows_read": res.rows_read,
        "rows_valid": n_valid,
        "rows_rejected": res.rows_read - n_valid,
        "rejected_by_reason": dict(res.rejected_by_reason),
        "rejected_rows": res.rejected,
        "rejected_rows_listed": len(res.rejected),
        "empty_texts": res.rejected_by_reason.get("empty text", 0),
        "formats": dict(res.formats),
        "latin1_lines": res.encoding.get("latin1_lines", 0),
        "duplicate_texts": int(len(dup)),
        "duplicate_rows_removed": int(dup["size"].sum() - len(dup)),
        "conflicting_texts": int(len(conflict)),
        "conflicts_resolved_by_majority": int(len(conflict) - len(tie)),
        "conflicts_tied_dropped": int(len(tie)),
        "rows_out": int(len(clean)),
        "label_counts": {"negative": int(len(clean) - n_pos), "positive": n_pos},
        "positive_share": round(n_pos / len(clean), 4),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return Validated(frame=clean, report=report)


def report_markdown(report: dict[str, Any]) -> str:
    r = report
    lines = [
        f"# Data validation: {Path(r['source']).name}",
        "",
        "| check | value |",
        "|---|---|",
        f"| rows read | {r['rows_read']:,} |",
        f"| rows rejected | {r['rows_rejected']:,} |",
        f"| empty texts | {r['empty_texts']:,} |",
        f"| Latin-1 decoded lines | {r['latin1_lines']:,} |",
        f"| duplicate texts | {r['duplicate_texts']:,} ({r['duplicate_rows_removed']:,} extra rows removed) |",
        f"| texts with conflicting labels | {r['conflicting_texts']:,} "
        f"(majority: {r['conflicts_resolved_by_majority']:,}, ties dropped: {r['conflicts_tied_dropped']:,}) |",
        f"| rows kept | {r['rows_out']:,} |",
        f"| label balance | negative {r['label_counts']['negative']:,} / positive {r['label_counts']['positive']:,} "
        f"({r['positive_share']:.1%} positive) |",
    ]
    if r.get("snapshot"):
        lines.append(f"| snapshot | `{r['snapshot']}` |")
    if r["rejected_by_reason"]:
        lines += ["", "## Rejected rows by reason", ""]
        lines += [f"- {k}: {v:,}" for k, v in sorted(r["rejected_by_reason"].items())]
        lines += ["", "First rejected rows (line: reason):", ""]
        lines += [f"- line {x['line']}: {x['reason']}" for x in r["rejected_rows"][:20]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- snapshots
def content_hash(frame: pd.DataFrame) -> str:
    """sha256 over the (label, text) rows in canonical (sorted) order: same content, same hash."""
    h = hashlib.sha256()
    for label, text in sorted(zip(frame["label"].tolist(), frame["text"].tolist()), key=lambda r: (r[1], r[0])):
        h.update(f"{label}\t{text}\n".encode())
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
        if spec.exists():  # a stored split (retraining snapshots): data.split() honours it
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
    from ml.platform import db

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
    """Give a snapshot its own held-out definition (see :func:`split`); written once, atomically.
    The content hash covers the rows only; the split of a given content is deterministic by
    construction (its parent's held-out set), so an existing file is kept."""
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
    from ml.platform import db

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


# ---------------------------------------------------------------- splits
def split(frame: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified, deterministic train/held-out split of a snapshot.

    A snapshot that stores its own split (``split.parquet``, written by :func:`store_split`; the
    retraining snapshots do: their held-out set is their parent's, see ``ml/stages/retraining/``) is split
    by it instead: rows whose text is listed as ``test`` are held out, rows listed as ``excluded``
    are in neither part, all others train. :meth:`Snapshot.load` marks the frame for this."""
    spec = frame.attrs.get("split_path")
    if spec:
        parts = pd.read_parquet(spec)
        test_texts = set(parts.loc[parts["part"] == "test", "text"])
        excluded = set(parts.loc[parts["part"] == "excluded", "text"])
        is_test = frame["text"].isin(test_texts)
        is_train = ~is_test & ~frame["text"].isin(excluded)
        train_df, test_df = frame[is_train].reset_index(drop=True), frame[is_test].reset_index(drop=True)
        train_df.attrs, test_df.attrs = {}, {}
        return train_df, test_df
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(frame, test_size=test_size, random_state=seed, stratify=frame["label"])
    return train.reset_index(drop=True), test.reset_index(drop=True)


def stratified_sample(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if not n or n >= len(frame):
        return frame
    from sklearn.model_selection import train_test_split

    sample, _ = train_test_split(frame, train_size=n, random_state=seed, stratify=frame["label"])
    return sample.reset_index(drop=True)


# ---------------------------------------------------------------- sources
# A real 20k-tweet sample of Sentiment140 shipped with the project (tests/data/README.md):
# the tests' data and the offline first model of ``make up``. Never generated text.
BUNDLED_SAMPLE = REPO_ROOT / "tests" / "data" / "sentiment140_20k.csv"


def default_source(data: str | None = None, settings: Settings | None = None, timeout: float = 10.0) -> Path:
    """The training file for ``make up``: ``DATA=`` if given; else the official Sentiment140
    download when the network allows it; else, loudly, the bundled real 20k sample."""
    s = settings or get_settings()
    if data:
        p = Path(data).expanduser().resolve()
        if not p.exists():
            raise DataError(f"DATA={data}: file not found")
        return p
    target = s.var / "data" / "training.1600000.processed.noemoticon.csv"
    if target.exists():
        return target
    try:
        import io
        import urllib.request
        import zipfile

        log.info("downloading Sentiment140 from %s ...", SENTIMENT140_URL)
        with urllib.request.urlopen(SENTIMENT140_URL, timeout=timeout) as resp:
            blob = resp.read()
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(target.name))
        return target
    except Exception as e:  # no network: the bundled real sample, said loudly
        if not BUNDLED_SAMPLE.exists():
            raise DataError(
                f"no DATA= given, Sentiment140 could not be downloaded ({type(e).__name__}: {e}) "
                f"and the bundled sample {BUNDLED_SAMPLE} is missing: pass DATA=/path/to/tweets.csv"
            ) from e
        banner = "!" * 78
        msg = (
            f"\n{banner}\n  No DATA= given and Sentiment140 could not be downloaded ({type(e).__name__}: {e}).\n"
            f"  Training on the BUNDLED SAMPLE: {BUNDLED_SAMPLE.name}, 20,000 real Sentiment140 tweets\n"
            f"  (tests/data/README.md). A usable first model, not the best one: re-run with\n"
            f"  DATA=/path/to/training.1600000.processed.noemoticon.csv for the full corpus.\n{banner}\n"
        )
        print(msg, flush=True)
        log.warning(msg)
        return BUNDLED_SAMPLE
