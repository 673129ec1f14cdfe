"""The inbox folder: files whose content has not been scored yet, and the inbox DAG's trigger
arguments (one batch-scoring run per new content)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ml.platform.config import Settings, get_settings
from ml.stages.scoring.files import file_sha256
from ml.store import batches as store

log = logging.getLogger(__name__)


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
