"""Monitoring: drift of the stored predictions of a period against the champion's reference.

One report = one period (default: the last ``monitoring_hours``):

- **current**: the rows of ``predictions`` (API and batch) of ``settings.model_name`` created in
  the period; above ``monitoring_max_rows`` a deterministic random sample (``md5(id)`` order).
- **reference**: the champion's own predictions on its held-out set (the ``data.split`` test part
  of the snapshot named by the champion run's ``dataset_hash`` tag), at most
  ``monitoring_reference_max_rows`` (stratified sample), computed once per champion version and
  cached as Parquet under ``var/reference/<model>/v<version>/``.
- **columns** (both sides): predicted ``label``, ``p_positive``, text descriptors
  (``text_length``, ``word_count``, ``non_letter_share``, ``oov_share`` against the model's own
  vocabulary, ``n_mentions``, ``n_urls``, ``n_hashtags``) and the raw ``text``.
- **tests** (Evidently's): with at least ``monitoring_small_sample_rows`` rows on both sides,
  effect sizes that do not fire on large samples for trivial differences (normed Wasserstein for
  numeric columns, Jensen-Shannon for the label and the counts, ROC AUC of a reference-vs-current
  text classifier for the raw text); with fewer rows, p-value tests (KS, z, bootstrap of the
  text classifier's AUC) that account for the sample size.
- **verdicts**: prediction drift (label share), probability drift (``p_positive``), text
  descriptors drift (at least ``monitoring_drift_share`` of them drifted), raw-text drift,
  optionally LSA-embedding drift; ``drift_detected`` is any of them.
- **feedback**: the predictions of the period that users gave feedback on (latest per prediction,
  received up to the report). Every prediction reported with another label is certainly wrong;
  the others are counted right, so ``live_accuracy_upper_bound = 1 - reported_wrong / predictions``
  is an upper bound of the live accuracy. **Concept drift** is flagged when even this upper bound
  is below the champion's training-time held-out accuracy (MLflow metric ``accuracy``) by more
  than ``monitoring_accuracy_tolerance`` (with at least ``monitoring_min_rows`` predictions): the
  bound can only overstate accuracy, so this never fires for unreported errors alone.
- **estimate** (``ml.evaluation.estimate``): a label-free accuracy estimate (CBPE) of the period's
  predictions served by the champion: the mean probability of being right of each prediction
  under an isotonic calibration fitted on the reference (cached as ``calibration.json`` beside it).

Each report is written to ``var/reports/<id>/`` (``report.html`` and ``report.json`` from
Evidently, ``summary.json`` ours) and its summary stored in ``drift_reports``. An empty period is
a stored report with status ``empty``.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.features import HASHTAG_RE, MENTION_RE, URL_RE, preprocess
from ml.models.base import decide
from ml.platform.config import Settings, get_settings
from ml.store import reports as store

log = logging.getLogger(__name__)

NUMERIC_DESCRIPTORS = ("text_length", "word_count", "non_letter_share", "oov_share")
COUNT_DESCRIPTORS = ("n_mentions", "n_urls", "n_hashtags")
DESCRIPTORS = NUMERIC_DESCRIPTORS + COUNT_DESCRIPTORS
TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern (the TF-IDF family's)
REPORT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
EMBEDDING_DIMS = 20
REFERENCE_VERSION = 1  # bump when the reference's columns change: old caches are recomputed

SUMMARY_COLUMNS = store.SUMMARY_COLUMNS


class MonitoringError(RuntimeError):
    """A report cannot be built; the message says why."""


# ---------------------------------------------------------------- periods
def _utc(value: datetime | str) -> datetime:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def resolve_period(
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    hours: float | None = None,
    settings: Settings | None = None,
) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC: both given; or ``hours`` (default ``monitoring_hours``) back from
    ``end`` (default now), or forward from ``start``."""
    s = settings or get_settings()
    span = timedelta(hours=float(hours if hours is not None else s.monitoring_hours))
    if start and end:
        a, b = _utc(start), _utc(end)
    elif start:
        a = _utc(start)
        b = a + span
    else:
        b = _utc(end) if end else datetime.now(UTC)
        a = b - span
    if a >= b:
        raise MonitoringError(f"empty period: start {a.isoformat()} is not before end {b.isoformat()}")
    return a, b


