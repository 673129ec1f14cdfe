"""TF-IDF features + logistic regression (scikit-learn): the baseline family."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from ml.features import preprocess
from ml.models.base import EXPLAIN_TOP_K, Budget, SentimentModel, new_history


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

    def fit(self, texts, labels, validation=None, budget_seconds=None) -> TfidfLogReg:
        """One pass over all of ``texts`` (seconds for 100k tweets): the budget is recorded, not needed."""
        budget = Budget(budget_seconds)
        y = self._check_labels(labels, np.int8)
        self.pipeline_ = self._pipeline().fit(self._prep(texts), y)
        h = new_history(len(y), 0, budget)
        h.update(seconds=round(budget.elapsed(), 3), examples_seen=len(y), epochs=1.0, steps=None, stopped="converged")
        self.history_ = h
        return self

    def predict_proba(self, texts) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, 2))
        return self.pipeline_.predict_proba(self._prep(texts)).astype(np.float64)

    explanation_method = "tfidf_coefficients"

    def explain(self, texts: Sequence[str], top_k: int = EXPLAIN_TOP_K) -> list[list[dict[str, Any]]]:
        """The model's own contributions: tf-idf value x logistic-regression coefficient of each
        feature present in the text (a word or word n-gram; ``char:`` for character n-grams), the
        ``top_k`` largest |contribution| first, positive toward positive (they sum, with the intercept,
        to the logit of p_positive)."""
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
        joblib.dump(self.pipeline_, path / "pipeline.joblib", compress=3)

    def _load(self, path: Path) -> None:
        self.pipeline_ = joblib.load(path / "pipeline.joblib")
