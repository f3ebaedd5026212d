"""Consumer groups against Ferry with real clients: confluent-kafka
(librdkafka), kafka-python and aiokafka.

The rebalance and failover tests run each confluent-kafka consumer as its own
Python process (`GroupWorker`), so that one can be SIGKILLed by pid. A worker
writes everything it observes as JSON lines (assignments, rebalance
callbacks, every record it processed, every commit that succeeded) and the
test reads those files; the producer keeps producing numbered records while
members come and go, and at the end every produced record must have been
processed, and no record covered by a successful commit processed again.

Run with `pytest -s` to see the measured failover times.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import (
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec

from interop_util import (
    ERR_FENCED_INSTANCE_ID,
    ERR_ILLEGAL_GENERATION,
    ERR_INCONSISTENT_GROUP_PROTOCOL,
    ERR_INVALID_GROUP_ID,
    ERR_INVALID_SESSION_TIMEOUT,
    ERR_MEMBER_ID_REQUIRED,
    ERR_NONE,
    ERR_REBALANCE_IN_PROGRESS,
    ERR_UNKNOWN_MEMBER_ID,
    OP_TIMEOUT_S,
    RawKafka,
    admin_client,
    committed_offsets,
    create_topic,
    decode_consumer_assignment,
    describe_group,
    group_assignment,
    kafka_error_of,
    make_producer,
    produce_ok,
    unique_topic,
    wait_until,
)

HERE = Path(__file__).resolve().parent

# Fast groups: no initial rebalance delay, and short sessions allowed.
FAST_GROUPS = ("--group-initial-rebalance-delay-ms", "0", "--group-min-session-timeout-ms", "1000")

# Consumer settings shared by the confluent-kafka consumers here.
BASE_CONSUMER_CONF = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 100,
    "socket.timeout.ms": 10000,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 500,
    "topic.metadata.refresh.interval.ms": 5000,
}


# ---------------------------------------------------------------------------
# The worker process


def _worker_main(config_path: str) -> None:
    """Body of one consumer process (see GroupWorker). Exit status 0 after a
    clean close on SIGTERM, 3 after a fatal client error."""
    from confluent_kafka import Consumer

    cfg = json.loads(Path(config_path).read_text())
    topic = cfg["topic"]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out = open(cfg["events"], "a")

    def emit(ev: str, **kw) -> None:
        out.write(json.dumps({"ev": ev, "t": time.time(), **kw}) + "\n")
        out.flush()

    def parts(tps) -> list:
        return sorted(tp.partition for tp in tps)

    conf = dict(BASE_CONSUMER_CONF)
    conf.update(
        {
            "bootstrap.servers": cfg["bootstrap"],
            "group.id": cfg["group"],
            "client.id": cfg["name"],
            "error_cb": lambda err: emit("error_cb", code=err.code(), name=err.name(), fatal=err.fatal(), msg=err.str()),
        }
    )
    conf.update(cfg["conf"])
    consumer = Consumer(conf)
    consumer.subscribe(
        [topic],
        on_assign=lambda c, tps: emit("assign_cb", parts=parts(tps)),
        on_revoke=lambda c, tps: emit("revoke_cb", parts=parts(tps)),
        on_lost=lambda c, tps: emit("lost_cb", parts=parts(tps)),
    )
    emit("started", pid=os.getpid())
    status = 0
    last_assignment = None
    try:
        while not stop.is_set():
            msgs = consumer.consume(num_messages=500, timeout=0.1)
            lines = []
            commit = {}
            for m in msgs:
                err = m.error()
                if err is not None:
                    # librdkafka raises a fatal error as an _FATAL event.
                    fatal = err.fatal() or err.code() == KafkaError._FATAL
                    emit("consume_error", code=err.code(), name=err.name(), fatal=fatal, msg=err.str())
                    if fatal:
                        status = 3
                        stop.set()
                    continue
                now = time.time()
                lines.append(json.dumps({"ev": "rec", "t": now, "p": m.partition(), "o": m.offset(), "v": m.value().decode()}))
                commit[m.partition()] = m.offset() + 1
            if lines:
                # "Processing": the record is on disk before its commit.
                out.write("\n".join(lines) + "\n")
                out.flush()
            if commit and status == 0:
                try:
                    result = consumer.commit(
                        offsets=[TopicPartition(topic, p, o) for p, o in sorted(commit.items())], asynchronous=False
                    )
                    ok = {tp.partition: tp.offset for tp in result if tp.error is None}
                    bad = {tp.partition: str(tp.error) for tp in result if tp.error is not None}
                    if ok:
                        emit("commit", offsets={str(p): o for p, o in ok.items()})
                    if bad:
                        emit("commit_error", errors=bad)
                except KafkaException as e:
                    emit("commit_error", errors={"all": str(e)})
            current = parts(consumer.assignment())
            if current != last_assignment:
                emit("assignment", parts=current)
                last_assignment = current
    finally:
        consumer.close()
        emit("closed")
        out.close()
    sys.exit(status)


class GroupWorker:
    """A confluent-kafka group consumer in its own process, and what it wrote."""

    def __init__(self, root: Path, name: str, bootstrap: str, group: str, topic: str, conf: dict):
        self.name = name
        self.events_path = root / f"worker-{name}.jsonl"
        self.stderr_path = root / f"worker-{name}.stderr"
        self.config_path = root / f"worker-{name}.json"
        self.config_path.write_text(
            json.dumps(
                dict(bootstrap=bootstrap, group=group, topic=topic, name=name, events=str(self.events_path), conf=conf)
            )
        )
        self.proc: subprocess.Popen | None = None
        self.events: list = []
        self._read_pos = 0
        self._partial = b""

    def start(self) -> "GroupWorker":
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "import test_groups; test_groups._worker_main(sys.argv[2])"
        )
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(HERE), str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=str(HERE),
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def refresh(self) -> list:
        """Reads newly written events; returns them."""
        try:
            with open(self.events_path, "rb") as f:
                f.seek(self._read_pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self._read_pos += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        new = [json.loads(line) for line in lines if line]
        self.events.extend(new)
        return new

    def of(self, kind: str, since: float = 0.0) -> list:
        return [e for e in self.events if e["ev"] == kind and e["t"] > since]

    def assignment(self) -> list | None:
        a = self.of("assignment")
        return a[-1]["parts"] if a else None

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)

    def wait(self, timeout: float = 2 * OP_TIMEOUT_S) -> int:
        # librdkafka's close() (commit, LeaveGroup, rebalance callbacks) has
        # been seen to take over 15 s on a loaded 2-core CI machine.
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def summary(self) -> str:
        self.refresh()
        tail = [e for e in self.events if e["ev"] != "rec"][-12:]
        try:
            stderr = self.stderr_path.read_text(errors="replace")[-1500:]
        except FileNotFoundError:
            stderr = ""
        return f"worker {self.name} (pid {self.proc.pid if self.proc else None}, status {self.proc.poll() if self.proc else None}): events {tail}; stderr: {stderr!r}"


@pytest.fixture
def workers(tmp_path):
    """Starts GroupWorkers; any still running at teardown are SIGKILLed by pid."""
    started: list[GroupWorker] = []

    def start(name: str, bootstrap: str, group: str, topic: str, **conf) -> GroupWorker:
        w = GroupWorker(tmp_path, name, bootstrap, group, topic, conf).start()
        started.append(w)
        return w

    yield start
    for w in started:
        if w.alive():
            os.kill(w.pid, signal.SIGKILL)
            w.proc.wait(timeout=10)


class NumberedProducer(threading.Thread):
    """Produces "0", "1", ... round-robin over the partitions, one every
    `interval` seconds, until stopped; remembers where each one landed."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.topic, self.partitions, self.interval = topic, partitions, interval
        self.producer = make_producer(bootstrap, **{"linger.ms": 0})
        self.stop_event = threading.Event()
        self.sent = 0
        self.delivered: dict = {}
        self.errors: list = []

    def _report(self, err, msg) -> None:
        if err is not None:
            self.errors.append((msg.value(), err))
        else:
            self.delivered[int(msg.value())] = (msg.partition(), msg.offset())

    def run(self) -> None:
        while not self.stop_event.is_set():
            n = self.sent
            self.producer.produce(self.topic, value=str(n).encode(), partition=n % self.partitions, on_delivery=self._report)
            self.sent += 1
            self.producer.poll(0)
            self.stop_event.wait(self.interval)
        self.producer.flush(OP_TIMEOUT_S)

    def finish(self) -> dict:
        """Stops, waits for every delivery; returns {n: (partition, offset)}."""
        self.stop_event.set()
        self.join(OP_TIMEOUT_S + 5)
        assert not self.is_alive(), "producer thread did not stop"
        assert self.errors == [], f"deliveries failed: {self.errors[:5]}"
        assert sorted(self.delivered) == list(range(self.sent)), "some deliveries never reported"
        return dict(self.delivered)


