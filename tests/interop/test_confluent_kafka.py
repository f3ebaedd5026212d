"""confluent-kafka (librdkafka) against Ferry: admin, producer, consumer."""

from __future__ import annotations

import json
import os
import time

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    TopicPartition,
)
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from interop_util import (
    OP_TIMEOUT_S,
    Rec,
    admin_client,
    by_partition,
    consume_n,
    create_topic,
    kafka_error_of,
    list_tree,
    make_consumer,
    make_producer,
    now_ms,
    produce_all,
    produce_ok,
    to_rec,
    unique_topic,
    wait_until,
)

DEFAULTS = {
    "cleanup.policy": "delete",
    "compression.type": "producer",
    "fsync.policy": "always",
    "fsync.interval.ms": "1000",
    "index.interval.bytes": "4096",
    "max.message.bytes": "1048588",
    "message.timestamp.type": "CreateTime",
    "min.insync.replicas": "1",
    "retention.bytes": "-1",
    "retention.ms": "604800000",
    "segment.bytes": "1073741824",
    "segment.ms": "604800000",
}


def describe_topic_configs(admin, topic: str) -> dict:
    res = ConfigResource(ResourceType.TOPIC, topic)
    futures = admin.describe_configs([res], request_timeout=OP_TIMEOUT_S)
    return futures[res].result(timeout=OP_TIMEOUT_S)


def config_view(entries: dict) -> dict:
    """{name: (value, source)}"""
    return {name: (e.value, ConfigSource(e.source)) for name, e in entries.items()}


def expect_admin_error(future, code: int) -> KafkaError:
    with pytest.raises(Exception) as info:
        future.result(timeout=OP_TIMEOUT_S)
    err = kafka_error_of(info.value)
    assert err.code() == code, f"expected {KafkaError(code).name()}, got {err.name()}: {err.str()}"
    return err


def make_records(n: int, partition: int, ts0: int, prefix: str = "m"):
    """Produce kwargs with distinct keys, values, headers and timestamps."""
    return [
        dict(
            partition=partition,
            key=f"{prefix}-k{partition}-{i}".encode(),
            value=f"{prefix}-v{partition}-{i}-".encode() + bytes([i % 256]) * (i % 7),
            headers=[("idx", str(i).encode()), ("part", str(partition).encode()), ("empty", b"")],
            timestamp=ts0 + i * 1000,
        )
        for i in range(n)
    ]


def expected_recs(msgs, offsets):
    return [
        Rec(
            m["partition"],
            off,
            m.get("key"),
            m.get("value"),
            tuple(m.get("headers") or ()),
            m["timestamp"],
        )
        for m, off in zip(msgs, offsets)
    ]


# --------------------------------------------------------------------------
# metadata


def test_list_topics_metadata(ferry):
    topic = unique_topic("meta")
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=3)

    md = admin.list_topics(timeout=OP_TIMEOUT_S)
    assert isinstance(md.cluster_id, str) and len(md.cluster_id) == 22, md.cluster_id
    assert md.controller_id == 0
    assert list(md.brokers) == [0]
    b = md.brokers[0]
    assert (b.id, b.host, b.port) == (0, "127.0.0.1", ferry.port)
    assert topic in md.topics
    t = md.topics[topic]
    assert t.error is None
    assert sorted(t.partitions) == [0, 1, 2]
    for pid, p in t.partitions.items():
        assert (p.id, p.leader, list(p.replicas), list(p.isrs), p.error) == (pid, 0, [0], [0], None)

    # A single-topic request gives the same view.
    one = admin.list_topics(topic=topic, timeout=OP_TIMEOUT_S)
    assert sorted(one.topics[topic].partitions) == [0, 1, 2]


def test_describe_cluster(ferry):
    admin = admin_client(ferry.bootstrap)
    cluster = admin.describe_cluster(request_timeout=OP_TIMEOUT_S).result(timeout=OP_TIMEOUT_S)
    md = admin.list_topics(timeout=OP_TIMEOUT_S)
    assert cluster.cluster_id == md.cluster_id
    assert cluster.controller.id == 0
    assert [(n.id, n.host, n.port) for n in cluster.nodes] == [(0, "127.0.0.1", ferry.port)]


# --------------------------------------------------------------------------
# topic administration


def test_create_topic_with_configs_and_describe(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("cfg")
    create_topic(
        admin,
        topic,
        partitions=4,
        config={"retention.ms": "3600000", "max.message.bytes": "2048", "cleanup.policy": "delete"},
    )
    md = admin.list_topics(topic=topic, timeout=OP_TIMEOUT_S)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2, 3]

    view = config_view(describe_topic_configs(admin, topic))
    assert set(DEFAULTS) <= set(view), set(DEFAULTS) - set(view)
    overridden = {"retention.ms": "3600000", "max.message.bytes": "2048", "cleanup.policy": "delete"}
    for name, default in DEFAULTS.items():
        if name in overridden:
            assert view[name] == (overridden[name], ConfigSource.DYNAMIC_TOPIC_CONFIG), name
        else:
            assert view[name] == (default, ConfigSource.DEFAULT_CONFIG), name


