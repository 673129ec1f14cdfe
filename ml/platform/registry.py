"""Model registry: log a model to MLflow, register it, and move the ``champion`` alias.

The promotion rule is one function, :func:`decide_promotion` (its gate against a champion: ``ml.evaluation.gate``).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ml.models import SentimentModel
from ml.models.base import decide
from ml.platform.config import Settings, get_settings
from ml.store import models as store

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
PIP_REQUIREMENTS = ["scikit-learn", "pandas<3", "numpy", "joblib"]

try:  # the pyfunc base class; MLflow is a hard dependency of the platform
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover
    _PythonModel = object  # type: ignore[assignment,misc]


class SentimentPyfunc(_PythonModel):
    """MLflow pyfunc wrapper: any family, saved with its own ``save``; ``predict`` takes a list
    (or Series) of texts and returns a DataFrame with label, p_negative, p_positive."""

    def load_context(self, context) -> None:
        from ml import models

        self.model = models.load(context.artifacts["model_dir"])

    # a type hint keeps MLflow 3 from warning "Add type hints to the `predict` method"; with a
    # DataFrame hint MLflow neither infers a schema from it nor converts the input
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            model_input = model_input.iloc[:, 0]
        texts = [str(t) for t in list(model_input)]
        proba = self.model.predict_proba(texts)
        return pd.DataFrame(
            {"label": decide(proba[:, 1]).astype(int), "p_negative": proba[:, 0], "p_positive": proba[:, 1]}
        )


def log_model(model: SentimentModel, extra_requirements: list[str] | None = None):
    """Log ``model`` into the active MLflow run as a pyfunc; returns mlflow's ModelInfo. The
    environment is the base requirements plus the family's own (``model.pip_requirements()``,
    pinned, e.g. ``torch==2.13.0``) unless ``extra_requirements`` is given."""
    import mlflow

    if extra_requirements is None:
        extra_requirements = model.pip_requirements()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model.save(Path(tmp) / "model_dir")
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=SentimentPyfunc(),
            artifacts={"model_dir": str(model_dir)},
            pip_requirements=PIP_REQUIREMENTS + (extra_requirements or []),
        )


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
    import hashlib

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
    import os
    import shutil
    import uuid

    s = settings or get_settings()
    if dest.exists():
        try:
            _check_digest(dest, version, expected_sha256, s.model_name)
            return dest
        except ArtifactMismatch:
            log.warning("%s: local copy of v%s does not match its recorded digest: fetching it again", dest, version)
            shutil.rmtree(dest, ignore_errors=True)
    import mlflow

    from ml.platform import tracking

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
    from ml import models

    return models.load(Path(path) / "artifacts" / "model_dir")


def load_version(version: int, settings: Settings | None = None) -> SentimentModel:
    """Load a registered version as a :class:`SentimentModel`."""
    import mlflow

    s = settings or get_settings()
    pyfunc = mlflow.pyfunc.load_model(f"models:/{s.model_name}/{version}")
    return pyfunc.unwrap_python_model().model


@dataclass
class Decision:
    promote: bool
    reason: str
    checks: dict[str, Any] = field(default_factory=dict)


def decide_promotion(
    candidate: dict[str, float],
    champion_metrics: dict[str, float] | None,
    *,
    metric: str,
    margin: float,
    checks_passed: bool = True,
    checks_reason: str = "",
    gate: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
) -> Decision:
    """THE promotion rule. A candidate that failed its behavioural checks is never promoted; the first
    model (no champion) is. Against a champion: without ``policy``, its ``metric`` on the same held-out
    set must beat the champion's by more than ``margin``; with ``policy`` (``ml.stages.train.promote`` always
    passes the settings': ``mode``, ``slice_tolerance``, ``max_golden_flips``) the gate of
    :func:`ml.evaluation.gate.decide` on the paired evidence ``gate`` (``ml.evaluation.gate.compare``): margin AND a
    significant paired win AND no slice regression AND no golden right-to-wrong flip beyond the max.
    The per-criterion outcome is in ``Decision.checks``."""
    from ml.evaluation import gate as gate_mod

    if not checks_passed:
        return Decision(False, f"failed behavioural checks: {checks_reason}")
    if metric not in candidate:
        raise ValueError(f"candidate has no metric {metric!r}")
    if champion_metrics is None:
        return Decision(True, f"first model: promoted ({metric}={candidate[metric]:.4f})")
    if policy is None:
        c, ch = candidate[metric], champion_metrics[metric]
        if c > ch + margin:
            return Decision(True, f"{metric} {c:.4f} beats champion {ch:.4f} by more than {margin:.4f}")
        return Decision(False, f"{metric} {c:.4f} does not beat champion {ch:.4f} by more than {margin:.4f}")
    promote, reason, checks = gate_mod.decide(candidate, champion_metrics, gate, metric=metric, margin=margin, **policy)
    return Decision(promote, reason, checks)


def set_champion(version: int, settings: Settings | None = None) -> None:
    import mlflow

    s = settings or get_settings()
    mlflow.MlflowClient().set_registered_model_alias(s.model_name, s.champion_alias, str(version))


def rollback(settings: Settings | None = None, reason: str | None = None) -> dict[str, Any]:
    """Put the previous champion back (``ml promote --rollback``), from the history in ``model_events``;
    recorded as a ``rollback`` event. Rolling back again goes one step further back."""
    from ml.platform import db

    s = settings or get_settings()
    current = champion(s)
    if current is None:
        raise ValueError(f"{s.model_name!r} has no champion: nothing to roll back")
    with db.connect(s) as conn:
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
        raise ValueError(f"v{current.version} is the first recorded champion of {s.model_name!r}: nothing before it")
    target = stack[-2]
    why = reason or f"rollback from v{current.version} to v{target}"
    with db.connect(s) as conn:
        digest = store.version_digest(conn, s.model_name, target)
    digest = digest or version_artifact_digest(target, s)
    set_champion(target, s)
    with db.connect(s) as conn:
        store.insert_event(conn, s.model_name, target, current.version, "rollback", why)
        store.set_event_digest(conn, s.model_name, target, digest)
    log.warning("champion of %s rolled back: v%s -> v%s (%s)", s.model_name, current.version, target, why)
    return {"rolled_back": True, "from_version": current.version, "to_version": target, "reason": why}