def wait_for_assignment(admin, group: str, topic: str, members: list, partitions: int, sizes: list, timeout: float = 30.0) -> dict:
    """Waits until the group is Stable with exactly `members`, each owning
    (by its own account and by DescribeGroups alike) a disjoint share of the
    topic's partitions, all of them owned, with shares of `sizes` (sorted).
    Returns {name: [partitions]}."""
    last = {}

    def check():
        reported = {}
        for w in members:
            w.refresh()
            reported[w.name] = w.assignment()
        last["reported"] = reported
        if any(v is None for v in reported.values()):
            return None
        desc = describe_group(admin, group)
        server = {cid: [p for t, p in tps if t == topic] for cid, tps in group_assignment(desc).items()}
        last["server"], last["state"] = server, desc.state
        if desc.state != ConsumerGroupState.STABLE or server != reported:
            return None
        owned = sorted(p for ps in reported.values() for p in ps)
        if owned != list(range(partitions)) or sorted(len(ps) for ps in reported.values()) != sizes:
            return None
        return reported

    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            details = "\n".join(w.summary() for w in members)
            raise AssertionError(f"group {group} never reached shares {sizes} among {[w.name for w in members]}; last seen {last}\n{details}")
        time.sleep(0.1)


def check_processing(all_workers: list, produced: dict) -> dict:
    """Every produced record was processed, at the offset it was written to,
    and none was processed again after a commit covering it had succeeded.
    Returns {n: [worker names that processed it]}."""
    commits = []  # (t, partition, offset)
    for w in all_workers:
        w.refresh()
        for c in w.of("commit"):
            commits.extend((c["t"], int(p), o) for p, o in c["offsets"].items())
    processed: dict = {}
    misplaced = []
    late = []
    for w in all_workers:
        for r in w.of("rec"):
            n = int(r["v"])
            if produced.get(n) != (r["p"], r["o"]):
                misplaced.append((n, r["p"], r["o"], produced.get(n)))
            processed.setdefault(n, []).append(w.name)
            # A commit beyond this offset, done before this processing: the
            # group re-delivered a committed record.
            covering = [c for c in commits if c[1] == r["p"] and c[2] > r["o"] and c[0] < r["t"]]
            if covering:
                late.append((w.name, r["p"], r["o"], min(covering)))
    assert misplaced == [], f"(n, partition, offset, produced at): {misplaced[:10]}"
    # Between two rebalance callbacks, a member sees each partition's
    # records in order with no gap and no repeat.
    jumps = []
    for w in all_workers:
        last: dict = {}
        for e in w.events:
            if e["ev"] in ("assign_cb", "revoke_cb", "lost_cb"):
                last = {}
            elif e["ev"] == "rec":
                if e["p"] in last and e["o"] != last[e["p"]] + 1:
                    jumps.append((w.name, e["p"], last[e["p"]], e["o"]))
                last[e["p"]] = e["o"]
    assert jumps == [], f"(worker, partition, offset, next offset): {jumps[:10]}"
    missing = sorted(set(produced) - set(processed))
    assert missing == [], f"{len(missing)} produced records never processed: {missing[:20]}"
    assert sorted(processed) == sorted(produced)
    assert late == [], f"records processed again after a commit covered them (worker, p, o, commit): {late[:10]}"
    return processed


# ---------------------------------------------------------------------------
# 1. Rebalancing and failover with confluent-kafka processes

SESSION_MS = 3000


@pytest.mark.ferry_args(*FAST_GROUPS)
@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_rebalance_and_failover_lose_nothing(ferry, workers, strategy):
    """3 members share 6 partitions 2/2/2; a 4th joins (2/2/1/1); one member
    is SIGKILLed and after its session times out the survivors own all six;
    a producer runs throughout and every record is processed."""
    topic = unique_topic(f"fail-{strategy}")
    group = f"g-{topic}"
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=6)
    conf = {
        "partition.assignment.strategy": strategy,
        "session.timeout.ms": SESSION_MS,
        "heartbeat.interval.ms": 300,
        "max.poll.interval.ms": 30000,
    }
    producer = NumberedProducer(ferry.bootstrap, topic, 6)
    producer.start()
    try:
        a, b, c = (workers(n, ferry.bootstrap, group, topic, **conf) for n in ("a", "b", "c"))
        three = wait_for_assignment(admin, group, topic, [a, b, c], 6, [2, 2, 2])
        desc = describe_group(admin, group)
        assert desc.partition_assignor == strategy
        assert not desc.is_simple_consumer_group

        d = workers("d", ferry.bootstrap, group, topic, **conf)
        four = wait_for_assignment(admin, group, topic, [a, b, c, d], 6, [1, 1, 2, 2])
        assert all(four[n] for n in "abcd")
        if strategy == "cooperative-sticky":
            # Sticky: the old members kept what they had, minus what d took.
            assert all(set(four[n]) <= set(three[n]) for n in "abc"), (three, four)

        # The victim owns two partitions and is consuming both.
        victim = next(w for w in (a, b, c, d) if len(four[w.name]) == 2)
        survivors = [w for w in (a, b, c, d) if w is not victim]
        dead_parts = four[victim.name]
        since = victim.of("assignment")[-1]["t"]
        wait_until(
            lambda: victim.refresh() is not None and {r["p"] for r in victim.of("rec", since)} >= set(dead_parts),
            what=f"{victim.name} consuming {dead_parts}",
        )
        t_kill = time.time()
        victim.kill9()
        after = wait_for_assignment(admin, group, topic, survivors, 6, [2, 2, 2], timeout=SESSION_MS / 1000 + 20)
        if strategy == "cooperative-sticky":
            assert all(set(four[w.name]) <= set(after[w.name]) for w in survivors), (four, after)
            revoked = {w.name: w.of("revoke_cb", t_kill) for w in survivors}
            assert all(not v or all(not e["parts"] for e in v) for v in revoked.values()), revoked

        # Failover: from SIGKILL to a survivor processing each dead partition.
        def resumed():
            firsts = {}
            for p in dead_parts:
                ts = [r["t"] for w in survivors for r in w.of("rec", t_kill) if r["p"] == p]
                if not ts:
                    return None
                firsts[p] = min(ts)
            return firsts

        firsts = wait_until(lambda: [w.refresh() for w in survivors] and resumed(), timeout=20, what="dead partitions consumed again")
        reassigned = max(
            min(e["t"] for w in survivors for e in w.of("assign_cb", t_kill) if p in e["parts"]) for p in dead_parts
        )
        failover = max(firsts.values()) - t_kill
        print(
            f"\n[failover] {strategy}: session.timeout.ms={SESSION_MS}: partitions {dead_parts} of {victim.name} "
            f"reassigned {reassigned - t_kill:.2f}s and consumed again {failover:.2f}s after SIGKILL"
        )
        assert failover <= SESSION_MS / 1000 + 5, f"failover took {failover:.2f}s"
        assert failover >= SESSION_MS / 1000 - 0.5, f"partitions moved {failover:.2f}s after the kill, before the session could expire"
    finally:
        producer.stop_event.set()
    produced = producer.finish()

    # Drain: every record processed, then the survivors close cleanly.
    everyone = [a, b, c, d]
    wait_until(
        lambda: [w.refresh() for w in survivors] and {int(r["v"]) for w in everyone for r in w.of("rec")} >= set(produced),
        timeout=30,
        what="every produced record processed",
    )
    ends = {}
    for n, (p, o) in produced.items():
        ends[(topic, p)] = max(ends.get((topic, p), 0), o + 1)
    wait_until(lambda: committed_offsets(admin, group) == ends, what=f"committed offsets == end offsets {ends}")
    for w in survivors:
        w.terminate()
    for w in survivors:
        assert w.wait() == 0, w.summary()
    processed = check_processing(everyone, produced)
    dups = {n: ws for n, ws in processed.items() if len(ws) > 1}
    print(f"[failover] {strategy}: {len(produced)} records, {len(dups)} processed twice (at-least-once)")
    assert committed_offsets(admin, group) == ends
    assert describe_group(admin, group).state == ConsumerGroupState.EMPTY


# ---------------------------------------------------------------------------
# 2. kafka-python and aiokafka group consumers


def produce_grid(bootstrap: str, topic: str, partitions: int, per_partition: int) -> dict:
    """Produces "p<p>-<i>" to each partition; returns {partition: [values]}."""
    msgs = [dict(partition=p, value=f"p{p}-{i}".encode()) for i in range(per_partition) for p in range(partitions)]
    placed = produce_ok(make_producer(bootstrap), topic, msgs)
    want: dict = {p: [] for p in range(partitions)}
    for m, (p, o) in zip(msgs, placed):
        assert o == len(want[p])
        want[p].append(m["value"])
    return want