@pytest.mark.ferry_args("--topic-default", "segment.ms=3600000", "--topic-default", "retention.bytes=1048576")
def test_describe_configs_sources_with_broker_defaults(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("src")
    create_topic(admin, topic, config={"retention.bytes": "2048"})
    view = config_view(describe_topic_configs(admin, topic))
    assert view["segment.ms"] == ("3600000", ConfigSource.STATIC_BROKER_CONFIG)
    assert view["retention.bytes"] == ("2048", ConfigSource.DYNAMIC_TOPIC_CONFIG)
    assert view["retention.ms"] == ("604800000", ConfigSource.DEFAULT_CONFIG)


def test_describe_configs_unknown_topic(ferry):
    admin = admin_client(ferry.bootstrap)
    res = ConfigResource(ResourceType.TOPIC, unique_topic("nope"))
    fut = admin.describe_configs([res], request_timeout=OP_TIMEOUT_S)[res]
    expect_admin_error(fut, KafkaError.UNKNOWN_TOPIC_OR_PART)


def test_alter_configs_replaces_the_whole_set(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("alter")
    create_topic(admin, topic, config={"retention.ms": "3600000"})
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"segment.ms": "60000", "retention.bytes": "1000000"})
    admin.alter_configs([res], request_timeout=OP_TIMEOUT_S)[res].result(timeout=OP_TIMEOUT_S)
    view = config_view(describe_topic_configs(admin, topic))
    # Legacy AlterConfigs semantics: keys not named go back to their defaults.
    assert view["retention.ms"] == ("604800000", ConfigSource.DEFAULT_CONFIG)
    assert view["segment.ms"] == ("60000", ConfigSource.DYNAMIC_TOPIC_CONFIG)
    assert view["retention.bytes"] == ("1000000", ConfigSource.DYNAMIC_TOPIC_CONFIG)

    bad = ConfigResource(ResourceType.TOPIC, topic, set_config={"no.such.config": "1"})
    expect_admin_error(admin.alter_configs([bad], request_timeout=OP_TIMEOUT_S)[bad], KafkaError.INVALID_CONFIG)
    # A refused change changes nothing.
    assert config_view(describe_topic_configs(admin, topic)) == view


def test_incremental_alter_configs(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("incr")
    create_topic(admin, topic, config={"retention.ms": "3600000", "segment.ms": "60000"})

    def incremental(*entries):
        res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=list(entries))
        return admin.incremental_alter_configs([res], request_timeout=OP_TIMEOUT_S)[res]

    incremental(
        ConfigEntry("retention.ms", "5000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("max.message.bytes", "4096", incremental_operation=AlterConfigOpType.SET),
    ).result(timeout=OP_TIMEOUT_S)
    view = config_view(describe_topic_configs(admin, topic))
    assert view["retention.ms"] == ("5000", ConfigSource.DYNAMIC_TOPIC_CONFIG)
    assert view["segment.ms"] == ("604800000", ConfigSource.DEFAULT_CONFIG)
    assert view["max.message.bytes"] == ("4096", ConfigSource.DYNAMIC_TOPIC_CONFIG)

    for name, value in [("retention.ms", "soon"), ("cleanup.policy", "compact"), ("fsync.policy", "sometimes")]:
        fut = incremental(ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET))
        expect_admin_error(fut, KafkaError.INVALID_CONFIG)
    assert config_view(describe_topic_configs(admin, topic)) == view


def test_create_partitions(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("grow")
    create_topic(admin, topic, partitions=2)
    admin.create_partitions([NewPartitions(topic, 5)], request_timeout=OP_TIMEOUT_S)[topic].result(
        timeout=OP_TIMEOUT_S
    )
    md = admin.list_topics(topic=topic, timeout=OP_TIMEOUT_S)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2, 3, 4]

    producer = make_producer(ferry.bootstrap)
    assert produce_ok(producer, topic, [dict(partition=4, value=b"p4"), dict(partition=0, value=b"p0")]) == [
        (4, 0),
        (0, 0),
    ]

    fut = admin.create_partitions([NewPartitions(topic, 3)], request_timeout=OP_TIMEOUT_S)[topic]
    expect_admin_error(fut, KafkaError.INVALID_PARTITIONS)
    missing = unique_topic("missing")
    fut = admin.create_partitions([NewPartitions(missing, 3)], request_timeout=OP_TIMEOUT_S)[missing]
    expect_admin_error(fut, KafkaError.UNKNOWN_TOPIC_OR_PART)
    md = admin.list_topics(topic=topic, timeout=OP_TIMEOUT_S)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2, 3, 4]


def test_delete_topic_and_recreate(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("del")
    create_topic(admin, topic, partitions=2)
    producer = make_producer(ferry.bootstrap)
    produce_ok(producer, topic, [dict(partition=0, value=b"old-%d" % i) for i in range(3)])
    assert (ferry.data_dir / "topics" / topic).is_dir()

    admin.delete_topics([topic], operation_timeout=10, request_timeout=OP_TIMEOUT_S)[topic].result(
        timeout=OP_TIMEOUT_S
    )
    assert topic not in admin.list_topics(timeout=OP_TIMEOUT_S).topics
    assert not (ferry.data_dir / "topics" / topic).exists()

    missing = unique_topic("missing")
    fut = admin.delete_topics([missing], request_timeout=OP_TIMEOUT_S)[missing]
    expect_admin_error(fut, KafkaError.UNKNOWN_TOPIC_OR_PART)

    # Same name again: a new, empty topic.
    create_topic(admin, topic, partitions=1)
    consumer = make_consumer(ferry.bootstrap)
    try:
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=OP_TIMEOUT_S) == (0, 0)
    finally:
        consumer.close()
    producer2 = make_producer(ferry.bootstrap)
    assert produce_ok(producer2, topic, [dict(partition=0, value=b"new")]) == [(0, 0)]


def test_create_topic_errors(ferry):
    admin = admin_client(ferry.bootstrap)
    existing = unique_topic("exists")
    create_topic(admin, existing, partitions=2)

    cases = {
        "exists": (NewTopic(existing, num_partitions=1, replication_factor=1), KafkaError.TOPIC_ALREADY_EXISTS),
        "rf3": (NewTopic(unique_topic("rf3"), num_partitions=1, replication_factor=3), KafkaError.INVALID_REPLICATION_FACTOR),
        "unknown-config": (
            NewTopic(unique_topic("badcfg"), num_partitions=1, replication_factor=1, config={"no.such.config": "x"}),
            KafkaError.INVALID_CONFIG,
        ),
        "bad-value": (
            NewTopic(unique_topic("badval"), num_partitions=1, replication_factor=1, config={"retention.ms": "soon"}),
            KafkaError.INVALID_CONFIG,
        ),
        "compact": (
            NewTopic(unique_topic("compact"), num_partitions=1, replication_factor=1, config={"cleanup.policy": "compact"}),
            KafkaError.INVALID_CONFIG,
        ),
    }
    for label, (new_topic, code) in cases.items():
        fut = admin.create_topics([new_topic], request_timeout=OP_TIMEOUT_S)[new_topic.topic]
        try:
            expect_admin_error(fut, code)
        except AssertionError as e:
            raise AssertionError(f"case {label}: {e}") from None

    topics = admin.list_topics(timeout=OP_TIMEOUT_S).topics
    for label, (new_topic, _) in cases.items():
        if label != "exists":
            assert new_topic.topic not in topics, label
    # The existing topic was not touched.
    assert sorted(topics[existing].partitions) == [0, 1]
    assert sorted(os.listdir(ferry.data_dir / "topics")) == [existing]


