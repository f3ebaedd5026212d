"""Admin users (`[http.admins]` in ferry.toml): once any are configured,
every change through the admin API needs one of them (HTTP Basic), while
reading stays open; without them (every other test) nothing is asked."""

from __future__ import annotations

import base64

import pytest

from conftest import FerryServer
from http_util import assert_error, call, get_ok


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def guarded(tmp_path):
    config = tmp_path / "ferry.toml"
    config.write_text('[http.admins]\nalice = "correct horse"\n')
    server = FerryServer(tmp_path, ["--config", str(config)])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_changes_need_an_admin_once_admins_exist(guarded):
    body = {"name": "guarded", "partitions": 1}
    for headers in (None, basic("alice", "wrong"), basic("mallory", "correct horse"), {"Authorization": "Bearer x"}):
        a = call(guarded, "POST", "/api/topics", body, headers=headers)
        assert_error(a, 401, "unauthorized")
        assert a.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert_error(call(guarded, "DELETE", "/api/connections/1"), 401, "unauthorized")
    # Reading needs no one; nothing was created.
    assert get_ok(guarded, "/api/topics")["topics"] == []

    a = call(guarded, "POST", "/api/topics", body, headers=basic("alice", "correct horse"))
    assert a.status == 201, a
    assert [t["name"] for t in get_ok(guarded, "/api/topics")["topics"]] == ["guarded"]
    a = call(guarded, "DELETE", "/api/topics/guarded", headers=basic("alice", "correct horse"))
    assert a.status == 204, a


def test_without_admins_changes_are_open(ferry):
    a = call(ferry, "POST", "/api/topics", {"name": "open", "partitions": 1})
    assert a.status == 201, a