def kp_values(records) -> dict:
    out: dict = {}
    for r in records:
        out.setdefault(r.partition, []).append((r.offset, r.value))
    return out


def grid_view(want: dict, start: dict) -> dict:
    """{partition: [(offset, value)]} of `want` from offsets `start`."""
    return {p: [(o, v) for o, v in enumerate(vals) if o >= start.get(p, 0)] for p, vals in want.items() if len(vals) > start.get(p, 0)}


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_kafka_python_group_consumer(ferry):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    from kafka.structs import OffsetAndMetadata

    topic = unique_topic("kp-group")
    group = f"g-{topic}"
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=3)
    want = produce_grid(ferry.bootstrap, topic, 3, 10)

    def consumer(client_id):
        c = KafkaConsumer(
            bootstrap_servers=ferry.bootstrap,
            group_id=group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            fetch_max_wait_ms=100,
            request_timeout_ms=int(OP_TIMEOUT_S * 1000),
        )
        c.subscribe([topic])
        return c

    def poll_n(c, n):
        out = []
        deadline = time.monotonic() + OP_TIMEOUT_S
        while len(out) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out.extend(recs)
        for recs in c.poll(timeout_ms=300).values():
            out.extend(recs)
        return out

    c1 = consumer("kp-one")
    try:
        got = poll_n(c1, 30)
        assert kp_values(got) == grid_view(want, {})
        assert c1.assignment() == {KTP(topic, p) for p in range(3)}
        desc = describe_group(admin, group)
        assert desc.state == ConsumerGroupState.STABLE
        assert group_assignment(desc) == {"kp-one": [(topic, 0), (topic, 1), (topic, 2)]}
        assert desc.partition_assignor == "range"

        c1.commit({KTP(topic, 0): OffsetAndMetadata(4, "kp-meta", -1), KTP(topic, 1): OffsetAndMetadata(10, "", -1)})
        assert c1.committed(KTP(topic, 0)) == 4
        assert c1.committed(KTP(topic, 1)) == 10
        assert c1.committed(KTP(topic, 2)) is None
        assert c1.committed(KTP(topic, 0), metadata=True).metadata == "kp-meta"
        assert committed_offsets(admin, group) == {(topic, 0): 4, (topic, 1): 10}
    finally:
        c1.close()
    wait_until(lambda: describe_group(admin, group).state == ConsumerGroupState.EMPTY, what="group empty after close")

    # A new member resumes from the commits: p0 from 4, p2 from the start.
    c2 = consumer("kp-two")
    try:
        got = poll_n(c2, 6 + 10)
        assert kp_values(got) == grid_view(want, {0: 4, 1: 10})
        c2.commit()  # positions: the end of every partition
        assert {p: c2.committed(KTP(topic, p)) for p in range(3)} == {0: 10, 1: 10, 2: 10}
    finally:
        c2.close()
    assert committed_offsets(admin, group) == {(topic, p): 10 for p in range(3)}


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_aiokafka_group_consumer(ferry):
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import OffsetAndMetadata
    from aiokafka.structs import TopicPartition as ATP

    topic = unique_topic("aio-group")
    group = f"g-{topic}"
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=3)
    want = produce_grid(ferry.bootstrap, topic, 3, 10)

    async def consume(c, n):
        out = []
        deadline = time.monotonic() + OP_TIMEOUT_S
        while len(out) < n and time.monotonic() < deadline:
            for recs in (await c.getmany(timeout_ms=200)).values():
                out.extend(recs)
        for recs in (await c.getmany(timeout_ms=300)).values():
            out.extend(recs)
        return out

    def consumer(client_id):
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=ferry.bootstrap,
            group_id=group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            fetch_max_wait_ms=100,
            request_timeout_ms=int(OP_TIMEOUT_S * 1000),
        )

    async def first():
        c = consumer("aio-one")
        await c.start()
        try:
            got = await consume(c, 30)
            assert kp_values(got) == grid_view(want, {})
            assert c.assignment() == {ATP(topic, p) for p in range(3)}
            desc = describe_group(admin, group)
            assert desc.state == ConsumerGroupState.STABLE
            assert group_assignment(desc) == {"aio-one": [(topic, 0), (topic, 1), (topic, 2)]}
            assert desc.partition_assignor == "roundrobin"
            await c.commit({ATP(topic, 0): OffsetAndMetadata(7, "aio-meta"), ATP(topic, 2): 10})
            assert await c.committed(ATP(topic, 0)) == 7
            assert await c.committed(ATP(topic, 2)) == 10
            assert await c.committed(ATP(topic, 1)) is None
        finally:
            await c.stop()

    async def second():
        c = consumer("aio-two")
        await c.start()
        try:
            got = await consume(c, 3 + 10)
            assert kp_values(got) == grid_view(want, {0: 7, 2: 10})
            await c.commit()
            assert [await c.committed(ATP(topic, p)) for p in range(3)] == [10, 10, 10]
        finally:
            await c.stop()

    asyncio.run(first())
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])])[group].result(
        timeout=OP_TIMEOUT_S
    )
    assert [(tp.offset, tp.metadata) for tp in res.topic_partitions] == [(7, "aio-meta")]
    wait_until(lambda: describe_group(admin, group).state == ConsumerGroupState.EMPTY, what="group empty after stop")
    asyncio.run(second())
    assert committed_offsets(admin, group) == {(topic, p): 10 for p in range(3)}


