//! connection.blocked/unblocked follow the resource alarm for clients that
//! announce the capability (the alarm's source is wired elsewhere).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use ferry_core::{Broker, BrokerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

async fn send(s: &mut TcpStream, class: AMQPClass) {
    let ctx = gen_frame(&AMQPFrame::Method(0, class))(WriteContext::from(Vec::new())).unwrap();
    s.write_all(&ctx.into_inner().0).await.unwrap();
}

async fn recv(s: &mut TcpStream, buf: &mut Vec<u8>) -> AMQPFrame {
    loop {
        if let Ok((rest, f)) = parse_frame(&buf[..]) {
            let used = buf.len() - rest.len();
            buf.drain(..used);
            return f;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a frame within 10 s")
            .unwrap();
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_and_unblocked_follow_the_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::new(dir.path());
    let broker = tokio::task::spawn_blocking(move || Broker::open(config))
        .await
        .unwrap()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (alarm_tx, alarm) = watch::channel(Some("disk alarm".to_string()));
    tokio::spawn(ferry_amqp::serve_with_alarm(
        listener,
        broker.messaging().clone(),
        ferry_amqp::AmqpConfig::default(),
        alarm,
    ));

    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    assert!(matches!(
        recv(&mut s, &mut buf).await,
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_)))
    ));
    let mut caps = FieldTable::default();
    caps.insert("connection.blocked".into(), AMQPValue::Boolean(true));
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    send(
        &mut s,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: LongString::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        })),
    )
    .await;
    assert!(matches!(
        recv(&mut s, &mut buf).await,
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))
    ));
    send(
        &mut s,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 0,
        })),
    )
    .await;
    send(
        &mut s,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    )
    .await;
    assert!(matches!(
        recv(&mut s, &mut buf).await,
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
    ));
    // The alarm was already on when the connection opened.
    match recv(&mut s, &mut buf).await {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
            assert_eq!(b.reason.as_str(), "disk alarm")
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    alarm_tx.send(None).unwrap();
    assert!(matches!(
        recv(&mut s, &mut buf).await,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))
        )
    ));
    alarm_tx.send(Some("memory alarm".into())).unwrap();
    match recv(&mut s, &mut buf).await {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
            assert_eq!(b.reason.as_str(), "memory alarm")
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    broker.shutdown();
}
