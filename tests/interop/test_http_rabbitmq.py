"""The RabbitMQ management API subset under `/rabbitmq/api`, with RabbitMQ's
field names, as monitoring tools read it, against queues made with pika."""

from __future__ import annotations

import pika

from amqp_util import connect
from http_util import get_ok
from interop_util import wait_until


def test_queues_exchanges_and_overview_in_rabbitmqs_shape(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.exchange_declare("events", "topic", durable=True)
    ch.queue_declare("billing", durable=True, arguments={"x-max-length": 100})
    ch.confirm_delivery()
    for _ in range(3):
        ch.basic_publish("", "billing", b"m", pika.BasicProperties(delivery_mode=2))
    ch.basic_get("billing", auto_ack=False)

    queues = get_ok(ferry, "/rabbitmq/api/queues")
    assert isinstance(queues, list)
    [q] = [q for q in queues if q["name"] == "billing"]
    assert (q["vhost"], q["durable"], q["exclusive"], q["state"]) == ("/", True, False, "running")
    assert (q["messages"], q["messages_ready"], q["messages_unacknowledged"]) == (3, 2, 1)
    assert q["arguments"] == {"x-max-length": 100}

    exchanges = get_ok(ferry, "/rabbitmq/api/exchanges")
    assert {"name": "events", "vhost": "/", "type": "topic", "durable": True, "auto_delete": False,
            "internal": False, "arguments": {}} in exchanges
    assert any(x["name"] == "amq.fanout" for x in exchanges)

    o = get_ok(ferry, "/rabbitmq/api/overview")
    assert o["product_name"] == "Ferry"
    assert o["queue_totals"] == {"messages": 3, "messages_ready": 2, "messages_unacknowledged": 1}
    assert o["object_totals"]["queues"] == 1 and o["object_totals"]["exchanges"] == len(exchanges)
    assert {"protocol": "amqp", "port": ferry.amqp_port} in [
        {"protocol": l["protocol"], "port": l["port"]} for l in o["listeners"]
    ]
    conn.close()
    wait_until(lambda: get_ok(ferry, "/rabbitmq/api/overview")["queue_totals"]["messages_unacknowledged"] == 0,
               what="the unacked message back in the queue")

