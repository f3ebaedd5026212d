//! Hostile and broken AMQP 0-9-1 input over raw sockets: each case gets the
//! reply code and text RabbitMQ would send, only the offending connection
//! (or channel) is closed, and the server keeps serving.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, channel, connection, queue};
use amq_protocol::types::FieldTable;
use std::io::Write;

use common::Server;
use common::amqp::{Amqp, HEADER, Login};

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    (dir, server)
}

/// After every case: a fresh connection still works and nothing panicked.
fn still_serving(server: &mut Server) {
    let mut c = Amqp::handshake(server.amqp(), &Login::default());
    c.open_channel(1);
    let name = c.declare_queue(1, "");
    assert!(name.starts_with("amq.gen-"), "{name}");
    assert!(server.is_running(), "server died:\n{}", server.log_text());
    assert!(
        !server.log_text().contains("panicked"),
        "server panicked:\n{}",
        server.log_text()
    );
}

#[test]
fn wrong_protocol_header_gets_ours_and_a_close() {
    let (_dir, mut server) = server();
    for bad in [
        &b"AMQP\x01\x01\x00\x0a"[..],
        b"AMQP\x00\x00\x09\x00",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut c = Amqp::connect(server.amqp());
        c.send_raw(bad);
        assert_eq!(c.read_to_end(), HEADER, "reply to {bad:?}");
    }
    still_serving(&mut server);
}

#[test]
fn login_failures() {
    let (_dir, mut server) = server();
    // Wrong password, client announces authentication_failure_close.
    let mut c = Amqp::connect(server.amqp());
    c.start(&Login {
        password: "wrong",
        ..Login::default()
    });
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    assert!(c.is_closed_by_server());
    // Without the capability the socket is just closed.
    let mut c = Amqp::connect(server.amqp());
    c.start(&Login {
        password: "wrong",
        auth_failure_close: false,
        ..Login::default()
    });
    assert!(c.is_closed_by_server());
    // Unknown vhost.
    let mut c = Amqp::connect(server.amqp());
    c.start(&Login {
        vhost: "/nope",
        ..Login::default()
    });
    let (code, text, class, method) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str(), class, method),
        (530, "NOT_ALLOWED - vhost /nope not found", 10, 40)
    );
    // frame_max below the spec's minimum.
    let mut c = Amqp::connect(server.amqp());
    c.start(&Login {
        frame_max: 1024,
        ..Login::default()
    });
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 530);
    assert_eq!(
        text,
        "NOT_ALLOWED - negotiated frame_max = 1024 is lower than the minimum allowed value (4096)"
    );
    still_serving(&mut server);
}

#[test]
fn frame_level_errors_close_the_connection() {
    let (_dir, mut server) = server();
    let addr = server.amqp();

    // A frame above the negotiated frame_max (4096 here): 501, before the
    // server reads (or allocates) the payload.
    let mut c = Amqp::handshake(
        addr,
        &Login {
            frame_max: 4096,
            ..Login::default()
        },
    );
    c.open_channel(1);
    c.send_raw(&[1, 0, 1, 0x10, 0, 0, 0]); // claims 256 MiB
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 501, "{text}");
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");

    // A bad frame-end octet: 501.
    let mut c = Amqp::handshake(addr, &Login::default());
    c.send_raw(&[8, 0, 0, 0, 0, 0, 0, 0xAB]);
    let (code, _, _, _) = c.expect_connection_close();
    assert_eq!(code, 501);

    // A method whose arguments are cut short: 502.
    let mut c = Amqp::handshake(addr, &Login::default());
    c.open_channel(1);
    c.send_method_payload(1, &[0, 50, 0, 10, 0, 0, 200, b'q']); // queue.declare, name says 200 bytes
    let (code, text, class, method) = c.expect_connection_close();
    assert_eq!((code, class, method), (502, 50, 10), "{text}");
    assert!(text.starts_with("SYNTAX_ERROR - "), "{text}");

    // Arguments nested 10,000 tables deep: 502, not a stack overflow.
    let mut c = Amqp::handshake(addr, &Login::default());
    c.open_channel(1);
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..10_000 {
        let mut t = vec![1, b'a', b'F'];
        t.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        t.extend_from_slice(&inner);
        inner = t;
    }
    let mut p = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    p.extend_from_slice(&(inner.len() as u32).to_be_bytes());
    p.extend_from_slice(&inner);
    c.send_method_payload(1, &p);
    let (code, _, _, _) = c.expect_connection_close();
    assert_eq!(code, 502);

    // Unknown class, unknown method of a known class: 540.
    for payload in [&[0u8, 99, 0, 10][..], &[0, 60, 0, 255]] {
        let mut c = Amqp::handshake(addr, &Login::default());
        c.open_channel(1);
        c.send_method_payload(1, payload);
        let (code, text, _, _) = c.expect_connection_close();
        assert_eq!(code, 540, "{text}");
        assert!(text.starts_with("NOT_IMPLEMENTED - "), "{text}");
    }

    // A method on a channel that was never opened: 504.
    let mut c = Amqp::handshake(addr, &Login::default());
    c.send(
        7,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    );
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 504);
    assert_eq!(text, "CHANNEL_ERROR - expected 'channel.open'");

    // A content body with no publish before it: 505.
    let mut c = Amqp::handshake(addr, &Login::default());
    c.open_channel(1);
    c.content_body(1, b"stray");
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str()),
        (
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
        )
    );

    // A publish followed by a method instead of its content header: 505.
    let mut c = Amqp::handshake(addr, &Login::default());
    c.open_channel(1);
    c.publish_header(1, "", "q");
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    );
    let (code, text, class, method) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str(), class, method),
        (
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
            60,
            40
        )
    );

    // A body longer than its header announced: 501.
    let mut c = Amqp::handshake(addr, &Login::default());
    c.open_channel(1);
    c.publish_header(1, "", "q");
    c.content_header(1, 3);
    c.content_body(1, b"toolong");
    let (code, _, _, _) = c.expect_connection_close();
    assert_eq!(code, 501);

    // immediate=true is not implemented, as in RabbitMQ 3+.
    let mut c = Amqp::handshake(addr, &Login::default());
    c.open_channel(1);
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: true,
        })),
    );
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str()),
        (540, "NOT_IMPLEMENTED - immediate=true")
    );

    still_serving(&mut server);
}

