"""Resource alarms seen through pika: with a disk_free_limit above the
disk's free space the disk alarm is up, a publishing connection gets
connection.blocked ("low on disk") — pika's add_on_connection_blocked_callback
fires and blocked_connection_timeout ends a connection blocked for too long —
while consumers keep draining."""

from __future__ import annotations

import time

import pika
import pytest
from amqp_util import connect, wait_for

# More free space than any disk has: the alarm is up from the start.
HUGE = "1000000000000000000"


@pytest.mark.ferry_args("--disk-free-limit", HUGE)
def test_publisher_sees_connection_blocked_and_consumers_drain(ferry):
    wait_for(lambda: "disk alarm raised" in ferry.log, what="the disk alarm")
    consumer = connect(ferry)
    cch = consumer.channel()
    cch.queue_declare("jobs")

    publisher = connect(ferry)
    blocked = []
    publisher.add_on_connection_blocked_callback(lambda conn, frame: blocked.append(frame.method.reason))
    pch = publisher.channel()
    # An empty message is whole at its content header: it is routed, and
    # the connection is blocked right after it.
    pch.basic_publish("", "jobs", b"")
    deadline = time.monotonic() + 10
    while not blocked and time.monotonic() < deadline:
        publisher.process_data_events(time_limit=0.05)
    assert blocked == ["low on disk"]
    pch.basic_publish("", "jobs", b"held")

    # The consumer is not blocked and drains what arrived.
    method, _props, body = None, None, None
    deadline = time.monotonic() + 10
    while method is None and time.monotonic() < deadline:
        method, _props, body = cch.basic_get("jobs", auto_ack=True)
        time.sleep(0.02)
    assert method is not None and body == b""
    time.sleep(0.3)
    assert cch.basic_get("jobs", auto_ack=True)[0] is None, "a held publish was read during the alarm"
    consumer.close()
    assert "--disk-free-limit" in ferry.log


@pytest.mark.ferry_args("--disk-free-limit", HUGE)
def test_blocked_connection_timeout_ends_a_blocked_publisher(ferry):
    wait_for(lambda: "disk alarm raised" in ferry.log, what="the disk alarm")
    publisher = connect(ferry, blocked_connection_timeout=1)
    ch = publisher.channel()
    ch.queue_declare("jobs")
    ch.basic_publish("", "jobs", b"")
    with pytest.raises(pika.exceptions.ConnectionBlockedTimeout):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            publisher.process_data_events(time_limit=0.1)
    assert ferry.is_running()
