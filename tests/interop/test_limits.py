"""Real clients against Ferry's listener limits and timeouts (the hostile
side is crates/ferry/tests/hostile.rs): the limits must stop misbehaving
clients without getting in the way of well-behaved ones."""

from __future__ import annotations

import time

import pika
import pytest
from amqp_util import connect
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from interop_util import consume_n, create_topic, make_consumer, make_producer, produce_ok, unique_topic
from sqs_util import sqs_client


@pytest.mark.ferry_args("--sqs-idle-timeout-ms", "500")
def test_boto3_outlives_the_sqs_idle_timeout(ferry):
    # boto3 keeps connections in a pool; the server closes them when idle
    # and the next call must not fail (no retries are allowed here). A long
    # poll longer than the idle timeout is not cut short: the timer runs
    # only while the server waits for a request's headers.
    sqs = sqs_client(ferry)
    url = sqs.create_queue(QueueName="idle")["QueueUrl"]
    time.sleep(1.0)
    sqs.send_message(QueueUrl=url, MessageBody="after a pause")
    time.sleep(1.0)
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2, VisibilityTimeout=30)
    assert [m["Body"] for m in got["Messages"]] == ["after a pause"]
    started = time.monotonic()
    r = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2)
    assert "Messages" not in r
    assert time.monotonic() - started >= 1.9


@pytest.mark.ferry_args("--amqp-connections-max", "2")
def test_pika_past_the_amqp_connection_limit(ferry):
    first, second = connect(ferry), connect(ferry)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        connect(ferry)
    first.close()
    # The slot is free once the server has seen the close.
    deadline = time.monotonic() + 5
    while True:
        try:
            third = connect(ferry)
            break
        except pika.exceptions.AMQPConnectionError:
            assert time.monotonic() < deadline, "the freed slot was never reused"
            time.sleep(0.1)
    ch = third.channel()
    ch.queue_declare("limits")
    third.close()
    second.close()


@pytest.mark.ferry_args("--kafka-fetch-bytes-max", "1024")
def test_librdkafka_consumes_with_a_tiny_fetch_cap(ferry):
    # A Fetch's max_bytes is lowered to 1 KiB, but the first batch always
    # goes whole (KIP-74), so a consumer still gets 10 KiB records.
    topic = unique_topic("fetchcap")
    create_topic(ferry.bootstrap, topic)
    values = [f"{i}:".encode() + b"v" * 10_000 for i in range(20)]
    produce_ok(make_producer(ferry.bootstrap, **{"linger.ms": 0}), topic, [{"value": v} for v in values])
    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        assert [m.value() for m in consume_n(consumer, len(values))] == values
    finally:
        consumer.close()