class _ThreadedMember(threading.Thread):
    """A group member of some client library, polling in its own thread."""

    def __init__(self, name: str):
        super().__init__(daemon=True)
        self.name_ = name
        self.records: list = []  # (partition, offset, value)
        self.assignment: list = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.closed = threading.Event()

    def run(self):
        try:
            self.body()
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.closed.set()

    def finish(self):
        self.stop_event.set()
        assert self.closed.wait(OP_TIMEOUT_S + 5), f"{self.name_} did not stop"
        if self.error is not None:
            raise AssertionError(f"{self.name_} failed: {self.error!r}") from self.error


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_mixed_client_group_agrees_on_roundrobin(ferry):
    """confluent-kafka (range, roundrobin), kafka-python (range, roundrobin)
    and aiokafka (roundrobin) in one group: the coordinator picks the one
    protocol they all support, whichever client leads assigns for the
    others, and each consumes exactly its own partitions."""
    from aiokafka import AIOKafkaConsumer
    from confluent_kafka import Consumer
    from kafka import KafkaConsumer

    topic = unique_topic("mixed")
    group = f"g-{topic}"
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=6)

    class Confluent(_ThreadedMember):
        def body(self):
            conf = dict(BASE_CONSUMER_CONF, **{"bootstrap.servers": ferry.bootstrap, "group.id": group, "client.id": self.name_,
                                               "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
            c = Consumer(conf)
            c.subscribe([topic])
            try:
                while not self.stop_event.is_set():
                    m = c.poll(0.1)
                    if m is not None:
                        assert m.error() is None, m.error()
                        self.records.append((m.partition(), m.offset(), m.value()))
                        c.commit(m, asynchronous=False)
                    self.assignment = sorted(tp.partition for tp in c.assignment())
            finally:
                c.close()

    class KafkaPython(_ThreadedMember):
        def body(self):
            c = KafkaConsumer(bootstrap_servers=ferry.bootstrap, group_id=group, client_id=self.name_, enable_auto_commit=False,
                              auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=500, fetch_max_wait_ms=100)
            c.subscribe([topic])
            try:
                while not self.stop_event.is_set():
                    batch = c.poll(timeout_ms=100)
                    for recs in batch.values():
                        self.records.extend((r.partition, r.offset, r.value) for r in recs)
                    if batch:
                        c.commit()
                    self.assignment = sorted(tp.partition for tp in c.assignment())
            finally:
                c.close()

    class AioKafka(_ThreadedMember):
        def body(self):
            async def main():
                c = AIOKafkaConsumer(topic, bootstrap_servers=ferry.bootstrap, group_id=group, client_id=self.name_,
                                     enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=6000,
                                     heartbeat_interval_ms=500, fetch_max_wait_ms=100)
                await c.start()
                try:
                    while not self.stop_event.is_set():
                        batch = await c.getmany(timeout_ms=100)
                        for recs in batch.values():
                            self.records.extend((r.partition, r.offset, r.value) for r in recs)
                        if batch:
                            await c.commit()
                        self.assignment = sorted(tp.partition for tp in c.assignment())
                finally:
                    await c.stop()

            asyncio.run(main())

    members = [Confluent("m-confluent"), KafkaPython("m-kafka-python"), AioKafka("m-aiokafka")]
    for m in members:
        m.start()
    try:
        def stable():
            for m in members:
                if m.error is not None:
                    raise AssertionError(f"{m.name_} failed: {m.error!r}")
            desc = describe_group(admin, group)
            own = {m.name_: m.assignment for m in members}
            server = {cid: [p for _, p in tps] for cid, tps in group_assignment(desc).items()}
            if desc.state == ConsumerGroupState.STABLE and server == own and sorted(sum(own.values(), [])) == list(range(6)):
                return desc
            return None

        desc = wait_until(stable, timeout=30, what="a stable group of three clients owning all partitions")
        assert desc.partition_assignor == "roundrobin"
        # RoundRobinAssignor: members sorted by id take partitions in turn.
        by_id = sorted(desc.members, key=lambda m: m.member_id)
        assert [sorted(tp.partition for tp in m.assignment.topic_partitions) for m in by_id] == [[0, 3], [1, 4], [2, 5]]
        owner = {p: m.client_id for m in desc.members for p in (tp.partition for tp in m.assignment.topic_partitions)}

        want = produce_grid(ferry.bootstrap, topic, 6, 5)
        wait_until(lambda: sum(len(m.records) for m in members) >= 30, what="30 records consumed")
        ends = {(topic, p): 5 for p in range(6)}
        wait_until(lambda: committed_offsets(admin, group) == ends, what="every member committed")
    finally:
        for m in members:
            m.stop_event.set()
        for m in members:
            m.finish()
    for m in members:
        mine = sorted(p for p, o in owner.items() if o == m.name_)
        assert sorted(m.records) == sorted((p, o, v) for p in mine for o, v in enumerate(want[p])), m.name_
    assert describe_group(admin, group).state == ConsumerGroupState.EMPTY


# ---------------------------------------------------------------------------
# 3. Broker restarts


def _consumer(bootstrap: str, group: str, **extra):
    from confluent_kafka import Consumer

    conf = dict(BASE_CONSUMER_CONF, **{"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000,
                                       "heartbeat.interval.ms": 500})
    conf.update(extra)
    return Consumer(conf)


def poll_records(consumer, n: int, timeout: float = OP_TIMEOUT_S, drain: float = 0.5) -> list:
    """(partition, offset, value) of the next `n` records and of any that
    arrive within `drain` seconds after them."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"got {len(out)} of {n} records: {out[-3:]}"
        m = consumer.poll(0.2)
        if m is None:
            continue
        assert m.error() is None, m.error()
        out.append((m.partition(), m.offset(), m.value()))
    end = time.monotonic() + drain
    while time.monotonic() < end:
        m = consumer.poll(0.1)
        if m is not None:
            assert m.error() is None, m.error()
            out.append((m.partition(), m.offset(), m.value()))
    return out


def grid_records(want: dict, start: dict) -> list:
    return sorted((p, o, v) for p, vals in want.items() for o, v in enumerate(vals) if o >= start.get(p, 0))


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_group_resumes_from_committed_offsets_after_restart(ferry):
    topic = unique_topic("restart")
    group = f"g-{topic}"
    create_topic(ferry.bootstrap, topic, partitions=3)
    want = produce_grid(ferry.bootstrap, topic, 3, 20)
    half = {0: 10, 1: 7, 2: 13}

    c = _consumer(ferry.bootstrap, group)
    c.subscribe([topic])
    try:
        assert sorted(poll_records(c, 60)) == grid_records(want, {})
        c.commit(offsets=[TopicPartition(topic, p, o, metadata=f"half-{p}") for p, o in half.items()], asynchronous=False)
    finally:
        c.close()

    ferry.restart()
    admin = admin_client(ferry.bootstrap)
    assert committed_offsets(admin, group) == {(topic, p): o for p, o in half.items()}
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=OP_TIMEOUT_S)
    assert sorted((tp.partition, tp.offset, tp.metadata) for tp in res.topic_partitions) == [
        (p, o, f"half-{p}") for p, o in sorted(half.items())
    ]
    listed = admin.list_consumer_groups(request_timeout=OP_TIMEOUT_S).result(timeout=OP_TIMEOUT_S)
    assert [(g.group_id, g.state) for g in listed.valid] == [(group, ConsumerGroupState.EMPTY)]

    c = _consumer(ferry.bootstrap, group)
    c.subscribe([topic])
    try:
        # Exactly the records after the commits: none before, none missed.
        assert sorted(poll_records(c, 60 - sum(half.values()), drain=1.0)) == grid_records(want, half)
        c.commit(asynchronous=False)
    finally:
        c.close()
    assert committed_offsets(admin, group) == {(topic, p): 20 for p in range(3)}


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_live_member_rejoins_after_restart_and_continues(ferry):
    """A consumer that stays up while the broker restarts rejoins the group
    (its member id is gone) and continues after its committed offsets."""
    topic = unique_topic("live-restart")
    group = f"g-{topic}"
    create_topic(ferry.bootstrap, topic, partitions=2)
    producer = make_producer(ferry.bootstrap)
    first = [dict(partition=i % 2, value=b"before-%d" % i) for i in range(10)]
    produce_ok(producer, topic, first)
    admin = admin_client(ferry.bootstrap)

    c = _consumer(ferry.bootstrap, group, **{"client.id": "survivor", "session.timeout.ms": 3000, "heartbeat.interval.ms": 300})
    c.subscribe([topic])
    try:
        got = poll_records(c, 10)
        assert sorted(got) == sorted((i % 2, i // 2, b"before-%d" % i) for i in range(10))
        c.commit(asynchronous=False)
        old_member = describe_group(admin, group).members[0].member_id

        ferry.restart()
        admin = admin_client(ferry.bootstrap)
        producer = make_producer(ferry.bootstrap)
        produce_ok(producer, topic, [dict(partition=i % 2, value=b"after-%d" % i) for i in range(10)])
        got = poll_records(c, 10, timeout=30, drain=1.0)
        assert sorted(got) == sorted((i % 2, 5 + i // 2, b"after-%d" % i) for i in range(10))
        c.commit(asynchronous=False)
        desc = describe_group(admin, group)
        assert desc.state == ConsumerGroupState.STABLE
        assert [m.client_id for m in desc.members] == ["survivor"]
        assert desc.members[0].member_id != old_member
        assert committed_offsets(admin, group) == {(topic, 0): 10, (topic, 1): 10}
    finally:
        c.close()


# ---------------------------------------------------------------------------
# 4. Admin API


def poll_all(consumers: list, until, timeout: float = 30.0, what: str = "condition") -> list:
    """Polls every consumer in turn (each must be served for rebalances to
    complete) until `until()` is true; returns the records received, as
    (partition, offset, value)."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        for c in consumers:
            m = c.poll(0.05)
            if m is None:
                continue
            assert m.error() is None or m.error().code() == KafkaError._PARTITION_EOF, m.error()
            if m.error() is None:
                got.append((m.partition(), m.offset(), m.value()))
        if until():
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"


def listed_groups(admin, **kw) -> dict:
    res = admin.list_consumer_groups(request_timeout=OP_TIMEOUT_S, **kw).result(timeout=OP_TIMEOUT_S)
    assert res.errors == []
    return {g.group_id: g.state for g in res.valid}


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_admin_list_and_describe_groups(ferry):
    topic = unique_topic("adm")
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=4)
    produce_grid(ferry.bootstrap, topic, 4, 3)
    live, empty, simple = "g-live", "g-empty", "g-simple"

    # An empty group that had subscribed members, and a "simple" one that
    # only ever committed offsets (assign(), generation -1).
    c = _consumer(ferry.bootstrap, empty)
    c.subscribe([topic])
    try:
        poll_records(c, 12, drain=0)
        c.commit(asynchronous=False)
    finally:
        c.close()
    s = _consumer(ferry.bootstrap, simple)
    try:
        s.commit(offsets=[TopicPartition(topic, 1, 2)], asynchronous=False)
    finally:
        s.close()

    members = [_consumer(ferry.bootstrap, live, **{"client.id": f"live-{i}"}) for i in range(2)]
    try:
        for m in members:
            m.subscribe([topic])

        def settled():
            owned = [sorted(tp.partition for tp in m.assignment()) for m in members]
            return sorted(sum(owned, [])) == [0, 1, 2, 3] and all(owned) and describe_group(admin, live).state == ConsumerGroupState.STABLE

        poll_all(members, settled, what="two live members sharing 4 partitions")

        assert listed_groups(admin) == {live: ConsumerGroupState.STABLE, empty: ConsumerGroupState.EMPTY, simple: ConsumerGroupState.EMPTY}
        assert listed_groups(admin, states={ConsumerGroupState.STABLE}) == {live: ConsumerGroupState.STABLE}
        assert listed_groups(admin, states={ConsumerGroupState.EMPTY}) == {empty: ConsumerGroupState.EMPTY, simple: ConsumerGroupState.EMPTY}
        assert listed_groups(admin, states={ConsumerGroupState.PREPARING_REBALANCING}) == {}

        futures = admin.describe_consumer_groups([live, empty, simple], request_timeout=OP_TIMEOUT_S)
        d_live, d_empty, d_simple = (futures[g].result(timeout=OP_TIMEOUT_S) for g in (live, empty, simple))
        assert (d_live.group_id, d_live.state, d_live.partition_assignor, d_live.is_simple_consumer_group) == (
            live, ConsumerGroupState.STABLE, "range", False)
        assert (d_live.coordinator.host, d_live.coordinator.port) == (ferry.host, ferry.port)
        # Range over members sorted by id: the first takes 0-1, the second 2-3.
        by_id = sorted(d_live.members, key=lambda m: m.member_id)
        assert [sorted(tp.partition for tp in m.assignment.topic_partitions) for m in by_id] == [[0, 1], [2, 3]]
        for m in d_live.members:
            mine = members[["live-0", "live-1"].index(m.client_id)]
            assert sorted((tp.topic, tp.partition) for tp in mine.assignment()) == sorted(
                (tp.topic, tp.partition) for tp in m.assignment.topic_partitions
            )
            assert m.host.lstrip("/") == "127.0.0.1"
            assert m.group_instance_id is None
        assert sorted(m.client_id for m in d_live.members) == ["live-0", "live-1"]
        assert (d_empty.state, d_empty.members) == (ConsumerGroupState.EMPTY, [])
        assert (d_simple.state, d_simple.members, d_simple.is_simple_consumer_group) == (ConsumerGroupState.EMPTY, [], True)

        # A group nobody ever used: Kafka 3.7 describes it as Dead.
        unknown = admin.describe_consumer_groups(["no-such-group"], request_timeout=OP_TIMEOUT_S)["no-such-group"]
        try:
            d = unknown.result(timeout=OP_TIMEOUT_S)
            assert (d.state, d.members) == (ConsumerGroupState.DEAD, [])
        except KafkaException as e:
            assert kafka_error_of(e).code() == KafkaError.GROUP_ID_NOT_FOUND
    finally:
        for m in members:
            m.close()
    wait_until(lambda: listed_groups(admin, states={ConsumerGroupState.STABLE}) == {}, what="live group empty after close")


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_empty_group_keeps_its_protocol_type(ferry):
    """Kafka keeps an empty group's protocol type ("consumer") once members
    used it, so admin clients do not mistake it for a simple group."""
    topic = unique_topic("ptype")
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=1)
    c = _consumer(ferry.bootstrap, "g-was-consumer")
    c.subscribe([topic])
    try:
        poll_all([c], lambda: c.assignment() != [], what="assignment")
        c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        c.close()
    wait_until(lambda: describe_group(admin, "g-was-consumer").state == ConsumerGroupState.EMPTY, what="group empty")
    listing = admin.list_consumer_groups(request_timeout=OP_TIMEOUT_S).result(timeout=OP_TIMEOUT_S).valid
    assert [(g.group_id, g.is_simple_consumer_group) for g in listing] == [("g-was-consumer", False)]
    assert describe_group(admin, "g-was-consumer").is_simple_consumer_group is False


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_admin_group_offsets_alter_reset_and_delete(ferry):
    topic = unique_topic("adm-off")
    group = f"g-{topic}"
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=3)
    want = produce_grid(ferry.bootstrap, topic, 3, 10)

    c = _consumer(ferry.bootstrap, group)
    c.subscribe([topic])
    try:
        assert sorted(poll_records(c, 30)) == grid_records(want, {})
        c.commit(asynchronous=False)
    finally:
        c.close()
    wait_until(lambda: describe_group(admin, group).state == ConsumerGroupState.EMPTY, what="group empty")
    assert committed_offsets(admin, group) == {(topic, p): 10 for p in range(3)}
    res = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 2), TopicPartition(topic, 0)])]
    )[group].result(timeout=OP_TIMEOUT_S)
    assert sorted((tp.partition, tp.offset, tp.error) for tp in res.topic_partitions) == [(0, 10, None), (2, 10, None)]

    # Reset an empty group: p0 to earliest, p1 to a specific offset, p2 stays.
    tp0 = TopicPartition(topic, 0)
    earliest = admin.list_offsets({tp0: OffsetSpec.earliest()}, request_timeout=OP_TIMEOUT_S)[tp0].result(timeout=OP_TIMEOUT_S).offset
    assert earliest == 0
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, earliest), TopicPartition(topic, 1, 6, metadata="reset")])
    res = admin.alter_consumer_group_offsets([req], request_timeout=OP_TIMEOUT_S)[group].result(timeout=OP_TIMEOUT_S)
    assert sorted((tp.partition, tp.offset, tp.error) for tp in res.topic_partitions) == [(0, 0, None), (1, 6, None)]
    assert committed_offsets(admin, group) == {(topic, 0): 0, (topic, 1): 6, (topic, 2): 10}

    c = _consumer(ferry.bootstrap, group, **{"client.id": "after-reset"})
    c.subscribe([topic])
    try:
        assert sorted(poll_records(c, 10 + 4, drain=1.0)) == grid_records(want, {0: 0, 1: 6, 2: 10})
        # While the group has a member, admin commits are refused (Kafka:
        # UNKNOWN_MEMBER_ID), and the group cannot be deleted.
        req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 2, 0)])
        fut = admin.alter_consumer_group_offsets([req], request_timeout=OP_TIMEOUT_S)[group]
        try:
            res = fut.result(timeout=OP_TIMEOUT_S)
            codes = [tp.error.code() if tp.error else None for tp in res.topic_partitions]
        except KafkaException as e:
            codes = [kafka_error_of(e).code()]
        assert codes == [KafkaError.UNKNOWN_MEMBER_ID]
        assert committed_offsets(admin, group)[(topic, 2)] == 10

        futures = admin.delete_consumer_groups([group, "never-existed"], request_timeout=OP_TIMEOUT_S)
        with pytest.raises(KafkaException) as info:
            futures[group].result(timeout=OP_TIMEOUT_S)
        assert kafka_error_of(info.value).code() == KafkaError.NON_EMPTY_GROUP
        with pytest.raises(KafkaException) as info:
            futures["never-existed"].result(timeout=OP_TIMEOUT_S)
        assert kafka_error_of(info.value).code() == KafkaError.GROUP_ID_NOT_FOUND
        c.commit(asynchronous=False)
    finally:
        c.close()
    wait_until(lambda: describe_group(admin, group).state == ConsumerGroupState.EMPTY, what="group empty")
    assert committed_offsets(admin, group) == {(topic, p): 10 for p in range(3)}

    admin.delete_consumer_groups([group], request_timeout=OP_TIMEOUT_S)[group].result(timeout=OP_TIMEOUT_S)
    assert listed_groups(admin) == {}
    assert committed_offsets(admin, group) == {}
    assert committed_offsets(admin, group, [(topic, 0)]) == {}
    with pytest.raises(KafkaException) as info:
        admin.delete_consumer_groups([group], request_timeout=OP_TIMEOUT_S)[group].result(timeout=OP_TIMEOUT_S)
    assert kafka_error_of(info.value).code() == KafkaError.GROUP_ID_NOT_FOUND

    # The deleted group starts over: from the earliest offsets.
    c = _consumer(ferry.bootstrap, group)
    c.subscribe([topic])
    try:
        assert sorted(poll_records(c, 30)) == grid_records(want, {})
    finally:
        c.close()


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_delete_group_offsets(ferry):
    """OffsetDelete (kafka-python's admin; confluent-kafka has no binding):
    refused for topics the live members subscribe to, done for the rest."""
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP
    from kafka import errors as Errors

    sub, other = unique_topic("sub"), unique_topic("other")
    group = "g-offdel"
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, sub, partitions=2)
    create_topic(admin, other, partitions=2)
    produce_grid(ferry.bootstrap, sub, 2, 4)
    s = _consumer(ferry.bootstrap, group)
    try:
        s.commit(offsets=[TopicPartition(t, p, 3) for t in (sub, other) for p in range(2)], asynchronous=False)
    finally:
        s.close()
    kadmin = KafkaAdminClient(bootstrap_servers=ferry.bootstrap, request_timeout_ms=int(OP_TIMEOUT_S * 1000))
    try:
        # Empty group: any offset can go.
        assert kadmin.delete_group_offsets(group, [KTP(other, 1)]) == {KTP(other, 1): Errors.NoError}
        assert committed_offsets(admin, group) == {(sub, 0): 3, (sub, 1): 3, (other, 0): 3}

        c = _consumer(ferry.bootstrap, group)
        c.subscribe([sub])
        try:
            poll_all([c], lambda: len(c.assignment()) == 2 and describe_group(admin, group).state == ConsumerGroupState.STABLE,
                     what="member assigned")
            result = kadmin.delete_group_offsets(group, [KTP(sub, 0), KTP(other, 0)])
            assert result == {KTP(sub, 0): Errors.GroupSubscribedToTopicError, KTP(other, 0): Errors.NoError}
            assert committed_offsets(admin, group) == {(sub, 0): 3, (sub, 1): 3}
        finally:
            c.close()
        with pytest.raises(Errors.GroupIdNotFoundError):
            kadmin.delete_group_offsets("no-such-group", [KTP(sub, 0)])
    finally:
        kadmin.close()