def test_create_topic_validate_only(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("dry")
    fut = admin.create_topics(
        [NewTopic(topic, num_partitions=2, replication_factor=1)], validate_only=True, request_timeout=OP_TIMEOUT_S
    )[topic]
    fut.result(timeout=OP_TIMEOUT_S)
    assert topic not in admin.list_topics(timeout=OP_TIMEOUT_S).topics
    assert not (ferry.data_dir / "topics" / topic).exists()


@pytest.mark.parametrize("name", ["../../etc", "..", ".", "a/b", "/abs", "bad name", "x" * 250])
def test_invalid_topic_name_is_refused_and_nothing_escapes(ferry, name):
    sandbox = ferry.data_dir.parents[1]  # <tmp>/sandbox: holds inner/data
    before = list_tree(sandbox)
    admin = admin_client(ferry.bootstrap)
    fut = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)], request_timeout=OP_TIMEOUT_S)[
        name
    ]
    expect_admin_error(fut, KafkaError.TOPIC_EXCEPTION)
    # Producing to it (which would auto-create a valid name) must fail too.
    producer = make_producer(ferry.bootstrap, **{"message.timeout.ms": 3000})
    reports = produce_all(producer, name, [dict(value=b"x")], timeout=10)
    assert reports[0][0] is not None, f"produce to {name!r} succeeded: {reports}"

    after = list_tree(sandbox)
    new = sorted(after - before)
    # Only files of the broker's own (catalog, lock) may appear, and only inside data/.
    outside = [p for p in new if not p.startswith(os.path.join("inner", "data"))]
    assert outside == [], f"paths created outside the data dir: {outside}"
    assert os.listdir(ferry.data_dir / "topics") == []
    assert not (ferry.root / "etc").exists() and not (sandbox / "etc").exists()
    assert name not in admin.list_topics(timeout=OP_TIMEOUT_S).topics


# --------------------------------------------------------------------------
# producing


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_produce_each_compression_codec(ferry, codec):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic(f"codec-{codec}")
    create_topic(admin, topic, partitions=2)
    producer = make_producer(
        ferry.bootstrap, **{"compression.type": codec, "linger.ms": 50, "batch.num.messages": 1000}
    )
    ts0 = now_ms() - 3_600_000
    msgs = make_records(40, 0, ts0, prefix=codec) + make_records(25, 1, ts0 + 7, prefix=codec)
    # Highly compressible payloads too, so compression really changes the bytes.
    msgs += [
        dict(partition=1, key=b"big", value=(b"abcdefgh" * 2000) + bytes([n]), headers=[], timestamp=ts0 + 999_000 + n)
        for n in range(3)
    ]
    delivered = produce_ok(producer, topic, msgs)
    expected_offsets = []
    counters = {0: 0, 1: 0}
    for m in msgs:
        expected_offsets.append((m["partition"], counters[m["partition"]]))
        counters[m["partition"]] += 1
    assert delivered == expected_offsets

    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING), TopicPartition(topic, 1, OFFSET_BEGINNING)])
        got = [to_rec(m) for m in consume_n(consumer, len(msgs))]
    finally:
        consumer.close()
    want = expected_recs(msgs, [o for _, o in expected_offsets])
    assert by_partition(got) == by_partition(want)


