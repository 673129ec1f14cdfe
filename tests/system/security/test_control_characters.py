"""Every string input is checked (issue 21, item 6). The inputs are generated from the app's own OpenAPI
document (``app.openapi()``), not hand-picked: every string path and query parameter and every string
field of every request body (array items and optional fields included). Each operation is called with a
NUL placed in one such input (identifiers, paths and queries: also an ESC), everything else valid, with an
``admin`` key (it holds every scope, so authentication never answers first). The answer is 422 in the one
error shape, naming the input in ``loc`` and in the message; never a 500 (before the fix ``GET
/batches/%00`` and ``POST /admin/promote {"run_id": "a\\u0000b"}`` were 500s: psycopg DataError).

Free text (tweet texts, comments, reasons, notes) keeps tabs and line breaks. A psycopg DataError that
would slip past the validation is a 422 with the reason, not a 500 (the last-resort handler of
api/errors.py)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
import pytest
from api_helpers import bearer, make_key, running_app
from fastapi.testclient import TestClient

from api.main import create_app
from ml.platform.config import get_settings

NUL, ESC = "a\x00b", "a\x1bb"


def _deref(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _branches(doc: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _deref(doc, schema)
    alts = schema.get("anyOf") or schema.get("oneOf")
    return [_deref(doc, b) for b in alts] if alts else [schema]


def _example(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A valid value of ``schema`` (required properties only)."""
    schema = next(b for b in _branches(doc, schema) if b.get("type") != "null")
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "string":
        if schema.get("format") == "uuid":
            return str(uuid.uuid4())
        alternatives = re.fullmatch(r"\^\(([^()|]+)(\|[^()]+)*\)\$", schema.get("pattern", ""))
        return alternatives.group(1) if alternatives else "fine text"
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if kind == "array":
        return [_example(doc, schema["items"])]
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _example(doc, v) for k, v in props.items() if k in schema.get("required", [])}
    raise AssertionError(f"no example for {schema}")


def _string_leaves(doc: dict[str, Any], schema: dict[str, Any], at: tuple = ()) -> list[tuple[tuple, dict]]:
    """(path in the body, the string schema) of every string the body can hold."""
    out: list[tuple[tuple, dict]] = []
    for branch in _branches(doc, schema):
        kind = branch.get("type")
        if kind == "string":
            out.append((at, branch))
            break  # one string branch per place
        if kind == "array":
            out += _string_leaves(doc, branch["items"], (*at, 0))
        elif kind == "object":
            for name, prop in branch.get("properties", {}).items():
                out += _string_leaves(doc, prop, (*at, name))
    return out


def _put(body: dict[str, Any], at: tuple, value: str) -> dict[str, Any]:
    out = json.loads(json.dumps(body))
    node = out
    for i, part in enumerate(at[:-1]):
        nxt = at[i + 1]
        if isinstance(node, dict) and (part not in node or node[part] is None):
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = at[-1]
    if isinstance(node, list):
        node[:] = [value]
    else:
        node[last] = value
    return out


def _identifier_like(schema: dict[str, Any]) -> bool:
    """A string whose documented pattern refuses every control character (not free text)."""
    pattern = schema.get("pattern")
    return bool(pattern) and re.search(pattern, "a\x1bb") is None and re.search(pattern, "a") is not None


def _cases() -> list[Any]:
    doc = create_app().openapi()
    cases = []
    for template, item in doc["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            params = op.get("parameters", [])
            valid = {p["name"]: _example(doc, p["schema"]) for p in params if p.get("required")}
            body = None
            schema = None
            if "requestBody" in op:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                body = _example(doc, schema)
            for p in params:
                string = next((b for b in _branches(doc, p["schema"]) if b.get("type") == "string"), None)
                if string is None or p["in"] not in ("path", "query"):
                    continue
                for bad in (NUL, ESC):
                    cases.append(
                        pytest.param(
                            method,
                            template,
                            {**valid, p["name"]: bad} if p["in"] == "path" else valid,
                            {p["name"]: bad} if p["in"] == "query" else {},
                            body,
                            (p["in"], p["name"]),
                            id=f"{method.upper()} {template} {p['in']}:{p['name']} {bad!r}",
                        )
                    )
            for at, string in _string_leaves(doc, schema) if schema else []:
                for bad in (NUL, ESC) if _identifier_like(string) else (NUL,):
                    cases.append(
                        pytest.param(
                            method,
                            template,
                            valid,
                            {},
                            _put(body, at, bad),
                            ("body", *at),
                            id=f"{method.upper()} {template} body:{'.'.join(map(str, at))} {bad!r}",
                        )
                    )
    return cases


CASES = _cases()


def test_the_generated_list_covers_the_known_cases():
    ids = {c.id for c in CASES}
    assert "GET /batches/{batch_id} path:batch_id 'a\\x00b'" in ids
    assert "POST /admin/promote body:run_id 'a\\x00b'" in ids
    assert "POST /predict/batch body:texts.0 'a\\x00b'" in ids
    assert len(ids) == len(CASES) >= 20


@pytest.fixture(scope="module")
def settings(champion):
    """The settings while the module's champion (tests/system/security/conftest.py) is open."""
    return get_settings()


@pytest.fixture(scope="module")
def admin_headers(settings) -> dict[str, str]:
    return bearer(make_key(settings, "admin"))


@pytest.fixture(scope="module")
def client(settings):
    with running_app(settings) as c:
        yield c


@pytest.mark.parametrize(("method", "template", "path_params", "query", "body", "loc"), CASES)
def test_a_control_character_in_any_input_is_422_naming_it(
    client, admin_headers, method, template, path_params, query, body, loc
):
    url = template
    for name, value in path_params.items():
        url = url.replace("{" + name + "}", quote(str(value), safe=""))
    if query:
        url += "?" + urlencode(query)
    headers = dict(admin_headers)
    content = None
    if body is not None:
        content = json.dumps(body).encode("ascii")  # \u0000 in the JSON text, as clients send it
        headers["Content-Type"] = "application/json"
    r = client.request(method.upper(), url, content=content, headers=headers)
    assert r.status_code == 422, (r.status_code, r.text[:500])
    err = r.json()
    assert err["status"] == 422 and isinstance(err["detail"], list)
    locs = [item["loc"] for item in err["detail"]]
    assert any(list(got[: len(loc)]) == list(loc) for got in locs), (loc, err)
    assert ".".join(map(str, loc)) in err["message"], err["message"]
    assert "\x00" not in r.text and "\x1b" not in r.text  # the rejected input is not echoed back


def test_free_text_keeps_tabs_and_line_breaks(client):
    r = client.post("/predict", json={"text": "so happy\ttoday\r\nreally"})
    assert r.status_code == 200, r.text


def test_a_database_data_error_is_a_422_with_the_reason_not_a_500(settings):
    app = create_app(settings)

    @app.get("/test-only/data-error")
    def data_error() -> None:  # a value PostgreSQL refuses, past any validation
        with psycopg.connect(settings.database_url) as conn:
            conn.execute("SELECT %s::text", ("a\x00b",))

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/test-only/data-error")
    assert r.status_code == 422, r.text
    assert r.json()["status"] == 422 and "refused by the database" in r.json()["message"]
    assert "NUL" in r.json()["message"]