def run_period_end(end: str | None, run_type: Any, data_interval_end: datetime | None) -> str | None:
    """The period end of a DAG run: ``end`` if given; a scheduled run's data-interval end (the
    nightly run covers exactly the day before); else None (now)."""
    if end:
        return end
    if getattr(run_type, "value", run_type) == "scheduled" and data_interval_end is not None:
        return _utc(data_interval_end).isoformat()
    return None


# ---------------------------------------------------------------- descriptors
def tokens(texts: list[str], preprocess_mode: str = "basic") -> list[list[str]]:
    """Word tokens as the TF-IDF family sees them: its preprocessing, lower case, 2+ characters."""
    return [TOKEN_RE.findall(t.lower()) for t in preprocess(texts, preprocess_mode)]


def oov_shares(texts: list[str], vocabulary: set[str], preprocess_mode: str = "basic") -> np.ndarray:
    """Per text, the share of its word tokens not in ``vocabulary`` (a text with no word token
    at all counts as fully out of vocabulary: the model sees nothing it knows)."""
    out = np.ones(len(texts), dtype=np.float64)
    for i, toks in enumerate(tokens(texts, preprocess_mode)):
        if toks:
            out[i] = sum(t not in vocabulary for t in toks) / len(toks)
    return out


def add_descriptors(frame: pd.DataFrame, vocabulary: set[str], preprocess_mode: str = "basic") -> pd.DataFrame:
    """The text descriptor columns, computed in pandas (Evidently's own ``OOVWordsPercentage`` needs
    nltk downloads, which fail offline, and knows nothing of the model's vocabulary)."""
    text = frame["text"].astype(str)
    out = frame.copy()
    out["text_length"] = text.str.len().astype(np.int64)
    out["word_count"] = text.str.count(r"\S+").astype(np.int64)
    non_space = out["text_length"] - text.str.count(r"\s")  # share among visible characters
    letters = text.str.count(r"[^\W\d_]")
    out["non_letter_share"] = ((non_space - letters) / non_space.clip(lower=1)).astype(np.float64)
    out["oov_share"] = oov_shares(text.tolist(), vocabulary, preprocess_mode)
    out["n_mentions"] = text.str.count(MENTION_RE.pattern).astype(np.int64)
    out["n_urls"] = text.str.count(URL_RE.pattern, flags=URL_RE.flags).astype(np.int64)
    out["n_hashtags"] = text.str.count(HASHTAG_RE.pattern).astype(np.int64)
    return out


# ---------------------------------------------------------------- reference
def reference_dir(version: int, settings: Settings | None = None) -> Path:
    s = settings or get_settings()
    return s.reference_dir / s.model_name / f"v{version}"


def load_reference(settings: Settings | None = None) -> tuple[pd.DataFrame, dict[str, Any], set[str]]:
    """The champion's reference (frame, meta, vocabulary): from the cache, else computed once."""
    from ml.platform import registry, tracking

    s = settings or get_settings()
    tracking.configure(s)
    champ = registry.champion(s)
    if champ is None:
        raise MonitoringError(
            f"no champion for {s.model_name!r}: nothing to compare the predictions with; train and promote a model first"
        )
    target = reference_dir(champ.version, s)
    meta_path = target / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") == REFERENCE_VERSION:
            frame = pd.read_parquet(target / "reference.parquet")
            vocab = set((target / "vocabulary.txt").read_text(encoding="utf-8").split("\n")) - {""}
            log.info(
                "reference of %s v%s: %s rows (cached in %s)", s.model_name, champ.version, f"{len(frame):,}", target
            )
            return frame, meta, vocab
    return build_reference(champ, s)


def build_reference(champ, settings: Settings | None = None) -> tuple[pd.DataFrame, dict[str, Any], set[str]]:
    """Score the champion's held-out set (capped, stratified) and cache it with its vocabulary."""
    import mlflow

    from ml import data
    from ml.platform import registry

    s = settings or get_settings()
    t0 = time.perf_counter()
    run = mlflow.MlflowClient().get_run(champ.run_id)
    dataset_hash = run.data.tags.get("dataset_hash")
    if not dataset_hash:
        raise MonitoringError(f"champion v{champ.version} (run {champ.run_id}) has no dataset_hash tag")
    try:
        snap = data.get_snapshot(dataset_hash, s)
        frame = snap.load()
    except (data.DataError, FileNotFoundError, OSError) as e:
        raise MonitoringError(f"the champion's dataset snapshot {dataset_hash[:16]} cannot be read: {e}") from e
    train_df, test_df = data.split(frame, s.test_size, s.seed)
    n_held_out = len(test_df)
    test_df = data.stratified_sample(test_df, s.monitoring_reference_max_rows, s.seed)
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
        except Exception as e:  # a family whose vocabulary() is not usable: fall back, said in the meta
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
    target = reference_dir(champ.version, s)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    ref.to_parquet(tmp / "reference.parquet", index=False)
    (tmp / "vocabulary.txt").write_text("\n".join(sorted(vocab)), encoding="utf-8")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if target.exists():  # a stale format, or a concurrent builder: replace it
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.rename(tmp, target)
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


