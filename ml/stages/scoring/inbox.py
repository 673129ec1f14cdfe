"""The inbox folder: files whose content has not been scored yet, and the inbox DAG's trigger
arguments (one batch-scoring run per new content)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ml.data import DataError
from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.stages.scoring.files import confined_input, file_sha256, inbox_dir
from ml.store import batches as store

log = logging.getLogger(__name__)

__all__ = ["inbox_dir", "inbox_trigger_kwargs", "pending_inbox_file", "pending_inbox_files"]


def pending_inbox_files(settings: Settings | None = None, settle_seconds: float = 10.0) -> list[dict]:
    """Files in the inbox folder whose content has not been scored yet, oldest first:
    ``{"path", "sha256", "run_id"}``. ``run_id`` is deterministic (``inbox__<content hash>``),
    so the inbox DAG triggers each content once. Hidden files (write to ``.name`` and rename)
    and files modified less than ``settle_seconds`` ago (still being written) wait. A symlink
    that leads outside the allowed input folders, or to anything but a regular file, is skipped
    with a warning and never read. Content whose batch failed at its plan (empty, binary, ...) is
    not listed again: its run stays failed, with the reason."""
    s = settings or get_settings()
    inbox = inbox_dir(s)
    inbox.mkdir(parents=True, exist_ok=True)
    now = time.time()
    files = []
    for p in inbox.iterdir():
        if p.name.startswith(".") or ".scored." in p.name or (p.is_dir() and not p.is_symlink()):
            continue  # hidden (being written), an output of an earlier version, a folder
        try:
            confined_input(p, s)
        except DataError as e:
            log.warning("inbox: skipping %s: %s", p.name, e)
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
    with db.connect(s) as conn:
        done = store.done_input_hashes(conn, failed_too=True)
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
