"""The OpenAPI document says what the API does (Schemathesis checks it: tests/system/api/test_api_contract.py).

FastAPI's generated schema is completed with what the app enforces outside the models:

- every text field: at least one non-whitespace character, no NUL (one validator: api/schemas.py),
  at most ``max_text_chars``; ``texts`` of /predict/batch: 1 to ``max_batch_size`` items;
- every string path and query parameter: no control character (``IDENTIFIER_PATTERN``; the router's
  dependency ``api.schemas.checked_parameters`` enforces it; body strings state theirs in their models);
- on every operation: 503 (shed by admission control, or a dependency is unavailable) with the error
  shape; on every operation with a body: 400 (a body that is not JSON / not UTF-8) and 413 (a body
  over ``api_max_body_bytes``);
- the bearer scheme (``components.securitySchemes.bearer``: ``Authorization: Bearer smk_…``) on every
  operation that takes a key: required (``[{"bearer": []}]``) where only a key may call it, optional
  (``[{"bearer": []}, {}]``) where anonymous callers are served too; so /docs has an "Authorize" button.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from api import auth
from api.schemas import BLANK_CLASS, IDENTIFIER_PATTERN, NO_NUL_PATTERN, ErrorResponse
from ml.platform.config import Settings, get_settings

# a non-whitespace character somewhere, and no NUL anywhere
TEXT_PATTERN = rf"^[^\x00]*[^\x00{BLANK_CLASS}][^\x00]*$"  # one character that is not blank (schemas.BLANK_CLASS)

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
_EXTRA = {
    "400": "the body is not valid JSON (or not UTF-8)",
    "413": "the body is larger than api_max_body_bytes",
}
_SHED = "unavailable: too many requests in progress (admission control, Retry-After), or a dependency is down"


BEARER = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "smk_<key id>_<secret>",
    "description": "An API key made with `ml keys create NAME --scope …` (README: Security). Operations that "
    "also list an empty requirement serve anonymous callers too.",
}
_REQUIRED_CALLERS = ("admin_caller", "review_caller")  # api/auth.py: no anonymous caller passes these


def _key_use(dependant: Dependant) -> str | None:
    """``required`` if the operation depends on a caller that must hold a key, ``optional`` if it
    identifies its caller (api/auth.py) but serves anonymous ones too, else None."""
    required = {getattr(auth, name, None) for name in _REQUIRED_CALLERS} - {None}
    use = None
    stack = [dependant]
    while stack:
        d = stack.pop()
        if d.call is not None and d.call in required:
            return "required"
        if getattr(d.call, "__module__", None) == auth.__name__:
            use = "optional"
        stack.extend(d.dependencies)
    return use


def _security(app: FastAPI, doc: dict[str, Any]) -> None:
    doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = BEARER
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        use = _key_use(route.dependant)
        if use is None:
            continue
        for method in route.methods:
            op = doc.get("paths", {}).get(route.path_format, {}).get(method.lower())
            if op is not None:
                op["security"] = [{"bearer": []}] if use == "required" else [{"bearer": []}, {}]


def _text(schema: dict[str, Any], max_chars: int) -> None:
    schema.update(minLength=1, maxLength=max_chars, pattern=TEXT_PATTERN)


def _no_control(schema: dict[str, Any]) -> None:
    """A string parameter (or a string branch of an optional one) without its own pattern, format or enum
    gets the identifier pattern."""
    for branch in [schema, *schema.get("anyOf", [])]:
        if branch.get("type") == "string" and not ({"pattern", "format", "enum", "const"} & branch.keys()):
            branch["pattern"] = IDENTIFIER_PATTERN


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        settings: Settings = getattr(app.state, "settings", None) or get_settings()  # set in the lifespan
        max_chars, max_batch = settings.max_text_chars, settings.max_batch_size
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorResponse" not in schemas:  # pragma: no cover - health documents it
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
                for param in op.get("parameters", []):
                    _no_control(param.get("schema", {}))
                responses = op["responses"]
                responses.setdefault("503", {"description": _SHED, **_ERROR})
                if "requestBody" in op:
                    for code, why in _EXTRA.items():
                        responses.setdefault(code, {"description": why, **_ERROR})
        _security(app, doc)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
