"""`/metrics` against known traffic from real clients: produce 1000 records
with confluent-kafka and the counter rose by exactly 1000, and so on. The
text is parsed with the Prometheus project's own OpenMetrics parser, so a
malformed exposition fails the tests too."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

from confluent_kafka import TopicPartition
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from amqp_util import connect
from http_util import call, get, get_ok
from sqs_util import sqs_client
from interop_util import consume_n, make_consumer, make_producer, produce_ok, unique_topic, wait_until


def scrape(ferry) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape."""
    a = get(ferry, "/metrics")
    assert a.status == 200, a
    assert a.headers["Content-Type"].startswith("application/openmetrics-text"), a.headers
    out = {}
    for family in text_string_to_metric_families(a.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, default=None, **labels):
    return samples.get((name, frozenset({k: str(v) for k, v in labels.items()}.items())), default)


def test_produce_and_consume_1000_records_move_the_counters_by_1000(ferry):
    topic = unique_topic()
    before = scrape(ferry)
    assert value(before, "ferry_partition_records_in_total", topic=topic, partition=0) is None

    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": f"record {i}".encode()} for i in range(1000)])
    after = scrape(ferry)
    assert value(after, "ferry_partition_records_in_total", topic=topic, partition=0) == 1000
    bytes_in = value(after, "ferry_partition_bytes_in_total", topic=topic, partition=0)
    assert bytes_in > 1000 * len(b"record 999")
    assert value(after, "ferry_partition_high_watermark", topic=topic, partition=0) == 1000
    assert value(after, "ferry_partition_log_end_offset", topic=topic, partition=0) == 1000
    assert value(after, "ferry_partition_log_start_offset", topic=topic, partition=0) == 0
    api_size = get_ok(ferry, f"/api/topics/{topic}")["size_bytes"]
    assert value(after, "ferry_partition_size_bytes", topic=topic, partition=0) == api_size
    produces = value(after, "ferry_requests_total", protocol="kafka", request="Produce")
    assert produces >= 1
    assert value(after, "ferry_request_duration_seconds_count", protocol="kafka", request="Produce") == produces

    c = make_consumer(ferry.bootstrap)
    c.assign([TopicPartition(topic, 0, 0)])
    assert len(consume_n(c, 1000)) == 1000
    c.close()
    consumed = scrape(ferry)
    assert value(consumed, "ferry_partition_records_out_total", topic=topic, partition=0) == 1000
    assert value(consumed, "ferry_partition_bytes_out_total", topic=topic, partition=0) >= bytes_in
    # Producing more moves "in" by exactly that much and leaves "out" alone,
    # once the consumer's connection is gone: a long-polling Fetch it left
    # behind would otherwise be answered with the new records.
    wait_until(lambda: value(scrape(ferry), "ferry_connections", protocol="kafka") == 0, what="clients gone")
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"x"}] * 10)
    more = scrape(ferry)
    assert value(more, "ferry_partition_records_in_total", topic=topic, partition=0) == 1010
    assert value(more, "ferry_partition_records_out_total", topic=topic, partition=0) == 1000


def test_group_lag_gauge_follows_commits(ferry):
    topic = unique_topic()
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"x"}] * 100)
    c = make_consumer(ferry.bootstrap, **{"group.id": "lagging"})
    c.commit(offsets=[TopicPartition(topic, 0, 40)], asynchronous=False)
    c.close()
    s = scrape(ferry)
    assert value(s, "ferry_group_lag", group="lagging", topic=topic, partition=0) == 60
    assert value(s, "ferry_group_members", group="lagging") == 0
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"x"}] * 5)
    assert value(scrape(ferry), "ferry_group_lag", group="lagging", topic=topic, partition=0) == 65


