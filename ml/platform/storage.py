"""The shared store: every file that one process writes and another reads (batch shards and their
scored parts, a batch's scored file, drift report files, the monitoring reference) goes through it,
never through an assumed common disk.

``shared_storage_url`` (env ``SENTIMENT_SHARED_STORAGE_URL``) names it: any fsspec URL
(``s3://bucket/prefix``, ``gs://...``, ``file:///srv/shared``) or a plain path (relative: from the
repository root). Unset: the process's own ``var/`` folder, so on one host every file stays where it
always was (``var/batches``, ``var/reports``, ``var/reference``). A process's private state (the
API's prediction log, its model copy) never goes here: it stays in its own ``var/``.

Keys are ``/``-separated paths under the store's root (``batches/<id>/shards/00000.parquet``). On a
local store folders are created 0700 and files 0600 (the texts and scores are this account's
only) and a write lands under a temporary name, then is renamed: a reader never sees half a file.
An object store publishes an object only when its upload completes, which is the same guarantee.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ml.platform.config import REPO_ROOT, Settings, get_settings


class StoreError(ValueError):
    """A key that would leave the store's root, or a store URL that cannot be used."""


def _root_url(url: str) -> str:
    """A plain path resolved (relative: from the repository root); a URL as given."""
    if "://" in url:
        return url
    p = Path(url).expanduser()
    return str(p if p.is_absolute() else REPO_ROOT / p)


class SharedStore:
    """A folder of a filesystem that fsspec knows (the local disk, S3, GCS, ...): the few
    operations the platform needs, addressed by keys relative to the root."""

    def __init__(self, url: str | Path, storage_options: dict[str, Any] | None = None):
        self.url = _root_url(str(url))
        self.fs, root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"SharedStore({self.where()!r})"

    # ---- names -------------------------------------------------------------
    def child(self, *parts: str) -> SharedStore:
        """The store rooted at ``parts`` under this one (same filesystem)."""
        sub = SharedStore.__new__(SharedStore)
        sub.fs, sub.is_local = self.fs, self.is_local
        sub.root = self.path(*parts)
        sub.url = self.fs.unstrip_protocol(sub.root) if not self.is_local else sub.root
        return sub

    def path(self, *parts: str) -> str:
        """The filesystem path of a key; a key that climbs out of the root is refused."""
        key = posixpath.normpath("/".join(p.strip("/") for p in parts if p not in ("", "."))) if parts else "."
        if key.startswith("..") or key.startswith("/"):
            raise StoreError(f"{'/'.join(parts)!r} leaves the shared store {self.where()}")
        return self.root if key == "." else posixpath.join(self.root, key)

    def where(self, *parts: str) -> str:
        """What to record and print for a key: a local path, else the full URL (``s3://...``)."""
        p = self.path(*parts)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    def real_path(self, *parts: str) -> Path | None:
        """The key's path on this host's disk when the store is local (else None)."""
        return Path(self.path(*parts)) if self.is_local else None

    # ---- reading -----------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.path(*parts)))

    def open(self, *parts: str, mode: str = "rb") -> IO[Any]:
        """A file of the store opened for reading (``mode`` "rb" or "r")."""
        if "w" in mode or "a" in mode or "+" in mode:
            raise StoreError("open() reads; write through writer() (atomic, private)")
        return self.fs.open(self.path(*parts), mode)

    def read_bytes(self, *parts: str) -> bytes:
        with self.open(*parts) as f:
            return f.read()

    def list(self, *parts: str) -> list[str]:
        """Names (not paths) directly under a key; [] when it does not exist."""
        try:
            return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path(*parts), detail=False))
        except FileNotFoundError:
            return []

    def size(self, *parts: str) -> int:
        return int(self.fs.size(self.path(*parts)))

    # ---- writing -----------------------------------------------------------
    def makedirs(self, *parts: str) -> None:
        """The folder of a key (0700 on a local store; object stores have no folders)."""
        if not self.is_local:
            return
        root, leaf = Path(self.root), Path(self.path(*parts))
        chain = [root, *(root / rel for rel in _prefixes(leaf.relative_to(root)))]
        for d in chain:
            if not d.is_dir():
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(d, 0o700)
        if leaf != root:
            os.chmod(leaf, 0o700)

    @contextmanager
    def writer(self, *parts: str) -> Iterator[IO[bytes]]:
        """A binary file to write the key with, published only when the block exits without an
        error: a local store writes ``.<name>.<random>.tmp`` (created 0600 before a byte is
        written) and renames it over the key; an object store's upload completes at close."""
        path = self.path(*parts)
        if not self.is_local:
            f = self.fs.open(path, "wb")
            try:
                yield f
            except BaseException:
                discard = getattr(f, "discard", None)  # an object store's upload aborted: nothing published
                if callable(discard):
                    discard()
                with suppress(Exception):
                    f.close()
                    self.fs.rm(path)
                raise
            f.close()
            return
        target = Path(path)
        self.makedirs(posixpath.dirname(path).removeprefix(self.root).lstrip("/"))
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_bytes(self, data: bytes, *parts: str) -> None:
        with self.writer(*parts) as f:
            f.write(data)

    def put_file(self, local: Path, *parts: str) -> None:
        """Copy a local file into the store (atomically, as :meth:`writer`)."""
        with self.writer(*parts) as f, Path(local).open("rb") as r:
            shutil.copyfileobj(r, f, 1 << 20)

    def put_dir(self, local: Path, *parts: str) -> None:
        """Copy a local folder's files (recursively) under a key."""
        base = Path(local)
        for f in sorted(base.rglob("*")):
            if f.is_file():
                self.put_file(f, *parts, *f.relative_to(base).parts)

    def remove(self, *parts: str, recursive: bool = False) -> None:
        """Remove a key (a folder and everything under it with ``recursive``); absent: nothing."""
        path = self.path(*parts)
        with suppress(FileNotFoundError):
            if self.is_local and recursive:
                shutil.rmtree(path)
            elif self.fs.exists(path):
                self.fs.rm(path, recursive=recursive)

    # ---- a real path for a library that needs one --------------------------
    def local_copy(self, cache: Path, *parts: str) -> Path:
        """A path on this host's disk holding the key (a file or a folder): the key itself on a local
        store, else a private copy under ``cache`` (downloaded when missing or of another size)."""
        if self.is_local:
            return Path(self.path(*parts))
        src = self.path(*parts)
        dest = Path(cache, *self.path(*parts).lstrip("/").split("/"))
        if self.fs.isdir(src):
            for name in self.list(*parts):
                self.local_copy(cache, *parts, name)
            return dest
        if dest.exists() and dest.stat().st_size == self.fs.size(src):
            return dest
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f, self.fs.open(src, "rb") as r:
                shutil.copyfileobj(r, f, 1 << 20)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest


