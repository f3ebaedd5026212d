"""Crash safety on all three protocols at once, with real clients: while a
Kafka producer (confluent-kafka, idempotent, acks=all) and a consumer group
that commits, an AMQP publisher with confirms and a consumer with manual
acks (pika), and an SQS sender and a receiver that deletes (boto3) all run,
the server is killed with SIGKILL at random moments and restarted on the
same ports, many times. Afterwards:

- Kafka: every acknowledged record is in the log exactly once, at the offset
  it was acknowledged with; offsets are contiguous; every committed group
  offset is at least what the commit acknowledged.
- AMQP: every confirmed message was delivered or is still queued
  (at-least-once: duplicates are counted, never required to be zero).
- SQS: every acknowledged send was received or is still queued, and no
  message whose delete was acknowledged is ever received again.
- No record or message comes back with a body that was never sent.

FERRY_CRASH_SOAK_S sets how long the load runs (30 s by default; run
`scripts/crash-soak` for long runs) and FERRY_CRASH_SEED the random kill
schedule (printed, so that a failing schedule can be replayed)."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter, defaultdict

import pika
import pika.exceptions
import pytest
from botocore.exceptions import BotoCoreError, ClientError
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from amqp_util import connect
from sqs_util import sqs_client

DURATION_S = float(os.environ.get("FERRY_CRASH_SOAK_S", "30"))
SEED = int(os.environ.get("FERRY_CRASH_SEED", str(time.time_ns() % 1_000_000)))
# Pause between a restart and the next kill: short enough to catch clients
# mid-request, long enough for them to reconnect and make progress.
KILL_GAP_S = (1.0, 4.0)
TOPIC = "crash-orders"
PARTITIONS = 3
GROUP = "crash-group"
QUEUE = "crash-jobs"
SQS_QUEUE = "crash-tasks"
SQS_VISIBILITY_S = 5


class Load:
    """What every client saw acknowledged, shared between the threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.kafka_acked: dict[tuple[int, int], bytes] = {}
        self.kafka_committed: dict[int, int] = {}
        self.amqp_confirmed: set[bytes] = set()
        self.amqp_delivered: Counter = Counter()
        self.sqs_sent: set[str] = set()
        self.sqs_received: Counter = Counter()
        # MessageId -> when its delete was acknowledged (monotonic time)
        self.sqs_deleted_at: dict[str, float] = {}
        # (MessageId, when the receive that returned it started). By id, not
        # body: botocore retries a send whose connection broke (retries
        # max_attempts=1 is one retry), so a body can be stored twice.
        self.sqs_receives: list[tuple[str, float]] = []
        self.errors: Counter = Counter()

    def note_error(self, where: str, e: Exception) -> None:
        with self.lock:
            self.errors[f"{where}: {type(e).__name__}"] += 1


def kafka_producer(ferry, load: Load) -> Producer:
    producer = Producer(
        {
            "bootstrap.servers": ferry.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 120000,
            "socket.timeout.ms": 5000,
            "reconnect.backoff.max.ms": 500,
        }
    )

    def on_delivery(err, msg):
        if err is None:
            with load.lock:
                load.kafka_acked[(msg.partition(), msg.offset())] = msg.value()

    seq = 0
    while not load.stop.is_set():
        for _ in range(50):
            try:
                producer.produce(TOPIC, value=f"k{seq}".encode(), on_delivery=on_delivery)
                seq += 1
            except BufferError:
                break
        producer.poll(0.02)
    return producer


def kafka_group_consumer(ferry, load: Load) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": ferry.bootstrap,
            "group.id": GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "socket.timeout.ms": 5000,
            "reconnect.backoff.max.ms": 500,
        }
    )
    consumer.subscribe([TOPIC])
    seen: dict[int, int] = {}
    uncommitted = 0
    while not load.stop.is_set():
        msg = consumer.poll(0.2)
        if msg is None or msg.error():
            continue
        seen[msg.partition()] = msg.offset() + 1
        uncommitted += 1
        if uncommitted >= 50:
            offsets = [TopicPartition(TOPIC, p, o) for p, o in seen.items()]
            try:
                done = consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as e:
                load.note_error("kafka commit", e)
                continue
            with load.lock:
                for tp in done:
                    if tp.error is None:
                        load.kafka_committed[tp.partition] = max(load.kafka_committed.get(tp.partition, 0), tp.offset)
            uncommitted = 0
    consumer.close()


