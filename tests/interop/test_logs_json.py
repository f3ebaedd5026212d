"""Structured logs (`--log-format json`): a client that breaks the protocol
on any listener gets exactly one JSON log line for its connection, naming
its address, so an operator can find who it was."""

from __future__ import annotations

import json
import socket

import pytest

from interop_util import wait_until

DEADLINE_S = 30.0


def json_lines(ferry) -> list[dict]:
    """Every JSON line the server logged since it started (the conftest's own
    banner lines are not JSON)."""
    out = []
    for line in ferry.log.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def naming(lines: list[dict], address: str) -> list[dict]:
    return [line for line in lines if address in json.dumps(line.get("fields", {}))]


def misbehave(port: int, garbage: bytes) -> str:
    """Connects, sends `garbage`, waits for the server to close the
    connection, and returns the client's address as the server sees it."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as s:
        address = "%s:%d" % s.getsockname()
        s.sendall(garbage)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            # Closed with our bytes still unread: the kernel resets.
            pass
    return address


@pytest.mark.ferry_args("--log-format", "json")
def test_one_json_line_per_connection_error_naming_the_client(ferry):
    lines = json_lines(ferry)
    assert any("kafka listening on" in line["fields"]["message"] for line in lines), lines[:5]

    offenders = {
        # A request size far beyond request_bytes_max.
        "kafka": misbehave(ferry.port, b"\x7f\xff\xff\xff" + b"\x00" * 8),
        # Not the AMQP 0-9-1 protocol header.
        "amqp": misbehave(ferry.amqp_port, b"HELLO 1.0\r\n\r\n"),
        # Not HTTP.
        "sqs": misbehave(ferry.sqs_port, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n"),
    }

    def logged():
        lines = json_lines(ferry)
        found = {p: naming(lines, a) for p, a in offenders.items()}
        return found if all(found.values()) else None

    found = wait_until(logged, timeout=DEADLINE_S, what="a log line for each offending connection")
    for protocol, lines in found.items():
        assert len(lines) == 1, (protocol, lines)
        [line] = lines
        assert line["level"] in ("WARN", "INFO"), line
        assert protocol in line["fields"]["message"], line
        assert "timestamp" in line and "target" in line, line
