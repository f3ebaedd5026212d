"""The admin HTTP API (`ferry serve --http-listen`) against a real broker
with data made by real clients: confluent-kafka for topics and groups,
pika for exchanges and queues, boto3 for an SQS queue."""

from __future__ import annotations

import base64
import time
import urllib.parse

import pika
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import ConfigResource

from amqp_util import connect
from http_util import assert_error, call, get, get_ok
from interop_util import admin_client, make_consumer, make_producer, produce_ok, unique_topic, wait_until
from sqs_util import sqs_client

# -- overview and errors ---------------------------------------------------


def test_overview_names_the_version_every_listener_and_resources(ferry):
    o = get_ok(ferry, "/api/overview")
    assert o["version"]
    listeners = {l["protocol"]: l["address"] for l in o["listeners"]}
    assert listeners == {
        "kafka": ferry.bootstrap,
        "amqp": f"127.0.0.1:{ferry.amqp_port}",
        "sqs": f"127.0.0.1:{ferry.sqs_port}",
        "http": f"127.0.0.1:{ferry.http_port}",
    }
    assert o["uptime_ms"] >= 0
    assert o["disk"]["free_bytes"] > 0
    assert o["memory"]["rss_bytes"] > 0
    assert o["disk"]["alarm"] is False and o["memory"]["alarm"] is False


def test_overview_counts_what_clients_made(ferry):
    topic = unique_topic()
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"x"}] * 7)
    conn = connect(ferry)
    conn.channel().queue_declare("overview-q")
    conn.close()
    c = get_ok(ferry, "/api/overview")["counts"]
    assert c["topics"] == 1 and c["partitions"] == 1 and c["records"] == 7
    assert c["queues"] == 1 and c["vhosts"] == 1


@pytest.mark.parametrize("path", ["/api", "/api/no-such-thing", "/api/topics/x/y/z/w"])
def test_unknown_paths_are_json_404s(ferry, path):
    assert_error(get(ferry, path), 404, "not_found")


# -- topics ----------------------------------------------------------------


def test_topic_create_describe_alter_delete_as_kafka_clients_see_it(ferry):
    a = call(ferry, "POST", "/api/topics", {"name": "orders", "partitions": 3, "configs": {"retention.ms": 86400000}})
    assert a.status == 201, a
    t = a.json
    assert t["name"] == "orders" and t["partition_count"] == 3
    assert [p["partition"] for p in t["partitions"]] == [0, 1, 2]
    configs = {c["name"]: c for c in t["configs"]}
    assert configs["retention.ms"] == {"name": "retention.ms", "value": "86400000", "source": "topic"}
    assert configs["fsync.policy"]["source"] == "default"

    # A Kafka client sees the topic the API made.
    kafka_admin = admin_client(ferry.bootstrap)
    md = kafka_admin.list_topics(timeout=10)
    assert len(md.topics["orders"].partitions) == 3

    assert_error(call(ferry, "POST", "/api/topics", {"name": "orders"}), 409, "conflict")

    a = call(ferry, "PATCH", "/api/topics/orders/configs", {"set": {"retention.bytes": "1048576"}, "delete": ["retention.ms"]})
    assert a.status == 200, a
    configs = {c["name"]: c for c in a.json["configs"]}
    assert configs["retention.bytes"]["value"] == "1048576"
    assert configs["retention.ms"]["source"] == "default"
    described = kafka_admin.describe_configs([ConfigResource("topic", "orders")])
    entries = list(described.values())[0].result()
    assert entries["retention.bytes"].value == "1048576"

    assert call(ferry, "DELETE", "/api/topics/orders").status == 204
    assert_error(get(ferry, "/api/topics/orders"), 404, "not_found")
    md = kafka_admin.list_topics(timeout=10)
    assert "orders" not in md.topics
    assert_error(call(ferry, "DELETE", "/api/topics/orders"), 404, "not_found")


