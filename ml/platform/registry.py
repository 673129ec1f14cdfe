"""Model registry: log a model to MLflow, register it, and move the ``champion`` alias (atomically with its
event, :func:`move_champion`; :func:`rollback`). The promotion rule and its entry points: ``ml.stages.promotion``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from ml import models
from ml.models import SentimentModel, pyfunc

# the pyfunc wrapper lives in ml.models.pyfunc (what a serving environment unpickles); the name stays
# importable here because versions logged before the move pickled it as ml.platform.registry.SentimentPyfunc
from ml.models.pyfunc import SentimentPyfunc  # noqa: F401
from ml.platform import db, tracking
from ml.platform.config import Settings, get_settings
from ml.store import training_runs as store

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"


def log_model(model: SentimentModel, extra_requirements: list[str] | None = None) -> ModelInfo:
    """Log ``model`` into the active MLflow run as a pyfunc (``ml.models.pyfunc.log_model``: signature,
    input example, requirements pinned from the running environment, code); returns mlflow's ModelInfo.
    The family's own requirements (``model.pip_requirements()``) unless ``extra_requirements`` is given."""
    return pyfunc.log_model(model, extra_requirements)


def register(model_uri: str, run_id: str, settings: Settings | None = None) -> int:
    """Register a logged model as a new version of ``model_name``; returns the version."""
    import mlflow

    s = settings or get_settings()
    mv = mlflow.register_model(model_uri, s.model_name, tags={"run_id": run_id})
    return int(mv.version)


@dataclass
class ChampionInfo:
    version: int
    run_id: str | None  # MLflow's ModelVersion.run_id (None for a version registered without a run)
    tags: dict[str, str] = field(default_factory=dict)


def champion(settings: Settings | None = None) -> ChampionInfo | None:
    """The version behind the champion alias, or None before the first promotion."""
    import mlflow
    from mlflow.exceptions import MlflowException

    s = settings or get_settings()
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(s.model_name, s.champion_alias)
    except MlflowException as e:
        # only "no such model" / "no such alias" mean no champion; anything else (the tracking
        # server unreachable, a 5xx) must not look like "first model" to the promotion gate
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return ChampionInfo(version=int(mv.version), run_id=mv.run_id, tags=dict(mv.tags or {}))


class ArtifactMismatch(RuntimeError):
    """A registered version's artifacts are not the ones the platform recorded."""


def artifact_digest(path: str | Path) -> str:
    """sha256 over a model directory: every file's relative path and content, in sorted order."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode("utf-8") + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def version_artifact_digest(version: int, settings: Settings | None = None) -> str:
    """The digest of a registered version's artifacts as the registry serves them now."""
    import mlflow

    s = settings or get_settings()
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"models:/{s.model_name}/{version}", dst_path=tmp)
        return artifact_digest(local)


def _check_digest(local: str | Path, version: int, expected_sha256: str, model_name: str) -> None:
    got = artifact_digest(local)
    if got != expected_sha256:
        raise ArtifactMismatch(
            f"{model_name} v{version}: artifacts sha256 {got[:16]}... differ from the "
            f"recorded {expected_sha256[:16]}..."
        )


def load_verified(version: int, expected_sha256: str, settings: Settings | None = None) -> SentimentModel:
    """Download a version, check its digest against the recorded one, and only then load (unpickle) it."""
    import mlflow

    s = settings or get_settings()
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"models:/{s.model_name}/{version}", dst_path=tmp)
        _check_digest(local, version, expected_sha256, s.model_name)
        return mlflow.pyfunc.load_model(local).unwrap_python_model().model


