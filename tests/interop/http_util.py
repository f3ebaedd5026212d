"""Helpers for the admin HTTP API tests: plain urllib against a `ferry` fixture."""

from __future__ import annotations

import functools
import json
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema

TIMEOUT_S = 10.0
OPENAPI_PATH = Path(__file__).resolve().parents[2] / "crates" / "ferry-http" / "src" / "openapi.json"


class Answer:
    """One HTTP answer: status, headers, raw body and the body as JSON."""

    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:500]!r}>"


def call(ferry, method: str, path: str, body=None, raw: bytes | None = None, headers=None) -> Answer:
    """Sends one request to the server's HTTP listener; never raises on a status."""
    data = raw
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(ferry.http_endpoint + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            answer = Answer(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        answer = Answer(e.code, e.headers, e.read())
    check_against_openapi(method, path, answer)
    return answer


# -- the OpenAPI document ------------------------------------------------------


@functools.cache
def openapi() -> dict:
    return json.loads(OPENAPI_PATH.read_text())


def find_operation(method: str, path: str):
    """(template, operation) of the documented operation a request path hits,
    or (None, None); templates' `{x}` match one (percent-encoded) segment."""
    segments = path.split("?", 1)[0].split("/")
    for template, item in openapi()["paths"].items():
        parts = template.split("/")
        if len(parts) != len(segments):
            continue
        if all(p == s or (p.startswith("{") and p.endswith("}") and s) for p, s in zip(parts, segments)):
            return template, item.get(method.lower())
    return None, None


def _validate(schema: dict, instance, what: str) -> None:
    # The document's components travel with the schema so its $refs resolve.
    root = {**schema, "components": openapi()["components"]}
    errors = sorted(jsonschema.Draft202012Validator(root).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{what} does not match the OpenAPI document: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:5]
    )


def check_against_openapi(method: str, path: str, answer: Answer) -> None:
    """Every answer of the server must be one the document promises: a
    documented status with a body of the documented schema. Unknown paths
    and methods must be the JSON error."""
    what = f"{method} {path} -> {answer.status}"
    error_schema = {"$ref": "#/components/schemas/Error"}
    template, op = find_operation(method, path)
    if template is None or op is None:
        assert answer.status in (404, 405), f"{what}: undocumented operation answered"
        _validate(error_schema, json.loads(answer.body), what)
        return
    responses = op["responses"]
    assert str(answer.status) in responses, f"{what}: status not documented for {method} {template} ({sorted(responses)})"
    content = responses[str(answer.status)].get("content")
    if content is None:
        assert answer.body == b"", f"{what}: documented without a body, got {answer.body[:200]!r}"
        return
    [(media, spec)] = content.items()
    assert answer.headers["Content-Type"].startswith(media), f"{what}: Content-Type {answer.headers['Content-Type']}, documented {media}"
    if media == "application/json":
        _validate(spec["schema"], json.loads(answer.body), what)


def get(ferry, path: str) -> Answer:
    return call(ferry, "GET", path)


def get_ok(ferry, path: str):
    """GET that must answer 200 with JSON; returns the JSON."""
    a = get(ferry, path)
    assert a.status == 200, a
    assert a.headers["Content-Type"].startswith("application/json"), a.headers
    return a.json


def assert_error(answer: Answer, status: int, code: str) -> dict:
    """The answer is the API's JSON error with this status and code."""
    assert answer.status == status, answer
    body = answer.json
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    return body