# ---------------------------------------------------------------------------
# 5. Static membership


def rebalances_logged(ferry, group: str) -> int:
    return len(re.findall(rf"preparing rebalance group={re.escape(group)} ", ferry.log))


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_static_member_restart_keeps_partitions_without_rebalance(ferry, workers):
    topic = unique_topic("static")
    group = f"g-{topic}"
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=6)
    # A long session: the restart must happen well within it.
    conf = {"session.timeout.ms": 10000, "heartbeat.interval.ms": 300, "partition.assignment.strategy": "range"}
    static_conf = dict(conf, **{"group.instance.id": "static-s"})

    a = workers("a", ferry.bootstrap, group, topic, **conf)
    wait_for_assignment(admin, group, topic, [a], 6, [6])
    b = workers("b", ferry.bootstrap, group, topic, **conf)
    wait_for_assignment(admin, group, topic, [a, b], 6, [3, 3])
    s = workers("s", ferry.bootstrap, group, topic, **static_conf)
    wait_for_assignment(admin, group, topic, [a, b, s], 6, [2, 2, 2])
    # One more rebalance after s joined (a member comes and goes), so that
    # s's latest JoinGroup was a rejoin, as in any long-lived group.
    d = workers("d", ferry.bootstrap, group, topic, **conf)
    wait_for_assignment(admin, group, topic, [a, b, s, d], 6, [1, 1, 2, 2])
    d.terminate()
    assert d.wait() == 0
    before = wait_for_assignment(admin, group, topic, [a, b, s], 6, [2, 2, 2])

    desc = describe_group(admin, group)
    old = next(m for m in desc.members if m.group_instance_id == "static-s")
    assert old.client_id == "s"
    assert sorted(m.group_instance_id or "" for m in desc.members) == ["", "", "static-s"]
    rebalances = rebalances_logged(ferry, group)
    assert rebalances == 5, "expected one logged rebalance per membership change so far"
    callbacks = {w.name: len(w.of("assign_cb")) + len(w.of("revoke_cb")) for w in (a, b)}

    # A static member closes without leaving the group...
    s.terminate()
    assert s.wait() == 0, s.summary()
    assert f"member={old.member_id}" not in "\n".join(l for l in ferry.log.splitlines() if "left the group" in l)
    desc = describe_group(admin, group)
    assert desc.state == ConsumerGroupState.STABLE
    assert sorted(m.member_id for m in desc.members if m.group_instance_id == "static-s") == [old.member_id]

    # ...and its next incarnation takes its place and its partitions back.
    s2 = workers("s2", ferry.bootstrap, group, topic, **static_conf)
    wait_until(lambda: s2.refresh() is not None and s2.assignment() == before["s"], timeout=20,
               what=f"restarted static member owning {before['s']}")
    desc = describe_group(admin, group)
    assert desc.state == ConsumerGroupState.STABLE
    new = next(m for m in desc.members if m.group_instance_id == "static-s")
    assert new.member_id != old.member_id and new.client_id == "s2"
    assert group_assignment(desc) == {"a": [(topic, p) for p in before["a"]], "b": [(topic, p) for p in before["b"]],
                                      "s2": [(topic, p) for p in before["s"]]}
    # Nobody else noticed: no rebalance, no callbacks, same partitions.
    for w in (a, b):
        w.refresh()
    assert {w.name: len(w.of("assign_cb")) + len(w.of("revoke_cb")) for w in (a, b)} == callbacks
    assert {w.name: w.assignment() for w in (a, b)} == {"a": before["a"], "b": before["b"]}
    assert rebalances_logged(ferry, group) == rebalances, "the static member's restart caused a rebalance"

    # The old member id is fenced.
    with RawKafka(ferry.bootstrap) as raw:
        for generation in (0, 1, 5):
            assert raw.heartbeat(group, generation, old.member_id, "static-s") == ERR_FENCED_INSTANCE_ID
        assert raw.offset_commit(group, 5, old.member_id, {(topic, 0): 0}, instance_id="static-s") == {(topic, 0): ERR_FENCED_INSTANCE_ID}
        assert raw.heartbeat(group, 5, old.member_id) == ERR_UNKNOWN_MEMBER_ID

    # A second process with the same group.instance.id fences the first:
    # librdkafka reports a fatal error in the older one.
    s3 = workers("s3", ferry.bootstrap, group, topic, **static_conf)
    wait_until(lambda: s3.refresh() is not None and s3.assignment() == before["s"], timeout=20, what="s3 owning s's partitions")
    wait_until(lambda: not s2.alive(), timeout=20, what="s2 stopping on its fatal error")
    assert s2.wait() == 3, s2.summary()
    s2.refresh()
    fatal = [e for e in s2.of("consume_error") + s2.of("error_cb") if e["fatal"]]
    assert [e["code"] for e in fatal] == [KafkaError._FATAL], s2.summary()
    # librdkafka's text for FENCED_INSTANCE_ID.
    assert "Static consumer fenced by other consumer with same group.instance.id" in fatal[0]["msg"]
    for w in (a, b):
        w.refresh()
    assert {w.name: w.assignment() for w in (a, b)} == {"a": before["a"], "b": before["b"]}
    assert rebalances_logged(ferry, group) == rebalances

    # A crashed static member holds its partitions for its whole session
    # (10 s) unless an admin removes it by group.instance.id (KIP-345).
    from kafka import KafkaAdminClient
    from kafka import errors as Errors
    from kafka.admin import MemberToRemove

    s3.kill9()
    kadmin = KafkaAdminClient(bootstrap_servers=ferry.bootstrap, request_timeout_ms=int(OP_TIMEOUT_S * 1000))
    try:
        t_remove = time.monotonic()
        removed = kadmin.remove_group_members(group, [MemberToRemove(group_instance_id="static-s"),
                                                     MemberToRemove(group_instance_id="no-such-instance")])
        # kafka-python keys the result by member id, else instance id.
        assert removed == {"static-s": Errors.NoError, "no-such-instance": Errors.UnknownMemberIdError}
        wait_for_assignment(admin, group, topic, [a, b], 6, [3, 3], timeout=5)
        assert time.monotonic() - t_remove < 5
    finally:
        kadmin.close()
    for w in (a, b):
        w.terminate()
    for w in (a, b):
        assert w.wait() == 0, w.summary()


