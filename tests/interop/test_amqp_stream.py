"""A stream queue (x-queue-type=stream) written over AMQP, read from an
offset over AMQP, and read again over the Kafka protocol: one log, two
protocols."""

from __future__ import annotations

import pika
from amqp_util import connect, wait_for
from confluent_kafka import Consumer, TopicPartition


def test_stream_read_from_an_offset_over_amqp_and_over_kafka(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.queue_declare("events", durable=True, arguments={"x-queue-type": "stream"})
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish(
            "",
            "events",
            f"e{i}".encode(),
            pika.BasicProperties(delivery_mode=2, message_id=f"id{i}", headers={"n": i}),
        )
    # A stream consumer starting at offset 5 (manual acks and a prefetch,
    # as RabbitMQ requires for streams).
    ch.basic_qos(prefetch_count=20)
    got = []

    def on_message(c, method, props, body):
        got.append((body, props))
        c.basic_ack(method.delivery_tag)

    ch.basic_consume("events", on_message, arguments={"x-stream-offset": 5})
    wait_for(lambda: (conn.process_data_events(time_limit=0.05), len(got) >= 5)[1], 15, "5 stream deliveries")
    conn.process_data_events(time_limit=0.3)
    assert [b for b, _ in got] == [f"e{i}".encode() for i in range(5, 10)]
    assert [p.headers["x-stream-offset"] for _, p in got] == list(range(5, 10))
    assert [p.headers["n"] for _, p in got] == list(range(5, 10))
    assert [p.message_id for _, p in got] == [f"id{i}" for i in range(5, 10)]
    # Reading a stream consumes nothing: a second consumer from "first" sees all ten.
    ch2 = conn.channel()
    ch2.basic_qos(prefetch_count=20)
    again = []
    ch2.basic_consume("events", lambda c, m, p, b: (again.append(b), c.basic_ack(m.delivery_tag)), arguments={"x-stream-offset": "first"})
    wait_for(lambda: (conn.process_data_events(time_limit=0.05), len(again) >= 10)[1], 15, "10 stream deliveries")
    assert again == [f"e{i}".encode() for i in range(10)]
    conn.close()

    # The same log over Kafka: topic "events", partition 0, offsets 0..9.
    consumer = Consumer(
        {
            "bootstrap.servers": ferry.bootstrap,
            "group.id": "stream-reader",
            "enable.auto.commit": False,
            "broker.address.family": "v4",
        }
    )
    try:
        consumer.assign([TopicPartition("events", 0, 0)])
        records = []
        deadline_polls = 100
        while len(records) < 10 and deadline_polls > 0:
            deadline_polls -= 1
            m = consumer.poll(0.2)
            if m is None or m.error():
                continue
            records.append(m)
        assert [(m.offset(), m.value()) for m in records] == [(i, f"e{i}".encode()) for i in range(10)]
        # The routing key is the record key.
        assert all(m.key() == b"events" for m in records)
    finally:
        consumer.close()