@pytest.mark.parametrize(
    "body,raw,needle",
    [
        ({"name": "bad/name"}, None, "bad/name"),
        ({"name": "t", "partitions": 0}, None, "partitions"),
        ({"name": "t", "partitions": 20000}, None, "partitions"),
        ({"name": "t", "partitions": "3"}, None, "partitions"),
        ({"name": "t", "configs": {"retention.ms": "soon"}}, None, "retention.ms"),
        ({"name": "t", "configs": {"no.such.config": "1"}}, None, "no.such.config"),
        ({"partitions": 1}, None, "name"),
        (None, b"{not json", "JSON"),
        (None, b"[1, 2]", "object"),
    ],
)
def test_bad_topic_creates_are_400s_that_say_why(ferry, body, raw, needle):
    e = assert_error(call(ferry, "POST", "/api/topics", body, raw=raw), 400, "bad_request")
    assert needle in e["message"], e
    assert get_ok(ferry, "/api/topics")["topics"] == []


def test_topic_listing_has_offsets_and_sizes(ferry):
    topic = unique_topic()
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"v" * 100}] * 5)
    [t] = get_ok(ferry, "/api/topics")["topics"]
    assert t["name"] == topic and t["records"] == 5 and t["size_bytes"] > 500
    [p] = get_ok(ferry, f"/api/topics/{topic}")["partitions"]
    assert p["log_start_offset"] == 0 and p["high_watermark"] == 5 and p["log_end_offset"] == 5
    assert p["size_bytes"] == t["size_bytes"]


def test_record_browser_reads_what_a_producer_wrote(ferry):
    topic = unique_topic()
    p = make_producer(ferry.bootstrap, **{"compression.type": "zstd"})
    messages = [{"key": f"k{i}", "value": f"value {i}", "headers": {"h": b"x"}} for i in range(30)]
    messages.append({"key": b"\xff\x00", "value": b"\x00\x01\xfe"})
    produce_ok(p, topic, messages)

    page = get_ok(ferry, f"/api/topics/{topic}/partitions/0/records?limit=10")
    assert [r["offset"] for r in page["records"]] == list(range(10))
    r0 = page["records"][0]
    assert r0["key"] == "k0" and r0["value"] == "value 0" and r0["key_encoding"] == "utf8"
    assert r0["headers"] == [{"key": "h", "value": "x", "value_encoding": "utf8"}]
    assert r0["timestamp_ms"] > 0
    assert page["next_offset"] == 10 and page["high_watermark"] == 31

    page = get_ok(ferry, f"/api/topics/{topic}/partitions/0/records?offset=25&limit=100")
    assert [r["offset"] for r in page["records"]] == list(range(25, 31))
    last = page["records"][-1]
    assert last["key_encoding"] == "base64" and base64.b64decode(last["key"]) == b"\xff\x00"
    assert base64.b64decode(last["value"]) == b"\x00\x01\xfe"

    tail = get_ok(ferry, f"/api/topics/{topic}/partitions/0/records?offset=-3")
    assert [r["offset"] for r in tail["records"]] == [28, 29, 30]
    empty = get_ok(ferry, f"/api/topics/{topic}/partitions/0/records?offset=31")
    assert empty["records"] == [] and empty["next_offset"] == 31

    # Browsing consumed nothing: a consumer still reads every record.
    c = make_consumer(ferry.bootstrap)
    c.assign([TopicPartition(topic, 0, 0)])
    first = c.poll(10)
    assert first is not None and first.offset() == 0
    c.close()


@pytest.mark.parametrize(
    "query,status",
    [("limit=0", 400), ("limit=1001", 400), ("limit=ten", 400), ("offset=x", 400)],
)
def test_record_browser_rejects_bad_parameters(ferry, query, status):
    topic = unique_topic()
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"x"}])
    assert_error(get(ferry, f"/api/topics/{topic}/partitions/0/records?{query}"), status, "bad_request")


def test_record_browser_unknown_topic_or_partition_is_404(ferry):
    topic = unique_topic()
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"x"}])
    assert_error(get(ferry, f"/api/topics/{topic}/partitions/1/records"), 404, "not_found")
    assert_error(get(ferry, "/api/topics/nope/partitions/0/records"), 404, "not_found")
    assert_error(get(ferry, f"/api/topics/{topic}/partitions/x/records"), 400, "bad_request")


# -- consumer groups ---------------------------------------------------------


def _commit(ferry, group: str, topic: str, offsets: dict[int, int]) -> None:
    c = make_consumer(ferry.bootstrap, **{"group.id": group})
    c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    c.close()