def test_produce_null_and_empty_keys_and_values(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("nulls")
    create_topic(admin, topic)
    ts = now_ms()
    msgs = [
        dict(partition=0, key=None, value=None, headers=[], timestamp=ts),
        dict(partition=0, key=b"", value=b"", headers=[], timestamp=ts + 1),
        dict(partition=0, key=b"k", value=None, headers=[("h", None)], timestamp=ts + 2),
        dict(partition=0, key=None, value=b"\x00\xff" * 10, headers=[("dup", b"1"), ("dup", b"2")], timestamp=ts + 3),
    ]
    assert produce_ok(make_producer(ferry.bootstrap), topic, msgs) == [(0, i) for i in range(4)]
    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = [to_rec(m) for m in consume_n(consumer, 4)]
    finally:
        consumer.close()
    assert got == expected_recs(msgs, range(4))


def test_message_larger_than_max_message_bytes_is_refused(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("toolarge")
    create_topic(admin, topic, config={"max.message.bytes": "1024"})
    producer = make_producer(
        ferry.bootstrap, **{"message.max.bytes": 1_000_000, "compression.type": "none", "linger.ms": 0}
    )
    reports = produce_all(producer, topic, [dict(partition=0, key=b"big", value=os.urandom(8000))])
    err = reports[0][0]
    assert err is not None, f"an 8000-byte message was accepted by a topic with max.message.bytes=1024: {reports}"
    assert err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err

    # The refused batch took no offset; a small message still goes in at 0.
    assert produce_ok(producer, topic, [dict(partition=0, key=b"small", value=b"ok")]) == [(0, 0)]
    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = consume_n(consumer, 1)
        assert (got[0].offset(), got[0].key(), got[0].value()) == (0, b"small", b"ok")
    finally:
        consumer.close()


@pytest.mark.ferry_args("--default-partitions", "3")
def test_auto_create_on_produce_uses_default_partitions(ferry):
    topic = unique_topic("auto")
    producer = make_producer(ferry.bootstrap)
    assert produce_ok(producer, topic, [dict(partition=2, value=b"x")]) == [(2, 0)]
    md = admin_client(ferry.bootstrap).list_topics(topic=topic, timeout=OP_TIMEOUT_S)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]


@pytest.mark.ferry_args("--auto-create-topics", "false")
def test_no_auto_create_when_disabled(ferry):
    topic = unique_topic("noauto")
    producer = make_producer(ferry.bootstrap, **{"message.timeout.ms": 3000, "topic.metadata.propagation.max.ms": 500})
    reports = produce_all(producer, topic, [dict(value=b"x")], timeout=10)
    err = reports[0][0]
    assert err is not None and err.code() in (KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART), reports
    md = admin_client(ferry.bootstrap).list_topics(timeout=OP_TIMEOUT_S)
    assert topic not in md.topics
    assert os.listdir(ferry.data_dir / "topics") == []


# --------------------------------------------------------------------------
# consuming


@pytest.fixture
def filled_topic(ferry):
    """A 3-partition topic with 10 records per partition (distinct keys,
    headers and increasing timestamps), produced in one go."""
    topic = unique_topic("filled")
    create_topic(ferry.bootstrap, topic, partitions=3)
    ts0 = now_ms() - 600_000
    msgs = []
    for p in range(3):
        msgs += make_records(10, p, ts0 + p * 100)
    producer = make_producer(ferry.bootstrap, **{"linger.ms": 50})
    delivered = produce_ok(producer, topic, msgs)
    assert sorted(delivered) == sorted((p, i) for p in range(3) for i in range(10))
    offsets = [o for _, o in delivered]
    return topic, ts0, expected_recs(msgs, offsets)


def test_consume_from_beginning(ferry, filled_topic):
    topic, _, want = filled_topic
    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
        msgs = consume_n(consumer, 30)
        assert {m.timestamp()[0] for m in msgs} == {TIMESTAMP_CREATE_TIME}
        got = [to_rec(m) for m in msgs]
    finally:
        consumer.close()
    assert by_partition(got) == by_partition(want)
    for p, recs in by_partition(got).items():
        assert [r.offset for r in recs] == list(range(10)), p


def _wait_fetch_active(consumer, stats, topic, partition, next_offset):
    def ready():
        assert consumer.poll(0.1) is None, "unexpected message while waiting for the fetcher"
        s = stats.get("last")
        if not s:
            return False
        p = s.get("topics", {}).get(topic, {}).get("partitions", {}).get(str(partition))
        return p is not None and p.get("fetch_state") == "active" and p.get("next_offset") == next_offset

    wait_until(ready, what=f"fetcher of {topic}[{partition}] active at offset {next_offset}")


def test_consume_from_end_sees_only_new_messages(ferry, filled_topic):
    topic, ts0, _ = filled_topic
    stats = {}
    consumer = make_consumer(
        ferry.bootstrap,
        **{"statistics.interval.ms": 50, "stats_cb": lambda s: stats.__setitem__("last", json.loads(s))},
    )
    try:
        consumer.assign([TopicPartition(topic, 1, OFFSET_END)])
        _wait_fetch_active(consumer, stats, topic, 1, 10)
        new = make_records(4, 1, ts0 + 50_000, prefix="late")
        assert produce_ok(make_producer(ferry.bootstrap), topic, new) == [(1, 10 + i) for i in range(4)]
        got = [to_rec(m) for m in consume_n(consumer, 4)]
    finally:
        consumer.close()
    assert got == expected_recs(new, range(10, 14))


def test_consume_from_specific_offset(ferry, filled_topic):
    topic, _, want = filled_topic
    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, 2, 7), TopicPartition(topic, 0, 3)])
        got = [to_rec(m) for m in consume_n(consumer, 3 + 7)]
    finally:
        consumer.close()
    wanted = [r for r in want if (r.partition == 2 and r.offset >= 7) or (r.partition == 0 and r.offset >= 3)]
    assert by_partition(got) == by_partition(wanted)


def test_consume_from_timestamp(ferry, filled_topic):
    topic, ts0, want = filled_topic
    consumer = make_consumer(ferry.bootstrap)
    try:
        # Partition p holds timestamps ts0 + p*100 + i*1000, i = 0..9.
        query = [
            TopicPartition(topic, 0, ts0 + 4500),  # between offsets 4 and 5 -> 5
            TopicPartition(topic, 1, ts0 + 100 + 2000),  # exactly offset 2 -> 2
            TopicPartition(topic, 2, ts0 + 10_000_000),  # after everything -> -1 (end)
        ]
        found = consumer.offsets_for_times(query, timeout=OP_TIMEOUT_S)
        assert [(tp.partition, tp.offset, tp.error) for tp in found] == [(0, 5, None), (1, 2, None), (2, -1, None)]
        early = consumer.offsets_for_times([TopicPartition(topic, 0, 0)], timeout=OP_TIMEOUT_S)
        assert early[0].offset == 0

        consumer.assign([tp for tp in found if tp.offset >= 0])
        got = [to_rec(m) for m in consume_n(consumer, 5 + 8)]
    finally:
        consumer.close()
    wanted = [r for r in want if (r.partition == 0 and r.offset >= 5) or (r.partition == 1 and r.offset >= 2)]
    assert by_partition(got) == by_partition(wanted)


def test_offsets_for_times_within_one_batch_and_out_of_order(ferry):
    """Timestamps need not grow with offsets: the answer is the first offset
    whose timestamp is >= the target, looked up inside a batch too."""
    topic = unique_topic("tsorder")
    create_topic(ferry.bootstrap, topic)
    base = now_ms() - 100_000
    deltas = [0, 3000, 2000, 4000, 1000, 5000]
    msgs = [dict(partition=0, value=b"v%d" % i, timestamp=base + d) for i, d in enumerate(deltas)]
    producer = make_producer(ferry.bootstrap, **{"linger.ms": 200})
    assert produce_ok(producer, topic, msgs) == [(0, i) for i in range(6)]
    consumer = make_consumer(ferry.bootstrap)
    try:
        for target, offset in [(0, 0), (500, 1), (1000, 1), (2500, 1), (3500, 3), (4000, 3), (4500, 5), (5000, 5), (5001, -1)]:
            r = consumer.offsets_for_times([TopicPartition(topic, 0, base + target)], timeout=OP_TIMEOUT_S)
            assert (r[0].offset, r[0].error) == (offset, None), f"target +{target}"
    finally:
        consumer.close()

    admin = admin_client(ferry.bootstrap)
    tp = TopicPartition(topic, 0)
    specs = {
        "earliest": (OffsetSpec.earliest(), 0),
        "latest": (OffsetSpec.latest(), 6),
        "max_timestamp": (OffsetSpec.max_timestamp(), 5),
        "for_timestamp": (OffsetSpec.for_timestamp(base + 2500), 1),
    }
    for label, (spec, offset) in specs.items():
        info = admin.list_offsets({tp: spec}, request_timeout=OP_TIMEOUT_S)[tp].result(timeout=OP_TIMEOUT_S)
        assert info.offset == offset, label
        if label == "max_timestamp":
            assert info.timestamp == base + 5000
        if label == "for_timestamp":
            assert info.timestamp == base + 3000


