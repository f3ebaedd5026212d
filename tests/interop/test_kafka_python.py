"""kafka-python (pure Python client) against Ferry.

kafka-python infers the broker's release from the ApiVersions ranges, so the
advertised versions must read as Kafka 3.7. These tests use assign() with
group_id=None; group consumers are covered in test_groups.py."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as Errors
from kafka.admin import ConfigResource, ConfigResourceType

from interop_util import OP_TIMEOUT_S, consume_n, make_consumer, now_ms, unique_topic

TIMEOUT_MS = int(OP_TIMEOUT_S * 1000)


def admin(ferry) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=ferry.bootstrap, request_timeout_ms=TIMEOUT_MS)


def producer(ferry, **extra) -> KafkaProducer:
    conf = dict(
        bootstrap_servers=ferry.bootstrap,
        acks="all",
        enable_idempotence=False,  # idempotence has its own tests (test_idempotence.py)
        linger_ms=5,
        # One request at a time; pipelining has its own test below.
        max_in_flight_requests_per_connection=1,
        request_timeout_ms=TIMEOUT_MS,
    )
    conf.update(extra)
    return KafkaProducer(**conf)


def consumer(ferry, **extra) -> KafkaConsumer:
    conf = dict(
        bootstrap_servers=ferry.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        request_timeout_ms=TIMEOUT_MS,
        fetch_max_wait_ms=100,
    )
    conf.update(extra)
    return KafkaConsumer(**conf)


def poll_n(c: KafkaConsumer, n: int, timeout: float = OP_TIMEOUT_S, drain_ms: int = 300) -> list:
    """Records in the order received, until `n` arrived; then a short drain
    to catch unexpected extra ones."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(out)} of {n} records within {timeout}s")
        for records in c.poll(timeout_ms=int(min(left, 0.5) * 1000)).values():
            out.extend(records)
    for records in c.poll(timeout_ms=drain_ms).values():
        out.extend(records)
    assert len(out) == n, f"expected exactly {n} records, got {len(out)}: extra {out[n:]}"
    return out


def create(ferry, topic: str, partitions: int = 1, configs: dict | None = None) -> None:
    a = admin(ferry)
    try:
        a.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": 1, "configs": configs or {}}},
            timeout_ms=TIMEOUT_MS,
        )
    finally:
        a.close()


def rec_view(r) -> tuple:
    return (r.partition, r.offset, r.key, r.value, list(r.headers), r.timestamp, r.timestamp_type)


def test_inferred_api_version_is_3_7(ferry):
    c = consumer(ferry)
    try:
        assert c.config["api_version"] == (3, 7)
        assert c._manager.broker_version == (3, 7)
    finally:
        c.close()
    p = producer(ferry)
    try:
        assert p.config["api_version"] == (3, 7)
    finally:
        p.close()


def _produce(p: KafkaProducer, topic: str, specs: list[dict]) -> list:
    futures = [p.send(topic, **s) for s in specs]
    p.flush(timeout=OP_TIMEOUT_S)
    return [f.get(timeout=OP_TIMEOUT_S) for f in futures]


def _fill(ferry, topic):
    """10 records in partition 0 and 5 in partition 1, with increasing
    explicit timestamps. Returns (specs, base timestamp)."""
    create(ferry, topic, partitions=2)
    base = now_ms() - 300_000
    specs = []
    for part, count in [(0, 10), (1, 5)]:
        for i in range(count):
            specs.append(
                dict(
                    partition=part,
                    key=f"k{part}-{i}".encode(),
                    value=f"value {part}/{i}".encode() * (1 + i % 3),
                    headers=[("i", str(i).encode()), ("p", str(part).encode())],
                    timestamp_ms=base + part * 10 + i * 1000,
                )
            )
    p = producer(ferry)
    try:
        metas = _produce(p, topic, specs)
    finally:
        p.close()
    counters = {0: 0, 1: 0}
    expected_meta = []
    for s in specs:
        expected_meta.append((topic, s["partition"], counters[s["partition"]], s["timestamp_ms"]))
        counters[s["partition"]] += 1
    assert [(m.topic, m.partition, m.offset, m.timestamp) for m in metas] == expected_meta
    return specs, base


