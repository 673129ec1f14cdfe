"""Distillation: a fast model that learns from a slow one (issue 27, item 3).

The **teacher** (a registered version, by default the champion; in production the transformer) labels a
corpus with soft probabilities; the **student** (the fast family, ``tfidf_lr``) trains on those soft labels
plus the original hard labels of the snapshot's training split. The result is a candidate like any other:
an MLflow run of the snapshot (so ``ml evaluate`` scores it on the same held-out split, beside the
champion), calibrated on rows carved from the training split, registered, and promoted only through the same
paired gate (``ml.stages.promotion``). Its run names its teacher: tags ``teacher`` (``name vN``),
``teacher_version``, ``teacher_run_id``, ``teacher_family``, ``distilled=true``.

Soft labels with scikit-learn's logistic regression: each soft text enters twice, positive with weight
``soft_weight * p`` and negative with weight ``soft_weight * (1 - p)`` (:meth:`ml.models.tfidf.TfidfLogReg.
fit_soft`): the weighted log loss is exactly the cross-entropy against the teacher's probability.

The corpus (what the teacher labels):

- ``training`` (default): the snapshot's own training split (the rows the student also sees with hard labels);
- a tweet file (``corpus_path``: any layout ``ml.data.read`` reads, labels ignored, e.g. the 1.6M file);
- ``predictions``: the texts the platform served (the predictions table, ``ml.store.drift_reports``).

Texts of the gate's held-out split, of the calibration rows and of the external evaluation file are removed
from the corpus first: the student never trains on what it is judged or calibrated on.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml import models
from ml.data import DataError
from ml.data.read import iter_records
from ml.data.splits import calibration_split, split_for, stratified_sample
from ml.evaluation import external
from ml.models.base import Scorer
from ml.platform import db, registry, tracking
from ml.platform.config import Settings, get_settings
from ml.stages.train import fit_calibration, log_training_datasets
from ml.store import drift_reports as drift_reports_store
from ml.store import snapshots as snapshots_store
from ml.store import training_runs as store

log = logging.getLogger(__name__)

#: the families that can learn from soft labels (``fit_soft``)
STUDENT_FAMILIES = ("tfidf_lr",)
CORPUS_SOURCES = ("training", "file", "predictions")
#: the teacher labels the corpus in chunks of this many texts (progress in the log)
LABEL_CHUNK = 5000


def resolve_teacher(teacher: str | int | None, settings: Settings) -> dict[str, Any]:
    """``champion`` (or None) or a registered version number -> {version, run_id, family, name}."""
    import mlflow

    client = mlflow.MlflowClient()
    if teacher is None or str(teacher).strip().lower() == "champion":
        champ = registry.champion(settings)
        if champ is None:
            raise ValueError(
                f"no champion to distil from: {settings.model_name!r} has no {settings.champion_alias!r} alias"
            )
        version = int(champ.version)
    else:
        try:
            version = int(str(teacher).strip().lstrip("v"))
        except ValueError:
            raise ValueError(
                f"teacher must be 'champion' or a version number of {settings.model_name}, got {teacher!r}"
            ) from None
    try:
        mv = client.get_model_version(settings.model_name, str(version))
    except Exception as e:  # noqa: BLE001 - MLflow raises its own RestException for an unknown version
        raise ValueError(f"teacher: {settings.model_name} has no version {version} ({type(e).__name__})") from None
    if not mv.run_id:
        raise ValueError(f"teacher: {settings.model_name} v{version} has no MLflow run")
    family = (mv.tags or {}).get("family") or client.get_run(mv.run_id).data.tags.get("family", "?")
    return {"version": version, "run_id": mv.run_id, "family": family, "name": f"{settings.model_name} v{version}"}


def corpus_texts(
    source: str, train_df: pd.DataFrame, settings: Settings, path: str | Path | None = None, max_rows: int | None = None
) -> list[str]:
    """The distinct texts the teacher labels (see the module's docstring), at most ``max_rows`` of them
    (a sample that is the same on every run: seeded by ``Settings.seed``)."""
    if source not in CORPUS_SOURCES:
        raise ValueError(f"unknown corpus {source!r}; known: {', '.join(CORPUS_SOURCES)}")
    if source == "training":
        texts = train_df["text"].tolist()
    elif source == "file":
        if path is None or not Path(path).is_file():
            raise DataError(f"distillation corpus file {path!r} does not exist")
        texts = [r.text for r in iter_records(path) if r.reason is None and r.text]
    else:
        with db.connect(settings) as conn:
            rows = drift_reports_store.period_predictions(
                conn,
                settings.model_name,
                datetime(1970, 1, 1, tzinfo=UTC),
                datetime.now(UTC),
                max_rows or 10**9,
                settings.seed,
            )
        texts = [r[0] for r in rows]
    texts = list(dict.fromkeys(t for t in texts if t))
    if max_rows and len(texts) > max_rows:
        idx = np.random.default_rng(settings.seed).choice(len(texts), size=int(max_rows), replace=False)
        texts = [texts[i] for i in sorted(idx)]
    return texts


def teacher_proba(teacher: Scorer, texts: list[str]) -> tuple[np.ndarray, float]:
    """(the teacher's served P(positive) of every text, seconds), scored in chunks with progress logged."""
    out = np.zeros(len(texts), dtype=np.float64)
    t0 = time.perf_counter()
    for i in range(0, len(texts), LABEL_CHUNK):
        out[i : i + LABEL_CHUNK] = np.asarray(teacher.predict_proba(texts[i : i + LABEL_CHUNK]))[:, 1]
        done = min(i + LABEL_CHUNK, len(texts))
        el = time.perf_counter() - t0
        log.info("teacher labelled %s/%s texts (%.0f texts/s)", f"{done:,}", f"{len(texts):,}", done / max(el, 1e-9))
    return out, time.perf_counter() - t0


def run_distillation(
    snapshot_hash: str | None = None,
    teacher: str | int | None = "champion",
    corpus: str = "training",
    corpus_path: str | Path | None = None,
    max_corpus_rows: int | None = None,
    sample_size: int | None = None,
    soft_weight: float = 1.0,
    airflow_run_id: str | None = None,
    settings: Settings | None = None,
) -> str:
    """:func:`distill` on ``snapshot_hash`` or, when empty, the latest stored snapshot (the DAG's and the
    CLI's entry point); returns the student's MLflow run id."""
    s = settings or get_settings()
    if not snapshot_hash:
        with db.connect(s) as conn:
            snapshot_hash = snapshots_store.latest_hash(conn)
        if not snapshot_hash:
            raise DataError("no dataset snapshot yet: run `ml data validate <file>` (or training) first")
    return distill(
        snapshot_hash,
        teacher=teacher,
        corpus=corpus,
        corpus_path=corpus_path or None,
        max_corpus_rows=max_corpus_rows,
        sample_size=sample_size,
        soft_weight=soft_weight,
        airflow_run_id=airflow_run_id,
        settings=s,
    )


def distill(
    snapshot_hash: str,
    teacher: str | int | None = "champion",
    corpus: str = "training",
    corpus_path: str | Path | None = None,
    max_corpus_rows: int | None = None,
    sample_size: int | None = None,
    soft_weight: float = 1.0,
    params: dict[str, Any] | None = None,
    family: str = "tfidf_lr",
    airflow_run_id: str | None = None,
    settings: Settings | None = None,
) -> str:
    """Train a student of ``family`` on the snapshot's training split (hard labels; optionally a stratified
    ``sample_size``) plus the teacher's soft labels of the corpus; log it as a candidate run of the snapshot
    (tags name the teacher) and record it in ``training_runs``. Returns the MLflow run id: evaluate, register
    and promote it like any candidate (``ml distill --promote`` and the ``sentiment_distillation`` DAG do)."""
    import mlflow

    s = settings or get_settings()
    if family not in STUDENT_FAMILIES:
        raise ValueError(
            f"distillation student must be one of {', '.join(STUDENT_FAMILIES)} (soft labels), got {family!r}"
        )
    if not 0 <= soft_weight <= 100:
        raise ValueError(f"soft_weight must be within [0, 100], got {soft_weight}")
    student = models.create(family, **dict(params or {}))
    snap, train_df, test_df = split_for(snapshot_hash, s)
    train_df = stratified_sample(train_df, sample_size, s.seed)
    train_df, cal_df = calibration_split(train_df, s.calibration, s.seed)
    tracking.configure(s)
    t_info = resolve_teacher(teacher, s)
    texts = corpus_texts(corpus, train_df, s, corpus_path, max_corpus_rows)
    ext = external.load(s)
    banned = set(test_df["text"]) | set(cal_df["text"]) | (set(ext.texts) if ext is not None else set())
    n_before = len(texts)
    texts = [t for t in texts if t not in banned]
    if not texts and soft_weight > 0:
        raise DataError(
            f"the distillation corpus ({corpus}) holds no text outside the held-out/calibration/external sets"
        )
    log.info(
        "distilling %s into %s: %s corpus texts (%s removed: held-out, calibration or external), %s hard-labelled",
        t_info["name"],
        family,
        f"{len(texts):,}",
        f"{n_before - len(texts):,}",
        f"{len(train_df):,}",
    )
    teacher_model = registry.load_version(t_info["version"], s)
    p_soft, label_seconds = teacher_proba(teacher_model, texts)
    del teacher_model
    commit = tracking.git_commit()
    with mlflow.start_run(run_name=f"distilled-{family}-{snap.hash[:8]}") as run:
        mlflow.set_tags(
            {
                "dataset_hash": snap.hash,
                "git_commit": commit,
                "family": family,
                "stage": "candidate",
                "distilled": "true",
                "teacher": t_info["name"],
                "teacher_version": str(t_info["version"]),
                "teacher_run_id": t_info["run_id"],
                "teacher_family": t_info["family"],
                **({"airflow_run_id": airflow_run_id} if airflow_run_id else {}),
            }
        )
        mlflow.log_params(
            {
                "family": family,
                "teacher": t_info["name"],
                "corpus": corpus if corpus != "file" else f"file:{Path(str(corpus_path)).name}",
                "n_corpus": len(texts),
                "soft_weight": soft_weight,
                "sample_size": sample_size or "all",
                "n_train": len(train_df),
                "n_test": len(test_df),
                "seed": s.seed,
                "test_size": s.test_size,
                **{f"model.{k}": v for k, v in student.get_params().items()},
            }
        )
        log_training_datasets(
            run.info.run_id, snap, train_df, test_df, sample_size, f"held-out (test_size {s.test_size}, seed {s.seed})"
        )
        t0 = time.perf_counter()
        student.fit_soft(  # type: ignore[attr-defined]
            train_df["text"].tolist(), train_df["label"].to_numpy(), texts, p_soft, soft_weight=soft_weight
        )
        seconds = time.perf_counter() - t0
        mlflow.log_metrics(
            {
                "training_seconds": seconds,
                "teacher_label_seconds": label_seconds,
                "teacher_texts_per_second": len(texts) / label_seconds if label_seconds > 0 else 0.0,
                "corpus_teacher_positive_share": float((p_soft >= 0.5).mean()) if len(p_soft) else float("nan"),
            }
        )
        fit_calibration(student, cal_df, s.calibration, "calibration rows carved from the training split")
        info = registry.log_model(student)
        mlflow.set_tag("model_uri", info.model_uri)
        run_id = run.info.run_id
    with db.connect(s) as conn:
        store.insert_run(
            conn,
            run_id,
            snap.hash,
            family,
            {**student.get_params(), "distilled_from": t_info["name"], "soft_weight": soft_weight},
            commit,
            airflow_run_id,
        )
    log.info(
        "distilled %s from %s in %.1fs (teacher labelled %s texts in %.1fs) -> MLflow run %s",
        family,
        t_info["name"],
        seconds,
        f"{len(texts):,}",
        label_seconds,
        run_id,
    )
    return run_id
