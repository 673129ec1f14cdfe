"""The OpenAPI document says what the API does (Schemathesis checks it: tests/api/test_api_contract.py).

FastAPI's generated schema is completed with what the app enforces outside the models:

- every text field: at least one non-whitespace character, no NUL (one validator: api/schemas.py),
  at most ``max_text_chars``; ``texts`` of /predict/batch: 1 to ``max_batch_size`` items;
- on every operation: 503 (shed by admission control, or a dependency is unavailable) with the error
  shape; on every operation with a body: 400 (a body that is not JSON / not UTF-8) and 413 (a body
  over ``api_max_body_bytes``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

# a non-whitespace character somewhere, and no NUL anywhere
TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
NO_NUL_PATTERN = r"^[^\x00]*$"

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
_EXTRA = {
    "400": "the body is not valid JSON (or not UTF-8)",
    "413": "the body is larger than api_max_body_bytes",
}
_SHED = "unavailable: too many requests in progress (admission control, Retry-After), or a dependency is down"


def _text(schema: dict[str, Any], max_chars: int) -> None:
    schema.update(minLength=1, maxLength=max_chars, pattern=TEXT_PATTERN)


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        settings = getattr(app.state, "settings", None)
        max_chars = int(getattr(settings, "max_text_chars", 1000))
        max_batch = int(getattr(settings, "max_batch_size", 1000))
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorResponse" not in schemas:  # pragma: no cover - health documents it
            from api.schemas import ErrorResponse

            schemas["ErrorResponse"] = ErrorResponse.model_json_schema()
        if "PredictRequest" in schemas:
            _text(schemas["PredictRequest"]["properties"]["text"], max_chars)
        if "BatchPredictRequest" in schemas:
            texts = schemas["BatchPredictRequest"]["properties"]["texts"]
            texts.update(minItems=1, maxItems=max_batch)
            _text(texts["items"], max_chars)
        comment = schemas.get("FeedbackRequest", {}).get("properties", {}).get("comment")
        for branch in (comment or {}).get("anyOf", []):
            if branch.get("type") == "string":
                branch["pattern"] = NO_NUL_PATTERN
        for item in doc.get("paths", {}).values():
            for op in item.values():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                responses = op["responses"]
                responses.setdefault("503", {"description": _SHED, **_ERROR})
                if "requestBody" in op:
                    for code, why in _EXTRA.items():
                        responses.setdefault(code, {"description": why, **_ERROR})
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