def amqp_publisher(ferry, load: Load) -> None:
    i = 0
    props = pika.BasicProperties(delivery_mode=2)
    while not load.stop.is_set():
        try:
            conn = connect(ferry, socket_timeout=3, blocked_connection_timeout=10)
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare(QUEUE, durable=True)
            while not load.stop.is_set():
                body = f"a{i}".encode()
                i += 1
                ch.basic_publish("", QUEUE, body, props)  # returns once confirmed
                with load.lock:
                    load.amqp_confirmed.add(body)
            conn.close()
        except (pika.exceptions.AMQPError, OSError) as e:
            load.note_error("amqp publish", e)
            time.sleep(0.2)


def amqp_consumer(ferry, load: Load) -> None:
    while not load.stop.is_set():
        try:
            conn = connect(ferry, socket_timeout=3)
            ch = conn.channel()
            ch.queue_declare(QUEUE, durable=True)
            ch.basic_qos(prefetch_count=50)
            for method, _props, body in ch.consume(QUEUE, inactivity_timeout=0.3):
                if load.stop.is_set():
                    break
                if method is None:
                    continue
                ch.basic_ack(method.delivery_tag)
                with load.lock:
                    load.amqp_delivered[body] += 1
            conn.close()
        except (pika.exceptions.AMQPError, OSError) as e:
            load.note_error("amqp consume", e)
            time.sleep(0.2)


def sqs_sender(ferry, url: str, load: Load) -> None:
    client = sqs_client(ferry, connect_timeout=2, read_timeout=5)
    i = 0
    while not load.stop.is_set():
        entries = [{"Id": f"e{j}", "MessageBody": f"s{i}-{j}"} for j in range(5)]
        i += 1
        try:
            r = client.send_message_batch(QueueUrl=url, Entries=entries)
        except (BotoCoreError, ClientError) as e:
            load.note_error("sqs send", e)
            time.sleep(0.2)
            continue
        ok = {s["Id"] for s in r.get("Successful", [])}
        with load.lock:
            load.sqs_sent.update(e["MessageBody"] for e in entries if e["Id"] in ok)


def sqs_receive(client, url: str, load: Load, delete: bool) -> int:
    """One receive (and delete of what came); returns how many came."""
    started = time.monotonic()
    r = client.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=SQS_VISIBILITY_S
    )
    msgs = r.get("Messages", [])
    with load.lock:
        for m in msgs:
            load.sqs_received[m["Body"]] += 1
            load.sqs_receives.append((m["MessageId"], started))
    if delete and msgs:
        entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(msgs)]
        d = client.delete_message_batch(QueueUrl=url, Entries=entries)
        done = time.monotonic()
        with load.lock:
            for s in d.get("Successful", []):
                load.sqs_deleted_at.setdefault(msgs[int(s["Id"])]["MessageId"], done)
    return len(msgs)


def sqs_receiver(ferry, url: str, load: Load) -> None:
    client = sqs_client(ferry, connect_timeout=2, read_timeout=5)
    while not load.stop.is_set():
        try:
            sqs_receive(client, url, load, delete=True)
        except (BotoCoreError, ClientError) as e:
            load.note_error("sqs receive", e)
            time.sleep(0.2)


def read_partition(ferry, partition: int) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": ferry.bootstrap,
            "group.id": "crash-check",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, partition), timeout=15, cached=False)
    consumer.assign([TopicPartition(TOPIC, partition, low)])
    out = []
    deadline = time.monotonic() + 60 + (high - low) / 10_000  # long soaks store millions
    while (not out or out[-1].offset() < high - 1) and high > low:
        assert time.monotonic() < deadline, f"partition {partition}: read {len(out)} of {high - low}"
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            out.append(msg)
    consumer.close()
    assert low == 0 and len(out) == high, f"partition {partition}: {len(out)} records for offsets 0..{high}"
    return out


def check_kafka(ferry, load: Load) -> None:
    values_at = {}
    for p in range(PARTITIONS):
        records = read_partition(ferry, p)
        assert [m.offset() for m in records] == list(range(len(records))), f"partition {p}: offsets not contiguous"
        for m in records:
            values_at[(p, m.offset())] = m.value()
    all_values = Counter(values_at.values())
    lost = {k: v for k, v in load.kafka_acked.items() if values_at.get(k) != v}
    assert not lost, f"{len(lost)} acknowledged records missing or moved, e.g. {list(lost.items())[:5]}"
    duplicated = [v for v in load.kafka_acked.values() if all_values[v] != 1]
    assert not duplicated, f"idempotent producer's records stored more than once: {duplicated[:5]}"
    assert all(v.startswith(b"k") for v in all_values), "a record that was never produced"
    group = Consumer({"bootstrap.servers": ferry.bootstrap, "group.id": GROUP})
    committed = group.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=15)
    group.close()
    assert load.kafka_committed, "the group consumer never had a commit acknowledged"
    for tp in committed:
        acked = load.kafka_committed.get(tp.partition)
        if acked is not None:
            assert tp.offset >= acked, f"partition {tp.partition}: committed {tp.offset}, acknowledged {acked}"
    print(f"kafka: group offsets acknowledged {load.kafka_committed}, stored {[tp.offset for tp in committed]}")


