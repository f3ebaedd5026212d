"""Helpers shared by the interop tests (confluent-kafka based)."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# Generous but bounded: a test never waits forever on a broken server.
OP_TIMEOUT_S = 15.0


def unique_topic(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Rec:
    """A record as the tests compare it: everything a client can see."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple
    timestamp: int

    def without_offset(self):
        return (self.partition, self.key, self.value, self.headers, self.timestamp)


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})


def create_topic(bootstrap_or_admin, name: str, partitions: int = 1, config: dict | None = None) -> None:
    admin = admin_client(bootstrap_or_admin) if isinstance(bootstrap_or_admin, str) else bootstrap_or_admin
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
        request_timeout=OP_TIMEOUT_S,
    )
    futures[name].result(timeout=OP_TIMEOUT_S)


def kafka_error_of(exc: BaseException) -> KafkaError:
    """The KafkaError inside an admin future's exception."""
    assert isinstance(exc, KafkaException), f"expected KafkaException, got {type(exc).__name__}: {exc!r}"
    err = exc.args[0]
    assert isinstance(err, KafkaError), repr(exc)
    return err


def make_producer(bootstrap: str, **extra) -> Producer:
    conf = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": False,
        "linger.ms": 5,
        # One Produce request at a time keeps these tests about their own
        # subject; pipelining (the client default) has dedicated tests.
        "max.in.flight": 1,
        "message.timeout.ms": 20000,
        "socket.timeout.ms": 10000,
    }
    conf.update(extra)
    return Producer(conf)


def produce_all(producer: Producer, topic: str, messages, timeout: float = OP_TIMEOUT_S):
    """Produces `messages` (dicts of produce() kwargs) and returns each
    message's delivery report as (error, partition, offset), in input order."""
    reports: list = [None] * len(messages)

    def callback_for(i):
        def cb(err, msg):
            reports[i] = (err, msg.partition(), msg.offset(), msg.timestamp())

        return cb

    for i, m in enumerate(messages):
        while True:
            try:
                producer.produce(topic, on_delivery=callback_for(i), **m)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} messages not delivered within {timeout}s"
    assert all(r is not None for r in reports), reports
    return reports


def produce_ok(producer: Producer, topic: str, messages, timeout: float = OP_TIMEOUT_S):
    """Like produce_all, but every delivery must succeed; returns (partition, offset) pairs."""
    reports = produce_all(producer, topic, messages, timeout)
    errors = [(i, r[0]) for i, r in enumerate(reports) if r[0] is not None]
    assert not errors, f"delivery failed: {errors[:5]}"
    return [(r[1], r[2]) for r in reports]


def make_consumer(bootstrap: str, **extra) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        # librdkafka insists on a group id, but with assign() and explicit
        # offsets the group coordinator is never needed.
        "group.id": f"interop-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "fetch.wait.max.ms": 100,
        "socket.timeout.ms": 10000,
        "session.timeout.ms": 6000,
    }
    conf.update(extra)
    return Consumer(conf)


def to_rec(msg) -> Rec:
    ts_type, ts = msg.timestamp()
    headers = tuple(msg.headers() or ())
    return Rec(msg.partition(), msg.offset(), msg.key(), msg.value(), headers, ts)


def consume_n(consumer: Consumer, n: int, timeout: float = OP_TIMEOUT_S, drain: float = 0.3) -> list:
    """Polls until `n` messages arrived (failing on any error or on timeout),
    then keeps polling for `drain` seconds to catch unexpected extra ones."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(out)} of {n} messages within {timeout}s: {out[-3:]}")
        msg = consumer.poll(min(left, 0.5))
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {msg.error()}")
        out.append(msg)
    end = time.monotonic() + drain
    while time.monotonic() < end:
        msg = consumer.poll(max(0.0, end - time.monotonic()))
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {msg.error()}")
        out.append(msg)
    assert len(out) == n, f"expected exactly {n} messages, got {len(out)}: extra {[to_rec(m) for m in out[n:]]}"
    return out


def by_partition(records) -> dict:
    """{partition: [records in the order received]}"""
    out: dict = {}
    for r in records:
        out.setdefault(r.partition, []).append(r)
    return out


def list_tree(root) -> set:
    """Every path under `root`, relative to it."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, n), root))
    return found


def wait_until(predicate, timeout: float = OP_TIMEOUT_S, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def watermarks(consumer: Consumer, topic: str, partition: int) -> tuple:
    return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=OP_TIMEOUT_S, cached=False)