def _prefixes(rel: Path) -> list[Path]:
    return [Path(*rel.parts[: i + 1]) for i in range(len(rel.parts))]


def shared_store(settings: Settings | None = None) -> SharedStore:
    """The store named by ``shared_storage_url`` (unset: this process's ``var/``)."""
    s = settings or get_settings()
    return SharedStore(s.shared_storage_url or s.var)


def reference_store(version: int, settings: Settings | None = None) -> SharedStore:
    """The monitoring reference of one champion version (and its calibrator): ``reference/<model>/v<N>/``."""
    s = settings or get_settings()
    return shared_store(s).child("reference", s.model_name, f"v{int(version)}")


def reports_store(settings: Settings | None = None) -> SharedStore:
    """The drift reports' files: ``reports/<report id>/{report.html,report.json,summary.json}``."""
    return shared_store(settings).child("reports")


def cache_dir(settings: Settings | None = None) -> Path:
    """This process's private copies of shared files (``var/cache/shared``)."""
    return (settings or get_settings()).var / "cache" / "shared"


def open_url(url: str, mode: str = "rb") -> IO[Any]:
    """Open for reading what :meth:`SharedStore.where` recorded (a local path or a URL)."""
    return fsspec.open(url, mode).open()


@contextmanager
def reading(url: str) -> Iterator[str | IO[Any]]:
    """What a reader that takes a path or a file (pyarrow) should open for a recorded location: a local
    path as it is (read natively, memory-mapped), else the store's file object, closed afterwards."""
    if "://" not in url or url.startswith("file://"):
        yield url.removeprefix("file://")
        return
    with fsspec.open(url, "rb") as f:
        yield f