def _expected(specs, partition, from_offset=0):
    rows = [s for s in specs if s["partition"] == partition]
    return [
        (partition, off, s["key"], s["value"], s["headers"], s["timestamp_ms"], 0)
        for off, s in enumerate(rows)
        if off >= from_offset
    ]


def test_produce_then_consume_with_assign_and_seek(ferry):
    topic = unique_topic("kp")
    specs, _ = _fill(ferry, topic)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    c = consumer(ferry)
    try:
        c.assign([tp0, tp1])
        c.seek_to_beginning(tp0, tp1)
        got = [rec_view(r) for r in poll_n(c, 15)]
        assert [g for g in got if g[0] == 0] == _expected(specs, 0)
        assert [g for g in got if g[0] == 1] == _expected(specs, 1)

        c.seek(tp0, 7)
        c.seek(tp1, 4)
        got = [rec_view(r) for r in poll_n(c, 3 + 1)]
        assert [g for g in got if g[0] == 0] == _expected(specs, 0, 7)
        assert [g for g in got if g[0] == 1] == _expected(specs, 1, 4)
        assert c.position(tp0) == 10 and c.position(tp1) == 5
    finally:
        c.close()


def test_offset_lookups(ferry):
    topic = unique_topic("kpoff")
    _, base = _fill(ferry, topic)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    c = consumer(ferry)
    try:
        assert c.beginning_offsets([tp0, tp1]) == {tp0: 0, tp1: 0}
        assert c.end_offsets([tp0, tp1]) == {tp0: 10, tp1: 5}
        found = c.offsets_for_times({tp0: base + 3500, tp1: base + 10 + 2000})
        assert (found[tp0].offset, found[tp0].timestamp) == (4, base + 4000)
        assert (found[tp1].offset, found[tp1].timestamp) == (2, base + 10 + 2000)
        assert c.offsets_for_times({tp0: base + 1_000_000}) == {tp0: None}

        # Consume from the offset found for a timestamp.
        c.assign([tp0])
        c.seek(tp0, found[tp0].offset)
        got = poll_n(c, 6)
        assert [r.offset for r in got] == list(range(4, 10))
        assert [r.timestamp for r in got] == [base + i * 1000 for i in range(4, 10)]
    finally:
        c.close()


def test_gzip_producer(ferry):
    topic = unique_topic("kpgz")
    create(ferry, topic)
    specs = [dict(partition=0, key=b"k%d" % i, value=b"gz" * (i * 50 + 1)) for i in range(30)]
    p = producer(ferry, compression_type="gzip", linger_ms=50)
    try:
        metas = _produce(p, topic, specs)
    finally:
        p.close()
    assert [(m.partition, m.offset) for m in metas] == [(0, i) for i in range(30)]
    c = consumer(ferry)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        got = poll_n(c, 30)
    finally:
        c.close()
    assert [(r.offset, r.key, r.value) for r in got] == [(i, s["key"], s["value"]) for i, s in enumerate(specs)]


def test_pipelined_sends_keep_order(ferry):
    """kafka-python's default of 5 requests in flight: the partition must
    keep the order of send() calls."""
    topic = unique_topic("kppipe")
    create(ferry, topic)
    specs = [dict(partition=0, value=b"%05d" % i) for i in range(3000)]
    p = producer(ferry, max_in_flight_requests_per_connection=5, batch_size=1024, linger_ms=10)
    try:
        metas = _produce(p, topic, specs)
    finally:
        p.close()
    misplaced = [(i, m.offset) for i, m in enumerate(metas) if m.offset != i]
    assert misplaced == [], f"{len(misplaced)} of 3000 records not at their send() position, first (index, offset): {misplaced[:5]}"


