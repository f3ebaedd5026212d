"""Users, vhosts and permissions from ferry.toml, seen through pika: the
replies RabbitMQ gives (530 for a vhost without permissions, 403 for an
operation the user's configure/write/read expressions refuse, 406 for a
forged user_id), and everything permitted working as usual."""

from __future__ import annotations

import time
from urllib.parse import quote

import pika
import pytest

CONFIG = r"""
[amqp]
vhosts = ["/", "orders"]

[[amqp.users]]
name = "app"
password = "app-pw"
permissions.orders = { configure = "^app\\.", write = "^(app\\.|amq\\.default$)", read = "^app\\." }

[[amqp.users]]
name = "admin"
# "1", hashed as RabbitMQ hashes it (rabbit_password_hashing_sha256).
password_hash = "y4xPTRVfzXg68sz9ALqeQzARam3CwnGo53xS752cDV5+Utzh"
tags = ["administrator"]
permissions.orders = { configure = ".*", write = ".*", read = ".*" }
permissions."/" = { configure = ".*", write = ".*", read = ".*" }
"""


@pytest.fixture
def ferry_users(tmp_path, monkeypatch, request):
    """A server started with CONFIG (FERRY_CONFIG is read by `ferry serve`)."""
    path = tmp_path / "ferry.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("FERRY_CONFIG", str(path))
    return request.getfixturevalue("ferry")


def connect(ferry, user: str, password: str, vhost: str) -> pika.BlockingConnection:
    url = f"amqp://{user}:{password}@127.0.0.1:{ferry.amqp_port}/{quote(vhost, safe='')}"
    p = pika.URLParameters(url)
    p.socket_timeout = 10
    p.connection_attempts = 1
    return pika.BlockingConnection(p)


def test_vhost_permissions_and_logins(ferry_users):
    ferry = ferry_users
    with pytest.raises(pika.exceptions.AMQPConnectionError) as e:
        connect(ferry, "app", "app-pw", "/")
    assert "access to vhost '/' refused for user 'app'" in str(e.value)
    with pytest.raises(pika.exceptions.AMQPConnectionError) as e:
        connect(ferry, "app", "app-pw", "nope")
    assert "vhost nope not found" in str(e.value)
    # Configured users replace the default guest.
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(ferry, "guest", "guest", "/")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(ferry, "app", "wrong", "orders")
    for vhost in ["/", "orders"]:
        connect(ferry, "admin", "1", vhost).close()
    connect(ferry, "app", "app-pw", "orders").close()


def refused(fn, code: int = 403) -> str:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        fn()
    assert e.value.reply_code == code, e.value
    return e.value.reply_text


def test_resource_permissions(ferry_users):
    ferry = ferry_users
    admin = connect(ferry, "admin", "1", "orders")
    ach = admin.channel()
    ach.queue_declare("private")
    ach.basic_publish("", "private", b"secret")

    conn = connect(ferry, "app", "app-pw", "orders")
    ch = conn.channel()
    ch.queue_declare("app.q")
    assert (
        refused(lambda: ch.queue_declare("other"))
        == "ACCESS_REFUSED - configure access to queue 'other' in vhost 'orders' refused for user 'app'"
    )
    ch = conn.channel()
    assert "configure access to queue 'amq.gen-" in refused(lambda: ch.queue_declare("", exclusive=True))
    ch = conn.channel()
    ch.exchange_declare("app.x", "direct")
    assert (
        refused(lambda: ch.exchange_declare("app.x2", "direct", arguments={"alternate-exchange": "ae"}))
        == "ACCESS_REFUSED - write access to exchange 'ae' in vhost 'orders' refused for user 'app'"
    )
    ch = conn.channel()
    assert (
        refused(lambda: ch.basic_get("private"))
        == "ACCESS_REFUSED - read access to queue 'private' in vhost 'orders' refused for user 'app'"
    )
    ch = conn.channel()
    assert "read access to queue 'private'" in refused(lambda: ch.basic_consume("private", lambda *a: None))
    ch = conn.channel()
    assert (
        refused(lambda: ch.queue_bind("app.q", "amq.direct", "k"))
        == "ACCESS_REFUSED - read access to exchange 'amq.direct' in vhost 'orders' refused for user 'app'"
    )
    ch = conn.channel()
    ch.queue_bind("app.q", "app.x", "k")
    ch.basic_publish("", "app.q", b"one")
    ch.basic_publish("app.x", "k", b"two")
    bodies = []
    deadline = time.monotonic() + 10
    while len(bodies) < 2 and time.monotonic() < deadline:
        method, _props, body = ch.basic_get("app.q", auto_ack=True)
        if method is None:
            time.sleep(0.02)
        else:
            bodies.append(body)
    assert bodies == [b"one", b"two"]

    # A refused publish closes the channel asynchronously, as in RabbitMQ.
    ch.basic_publish("amq.direct", "k", b"no")
    text = refused(lambda: ch.basic_get("app.q"))
    assert text == "ACCESS_REFUSED - write access to exchange 'amq.direct' in vhost 'orders' refused for user 'app'"

    ch = conn.channel()
    ch.basic_publish("", "app.q", b"forged", pika.BasicProperties(user_id="admin"))
    text = refused(lambda: ch.basic_get("app.q"), code=406)
    assert text == "PRECONDITION_FAILED - user_id property set to 'admin' but authenticated user was 'app'"

    # The connection survived every channel error.
    ch = conn.channel()
    ch.queue_declare("app.q", passive=True)
    conn.close()
    method, _props, body = ach.basic_get("private", auto_ack=True)
    assert body == b"secret"
    admin.close()
