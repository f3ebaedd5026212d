"""Idempotent producers (KIP-98) with real clients while the broker restarts.

A producer with `enable.idempotence` keeps producing numbered records while
the broker is stopped and started again under it, cleanly (SIGTERM) or by
SIGKILL. The client retries whatever was in flight; the broker must store
each retried batch once (answering a batch it already has with the original
offsets), so afterwards every record is present exactly once, each partition
holds its records in the order they were produced, and every delivery report
names the offset the record really has.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Producer, TopicPartition
from kafka import KafkaProducer

from interop_util import consume_n, create_topic, make_consumer, unique_topic

PARTITIONS = 3
RECORDS = 20_000
# Each interruption comes after this fraction of the records was produced.
INTERRUPT_AT = (0.25, 0.5, 0.75)
DELIVERY_TIMEOUT_S = 90.0


def restart_broker(ferry, how: str) -> None:
    """Stops the broker under the clients (SIGTERM or SIGKILL) and starts it
    again on the same port, so that their bootstrap address stays valid."""
    if how == "sigterm":
        ferry.restart()
        return
    port = ferry.port
    ferry.kill9()
    ferry.start(listen=f"127.0.0.1:{port}")
    assert ferry.port == port, "the broker came back on another port"


def check_exactly_once_in_order(ferry, topic: str, reports: dict, n: int) -> None:
    """Every record 0..n-1 is stored once, per partition in production order,
    at the offset its delivery report gave."""
    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        msgs = consume_n(consumer, n, timeout=60, drain=1.0)
    finally:
        consumer.close()
    seen: dict[int, tuple[int, int]] = {}
    per_partition: dict[int, list[int]] = {}
    for m in msgs:
        i = int(m.value())
        assert i not in seen, f"record {i} stored twice: at {seen[i]} and {(m.partition(), m.offset())}"
        seen[i] = (m.partition(), m.offset())
        per_partition.setdefault(m.partition(), []).append(i)
    assert sorted(seen) == list(range(n)), "records missing"
    for p, values in per_partition.items():
        assert values == sorted(values), f"partition {p} is out of production order"
    wrong = [(i, reports[i], seen[i]) for i in range(n) if reports[i] != seen[i]]
    assert not wrong, f"delivery reports disagree with the log (record, reported, stored): {wrong[:5]}"


def server_restarts(ferry) -> int:
    return len(re.findall(r"===== ferry start", ferry.log))


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_confluent_idempotent_producer_across_broker_restarts(ferry, how):
    topic = unique_topic("idem")
    create_topic(ferry.bootstrap, topic, partitions=PARTITIONS)
    producer = Producer(
        {
            "bootstrap.servers": ferry.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.num.messages": 100,
            "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000),
            "socket.timeout.ms": 10000,
            "reconnect.backoff.ms": 20,
            "reconnect.backoff.max.ms": 200,
            "retry.backoff.ms": 20,
        }
    )
    reports: dict[int, tuple[int, int]] = {}
    errors: list = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append((msg.value(), err))
        else:
            reports[int(msg.value())] = (msg.partition(), msg.offset())

    produced = 0
    done = threading.Event()

    def produce_steadily():
        # A steady stream, so that batches are in flight at every moment,
        # including when the broker goes away.
        nonlocal produced
        try:
            for i in range(RECORDS):
                while True:
                    try:
                        producer.produce(topic, key=str(i % 97).encode(), value=str(i).encode(), on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.01)
                produced = i + 1
                if i % 50 == 0:
                    producer.poll(0)
                    time.sleep(0.005)
        finally:
            done.set()

    thread = threading.Thread(target=produce_steadily, daemon=True)
    thread.start()
    for fraction in INTERRUPT_AT:
        while produced < fraction * RECORDS and not done.is_set():
            time.sleep(0.005)
        assert not done.is_set(), "the producer finished before the broker was interrupted"
        restart_broker(ferry, how)
    thread.join(timeout=DELIVERY_TIMEOUT_S)
    remaining = producer.flush(DELIVERY_TIMEOUT_S)
    assert remaining == 0, f"{remaining} records not delivered"
    assert not errors, f"delivery errors: {errors[:5]}"
    assert server_restarts(ferry) == 1 + len(INTERRUPT_AT)
    check_exactly_once_in_order(ferry, topic, reports, RECORDS)


KAFKA_PYTHON_RECORDS = 6_000


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_kafka_python_idempotent_producer_across_broker_restarts(ferry, how):
    topic = unique_topic("idem-kp")
    create_topic(ferry.bootstrap, topic, partitions=PARTITIONS)
    producer = KafkaProducer(
        bootstrap_servers=ferry.bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        request_timeout_ms=10_000,
        delivery_timeout_ms=int(DELIVERY_TIMEOUT_S * 1000),
        reconnect_backoff_ms=20,
        reconnect_backoff_max_ms=200,
        retry_backoff_ms=20,
    )
    futures: list = []
    done = threading.Event()

    def produce_steadily():
        try:
            for i in range(KAFKA_PYTHON_RECORDS):
                futures.append(producer.send(topic, key=str(i % 97).encode(), value=str(i).encode()))
                if i % 20 == 0:
                    time.sleep(0.002)
        finally:
            done.set()

    try:
        thread = threading.Thread(target=produce_steadily, daemon=True)
        thread.start()
        for fraction in INTERRUPT_AT:
            while len(futures) < fraction * KAFKA_PYTHON_RECORDS and not done.is_set():
                time.sleep(0.005)
            assert not done.is_set(), "the producer finished before the broker was interrupted"
            restart_broker(ferry, how)
        thread.join(timeout=DELIVERY_TIMEOUT_S)
        producer.flush(timeout=DELIVERY_TIMEOUT_S)
        reports = {}
        for i, f in enumerate(futures):
            md = f.get(timeout=DELIVERY_TIMEOUT_S)
            reports[i] = (md.partition, md.offset)
    finally:
        producer.close(timeout=10)
    check_exactly_once_in_order(ferry, topic, reports, KAFKA_PYTHON_RECORDS)
