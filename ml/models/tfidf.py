"""TF-IDF features + logistic regression (scikit-learn): the baseline family."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from ml.features import preprocess
from ml.models.base import EXPLAIN_TOP_K, Budget, SentimentModel, Validation, new_history


class TfidfLogReg(SentimentModel):
    family = "tfidf_lr"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "preprocess": "basic",  # none | basic | lemma
            "ngram_max": 2,  # word n-grams 1..ngram_max
            "min_df": 2,
            "max_df": 0.95,
            "max_features": 500_000,
            "char_ngrams": False,  # add char 2-5 n-grams (slower, ~+1.5 pt accuracy)
            "C": 1.0,
            "max_iter": 1000,
        }

    def _pipeline(self) -> Pipeline:
        p = self.params
        word = TfidfVectorizer(
            ngram_range=(1, int(p["ngram_max"])),
            min_df=p["min_df"],
            max_df=p["max_df"],
            max_features=p["max_features"],
            sublinear_tf=True,
            lowercase=True,
            dtype=np.float32,
        )
        features: Any = word
        if p["char_ngrams"]:
            char = TfidfVectorizer(
                analyzer="char_wb",
                ngram_range=(2, 5),
                min_df=p["min_df"],
                max_features=p["max_features"],
                sublinear_tf=True,
                dtype=np.float32,
            )
            features = FeatureUnion([("word", word), ("char", char)])
        clf = LogisticRegression(C=p["C"], max_iter=p["max_iter"], solver="liblinear")
        return Pipeline([("tfidf", features), ("clf", clf)])

    def _prep(self, texts: Sequence[str]) -> list[str]:
        return preprocess(texts, self.params["preprocess"])

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        validation: Validation | None = None,
        budget_seconds: float | None = None,
    ) -> TfidfLogReg:
        """One pass over all of ``texts`` (seconds for 100k tweets): the budget is recorded, not needed."""
        budget = Budget(budget_seconds)
        y = self._check_labels(labels, np.int8)
        self.pipeline_ = self._pipeline().fit(self._prep(texts), y)
        h = new_history(len(y), 0, budget)
        h.update(seconds=round(budget.elapsed(), 3), examples_seen=len(y), epochs=1.0, steps=None, stopped="converged")
        self.history_ = h
        return self

    def fit_soft(
        self,
        texts: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        soft_texts: Sequence[str],
        soft_positive: Sequence[float] | np.ndarray,
        soft_weight: float = 1.0,
        budget_seconds: float | None = None,
    ) -> TfidfLogReg:
        """Distillation (``ml.stages.distill``): fit on hard ``labels`` of ``texts`` plus a teacher's soft
        P(positive) of ``soft_texts``. scikit-learn's logistic regression takes no soft targets, so each soft
        text enters twice, as positive with weight ``soft_weight * p`` and as negative with weight
        ``soft_weight * (1 - p)``: the weighted log loss is then exactly the cross-entropy against the soft
        label. The vocabulary and IDF are fitted on every distinct text once."""
        budget = Budget(budget_seconds)
        y = self._check_labels(labels, np.int8)
        p = np.clip(np.asarray(soft_positive, dtype=np.float64), 0.0, 1.0)
        if len(p) != len(soft_texts):
            raise ValueError(f"{len(soft_texts)} soft texts but {len(p)} soft probabilities")
        if soft_weight < 0:
            raise ValueError(f"soft_weight must be >= 0, got {soft_weight}")
        pipe = self._pipeline()
        tfidf, clf = pipe.named_steps["tfidf"], pipe.named_steps["clf"]
        hard, soft = self._prep(texts), self._prep(soft_texts)
        tfidf.fit(list(dict.fromkeys(hard + soft)))
        xh, xs = tfidf.transform(hard), tfidf.transform(soft)
        x = sp.vstack([xh, xs, xs]).tocsr()
        yy = np.concatenate([y, np.ones(len(p), np.int8), np.zeros(len(p), np.int8)])
        w = np.concatenate([np.ones(len(y)), soft_weight * p, soft_weight * (1.0 - p)])
        keep = w > 0
        clf.fit(x[keep], yy[keep], sample_weight=w[keep])
        self.pipeline_ = pipe
        h = new_history(len(y) + len(p), 0, budget)
        h.update(
            seconds=round(budget.elapsed(), 3),
            examples_seen=len(y) + len(p),
            epochs=1.0,
            steps=None,
            stopped="converged",
            n_hard=len(y),
            n_soft=len(p),
            soft_weight=float(soft_weight),
        )
        self.history_ = h
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, 2))
        return self.pipeline_.predict_proba(self._prep(texts)).astype(np.float64)

    explanation_method = "tfidf_coefficients"

    def explain(self, texts: Sequence[str], top_k: int = EXPLAIN_TOP_K) -> list[list[dict[str, Any]]]:
        """The model's own contributions: tf-idf value x logistic-regression coefficient of each
        feature present in the text (a word or word n-gram; ``char:`` for character n-grams), the
        ``top_k`` largest |contribution| first, positive toward positive (they sum, with the intercept,
        to the logit of the raw p_positive; a calibrated model serves
        that logit scaled by its calibration, ``ml.models.calibration``)."""
        if len(texts) == 0:
            return []
        tfidf, clf = self.pipeline_.named_steps["tfidf"], self.pipeline_.named_steps["clf"]
        x = tfidf.transform(self._prep(texts)).tocsr()
        coef = np.asarray(clf.coef_, dtype=np.float64).ravel()
        if int(clf.classes_[1]) != 1:  # coef_ points toward classes_[1]: make it "toward positive"
            coef = -coef
        names = self._feature_names()
        out: list[list[dict[str, Any]]] = []
        for i in range(x.shape[0]):
            row = x.getrow(i)
            contrib = row.data.astype(np.float64) * coef[row.indices]
            order = np.argsort(-np.abs(contrib), kind="stable")[: max(0, int(top_k))]
            out.append([{"token": names[row.indices[j]], "weight": round(float(contrib[j]), 6)} for j in order])
        return out

    def _feature_names(self) -> list[str]:
        names = getattr(self, "_names_cache", None)
        if names is None:
            tfidf = self.pipeline_.named_steps["tfidf"]
            if isinstance(tfidf, TfidfVectorizer):
                names = [str(n) for n in tfidf.get_feature_names_out()]
            else:  # FeatureUnion: word then char, in transform order
                names = []
                for part, vec in tfidf.transformer_list:
                    prefix = "" if part == "word" else f"{part}:"
                    names += [prefix + str(n) for n in vec.get_feature_names_out()]
            self._names_cache = names
        return names

    def vocabulary(self) -> set[str]:
        tfidf = self.pipeline_.named_steps["tfidf"]
        word = tfidf if isinstance(tfidf, TfidfVectorizer) else dict(tfidf.transformer_list)["word"]
        return {t for t in word.vocabulary_ if " " not in t}

    def _save(self, path: Path) -> None:
        # a plain pickle (protocol 5): unpickled by the C unpickler in ~0.1 s, where joblib.load's
        # pure-Python one took 3-5 s for the same pipeline -- paid by every batch shard's process
        with (path / "pipeline.pkl").open("wb") as f:
            pickle.dump(self.pipeline_, f, protocol=5)

    def _load(self, path: Path) -> None:
        if (path / "pipeline.pkl").exists():
            with (path / "pipeline.pkl").open("rb") as f:
                self.pipeline_ = pickle.load(f)  # the caller verified the artifacts digest first
        else:  # saved before pipeline.pkl
            self.pipeline_ = joblib.load(path / "pipeline.joblib")
