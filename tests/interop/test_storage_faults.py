"""Storage faults seen by real clients: a bit flipped at rest in a sealed
segment of a stopped server is never delivered after a restart. librdkafka
gets CORRUPT_MESSAGE for the damaged batch's offsets and reads every other
record once the application seeks past it (docs/reliability.md#corruption-at-rest).
An SQS queue whose log cannot be opened is kept and refused, not lost."""

from __future__ import annotations

import json
import struct
import time

import botocore.exceptions
import pytest
from confluent_kafka import KafkaError, TopicPartition
from interop_util import OP_TIMEOUT_S, create_topic, make_consumer, make_producer, produce_ok, unique_topic
from sqs_util import sqs_client

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


def test_an_sqs_queue_whose_log_cannot_be_opened_is_kept_and_refused_until_repaired(ferry):
    """A damaged sealed segment without its index makes an SQS queue's log
    fail to open: the server starts, the queue stays listed with its
    attributes (in sqs/queues.json too, across later changes), its uses
    answer InternalError naming the cause, and other queues work. Cutting
    the file as the log line advises brings it back."""
    c = sqs_client(ferry)
    broken = c.create_queue(QueueName="broken", Attributes={"VisibilityTimeout": "45"})["QueueUrl"]
    # Queue logs roll at 8 MiB: ten 900 KiB messages seal the first segment.
    bodies = [f"{i}:" + "x" * (900 * 1024) for i in range(10)]
    for b in bodies:
        c.send_message(QueueUrl=broken, MessageBody=b)
    assert ferry.stop() == 0

    logs = [d for d in (ferry.data_dir / "queues").glob("*/log") if len(list(d.glob("*.log"))) > 1]
    assert len(logs) == 1, logs
    first = sorted(logs[0].glob("*.log"))[0]
    data = bytearray(first.read_bytes())
    data[8:12] = struct.pack(">i", 2**31 - 1)
    first.write_bytes(bytes(data))
    first.with_suffix(".index").unlink()

    ferry.start()
    c = sqs_client(ferry)  # the restart moved the port
    broken = c.get_queue_url(QueueName="broken")["QueueUrl"]
    for use in (
        lambda: c.send_message(QueueUrl=broken, MessageBody="more"),
        lambda: c.receive_message(QueueUrl=broken),
        lambda: c.delete_queue(QueueUrl=broken),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            use()
        assert e.value.response["Error"]["Code"] == "InternalError", e.value.response
        assert "unavailable" in e.value.response["Error"]["Message"], e.value.response
    fine = c.create_queue(QueueName="fine")["QueueUrl"]
    c.send_message(QueueUrl=fine, MessageBody="hello")
    assert [m["Body"] for m in c.receive_message(QueueUrl=fine, WaitTimeSeconds=5)["Messages"]] == ["hello"]
    assert broken in c.list_queues()["QueueUrls"]
    assert ferry.stop() == 0
    # Creating "fine" rewrote queues.json: "broken" is still in it.
    saved = json.loads((ferry.data_dir / "sqs" / "queues.json").read_text())
    kept = [q for q in saved["queues"] if q["name"] == "broken"]
    assert kept and kept[0]["attributes"]["VisibilityTimeout"] == "45", saved

    # The repair the log line names: cut the file at the damaged byte.
    line = next(l for l in ferry.log.splitlines() if "queue held unavailable" in l)
    assert first.name in line and "at byte 0" in line, line
    first.write_bytes(b"")
    ferry.start()
    c = sqs_client(ferry)
    broken = c.get_queue_url(QueueName="broken")["QueueUrl"]
    attrs = c.get_queue_attributes(QueueUrl=broken, AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert attrs == {"VisibilityTimeout": "45"}
    c.send_message(QueueUrl=broken, MessageBody="after the repair")
    got = []
    for _ in range(20):
        got += [m["Body"] for m in c.receive_message(QueueUrl=broken, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])]
        if "after the repair" in got:
            break
    # What the first segment held is gone with it; the rest is delivered.
    assert got[-1] == "after the repair" and set(got[:-1]) <= set(bodies), [g[:8] for g in got]
