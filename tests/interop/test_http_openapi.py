"""The admin API against its OpenAPI document (`/api/openapi.json`).

Every request the HTTP tests make goes through `http_util.call`, which checks
the answer's status and body against this document; the tests here check the
document itself and that every operation it names is served."""

from __future__ import annotations

import json
import re

from openapi_spec_validator import validate

from http_util import OPENAPI_PATH, call, get, openapi


def test_the_served_document_is_the_one_in_the_repository(ferry):
    a = get(ferry, "/api/openapi.json")
    assert a.status == 200
    assert a.json == json.loads(OPENAPI_PATH.read_text())


def test_the_document_is_valid_openapi_3_1():
    validate(openapi())


def test_every_operation_is_served_and_answers_as_documented(ferry):
    # Unknown resources on purpose: each operation must be routed (not the
    # router's "no such endpoint"), and answer a documented status with a
    # documented body (checked in `call`).
    for template, item in openapi()["paths"].items():
        path = re.sub(r"\{[^}]+\}", "nope", template)
        for method in ("get", "post", "patch", "delete", "put"):
            a = call(ferry, method.upper(), path, {} if method in ("post", "patch", "put") else None)
            if method not in item:
                assert a.status == 405, (method, template, a)
                continue
            assert a.status != 405, (method, template, a)
            if a.status == 404:
                assert "no such endpoint" not in a.json["message"], (method, template, a)


def test_every_schema_is_used():
    text = json.dumps(openapi()["paths"]) + json.dumps(openapi()["components"])
    for name in openapi()["components"]["schemas"]:
        assert f'"#/components/schemas/{name}"' in text, f"schema {name} is never referenced"
