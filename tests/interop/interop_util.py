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


# ---------------------------------------------------------------------------
# Consumer groups: a raw Kafka protocol client (for requests no client library
# lets a test send on purpose: stale generations, fenced member ids) and
# admin-side views of a group.

import socket as _socket
import struct as _struct

# Kafka error codes the group tests look for.
ERR_NONE = 0
ERR_ILLEGAL_GENERATION = 22
ERR_INCONSISTENT_GROUP_PROTOCOL = 23
ERR_INVALID_GROUP_ID = 24
ERR_UNKNOWN_MEMBER_ID = 25
ERR_INVALID_SESSION_TIMEOUT = 26
ERR_REBALANCE_IN_PROGRESS = 27
ERR_MEMBER_ID_REQUIRED = 79
ERR_FENCED_INSTANCE_ID = 82


def _kstr(s: str | None) -> bytes:
    if s is None:
        return _struct.pack(">h", -1)
    b = s.encode()
    return _struct.pack(">h", len(b)) + b


def _kbytes(b: bytes | None) -> bytes:
    if b is None:
        return _struct.pack(">i", -1)
    return _struct.pack(">i", len(b)) + b


def _karray(items, enc) -> bytes:
    if items is None:
        return _struct.pack(">i", -1)
    items = list(items)
    return _struct.pack(">i", len(items)) + b"".join(enc(x) for x in items)


