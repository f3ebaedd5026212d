//! Users, vhosts and permissions from ferry.toml, enforced as RabbitMQ
//! enforces them: connection.open to a vhost without permissions is
//! `530 NOT_ALLOWED`, an operation the user's configure/write/read
//! expressions do not allow is `403 ACCESS_REFUSED` on the channel (with
//! RabbitMQ's text), and `user_id` must be the logged-in user unless the
//! user is an impersonator.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use amq_protocol::protocol::{AMQPClass, basic, exchange, queue};
use amq_protocol::types::{AMQPValue, FieldTable};

use common::Server;
use common::amqp::{Amqp, Login};

const CONFIG: &str = r#"
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

[[amqp.users]]
name = "relay"
password = "relay-pw"
tags = ["impersonator"]
permissions.orders = { configure = "", write = ".*", read = "" }
"#;

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--config", config.to_str().unwrap()]);
    (dir, server)
}

fn login<'a>(user: &'a str, password: &'a str, vhost: &'a str) -> Login<'a> {
    Login {
        user,
        password,
        vhost,
        ..Login::default()
    }
}

fn declare_queue(name: &str, args: FieldTable) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: args,
    }))
}

fn declare_exchange(name: &str, args: FieldTable) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
        exchange: name.into(),
        kind: "direct".into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: args,
    }))
}

fn with_arg(key: &str, value: &str) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(key.into(), AMQPValue::LongString(value.into()));
    t
}

fn get(queue: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
        queue: queue.into(),
        no_ack: true,
    }))
}

/// `Err((code, text))` is expected: the channel closed with it.
fn refused(r: Result<AMQPClass, (u16, String)>) -> String {
    match r {
        Err((403, text)) => text,
        other => panic!("expected 403 ACCESS_REFUSED, got {other:?}"),
    }
}

#[test]
fn vhost_access_and_logins() {
    let (_dir, mut server) = server();
    let addr = server.amqp();

    // No permissions on "/": 530, as RabbitMQ words it.
    let mut c = Amqp::connect(addr);
    c.start(&login("app", "app-pw", "/"));
    let (code, text, class, method) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str(), class, method),
        (
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'app'",
            10,
            40
        )
    );
    // A vhost that does not exist is reported as such first.
    let mut c = Amqp::connect(addr);
    c.start(&login("app", "app-pw", "nope"));
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str()),
        (530, "NOT_ALLOWED - vhost nope not found")
    );
    // The configured users replace guest.
    let mut c = Amqp::connect(addr);
    c.start(&Login::default());
    let (code, _, _, _) = c.expect_connection_close();
    assert_eq!(code, 403);
    // Wrong password.
    let mut c = Amqp::connect(addr);
    c.start(&login("app", "wrong", "orders"));
    let (code, _, _, _) = c.expect_connection_close();
    assert_eq!(code, 403);
    // A RabbitMQ password hash, on both vhosts.
    Amqp::handshake(addr, &login("admin", "1", "/"));
    Amqp::handshake(addr, &login("admin", "1", "orders"));
    Amqp::handshake(addr, &login("app", "app-pw", "orders"));
    assert!(
        server
            .log_text()
            .contains("access to vhost '/' refused for user 'app'")
    );
    assert!(server.terminate().success());
}