def test_kafka_python_producer_confluent_consumer(ferry):
    topic = unique_topic("cross")
    create(ferry, topic)
    ts = now_ms() - 5000
    specs = [
        dict(partition=0, key=b"a", value=b"1", headers=[("x", b"y")], timestamp_ms=ts),
        dict(partition=0, key=None, value=b"2", headers=[], timestamp_ms=ts + 1),
        dict(partition=0, key=b"c", value=None, headers=[("n", b"")], timestamp_ms=ts + 2),
    ]
    p = producer(ferry)
    try:
        _produce(p, topic, specs)
    finally:
        p.close()
    cc = make_consumer(ferry.bootstrap)
    try:
        cc.assign([CTopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = consume_n(cc, 3)
    finally:
        cc.close()
    assert [(m.offset(), m.key(), m.value(), m.headers() or [], m.timestamp()[1]) for m in got] == [
        (i, s["key"], s["value"], s["headers"], s["timestamp_ms"]) for i, s in enumerate(specs)
    ]


def test_admin_create_describe_list_delete(ferry):
    topic = unique_topic("kpadm")
    a = admin(ferry)
    try:
        result = a.create_topics(
            {
                topic: {
                    "num_partitions": 3,
                    "replication_factor": 1,
                    "configs": {"retention.ms": "7200000", "max.message.bytes": "65536"},
                }
            },
            timeout_ms=TIMEOUT_MS,
        )
        (created,) = result["topics"]
        assert (created["name"], created["error_code"], created["num_partitions"], created["replication_factor"]) == (
            topic,
            0,
            3,
            1,
        )
        assert topic in a.list_topics()
        (described,) = a.describe_topics([topic])
        assert described["name"] == topic and described["error_code"] == 0
        parts = sorted((p["partition_index"], p["leader_id"]) for p in described["partitions"])
        assert parts == [(0, 0), (1, 0), (2, 0)]

        res = ConfigResource(ConfigResourceType.TOPIC, topic)
        everything = a.describe_configs([res], config_filter="all")["topic"][topic]
        assert (everything["retention.ms"]["value"], everything["retention.ms"]["config_source"]) == (
            "7200000",
            "DYNAMIC_TOPIC_CONFIG",
        )
        assert (everything["segment.bytes"]["value"], everything["segment.bytes"]["config_source"]) == (
            "1073741824",
            "DEFAULT_CONFIG",
        )
        modified = a.describe_configs([res])["topic"][topic]
        assert {k: v["value"] for k, v in modified.items()} == {"retention.ms": "7200000", "max.message.bytes": "65536"}

        deleted = a.delete_topics([topic], timeout_ms=TIMEOUT_MS)
        assert [(t["name"], t["error_code"]) for t in deleted["topics"]] == [(topic, 0)]
        assert topic not in a.list_topics()
    finally:
        a.close()


@pytest.mark.parametrize(
    "spec, error",
    [
        ({"num_partitions": 1, "replication_factor": 3}, Errors.InvalidReplicationFactorError),
        ({"num_partitions": 1, "replication_factor": 1, "configs": {"no.such.config": "1"}}, Errors.InvalidConfigurationError),
        ({"num_partitions": 1, "replication_factor": 1, "configs": {"segment.bytes": "nope"}}, Errors.InvalidConfigurationError),
    ],
    ids=["rf3", "unknown-config", "bad-value"],
)
def test_admin_create_errors(ferry, spec, error):
    topic = unique_topic("kpbad")
    a = admin(ferry)
    try:
        with pytest.raises(error):
            a.create_topics({topic: spec}, timeout_ms=TIMEOUT_MS)
        assert topic not in a.list_topics()
    finally:
        a.close()


def test_admin_errors_for_existing_invalid_and_missing_topics(ferry):
    topic = unique_topic("kpdup")
    a = admin(ferry)
    try:
        a.create_topics({topic: {"num_partitions": 2, "replication_factor": 1}}, timeout_ms=TIMEOUT_MS)
        with pytest.raises(Errors.TopicAlreadyExistsError):
            a.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}}, timeout_ms=TIMEOUT_MS)
        with pytest.raises(Errors.InvalidTopicError):
            a.create_topics({"../../etc": {"num_partitions": 1, "replication_factor": 1}}, timeout_ms=TIMEOUT_MS)
        with pytest.raises(Errors.UnknownTopicOrPartitionError):
            a.delete_topics([unique_topic("kpmissing")], timeout_ms=TIMEOUT_MS)
        assert sorted(a.list_topics()) == [topic]
    finally:
        a.close()
    assert not (ferry.data_dir.parent / "etc").exists() and not (ferry.data_dir.parents[1] / "etc").exists()


