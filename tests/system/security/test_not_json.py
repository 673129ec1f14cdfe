"""A body that is not JSON is a 400 (issue 21, item 8: it was a 422, while the README and the OpenAPI
document promise 400). Every operation with a request body, taken from the app's OpenAPI document: a
truncated JSON text and bytes that are not UTF-8 both answer 400 in the one error shape, the message
naming where the JSON breaks (line, column, character), and the document lists that 400."""

from __future__ import annotations

import pytest
from api_helpers import bearer, make_key, running_app

from api.main import create_app
from ml.platform.config import get_settings


def _operations() -> list[tuple[str, str]]:
    doc = create_app().openapi()
    return [
        (method, path)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "requestBody" in op
    ]


OPERATIONS = _operations()


@pytest.fixture(scope="module")
def settings(champion):
    return get_settings()


@pytest.fixture(scope="module")
def client(settings):
    with running_app(settings) as c:
        yield c


def test_every_operation_with_a_body_documents_400():
    doc = create_app().openapi()
    assert len(OPERATIONS) >= 7
    for method, path in OPERATIONS:
        responses = doc["paths"][path][method]["responses"]
        assert "400" in responses, (method, path)
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_a_body_that_is_not_json_is_400_naming_the_position(client, settings, method, path):
    url = path.replace("{item}", "00000000-0000-4000-8000-000000000000")
    headers = {**bearer(make_key(settings, "admin")), "Content-Type": "application/json"}
    r = client.request(method.upper(), url, content=b'{\n  "text": "fine",\n  oops', headers=headers)
    assert r.status_code == 400, (r.status_code, r.text)
    err = r.json()
    assert err["status"] == 400 and "not valid JSON" in err["message"]
    assert "line 3, column 3 (character 22)" in err["message"], err["message"]
    assert err["detail"] == [{"type": "json_invalid", "loc": ["body", 22], "msg": err["message"]}]
    r = client.request(method.upper(), url, content=b'{"text": "\xff\xfe"}', headers=headers)
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.json()["status"] == 400