def test_group_offsets_and_lag_then_reset(ferry):
    topic = unique_topic()
    call(ferry, "POST", "/api/topics", {"name": topic, "partitions": 2})
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"x", "partition": i % 2} for i in range(20)])
    _commit(ferry, "billing", topic, {0: 4, 1: 10})

    [g] = get_ok(ferry, "/api/groups")["groups"]
    assert g["group_id"] == "billing" and g["state"] == "Empty" and g["lag"] == 6
    d = get_ok(ferry, "/api/groups/billing")
    assert d["members"] == [] and d["lag"] == 6
    offsets = {o["partition"]: o for o in d["offsets"]}
    assert offsets[0]["committed_offset"] == 4 and offsets[0]["log_end_offset"] == 10 and offsets[0]["lag"] == 6
    assert offsets[1]["lag"] == 0

    dry = call(ferry, "POST", "/api/groups/billing/reset-offsets", {"topic": topic, "to": "earliest", "dry_run": True})
    assert dry.status == 200, dry
    assert {p["partition"]: (p["previous_offset"], p["new_offset"]) for p in dry.json["partitions"]} == {0: (4, 0), 1: (10, 0)}
    assert get_ok(ferry, "/api/groups/billing")["lag"] == 6  # nothing changed

    a = call(ferry, "POST", "/api/groups/billing/reset-offsets", {"topic": topic, "partitions": [1], "to": "shift", "value": -3})
    assert a.status == 200, a
    # A Kafka client reads the reset offset back.
    c = make_consumer(ferry.bootstrap, **{"group.id": "billing"})
    [tp] = c.committed([TopicPartition(topic, 1)], timeout=10)
    assert tp.offset == 7
    c.close()
    assert get_ok(ferry, "/api/groups/billing")["lag"] == 9

    ts = int(time.time() * 1000) + 3_600_000  # after every record: the end
    a = call(ferry, "POST", "/api/groups/billing/reset-offsets", {"topic": topic, "to": "timestamp", "value": ts})
    assert {p["new_offset"] for p in a.json["partitions"]} == {10}

    assert call(ferry, "DELETE", "/api/groups/billing").status == 204
    assert_error(get(ferry, "/api/groups/billing"), 404, "not_found")


@pytest.mark.parametrize(
    "body,needle",
    [
        ({"to": "earliest"}, "topic"),
        ({"topic": "T", "to": "yesterday"}, "earliest"),
        ({"topic": "T", "to": "offset"}, "value"),
        ({"topic": "T", "to": "earliest", "partitions": [5]}, "partitions"),
        ({"topic": "T", "to": "earliest", "dry_run": "yes"}, "dry_run"),
    ],
)
def test_bad_resets_are_400s(ferry, body, needle):
    topic = unique_topic()
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"x"}])
    body = {k: (topic if v == "T" else v) for k, v in body.items()}
    e = assert_error(call(ferry, "POST", "/api/groups/g/reset-offsets", body), 400, "bad_request")
    assert needle in e["message"], e


def test_active_group_shows_members_and_assignments_and_refuses_reset(ferry):
    topic = unique_topic()
    call(ferry, "POST", "/api/topics", {"name": topic, "partitions": 2})
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"x", "partition": i % 2} for i in range(4)])
    c = make_consumer(
        ferry.bootstrap, **{"group.id": "live", "auto.offset.reset": "earliest", "client.id": "api-test"}
    )
    c.subscribe([topic])
    try:
        wait_until(lambda: c.poll(0.2) is not None or c.assignment(), what="assignment")
        d = wait_until(lambda: (lambda d: d if d["state"] == "Stable" and d["members"] else None)(get_ok(ferry, "/api/groups/live")), what="stable group")
        [m] = d["members"]
        assert m["client_id"] == "api-test"
        assert m["assignment"] == {topic: [0, 1]}
        assert {o["member_id"] for o in d["offsets"]} == {m["member_id"]}
        e = assert_error(call(ferry, "POST", "/api/groups/live/reset-offsets", {"topic": topic, "to": "earliest"}), 409, "conflict")
        assert "member" in e["message"]
        assert_error(call(ferry, "DELETE", "/api/groups/live"), 409, "conflict")
    finally:
        c.close()


# -- exchanges, queues, bindings ---------------------------------------------


