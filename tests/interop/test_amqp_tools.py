"""amqp-tools (rabbitmq-c's command-line clients, from Debian) against Ferry:
declare, publish, get, consume, delete, and a fan-out seen by amqp-consume."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from amqp_util import connect, get_all

pytestmark = pytest.mark.skipif(shutil.which("amqp-publish") is None, reason="amqp-tools not installed")


def tool(ferry, name: str, *args: str, input: bytes | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [name, "--url", f"amqp://guest:guest@127.0.0.1:{ferry.amqp_port}", *args],
        input=input,
        capture_output=True,
        timeout=timeout,
    )


def test_declare_publish_get_delete(ferry):
    r = tool(ferry, "amqp-declare-queue", "-q", "tools-q", "-d")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "tools-q"
    for i in range(3):
        r = tool(
            ferry,
            "amqp-publish",
            "-r",
            "tools-q",
            "-p",
            "-C",
            "text/plain",
            "-H",
            f"n: {i}",
            "-b",
            f"hello {i}",
        )
        assert r.returncode == 0, r.stderr
    r = tool(ferry, "amqp-get", "-q", "tools-q")
    assert (r.returncode, r.stdout) == (0, b"hello 0")
    # What amqp-publish set arrives intact for a pika consumer.
    conn = connect(ferry)
    ch = conn.channel()
    (m, props, body) = get_all(ch, "tools-q", 1)[0]
    assert body == b"hello 1"
    assert props.content_type == "text/plain"
    assert props.delivery_mode == 2
    assert props.headers == {"n": "1"}
    conn.close()
    r = tool(ferry, "amqp-delete-queue", "-q", "tools-q")
    assert r.returncode == 0, r.stderr
    # amqp-get on a missing queue fails with RabbitMQ's 404 text.
    r = tool(ferry, "amqp-get", "-q", "tools-q")
    assert r.returncode != 0
    assert b"NOT_FOUND - no queue 'tools-q' in vhost '/'" in r.stderr


def test_line_buffered_publish_and_consume_count(ferry):
    tool(ferry, "amqp-declare-queue", "-q", "lines")
    r = tool(ferry, "amqp-publish", "-r", "lines", "-l", input=b"one\ntwo\nthree\n")
    assert r.returncode == 0, r.stderr
    # amqp-consume runs `cat` once per message and stops after -c messages;
    # amqp-publish -l keeps each line's newline in the body.
    r = tool(ferry, "amqp-consume", "-q", "lines", "-c", "3", "cat")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"one\ntwo\nthree\n"


def test_amqp_consume_on_a_fanout_exchange(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.exchange_declare("tools-fanout", exchange_type="fanout")
    proc = subprocess.Popen(
        [
            "amqp-consume",
            "--url",
            f"amqp://guest:guest@127.0.0.1:{ferry.amqp_port}",
            "-e",
            "tools-fanout",
            # Without -r, amqp-consume 0.11 passes a NULL routing key to
            # queue.bind and crashes before sending it.
            "-r",
            "any",
            "-x",
            "-c",
            "2",
            "cat",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Publish until amqp-consume (once its exclusive queue is bound) has
        # taken two messages and exited.
        deadline = time.monotonic() + 15
        sent = 0
        while proc.poll() is None and time.monotonic() < deadline:
            ch.basic_publish("tools-fanout", "", f"m{sent}".encode())
            sent += 1
            time.sleep(0.2)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        # Two consecutive messages, whichever were the first after binding.
        assert out.startswith(b"m") and out.count(b"m") == 2, out
    finally:
        if proc.poll() is None:
            proc.kill()
    conn.close()