# ---------------------------------------------------------------------------
# 6. Errors


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_raw_member_generation_and_member_checks(ferry):
    """A hand-written member: KIP-394 join, sync, then commits and
    heartbeats with wrong generations and member ids."""
    topic = unique_topic("raw")
    group = f"g-{topic}"
    create_topic(ferry.bootstrap, topic, partitions=2)
    with RawKafka(ferry.bootstrap, client_id="raw-member") as raw:
        first = raw.join_group(group, "", [topic], session_timeout_ms=5000)
        assert first["error"] == ERR_MEMBER_ID_REQUIRED and first["member_id"].startswith("raw-member-")
        joined = raw.join_group(group, first["member_id"], [topic], session_timeout_ms=5000)
        assert joined["error"] == ERR_NONE, joined
        member, gen = joined["member_id"], joined["generation"]
        assert (member, joined["leader"], joined["protocol"]) == (first["member_id"], member, "range")
        assert gen >= 1
        assert [m[0] for m in joined["members"]] == [member]
        synced = raw.sync_group(group, gen, member, {member: {topic: [0, 1]}})
        assert synced["error"] == ERR_NONE
        assert decode_consumer_assignment(synced["assignment"]) == {topic: [0, 1]}

        # Joins the group cannot take: another protocol type, no common
        # assignor, a session timeout outside the broker's bounds.
        with RawKafka(ferry.bootstrap, client_id="raw-odd") as odd:
            assert odd.join_group(group, "", [topic], protocol_type="connect")["error"] == ERR_INCONSISTENT_GROUP_PROTOCOL
            assert odd.join_group(group, "", [topic], protocol="sticky-only")["error"] == ERR_INCONSISTENT_GROUP_PROTOCOL
            assert odd.join_group(group, "", [topic], session_timeout_ms=999)["error"] == ERR_INVALID_SESSION_TIMEOUT
            assert odd.join_group(group, "", [topic], session_timeout_ms=1_800_001)["error"] == ERR_INVALID_SESSION_TIMEOUT

        assert raw.heartbeat(group, gen, member) == ERR_NONE
        assert raw.heartbeat(group, gen + 1, member) == ERR_ILLEGAL_GENERATION
        assert raw.heartbeat(group, gen, "someone-else") == ERR_UNKNOWN_MEMBER_ID

        assert raw.offset_commit(group, gen + 1, member, {(topic, 0): 5}) == {(topic, 0): ERR_ILLEGAL_GENERATION}
        assert raw.offset_commit(group, gen - 1, member, {(topic, 0): 5}) == {(topic, 0): ERR_ILLEGAL_GENERATION}
        assert raw.offset_commit(group, gen, "someone-else", {(topic, 0): 5}) == {(topic, 0): ERR_UNKNOWN_MEMBER_ID}
        # Generation -1 (an admin commit) while the group has a member.
        assert raw.offset_commit(group, -1, "", {(topic, 0): 5}) == {(topic, 0): ERR_UNKNOWN_MEMBER_ID}
        assert raw.offset_fetch(group, [(topic, 0)]) == {"error": 0, "offsets": {(topic, 0): (-1, "", 0)}}
        assert raw.offset_commit(group, gen, member, {(topic, 0): 3, (topic, 1): 4}) == {(topic, 0): 0, (topic, 1): 0}
        assert raw.offset_fetch(group, None) == {"error": 0, "offsets": {(topic, 0): (3, "", 0), (topic, 1): (4, "", 0)}}

        # A second member joins: a rebalance. Its rejoin waits until the
        # rebalance completes, so it runs in a thread.
        second: dict = {}

        def join_second():
            with RawKafka(ferry.bootstrap, client_id="raw-second") as raw2:
                second["joined"] = raw2.join_group_as_new_member(group, [topic], session_timeout_ms=5000)
                j = second["joined"]
                second["synced"] = raw2.sync_group(group, j["generation"], j["member_id"])

        t = threading.Thread(target=join_second, daemon=True)
        t.start()
        wait_until(lambda: raw.heartbeat(group, gen, member) == ERR_REBALANCE_IN_PROGRESS, what="rebalance announced")
        # While the group prepares the rebalance, the current generation may
        # still commit (as in Kafka).
        assert raw.offset_commit(group, gen, member, {(topic, 0): 4}) == {(topic, 0): ERR_NONE}
        rejoined = raw.join_group(group, member, [topic], session_timeout_ms=5000)
        assert rejoined["error"] == ERR_NONE and rejoined["generation"] == gen + 1 and rejoined["leader"] == member
        other = next(m[0] for m in rejoined["members"] if m[0] != member)
        # The old generation is stale now; the new one must wait for the
        # assignment (CompletingRebalance).
        assert raw.offset_commit(group, gen, member, {(topic, 0): 5}) == {(topic, 0): ERR_ILLEGAL_GENERATION}
        assert raw.heartbeat(group, gen, member) == ERR_ILLEGAL_GENERATION
        assert raw.offset_commit(group, gen + 1, member, {(topic, 0): 5}) == {(topic, 0): ERR_REBALANCE_IN_PROGRESS}
        assert raw.heartbeat(group, gen + 1, member) == ERR_NONE
        assert raw.sync_group(group, gen, member, {member: {topic: [0]}, other: {topic: [1]}})["error"] == ERR_ILLEGAL_GENERATION
        synced = raw.sync_group(group, gen + 1, member, {member: {topic: [0]}, other: {topic: [1]}})
        assert synced["error"] == ERR_NONE and decode_consumer_assignment(synced["assignment"]) == {topic: [0]}
        t.join(OP_TIMEOUT_S)
        assert second["joined"]["generation"] == gen + 1 and second["joined"]["member_id"] == other
        assert second["synced"]["error"] == ERR_NONE
        assert decode_consumer_assignment(second["synced"]["assignment"]) == {topic: [1]}
        gen += 1
        assert raw.offset_commit(group, gen, member, {(topic, 0): 5}) == {(topic, 0): ERR_NONE}
        assert raw.offset_fetch(group, [(topic, 0)])["offsets"] == {(topic, 0): (5, "", 0)}
        assert raw.leave_group(group, [(other, None)])["members"] == [(other, None, ERR_NONE)]

        # Empty group ids are refused (INVALID_GROUP_ID).
        assert raw.join_group("", "", [topic])["error"] == ERR_INVALID_GROUP_ID
        assert raw.offset_commit("", -1, "", {(topic, 0): 1}) == {(topic, 0): ERR_INVALID_GROUP_ID}

        left = raw.leave_group(group, [(member, None)])
        assert left["error"] == ERR_NONE and left["members"] == [(member, None, ERR_NONE)]
        assert raw.heartbeat(group, gen, member) == ERR_UNKNOWN_MEMBER_ID
        # The group is empty now: its old generation is gone.
        assert raw.offset_commit(group, gen, member, {(topic, 0): 1}) == {(topic, 0): ERR_UNKNOWN_MEMBER_ID}
        assert raw.offset_commit(group, -1, "", {(topic, 0): 1}) == {(topic, 0): ERR_NONE}
        assert raw.offset_fetch(group, [(topic, 0)])["offsets"] == {(topic, 0): (1, "", 0)}


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_commit_after_losing_the_generation_is_refused(ferry):
    """A real client whose generation is gone: its synchronous commit fails
    with ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID rather than being applied."""
    topic = unique_topic("stale")
    group = f"g-{topic}"
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=2)
    want = produce_grid(ferry.bootstrap, topic, 2, 4)
    with RawKafka(ferry.bootstrap, client_id="raw-leader") as raw:
        joined = raw.join_group_as_new_member(group, [topic], session_timeout_ms=4000, rebalance_timeout_ms=4000)
        member, gen = joined["member_id"], joined["generation"]
        assert raw.sync_group(group, gen, member, {member: {topic: [0, 1]}})["error"] == ERR_NONE
        assert raw.offset_commit(group, gen, member, {(topic, 0): 1}) == {(topic, 0): ERR_NONE}
        # Another member joins: the group prepares a rebalance, and the raw
        # member learns it from its heartbeat but does not rejoin.
        c = _consumer(ferry.bootstrap, group, **{"session.timeout.ms": 4000, "heartbeat.interval.ms": 300})
        c.subscribe([topic])
        try:
            wait_until(lambda: raw.heartbeat(group, gen, member) == ERR_REBALANCE_IN_PROGRESS, what="rebalance announced")
            # During PreparingRebalance the old generation may still commit (as in Kafka).
            assert raw.offset_commit(group, gen, member, {(topic, 0): 2}) == {(topic, 0): ERR_NONE}
            # Once the rebalance gives up on the raw member, the client owns everything.
            t_quiet = time.monotonic()
            early = poll_all([c], lambda: len(c.assignment()) == 2, timeout=20, what="the new member taking over")
            # Dropped by its session timeout (4 s), not earlier.
            assert time.monotonic() - t_quiet > 3.5
            assert raw.heartbeat(group, gen, member) == ERR_UNKNOWN_MEMBER_ID
            assert raw.offset_commit(group, gen, member, {(topic, 0): 3}) == {(topic, 0): ERR_UNKNOWN_MEMBER_ID}
            assert committed_offsets(admin, group) == {(topic, 0): 2}
            # The new member starts where the old generation's last commit left off.
            assert sorted(early + poll_records(c, 2 + 4 - len(early))) == grid_records(want, {0: 2})
        finally:
            c.close()