class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def _take(self, fmt: str):
        (v,) = _struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += _struct.calcsize(fmt)
        return v

    def i16(self) -> int:
        return self._take(">h")

    def i32(self) -> int:
        return self._take(">i")

    def i64(self) -> int:
        return self._take(">q")

    def string(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        s = self.buf[self.pos : self.pos + n].decode()
        self.pos += n
        return s

    def bytes_(self) -> bytes | None:
        n = self.i32()
        if n < 0:
            return None
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def array(self, dec) -> list | None:
        n = self.i32()
        if n < 0:
            return None
        return [dec(self) for _ in range(n)]

    def done(self) -> None:
        assert self.pos == len(self.buf), f"{len(self.buf) - self.pos} trailing bytes in response"


def consumer_subscription_v0(topics: list) -> bytes:
    """ConsumerProtocolSubscription v0 (the `consumer` protocol's metadata)."""
    return _struct.pack(">h", 0) + _karray(topics, _kstr) + _kbytes(b"")


def consumer_assignment_v0(assignment: dict) -> bytes:
    """ConsumerProtocolAssignment v0 from {topic: [partitions]}."""
    enc_topic = lambda tp: _kstr(tp[0]) + _karray(tp[1], lambda p: _struct.pack(">i", p))  # noqa: E731
    return _struct.pack(">h", 0) + _karray(sorted(assignment.items()), enc_topic) + _kbytes(b"")


def decode_consumer_assignment(data: bytes) -> dict:
    """{topic: [partitions]} from a ConsumerProtocolAssignment (any version)."""
    r = _Reader(data)
    r.i16()
    return dict(r.array(lambda r: (r.string(), r.array(lambda r: r.i32()))))


class RawKafka:
    """One connection speaking non-flexible request versions by hand.

    Only what the group tests need; every method returns the decoded response
    as plain Python values and checks nothing but framing."""

    def __init__(self, bootstrap: str, client_id: str = "ferry-raw", timeout: float = OP_TIMEOUT_S):
        host, port = bootstrap.rsplit(":", 1)
        self.client_id = client_id
        self.sock = _socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.settimeout(timeout)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def request(self, api_key: int, version: int, body: bytes) -> _Reader:
        """Request header v1, response header v0 (non-flexible versions only)."""
        self.correlation += 1
        header = _struct.pack(">hhi", api_key, version, self.correlation) + _kstr(self.client_id)
        frame = header + body
        self.sock.sendall(_struct.pack(">i", len(frame)) + frame)
        (size,) = _struct.unpack(">i", self._read_exact(4))
        r = _Reader(self._read_exact(size))
        corr = r.i32()
        assert corr == self.correlation, f"correlation id {corr} != {self.correlation}"
        return r

    def join_group(
        self,
        group: str,
        member_id: str,
        topics: list,
        session_timeout_ms: int = 10000,
        rebalance_timeout_ms: int = 10000,
        instance_id: str | None = None,
        protocol: str = "range",
        protocol_type: str = "consumer",
    ) -> dict:
        """JoinGroup v5."""
        protocols = [(protocol, consumer_subscription_v0(topics))]
        body = (
            _kstr(group)
            + _struct.pack(">ii", session_timeout_ms, rebalance_timeout_ms)
            + _kstr(member_id)
            + _kstr(instance_id)
            + _kstr(protocol_type)
            + _karray(protocols, lambda p: _kstr(p[0]) + _kbytes(p[1]))
        )
        r = self.request(11, 5, body)
        out = dict(throttle=r.i32(), error=r.i16(), generation=r.i32(), protocol=r.string(), leader=r.string(), member_id=r.string())
        out["members"] = r.array(lambda r: (r.string(), r.string(), r.bytes_()))
        r.done()
        return out

    def join_group_as_new_member(self, group: str, topics: list, **kw) -> dict:
        """JoinGroup v5 twice, as KIP-394 asks: the first answer is
        MEMBER_ID_REQUIRED with the id to rejoin with."""
        first = self.join_group(group, "", topics, **kw)
        if first["error"] != ERR_MEMBER_ID_REQUIRED:
            return first
        assert first["member_id"], first
        return self.join_group(group, first["member_id"], topics, **kw)

    def sync_group(self, group: str, generation: int, member_id: str, assignments: dict | None = None, instance_id: str | None = None) -> dict:
        """SyncGroup v3; `assignments` is {member_id: {topic: [partitions]}}."""
        items = sorted((assignments or {}).items())
        body = (
            _kstr(group)
            + _struct.pack(">i", generation)
            + _kstr(member_id)
            + _kstr(instance_id)
            + _karray(items, lambda a: _kstr(a[0]) + _kbytes(consumer_assignment_v0(a[1])))
        )
        r = self.request(14, 3, body)
        out = dict(throttle=r.i32(), error=r.i16(), assignment=r.bytes_())
        r.done()
        return out

    def heartbeat(self, group: str, generation: int, member_id: str, instance_id: str | None = None) -> int:
        """Heartbeat v3; returns the error code."""
        body = _kstr(group) + _struct.pack(">i", generation) + _kstr(member_id) + _kstr(instance_id)
        r = self.request(12, 3, body)
        r.i32()
        err = r.i16()
        r.done()
        return err

    def leave_group(self, group: str, members: list) -> dict:
        """LeaveGroup v3; `members` is [(member_id, instance_id)]."""
        body = _kstr(group) + _karray(members, lambda m: _kstr(m[0]) + _kstr(m[1]))
        r = self.request(13, 3, body)
        out = dict(throttle=r.i32(), error=r.i16())
        out["members"] = r.array(lambda r: (r.string(), r.string(), r.i16()))
        r.done()
        return out

    def offset_commit(
        self,
        group: str,
        generation: int,
        member_id: str,
        offsets: dict,
        instance_id: str | None = None,
    ) -> dict:
        """OffsetCommit v7; `offsets` is {(topic, partition): offset}.
        Returns {(topic, partition): error code}."""
        by_topic: dict = {}
        for (topic, p), off in sorted(offsets.items()):
            by_topic.setdefault(topic, []).append((p, off))
        enc_part = lambda po: _struct.pack(">iqi", po[0], po[1], -1) + _kstr(None)  # noqa: E731
        body = (
            _kstr(group)
            + _struct.pack(">i", generation)
            + _kstr(member_id)
            + _kstr(instance_id)
            + _karray(by_topic.items(), lambda t: _kstr(t[0]) + _karray(t[1], enc_part))
        )
        r = self.request(8, 7, body)
        r.i32()
        topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16()))))
        r.done()
        return {(t, p): e for t, parts in topics for p, e in parts}

    def offset_fetch(self, group: str, partitions: list | None) -> dict:
        """OffsetFetch v5; `partitions` is [(topic, partition)] or None for
        all. Returns {"error": code, "offsets": {(topic, p): (offset, metadata, error)}}."""
        topics = None
        if partitions is not None:
            by_topic: dict = {}
            for t, p in partitions:
                by_topic.setdefault(t, []).append(p)
            topics = sorted(by_topic.items())
        body = _kstr(group) + _karray(topics, lambda t: _kstr(t[0]) + _karray(t[1], lambda p: _struct.pack(">i", p)))
        r = self.request(9, 5, body)
        r.i32()
        parts = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i64(), r.i32(), r.string(), r.i16()))))
        err = r.i16()
        r.done()
        return {"error": err, "offsets": {(t, p): (o, m, e) for t, ps in parts for p, o, _, m, e in ps}}


def describe_group(admin: AdminClient, group: str):
    """confluent-kafka's ConsumerGroupDescription of one group."""
    return admin.describe_consumer_groups([group], request_timeout=OP_TIMEOUT_S)[group].result(timeout=OP_TIMEOUT_S)


def group_assignment(description) -> dict:
    """{client_id: sorted [(topic, partition)]} from a ConsumerGroupDescription."""
    out = {}
    for m in description.members:
        assert m.client_id not in out, f"two members with client id {m.client_id}: {description.members}"
        out[m.client_id] = sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions)
    return out


def committed_offsets(admin: AdminClient, group: str, partitions: list | None = None) -> dict:
    """{(topic, partition): offset} of a group (via list_consumer_group_offsets);
    partitions without a committed offset are left out."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    req = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions] if partitions else None)
    res = admin.list_consumer_group_offsets([req], request_timeout=OP_TIMEOUT_S)[group].result(timeout=OP_TIMEOUT_S)
    out = {}
    for tp in res.topic_partitions:
        assert tp.error is None, f"{tp}: {tp.error}"
        if tp.offset >= 0:
            out[(tp.topic, tp.partition)] = tp.offset
    return out