def test_watermarks(ferry, filled_topic):
    topic, _, _ = filled_topic
    consumer = make_consumer(ferry.bootstrap)
    try:
        for p in range(3):
            assert consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=OP_TIMEOUT_S, cached=False) == (
                0,
                10,
            )
    finally:
        consumer.close()


def test_many_small_fetches_keep_order(ferry):
    """2000 records read with tiny fetch limits: many fetches that start in
    the middle of stored batches."""
    topic = unique_topic("many")
    create_topic(ferry.bootstrap, topic, partitions=2)
    ts0 = now_ms() - 100_000
    msgs = [dict(partition=i % 2, key=b"%d" % i, value=b"value-%06d" % i, timestamp=ts0 + i) for i in range(2000)]
    # One request in flight: this test is about fetching (ordering of
    # pipelined produce requests has its own test below).
    producer = make_producer(ferry.bootstrap, **{"linger.ms": 20, "batch.num.messages": 97, "max.in.flight": 1})
    delivered = produce_ok(producer, topic, msgs)
    assert delivered == [(i % 2, i // 2) for i in range(2000)]
    consumer = make_consumer(
        ferry.bootstrap,
        **{"max.partition.fetch.bytes": 1024, "fetch.max.bytes": 2048, "message.max.bytes": 1000, "fetch.min.bytes": 1},
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 333), TopicPartition(topic, 1, OFFSET_BEGINNING)])
        got = [to_rec(m) for m in consume_n(consumer, (1000 - 333) + 1000, timeout=60)]
    finally:
        consumer.close()
    parts = by_partition(got)
    assert [r.value for r in parts[0]] == [b"value-%06d" % i for i in range(666, 2000, 2)]
    assert [r.offset for r in parts[0]] == list(range(333, 1000))
    assert [r.value for r in parts[1]] == [b"value-%06d" % i for i in range(1, 2000, 2)]
    assert [r.offset for r in parts[1]] == list(range(1000))


@pytest.mark.parametrize("in_flight", [1, 5, 1000000], ids=["in-flight-1", "in-flight-5", "in-flight-default"])
def test_pipelined_produce_requests_keep_order(ferry, in_flight):
    """A producer pipelines several Produce requests on one connection
    (librdkafka's max.in.flight, default 1000000). Without retries Kafka
    appends them in the order they were sent, so the partition keeps the
    order the application produced in."""
    topic = unique_topic("pipeline")
    create_topic(ferry.bootstrap, topic)
    producer = make_producer(
        ferry.bootstrap, **{"linger.ms": 20, "batch.num.messages": 50, "max.in.flight": in_flight}
    )
    msgs = [dict(partition=0, value=b"value-%06d" % i) for i in range(3000)]
    delivered = produce_ok(producer, topic, msgs)
    misplaced = [(i, off) for i, (_, off) in enumerate(delivered) if off != i]
    assert misplaced == [], f"{len(misplaced)} of 3000 messages got another offset than their position, first (index, offset): {misplaced[:5]}"
    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = consume_n(consumer, 3000, timeout=30)
    finally:
        consumer.close()
    assert [m.value() for m in got] == [m["value"] for m in msgs]