@pytest.mark.parametrize("client", ["confluent-kafka", "kafka-python", "aiokafka"])
def test_session_timeout_below_broker_minimum_is_refused(ferry, client):
    """The broker's minimum is Kafka's default 6000 ms; 1500 is refused with
    INVALID_SESSION_TIMEOUT, which each client surfaces."""
    topic = unique_topic("sto")
    group = f"g-{topic}"
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=1)
    if client == "confluent-kafka":
        errors = []
        c = _consumer(ferry.bootstrap, group, **{"session.timeout.ms": 1500, "heartbeat.interval.ms": 500,
                                                  "error_cb": lambda e: errors.append(e)})
        c.subscribe([topic])
        try:
            def surfaced():
                m = c.poll(0.2)
                if m is not None and m.error() is not None:
                    errors.append(m.error())
                return [e for e in errors if e.code() == KafkaError.INVALID_SESSION_TIMEOUT]

            got = wait_until(surfaced, what="INVALID_SESSION_TIMEOUT from librdkafka")
            assert "session" in got[0].str().lower()
            assert c.assignment() == []
        finally:
            c.close()
    elif client == "kafka-python":
        from kafka import KafkaConsumer
        from kafka import errors as Errors

        c = KafkaConsumer(bootstrap_servers=ferry.bootstrap, group_id=group, session_timeout_ms=1500, heartbeat_interval_ms=500,
                          request_timeout_ms=int(OP_TIMEOUT_S * 1000))
        c.subscribe([topic])
        try:
            with pytest.raises(Errors.InvalidSessionTimeoutError):
                deadline = time.monotonic() + OP_TIMEOUT_S
                while time.monotonic() < deadline:
                    c.poll(timeout_ms=200)
        finally:
            c.close()
    else:
        from aiokafka import AIOKafkaConsumer
        from aiokafka import errors as AErrors

        async def main():
            c = AIOKafkaConsumer(topic, bootstrap_servers=ferry.bootstrap, group_id=group, session_timeout_ms=1500,
                                 heartbeat_interval_ms=500, request_timeout_ms=int(OP_TIMEOUT_S * 1000))
            try:
                # start() waits for the first assignment, and fails instead.
                with pytest.raises(AErrors.InvalidSessionTimeoutError):
                    await asyncio.wait_for(c.start(), OP_TIMEOUT_S)
            finally:
                await c.stop()

        asyncio.run(main())
    assert listed_groups(admin, states={ConsumerGroupState.STABLE}) == {}


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_member_that_never_rejoins_is_dropped_at_the_rebalance_timeout(ferry):
    """A member that keeps heartbeating but does not rejoin holds a
    rebalance up only until the rebalance timeout; then it is out."""
    topic = unique_topic("rbto")
    group = f"g-{topic}"
    create_topic(ferry.bootstrap, topic, partitions=2)
    timeouts = dict(session_timeout_ms=30000, rebalance_timeout_ms=2000)
    with RawKafka(ferry.bootstrap, client_id="raw-slow") as slow, RawKafka(ferry.bootstrap, client_id="raw-new") as new:
        joined = slow.join_group_as_new_member(group, [topic], **timeouts)
        slow_id, gen = joined["member_id"], joined["generation"]
        assert slow.sync_group(group, gen, slow_id, {slow_id: {topic: [0, 1]}})["error"] == ERR_NONE

        result: dict = {}

        def join_new():
            result["joined"] = new.join_group_as_new_member(group, [topic], **timeouts)
            result["t"] = time.monotonic()

        t0 = time.monotonic()
        t = threading.Thread(target=join_new, daemon=True)
        t.start()
        # The slow member heartbeats throughout (its session never lapses).
        wait_until(lambda: slow.heartbeat(group, gen, slow_id) == ERR_REBALANCE_IN_PROGRESS, what="rebalance announced")
        while t.is_alive() and time.monotonic() - t0 < 10:
            assert slow.heartbeat(group, gen, slow_id) in (ERR_REBALANCE_IN_PROGRESS, ERR_UNKNOWN_MEMBER_ID)
            time.sleep(0.2)
        t.join(1)
        assert not t.is_alive(), "the join never completed"
        waited = result["t"] - t0
        assert 1.5 <= waited <= 5, f"join completed after {waited:.2f}s; rebalance timeout is 2s"
        j = result["joined"]
        assert j["error"] == ERR_NONE and j["generation"] == gen + 1 and j["leader"] == j["member_id"]
        assert [m[0] for m in j["members"]] == [j["member_id"]]
        assert slow.heartbeat(group, gen, slow_id) == ERR_UNKNOWN_MEMBER_ID
        assert slow.join_group(group, slow_id, [topic], **timeouts)["error"] == ERR_UNKNOWN_MEMBER_ID