#[test]
fn configure_write_and_read_permissions() {
    let (_dir, mut server) = server();
    let addr = server.amqp();
    let mut admin = Amqp::handshake(addr, &login("admin", "1", "orders"));
    admin.open_channel(1);
    admin.declare_queue(1, "private");
    admin.publish(1, "", "private", None, b"secret");

    let mut c = Amqp::handshake(addr, &login("app", "app-pw", "orders"));
    let mut ch = 0;
    let mut next = |c: &mut Amqp| {
        ch += 1;
        c.open_channel(ch);
        ch
    };

    // configure: declare what matches ^app\. only.
    let n = next(&mut c);
    assert!(matches!(
        c.call(n, declare_queue("app.q", FieldTable::default())),
        Ok(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
    ));
    assert_eq!(
        refused(c.call(n, declare_queue("other", FieldTable::default()))),
        "ACCESS_REFUSED - configure access to queue 'other' in vhost 'orders' refused for user 'app'"
    );
    // A server-named queue is checked under its generated name.
    let n = next(&mut c);
    let text = refused(c.call(n, declare_queue("", FieldTable::default())));
    assert!(
        text.starts_with("ACCESS_REFUSED - configure access to queue 'amq.gen-"),
        "{text}"
    );
    let n = next(&mut c);
    assert_eq!(
        refused(c.call(n, declare_exchange("x", FieldTable::default()))),
        "ACCESS_REFUSED - configure access to exchange 'x' in vhost 'orders' refused for user 'app'"
    );
    let n = next(&mut c);
    assert!(matches!(
        c.call(n, declare_exchange("app.x", FieldTable::default())),
        Ok(AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_)))
    ));
    // With an alternate exchange: write on it too.
    assert_eq!(
        refused(c.call(
            n,
            declare_exchange("app.x2", with_arg("alternate-exchange", "ae"))
        )),
        "ACCESS_REFUSED - write access to exchange 'ae' in vhost 'orders' refused for user 'app'"
    );
    // With a dead-letter exchange: write on it too.
    let n = next(&mut c);
    assert_eq!(
        refused(c.call(
            n,
            declare_queue("app.dl", with_arg("x-dead-letter-exchange", "dlx"))
        )),
        "ACCESS_REFUSED - write access to exchange 'dlx' in vhost 'orders' refused for user 'app'"
    );
    let n = next(&mut c);
    assert_eq!(
        refused(c.call(
            n,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: "private".into(),
                if_unused: false,
                if_empty: false,
                nowait: false,
            }))
        )),
        "ACCESS_REFUSED - configure access to queue 'private' in vhost 'orders' refused for user 'app'"
    );

    // read: get, consume and purge need it on the queue.
    let n = next(&mut c);
    assert_eq!(
        refused(c.call(n, get("private"))),
        "ACCESS_REFUSED - read access to queue 'private' in vhost 'orders' refused for user 'app'"
    );
    let n = next(&mut c);
    let consume = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: "private".into(),
        consumer_tag: "".into(),
        no_local: false,
        no_ack: true,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    }));
    assert!(refused(c.call(n, consume)).contains("read access to queue 'private'"));
    let n = next(&mut c);
    let purge = AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
        queue: "private".into(),
        nowait: false,
    }));
    assert!(refused(c.call(n, purge)).contains("read access to queue 'private'"));

    // bind: write on the queue, read on the exchange.
    let n = next(&mut c);
    let bind = |q: &str, x: &str| {
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: q.into(),
            exchange: x.into(),
            routing_key: "k".into(),
            nowait: false,
            arguments: FieldTable::default(),
        }))
    };
    assert_eq!(
        refused(c.call(n, bind("app.q", "amq.direct"))),
        "ACCESS_REFUSED - read access to exchange 'amq.direct' in vhost 'orders' refused for user 'app'"
    );
    let n = next(&mut c);
    assert_eq!(
        refused(c.call(n, bind("private", "app.x"))),
        "ACCESS_REFUSED - write access to queue 'private' in vhost 'orders' refused for user 'app'"
    );
    let n = next(&mut c);
    assert!(matches!(
        c.call(n, bind("app.q", "app.x")),
        Ok(AMQPClass::Queue(queue::AMQPMethod::BindOk(_)))
    ));
    // exchange-to-exchange: write on the destination, read on the source.
    let e2e = AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
        destination: "app.x".into(),
        source: "amq.fanout".into(),
        routing_key: "".into(),
        nowait: false,
        arguments: FieldTable::default(),
    }));
    assert_eq!(
        refused(c.call(n, e2e)),
        "ACCESS_REFUSED - read access to exchange 'amq.fanout' in vhost 'orders' refused for user 'app'"
    );

    // write: publish to the default exchange (amq.default) and app.* only.
    let n = next(&mut c);
    c.publish(n, "", "app.q", None, b"one");
    c.publish(n, "app.x", "k", None, b"two");
    let got = |c: &mut Amqp, ch| match c.call(ch, get("app.q")) {
        Ok(AMQPClass::Basic(basic::AMQPMethod::GetOk(_))) => {
            c.recv().unwrap();
            c.recv().unwrap();
            true
        }
        Ok(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))) => false,
        other => panic!("{other:?}"),
    };
    let mut n_got = 0;
    for _ in 0..200 {
        if got(&mut c, n) {
            n_got += 1;
            if n_got == 2 {
                break;
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    assert_eq!(n_got, 2, "both permitted publishes arrive");
    c.publish(n, "amq.direct", "k", None, b"no");
    assert_eq!(
        c.next_on(n),
        Err((
            403,
            "ACCESS_REFUSED - write access to exchange 'amq.direct' in vhost 'orders' refused for user 'app'"
                .to_string()
        ))
    );

    // user_id must be the logged-in user...
    let n = next(&mut c);
    c.publish(n, "", "app.q", Some("admin"), b"forged");
    assert_eq!(
        c.next_on(n),
        Err((
            406,
            "PRECONDITION_FAILED - user_id property set to 'admin' but authenticated user was 'app'"
                .to_string()
        ))
    );
    let n = next(&mut c);
    c.publish(n, "", "app.q", Some("app"), b"mine");
    let mut mine = false;
    for _ in 0..200 {
        if got(&mut c, n) {
            mine = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(mine, "a user_id naming the publisher is accepted");
    // ... unless the user is an impersonator.
    let mut relay = Amqp::handshake(addr, &login("relay", "relay-pw", "orders"));
    relay.open_channel(1);
    relay.publish(1, "", "private", Some("admin"), b"on behalf");
    // Nothing to read for relay ("" read permission): admin checks instead.
    let mut count = 0;
    for _ in 0..200 {
        match admin.call(1, get("private")).unwrap() {
            AMQPClass::Basic(basic::AMQPMethod::GetOk(_)) => {
                admin.recv().unwrap();
                admin.recv().unwrap();
                count += 1;
                if count == 2 {
                    break;
                }
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    assert_eq!(count, 2, "admin's message and relay's impersonated one");

    // Channel errors closed channels only: the connection still works.
    let n = next(&mut c);
    assert!(matches!(
        c.call(n, declare_queue("app.q", FieldTable::default())),
        Ok(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
    ));
    assert!(server.is_running());
    assert!(server.terminate().success());
}
