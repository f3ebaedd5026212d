"""The admin HTTP API (`ferry serve --http-listen`) against a real broker."""

from __future__ import annotations

import pytest

from http_util import assert_error, get, get_ok


def test_overview_names_the_version_and_every_listener(ferry):
    o = get_ok(ferry, "/api/overview")
    assert o["version"]
    listeners = {l["protocol"]: l["address"] for l in o["listeners"]}
    assert listeners == {
        "kafka": ferry.bootstrap,
        "amqp": f"127.0.0.1:{ferry.amqp_port}",
        "sqs": f"127.0.0.1:{ferry.sqs_port}",
        "http": f"127.0.0.1:{ferry.http_port}",
    }
    assert o["uptime_ms"] >= 0


@pytest.mark.parametrize("path", ["/api", "/api/no-such-thing", "/api/topics/x/y/z/w"])
def test_unknown_paths_are_json_404s(ferry, path):
    assert_error(get(ferry, path), 404, "not_found")
