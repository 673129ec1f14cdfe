"""A small typed client of the platform's HTTP API (``httpx``), for scripts and notebooks.

>>> from ml.client import SentimentClient
>>> with SentimentClient("http://127.0.0.1:8000") as api:       # api_key="smk_..." for keyed calls
...     p = api.predict("I love this, best day ever")
...     p["label"], p["probabilities"]["positive"]
...     api.feedback(p["id"], "negative", p["feedback_token"], comment="sarcasm")

Every error of the API has one shape (``{"status", "message", "detail"}``); the client raises
:class:`ApiError` with that message, the status and, for 429/503, the ``Retry-After`` seconds.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, TypedDict

import httpx

Label = Literal["positive", "negative"]


class Probabilities(TypedDict):
    negative: float
    positive: float


class Prediction(TypedDict):
    id: str
    label: Label
    label_id: int
    probabilities: Probabilities
    model_name: str
    model_version: int
    feedback_token: str | None


class BatchPrediction(TypedDict):
    count: int
    model_name: str
    model_version: int
    predictions: list[Prediction]


class Feedback(TypedDict):
    id: int
    prediction_id: str
    correct_label: Label
    correct_label_id: int
    comment: str | None
    created_at: str
    reporter: str | None


class ApiError(RuntimeError):
    """A non-2xx answer: ``status``, the API's one-line ``message`` and ``retry_after`` (seconds, or None)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class SentimentClient:
    """The API at ``base_url`` (default ``http://127.0.0.1:8000``, what ``make up`` serves)."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 30.0
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> SentimentClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self._http.request(method, path, **kwargs)
        if r.is_success:
            return r.json()
        try:
            message = str(r.json().get("message") or r.text)
        except ValueError:
            message = r.text or r.reason_phrase
        retry = r.headers.get("retry-after")
        raise ApiError(r.status_code, message, float(retry) if retry and retry.isdigit() else None)

    # ---- serving
    def predict(self, text: str) -> Prediction:
        """The champion's prediction for one tweet (with its id and feedback token)."""
        result: Prediction = self._call("POST", "/predict", json={"text": text})
        return result

    def predict_batch(self, texts: list[str]) -> BatchPrediction:
        """Predictions for up to ``max_batch_size`` tweets in one call (one model call)."""
        result: BatchPrediction = self._call("POST", "/predict/batch", json={"texts": texts})
        return result

    def feedback(
        self, prediction_id: str, correct_label: Label, feedback_token: str | None = None, comment: str | None = None
    ) -> Feedback:
        """Report the correct label of one of this caller's predictions (its ``feedback_token``;
        a ``review`` key needs none). Reporting the same prediction again stores nothing new."""
        body: dict[str, Any] = {"prediction_id": prediction_id, "correct_label": correct_label}
        if feedback_token is not None:
            body["feedback_token"] = feedback_token
        if comment is not None:
            body["comment"] = comment
        result: Feedback = self._call("POST", "/feedback", json=body)
        return result

    def model(self) -> dict[str, Any]:
        """The serving champion: name, version, run, metrics."""
        result: dict[str, Any] = self._call("GET", "/model")
        return result

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._http.get("/health").json()
        return result

    # ---- batches, reports, review
    def batches(self) -> list[dict[str, Any]]:
        """Recent batch-scoring runs with their state and counts."""
        result: list[dict[str, Any]] = self._call("GET", "/batches")
        return result

    def batch(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/batches/{batch_id}")
        return result

    def reports(self) -> list[dict[str, Any]]:
        """Drift reports, newest first."""
        result: list[dict[str, Any]] = self._call("GET", "/reports")
        return result

    def review_queue(self, limit: int = 50) -> dict[str, Any]:
        """Items waiting for a reviewer (a ``review`` key)."""
        result: dict[str, Any] = self._call("GET", "/review/queue", params={"limit": limit})
        return result

    def review(self, item: str, decision: Literal["accept", "reject", "relabel"], label: Label | None = None) -> Any:
        """Decide a review item (a ``review`` key): accept its reported label, reject it, or relabel it."""
        body: dict[str, Any] = {"decision": decision}
        if label is not None:
            body["label"] = label
        return self._call("POST", f"/review/{item}", json=body)

    def lineage(self, prediction_id: str) -> dict[str, Any]:
        """Model -> snapshot -> retraining -> reports behind one prediction (redacted without an admin key)."""
        result: dict[str, Any] = self._call("GET", f"/predictions/{prediction_id}/lineage")
        return result
