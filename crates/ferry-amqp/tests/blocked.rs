//! Resource alarms block publishing connections as RabbitMQ does: a
//! connection that publishes while an alarm is on gets connection.blocked
//! (if it announced the capability) and is not read from until every alarm
//! clears, then gets connection.unblocked. Connections that only consume are
//! never blocked.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use ferry_core::alarm::ResourceAlarms;
use ferry_core::{Broker, BrokerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn send(&mut self, ch: u16, class: AMQPClass) {
        let ctx = gen_frame(&AMQPFrame::Method(ch, class))(WriteContext::from(Vec::new())).unwrap();
        self.s.write_all(&ctx.into_inner().0).await.unwrap();
    }

    /// The next frame, or None if nothing comes within `wait`.
    async fn try_recv(&mut self, wait: Duration) -> Option<AMQPFrame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok((rest, f)) = parse_frame(&self.buf[..]) {
                let used = self.buf.len() - rest.len();
                self.buf.drain(..used);
                return Some(f);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut chunk))
                .await
                .ok()?
                .unwrap();
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn recv(&mut self) -> AMQPFrame {
        self.try_recv(Duration::from_secs(10))
            .await
            .expect("a frame within 10 s")
    }

    async fn open(addr: std::net::SocketAddr, blocked_capability: bool) -> Client {
        let mut c = Client {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        };
        c.s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        assert!(matches!(
            c.recv().await,
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_)))
        ));
        let mut caps = FieldTable::default();
        caps.insert(
            "connection.blocked".into(),
            AMQPValue::Boolean(blocked_capability),
        );
        let mut props = FieldTable::default();
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(b"\0guest\0guest".to_vec()),
                locale: "en_US".into(),
            })),
        )
        .await;
        assert!(matches!(
            c.recv().await,
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))
        ));
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: 131072,
                heartbeat: 0,
            })),
        )
        .await;
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
        assert!(matches!(
            c.recv().await,
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
        ));
        c.send(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        assert!(matches!(
            c.recv().await,
            AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))
        ));
        c
    }

    async fn declare(&mut self, name: &str) {
        self.queue_declare(name, false).await;
    }

    /// Ready messages in a queue, from a passive queue.declare.
    async fn count(&mut self, name: &str) -> u32 {
        self.queue_declare(name, true).await
    }

    /// queue.declare on channel 1; the message count of its declare-ok.
    async fn queue_declare(&mut self, name: &str, passive: bool) -> u32 {
        self.send(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.into(),
                passive,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
        match self.recv().await {
            AMQPFrame::Method(1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
                ok.message_count
            }
            other => panic!("expected declare-ok, got {other:?}"),
        }
    }

    /// basic.publish to the default exchange, content header and body.
    async fn publish(&mut self, routing_key: &str, body: &[u8]) {
        self.send(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        )
        .await;
        let mut header = vec![0, 60, 0, 0];
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(&[0, 0]);
        let mut bytes = Vec::new();
        for (kind, payload) in [(2u8, &header[..]), (3u8, body)] {
            bytes.push(kind);
            bytes.extend_from_slice(&1u16.to_be_bytes());
            bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            bytes.extend_from_slice(payload);
            bytes.push(0xCE);
        }
        self.s.write_all(&bytes).await.unwrap();
    }

    /// basic.get with no-ack: the message count after it, or None if empty.
    async fn get(&mut self, queue: &str) -> Option<u32> {
        self.send(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: queue.into(),
                no_ack: true,
            })),
        )
        .await;
        match self.recv().await {
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::GetOk(ok))) => {
                // Header and body follow.
                self.recv().await;
                self.recv().await;
                Some(ok.message_count)
            }
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))) => None,
            other => panic!("expected get-ok or get-empty, got {other:?}"),
        }
    }
}

async fn server(
    alarm: watch::Receiver<ResourceAlarms>,
) -> (
    tempfile::TempDir,
    std::sync::Arc<Broker>,
    std::net::SocketAddr,
) {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::new(dir.path());
    let broker = tokio::task::spawn_blocking(move || Broker::open(config))
        .await
        .unwrap()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ferry_amqp::serve_with_alarm(
        listener,
        broker.messaging().clone(),
        ferry_amqp::AmqpConfig::default(),
        alarm,
    ));
    (dir, broker, addr)
}