# ---------------------------------------------------------------- current window
def _period_counts(conn, model_name: str, start: datetime, end: datetime) -> dict[str, Any]:
    rows = store.period_counts(conn, model_name, start, end)
    by_source: dict[str, int] = {}
    by_version: dict[str, int] = {}
    for source, version, n in rows:
        by_source[source] = by_source.get(source, 0) + n
        by_version[str(version)] = by_version.get(str(version), 0) + n
    return {"total": sum(by_source.values()), "by_source": by_source, "by_model_version": by_version}


def load_current(conn, model_name: str, start: datetime, end: datetime, max_rows: int, seed: int) -> pd.DataFrame:
    """The period's predictions; above ``max_rows`` a random sample that is the same on every run
    (rows ordered by ``md5(seed || id)``)."""
    rows = store.period_predictions(conn, model_name, start, end, max_rows, seed)
    frame = pd.DataFrame(rows, columns=["text", "label", "p_positive", "model_version", "source"])
    frame["label"] = frame["label"].astype(np.int64)
    frame["p_positive"] = frame["p_positive"].astype(np.float64)
    return frame


def feedback_stats(
    conn,
    model_name: str,
    start: datetime,
    end: datetime,
    n_predictions: int,
    training_accuracy: float | None,
    settings: Settings,
) -> dict[str, Any]:
    """Feedback on the period's predictions (latest per prediction) and what it says of accuracy."""
    n_feedback, wrong = store.period_feedback(conn, model_name, start, end)
    upper = 1.0 - wrong / n_predictions if n_predictions else None
    enough = n_predictions >= settings.monitoring_min_rows
    concept = None
    if upper is not None and training_accuracy is not None and enough:
        concept = bool(upper < training_accuracy - settings.monitoring_accuracy_tolerance)
    out = {
        "predictions": n_predictions,
        "with_feedback": n_feedback,
        "reported_wrong": wrong,
        "confirmed_right": n_feedback - wrong,
        "feedback_accuracy": (n_feedback - wrong) / n_feedback if n_feedback else None,
        "live_accuracy_upper_bound": upper,
        "training_accuracy": training_accuracy,
        "accuracy_tolerance": settings.monitoring_accuracy_tolerance,
        "concept_drift": concept,
        "note": (
            "live_accuracy_upper_bound = 1 - reported_wrong / predictions of the period: predictions "
            "reported with another label are wrong, the unreported ones are counted right, so the true "
            "accuracy is at most this. feedback_accuracy is the accuracy on the predictions that got "
            "feedback (biased low: users report errors more than successes). concept_drift: the upper "
            "bound is below the champion's training-time held-out accuracy by more than the tolerance"
            + ("" if enough else f" (not judged: fewer than {settings.monitoring_min_rows} predictions)")
            + "."
        ),
    }
    out["accuracy_statement"] = accuracy_statement(n_predictions, wrong, upper)
    return out


def accuracy_statement(predictions: int | None, reported_wrong: int | None, upper_bound: float | None) -> str:
    """What the live-accuracy bound means, in words (the one wording: verdict, summary, API, messages).

    ``at most 99.0% of the period's 61,000 predictions were right: 611 were reported wrong;
    unreported predictions are counted as right``."""
    if not predictions:
        return "no predictions in the period: nothing to say about accuracy"
    wrong = int(reported_wrong or 0)
    bound = upper_bound if upper_bound is not None else 1.0 - wrong / predictions
    reported = (
        "none were reported wrong" if wrong == 0 else f"{wrong:,} {'was' if wrong == 1 else 'were'} reported wrong"
    )
    digits = 1  # enough decimals that a bound below 100% never reads "100.0%"
    while wrong and digits < 4 and round(bound * 100, digits) >= 100:
        digits += 1
    return (
        f"at most {bound * 100:.{digits}f}% of the period's {predictions:,} predictions were right: {reported}; "
        "unreported predictions are counted as right"
    )