def test_queue_gauges_follow_amqp_traffic(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.queue_declare("metered")
    for i in range(5):
        ch.basic_publish("", "metered", b"m")
    method, _, _ = ch.basic_get("metered", auto_ack=False)
    s = scrape(ferry)
    assert value(s, "ferry_queue_messages", vhost="/", queue="metered", state="ready") == 4
    assert value(s, "ferry_queue_messages", vhost="/", queue="metered", state="in_flight") == 1
    assert value(s, "ferry_queue_messages", vhost="/", queue="metered", state="delayed") == 0
    assert value(s, "ferry_queue_consumers", vhost="/", queue="metered") == 0
    assert value(s, "ferry_queue_disk_bytes", vhost="/", queue="metered") > 0
    ch.basic_ack(method.delivery_tag)
    conn.close()  # the ack is on its way once the connection has closed cleanly
    wait_until(
        lambda: value(scrape(ferry), "ferry_queue_messages", vhost="/", queue="metered", state="in_flight") == 0,
        what="the ack to settle the message",
    )


def test_queue_counters_follow_acks_redeliveries_and_dead_letters(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.queue_declare("settled.dlq")
    ch.queue_declare("settled", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "settled.dlq"})
    for i in range(6):
        ch.basic_publish("", "settled", f"m{i}".encode())
    tags = [wait_until(lambda: ch.basic_get("settled")[0], what=f"message {i}").delivery_tag for i in range(6)]
    for t in tags[:3]:
        ch.basic_ack(t)
    ch.basic_nack(tags[3], requeue=True)
    ch.basic_nack(tags[4], requeue=True)
    ch.basic_reject(tags[5], requeue=False)
    again = [wait_until(lambda: ch.basic_get("settled")[0], what="a redelivery") for _ in range(2)]
    assert all(m.redelivered for m in again)
    for m in again:
        ch.basic_ack(m.delivery_tag)

    def counted():
        s = scrape(ferry)
        got = [value(s, f"ferry_queue_{c}_total", vhost="/", queue="settled") for c in ("acked", "redelivered", "dead_lettered")]
        return s if got == [5, 2, 1] else None

    s = wait_until(counted, what="acked 5, redelivered 2, dead-lettered 1")
    assert value(s, "ferry_queue_messages", vhost="/", queue="settled.dlq", state="ready") == 1
    assert value(s, "ferry_queue_acked_total", vhost="/", queue="settled.dlq") == 0
    conn.close()


def test_group_commit_fsyncs_cover_every_record_produced(ferry):
    topic = unique_topic("fsync")
    before = scrape(ferry)
    records_before = value(before, "ferry_fsync_records_sum", 0)
    producer = make_producer(ferry.bootstrap)
    produce_ok(producer, topic, [{"value": b"r%d" % i} for i in range(1000)])
    s = scrape(ferry)
    # fsync.policy=always: every acknowledged record was made durable by
    # exactly one fsync, however the appends shared them.
    assert value(s, "ferry_fsync_records_sum") - records_before == 1000
    fsyncs = value(s, "ferry_fsync_records_count") - value(before, "ferry_fsync_records_count", 0)
    assert 1 <= fsyncs <= 1000
    assert value(s, "ferry_fsync_duration_seconds_count") == value(s, "ferry_fsync_records_count")
    assert value(s, "ferry_fsync_duration_seconds_sum") > 0


def test_connections_and_process_gauges(ferry):
    before = scrape(ferry)
    opened = value(before, "ferry_connections_opened_total", 0, protocol="kafka")
    c = make_consumer(ferry.bootstrap)
    c.list_topics(timeout=10)
    c.close()
    assert value(scrape(ferry), "ferry_connections_opened_total", protocol="kafka") > opened
    wait_until(lambda: value(scrape(ferry), "ferry_connections", protocol="kafka") == 0, what="connections closed")
    # The open-connections gauge is checked on a connection the test holds:
    # librdkafka drops and reopens its own connections when it likes (its
    # bootstrap connection may already be gone after a metadata request).
    host, port = ferry.bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10):

        def counted():
            s = scrape(ferry)
            return s if value(s, "ferry_connections", protocol="kafka") == 1 else None

        during = wait_until(counted, what="the held connection to be counted")
    wait_until(lambda: value(scrape(ferry), "ferry_connections", protocol="kafka") == 0, what="connection closed")
    assert value(during, "ferry_disk_free_bytes") > 0
    assert value(during, "ferry_process_resident_memory_bytes") > 1_000_000
    assert value(during, "ferry_alarm", resource="disk") == 0
    assert value(during, "ferry_uptime_seconds") >= 0


