"""Helpers for the AMQP interop tests (pika's blocking adapter)."""

from __future__ import annotations

import time

import pika


def connect(ferry, **params) -> pika.BlockingConnection:
    p = pika.URLParameters(ferry.amqp_url)
    p.socket_timeout = 10
    p.blocked_connection_timeout = 30
    p.connection_attempts = 1
    for k, v in params.items():
        setattr(p, k, v)
    return pika.BlockingConnection(p)


def get_all(ch, queue: str, n: int, timeout: float = 10.0, auto_ack: bool = True) -> list:
    """basic.get until `n` messages came (or the timeout): [(method, props, body)]."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            time.sleep(0.02)
            continue
        out.append((method, props, body))
    return out


def consume_n(conn, ch, queue: str, n: int, timeout: float = 10.0, auto_ack: bool = True, **kw) -> list:
    """basic.consume until `n` deliveries came: [(method, props, body)]."""
    got = []

    def on_message(c, method, props, body):
        got.append((method, props, body))

    tag = ch.basic_consume(queue, on_message, auto_ack=auto_ack, **kw)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    return got


def wait_for(cond, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