def test_batch_larger_than_fetch_limits_is_still_delivered(ferry):
    """KIP-74: a batch bigger than max.partition.fetch.bytes comes back whole."""
    topic = unique_topic("kip74")
    create_topic(ferry.bootstrap, topic)
    big = os.urandom(200_000)
    producer = make_producer(ferry.bootstrap, **{"compression.type": "none"})
    assert produce_ok(producer, topic, [dict(value=big), dict(value=b"after")]) == [(0, 0), (0, 1)]
    consumer = make_consumer(
        ferry.bootstrap, **{"max.partition.fetch.bytes": 1024, "fetch.max.bytes": 1024, "message.max.bytes": 1000}
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = consume_n(consumer, 2)
    finally:
        consumer.close()
    assert [(m.offset(), m.value()) for m in got] == [(0, big), (1, b"after")]


# --------------------------------------------------------------------------
# durability


def _snapshot(bootstrap, topic, partitions, n):
    consumer = make_consumer(bootstrap)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        return [to_rec(m) for m in consume_n(consumer, n)]
    finally:
        consumer.close()


def test_data_and_configs_survive_a_restart(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("restart")
    create_topic(admin, topic, partitions=2, config={"retention.ms": "86400000", "segment.bytes": "4096"})
    ts0 = now_ms() - 60_000
    # segment.bytes=4096 makes the data span several segments.
    msgs = make_records(60, 0, ts0) + make_records(45, 1, ts0)
    produce_ok(make_producer(ferry.bootstrap), topic, msgs)
    before = _snapshot(ferry.bootstrap, topic, 2, len(msgs))
    configs_before = config_view(describe_topic_configs(admin, topic))

    ferry.restart()

    admin = admin_client(ferry.bootstrap)
    md = admin.list_topics(topic=topic, timeout=OP_TIMEOUT_S)
    assert sorted(md.topics[topic].partitions) == [0, 1]
    assert config_view(describe_topic_configs(admin, topic)) == configs_before
    assert configs_before["segment.bytes"] == ("4096", ConfigSource.DYNAMIC_TOPIC_CONFIG)
    after = _snapshot(ferry.bootstrap, topic, 2, len(msgs))
    assert by_partition(after) == by_partition(before)
    # Appends continue where they left off.
    assert produce_ok(make_producer(ferry.bootstrap), topic, [dict(partition=0, value=b"x"), dict(partition=1, value=b"y")]) == [
        (0, 60),
        (1, 45),
    ]


def test_acknowledged_data_survives_sigkill(ferry):
    """fsync.policy=always (the default): what was acknowledged is on disk,
    even if the broker is killed without a clean shutdown."""
    topic = unique_topic("crash")
    create_topic(ferry.bootstrap, topic)
    msgs = make_records(30, 0, now_ms() - 1000)
    assert produce_ok(make_producer(ferry.bootstrap), topic, msgs) == [(0, i) for i in range(30)]
    ferry.kill9()
    ferry.start()
    got = _snapshot(ferry.bootstrap, topic, 1, 30)
    assert got == expected_recs(msgs, range(30))
    assert produce_ok(make_producer(ferry.bootstrap), topic, [dict(partition=0, value=b"next")]) == [(0, 30)]


# --------------------------------------------------------------------------
# configs that change behaviour


def test_altered_max_message_bytes_applies_to_the_live_topic(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("livecfg")
    create_topic(admin, topic)
    producer = make_producer(ferry.bootstrap, **{"compression.type": "none", "linger.ms": 0})
    payload = os.urandom(5000)
    assert produce_ok(producer, topic, [dict(partition=0, value=payload)]) == [(0, 0)]

    res = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("max.message.bytes", "1024", incremental_operation=AlterConfigOpType.SET)],
    )
    admin.incremental_alter_configs([res], request_timeout=OP_TIMEOUT_S)[res].result(timeout=OP_TIMEOUT_S)
    reports = produce_all(producer, topic, [dict(partition=0, value=payload)])
    assert reports[0][0] is not None and reports[0][0].code() == KafkaError.MSG_SIZE_TOO_LARGE, reports
    assert produce_ok(producer, topic, [dict(partition=0, value=b"small")]) == [(0, 1)]


@pytest.mark.parametrize("acks", ["0", "1"])
def test_produce_with_acks_0_and_1(ferry, acks):
    topic = unique_topic(f"acks{acks}")
    create_topic(ferry.bootstrap, topic)
    ts = now_ms() - 1000
    msgs = [dict(partition=0, key=b"k%d" % i, value=b"v%d" % i, headers=[("a", acks.encode())], timestamp=ts + i) for i in range(20)]
    producer = make_producer(ferry.bootstrap, acks=acks, **{"max.in.flight": 1})
    reports = produce_all(producer, topic, msgs)
    assert [r[0] for r in reports] == [None] * 20
    if acks == "1":
        assert [r[2] for r in reports] == list(range(20))
    # acks=0 gets no offsets back; the records must still be stored in order.
    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = [to_rec(m) for m in consume_n(consumer, 20)]
    finally:
        consumer.close()
    assert got == expected_recs(msgs, range(20))


@pytest.mark.parametrize(
    "policy", [{"fsync.policy": "always"}, {"fsync.policy": "interval", "fsync.interval.ms": "50"}, {"fsync.policy": "never"}],
    ids=["always", "interval", "never"],
)
def test_fsync_policies_serve_and_keep_data(ferry, policy):
    topic = unique_topic("fsync")
    create_topic(ferry.bootstrap, topic, config=policy)
    msgs = make_records(25, 0, now_ms() - 10_000)
    assert produce_ok(make_producer(ferry.bootstrap), topic, msgs) == [(0, i) for i in range(25)]
    want = expected_recs(msgs, range(25))
    assert _snapshot(ferry.bootstrap, topic, 1, 25) == want
    ferry.restart()
    assert _snapshot(ferry.bootstrap, topic, 1, 25) == want


def test_fetch_past_the_end_is_out_of_range(ferry, filled_topic):
    topic, _, want = filled_topic
    consumer = make_consumer(ferry.bootstrap)  # auto.offset.reset=error
    try:
        consumer.assign([TopicPartition(topic, 0, 50)])
        deadline = time.monotonic() + OP_TIMEOUT_S
        msg = None
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                break
        assert msg is not None, "no error for fetching offset 50 of a 10-record partition"
        assert msg.error() is not None, f"got a record: {to_rec(msg)}"
        assert msg.error().code() == KafkaError._AUTO_OFFSET_RESET, msg.error()
        assert "out of range" in msg.error().str().lower(), msg.error()
    finally:
        consumer.close()

    consumer = make_consumer(ferry.bootstrap, **{"auto.offset.reset": "earliest"})
    try:
        consumer.assign([TopicPartition(topic, 0, 50)])
        got = [to_rec(m) for m in consume_n(consumer, 10)]
    finally:
        consumer.close()
    assert got == [r for r in want if r.partition == 0]


@pytest.mark.ferry_args("--retention-check-interval-ms", "100")
def test_retention_bytes_deletes_oldest_segments(ferry):
    topic = unique_topic("ret-bytes")
    create_topic(ferry.bootstrap, topic, config={"segment.bytes": "1024", "retention.bytes": "3000"})
    ts0 = now_ms() - 1000
    msgs = [dict(partition=0, key=b"k%03d" % i, value=b"%03d-" % i + b"x" * 200, timestamp=ts0 + i) for i in range(60)]
    producer = make_producer(ferry.bootstrap, **{"linger.ms": 0, "max.in.flight": 1, "batch.num.messages": 1})
    assert produce_ok(producer, topic, msgs) == [(0, i) for i in range(60)]

    consumer = make_consumer(ferry.bootstrap)
    tp = TopicPartition(topic, 0)
    try:
        # Retention runs every 100 ms: wait until it has advanced the start
        # and then left it alone for several runs.
        def settled():
            first = consumer.get_watermark_offsets(tp, timeout=OP_TIMEOUT_S, cached=False)
            time.sleep(0.4)
            second = consumer.get_watermark_offsets(tp, timeout=OP_TIMEOUT_S, cached=False)
            return first == second and first[0] > 0 and first

        lo, hi = wait_until(settled, what="retention to advance the log start offset and settle")
        assert hi == 60
        # Kafka's rule: the oldest segment goes while the rest would still be
        # at least retention.bytes. So what is left is >= 3000 bytes, and
        # without its oldest segment it would be < 3000.
        part_dir = ferry.data_dir / "topics" / topic / "0"
        segments = sorted(part_dir.glob("*.log"))
        sizes = [f.stat().st_size for f in segments]
        assert sum(sizes) >= 3000 and sum(sizes) - sizes[0] < 3000, list(zip([f.name for f in segments], sizes))
        assert int(segments[0].stem) == lo, (segments[0].name, lo)
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = [to_rec(m) for m in consume_n(consumer, 60 - lo)]
    finally:
        consumer.close()
    assert got == expected_recs(msgs[lo:], range(lo, 60))
    admin = admin_client(ferry.bootstrap)
    info = admin.list_offsets({tp: OffsetSpec.earliest()}, request_timeout=OP_TIMEOUT_S)[tp].result(timeout=OP_TIMEOUT_S)
    assert info.offset == lo


@pytest.mark.ferry_args("--retention-check-interval-ms", "100")
def test_retention_ms_deletes_expired_segments_including_the_active_one(ferry):
    """Kafka's rule: once every record is past retention.ms, all segments go
    (the active one is rolled first); offsets continue where they were."""
    topic = unique_topic("ret-ms")
    create_topic(ferry.bootstrap, topic, config={"segment.bytes": "1024", "retention.ms": "600000"})
    ts0 = now_ms() - 86_400_000  # a day old
    msgs = [dict(partition=0, value=b"%03d-" % i + b"x" * 200, timestamp=ts0 + i) for i in range(30)]
    producer = make_producer(ferry.bootstrap, **{"linger.ms": 0, "max.in.flight": 1, "batch.num.messages": 1})
    assert produce_ok(producer, topic, msgs) == [(0, i) for i in range(30)]
    consumer = make_consumer(ferry.bootstrap)
    try:
        wait_until(
            lambda: consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=OP_TIMEOUT_S, cached=False)
            == (30, 30),
            what="retention to delete every expired record",
        )
        fresh = dict(partition=0, key=b"new", value=b"fresh", headers=[], timestamp=now_ms())
        assert produce_ok(producer, topic, [fresh]) == [(0, 30)]
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = [to_rec(m) for m in consume_n(consumer, 1)]
    finally:
        consumer.close()
    assert got == expected_recs([fresh], [30])