#[test]
fn channel_errors_close_only_the_channel() {
    let (_dir, mut server) = server();
    let mut c = Amqp::handshake(server.amqp(), &Login::default());
    c.open_channel(1);
    c.open_channel(2);

    // 404 on consume from a missing queue.
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "nope".into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    let (code, text) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str()),
        (404, "NOT_FOUND - no queue 'nope' in vhost '/'")
    );

    // 406 for an unknown delivery tag.
    c.open_channel(1);
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 42,
            multiple: false,
        })),
    );
    let (code, text) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - unknown delivery tag 42")
    );

    // 406 for a message above the size limit, refused at its header.
    c.open_channel(1);
    let q = c.declare_queue(1, "");
    c.publish_header(1, "", &q);
    c.content_header(1, 1 << 40);
    let (code, text) = c.expect_channel_close(1);
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - message size 1099511627776 is larger than configured max size 134217728"
    );

    // 406 for a bad expiration.
    c.open_channel(1);
    c.publish_header(1, "", &q);
    let mut p = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    p.extend_from_slice(&(1u16 << 8).to_be_bytes()); // expiration only
    p.push(3);
    p.extend_from_slice(b"abc");
    let mut f = vec![2, 0, 1];
    f.extend_from_slice(&(p.len() as u32).to_be_bytes());
    f.extend_from_slice(&p);
    f.push(0xCE);
    c.send_raw(&f);
    c.content_body(1, b"x");
    let (code, text) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"
        )
    );

    // 405 for another connection's exclusive queue.
    c.open_channel(1);
    c.send(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "mine".into(),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    assert!(matches!(
        c.recv_method(),
        (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
    ));
    let mut other = Amqp::handshake(server.amqp(), &Login::default());
    other.open_channel(1);
    other.send(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "mine".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    let (code, _) = other.expect_channel_close(1);
    assert_eq!(code, 405);

    // Channel 2 was never touched by any of this and still works.
    let name = c.declare_queue(2, "");
    assert!(name.starts_with("amq.gen-"));
    // Frames for a closing channel are dropped until close-ok: a second
    // error on the same channel does not close the connection.
    c.send(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 1,
            multiple: false,
        })),
    );
    c.send(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 2,
            multiple: false,
        })),
    );
    let (code, text) = c.expect_channel_close(2);
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - unknown delivery tag 1")
    );
    c.open_channel(2);
    c.declare_queue(2, "");
    // A second channel.open on an open channel is a connection error.
    c.send(
        2,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str()),
        (504, "CHANNEL_ERROR - second 'channel.open' seen")
    );
    still_serving(&mut server);
}

#[test]
fn heartbeats_both_ways() {
    let (_dir, mut server) = server();
    // The server sends heartbeats on an idle connection...
    let mut c = Amqp::handshake(
        server.amqp(),
        &Login {
            heartbeat: 1,
            ..Login::default()
        },
    );
    let started = std::time::Instant::now();
    let mut beats = 0;
    // ...and closes it once the client has been silent for two intervals.
    loop {
        match c.recv() {
            Ok(AMQPFrame::Heartbeat) => beats += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "still open"
        );
    }
    assert!(beats >= 1, "no heartbeat from the server");
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    server.wait_for_log("missed heartbeats from client");

    // A client that does send heartbeats stays connected.
    let mut c = Amqp::handshake(
        server.amqp(),
        &Login {
            heartbeat: 1,
            ..Login::default()
        },
    );
    for _ in 0..8 {
        std::thread::sleep(std::time::Duration::from_millis(400));
        c.send_raw(&[8, 0, 0, 0, 0, 0, 0, 0xCE]);
    }
    c.open_channel(1);
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    loop {
        match c.recv_method() {
            (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => break,
            _ => continue,
        }
    }
    still_serving(&mut server);
}

/// Random frames (valid headers, random payloads and ids) after a real
/// handshake: every connection ends with a close or an error reply, never
/// a crash, and the server keeps serving.
#[test]
fn random_frames_never_take_the_server_down() {
    let (_dir, mut server) = server();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..40 {
        let mut c = Amqp::handshake(server.amqp(), &Login::default());
        c.open_channel(1);
        for _ in 0..20 {
            let kind = [1u8, 1, 1, 2, 3, 8][(next() % 6) as usize];
            let channel = (next() % 3) as u16;
            let len = (next() % 64) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if kind == 1 && payload.len() >= 4 && next() % 2 == 0 {
                // A known class and method id, so the arguments get parsed.
                let (class, method) = [
                    (50u16, 10u16),
                    (40, 10),
                    (60, 20),
                    (60, 40),
                    (60, 80),
                    (20, 40),
                ][(next() % 6) as usize];
                payload[..2].copy_from_slice(&class.to_be_bytes());
                payload[2..4].copy_from_slice(&method.to_be_bytes());
            }
            let mut f = vec![kind];
            f.extend_from_slice(&channel.to_be_bytes());
            f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            f.extend_from_slice(&payload);
            f.push(0xCE);
            if c.stream.write_all(&f).is_err() {
                break;
            }
        }
        drop(c);
    }
    still_serving(&mut server);
}
