"""Helpers for the admin HTTP API tests: plain urllib against a `ferry` fixture."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
TIMEOUT_S = 10.0


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
            return Answer(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.headers, e.read())


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