# --------------------------------------------------------------------------
# more admin


@pytest.mark.ferry_args("--default-partitions", "4")
def test_broker_configs_are_described_and_static(ferry):
    admin = admin_client(ferry.bootstrap)
    res = ConfigResource(ResourceType.BROKER, "0")
    entries = admin.describe_configs([res], request_timeout=OP_TIMEOUT_S)[res].result(timeout=OP_TIMEOUT_S)
    view = {k: (e.value, ConfigSource(e.source), e.is_read_only) for k, e in entries.items()}
    static = ConfigSource.STATIC_BROKER_CONFIG
    assert view["num.partitions"] == ("4", static, True)
    assert view["auto.create.topics.enable"] == ("true", static, True)
    assert view["broker.id"] == ("0", static, True)

    change = ConfigResource(
        ResourceType.BROKER,
        "0",
        incremental_configs=[ConfigEntry("num.partitions", "3", incremental_operation=AlterConfigOpType.SET)],
    )
    fut = admin.incremental_alter_configs([change], request_timeout=OP_TIMEOUT_S)[change]
    expect_admin_error(fut, KafkaError.INVALID_REQUEST)


def test_list_offsets_of_an_empty_partition(ferry):
    topic = unique_topic("empty")
    create_topic(ferry.bootstrap, topic)
    admin = admin_client(ferry.bootstrap)
    tp = TopicPartition(topic, 0)
    got = {}
    for label, spec in [
        ("earliest", OffsetSpec.earliest()),
        ("latest", OffsetSpec.latest()),
        ("max_timestamp", OffsetSpec.max_timestamp()),
        ("for_timestamp", OffsetSpec.for_timestamp(1000)),
    ]:
        info = admin.list_offsets({tp: spec}, request_timeout=OP_TIMEOUT_S)[tp].result(timeout=OP_TIMEOUT_S)
        got[label] = (info.offset, info.timestamp)
    assert got == {
        "earliest": (0, -1),
        "latest": (0, -1),
        "max_timestamp": (-1, -1),
        "for_timestamp": (-1, -1),
    }


def test_create_partitions_validate_only_changes_nothing(ferry):
    admin = admin_client(ferry.bootstrap)
    topic = unique_topic("growdry")
    create_topic(admin, topic, partitions=2)
    admin.create_partitions([NewPartitions(topic, 6)], validate_only=True, request_timeout=OP_TIMEOUT_S)[topic].result(
        timeout=OP_TIMEOUT_S
    )
    md = admin.list_topics(topic=topic, timeout=OP_TIMEOUT_S)
    assert sorted(md.topics[topic].partitions) == [0, 1]
    assert sorted(os.listdir(ferry.data_dir / "topics" / topic)) == ["0", "1"]


def test_colliding_names_and_too_many_partitions(ferry):
    admin = admin_client(ferry.bootstrap)
    base = unique_topic("coll").replace("-", "_")
    create_topic(admin, f"{base}_x")
    # '.' and '_' collide in Kafka's metric names, so Kafka refuses the second.
    dotted = f"{base}.x"
    fut = admin.create_topics([NewTopic(dotted, num_partitions=1, replication_factor=1)], request_timeout=OP_TIMEOUT_S)[
        dotted
    ]
    expect_admin_error(fut, KafkaError.TOPIC_EXCEPTION)
    huge = unique_topic("huge")
    fut = admin.create_topics([NewTopic(huge, num_partitions=10_001, replication_factor=1)], request_timeout=OP_TIMEOUT_S)[
        huge
    ]
    expect_admin_error(fut, KafkaError.INVALID_PARTITIONS)
    topics = admin.list_topics(timeout=OP_TIMEOUT_S).topics
    assert dotted not in topics and huge not in topics
    assert sorted(os.listdir(ferry.data_dir / "topics")) == [f"{base}_x"]


