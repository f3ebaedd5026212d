"""RabbitMQ's patterns end to end with pika's BlockingConnection against Ferry's
AMQP 0-9-1 listener: work queues, fan-out, topic and headers routing, RPC with
direct reply-to, priorities, dead-lettering (delivery limit, TTL) with
x-death, publisher confirms, mandatory returns, transactions, and consumer
and broker crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pika
import pytest
from amqp_util import connect, consume_n, get_all, wait_for


def test_server_properties_and_capabilities(ferry):
    conn = connect(ferry)
    props = conn._impl.server_properties
    caps = props["capabilities"]
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ]:
        assert caps[cap] is True, cap
    assert props["product"] == b"Ferry" or props["product"] == "Ferry"
    # Negotiated as RabbitMQ does: our frame_max and channel_max.
    assert conn._impl.params.frame_max == 131072
    assert conn._impl.params.channel_max == 2047
    conn.close()


def test_wrong_password_is_refused(ferry):
    params = pika.URLParameters(ferry.amqp_url.replace("guest:guest", "guest:nope"))
    params.connection_attempts = 1
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
        pika.BlockingConnection(params)
    assert "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN" in str(e.value)


def test_work_queue_three_competing_consumers(ferry):
    """Each message goes to exactly one of three consumers (prefetch 1)."""
    pub = connect(ferry)
    ch = pub.channel()
    ch.queue_declare("tasks", durable=True)
    consumers = []
    for i in range(3):
        conn = connect(ferry)
        c = conn.channel()
        c.basic_qos(prefetch_count=1)
        got: list[bytes] = []

        def on_message(chan, method, props, body, got=got):
            got.append(body)
            chan.basic_ack(method.delivery_tag)

        c.basic_consume("tasks", on_message)
        consumers.append((conn, got))
    n = 300
    for i in range(n):
        ch.basic_publish("", "tasks", f"task-{i}".encode(), pika.BasicProperties(delivery_mode=2))
    deadline = time.monotonic() + 30
    while sum(len(g) for _, g in consumers) < n and time.monotonic() < deadline:
        for conn, _ in consumers:
            conn.process_data_events(time_limit=0.01)
    bodies = [b for _, g in consumers for b in g]
    assert len(bodies) == n, f"got {len(bodies)} of {n}"
    assert sorted(bodies) == sorted(f"task-{i}".encode() for i in range(n))
    assert len(set(bodies)) == n, "a message went to two consumers"
    for i, (_, g) in enumerate(consumers):
        assert len(g) > 0, f"consumer {i} got nothing"
        # Each consumer sees its share in publication order.
        idx = [int(b.split(b"-")[1]) for b in g]
        assert idx == sorted(idx)
    # Nothing left behind.
    assert ch.queue_declare("tasks", passive=True).method.message_count == 0
    for conn, _ in consumers:
        conn.close()
    pub.close()


def test_fanout_to_three_subscribers(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.exchange_declare("logs", exchange_type="fanout")
    queues = []
    for _ in range(3):
        q = ch.queue_declare("", exclusive=True).method.queue
        assert q.startswith("amq.gen-")
        ch.queue_bind(q, "logs")
        queues.append(q)
    for i in range(10):
        ch.basic_publish("logs", "ignored", f"log-{i}".encode())
    for q in queues:
        got = get_all(ch, q, 10)
        assert [b for _, _, b in got] == [f"log-{i}".encode() for i in range(10)]
        assert all(m.exchange == "logs" and m.routing_key == "ignored" for m, _, _ in got)
    conn.close()


def test_topic_routing(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.exchange_declare("animals", exchange_type="topic")
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q1, "animals", "*.orange.*")
    ch.queue_bind(q2, "animals", "*.*.rabbit")
    ch.queue_bind(q2, "animals", "lazy.#")
    keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "quick.brown.fox",
        "quick.orange.new.rabbit",
        "lazy.orange.new.rabbit",
        "lazy",
        "orange",
    ]
    for k in keys:
        ch.basic_publish("animals", k, k.encode())
    got1 = [b.decode() for _, _, b in get_all(ch, q1, 3)]
    got2 = [b.decode() for _, _, b in get_all(ch, q2, 6)]
    assert got1 == ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"]
    # lazy.pink.rabbit matches both bindings of q2 but arrives once.
    assert got2 == [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "lazy.orange.new.rabbit",
        "lazy",
    ]
    assert ch.basic_get(q1)[0] is None
    assert ch.basic_get(q2)[0] is None
    conn.close()


def test_headers_routing(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.exchange_declare("hdrs", exchange_type="headers")
    q_all = ch.queue_declare("", exclusive=True).method.queue
    q_any = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_all, "hdrs", arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, "hdrs", arguments={"x-match": "any", "format": "pdf", "type": "log"})
    cases = [
        ({"format": "pdf", "type": "report"}, "both"),
        ({"format": "pdf"}, "any-only"),
        ({"type": "log"}, "any-only-2"),
        ({"format": "zip", "type": "report"}, "none"),
        ({"format": "pdf", "type": "report", "extra": 1}, "both-extra"),
    ]
    for headers, body in cases:
        ch.basic_publish("hdrs", "", body.encode(), pika.BasicProperties(headers=headers))
    got_all = [b.decode() for _, _, b in get_all(ch, q_all, 2)]
    got_any = [b.decode() for _, _, b in get_all(ch, q_any, 4)]
    assert got_all == ["both", "both-extra"]
    assert got_any == ["both", "any-only", "any-only-2", "both-extra"]
    conn.close()


def test_properties_and_headers_pass_through_unchanged(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={"a": 1, "b": "two", "nested": {"x": [1, "y", True]}, "z": None},
        delivery_mode=2,
        priority=3,
        correlation_id="corr-1",
        reply_to="replies",
        message_id="m-1",
        timestamp=1700000000,
        type="kind",
        user_id="guest",
        app_id="app",
    )
    body = bytes(range(256)) * 1000  # 256 kB: several body frames
    ch.basic_publish("", q, body, props)
    method, got, got_body = get_all(ch, q, 1)[0]
    assert got_body == body
    for attr in [
        "content_type",
        "content_encoding",
        "headers",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ]:
        assert getattr(got, attr) == getattr(props, attr), attr
    assert method.redelivered is False
    conn.close()


def test_user_id_must_match_the_login(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="mallory"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, passive=True)
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'"
    conn.close()


def test_rpc_with_direct_reply_to(ferry):
    server_conn = connect(ferry)
    sch = server_conn.channel()
    sch.queue_declare("rpc_queue")
    stop = threading.Event()

    def serve():
        def on_request(c, method, props, body):
            n = int(body)
            c.basic_publish(
                "",
                props.reply_to,
                str(n * n).encode(),
                pika.BasicProperties(correlation_id=props.correlation_id),
            )
            c.basic_ack(method.delivery_tag)

        sch.basic_consume("rpc_queue", on_request)
        while not stop.is_set():
            server_conn.process_data_events(time_limit=0.05)

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    client = connect(ferry)
    cch = client.channel()
    replies = {}

    def on_reply(c, method, props, body):
        replies[props.correlation_id] = (body, method.routing_key)

    cch.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
    for i in range(10):
        cch.basic_publish(
            "",
            "rpc_queue",
            str(i).encode(),
            pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=f"c{i}"),
        )
    wait_for(lambda: (client.process_data_events(time_limit=0.05), len(replies) == 10)[1], 20, "10 replies")
    assert {k: v[0] for k, v in replies.items()} == {f"c{i}": str(i * i).encode() for i in range(10)}
    # The reply address the server saw is the generated one, not the pseudo-queue.
    assert all(rk.startswith("amq.rabbitmq.reply-to.") for _, rk in replies.values())
    stop.set()
    t.join(5)
    client.close()
    server_conn.close()


def test_direct_reply_to_needs_a_reply_consumer(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.basic_publish("", "nowhere", b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("", exclusive=True)
    assert (e.value.reply_code, e.value.reply_text) == (406, "PRECONDITION_FAILED - fast reply consumer does not exist")
    conn.close()


def test_priority_queue_delivers_high_before_low(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.queue_declare("prio", arguments={"x-max-priority": 10})
    for i in range(5):
        ch.basic_publish("", "prio", f"low-{i}".encode(), pika.BasicProperties(priority=1))
    for i in range(5):
        ch.basic_publish("", "prio", f"high-{i}".encode(), pika.BasicProperties(priority=9))
    for i in range(5):
        ch.basic_publish("", "prio", f"none-{i}".encode())
    got = [b.decode() for _, _, b in get_all(ch, "prio", 15)]
    assert got == [f"high-{i}" for i in range(5)] + [f"low-{i}" for i in range(5)] + [f"none-{i}" for i in range(5)]
    conn.close()


def x_death(props):
    return (props.headers or {}).get("x-death")


def test_poison_message_dead_lettered_after_delivery_limit_then_moved_back(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.queue_declare("work.dlq", durable=True)
    ch.queue_declare(
        "work",
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "work.dlq",
        },
    )
    ch.basic_publish("", "work", b"poison", pika.BasicProperties(delivery_mode=2, headers={"keep": "me"}))
    ch.basic_publish("", "work", b"fine", pika.BasicProperties(delivery_mode=2))
    deliveries = 0
    while True:
        got = get_all(ch, "work", 1, timeout=1.0, auto_ack=False)
        if not got:
            break
        method, props, body = got[0]
        if body == b"fine":
            ch.basic_ack(method.delivery_tag)
            continue
        deliveries += 1
        assert method.redelivered is (deliveries > 1)
        ch.basic_nack(method.delivery_tag, requeue=True)
        assert deliveries <= 10, "never dead-lettered"
    assert deliveries == 3, "x-delivery-limit 2: dead-lettered when delivered a third time and returned"
    (method, props, body) = get_all(ch, "work.dlq", 1, auto_ack=False)[0]
    assert body == b"poison"
    assert props.headers["keep"] == "me"
    deaths = x_death(props)
    assert len(deaths) == 1
    d = deaths[0]
    assert d["reason"] == "delivery_limit"
    assert d["queue"] == "work"
    assert d["exchange"] == ""
    assert d["routing-keys"] == ["work"]
    assert d["count"] == 1
    assert props.headers["x-first-death-reason"] == "delivery_limit"
    assert props.headers["x-first-death-queue"] == "work"
    # Move it back (a redrive): republish to work with its properties.
    ch.basic_publish("", "work", body, props)
    ch.basic_ack(method.delivery_tag)
    (m2, p2, b2) = get_all(ch, "work", 1)[0]
    assert b2 == b"poison"
    assert p2.headers["keep"] == "me"
    assert x_death(p2)[0]["queue"] == "work"
    assert ch.basic_get("work.dlq")[0] is None
    conn.close()


def test_ttl_expiry_to_a_dead_letter_exchange(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.exchange_declare("dlx", exchange_type="fanout")
    ch.queue_declare("expired")
    ch.queue_bind("expired", "dlx")
    ch.queue_declare("delay", arguments={"x-message-ttl": 300, "x-dead-letter-exchange": "dlx"})
    ch.queue_declare("delay2", arguments={"x-dead-letter-exchange": "dlx"})
    ch.basic_publish("", "delay", b"queue-ttl")
    ch.basic_publish("", "delay2", b"message-ttl", pika.BasicProperties(expiration="200"))
    ch.basic_publish("", "delay2", b"long-ttl", pika.BasicProperties(expiration="600000"))
    got = {b: p for _, p, b in get_all(ch, "expired", 2, timeout=15)}
    assert set(got) == {b"queue-ttl", b"message-ttl"}
    d = x_death(got[b"queue-ttl"])[0]
    assert (d["reason"], d["queue"], d["exchange"], d["routing-keys"]) == ("expired", "delay", "", ["delay"])
    d2 = x_death(got[b"message-ttl"])[0]
    assert (d2["reason"], d2["queue"], d2["original-expiration"]) == ("expired", "delay2", "200")
    # RabbitMQ drops the expiration when it dead-letters a message.
    assert got[b"message-ttl"].expiration is None
    # The message whose TTL has not passed is still there.
    assert ch.queue_declare("delay2", passive=True).method.message_count == 1
    assert ch.queue_declare("delay", passive=True).method.message_count == 0
    conn.close()


def test_publisher_confirms_and_mandatory_returns(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.queue_declare("confirmed", durable=True)
    ch.confirm_delivery()
    for i in range(200):
        ch.basic_publish("", "confirmed", f"m{i}".encode(), pika.BasicProperties(delivery_mode=2), mandatory=True)
    with pytest.raises(pika.exceptions.UnroutableError) as e:
        ch.basic_publish("", "no-such-queue", b"lost", mandatory=True)
    returned = e.value.messages[0]
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert returned.method.routing_key == "no-such-queue"
    assert returned.body == b"lost"
    # Unroutable without mandatory is confirmed and dropped.
    ch.basic_publish("", "no-such-queue", b"dropped")
    assert ch.queue_declare("confirmed", passive=True).method.message_count == 200
    conn.close()


def test_mandatory_return_without_confirms(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    returns = []
    ch.add_on_return_callback(lambda c, method, props, body: returns.append((method, props, body)))
    ch.basic_publish("amq.direct", "unbound", b"back", pika.BasicProperties(message_id="r1"), mandatory=True)
    wait_for(lambda: (conn.process_data_events(time_limit=0.05), returns)[1], 10, "basic.return")
    method, props, body = returns[0]
    assert (method.reply_code, method.reply_text, method.exchange, method.routing_key) == (312, "NO_ROUTE", "amq.direct", "unbound")
    assert props.message_id == "r1" and body == b"back"
    conn.close()


def test_transactions_hold_publishes_and_acks_until_commit(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    q = ch.queue_declare("txq").method.queue
    ch.tx_select()
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    other = conn.channel()
    assert other.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_commit()
    assert other.queue_declare(q, passive=True).method.message_count == 2
    ch.basic_publish("", q, b"c")
    ch.tx_rollback()
    assert other.queue_declare(q, passive=True).method.message_count == 2
    # An ack inside a transaction takes effect at commit; a rollback undoes it.
    method, _, body = ch.basic_get(q)
    assert body == b"a"
    ch.basic_ack(method.delivery_tag)
    ch.tx_rollback()
    ch.basic_ack(method.delivery_tag)
    ch.tx_commit()
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"b"
    ch.tx_commit()
    assert other.queue_declare(q, passive=True).method.message_count == 0
    conn.close()


def test_unknown_delivery_tag_closes_the_channel_only(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.basic_ack(99)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("", exclusive=True)
    assert (e.value.reply_code, e.value.reply_text) == (406, "PRECONDITION_FAILED - unknown delivery tag 99")
    ch2 = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch2.queue_declare("missing", passive=True)
    assert (e.value.reply_code, e.value.reply_text) == (404, "NOT_FOUND - no queue 'missing' in vhost '/'")
    assert conn.channel().queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")
    conn.close()


def test_consumer_cancel_notification_when_the_queue_is_deleted(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.queue_declare("doomed")
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume("doomed", lambda *a: None)
    assert tag.startswith("ctag") or tag.startswith("amq.ctag-")
    other = connect(ferry)
    other.channel().queue_delete("doomed")
    wait_for(lambda: (conn.process_data_events(time_limit=0.05), cancelled)[1], 10, "basic.cancel from the server")
    assert cancelled == [tag]
    other.close()
    conn.close()


def test_basic_get_counts_and_redelivered_flag(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    q = ch.queue_declare("getq").method.queue
    for i in range(3):
        ch.basic_publish("", q, f"g{i}".encode())
    method, _, body = ch.basic_get(q)
    assert (body, method.message_count, method.redelivered) == (b"g0", 2, False)
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q)
    assert (body, method.redelivered) == (b"g0", True)
    ch.basic_nack(method.delivery_tag, multiple=False, requeue=False)
    m1, _, b1 = ch.basic_get(q)
    m2, _, b2 = ch.basic_get(q)
    assert (b1, b2) == (b"g1", b"g2")
    ch.basic_ack(m2.delivery_tag, multiple=True)
    assert ch.basic_get(q)[0] is None
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    conn.close()


def test_channel_close_requeues_unacked_as_redelivered(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    q = ch.queue_declare("requeue").method.queue
    for i in range(4):
        ch.basic_publish("", q, f"r{i}".encode())
    ch.basic_qos(prefetch_count=2)
    got = consume_n(conn, ch, q, 2, auto_ack=False)
    assert [b for _, _, b in got] == [b"r0", b"r1"]
    ch.close()
    ch2 = conn.channel()
    got = get_all(ch2, q, 4)
    assert [(b, m.redelivered) for m, _, b in got] == [(b"r0", True), (b"r1", True), (b"r2", False), (b"r3", False)]
    conn.close()


def test_prefetch_limits_unacked_deliveries(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    q = ch.queue_declare("prefetch").method.queue
    for i in range(10):
        ch.basic_publish("", q, f"p{i}".encode())
    ch.basic_qos(prefetch_count=3)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m))
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert len(got) == 3
    ch.basic_ack(got[-1].delivery_tag, multiple=True)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert len(got) == 6
    conn.close()


CONSUMER_SCRIPT = textwrap.dedent(
    """
    import sys, pika
    params = pika.URLParameters(sys.argv[1])
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3)
    def on_message(c, method, props, body):
        print("got", body.decode(), flush=True)   # and never ack
    ch.basic_consume("jobs", on_message)
    ch.start_consuming()
    """
)


def test_consumer_killed_before_acking_redelivers_to_another(ferry, tmp_path):
    conn = connect(ferry)
    ch = conn.channel()
    ch.queue_declare("jobs", durable=True)
    for i in range(5):
        ch.basic_publish("", "jobs", f"job-{i}".encode(), pika.BasicProperties(delivery_mode=2))
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), ferry.amqp_url], stdout=subprocess.PIPE, text=True)
    try:
        held = []
        while len(held) < 3:
            line = proc.stdout.readline()
            assert line, "consumer exited early"
            held.append(line.split()[1])
        assert held == ["job-0", "job-1", "job-2"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    got = get_all(ch, "jobs", 5, timeout=15)
    assert sorted((b.decode(), m.redelivered) for m, _, b in got) == [
        ("job-0", True),
        ("job-1", True),
        ("job-2", True),
        ("job-3", False),
        ("job-4", False),
    ]
    conn.close()


def test_broker_sigkill_keeps_confirmed_and_forgets_acked(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.queue_declare("durable-q", durable=True)
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish("", "durable-q", f"d{i:03}".encode(), pika.BasicProperties(delivery_mode=2))
    # All 100 confirmed. Take 30 and ack them; hold 5 unacked.
    for i in range(30):
        method, _, body = ch.basic_get("durable-q")
        assert body == f"d{i:03}".encode()
        ch.basic_ack(method.delivery_tag)
    held = [ch.basic_get("durable-q") for _ in range(5)]
    assert [b for _, _, b in held] == [f"d{i:03}".encode() for i in range(30, 35)]
    # A round trip after the acks, then give the ack journal a moment.
    ch.queue_declare("durable-q", passive=True)
    time.sleep(1.0)
    ferry.kill9()
    ferry.start(listen=f"127.0.0.1:{ferry.port}", amqp_listen=f"127.0.0.1:{ferry.amqp_port}")
    conn2 = connect(ferry)
    ch2 = conn2.channel()
    assert ch2.queue_declare("durable-q", durable=True, passive=True).method.message_count == 70
    got = get_all(ch2, "durable-q", 70, timeout=20)
    assert [b for _, _, b in got] == [f"d{i:03}".encode() for i in range(30, 100)]
    # The five that were in flight come back flagged redelivered.
    assert [m.redelivered for m, _, _ in got[:5]] == [True] * 5
    assert [m.redelivered for m, _, _ in got[5:]] == [False] * 65
    assert ch2.basic_get("durable-q")[0] is None
    conn2.close()


def test_exchange_to_exchange_binding_and_alternate_exchange(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    ch.exchange_declare("src", exchange_type="topic")
    ch.exchange_declare("dst", exchange_type="fanout")
    ch.exchange_bind("dst", "src", "a.#")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "dst")
    ch.exchange_declare("unrouted", exchange_type="fanout")
    ch.exchange_declare("with-ae", exchange_type="direct", arguments={"alternate-exchange": "unrouted"})
    qa = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(qa, "unrouted")
    ch.basic_publish("src", "a.b", b"via-e2e")
    ch.basic_publish("src", "b.a", b"not-matching")
    ch.basic_publish("with-ae", "nobody", b"to-ae")
    assert [b for _, _, b in get_all(ch, q, 1)] == [b"via-e2e"]
    assert [b for _, _, b in get_all(ch, qa, 1)] == [b"to-ae"]
    assert ch.basic_get(q)[0] is None
    conn.close()


def test_consumer_priorities(ferry):
    """The x-priority 10 consumer gets every message while it has prefetch
    room; the priority-0 one gets the rest."""
    conn = connect(ferry)
    ch = conn.channel()
    q = ch.queue_declare("prio-consumers").method.queue
    ch.basic_qos(prefetch_count=5)
    low, high = [], []
    ch.basic_consume(q, lambda c, m, p, b: low.append(b), arguments={"x-priority": 0})
    ch.basic_consume(q, lambda c, m, p, b: high.append(b), arguments={"x-priority": 10})
    for i in range(8):
        ch.basic_publish("", q, f"m{i}".encode())
    wait_for(lambda: (conn.process_data_events(time_limit=0.05), len(low) + len(high) == 8)[1], 10, "8 deliveries")
    assert high == [f"m{i}".encode() for i in range(5)]
    assert low == [f"m{i}".encode() for i in range(5, 8)]
    conn.close()


def test_basic_recover_redelivers_unacked(ferry):
    conn = connect(ferry)
    ch = conn.channel()
    q = ch.queue_declare("recover").method.queue
    ch.basic_publish("", q, b"once")
    method, _, body = ch.basic_get(q)
    assert (body, method.redelivered) == (b"once", False)
    ch.basic_recover(requeue=True)
    method, _, body = get_all(ch, q, 1)[0]
    assert (body, method.redelivered) == (b"once", True)
    conn.close()