@pytest.mark.ferry_args("--default-partitions", "4")
def test_create_topics_partition_counts_and_validate_only(ferry):
    a = admin(ferry)
    try:
        by_default = unique_topic("kpdef")
        r = a.create_topics({by_default: {}}, timeout_ms=TIMEOUT_MS)["topics"][0]
        assert (r["name"], r["error_code"], r["num_partitions"], r["replication_factor"]) == (by_default, 0, 4, 1)

        # validate_only answers what would be created, and creates nothing.
        dry = unique_topic("kpdry")
        r = a.create_topics({dry: {"num_partitions": 2, "replication_factor": 1}}, validate_only=True)["topics"][0]
        assert (r["error_code"], r["num_partitions"]) == (0, 2), r
        r = a.create_topics({dry: {}}, validate_only=True)["topics"][0]
        assert (r["error_code"], r["num_partitions"]) == (0, 4), r
        assert sorted(a.list_topics()) == [by_default]
    finally:
        a.close()


def test_create_topic_with_replica_assignments(ferry):
    a = admin(ferry)
    try:
        topic = unique_topic("kpasg")
        r = a.create_topics({topic: {"assignments": {0: [0], 1: [0], 2: [0]}}}, timeout_ms=TIMEOUT_MS)["topics"][0]
        assert (r["error_code"], r["num_partitions"], r["replication_factor"]) == (0, 3, 1)
        (described,) = a.describe_topics([topic])
        assert sorted(p["partition_index"] for p in described["partitions"]) == [0, 1, 2]

        # Kafka: an assignment naming a broker that is not registered is an
        # invalid replica assignment (error 39).
        bad = unique_topic("kpasgbad")
        with pytest.raises(Errors.InvalidReplicationAssignmentError):
            a.create_topics({bad: {"assignments": {0: [1]}}}, timeout_ms=TIMEOUT_MS)
        assert bad not in a.list_topics()
    finally:
        a.close()


def test_describe_and_delete_topics_by_id(ferry):
    import uuid

    a = admin(ferry)
    try:
        topic = unique_topic("kpid")
        r = a.create_topics({topic: {"num_partitions": 2, "replication_factor": 1}}, timeout_ms=TIMEOUT_MS)["topics"][0]
        topic_id = uuid.UUID(str(r["topic_id"]))
        assert topic_id.int != 0
        (by_name,) = a.describe_topics([topic])
        assert uuid.UUID(str(by_name["topic_id"])) == topic_id
        (by_id,) = a.describe_topics([topic_id])
        assert by_id["name"] == topic and by_id["error_code"] == 0
        deleted = a.delete_topics([topic_id], timeout_ms=TIMEOUT_MS)["topics"]
        assert [(d["name"], uuid.UUID(str(d["topic_id"])), d["error_code"]) for d in deleted] == [(topic, topic_id, 0)]
        assert topic not in a.list_topics()
    finally:
        a.close()


def test_metadata_lookup_does_not_create_topics(ferry):
    """Metadata v4+ says whether to auto-create; a consumer asking about a
    topic must not create it."""
    topic = unique_topic("kpghost")
    c = consumer(ferry)
    try:
        assert not c.partitions_for_topic(topic)
    finally:
        c.close()
    a = admin(ferry)
    try:
        assert topic not in a.list_topics()
    finally:
        a.close()
    assert not (ferry.data_dir / "topics" / topic).exists()
