"""Replay by time: records with known timestamps spread over many batches and
segments; offsets_for_times (confluent-kafka, kafka-python), seeking back to
re-read, and a consumer group's offsets reset to a timestamp."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import OffsetSpec

from interop_util import (
    OP_TIMEOUT_S,
    admin_client,
    committed_offsets,
    consume_n,
    create_topic,
    describe_group,
    make_consumer,
    make_producer,
    now_ms,
    produce_ok,
    unique_topic,
    wait_until,
)

PARTITIONS = 2
PER_PARTITION = 150
FAST_GROUPS = ("--group-initial-rebalance-delay-ms", "0", "--group-min-session-timeout-ms", "1000")


def stamp(base: int, p: int, i: int) -> int:
    """Non-decreasing within a partition, three records per timestamp."""
    return base + (i // 3) * 100 + p * 7


class Timeline:
    """A topic whose partition p holds value b"p<p>-<i>" with timestamp
    stamp(base, p, i) at offset i."""

    def __init__(self, ferry):
        self.topic = unique_topic("replay")
        create_topic(ferry.bootstrap, self.topic, partitions=PARTITIONS, config={"segment.bytes": "2048", "index.interval.bytes": "256"})
        self.base = now_ms() - 3_600_000
        msgs = [
            dict(partition=p, value=b"p%d-%03d" % (p, i) + b"." * 24, timestamp=stamp(self.base, p, i))
            for i in range(PER_PARTITION)
            for p in range(PARTITIONS)
        ]
        # Small batches, so that a lookup lands inside batches and segments.
        producer = make_producer(ferry.bootstrap, **{"linger.ms": 50, "batch.num.messages": 10})
        placed = produce_ok(producer, self.topic, msgs)
        assert placed == [(p, i) for i in range(PER_PARTITION) for p in range(PARTITIONS)]
        for p in range(PARTITIONS):
            segments = list((ferry.data_dir / "topics" / self.topic / str(p)).glob("*.log"))
            assert len(segments) >= 4, f"partition {p}: only {len(segments)} segments"

    def value(self, p: int, i: int) -> bytes:
        return b"p%d-%03d" % (p, i) + b"." * 24

    def ts(self, p: int, i: int) -> int:
        return stamp(self.base, p, i)

    def first_at(self, p: int, target: int) -> int:
        """The first offset whose timestamp is >= target; -1 if none."""
        return next((i for i in range(PER_PARTITION) if self.ts(p, i) >= target), -1)

    def records_from(self, p: int, offset: int) -> list:
        """(offset, value, timestamp) from `offset` to the end, in order."""
        if offset < 0:
            return []
        return [(i, self.value(p, i), self.ts(p, i)) for i in range(offset, PER_PARTITION)]

    def targets(self) -> list:
        last = self.ts(PARTITIONS - 1, PER_PARTITION - 1)
        return [
            self.base - 60_000,  # before everything: offset 0
            self.base + 1000,  # exactly a timestamp shared by three records: the first of them
            self.base + 2345,  # between timestamps
            self.base + 4903,  # partition 0 has none equal; partition 1 starts at +4907
            last - 7,  # partition 0's last timestamp; partition 1's last group
            last + 1,  # after everything: no offset
        ]


@pytest.fixture
def timeline(ferry):
    return Timeline(ferry)


def by_partition_view(msgs) -> dict:
    out: dict = {}
    for m in msgs:
        out.setdefault(m.partition(), []).append((m.offset(), m.value(), m.timestamp()[1]))
    return out


def test_offsets_for_times_then_read_confluent(ferry, timeline):
    tl, topic = timeline, timeline.topic
    consumer = make_consumer(ferry.bootstrap)
    try:
        for target in tl.targets():
            found = consumer.offsets_for_times([TopicPartition(topic, p, target) for p in range(PARTITIONS)], timeout=OP_TIMEOUT_S)
            want = {p: tl.first_at(p, target) for p in range(PARTITIONS)}
            assert {tp.partition: (tp.offset, tp.error) for tp in found} == {p: (o, None) for p, o in want.items()}, target - tl.base
            start = [tp for tp in found if tp.offset >= 0]
            if not start:
                continue
            consumer.assign(start)
            n = sum(PER_PARTITION - tp.offset for tp in start)
            got = by_partition_view(consume_n(consumer, n, drain=0.2))
            assert got == {p: tl.records_from(p, o) for p, o in want.items() if o >= 0}, target - tl.base
            # Every record read has a timestamp >= the target; every one
            # before it (in that partition) is older.
            assert all(ts >= target for recs in got.values() for _, _, ts in recs)
            assert all(tl.ts(p, i) < target for p, o in want.items() for i in range(o))

        # Seeking back re-reads; seeking forward skips.
        consumer.assign([TopicPartition(topic, 0, 140), TopicPartition(topic, 1, 145)])
        assert by_partition_view(consume_n(consumer, 15, drain=0.2)) == {0: tl.records_from(0, 140), 1: tl.records_from(1, 145)}
        consumer.seek(TopicPartition(topic, 0, 37))
        consumer.seek(TopicPartition(topic, 1, 149))
        got = by_partition_view(consume_n(consumer, 113 + 1, drain=0.2))
        assert got == {0: tl.records_from(0, 37), 1: tl.records_from(1, 149)}
    finally:
        consumer.close()


def test_offsets_for_times_then_read_kafka_python(ferry, timeline):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    tl, topic = timeline, timeline.topic
    c = KafkaConsumer(bootstrap_servers=ferry.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="none",
                      fetch_max_wait_ms=100, request_timeout_ms=int(OP_TIMEOUT_S * 1000))

    def read(n: int) -> dict:
        out: dict = {}
        count = 0
        deadline = time.monotonic() + OP_TIMEOUT_S
        while count < n:
            assert time.monotonic() < deadline, f"got {count} of {n}"
            for tp, recs in c.poll(timeout_ms=200).items():
                out.setdefault(tp.partition, []).extend((r.offset, r.value, r.timestamp) for r in recs)
                count += len(recs)
        for tp, recs in c.poll(timeout_ms=200).items():
            out.setdefault(tp.partition, []).extend((r.offset, r.value, r.timestamp) for r in recs)
        return out

    tps = [KTP(topic, p) for p in range(PARTITIONS)]
    try:
        c.assign(tps)
        for target in tl.targets():
            found = c.offsets_for_times({tp: target for tp in tps})
            want = {p: tl.first_at(p, target) for p in range(PARTITIONS)}
            assert {tp.partition: (ot.offset, ot.timestamp) if ot else None for tp, ot in found.items()} == {
                p: (o, tl.ts(p, o)) if o >= 0 else None for p, o in want.items()
            }, target - tl.base
            live = {p: o for p, o in want.items() if o >= 0}
            if not live:
                continue
            c.assign([KTP(topic, p) for p in live])
            for p, o in live.items():
                c.seek(KTP(topic, p), o)
            got = read(sum(PER_PARTITION - o for o in live.values()))
            assert got == {p: tl.records_from(p, o) for p, o in live.items()}, target - tl.base

        # Seek back within what was just read, and read it again.
        c.assign([KTP(topic, 1)])
        c.seek(KTP(topic, 1), 100)
        assert read(50) == {1: tl.records_from(1, 100)}
        c.seek(KTP(topic, 1), 12)
        assert read(138) == {1: tl.records_from(1, 12)}
        assert c.beginning_offsets(tps) == {tp: 0 for tp in tps}
        assert c.end_offsets(tps) == {tp: PER_PARTITION for tp in tps}
    finally:
        c.close()


def group_consumer(bootstrap: str, group: str):
    return make_consumer(
        bootstrap,
        **{"group.id": group, "auto.offset.reset": "earliest", "enable.auto.offset.store": True,
           "session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
    )


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_group_offsets_reset_by_timestamp(ferry, timeline):
    tl, topic = timeline, timeline.topic
    group = f"g-{topic}"
    admin = admin_client(ferry.bootstrap)
    everything = PER_PARTITION * PARTITIONS

    c = group_consumer(ferry.bootstrap, group)
    c.subscribe([topic])
    try:
        assert by_partition_view(consume_n(c, everything, drain=0.2)) == {p: tl.records_from(p, 0) for p in range(PARTITIONS)}
        c.commit(asynchronous=False)
    finally:
        c.close()
    wait_until(lambda: describe_group(admin, group).state == ConsumerGroupState.EMPTY, what="group empty")
    assert committed_offsets(admin, group) == {(topic, p): PER_PARTITION for p in range(PARTITIONS)}

    # Reset to a timestamp: ListOffsets by time, then AlterConsumerGroupOffsets.
    target = tl.base + 2345
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    specs = {tp: OffsetSpec.for_timestamp(target) for tp in tps}
    infos = {tp.partition: f.result(timeout=OP_TIMEOUT_S) for tp, f in admin.list_offsets(specs, request_timeout=OP_TIMEOUT_S).items()}
    want = {p: tl.first_at(p, target) for p in range(PARTITIONS)}
    assert {p: (i.offset, i.timestamp) for p, i in infos.items()} == {p: (o, tl.ts(p, o)) for p, o in want.items()}
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o) for p, o in want.items()])
    res = admin.alter_consumer_group_offsets([req], request_timeout=OP_TIMEOUT_S)[group].result(timeout=OP_TIMEOUT_S)
    assert sorted((tp.partition, tp.offset, tp.error) for tp in res.topic_partitions) == [(p, o, None) for p, o in sorted(want.items())]
    assert committed_offsets(admin, group) == {(topic, p): o for p, o in want.items()}

    c = group_consumer(ferry.bootstrap, group)
    c.subscribe([topic])
    try:
        got = by_partition_view(consume_n(c, sum(PER_PARTITION - o for o in want.values()), drain=0.5))
        assert got == {p: tl.records_from(p, o) for p, o in want.items()}
        c.commit(asynchronous=False)
    finally:
        c.close()
    wait_until(lambda: describe_group(admin, group).state == ConsumerGroupState.EMPTY, what="group empty")

    # The same with kafka-python's admin, which resolves the timestamp itself;
    # a timestamp after the last record resets to the end.
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP
    from kafka import errors as Errors
    from kafka.admin import OffsetTimestamp

    target2 = tl.base + 4903
    assert (tl.first_at(0, target2), tl.first_at(1, target2)) == (-1, 147)
    want2 = {0: PER_PARTITION, 1: 147}
    kadmin = KafkaAdminClient(bootstrap_servers=ferry.bootstrap, request_timeout_ms=int(OP_TIMEOUT_S * 1000))
    try:
        result = kadmin.reset_group_offsets(group, {KTP(topic, 0): OffsetTimestamp(target2), KTP(topic, 1): OffsetTimestamp(target2)})
        assert result == {KTP(topic, p): {"error": Errors.NoError, "offset": o} for p, o in want2.items()}
    finally:
        kadmin.close()
    assert committed_offsets(admin, group) == {(topic, p): o for p, o in want2.items()}
    c = group_consumer(ferry.bootstrap, group)
    c.subscribe([topic])
    try:
        # Partition 0 is at its end: nothing from it.
        got = by_partition_view(consume_n(c, 3, drain=0.5))
        assert got == {1: tl.records_from(1, 147)}
    finally:
        c.close()
