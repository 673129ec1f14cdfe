"""The Evidently drift computation: per-column tests (p-values on small samples, effect sizes on
large ones), optional LSA-embedding drift, and the per-signal metrics of a report."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ml.features import preprocess
from ml.platform.config import Settings
from ml.stages.monitoring.descriptors import (
    COUNT_DESCRIPTORS,
    DESCRIPTORS,
    NUMERIC_DESCRIPTORS,
)

EMBEDDING_DIMS = 20


def _methods(small: bool, settings: Settings) -> tuple[dict[str, str], dict[str, float]]:
    if small:  # p-value tests: they account for the sample size
        methods = {
            "label": "z",
            "p_positive": "ks",
            "text": "perc_text_content_drift",
            **{c: "ks" for c in DESCRIPTORS},
        }
        thresholds = {c: settings.monitoring_p_value for c in methods}
        thresholds["text"] = 1 - settings.monitoring_p_value  # Evidently's percentile test takes a confidence
    else:  # effect sizes: large samples do not make trivial differences "significant"
        methods = {
            "label": "jensenshannon",
            "p_positive": "wasserstein",
            "text": "abs_text_content_drift",
            **{c: "wasserstein" for c in NUMERIC_DESCRIPTORS},
            **{c: "jensenshannon" for c in COUNT_DESCRIPTORS},
        }
        thresholds = {
            c: (settings.monitoring_cat_threshold if m == "jensenshannon" else settings.monitoring_num_threshold)
            for c, m in methods.items()
        }
        thresholds["text"] = settings.monitoring_text_threshold
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


def run_report(current: pd.DataFrame, reference: pd.DataFrame, settings: Settings) -> tuple[Any, dict[str, Any], bool]:
    """Evidently's report over the monitored columns; returns (snapshot, per-column results)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    small = min(len(current), len(reference)) < settings.monitoring_small_sample_rows
    methods, thresholds = _methods(small, settings)
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
            drift_share=settings.monitoring_drift_share,
        )
    ]
    if settings.monitoring_embedding_drift:
        from evidently.metrics import EmbeddingsDrift
        from evidently.metrics.embeddings import ModelDriftMethod

        ref_emb, cur_emb = _lsa_embeddings(ref["text"].tolist(), cur["text"].tolist(), settings.seed)
        names = [f"lsa_{i:02d}" for i in range(EMBEDDING_DIMS)]
        ref = pd.concat([ref.reset_index(drop=True), pd.DataFrame(ref_emb, columns=names)], axis=1)
        cur = pd.concat([cur.reset_index(drop=True), pd.DataFrame(cur_emb, columns=names)], axis=1)
        definition["embeddings"] = {"text_lsa": names}
        metrics.append(
            EmbeddingsDrift(
                embeddings_name="text_lsa",
                drift_method=ModelDriftMethod(threshold=settings.monitoring_text_threshold, bootstrap=small),
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


def summarise(
    results: dict[str, Any], current: pd.DataFrame, reference: pd.DataFrame, settings: Settings
) -> dict[str, Any]:
    cols = results["columns"]

    def col(name: str, **extra: Any) -> dict[str, Any]:
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
            "detected": bool(n_desc / len(DESCRIPTORS) >= settings.monitoring_drift_share),
            "drifted": n_desc,
            "of": len(DESCRIPTORS),
            "share": n_desc / len(DESCRIPTORS),
            "drift_share": settings.monitoring_drift_share,
            "columns": desc,
        },
        "raw_text": col("text"),
    }
    if results.get("embeddings"):
        metrics["embeddings"] = results["embeddings"]
    return metrics
