"""The one tweet-file reader: formats, UTF-8/Latin-1 decoding, :func:`iter_records` (every row,
rejects included) and :func:`read_labelled` (the labelled rows of a training file)."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.parquet as pq

from ml.data import DataError

log = logging.getLogger(__name__)

POLARITY = {"0": 0, "4": 1, "1": 1}
MAX_FIELD = 1_000_000
MAX_REJECTS_LISTED = 1000

csv.field_size_limit(MAX_FIELD)


# ---------------------------------------------------------------- reading
# ONE reader for every tweet file: training (read_labelled -> validate), batch scoring
# (ml.stages.scoring.files.iter_rows) and anything else that reads tweets goes through
# iter_records, the only place that decodes bytes, splits CSV and recognises the layouts.
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


#: how a caller names the text column in the messages below (the CLI option and the DAG param)
TEXT_COLUMN_HINT = "name the column that holds the tweets with --text-column (ml score) or text_column (DAG param)"


def iter_records(
    path: str | Path,
    encoding: Counter | None = None,
    fmt: str | None = None,
    text_column: str | None = None,
    require_layout: bool = False,
) -> Iterator[Record]:
    """Every row of a tweet file, in order, malformed ones included (with ``reason``).

    Layouts: Sentiment140's six columns ``polarity,id,date,query,user,text``; two columns
    ``polarity,text``; one column (text only); ``.txt`` one tweet per line; Parquet with a
    ``text`` column (and optionally ``polarity`` or ``label``); a CSV whose header names a
    ``text`` column (any column count; ``polarity``/``label``/``sentiment``/``target`` as its
    label). A first line whose label field is a header word (``polarity``, ``label``, ...) or a
    one-column ``text`` is skipped. Blank CSV lines are skipped; a blank ``.txt`` line is a row
    with an empty text.

    ``text_column``: the column holding the texts (CSV: named in the header, which must be the
    first line; Parquet: a column name). ``require_layout`` (batch scoring): a CSV whose first
    row is none of the layouts above raises :class:`DataError` naming the columns found, instead
    of rejecting every row (training keeps the per-row rejects)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"data path is a directory, expected a file: {path}")
    counter = encoding if encoding is not None else Counter()
    fmt = fmt or detect_format(path)
    if text_column is not None and not text_column.strip():
        text_column = None
    if fmt == "parquet":
        yield from _parquet_records(path, text_column)
        return
    if fmt == "text":
        if text_column is not None:
            raise DataError(
                f"{path.name}: a .txt file has one tweet per line and no columns; text_column {text_column!r}"
                " applies to CSV and Parquet input"
            )
        for n, line in enumerate(_decoded_lines(path, counter), start=1):
            yield _checked(n, None, line.rstrip("\r\n"), "text")
        return
    if fmt != "csv":
        raise DataError(f"unknown input format {fmt!r}: expected csv, text or parquet")
    reader = csv.reader(_decoded_lines(path, counter), strict=True)
    first = True
    header: tuple[int, int | None, int] | None = None  # (text index, label index, columns) of a named header
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
        if first:
            first = False
            header = _header_layout(path, row, text_column, require_layout)
            if header is not None:
                continue  # the header line itself
        if header is not None:
            text_i, label_i, n_cols = header
            if len(row) != n_cols:
                yield Record(
                    line_no, None, None, "csv", f"wrong column count: expected {n_cols} (the header's), got {len(row)}"
                )
                continue
            pol = None if label_i is None else row[label_i].strip()
            yield _checked(line_no, pol, row[text_i], "header")
            continue
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


def _header_layout(
    path: Path, row: list[str], text_column: str | None, require_layout: bool
) -> tuple[int, int | None, int] | None:
    """The first CSV row as a header naming the text column: (text index, label index, columns),
    or None where the file is one of the fixed layouts (1, 2 or 6 columns, no named header)."""
    names = [c.strip() for c in row]
    lower = [n.lower() for n in names]
    shown = names if len(names) <= 20 else [*names[:20], f"... ({len(names)} columns)"]
    if text_column is not None:
        want = text_column.strip()
        if want in names:
            i = names.index(want)
        elif want.lower() in lower:
            i = lower.index(want.lower())
        else:
            raise DataError(
                f"{path.name}: no column {want!r} in the CSV header (its first line): found columns {shown}"
            )
    elif len(row) not in (1, 2, 6) and "text" in lower:
        i = lower.index("text")
    elif require_layout and len(row) not in (1, 2, 6):
        raise DataError(
            f"{path.name}: no text column: the first line has {len(row)} columns {shown}, none named 'text'"
            f" (expected a 'text' header or 1, 2 or 6 columns); {TEXT_COLUMN_HINT}"
        )
    else:
        return None
    label_i = next((j for j, n in enumerate(lower) if n in HEADER_WORDS and j != i), None)
    return i, label_i, len(row)


def _parquet_records(path: Path, text_column: str | None = None) -> Iterator[Record]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # not Parquet at all: say so, not a pyarrow traceback
        raise DataError(f"{path.name}: not a readable Parquet file ({e})") from e
    names = pf.schema_arrow.names
    text_col = text_column.strip() if text_column else "text"
    if text_col not in names:
        if text_column:
            raise DataError(f"{path.name}: no column {text_col!r} in the Parquet file: found columns {names}")
        raise DataError(f"{path.name}: Parquet input needs a 'text' column, found {names}; {TEXT_COLUMN_HINT}")
    label_col = next((c for c in ("polarity", "label") if c in names and c != text_col), None)
    cols = [text_col] + ([label_col] if label_col else [])
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