def fetch_verified(version: int, expected_sha256: str, dest: Path, settings: Settings | None = None) -> Path:
    """A verified local copy of a version's artifacts in ``dest`` (a batch's model folder): a copy
    already there is re-hashed and reused, else the version is downloaded beside it, its digest
    checked against the recorded one, and renamed into place (concurrent callers: the first rename
    wins, the others use it). Raises :class:`ArtifactMismatch`; nothing unverified is left at ``dest``."""
    s = settings or get_settings()
    if dest.exists():
        try:
            _check_digest(dest, version, expected_sha256, s.model_name)
            return dest
        except ArtifactMismatch:
            log.warning("%s: local copy of v%s does not match its recorded digest: fetching it again", dest, version)
            shutil.rmtree(dest, ignore_errors=True)
    import mlflow

    tracking.configure(s)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{s.model_name}/{version}", dst_path=str(tmp)))
        _check_digest(local, version, expected_sha256, s.model_name)
        if local.resolve() != tmp.resolve():  # the artifacts' own folder becomes dest
            local.rename(tmp.with_name(tmp.name + ".d"))
            shutil.rmtree(tmp)
            tmp = tmp.with_name(tmp.name + ".d")
        try:
            tmp.rename(dest)
        except OSError:  # another process put its verified copy there first
            _check_digest(dest, version, expected_sha256, s.model_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_local(path: Path) -> SentimentModel:
    """Load a verified local copy (:func:`fetch_verified`) with the family's own loader (the model
    folder logged beside the pyfunc wrapper), without MLflow."""
    return models.load(Path(path) / "artifacts" / "model_dir")


def recorded_digest(version: int, settings: Settings | None = None) -> str | None:
    """The artifact sha256 the platform recorded for a registered version: on its latest promotion /
    rollback event, else at its registration (``training_runs`` of the run that registered it)."""
    import mlflow

    s = settings or get_settings()
    with db.connect(s) as conn:
        digest = store.version_digest(conn, s.model_name, version)
        if digest is None:
            run_id = mlflow.MlflowClient().get_model_version(s.model_name, str(version)).run_id
            digest = store.run_artifact_digest(conn, run_id) if run_id else None
    return digest


def load_version(version: int, settings: Settings | None = None) -> SentimentModel:
    """Load a registered version as a :class:`SentimentModel`, verified like the API's: its artifacts'
    digest must be the one the platform recorded (:func:`recorded_digest`) before anything is unpickled
    (evaluation against the champion, monitoring's reference, shadow, retraining). Raises
    :class:`ArtifactMismatch` when it differs or none was recorded."""
    s = settings or get_settings()
    digest = recorded_digest(version, s)
    if digest is None:
        raise ArtifactMismatch(
            f"{s.model_name} v{version}: no artifact digest was recorded for it (not registered by the "
            f"platform): not loaded"
        )
    return load_verified(version, digest, s)


def set_champion(version: int, settings: Settings | None = None) -> None:
    """Move the alias, nothing else: the platform moves it only through :func:`move_champion`."""
    import mlflow

    s = settings or get_settings()
    mlflow.MlflowClient().set_registered_model_alias(s.model_name, s.champion_alias, str(version))


def _restore_alias(previous: int | None, settings: Settings) -> None:
    """Put the alias back on ``previous`` (remove it when there was no champion), unless it is there already."""
    import mlflow

    now = champion(settings)
    if (now.version if now else None) == previous:
        return
    if previous is None:
        mlflow.MlflowClient().delete_registered_model_alias(settings.model_name, settings.champion_alias)
    else:
        set_champion(previous, settings)


def _commit(conn: psycopg.Connection) -> None:
    """The commit that makes a champion change part of the history (a function of its own: the tests
    inject a failure here)."""
    conn.commit()


def move_champion(
    conn: psycopg.Connection,
    version: int,
    previous: int | None,
    event: str,
    reason: str,
    digest: str,
    settings: Settings,
) -> None:
    """THE one way the platform changes the champion (promotion, a confirmed shadow promotion, rollback),
    atomically with its record. The caller holds :func:`ml.store.training_runs.lock_promotions` in ``conn``'s open
    transaction (and has read ``previous`` under it), and has computed ``digest`` (the sha256 the API checks
    before it unpickles ``version``) before anything moves:

    1. the event (``promoted`` / ``rollback``) and its digest are written in that transaction, not committed;
    2. the alias is moved;
    3. the transaction is committed (the lock is released with it).

    A failure at 1 or 2: the transaction is rolled back (by the caller's ``with``), and the alias is put back
    on ``previous`` in case the registry applied the move before failing. A failure at 3: the alias is put
    back on ``previous`` (compensation). Either way the previous champion keeps serving and the latest
    event still names it. Only a failure of the compensation itself (the registry down at that very
    moment, after accepting the move) leaves the alias ahead of the history: it is logged, and the API
    then refuses that alias (no event for it) and keeps serving the previous champion."""
    s = settings
    store.insert_event(conn, s.model_name, version, previous, event, reason)
    store.set_event_digest(conn, s.model_name, version, digest)
    try:
        set_champion(version, s)
        _commit(conn)
    except BaseException as exc:
        try:
            _restore_alias(previous, s)
        except Exception as undo:  # noqa: BLE001 - the first failure is the one raised; this one is logged
            log.critical(
                "%s: the %s of v%s failed (%s) and the alias could not be put back on v%s (%s): the alias is "
                "ahead of model_events; the API refuses it and keeps serving the previous champion. Move it "
                "back by hand (or run the promotion again)",
                s.model_name,
                event,
                version,
                exc,
                previous,
                undo,
            )
        raise


def rollback(settings: Settings | None = None, reason: str | None = None) -> dict[str, Any]:
    """Put the previous champion back (``ml promote --rollback``), from the history in ``model_events``;
    recorded as a ``rollback`` event. Rolling back again goes one step further back. Under the same lock
    as a promotion, and atomic with its event (:func:`move_champion`)."""
    s = settings or get_settings()
    with db.connect(s) as conn:
        store.lock_promotions(conn, s.model_name)
        current = champion(s)
        if current is None:
            raise ValueError(f"{s.model_name!r} has no champion: nothing to roll back")
        events = store.champion_history(conn, s.model_name)
        stack: list[int] = []  # the champions in force, oldest first; a rollback pops back to its target
        for version, previous, event in events:
            if event == "promoted":
                if not stack and previous is not None:
                    stack.append(previous)
                if not stack or stack[-1] != version:
                    stack.append(version)
            else:
                while stack and stack[-1] != version:
                    stack.pop()
                if not stack:
                    stack.append(version)
        if not stack or stack[-1] != current.version:
            raise ValueError(
                f"champion v{current.version} of {s.model_name!r} was not set by a recorded promotion "
                f"(model_events ends with v{stack[-1] if stack else '-'}): no previous champion to restore"
            )
        if len(stack) < 2:
            raise ValueError(
                f"v{current.version} is the first recorded champion of {s.model_name!r}: nothing before it"
            )
        target = stack[-2]
        why = reason or f"rollback from v{current.version} to v{target}"
        digest = store.version_digest(conn, s.model_name, target) or version_artifact_digest(target, s)
        move_champion(conn, target, current.version, "rollback", why, digest, s)
    log.warning("champion of %s rolled back: v%s -> v%s (%s)", s.model_name, current.version, target, why)
    return {"rolled_back": True, "from_version": current.version, "to_version": target, "reason": why}
