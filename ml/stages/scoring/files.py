"""A batch's files: where inputs may come from (confinement), whether an input is text at all,
inputs read through the one tweet reader, their content hash, the batch folder (outputs)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ml.data import DataError
from ml.data.read import detect_format, iter_records
from ml.platform.config import REPO_ROOT, Settings, get_settings
from ml.platform.storage import SharedStore, shared_store

#: bytes of an input looked at to decide whether it is text at all
SNIFF_BYTES = 64 << 10
#: a first block with more than this share of control bytes (not tab, newline, carriage return,
#: form feed) is not text
MAX_CONTROL_SHARE = 0.01
#: a first block that is not UTF-8 and whose non-UTF-8 lines are more than this share bytes >= 0x80
#: is not Latin-1 text either (Sentiment140's Latin-1 lines are mostly ASCII)
MAX_HIGH_SHARE = 0.30

ROOTS_SETTING = "batch_input_roots (env SENTIMENT_BATCH_INPUT_ROOTS, a JSON list)"


def _from_repo(p: Path) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def inbox_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).var / "inbox"


def input_roots(settings: Settings | None = None) -> list[Path]:
    """The folders batch input may come from, resolved: the inbox (always: the sentiment_inbox DAG
    scores what lands there) and every folder of ``batch_input_roots`` (relative: from the
    repository root)."""
    s = settings or get_settings()
    roots = [inbox_dir(s), *(_from_repo(Path(r)) for r in s.batch_input_roots)]
    out: list[Path] = []
    for r in roots:
        rr = r.resolve()  # a root need not exist yet (the inbox is created on first use)
        if rr not in out:
            out.append(rr)
    return out


def output_root(settings: Settings | None = None) -> Path:
    """Where each batch's folder is (``<root>/<batch id>/``): ``batch_output_root`` (relative: from
    the repository root), else ``var/batches``."""
    s = settings or get_settings()
    return _from_repo(Path(s.batch_output_root)) if s.batch_output_root else s.var / "batches"


def batch_dir(batch_id: str, settings: Settings | None = None) -> Path:
    """A batch's folder on a local store (see :func:`batches_store` for any store)."""
    return output_root(settings) / batch_id


def batches_store(settings: Settings | None = None) -> SharedStore:
    """Where every batch's files are (``<batch id>/shards/*.parquet``, ``<batch id>/scored.parquet``):
    ``batch_output_root`` when set (a folder every worker mounts), else ``batches/`` of the shared
    store (``shared_storage_url``; unset: ``var/batches``, as :func:`output_root`)."""
    s = settings or get_settings()
    return SharedStore(output_root(s)) if s.batch_output_root else shared_store(s).child("batches")


def model_dir(batch_id: str, settings: Settings | None = None) -> Path:
    """The verified model copy a process scores a batch with: in the batch's folder on a local store
    (fetched once by the plan), else in this process's own ``var/cache`` (fetched once per host)."""
    s = settings or get_settings()
    local = batches_store(s).real_path(batch_id, "model")
    return local if local is not None else s.var / "cache" / "batches" / batch_id / "model"


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) readable by this account only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def confined_input(input_path: str | Path, settings: Settings | None = None) -> Path:
    """``input_path`` resolved (every symlink followed) if it lies under one of the allowed input
    roots and is a regular file; else :class:`DataError` with the reason. Nothing is opened: the
    checks use the path and ``stat`` only, so a file outside the roots is never read (not even a
    FIFO or a file this account may read but the caller may not)."""
    s = settings or get_settings()
    given = Path(input_path).expanduser()
    roots = input_roots(s)
    try:
        where = given.resolve()  # strict=False first: no existence check of a path outside the roots
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise DataError(f"batch input {given} cannot be resolved: {e}") from e
    if not any(where.is_relative_to(r) for r in roots):
        via = f" (it resolves to {where})" if where != given.absolute() else ""
        raise DataError(
            f"batch input {given}{via} is outside the folders batch scoring may read"
            f" ({', '.join(str(r) for r in roots)}): copy it into the inbox {roots[0]}, or add its folder to"
            f" {ROOTS_SETTING}"
        )
    try:
        path = given.resolve(strict=True)
    except FileNotFoundError as e:
        raise DataError(f"batch input not found: {given}") from e
    except (OSError, RuntimeError) as e:
        raise DataError(f"batch input {given} cannot be resolved: {e}") from e
    if not any(path.is_relative_to(r) for r in roots):  # changed between the two resolutions
        raise DataError(f"batch input {given} resolves outside the allowed folders; add its folder to {ROOTS_SETTING}")
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise DataError(f"batch input is a directory, expected a file: {given}")
    if not stat.S_ISREG(mode):
        raise DataError(f"batch input is not a regular file (a FIFO, socket or device): {given}")
    return path


def check_text(path: Path, fmt: str | None = None) -> None:
    """Refuse an input that is empty or not text (read: its first :data:`SNIFF_BYTES` only):
    NUL bytes (binary, or UTF-16/32), more than :data:`MAX_CONTROL_SHARE` control bytes, or bytes
    that are neither UTF-8 nor plausible Latin-1. Parquet is binary by design: the reader checks it."""
    fmt = fmt or detect_format(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path.name} is empty (0 bytes): nothing to score")
    if fmt == "parquet":
        return
    with path.open("rb") as f:
        block = f.read(SNIFF_BYTES)
        full = len(block) == SNIFF_BYTES
    if not block.strip():
        raise DataError(f"{path.name} holds only blank lines: nothing to score")
    if b"\x00" in block:
        if block[:2] in (b"\xff\xfe", b"\xfe\xff") or block[1::2].count(0) > len(block) // 4:
            raise DataError(f"{path.name} looks like UTF-16 text (NUL bytes): save it as UTF-8 or Latin-1 and retry")
        raise DataError(f"{path.name} is not a text file (NUL bytes in its first {len(block):,} bytes): refused")
    controls = sum(block.count(bytes([c])) for c in (*range(0x01, 0x20), 0x7F) if c not in (0x09, 0x0A, 0x0C, 0x0D))
    if controls > MAX_CONTROL_SHARE * len(block):
        raise DataError(
            f"{path.name} is not a text file ({controls / len(block):.0%} control bytes in its first"
            f" {len(block):,} bytes): refused"
        )
    lines = block.split(b"\n")
    if full and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut in the middle of a character
    odd = high = 0
    for raw in lines:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            odd += len(raw)
            high += sum(1 for b in raw if b >= 0x80)
    if odd and high > MAX_HIGH_SHARE * odd:
        raise DataError(
            f"{path.name} is neither UTF-8 nor Latin-1 text ({high / odd:.0%} of the bytes of its non-UTF-8 lines"
            " are above 0x7F): refused"
        )


def iter_rows(
    path: Path,
    fmt: str | None = None,
    encoding: Counter | None = None,
    text_column: str | None = None,
) -> Iterator[tuple[int, str | None, str | None]]:
    """Yield (line/row number, text or None, reject reason or None), through the one tweet
    reader (:func:`ml.data.read.iter_records`) that training uses too. A CSV that is none of the
    reader's layouts raises :class:`DataError` naming its columns (``text_column`` picks one)."""
    for rec in iter_records(path, encoding, fmt, text_column=text_column, require_layout=True):
        yield rec.line, rec.text, rec.reason


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