def check_amqp(ferry, load: Load) -> None:
    conn = connect(ferry)
    ch = conn.channel()
    drained: Counter = Counter()
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 2:
        method, _props, body = ch.basic_get(QUEUE, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        drained[body] += 1
        quiet_since = time.monotonic()
    conn.close()
    seen = load.amqp_delivered + drained
    lost = load.amqp_confirmed - set(seen)
    assert not lost, f"{len(lost)} confirmed messages never delivered, e.g. {sorted(lost)[:5]}"
    assert all(b.startswith(b"a") for b in seen), "a message that was never published"
    dups = sum(n - 1 for n in seen.values() if n > 1)
    print(f"amqp: {len(load.amqp_confirmed)} confirmed, {dups} delivered more than once (at-least-once)")


def check_sqs(ferry, url: str, load: Load) -> None:
    client = sqs_client(ferry)
    quiet_since = time.monotonic()
    # In-flight messages of the receiver come back after their visibility.
    while time.monotonic() - quiet_since < SQS_VISIBILITY_S + 3:
        if sqs_receive(client, url, load, delete=True):
            quiet_since = time.monotonic()
    lost = load.sqs_sent - set(load.sqs_received)
    assert not lost, f"{len(lost)} acknowledged sends never received, e.g. {sorted(lost)[:5]}"
    assert all(b.startswith("s") for b in load.sqs_received), "a message that was never sent"
    back = [(i, t) for i, t in load.sqs_receives if i in load.sqs_deleted_at and t > load.sqs_deleted_at[i]]
    assert not back, f"deleted messages received again: {back[:5]}"


# The group's first rebalance after each restart would otherwise wait the
# default 3 s for more members: longer than some gaps between the kills.
@pytest.mark.ferry_args("--group-initial-rebalance-delay-ms", "0")
def test_sigkill_under_mixed_load_loses_nothing_acknowledged(ferry):
    print(f"crash seed {SEED}, {DURATION_S:.0f} s of load")
    rng = random.Random(SEED)
    admin = AdminClient({"bootstrap.servers": ferry.bootstrap})
    admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])[TOPIC].result(15)
    sqs_url = sqs_client(ferry).create_queue(QueueName=SQS_QUEUE)["QueueUrl"]
    load = Load()
    producer: list[Producer] = []
    workers = [
        threading.Thread(target=lambda: producer.append(kafka_producer(ferry, load)), name="kafka-produce"),
        threading.Thread(target=kafka_group_consumer, args=(ferry, load), name="kafka-group"),
        threading.Thread(target=amqp_publisher, args=(ferry, load), name="amqp-publish"),
        threading.Thread(target=amqp_consumer, args=(ferry, load), name="amqp-consume"),
        threading.Thread(target=sqs_sender, args=(ferry, sqs_url, load), name="sqs-send"),
        threading.Thread(target=sqs_receiver, args=(ferry, sqs_url, load), name="sqs-receive"),
    ]
    for w in workers:
        w.start()
    kills = 0
    deadline = time.monotonic() + DURATION_S
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(*KILL_GAP_S))
            ferry.crash_and_restart()
            kills += 1
        time.sleep(2)  # a last stretch of load after the last restart
    finally:
        load.stop.set()
        for w in workers:
            w.join(timeout=60)
    assert not [w.name for w in workers if w.is_alive()], "a client thread hung"
    assert producer and producer[0].flush(120) == 0, "Kafka deliveries still pending after 120 s"

    print(f"{kills} kills; client errors seen: {dict(load.errors)}")
    print(
        f"acknowledged: kafka {len(load.kafka_acked)}, amqp {len(load.amqp_confirmed)}, sqs {len(load.sqs_sent)}; "
        f"sqs deleted {len(load.sqs_deleted_at)}"
    )
    # Each protocol made progress between the kills, or the test proves little.
    assert kills >= 3
    assert len(load.kafka_acked) > 1000 and len(load.amqp_confirmed) > 100 and len(load.sqs_sent) > 100
    check_kafka(ferry, load)
    check_amqp(ferry, load)
    check_sqs(ferry, sqs_url, load)
    by_partition = defaultdict(int)
    for p, _ in load.kafka_acked:
        by_partition[p] += 1
    assert len(by_partition) == PARTITIONS
