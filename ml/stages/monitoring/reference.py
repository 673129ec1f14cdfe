"""The champion's reference for drift reports: its own predictions on its held-out set, computed
once per champion version and cached as Parquet (with its vocabulary) under ``var/reference/``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.models.base import decide
from ml.platform.config import Settings, get_settings
from ml.platform.registry import ChampionInfo
from ml.platform.storage import reading, reference_store
from ml.stages.monitoring import MonitoringError
from ml.stages.monitoring.descriptors import (
    add_descriptors,
    tokens,
)

log = logging.getLogger(__package__)  # the stage's logger, as before the split into modules


REFERENCE_VERSION = 1  # bump when the reference's columns change: old caches are recomputed


def latest_promoted_model(events: Iterable[Any]) -> str | None:
    """The model named by the latest of a run's triggering champion asset events (``extra["model"]``), or None.
    Airflow hands a run's consumed events in no set order (a run consumes every event since the DAG's previous
    asset-triggered run: several promotions, possibly of several models sharing one Airflow), so the latest is
    chosen by its timestamp, never by its position."""
    named = [e for e in events if (getattr(e, "extra", None) or {}).get("model")]
    if not named:
        return None
    return str(max(named, key=lambda e: e.timestamp).extra["model"])


def reference_dir(version: int, settings: Settings | None = None) -> Path:
    """The reference's folder when the shared store is this host's disk (see :func:`reference_location`)."""
    s = settings or get_settings()
    local = reference_store(version, s).real_path()
    return local if local is not None else s.reference_dir / s.model_name / f"v{version}"


def reference_location(version: int, settings: Settings | None = None) -> str:
    """Where the reference of ``version`` is: a local folder or the shared store's URL."""
    return reference_store(version, settings).where()


def load_reference(
    settings: Settings | None = None, version: int | None = None
) -> tuple[pd.DataFrame, dict[str, Any], set[str]]:
    """The reference (frame, meta, vocabulary) of model ``version`` (default: the champion): from the
    cache, else computed once."""
    from ml.platform import registry, tracking

    s = settings or get_settings()
    tracking.configure(s)
    champ = registry.champion(s)
    if version is not None and (champ is None or champ.version != version):
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            mv = mlflow.MlflowClient().get_model_version(s.model_name, str(version))
        except MlflowException as e:
            raise MonitoringError(f"{s.model_name!r} v{version} is not registered: {e}") from e
        champ = registry.ChampionInfo(version=int(mv.version), run_id=mv.run_id, tags=dict(mv.tags or {}))
    if champ is None:
        raise MonitoringError(
            f"no champion for {s.model_name!r}: nothing to compare the predictions with; train and promote a model first"
        )
    rs = reference_store(champ.version, s)  # the shared store: built by one process, read by others
    target = rs.where()
    if rs.exists("meta.json"):
        meta = json.loads(rs.read_bytes("meta.json"))
        if meta.get("format") == REFERENCE_VERSION:
            with reading(rs.where("reference.parquet")) as f:
                frame = pd.read_parquet(f)
            vocab = set(rs.read_bytes("vocabulary.txt").decode("utf-8").split("\n")) - {""}
            log.info(
                "reference of %s v%s: %s rows (cached in %s)", s.model_name, champ.version, f"{len(frame):,}", target
            )
            return frame, meta, vocab
    return build_reference(champ, s)


