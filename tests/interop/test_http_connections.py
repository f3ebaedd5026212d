"""Client connections in the admin API (`/api/connections`, and RabbitMQ's
`/rabbitmq/api/connections`): connections opened by pika, confluent-kafka
and boto3 are listed with their protocol, address, identity, traffic and (for
AMQP) channels, and closing one ends it as its protocol does."""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest

from amqp_util import connect
from http_util import assert_error, call, get, get_ok
from interop_util import make_producer, produce_ok, unique_topic, wait_until
from sqs_util import sqs_client

DEADLINE_S = 30.0


def connections(ferry, protocol: str | None = None) -> list[dict]:
    return [c for c in get_ok(ferry, "/api/connections")["connections"] if protocol is None or c["protocol"] == protocol]


def amqp_named(ferry, name: str) -> dict | None:
    return next((c for c in connections(ferry, "amqp") if c["client"] == name), None)


def test_an_amqp_connection_with_its_identity_traffic_and_channels(ferry):
    conn = connect(ferry, client_properties={"connection_name": "billing-worker"})
    ch = conn.channel()
    ch.basic_qos(prefetch_count=7)
    ch.confirm_delivery()
    ch.queue_declare("jobs")
    for _ in range(5):
        ch.basic_publish("", "jobs", b"x" * 100)
    ch.basic_consume("jobs", lambda *a: None)
    conn.process_data_events(time_limit=0)

    c = wait_until(lambda: (c := amqp_named(ferry, "billing-worker")) and c["channels"] == 1 and c, timeout=DEADLINE_S,
                   what="the pika connection listed with its channel")
    assert (c["user"], c["vhost"]) == ("guest", "/")
    host, port = c["client_address"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert c["listener_address"].endswith(f":{ferry.amqp_port}")
    # Five publishes of 100 bytes each went in: at least their bodies, and at
    # least a method, header and body frame each.
    assert c["bytes_in"] >= 500 and c["requests_in"] >= 15, c
    assert c["bytes_out"] > 0 and c["requests_out"] >= 5, c
    assert abs(c["connected_at"] / 1000 - time.time()) < 3600
    metrics = get(ferry, "/metrics").text
    assert 'ferry_connections{protocol="amqp"} 1\n' in metrics
    assert 'ferry_connections_opened_total{protocol="amqp"} 1\n' in metrics

    detail = wait_until(lambda: (d := get_ok(ferry, f"/api/connections/{c['id']}"))["channel_details"][0]["consumers"] == 1 and d,
                        timeout=DEADLINE_S, what="the consumer reported on the channel")
    [channel] = detail["channel_details"]
    assert channel == {"id": 1, "prefetch": 7, "consumers": 1, "confirm": True, "transactional": False}

    [rabbit] = [r for r in get_ok(ferry, "/rabbitmq/api/connections") if r["peer_port"] == int(port)]
    assert (rabbit["user"], rabbit["vhost"], rabbit["protocol"], rabbit["channels"]) == ("guest", "/", "AMQP 0-9-1", 1)
    assert rabbit["port"] == ferry.amqp_port
    assert rabbit["client_properties"]["connection_name"] == "billing-worker"

    conn.close()
    wait_until(lambda: amqp_named(ferry, "billing-worker") is None, timeout=DEADLINE_S, what="the closed connection gone")


def test_closing_an_amqp_connection_is_connection_forced(ferry):
    conn = connect(ferry, client_properties={"connection_name": "to-be-closed"})
    conn.channel()
    c = wait_until(lambda: amqp_named(ferry, "to-be-closed"), timeout=DEADLINE_S, what="the connection listed")
    a = call(ferry, "DELETE", f"/api/connections/{c['id']}", headers={"X-Reason": "moved to another node"})
    assert a.status == 204, a

    deadline = time.monotonic() + DEADLINE_S
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.2)
    assert closed.value.reply_code == 320
    assert closed.value.reply_text == "CONNECTION_FORCED - moved to another node"
    wait_until(lambda: amqp_named(ferry, "to-be-closed") is None, timeout=DEADLINE_S, what="the connection gone")
    assert "closing a connection on an operator's request" in ferry.log


def test_kafka_connections_are_listed_and_closed(ferry):
    topic = unique_topic("conn")
    producer = make_producer(ferry.bootstrap, **{"client.id": "orders-service"})
    produce_ok(producer, topic, [{"value": b"v" * 50} for _ in range(10)])

    def listed():
        return [c for c in connections(ferry, "kafka") if c["client"] == "orders-service"]

    mine = wait_until(listed, timeout=DEADLINE_S, what="the producer's connections")
    assert all(c["user"] is None and c["channels"] == 0 for c in mine)
    # Ten records of 50 bytes went in, each request got a response.
    assert sum(c["bytes_in"] for c in mine) >= 500
    assert sum(c["requests_out"] for c in mine) >= 2

    ids = {c["id"] for c in mine}
    for i in ids:
        assert call(ferry, "DELETE", f"/api/connections/{i}").status in (204, 404)
    wait_until(lambda: not ids & {c["id"] for c in connections(ferry, "kafka")}, timeout=DEADLINE_S,
               what="the closed Kafka connections gone")
    # librdkafka reconnects on its own and goes on producing.
    produce_ok(producer, topic, [{"value": b"after"}])


def test_sqs_connections_are_listed_with_requests_and_closed(ferry):
    client = sqs_client(ferry)
    url = client.create_queue(QueueName="conn-q")["QueueUrl"]
    for i in range(20):
        client.send_message(QueueUrl=url, MessageBody=f"m{i}")

    def busiest():
        listed = connections(ferry, "sqs")
        return max(listed, key=lambda c: c["requests_in"]) if listed else None

    # boto3 keeps one keep-alive connection: it carried the 21 requests.
    c = wait_until(lambda: (c := busiest()) and c["requests_in"] >= 21 and c, timeout=DEADLINE_S,
                   what="the SQS connection with its requests")
    assert c["requests_out"] >= 21 and c["bytes_in"] > 20 * 10 and c["bytes_out"] > 0, c
    assert c["listener_address"].endswith(f":{ferry.sqs_port}")

    assert call(ferry, "DELETE", f"/api/connections/{c['id']}").status == 204
    wait_until(lambda: c["id"] not in {x["id"] for x in connections(ferry, "sqs")}, timeout=DEADLINE_S,
               what="the closed SQS connection gone")
    # The SDK opens a new connection for its next call.
    client.send_message(QueueUrl=url, MessageBody="after")


def test_unknown_connections_are_404(ferry):
    assert_error(get(ferry, "/api/connections/999999"), 404, "not_found")
    assert_error(get(ferry, "/api/connections/nope"), 404, "not_found")
    assert_error(call(ferry, "DELETE", "/api/connections/999999"), 404, "not_found")