def test_http_requests_are_counted_by_route(ferry):
    name = "GET /api/topics"
    before = value(scrape(ferry), "ferry_requests_total", 0, protocol="http", request=name)
    get(ferry, "/api/topics")
    get(ferry, "/api/topics/nope")
    after = value(scrape(ferry), "ferry_requests_total", protocol="http", request=name)
    assert after == before + 2
    # Client strings never become label values.
    get(ferry, "/made-up/path")
    names = {dict(k[1]).get("request") for k in scrape(ferry) if k[0] == "ferry_requests_total"}
    assert "GET other" in names and not any("made-up" in (n or "") for n in names)


def test_sqs_actions_are_counted_with_latencies(ferry):
    client = sqs_client(ferry)
    url = client.create_queue(QueueName="metered-sqs")["QueueUrl"]
    for i in range(100):
        client.send_message(QueueUrl=url, MessageBody=f"m{i}")
    s = scrape(ferry)
    assert value(s, "ferry_requests_total", protocol="sqs", request="SendMessage") == 100
    assert value(s, "ferry_requests_total", protocol="sqs", request="CreateQueue") == 1
    assert value(s, "ferry_request_duration_seconds_count", protocol="sqs", request="SendMessage") == 100
    assert value(s, "ferry_request_duration_seconds_sum", protocol="sqs", request="SendMessage") > 0
    # Action names are the client's strings: unknown ones are not counted.
    raw = urllib.request.Request(ferry.sqs_endpoint + "/", data=b"Action=MadeUpAction&Version=2012-11-05",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        urllib.request.urlopen(raw, timeout=10)
    except urllib.error.HTTPError as e:
        assert e.code == 400
    names = {dict(k[1]).get("request") for k in scrape(ferry) if k[0] == "ferry_requests_total"}
    assert "MadeUpAction" not in names
    assert value(scrape(ferry), "ferry_connections_opened_total", protocol="sqs") >= 1


def test_amqp_methods_are_counted_with_latencies(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.queue_declare("metered-amqp")
    for _ in range(100):
        ch.basic_publish("", "metered-amqp", b"m")
    ch.queue_declare("metered-amqp", passive=True)  # a round trip: every publish was handled
    s = wait_until(lambda: (s := scrape(ferry)) and value(s, "ferry_requests_total", 0, protocol="amqp",
                                                           request="queue.declare") == 2 and s,
                   what="both queue.declare counted")
    assert value(s, "ferry_requests_total", protocol="amqp", request="basic.publish") == 100
    assert value(s, "ferry_requests_total", protocol="amqp", request="channel.open") == 1
    assert value(s, "ferry_request_duration_seconds_count", protocol="amqp", request="basic.publish") == 100
    assert value(s, "ferry_connections", protocol="amqp") == 1
    conn.close()
    wait_until(lambda: value(scrape(ferry), "ferry_connections", protocol="amqp") == 0, what="the connection gone")


def test_overview_message_rates_follow_traffic(ferry):
    topic = unique_topic()
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"x"}] * 500)
    o = get_ok(ferry, "/api/overview")
    assert o["message_rates"]["in_total"] == 500 and o["message_rates"]["out_total"] == 0
    # Rates are sampled every 5 s: within two samples the 500 show as a rate.
    rates = wait_until(
        lambda: (lambda r: r if r["in_per_second"] > 0 else None)(get_ok(ferry, "/api/overview")["message_rates"]),
        timeout=15,
        what="a message rate",
    )
    assert 0 < rates["in_per_second"] <= 500
    assert rates["out_per_second"] == 0


def test_the_grafana_dashboard_reads_only_metrics_the_broker_exports(ferry):
    """docs/grafana-dashboard.json must not chart a metric nobody exports."""
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    wanted = {m for e in exprs for m in re.findall(r"\bferry_[a-z_]+", e)}
    # Traffic of every kind, so that every family has samples.
    topic = unique_topic()
    produce_ok(make_producer(ferry.bootstrap), topic, [{"value": b"x"}] * 3)
    c = make_consumer(ferry.bootstrap, **{"group.id": "dash"})
    c.assign([TopicPartition(topic, 0, 0)])
    consume_n(c, 3)
    c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    c.close()
    conn = connect(ferry)
    conn.channel().queue_declare("dash")
    conn.close()
    exported = {name for name, _ in scrape(ferry)}
    missing = sorted(wanted - exported)
    assert not missing, f"the dashboard charts metrics /metrics does not export: {missing}"
    assert len(wanted) >= 15
