"""Storage faults seen by a real client: a bit flipped at rest in a sealed
segment of a stopped server is never delivered after a restart. librdkafka
gets CORRUPT_MESSAGE for the damaged batch's offsets and reads every other
record once the application seeks past it (docs/reliability.md#corruption-at-rest)."""

from __future__ import annotations

import struct
import time

from confluent_kafka import KafkaError, TopicPartition
from interop_util import OP_TIMEOUT_S, create_topic, make_consumer, make_producer, produce_ok, unique_topic

RECORDS = 40


def batch_starts(segment: bytes) -> list[tuple[int, int, int]]:
    """(position, base offset, last offset) of each batch of a segment file."""
    out, pos = [], 0
    while pos + 27 <= len(segment):
        base, length = struct.unpack_from(">qi", segment, pos)
        (last_delta,) = struct.unpack_from(">i", segment, pos + 23)
        out.append((pos, base, base + last_delta))
        pos += 12 + length
    return out


def poll_until(consumer, predicate, what: str):
    """Polls until a message (or error) satisfies `predicate`; returns what
    was polled before it, and it."""
    seen = []
    deadline = time.monotonic() + OP_TIMEOUT_S
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if predicate(msg):
            return seen, msg
        seen.append(msg)
    raise AssertionError(f"no {what} within {OP_TIMEOUT_S}s; polled {len(seen)}")


def test_confluent_kafka_never_gets_a_corrupt_batch(ferry):
    topic = unique_topic("faults")
    # About four single-record batches to a segment: most are sealed.
    create_topic(ferry.bootstrap, topic, config={"segment.bytes": "1024"})
    producer = make_producer(ferry.bootstrap, **{"linger.ms": 0})
    values = [f"value-{i:04d}-{'x' * 150}".encode() for i in range(RECORDS)]
    for i, v in enumerate(values):
        # One produce and flush per record: one batch per record.
        assert produce_ok(producer, topic, [dict(partition=0, value=v)]) == [(0, i)]
    assert ferry.stop() == 0

    segments = sorted((ferry.data_dir / "topics" / topic / "0").glob("*.log"))
    assert len(segments) > 3, segments
    damaged = segments[1]
    data = bytearray(damaged.read_bytes())
    position, bad, bad_last = batch_starts(bytes(data))[1]
    data[position + 61 + 10] ^= 0x20
    damaged.write_bytes(bytes(data))

    ferry.start()
    consumer = make_consumer(ferry.bootstrap, **{"check.crcs": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    before, err = poll_until(consumer, lambda m: m.error() is not None, "consumer error")
    # Kafka's CORRUPT_MESSAGE (2), which librdkafka calls INVALID_MSG.
    assert err.error().code() == KafkaError.INVALID_MSG, err.error()
    assert f"failed at offset {bad}" in err.error().str(), err.error()
    assert [m.value() for m in before] == values[:bad]
    # The application steps over the damaged batch; the rest is intact.
    consumer.seek(TopicPartition(topic, 0, bad_last + 1))
    after = []
    deadline = time.monotonic() + OP_TIMEOUT_S
    while len(after) < RECORDS - bad_last - 1:
        assert time.monotonic() < deadline, f"got {len(after)} records after the damaged batch"
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        after.append(msg)
    assert [m.value() for m in after] == values[bad_last + 1 :]
    consumer.close()

    line = next(l for l in ferry.log.splitlines() if "not serving a corrupt record batch" in l)
    assert f"topic={topic}" in line and damaged.name in line, line
    # The server is up and the partition takes records.
    producer = make_producer(ferry.bootstrap)  # the restart moved the port
    assert produce_ok(producer, topic, [dict(partition=0, value=b"after")]) == [(0, RECORDS)]