def test_exchanges_queues_and_bindings_declared_with_pika(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.exchange_declare("orders", "topic", durable=True)
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("eu-orders", durable=True, arguments={"x-dead-letter-exchange": "dlx", "x-max-priority": 5})
    ch.queue_declare("dead")
    ch.queue_bind("eu-orders", "orders", "orders.eu.*")
    ch.queue_bind("dead", "dlx", "")
    conn.close()

    exchanges = {(x["vhost"], x["name"]): x for x in get_ok(ferry, "/api/exchanges")["exchanges"]}
    assert exchanges[("/", "orders")]["type"] == "topic" and exchanges[("/", "orders")]["durable"] is True
    assert exchanges[("/", "dlx")]["type"] == "fanout"
    assert ("/", "amq.direct") in exchanges

    x = get_ok(ferry, "/api/exchanges/%2F/orders")
    assert [(b["destination"], b["routing_key"]) for b in x["bindings"]] == [("eu-orders", "orders.eu.*")]

    bindings = get_ok(ferry, "/api/bindings")["bindings"]
    assert {"vhost": "/", "source": "orders", "destination": "eu-orders", "destination_type": "queue",
            "routing_key": "orders.eu.*", "arguments": {}} in bindings

    q = get_ok(ferry, "/api/queues/%2F/eu-orders")
    assert q["durable"] is True and q["dead_letter_exchange"] == "dlx"
    assert q["arguments"] == {"x-dead-letter-exchange": "dlx", "x-max-priority": 5}
    assert [b["source"] for b in q["bindings"]] == ["orders"]
    assert_error(get(ferry, "/api/queues/%2F/nope"), 404, "not_found")
    assert_error(get(ferry, "/api/queues/no-vhost/eu-orders"), 404, "not_found")
    assert_error(get(ferry, "/api/exchanges/%2F/nope"), 404, "not_found")
    vhosts = get_ok(ferry, "/api/vhosts")["vhosts"]
    assert [v["name"] for v in vhosts] == ["/"]


def test_queue_counts_peek_purge_delete(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.queue_declare("work", durable=True)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", "work", f"job {i}".encode(), pika.BasicProperties(delivery_mode=2, headers={"n": i}))
    method, _, body = ch.basic_get("work", auto_ack=False)  # job 0 now in flight
    assert body == b"job 0"

    q = get_ok(ferry, "/api/queues/%2F/work")
    assert (q["ready"], q["in_flight"], q["messages"], q["consumers"]) == (4, 1, 5, 0)
    assert q["disk_bytes"] > 0

    page = get_ok(ferry, "/api/queues/%2F/work/messages?limit=3")
    assert [m["body"] for m in page["messages"]] == ["job 0", "job 1", "job 2"]
    assert [m["state"] for m in page["messages"]] == ["in_flight", "ready", "ready"]
    assert page["messages"][0]["delivery_count"] == 1
    assert page["messages"][1]["headers"] == {"n": 1} and page["messages"][1]["persistent"] is True
    rest = get_ok(ferry, f"/api/queues/%2F/work/messages?from={page['next_from']}")
    assert [m["body"] for m in rest["messages"]] == ["job 3", "job 4"]

    # Peeking delivered nothing: the next get is job 1, not redelivered.
    method2, _, body2 = ch.basic_get("work", auto_ack=True)
    assert body2 == b"job 1" and not method2.redelivered
    ch.basic_ack(method.delivery_tag)
    # basic.ack has no reply: the API may be asked before the broker read it.
    wait_until(lambda: get_ok(ferry, "/api/queues/%2F/work")["messages"] == 3, what="the ack settled")

    assert call(ferry, "POST", "/api/queues/%2F/work/purge").json == {"purged": 3}
    assert get_ok(ferry, "/api/queues/%2F/work")["messages"] == 0
    ch.basic_publish("", "work", b"left")
    a = call(ferry, "DELETE", "/api/queues/%2F/work")
    assert a.status == 200 and a.json == {"deleted_messages": 1}
    assert_error(get(ferry, "/api/queues/%2F/work"), 404, "not_found")
    # The client sees the queue gone.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.queue_declare("work", passive=True)
    conn.close()


def test_dead_letters_show_their_death_in_the_browser(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dlq")
    ch.queue_bind("dlq", "dlx")
    ch.queue_declare("src", arguments={"x-dead-letter-exchange": "dlx"})
    ch.basic_publish("", "src", b"poison")
    method, _, _ = ch.basic_get("src")
    ch.basic_reject(method.delivery_tag, requeue=False)
    conn.close()
    page = wait_until(lambda: get_ok(ferry, "/api/queues/%2F/dlq/messages")["messages"] or None, what="dead letter")
    [m] = page
    assert m["body"] == "poison"
    assert m["deaths"][0]["queue"] == "src" and m["deaths"][0]["reason"] == "rejected"


def test_sqs_queues_show_delayed_and_in_flight(ferry):
    sqs = sqs_client(ferry)
    url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="now")
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
    sqs.send_message(QueueUrl=url, MessageBody="taken")
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=60)["Messages"]
    assert len(got) == 1
    [q] = [q for q in get_ok(ferry, "/api/queues")["queues"] if q["name"] == "jobs"]
    assert (q["ready"], q["in_flight"], q["delayed"]) == (1, 1, 1)
    states = sorted(m["state"] for m in get_ok(ferry, "/api/queues/%2F/jobs/messages")["messages"])
    assert states == ["delayed", "in_flight", "ready"]


def test_queue_names_with_slashes_and_spaces_are_reachable(ferry):
    conn = connect(ferry)
    conn.channel().queue_declare("a/b c")
    conn.close()
    q = get_ok(ferry, "/api/queues/%2F/" + urllib.parse.quote("a/b c", safe=""))
    assert q["name"] == "a/b c"


def _dead_letter_setup(ch, n: int) -> None:
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dlq", durable=True)
    ch.queue_bind("dlq", "dlx")
    ch.queue_declare("orders", durable=True, arguments={"x-dead-letter-exchange": "dlx"})
    ch.confirm_delivery()
    for i in range(n):
        ch.basic_publish("", "orders", f"order {i}".encode(), pika.BasicProperties(delivery_mode=2))
    for _ in range(n):
        method, _, _ = ch.basic_get("orders")
        ch.basic_reject(method.delivery_tag, requeue=False)


def test_redrive_moves_dead_letters_back_to_their_source(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    _dead_letter_setup(ch, 3)
    wait_until(lambda: get_ok(ferry, "/api/queues/%2F/dlq")["messages"] == 3, what="3 dead letters")

    a = call(ferry, "POST", "/api/queues/%2F/dlq/redrive", {"limit": 1})
    assert a.json == {"moved": 1, "stopped": None}
    a = call(ferry, "POST", "/api/queues/%2F/dlq/redrive")
    assert a.json == {"moved": 2, "stopped": None}
    assert get_ok(ferry, "/api/queues/%2F/dlq")["messages"] == 0
    # A consumer of the source gets them back, in order, with their history.
    got = []
    for _ in range(3):
        method, props, body = ch.basic_get("orders", auto_ack=True)
        got.append(body)
        assert props.headers["x-death"][0]["queue"] == "orders"
    assert got == [b"order 0", b"order 1", b"order 2"]
    conn.close()


def test_redrive_stops_at_messages_it_cannot_send_back(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    _dead_letter_setup(ch, 1)
    ch.basic_publish("", "dlq", b"never died")  # no dead-letter history
    wait_until(lambda: get_ok(ferry, "/api/queues/%2F/dlq")["messages"] == 2, what="2 messages")
    a = call(ferry, "POST", "/api/queues/%2F/dlq/redrive")
    assert a.json["moved"] == 1 and "no dead-letter history" in a.json["stopped"]
    assert get_ok(ferry, "/api/queues/%2F/dlq")["messages"] == 1

    ch.basic_get("dlq", auto_ack=True)  # drop it; dead-letter one more, then delete its source
    ch.basic_publish("", "orders", b"late")
    method, _, _ = ch.basic_get("orders")
    ch.basic_reject(method.delivery_tag, requeue=False)
    ch.queue_delete("orders")
    wait_until(lambda: get_ok(ferry, "/api/queues/%2F/dlq")["messages"] >= 1, what="a dead letter")
    a = call(ferry, "POST", "/api/queues/%2F/dlq/redrive")
    assert a.json["moved"] == 0 and "no longer exists" in a.json["stopped"]
    assert get_ok(ferry, "/api/queues/%2F/dlq")["messages"] >= 1
    assert_error(call(ferry, "POST", "/api/queues/%2F/dlq/redrive", {"limit": 0}), 400, "bad_request")
    assert_error(call(ferry, "POST", "/api/queues/%2F/nope/redrive"), 404, "not_found")
    conn.close()
