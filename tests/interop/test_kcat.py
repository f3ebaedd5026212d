"""kcat (librdkafka's command-line client) against Ferry."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from interop_util import create_topic, make_producer, now_ms, produce_ok, unique_topic

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat is not installed (scripts/test installs it)")

TIMEOUT_S = 30


def kcat(bootstrap: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    cmd = [KCAT, "-b", bootstrap, "-m", "10", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout.decode(errors='replace')}\n"
        f"stderr:\n{proc.stderr.decode(errors='replace')}"
    )
    return proc


def kcat_produce(bootstrap: str, topic: str, partition: int, lines: list[str], *extra: str) -> None:
    data = "".join(line + "\n" for line in lines).encode()
    kcat(bootstrap, "-P", "-t", topic, "-p", str(partition), *extra, stdin=data)


def kcat_consume_json(bootstrap: str, topic: str, *extra: str) -> list[dict]:
    out = kcat(bootstrap, "-C", "-t", topic, "-e", "-J", "-q", *extra).stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def headers_of(msg: dict) -> list:
    """kcat -J gives headers as a flat [name, value, name, value, ...] list."""
    flat = msg.get("headers", [])
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def view(msgs: list[dict]) -> dict:
    """{partition: [(offset, key, payload, headers)] in the order kcat printed}"""
    out: dict = {}
    for m in msgs:
        out.setdefault(m["partition"], []).append((m["offset"], m["key"], m["payload"], headers_of(m)))
    return out


def test_kcat_metadata_text_and_json(ferry):
    topic = unique_topic("kmeta")
    create_topic(ferry.bootstrap, topic, partitions=3)

    text = kcat(ferry.bootstrap, "-L").stdout.decode()
    assert " 1 brokers:\n" in text, text
    assert f"  broker 0 at 127.0.0.1:{ferry.port} (controller)\n" in text, text
    block = re.search(rf'  topic "{re.escape(topic)}" with (\d+) partitions:\n((?:    partition .*\n)*)', text)
    assert block, text
    assert block.group(1) == "3"
    assert block.group(2) == "".join(f"    partition {p}, leader 0, replicas: 0, isrs: 0\n" for p in range(3))

    md = json.loads(kcat(ferry.bootstrap, "-L", "-J", "-t", topic).stdout)
    assert md["controllerid"] == 0
    assert md["brokers"] == [{"id": 0, "name": f"127.0.0.1:{ferry.port}"}]
    assert md["topics"] == [
        {
            "topic": topic,
            "partitions": [
                {"partition": p, "leader": 0, "replicas": [{"id": 0}], "isrs": [{"id": 0}]} for p in range(3)
            ],
        }
    ]


def test_kcat_produce_keys_headers_partitions_and_consume(ferry):
    topic = unique_topic("kcat")
    create_topic(ferry.bootstrap, topic, partitions=3)
    before = now_ms()
    kcat_produce(ferry.bootstrap, topic, 1, ["k1:v1", "k2:v2", "k3:v=3:x"], "-K:", "-H", "src=kcat", "-H", "n=one")
    kcat_produce(ferry.bootstrap, topic, 0, [f"key{i}:value {i}" for i in range(6)], "-K:", "-H", "part=zero")
    kcat_produce(ferry.bootstrap, topic, 2, ["a:alpha"], "-K:", "-H", "eq=x=y", "-H", "empty=")
    kcat_produce(ferry.bootstrap, topic, 1, ["k4:v4"], "-K:")
    after = now_ms()

    msgs = kcat_consume_json(ferry.bootstrap, topic, "-o", "beginning")
    assert {m["topic"] for m in msgs} == {topic}
    assert all(m["tstype"] == "create" and before - 1000 <= m["ts"] <= after + 1000 for m in msgs), msgs
    assert view(msgs) == {
        0: [(i, f"key{i}", f"value {i}", [("part", "zero")]) for i in range(6)],
        1: [
            (0, "k1", "v1", [("src", "kcat"), ("n", "one")]),
            (1, "k2", "v2", [("src", "kcat"), ("n", "one")]),
            (2, "k3", "v=3:x", [("src", "kcat"), ("n", "one")]),
            (3, "k4", "v4", []),
        ],
        2: [(0, "a", "alpha", [("eq", "x=y"), ("empty", "")])],
    }

    # The same through a format string.
    out = kcat(
        ferry.bootstrap, "-C", "-t", topic, "-p", "1", "-o", "beginning", "-e", "-q", "-f", "%p|%o|%k|%s|%h\n"
    ).stdout.decode()
    assert out.splitlines() == [
        "1|0|k1|v1|src=kcat,n=one",
        "1|1|k2|v2|src=kcat,n=one",
        "1|2|k3|v=3:x|src=kcat,n=one",
        "1|3|k4|v4|",
    ]


def test_kcat_consume_from_offsets(ferry):
    topic = unique_topic("koff")
    create_topic(ferry.bootstrap, topic, partitions=2)
    kcat_produce(ferry.bootstrap, topic, 1, [f"k{i}:v{i}" for i in range(10)], "-K:")
    kcat_produce(ferry.bootstrap, topic, 0, ["z:zero"], "-K:")

    # Absolute offset with a count.
    msgs = kcat_consume_json(ferry.bootstrap, topic, "-p", "1", "-o", "4", "-c", "3")
    assert [(m["partition"], m["offset"], m["key"], m["payload"]) for m in msgs] == [
        (1, 4, "k4", "v4"),
        (1, 5, "k5", "v5"),
        (1, 6, "k6", "v6"),
    ]
    # Relative to the end (needs ListOffsets "latest").
    msgs = kcat_consume_json(ferry.bootstrap, topic, "-p", "1", "-o", "-2")
    assert [(m["offset"], m["payload"]) for m in msgs] == [(8, "v8"), (9, "v9")]
    # "end" on a partition: nothing new, exits at EOF.
    assert kcat_consume_json(ferry.bootstrap, topic, "-p", "0", "-o", "end") == []


def test_kcat_consume_from_timestamp(ferry):
    topic = unique_topic("kts")
    create_topic(ferry.bootstrap, topic)
    base = now_ms() - 50_000
    msgs = [dict(partition=0, key=b"k%d" % i, value=b"v%d" % i, timestamp=base + i * 1000) for i in range(8)]
    produce_ok(make_producer(ferry.bootstrap), topic, msgs)
    got = kcat_consume_json(ferry.bootstrap, topic, "-p", "0", "-o", f"s@{base + 4500}")
    assert [(m["offset"], m["key"], m["payload"], m["ts"]) for m in got] == [
        (i, f"k{i}", f"v{i}", base + i * 1000) for i in range(5, 8)
    ]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_kcat_compressed_produce(ferry, codec):
    topic = unique_topic(f"kz-{codec}")
    create_topic(ferry.bootstrap, topic)
    lines = [f"key-{i}:{'payload-%d-' % i}{'x' * (i * 37)}" for i in range(50)]
    kcat_produce(ferry.bootstrap, topic, 0, lines, "-K:", "-z", codec, "-X", "linger.ms=100")
    msgs = kcat_consume_json(ferry.bootstrap, topic, "-o", "beginning")
    assert [(m["partition"], m["offset"], m["key"], m["payload"]) for m in msgs] == [
        (0, i, line.split(":", 1)[0], line.split(":", 1)[1]) for i, line in enumerate(lines)
    ]


@pytest.mark.ferry_args("--default-partitions", "2")
def test_kcat_produce_auto_creates_topic(ferry):
    topic = unique_topic("kauto")
    kcat_produce(ferry.bootstrap, topic, 1, ["hello"])
    md = json.loads(kcat(ferry.bootstrap, "-L", "-J", "-t", topic).stdout)
    assert [p["partition"] for p in md["topics"][0]["partitions"]] == [0, 1]
    msgs = kcat_consume_json(ferry.bootstrap, topic, "-o", "beginning")
    assert [(m["partition"], m["offset"], m["key"], m["payload"]) for m in msgs] == [(1, 0, None, "hello")]