# ---------------------------------------------------------------- the Evidently report
def _methods(small: bool, s: Settings) -> tuple[dict[str, str], dict[str, float]]:
    if small:  # p-value tests: they account for the sample size
        methods = {
            "label": "z",
            "p_positive": "ks",
            "text": "perc_text_content_drift",
            **{c: "ks" for c in DESCRIPTORS},
        }
        thresholds = {c: s.monitoring_p_value for c in methods}
        thresholds["text"] = 1 - s.monitoring_p_value  # Evidently's percentile test takes a confidence
    else:  # effect sizes: large samples do not make trivial differences "significant"
        methods = {
            "label": "jensenshannon",
            "p_positive": "wasserstein",
            "text": "abs_text_content_drift",
            **{c: "wasserstein" for c in NUMERIC_DESCRIPTORS},
            **{c: "jensenshannon" for c in COUNT_DESCRIPTORS},
        }
        thresholds = {
            c: (s.monitoring_cat_threshold if m == "jensenshannon" else s.monitoring_num_threshold)
            for c, m in methods.items()
        }
        thresholds["text"] = s.monitoring_text_threshold
    return methods, thresholds


def _lsa_embeddings(ref_texts: list[str], cur_texts: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A cheap text embedding: TF-IDF -> truncated SVD fitted on the reference texts."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=20_000)
    svd = TruncatedSVD(n_components=EMBEDDING_DIMS, random_state=seed)
    ref = svd.fit_transform(vec.fit_transform(preprocess(ref_texts, "basic")))
    cur = svd.transform(vec.transform(preprocess(cur_texts, "basic")))
    return ref, cur


def run_report(current: pd.DataFrame, reference: pd.DataFrame, s: Settings):
    """Evidently's report over the monitored columns; returns (snapshot, per-column results)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    small = min(len(current), len(reference)) < s.monitoring_small_sample_rows
    methods, thresholds = _methods(small, s)
    columns = ["label", "p_positive", *DESCRIPTORS, "text"]
    cur = current[columns].copy()
    ref = reference[columns].copy()
    definition: dict[str, Any] = dict(
        text_columns=["text"], categorical_columns=["label"], numerical_columns=["p_positive", *DESCRIPTORS]
    )
    metrics: list[Any] = [
        DataDriftPreset(
            columns=columns,
            per_column_method=methods,
            per_column_threshold=thresholds,
            drift_share=s.monitoring_drift_share,
        )
    ]
    if s.monitoring_embedding_drift:
        from evidently.metrics import EmbeddingsDrift
        from evidently.metrics.embeddings import ModelDriftMethod

        ref_emb, cur_emb = _lsa_embeddings(ref["text"].tolist(), cur["text"].tolist(), s.seed)
        names = [f"lsa_{i:02d}" for i in range(EMBEDDING_DIMS)]
        ref = pd.concat([ref.reset_index(drop=True), pd.DataFrame(ref_emb, columns=names)], axis=1)
        cur = pd.concat([cur.reset_index(drop=True), pd.DataFrame(cur_emb, columns=names)], axis=1)
        definition["embeddings"] = {"text_lsa": names}
        metrics.append(
            EmbeddingsDrift(
                embeddings_name="text_lsa",
                drift_method=ModelDriftMethod(threshold=s.monitoring_text_threshold, bootstrap=small),
            )
        )
    dd = DataDefinition(**definition)
    report = Report(metrics, include_tests=True)
    snapshot = report.run(Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd))
    return snapshot, _column_results(snapshot.dict(), methods, thresholds, small), small


def _column_results(
    snap: dict[str, Any], methods: dict[str, str], thresholds: dict[str, float], small: bool
) -> dict[str, Any]:
    """Per column: score, method, threshold and Evidently's own drift verdict (its test)."""
    detected: dict[str, bool] = {}
    for t in snap.get("tests", []):
        params = (t.get("metric_config") or {}).get("params") or {}
        if str(params.get("type", "")).endswith(":ValueDrift") and "column" in params:
            detected[params["column"]] = t.get("status") == "FAIL"
    out: dict[str, Any] = {"columns": {}, "dataset": None, "embeddings": None}
    for m in snap["metrics"]:
        cfg = m.get("config", {})
        kind = cfg.get("type", "")
        if kind.endswith(":ValueDrift"):
            col = cfg["column"]
            score = float(m["value"])
            out["columns"][col] = {
                "method": cfg.get("method", methods.get(col)),
                "threshold": cfg.get("threshold", thresholds.get(col)),
                "score": score,
                "detected": detected.get(col),
            }
        elif kind.endswith(":DriftedColumnsCount"):
            out["dataset"] = {"count": int(m["value"]["count"]), "share": float(m["value"]["share"])}
        elif kind.endswith(":EmbeddingsDrift"):
            score = float(m["value"])
            method = cfg.get("drift_method") or {}
            thr = float(method.get("threshold", 0.55))
            out["embeddings"] = {
                "method": "domain classifier ROC AUC (LSA embeddings)",
                "score": score,
                "threshold": thr,
                "detected": bool(score > thr),
            }
    for r in out["columns"].values():
        if r["detected"] is None:  # no test result: fall back to the score's side of the threshold
            p_value = r["method"] in ("ks", "z", "chisquare")
            r["detected"] = bool(r["score"] < r["threshold"]) if p_value else bool(r["score"] >= r["threshold"])
    return out


# ---------------------------------------------------------------- summary
def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def summarise(results: dict[str, Any], current: pd.DataFrame, reference: pd.DataFrame, s: Settings) -> dict[str, Any]:
    cols = results["columns"]

    def col(name: str, **extra) -> dict[str, Any]:
        return {**cols[name], **extra}

    desc = {
        c: col(c, current_mean=float(current[c].mean()), reference_mean=float(reference[c].mean())) for c in DESCRIPTORS
    }
    n_desc = sum(d["detected"] for d in desc.values())
    metrics = {
        "prediction_label": col(
            "label",
            current_positive_share=float(current["label"].mean()),
            reference_positive_share=float(reference["label"].mean()),
        ),
        "probability": col(
            "p_positive",
            current_mean=float(current["p_positive"].mean()),
            reference_mean=float(reference["p_positive"].mean()),
        ),
        "text_descriptors": {
            "detected": bool(n_desc / len(DESCRIPTORS) >= s.monitoring_drift_share),
            "drifted": n_desc,
            "of": len(DESCRIPTORS),
            "share": n_desc / len(DESCRIPTORS),
            "drift_share": s.monitoring_drift_share,
            "columns": desc,
        },
        "raw_text": col("text"),
    }
    if results.get("embeddings"):
        metrics["embeddings"] = results["embeddings"]
    return metrics


def verdict_line(summary: dict[str, Any]) -> str:
    """One line a person can act on."""
    p = summary["period"]
    when = f"{p['start'][:16]} -> {p['end'][:16]} UTC"
    if summary["status"] == "empty":
        return f"EMPTY: no predictions of {summary['model_name']} between {when}; nothing to compare."
    m = summary["metrics"]
    drifted = [SIGNAL_NAMES[k] for k, v in m.items() if v["detected"]]
    pl = m["prediction_label"]
    share = f"positive {pl['current_positive_share']:.0%} vs {pl['reference_positive_share']:.0%} in reference"
    fb = summary["feedback"]
    acc = (
        accuracy_statement(fb["predictions"], fb["reported_wrong"], fb["live_accuracy_upper_bound"])
        + f" (the champion's held-out accuracy at training: {_fmt_pct(fb['training_accuracy'])})"
    )
    if fb["concept_drift"]:
        acc += " - CONCEPT DRIFT"
    if summary.get("estimate") is not None:
        from ml.evaluation.estimate import statement

        acc += f"; {statement(summary['estimate'])}"
    head = f"DRIFT in {', '.join(drifted)}" if drifted else "No drift"
    if not drifted and fb["concept_drift"]:
        head = "No data drift but CONCEPT DRIFT"
    line = (
        f"{head}: {summary['current']['rows']:,} predictions ({when}) vs {summary['reference']['rows']:,} "
        f"reference (v{summary['reference_version']}); {share}; {acc}."
    )
    served = sorted(summary["current"]["by_model_version"], key=int)
    if served != [str(summary["reference_version"])]:
        line += f" Note: the period was served by v{', v'.join(served)}; prediction drift may be the model change."
    return line


SIGNAL_NAMES = {
    "prediction_label": "predicted labels",
    "probability": "p_positive",
    "text_descriptors": "text descriptors",
    "raw_text": "raw text",
    "embeddings": "text embeddings",
}


def report_urls(report_id: str, settings: Settings | None = None) -> dict[str, str]:
    """Absolute links to a report on the API (``public_api_url``, else ``http://<host>:<api_port>``)."""
    base = (settings or get_settings()).api_url
    return {"html": f"{base}/reports/{report_id}/html", "summary": f"{base}/reports/{report_id}"}


def report_digest(
    summary: dict[str, Any], retraining: dict[str, Any] | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """The short summary of a stored report that the channels carry (webhook JSON, e-mail text).

    ``retraining``: misclassification reports since the champion was trained against the retraining
    threshold (``ml.stages.retraining.check_trigger``'s decision or ``pending_count``), None when unknown."""
    s = settings or get_settings()
    fb = summary.get("feedback") or {}
    metrics = summary.get("metrics") or {}
    signals = [SIGNAL_NAMES.get(k, k) for k, v in metrics.items() if v.get("detected")]
    if fb.get("concept_drift"):
        signals.append("concept drift (live accuracy bound below training accuracy)")
    status = summary["status"]
    predictions = (summary.get("current") or {}).get("rows_in_period", 0)
    from ml.evaluation.estimate import statement as estimate_statement

    est = summary.get("estimate") or {"status": "not computed for this report"}
    retr = None
    if retraining:
        retr = {k: retraining.get(k) for k in ("threshold", "fraction", "corpus_rows")}
        retr["reports"] = retraining.get("reports", retraining.get("pending_reports"))
        retr["triggered"] = bool(retraining.get("trigger"))
        retr["retraining_id"] = retraining.get("retraining_id")
        done, thr = retr["reports"], retr["threshold"]
        retr["text"] = (
            f"{done:,} misclassification reports since the champion was trained, retraining threshold "
            f"{thr:,}" + (" - retraining triggered" if retr["triggered"] else "")
            if done is not None and thr
            else "no retraining threshold (no champion snapshot)"
        )
    return {
        "kind": "drift_report",
        "source": "tweet-sentiment-platform",
        "report_id": summary["id"],
        "model_name": summary["model_name"],
        "reference_version": summary.get("reference_version"),
        "period": summary["period"],
        "status": status,
        "verdict": {"drift": "DRIFT", "ok": "NO DRIFT", "empty": "EMPTY"}.get(status, status.upper()),
        "verdict_line": summary["verdict"],
        "drifted_signals": signals,
        "predictions": predictions,
        "predictions_compared": (summary.get("current") or {}).get("rows", 0),
        "reported_wrong": fb.get("reported_wrong", 0),
        "live_accuracy_upper_bound": fb.get("live_accuracy_upper_bound"),
        "accuracy": fb.get("accuracy_statement")
        or accuracy_statement(predictions, fb.get("reported_wrong"), fb.get("live_accuracy_upper_bound")),
        "training_accuracy": fb.get("training_accuracy"),
        # the label-free estimate (ml.evaluation.estimate, CBPE): no feedback needed; None with a status when
        # there is nothing to estimate (empty period, no prediction by the champion, a failure)
        "estimated_accuracy": est.get("estimated_accuracy"),
        "estimated_accuracy_status": (
            estimate_statement(est)
            if est.get("estimated_accuracy") is not None
            else est.get("status") or "not available"
        ),
        "retraining": retr,
        "report_url": report_urls(summary["id"], s)["html"],
        "summary_url": report_urls(summary["id"], s)["summary"],
    }


def digest_text(d: dict[str, Any]) -> tuple[str, str]:
    """(subject, plain-text body) of a report digest for e-mail."""
    p = d["period"]
    when = f"{p['start'][:16]} -> {p['end'][:16]} UTC"
    head = d["verdict"] + (f" in {', '.join(d['drifted_signals'])}" if d["drifted_signals"] else "")
    subject = f"[sentiment] drift report {d['model_name']} {p['end'][:10]}: {head}"[:200]
    est = d["estimated_accuracy"]
    lines = [
        f"Drift report {d['report_id']} of {d['model_name']} (reference: champion v{d['reference_version']})",
        f"Period: {when}",
        f"Verdict: {head}",
        f"Drifted signals: {', '.join(d['drifted_signals']) or 'none'}",
        f"Predictions in the period: {d['predictions']:,} ({d['predictions_compared']:,} compared)",
        f"Reported wrong: {d['reported_wrong']:,}",
        f"Accuracy: {d['accuracy']}",
        f"Estimated accuracy (label-free): {_fmt_pct(est) if est is not None else d['estimated_accuracy_status']}",
        f"Retraining: {(d['retraining'] or {}).get('text', 'unknown')}",
        "",
        d["verdict_line"],
        "",
        f"Full report: {d['report_url']}",
    ]
    return subject, "\n".join(lines) + "\n"


def _empty_html(summary: dict[str, Any]) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Drift report "
        f"{html.escape(summary['id'])}</title></head><body style='font-family:sans-serif'>"
        f"<h1>Drift report {html.escape(summary['id'])}: empty period</h1>"
        f"<p>{html.escape(summary['verdict'])}</p>"
        f"<pre>{html.escape(json.dumps(summary, indent=2, default=str))}</pre></body></html>"
    )


def _store(summary: dict[str, Any], s: Settings) -> None:
    from ml.platform import db

    fb = summary.get("feedback") or {}
    with db.connect(s) as conn:
        store.insert(
            conn,
            {
                "id": summary["id"],
                "created_at": summary["created_at"],
                "period_start": summary["period"]["start"],
                "period_end": summary["period"]["end"],
                "status": summary["status"],
                "drift_detected": summary["drift_detected"],
                "concept_drift": fb.get("concept_drift"),
                "verdict": summary["verdict"],
                "model_name": summary["model_name"],
                "reference_version": summary["reference_version"],
                "n_current": summary["current"]["rows"],
                "n_current_total": summary["current"]["rows_in_period"],
                "n_reference": summary["reference"]["rows"],
                "drifted_share": (summary.get("drifted_columns") or {}).get("share"),
                "n_feedback": fb.get("with_feedback", 0),
                "n_reported_wrong": fb.get("reported_wrong", 0),
                "live_accuracy_upper_bound": fb.get("live_accuracy_upper_bound"),
                "training_accuracy": fb.get("training_accuracy"),
                "seconds": summary["seconds"],
                "airflow_run_id": summary.get("airflow_run_id"),
                "html_path": summary["files"]["html"],
                "json_path": summary["files"]["json"],
                "summary": summary,
            },
        )


def build_report(
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    hours: float | None = None,
    airflow_run_id: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Build, save and store one drift report of the period; returns its summary (the DAG's XCom)."""
    s = settings or get_settings()
    t0 = time.perf_counter()
    a, b = resolve_period(start, end, hours, s)
    created = datetime.now(UTC)
    report_id = f"{created:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    out_dir = s.reports_dir / report_id
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _build(report_id, created, a, b, out_dir, airflow_run_id, s, t0)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # nothing stored: leave no half-written report behind
        raise


def _build(
    report_id: str,
    created: datetime,
    a: datetime,
    b: datetime,
    out_dir: Path,
    airflow_run_id: str | None,
    s: Settings,
    t0: float,
) -> dict[str, Any]:
    from ml.platform import db

    log.info("monitoring %s: report %s for %s -> %s", s.model_name, report_id, a.isoformat(), b.isoformat())
    with db.connect(s) as conn:
        counts = _period_counts(conn, s.model_name, a, b)
        current = (
            load_current(conn, s.model_name, a, b, s.monitoring_max_rows, s.seed) if counts["total"] else pd.DataFrame()
        )
    summary: dict[str, Any] = {
        "id": report_id,
        "created_at": created.isoformat(),
        "period": {"start": a.isoformat(), "end": b.isoformat()},
        "model_name": s.model_name,
        "airflow_run_id": airflow_run_id,
        "current": {
            "rows": len(current),
            "rows_in_period": counts["total"],
            "sampled": counts["total"] > len(current),
            "max_rows": s.monitoring_max_rows,
            "by_source": counts["by_source"],
            "by_model_version": counts["by_model_version"],
        },
        "files": {
            "html": str(out_dir / "report.html"),
            "json": str(out_dir / "report.json"),
            "summary": str(out_dir / "summary.json"),
        },
    }
    log.info(
        "monitoring: %s predictions in the period%s",
        f"{counts['total']:,}",
        f", sampled to {len(current):,}" if summary["current"]["sampled"] else "",
    )
    if current.empty:
        champ = None
        try:
            from ml.platform import registry, tracking

            tracking.configure(s)
            champ = registry.champion(s)
        except Exception as e:  # the empty report does not need the registry
            log.warning("champion lookup failed (%s); the empty report names no version", e)
        summary.update(
            status="empty",
            drift_detected=False,
            reference_version=champ.version if champ else None,
            reference={"rows": 0},
            metrics={},
            drifted_columns=None,
            feedback={
                "predictions": 0,
                "with_feedback": 0,
                "reported_wrong": 0,
                "live_accuracy_upper_bound": None,
                "training_accuracy": None,
                "concept_drift": None,
                "accuracy_statement": accuracy_statement(0, 0, None),
            },
            estimate={"estimated_accuracy": None, "status": "no predictions in the period"},
        )
        summary["verdict"] = verdict_line(summary)
        Path(summary["files"]["html"]).write_text(_empty_html(summary), encoding="utf-8")
        Path(summary["files"]["json"]).write_text(
            json.dumps({"status": "empty", "summary": summary}, indent=2, default=str)
        )
    else:
        reference, meta, vocab = load_reference(s)
        current = add_descriptors(current, vocab, meta.get("preprocess", "basic"))
        t1 = time.perf_counter()
        snapshot, results, small = run_report(current, reference, s)
        log.info(
            "monitoring: Evidently report over %s current vs %s reference rows in %.1fs (%s tests)",
            f"{len(current):,}",
            f"{len(reference):,}",
            time.perf_counter() - t1,
            "p-value" if small else "distance",
        )
        snapshot.save_html(summary["files"]["html"])
        snapshot.save_json(summary["files"]["json"])
        with db.connect(s) as conn:
            fb = feedback_stats(conn, s.model_name, a, b, counts["total"], meta.get("training_accuracy"), s)
        metrics = summarise(results, current, reference, s)
        try:
            from ml.evaluation import estimate

            est = estimate.period_estimate(current, reference, meta, s)
        except Exception as e:  # the estimate is one figure of the report: it never costs the report
            log.exception("label-free accuracy estimate failed")
            est = {"estimated_accuracy": None, "status": f"failed: {type(e).__name__}: {e}"[:300]}
        drift = any(v["detected"] for v in metrics.values())
        summary.update(
            status="drift" if drift or fb["concept_drift"] else "ok",
            drift_detected=drift,
            reference_version=meta["version"],
            reference={
                k: meta.get(k)
                for k in (
                    "rows",
                    "held_out_rows",
                    "dataset_hash",
                    "run_id",
                    "family",
                    "vocabulary_source",
                    "vocabulary_size",
                    "reference_accuracy",
                )
            },
            tests="p-value (small sample)" if small else "distance (effect size)",
            drifted_columns={**(results["dataset"] or {}), "of": len(results["columns"])},
            metrics=metrics,
            feedback=fb,
            estimate=est,
        )
        summary["verdict"] = verdict_line(summary)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    Path(summary["files"]["summary"]).write_text(json.dumps(summary, indent=2, default=str))
    _store(summary, s)
    log.info(
        "monitoring report %s (%s, %.1fs): %s", report_id, summary["status"], summary["seconds"], summary["verdict"]
    )
    return summary


# ---------------------------------------------------------------- reading reports back
def _reading(conn, settings: Settings | None):
    """The caller's connection, or one of the settings' own (a context manager either way)."""
    from contextlib import nullcontext

    from ml.platform import db

    return nullcontext(conn) if conn is not None else db.connect(settings or get_settings())


def list_reports(
    limit: int = 50, conn=None, settings: Settings | None = None, model_name: str | None = None
) -> list[dict[str, Any]]:
    """The newest reports first (of ``model_name`` if given): the summary columns (not the full
    per-column detail) and ``accuracy_statement``."""
    with _reading(conn, settings) as c:
        out = store.latest(c, limit, model_name)
    for r in out:
        r["accuracy_statement"] = accuracy_statement(
            r["n_current_total"], r["n_reported_wrong"], r["live_accuracy_upper_bound"]
        )
    return out


def get_report(report_id: str, conn=None, settings: Settings | None = None) -> dict[str, Any] | None:
    """The full stored summary of one report, or None."""
    if not REPORT_ID_RE.match(report_id):
        return None
    with _reading(conn, settings) as c:
        return store.summary(c, report_id)


def report_html_path(report_id: str, conn=None, settings: Settings | None = None) -> Path | None:
    """The report's HTML file (Evidently's, or a plain page for an empty period), or None."""
    if not REPORT_ID_RE.match(report_id):
        return None
    with _reading(conn, settings) as c:
        found = store.html_path(c, report_id)
    if not found:
        return None
    path = Path(found)
    return path if path.exists() else None