const DISK: ResourceAlarms = ResourceAlarms {
    memory: false,
    disk: true,
};
const BOTH: ResourceAlarms = ResourceAlarms {
    memory: true,
    disk: true,
};

/// Until the queue holds `n` ready messages (publishes are asynchronous,
/// and a connection's frames are routed one after another, so the first of
/// two can be there before the second).
async fn wait_for_count(c: &mut Client, queue: &str, n: u32) {
    for _ in 0..250 {
        if c.count(queue).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{queue} never held {n} messages");
}

/// basic.get until a message comes (publishes are asynchronous).
async fn get_soon(c: &mut Client, queue: &str) -> Option<u32> {
    for _ in 0..100 {
        if let Some(n) = c.get(queue).await {
            return Some(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_are_blocked_until_the_alarm_clears() {
    let (alarm_tx, alarm) = watch::channel(ResourceAlarms::default());
    let (_dir, broker, addr) = server(alarm).await;

    let mut consumer = Client::open(addr, true).await;
    consumer.declare("q").await;
    let mut publisher = Client::open(addr, true).await;
    publisher.publish("q", b"before").await;
    publisher.publish("q", b"queued").await;
    // Both arrived (one left after this get).
    wait_for_count(&mut consumer, "q", 2).await;
    assert_eq!(consumer.get("q").await, Some(1));

    alarm_tx.send(DISK).unwrap();
    // Nothing is said until the connection publishes.
    assert!(
        publisher
            .try_recv(Duration::from_millis(300))
            .await
            .is_none()
    );
    publisher.publish("q", b"first").await;
    match publisher.recv().await {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
            assert_eq!(b.reason.as_str(), "low on disk")
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    // As in RabbitMQ, reading stopped after the content header: the body
    // of that publish and everything after it wait for the alarm to clear.
    publisher.publish("q", b"second").await;
    // A consumer-only connection keeps draining, and is never blocked.
    assert_eq!(get_soon(&mut consumer, "q").await, Some(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(consumer.get("q").await, None);

    // Another alarm on top: no second connection.blocked.
    alarm_tx.send(BOTH).unwrap();
    assert!(
        publisher
            .try_recv(Duration::from_millis(300))
            .await
            .is_none()
    );
    alarm_tx.send(DISK).unwrap();
    assert!(
        publisher
            .try_recv(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(consumer.get("q").await, None);

    alarm_tx.send(ResourceAlarms::default()).unwrap();
    assert!(matches!(
        publisher.recv().await,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))
        )
    ));
    // Reading resumed: both held publishes arrive.
    wait_for_count(&mut consumer, "q", 2).await;
    assert_eq!(consumer.get("q").await, Some(1));
    assert_eq!(consumer.get("q").await, Some(0));

    // A new alarm: blocked again on the next publish, with its reason.
    alarm_tx
        .send(ResourceAlarms {
            memory: true,
            disk: false,
        })
        .unwrap();
    publisher.publish("q", b"third").await;
    match publisher.recv().await {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
            assert_eq!(b.reason.as_str(), "low on memory")
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    broker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_capability_are_blocked_silently() {
    let (alarm_tx, alarm) = watch::channel(DISK);
    let (_dir, broker, addr) = server(alarm).await;
    let mut consumer = Client::open(addr, false).await;
    consumer.declare("q").await;
    let mut publisher = Client::open(addr, false).await;
    publisher.publish("q", b"first").await;
    publisher.publish("q", b"second").await;
    assert!(
        publisher
            .try_recv(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(consumer.get("q").await, None);
    alarm_tx.send(ResourceAlarms::default()).unwrap();
    wait_for_count(&mut consumer, "q", 2).await;
    assert_eq!(consumer.get("q").await, Some(1));
    assert_eq!(consumer.get("q").await, Some(0));
    // Neither blocked nor unblocked was sent.
    assert!(
        publisher
            .try_recv(Duration::from_millis(200))
            .await
            .is_none()
    );
    broker.shutdown();
}
