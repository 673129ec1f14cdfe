"""API fixtures: a real tiny champion (TF-IDF + logistic regression on 2,000 real tweets),
logged, registered and promoted in the session's real MLflow store; apps over the session's
real PostgreSQL database."""
from __future__ import annotations

import csv
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from api_helpers import running_app, settings_with


@dataclass(frozen=True)
class Published:
    version: int
    run_id: str
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time_ms: int


@pytest.fixture(scope="session")
def tweets(tweets_csv) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with tweets_csv.open(encoding="utf-8", newline="") as f:
        for polarity, text in csv.reader(f):
            texts.append(text)
            labels.append(1 if int(polarity) == 4 else 0)
    assert set(labels) == {0, 1}
    return texts, labels


def _train(texts, labels, **params):
    from ml import models

    return models.create("tfidf_lr", **params).fit(texts, labels)


def _metrics(model, texts, labels) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    start = time.perf_counter()
    proba = model.predict_proba(texts)
    ms = 1000 * (time.perf_counter() - start) / len(texts)
    pred = (proba[:, 1] >= 0.5).astype(int)
    return {
        "accuracy": accuracy_score(labels, pred),
        "precision": precision_score(labels, pred),
        "recall": recall_score(labels, pred),
        "f1": f1_score(labels, pred),
        "roc_auc": roc_auc_score(labels, proba[:, 1]),
        "inference_ms_per_tweet": ms,
    }


@pytest.fixture(scope="session")
def publish(mlflow_tracking, tweets) -> Callable[..., Published]:
    """``publish(settings, **params)``: train on 1,600 tweets, evaluate on 400, log to MLflow
    with metrics and lineage tags, register under ``settings.model_name``, make it champion."""
    import mlflow

    from ml import registry

    texts, labels = tweets
    train_x, train_y, test_x, test_y = [], [], [], []
    for i, (t, y) in enumerate(zip(texts, labels)):
        (test_x if i % 5 == 0 else train_x).append(t)
        (test_y if i % 5 == 0 else train_y).append(y)

    def _publish(settings, champion: bool = True, **params) -> Published:
        model = _train(train_x, train_y, **params)
        metrics = _metrics(model, test_x, test_y)
        tags = {"dataset_hash": uuid.uuid4().hex, "git_commit": "test-" + uuid.uuid4().hex[:7], "family": "tfidf_lr"}
        with mlflow.start_run() as run:
            info = registry.log_model(model)
            mlflow.log_metrics(metrics)
            mlflow.set_tags(tags)
        version = registry.register(info.model_uri, run.info.run_id, settings)
        if champion:
            registry.set_champion(version, settings)
        return Published(version, run.info.run_id, metrics, tags, run.info.start_time)

    return _publish


@pytest.fixture(scope="session")
def api_settings(platform_env):
    """The session's settings with a registered model name of the API tests' own, so that other
    tests promoting versions of the default name never change what these apps serve."""
    return settings_with(platform_env, model_name="tweet-sentiment-api-tests")


@pytest.fixture(scope="session")
def champion(api_settings, publish) -> Published:
    """A real champion of ``api_settings.model_name``."""
    return publish(api_settings)


@pytest.fixture(scope="module")
def client(api_settings, champion) -> Iterator[TestClient]:
    with running_app(api_settings) as c:
        yield c