def build_reference(
    champ: ChampionInfo, settings: Settings | None = None
) -> tuple[pd.DataFrame, dict[str, Any], set[str]]:
    """Score the champion's held-out set (capped, stratified) and cache it with its vocabulary."""
    import mlflow

    from ml.data import DataError
    from ml.data.snapshots import get_snapshot
    from ml.data.splits import split, stratified_sample
    from ml.platform import registry

    s = settings or get_settings()
    t0 = time.perf_counter()
    # a version registered without a run (run_id None) is refused by MLflow itself, as before
    run = mlflow.MlflowClient().get_run(champ.run_id)  # type: ignore[arg-type]
    dataset_hash = run.data.tags.get("dataset_hash")
    if not dataset_hash:
        raise MonitoringError(f"champion v{champ.version} (run {champ.run_id}) has no dataset_hash tag")
    try:
        snap = get_snapshot(dataset_hash, s)
        frame = snap.load()
    except (DataError, FileNotFoundError, OSError) as e:
        raise MonitoringError(f"the champion's dataset snapshot {dataset_hash[:16]} cannot be read: {e}") from e
    train_df, test_df = split(frame, s.test_size, s.seed)
    n_held_out = len(test_df)
    test_df = stratified_sample(test_df, s.monitoring_reference_max_rows, s.seed)
    model = registry.load_version(champ.version, s)
    texts = test_df["text"].astype(str).tolist()
    log.info(
        "reference of %s v%s: scoring %s held-out tweets of snapshot %s",
        s.model_name,
        champ.version,
        f"{len(texts):,}",
        dataset_hash[:16],
    )
    proba = model.predict_proba(texts)
    mode = str(getattr(model, "params", {}).get("preprocess", "basic"))
    vocab_fn = getattr(model, "vocabulary", None)
    vocab: set[str] = set()
    if callable(vocab_fn):
        try:
            vocab = {str(w) for w in vocab_fn()}
            vocab_source = "model"
        except Exception as e:  # noqa: BLE001 - a family whose vocabulary() is not usable: fall back, said in the meta
            log.warning("vocabulary() of %s failed (%s); using the training split's words", type(model).__name__, e)
    if not vocab:
        # the training split's words seen at least twice (TF-IDF's min_df=2): the held-out texts
        # themselves would make the reference's OOV share 0 by construction
        from collections import Counter

        counts = Counter(t for toks in tokens(train_df["text"].astype(str).tolist(), mode) for t in set(toks))
        vocab = {w for w, c in counts.items() if c >= 2}
        vocab_source = "training split (model has no vocabulary())"
    ref = pd.DataFrame(
        {
            "text": texts,
            "label": decide(proba[:, 1]).astype(np.int64),
            "p_positive": proba[:, 1].astype(np.float64),
            "true_label": test_df["label"].to_numpy().astype(np.int64),
        }
    )
    ref = add_descriptors(ref, vocab, mode)
    meta = {
        "format": REFERENCE_VERSION,
        "model_name": s.model_name,
        "version": champ.version,
        "run_id": champ.run_id,
        "family": run.data.tags.get("family"),
        "dataset_hash": snap.hash,
        "held_out_rows": n_held_out,
        "rows": len(ref),
        "preprocess": mode,
        "vocabulary_source": vocab_source,
        "vocabulary_size": len(vocab),
        "training_accuracy": run.data.metrics.get("accuracy"),
        "reference_accuracy": float((ref["label"] == ref["true_label"]).mean()),
        "created_at": datetime.now(UTC).isoformat(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    rs = reference_store(champ.version, s)
    local = rs.real_path()
    if local is None:  # an object store: each file uploaded whole, meta.json (what readers look for) last
        with tempfile.TemporaryDirectory(prefix="reference-") as staging:
            ref.to_parquet(Path(staging) / "reference.parquet", index=False)
            rs.put_file(Path(staging) / "reference.parquet", "reference.parquet")
        rs.write_bytes("\n".join(sorted(vocab)).encode("utf-8"), "vocabulary.txt")
        rs.write_bytes(json.dumps(meta, indent=2).encode(), "meta.json")
        target = rs.where()
    else:
        target = str(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=local.parent, prefix=".tmp-"))
        ref.to_parquet(tmp / "reference.parquet", index=False)
        (tmp / "vocabulary.txt").write_text("\n".join(sorted(vocab)), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if local.exists():  # a stale format, or a concurrent builder: replace it
            shutil.rmtree(local, ignore_errors=True)
        try:
            os.rename(tmp, local)
        except OSError:  # a concurrent builder won: theirs is the same content
            shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "reference of %s v%s: %s rows cached in %s (%.1fs; vocabulary: %s, %s words)",
        s.model_name,
        champ.version,
        f"{len(ref):,}",
        target,
        meta["seconds"],
        vocab_source,
        f"{len(vocab):,}",
    )
    return ref, meta, vocab