@pytest.mark.ferry_args("--group-initial-rebalance-delay-ms", "1500", "--group-min-session-timeout-ms", "1000")
def test_initial_rebalance_delay_gathers_the_first_members(ferry):
    """Consumers that start together share one first rebalance, which waits
    for group.initial.rebalance.delay.ms."""
    topic = unique_topic("delay")
    group = f"g-{topic}"
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=3)
    consumers = [_consumer(ferry.bootstrap, group, **{"client.id": f"c{i}"}) for i in range(3)]
    try:
        t0 = time.monotonic()
        for c in consumers:
            c.subscribe([topic])
        poll_all(consumers, lambda: all(len(c.assignment()) == 1 for c in consumers), what="one partition each")
        took = time.monotonic() - t0
        assert took >= 1.4, f"the first rebalance completed after {took:.2f}s, before the initial delay"
        joins = re.findall(rf"join phase complete group={re.escape(group)} generation=(\d+) protocol=\S+ members=(\d+)", ferry.log)
        assert joins == [("1", "3")], joins
        assert sorted(group_assignment(describe_group(admin, group)).values()) == [[(topic, p)] for p in range(3)]
    finally:
        for c in consumers:
            c.close()


@pytest.mark.ferry_args(*FAST_GROUPS)
def test_added_partitions_are_assigned_and_consumed(ferry):
    """CreatePartitions on a subscribed topic: the group rebalances (the
    leader rejoins) and the new partitions get owners and are consumed."""
    from confluent_kafka.admin import NewPartitions

    topic = unique_topic("grow")
    group = f"g-{topic}"
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=2)
    extra = {"topic.metadata.refresh.interval.ms": 500}
    consumers = [_consumer(ferry.bootstrap, group, **{"client.id": f"c{i}"}, **extra) for i in range(2)]
    got: list = []

    def poll_into():
        for c in consumers:
            m = c.poll(0.05)
            if m is not None:
                assert m.error() is None, m.error()
                got.append((m.partition(), m.offset(), m.value()))
                c.commit(m, asynchronous=False)

    try:
        for c in consumers:
            c.subscribe([topic])
        assert poll_all(consumers, lambda: all(len(c.assignment()) == 1 for c in consumers), what="one partition each") == []
        admin.create_partitions([NewPartitions(topic, 4)], request_timeout=OP_TIMEOUT_S)[topic].result(timeout=OP_TIMEOUT_S)
        want = produce_grid(ferry.bootstrap, topic, 4, 3)
        deadline = time.monotonic() + 20
        while len(got) < 12 and time.monotonic() < deadline:
            poll_into()
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            poll_into()
        assert sorted(got) == grid_records(want, {})
        owned = sorted(tp.partition for c in consumers for tp in c.assignment())
        assert owned == [0, 1, 2, 3]
        assert sorted(len(c.assignment()) for c in consumers) == [2, 2]
        assert committed_offsets(admin, group) == {(topic, p): 3 for p in range(4)}
    finally:
        for c in consumers:
            c.close()


@pytest.mark.ferry_args(*FAST_GROUPS)
@pytest.mark.parametrize("how", ["restart", "sigkill"])
def test_group_deletions_and_offset_changes_survive_restart(ferry, how):
    """Commits, admin resets, OffsetDelete and DeleteGroups are all durable
    once acknowledged: a clean restart or a SIGKILL brings back exactly the
    state the clients last saw."""
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP
    from kafka import errors as Errors

    topic = unique_topic("durable")
    admin = admin_client(ferry.bootstrap)
    create_topic(admin, topic, partitions=3)
    produce_grid(ferry.bootstrap, topic, 3, 10)
    for g in ("g-keep", "g-gone", "g-trim"):
        c = _consumer(ferry.bootstrap, g)
        try:
            c.commit(offsets=[TopicPartition(topic, p, 5 + p, metadata=g) for p in range(3)], asynchronous=False)
        finally:
            c.close()
    req = ConsumerGroupTopicPartitions("g-keep", [TopicPartition(topic, 0, 1)])
    admin.alter_consumer_group_offsets([req], request_timeout=OP_TIMEOUT_S)["g-keep"].result(timeout=OP_TIMEOUT_S)
    admin.delete_consumer_groups(["g-gone"], request_timeout=OP_TIMEOUT_S)["g-gone"].result(timeout=OP_TIMEOUT_S)
    kadmin = KafkaAdminClient(bootstrap_servers=ferry.bootstrap, request_timeout_ms=int(OP_TIMEOUT_S * 1000))
    try:
        assert kadmin.delete_group_offsets("g-trim", [KTP(topic, 1)]) == {KTP(topic, 1): Errors.NoError}
    finally:
        kadmin.close()

    def state():
        a = admin_client(ferry.bootstrap)
        return (
            listed_groups(a),
            {g: committed_offsets(a, g) for g in ("g-keep", "g-gone", "g-trim")},
        )

    expected = (
        {"g-keep": ConsumerGroupState.EMPTY, "g-trim": ConsumerGroupState.EMPTY},
        {
            "g-keep": {(topic, 0): 1, (topic, 1): 6, (topic, 2): 7},
            "g-gone": {},
            "g-trim": {(topic, 0): 5, (topic, 2): 7},
        },
    )
    assert state() == expected
    if how == "restart":
        ferry.restart()
    else:
        ferry.kill9()
        ferry.start()
    assert state() == expected
    # And the survivors resume from there.
    c = _consumer(ferry.bootstrap, "g-trim")
    c.subscribe([topic])
    try:
        got = poll_records(c, 5 + 10 + 3, drain=1.0)
    finally:
        c.close()
    assert sorted((p, o) for p, o, _ in got) == sorted([(0, o) for o in range(5, 10)] + [(1, o) for o in range(10)] + [(2, o) for o in range(7, 10)])
