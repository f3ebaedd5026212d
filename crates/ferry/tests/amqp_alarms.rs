//! Resource alarms end to end, on the real binary: below `--disk-free-limit`
//! free bytes the disk alarm goes up (and is logged), a connection that
//! publishes gets connection.blocked "low on disk" and is not read from,
//! consumers keep draining; when space returns the alarm clears, the
//! publisher gets connection.unblocked and its held publish arrives.
//!
//! The second test mounts a small tmpfs as the data directory, which needs
//! root; CI runs as root.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, connection, queue};
use amq_protocol::types::FieldTable;

use common::Server;
use common::amqp::{Amqp, Login};
use common::tmpfs::Tmpfs;

fn publisher(server: &Server) -> Amqp {
    let mut c = Amqp::handshake(
        server.amqp(),
        &Login {
            blocked_capability: true,
            ..Login::default()
        },
    );
    c.open_channel(1);
    c
}

fn consumer(server: &Server) -> Amqp {
    let mut c = Amqp::handshake(
        server.amqp(),
        &Login {
            blocked_capability: true,
            ..Login::default()
        },
    );
    c.open_channel(1);
    c
}

/// The next frame on channel 0, or None if nothing comes within `wait`.
fn channel0(c: &mut Amqp, wait: Duration) -> Option<AMQPClass> {
    c.stream.set_read_timeout(Some(wait)).unwrap();
    let r = loop {
        match c.recv() {
            Ok(AMQPFrame::Method(0, m)) => break Some(m),
            Ok(AMQPFrame::Heartbeat) => continue,
            Ok(other) => panic!("unexpected frame {other:?}"),
            Err(_) => break None,
        }
    };
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    r
}

fn expect_blocked(c: &mut Amqp, reason: &str) {
    match channel0(c, Duration::from_secs(10)) {
        Some(AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
            assert_eq!(b.reason.as_str(), reason)
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
}

/// basic.get with no-ack: the body, or None when the queue is empty.
fn get(c: &mut Amqp, queue: &str) -> Option<Vec<u8>> {
    let m = c
        .call(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: queue.into(),
                no_ack: true,
            })),
        )
        .unwrap();
    match m {
        AMQPClass::Basic(basic::AMQPMethod::GetOk(_)) => {
            let _header = c.recv().unwrap();
            match c.recv().unwrap() {
                AMQPFrame::Body(_, body) => Some(body),
                // An empty body has no body frame; what came is the next
                // frame, which no caller sends before asking again.
                other => panic!("expected a body, got {other:?}"),
            }
        }
        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)) => None,
        other => panic!("expected get-ok or get-empty, got {other:?}"),
    }
}

fn get_soon(c: &mut Amqp, queue: &str) -> Option<Vec<u8>> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(b) = get(c, queue) {
            return Some(b);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn message_count(c: &mut Amqp, queue: &str) -> u32 {
    match c
        .call(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: queue.into(),
                passive: true,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .unwrap()
    {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => ok.message_count,
        other => panic!("expected declare-ok, got {other:?}"),
    }
}

#[test]
fn disk_alarm_blocks_publishers_and_lets_consumers_drain() {
    let dir = tempfile::tempdir().unwrap();
    // More free space than any disk has: the alarm is up from the start.
    let mut server = Server::start(dir.path(), &["--disk-free-limit", "1000000000000000000"]);
    server.wait_for_log("disk alarm raised");
    assert!(server.log_text().contains("--disk-free-limit"));

    let mut cons = consumer(&server);
    // Declaring is not publishing: never blocked.
    cons.declare_queue(1, "jobs");
    let mut publ = publisher(&server);
    assert!(
        channel0(&mut publ, Duration::from_millis(300)).is_none(),
        "blocked before publishing"
    );
    // An empty message is whole at its content header: it goes through,
    // and the connection is blocked right after it.
    publ.publish(1, "", "jobs", None, b"");
    expect_blocked(&mut publ, "low on disk");
    // Not read any more: this one waits.
    publ.publish(1, "", "jobs", None, b"held");
    std::thread::sleep(Duration::from_millis(300));
    // The consumer drains what arrived.
    let start = Instant::now();
    while message_count(&mut cons, "jobs") == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "nothing arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(message_count(&mut cons, "jobs"), 1);
    let consume = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: "jobs".into(),
        consumer_tag: "c".into(),
        no_local: false,
        no_ack: true,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    }));
    assert!(matches!(
        cons.call(1, consume),
        Ok(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
    ));
    match cons.next_on(1) {
        Ok(AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
            assert_eq!(d.routing_key.as_str(), "jobs")
        }
        other => panic!("expected a delivery, got {other:?}"),
    }
    // Only the header of the empty message: no body frame.
    assert!(matches!(cons.recv().unwrap(), AMQPFrame::Header(..)));
    // The held message never came while the alarm lasts.
    assert!(channel0(&mut cons, Duration::from_millis(500)).is_none());
    assert!(server.is_running());
    assert!(server.terminate().success());
}

#[test]
fn disk_alarm_clears_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount_or_skip(&dir.path().join("mnt"), "16m") else {
        return;
    };
    let data = tmpfs.0.join("data");
    let mut server = Server::start(&data, &["--disk-free-limit", "8MiB"]);
    let mut cons = consumer(&server);
    cons.declare_queue(1, "jobs");
    let mut publ = publisher(&server);
    for i in 0..3 {
        publ.publish(1, "", "jobs", None, format!("before {i}").as_bytes());
    }
    let start = Instant::now();
    while message_count(&mut cons, "jobs") < 3 {
        assert!(start.elapsed() < Duration::from_secs(10), "publishes lost");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!server.log_text().contains("disk alarm raised"));

    // Fill the filesystem past the limit.
    std::fs::write(tmpfs.0.join("filler"), vec![0u8; 10 << 20]).unwrap();
    server.wait_for_log("disk alarm raised");
    publ.publish(1, "", "jobs", None, b"held");
    expect_blocked(&mut publ, "low on disk");
    // Consumers keep draining.
    for i in 0..3 {
        assert_eq!(
            get(&mut cons, "jobs"),
            Some(format!("before {i}").into_bytes())
        );
    }
    assert_eq!(get(&mut cons, "jobs"), None);

    // Grow the filesystem: the alarm clears within a second or so.
    tmpfs.resize("64m");
    match channel0(&mut publ, Duration::from_secs(10)) {
        Some(AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))) => {}
        other => panic!("expected connection.unblocked, got {other:?}"),
    }
    server.wait_for_log("disk alarm cleared");
    assert_eq!(get_soon(&mut cons, "jobs"), Some(b"held".to_vec()));
    // And publishing goes on as usual.
    publ.publish(1, "", "jobs", None, b"after");
    assert_eq!(get_soon(&mut cons, "jobs"), Some(b"after".to_vec()));
    assert!(server.terminate().success());
}
