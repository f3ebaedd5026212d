//! Publishes that arrive in one socket read are held back and routed
//! together (one write per queue); these tests send frames in one write and
//! check that nothing a client can see changed: a method after publishes
//! sees them, a publish refused for its exchange closes its channel and
//! the channel's later publishes in the same read are dropped, confirms
//! and returns come for each message.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, confirm, queue};
use amq_protocol::types::FieldTable;

use common::Server;
use common::amqp::{Amqp, Login};

fn get(c: &mut Amqp, ch: u16, q: &str) -> Option<Vec<u8>> {
    c.send(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: q.into(),
            no_ack: true,
        })),
    );
    body_of_get(c, ch)
}

/// The body of the basic.get-ok that comes next on `ch`, or None for
/// get-empty.
fn body_of_get(c: &mut Amqp, ch: u16) -> Option<Vec<u8>> {
    match c.next_on(ch) {
        Ok(AMQPClass::Basic(basic::AMQPMethod::GetOk(_))) => {}
        Ok(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))) => return None,
        other => panic!("expected basic.get-ok or get-empty, got {other:?}"),
    }
    let mut body = Vec::new();
    let mut size = None;
    while size != Some(body.len() as u64) {
        match c.recv().unwrap() {
            AMQPFrame::Header(_, h) => size = Some(h.body_size),
            AMQPFrame::Body(_, b) => body.extend_from_slice(&b),
            other => panic!("expected content, got {other:?}"),
        }
    }
    Some(body)
}

/// A fresh server and a connection to it with channel 1 open (the
/// directory and server live as long as the caller keeps them).
fn connected() -> (tempfile::TempDir, Server, Amqp) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = Amqp::handshake(server.amqp(), &Login::default());
    c.open_channel(1);
    (dir, server, c)
}

#[test]
fn publishes_read_together_are_routed_before_the_next_method_and_stop_at_a_channel_error() {
    let (_dir, _server, mut c) = connected();
    let q = c.declare_queue(1, "held");

    // A basic.get read with the publishes before it sees them.
    c.cork();
    c.publish(1, "", &q, None, b"one");
    c.publish(1, "", &q, None, b"two");
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: q.as_str().into(),
            no_ack: true,
        })),
    );
    c.uncork();
    assert_eq!(body_of_get(&mut c, 1).as_deref(), Some(&b"one"[..]));

    // A publish to a missing exchange closes the channel at once, as
    // RabbitMQ does: the publish after it in the same read is dropped,
    // the one before it is routed.
    c.cork();
    c.publish(1, "", &q, None, b"three");
    c.publish(1, "nope", "x", None, b"lost");
    c.publish(1, "", &q, None, b"after");
    c.uncork();
    let (code, text) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str()),
        (404, "NOT_FOUND - no exchange 'nope' in vhost '/'")
    );
    c.open_channel(2);
    assert_eq!(get(&mut c, 2, &q).as_deref(), Some(&b"two"[..]));
    assert_eq!(get(&mut c, 2, &q).as_deref(), Some(&b"three"[..]));
    assert_eq!(get(&mut c, 2, &q), None);
}

#[test]
fn publishes_read_together_are_each_confirmed_or_returned() {
    let (_dir, _server, mut c) = connected();
    match c.call(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "durable-held".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ) {
        Ok(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) => {}
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
    match c.call(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    ) {
        Ok(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))) => {}
        other => panic!("expected confirm.select-ok, got {other:?}"),
    }

    // Five publishes in one write, the fourth mandatory and unroutable.
    c.cork();
    for i in 1..=5u8 {
        if i == 4 {
            c.send(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: "".into(),
                    routing_key: "no-such-queue".into(),
                    mandatory: true,
                    immediate: false,
                })),
            );
            c.content_header(1, 1);
            c.content_body(1, b"r");
        } else {
            let mut p = vec![0, 60, 0, 0];
            p.extend_from_slice(&1u64.to_be_bytes());
            p.extend_from_slice(&0x1000u16.to_be_bytes()); // delivery-mode only
            p.push(2); // persistent
            let mut f = vec![2, 0, 1];
            f.extend_from_slice(&(p.len() as u32).to_be_bytes());
            f.extend_from_slice(&p);
            f.push(0xCE);
            c.publish_header(1, "", "durable-held");
            c.send_raw(&f);
            c.content_body(1, &[b'0' + i]);
        }
    }
    c.uncork();

    // The return comes before the ack of its message; every tag is acked.
    let mut acked = 0;
    let mut returned_before_its_ack = false;
    while acked < 5 {
        match c.next_on(1) {
            Ok(AMQPClass::Basic(basic::AMQPMethod::Return(r))) => {
                assert_eq!(r.reply_code, 312);
                assert_eq!(r.routing_key.as_str(), "no-such-queue");
                returned_before_its_ack = acked < 4;
            }
            Ok(AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                assert!(a.delivery_tag > acked, "acks out of order: {a:?}");
                acked = a.delivery_tag;
            }
            other => panic!("expected basic.ack or basic.return, got {other:?}"),
        }
    }
    assert!(returned_before_its_ack);
    for want in [b"1", b"2", b"3", b"5"] {
        assert_eq!(get(&mut c, 1, "durable-held").as_deref(), Some(&want[..]));
    }
    assert_eq!(get(&mut c, 1, "durable-held"), None);
}