def test_concurrent_producers_on_one_partition(ferry):
    """Four producers (four connections) appending to one partition at once:
    every record gets exactly one offset, and each producer's records keep
    their order."""
    import threading

    topic = unique_topic("concurrent")
    create_topic(ferry.bootstrap, topic)
    n, per = 4, 400
    results: dict = {}
    errors: list = []

    def run(w):
        try:
            p = make_producer(ferry.bootstrap, **{"linger.ms": 2, "batch.num.messages": 25})
            msgs = [dict(partition=0, key=b"w%d" % w, value=b"w%d-%04d" % (w, i)) for i in range(per)]
            results[w] = produce_ok(p, topic, msgs, timeout=60)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    all_offsets = sorted(off for w in range(n) for _, off in results[w])
    assert all_offsets == list(range(n * per))
    for w in range(n):
        offs = [off for _, off in results[w]]
        assert offs == sorted(offs), f"producer {w}'s records out of order"

    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = consume_n(consumer, n * per, timeout=60)
    finally:
        consumer.close()
    stored = {m.offset(): m.value() for m in got}
    for w in range(n):
        assert [stored[off] for _, off in results[w]] == [b"w%d-%04d" % (w, i) for i in range(per)]


def test_large_message_round_trip(ferry):
    topic = unique_topic("large")
    create_topic(ferry.bootstrap, topic)
    big = os.urandom(900_000)
    producer = make_producer(ferry.bootstrap, **{"compression.type": "none"})
    assert produce_ok(producer, topic, [dict(key=b"big", value=big), dict(key=b"small", value=b"s")]) == [(0, 0), (0, 1)]
    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = consume_n(consumer, 2)
    finally:
        consumer.close()
    assert [(m.offset(), m.key(), m.value()) for m in got] == [(0, b"big", big), (1, b"small", b"s")]


def test_admin_changes_survive_restart_and_sigkill(ferry):
    """Catalog changes (created, grown, reconfigured, deleted topics) are
    journaled: a clean restart and a SIGKILL both bring back the same state."""
    admin = admin_client(ferry.bootstrap)
    keep, grow, gone = unique_topic("keep"), unique_topic("grow"), unique_topic("gone")
    create_topic(admin, keep, config={"retention.ms": "3600000"})
    create_topic(admin, grow, partitions=1)
    create_topic(admin, gone, partitions=3)
    admin.create_partitions([NewPartitions(grow, 3)], request_timeout=OP_TIMEOUT_S)[grow].result(timeout=OP_TIMEOUT_S)
    res = ConfigResource(
        ResourceType.TOPIC,
        keep,
        incremental_configs=[
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
            ConfigEntry("segment.ms", "120000", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    admin.incremental_alter_configs([res], request_timeout=OP_TIMEOUT_S)[res].result(timeout=OP_TIMEOUT_S)
    admin.delete_topics([gone], request_timeout=OP_TIMEOUT_S)[gone].result(timeout=OP_TIMEOUT_S)
    produce_ok(make_producer(ferry.bootstrap), grow, [dict(partition=2, value=b"p2")])

    def state():
        a = admin_client(ferry.bootstrap)
        md = a.list_topics(timeout=OP_TIMEOUT_S)
        topics = {name: sorted(t.partitions) for name, t in md.topics.items()}
        return topics, config_view(describe_topic_configs(a, keep)), md.cluster_id

    expected_topics = {keep: [0], grow: [0, 1, 2]}
    before = state()
    assert before[0] == expected_topics
    assert before[1]["segment.ms"] == ("120000", ConfigSource.DYNAMIC_TOPIC_CONFIG)
    assert before[1]["retention.ms"] == ("604800000", ConfigSource.DEFAULT_CONFIG)

    ferry.restart()
    assert state() == before
    ferry.kill9()
    ferry.start()
    assert state() == before
    consumer = make_consumer(ferry.bootstrap)
    try:
        consumer.assign([TopicPartition(grow, 2, OFFSET_BEGINNING)])
        assert [m.value() for m in consume_n(consumer, 1)] == [b"p2"]
    finally:
        consumer.close()


@pytest.mark.parametrize("codec", ["none", "zstd", "gzip"])
def test_offsets_for_times_across_segments_and_compressed_batches(ferry, codec):
    """Timestamp lookups against many segments and time-index entries, with
    timestamps that go back now and then, inside compressed batches: the
    answer is always the first offset whose timestamp is >= the target."""
    topic = unique_topic(f"tsseg-{codec}")
    create_topic(ferry.bootstrap, topic, config={"segment.bytes": "2048", "index.interval.bytes": "200"})
    base = now_ms() - 1_000_000
    n = 300
    stamps = [base + i * 10 + (35 if i % 7 == 3 else 0) - (25 if i % 11 == 5 else 0) for i in range(n)]
    msgs = [dict(partition=0, value=b"%04d" % i + os.urandom(40), timestamp=stamps[i]) for i in range(n)]
    producer = make_producer(ferry.bootstrap, **{"compression.type": codec, "linger.ms": 100, "batch.num.messages": 10})
    assert produce_ok(producer, topic, msgs) == [(0, i) for i in range(n)]
    part_dir = ferry.data_dir / "topics" / topic / "0"
    assert len(list(part_dir.glob("*.log"))) > 3, "expected the data to span several segments"

    def expected(target):
        for i, ts in enumerate(stamps):
            if ts >= target:
                return i
        return -1

    consumer = make_consumer(ferry.bootstrap)
    try:
        targets = sorted({base - 5, base, *range(base + 1, stamps[-1] + 40, 37), max(stamps), max(stamps) + 1})
        mismatches = []
        for target in targets:
            got = consumer.offsets_for_times([TopicPartition(topic, 0, target)], timeout=OP_TIMEOUT_S)[0]
            if (got.offset, got.error) != (expected(target), None):
                mismatches.append((target - base, got.offset, expected(target)))
        assert mismatches == [], f"(target - base, got, want): {mismatches[:10]}"
    finally:
        consumer.close()
