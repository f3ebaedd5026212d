//! Hostile clients against the real binary, over raw sockets, on every
//! listener (Kafka, AMQP, SQS, the admin HTTP API): random bytes, valid
//! headers with absurd lengths, truncated requests followed by silence,
//! slowloris clients sending a byte at a time, floods of connections opened
//! and abandoned, clients that never read what they are sent, a consumer that
//! never acks, producers faster than the disk.
//!
//! The server runs with short timeouts and small connection limits (see
//! `hostile_server`) so that each case takes seconds. After each case the
//! test checks the three things that matter: a normal client is served,
//! the server's resident memory stays within `RSS_GROWTH_MAX_KIB` of what it
//! was before the attacks, and everything acknowledged before them is still
//! readable. Abandoned connections must also be closed by the server, which
//! the count of its open file descriptors shows.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, confirm, connection, exchange, queue};
use common::amqp::{Amqp, HEADER, Login};
use common::{Server, api, encode_batch, now_ms, record, request_frame};
use kafka_protocol::records::Compression;
use serde_json::{Value, json};

/// How much the server's resident memory may grow over its size after the
/// seed data was written, through every attack of a test. The most any case
/// legitimately reaches is about 110 MiB, with the prefetch-0 consumer holding
/// 300 unacked 120 KiB deliveries (given back when it disconnects; mimalloc
/// keeps freed memory mapped for a while). The failures this guards against
/// are far larger: a no-ack consumer that never reads, with delivery queues
/// bounded by count only, grew it by 250 MB; Fetch responses pinned by a
/// client that never reads would grow it by gigabytes.
const RSS_GROWTH_MAX_KIB: u64 = 160 * 1024;
/// Connections opened per flood: several times each listener's limit.
const FLOOD_CONNECTIONS: usize = 1200;
/// The listeners' connection limits in `hostile_server`.
const CONNECTIONS_MAX: usize = 200;
const HTTP_CONNECTIONS_MAX: usize = 20;
/// The timeouts in `hostile_server`, and how late the server may be in
/// acting on them on a busy CI machine.
const KAFKA_IDLE: Duration = Duration::from_millis(2000);
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
const SLACK: Duration = Duration::from_secs(4);
/// Messages of each protocol acknowledged before the attacks.
const SEED_MESSAGES: usize = 10;
/// Unacknowledged deliveries a prefetch-0 AMQP consumer may hold.
const CONSUMER_UNACKED_MAX: usize = 300;
/// Partitions of all topics, and queues per vhost.
const PARTITIONS_MAX: usize = 40;
const QUEUES_MAX: usize = 40;
/// Exchanges and bindings per vhost.
const EXCHANGES_MAX: usize = 30;
const BINDINGS_MAX: usize = 25;
const CONSUMERS_PER_CHANNEL_MAX: usize = 5;

fn hostile_server(dir: &tempfile::TempDir) -> Server {
    let connections_max = CONNECTIONS_MAX.to_string();
    let http_connections_max = HTTP_CONNECTIONS_MAX.to_string();
    let idle = KAFKA_IDLE.as_millis().to_string();
    let request = REQUEST_TIMEOUT.as_millis().to_string();
    let unacked = CONSUMER_UNACKED_MAX.to_string();
    let partitions = PARTITIONS_MAX.to_string();
    let queues = QUEUES_MAX.to_string();
    let exchanges = EXCHANGES_MAX.to_string();
    let bindings = BINDINGS_MAX.to_string();
    let consumers = CONSUMERS_PER_CHANNEL_MAX.to_string();
    Server::start(
        dir.path(),
        &[
            "--kafka-connections-max",
            &connections_max,
            "--kafka-idle-timeout-ms",
            &idle,
            "--kafka-request-timeout-ms",
            &request,
            "--kafka-request-bytes-max",
            "4194304",
            "--amqp-connections-max",
            &connections_max,
            "--amqp-handshake-timeout-ms",
            &request,
            "--amqp-frame-timeout-ms",
            &request,
            "--amqp-channel-max",
            "16",
            "--amqp-consumer-unacked-max",
            &unacked,
            "--sqs-connections-max",
            &connections_max,
            "--sqs-idle-timeout-ms",
            &request,
            "--sqs-body-timeout-ms",
            &request,
            "--http-connections-max",
            &http_connections_max,
            "--http-idle-timeout-ms",
            &request,
            "--http-body-timeout-ms",
            &request,
            "--partitions-max",
            &partitions,
            "--queues-per-vhost-max",
            &queues,
            "--exchanges-per-vhost-max",
            &exchanges,
            "--bindings-per-vhost-max",
            &bindings,
            "--amqp-consumers-per-channel-max",
            &consumers,
        ],
    )
}

/// What the server looked like before the attacks.
struct Baseline {
    pid: i32,
    rss_kib: u64,
    fds: usize,
}

impl Baseline {
    fn take(server: &Server) -> Baseline {
        Baseline {
            pid: server.pid(),
            rss_kib: rss_kib(server.pid()),
            fds: open_fds(server.pid()),
        }
    }

    /// Memory within the bound now; and the connections of the attack
    /// closed by the server (its descriptors back to what they were) within
    /// `within`, while the test holds its ends open.
    fn check_memory(&self, what: &str) {
        let rss = rss_kib(self.pid);
        // Shown with a failure: the whole test's memory profile.
        eprintln!("RSS {what}: {} -> {rss} KiB", self.rss_kib);
        assert!(
            rss <= self.rss_kib + RSS_GROWTH_MAX_KIB,
            "{what}: RSS grew from {} KiB to {rss} KiB (bound: +{RSS_GROWTH_MAX_KIB} KiB)",
            self.rss_kib
        );
    }

    /// After a case that stored data: its segment files are the server's
    /// own descriptors from now on.
    fn recount_fds(&mut self) {
        self.fds = open_fds(self.pid);
    }

    fn check(&self, what: &str, within: Duration) {
        self.check_memory(what);
        // A few descriptors of slack: segment files, a client mid-close.
        let deadline = Instant::now() + within;
        loop {
            let fds = open_fds(self.pid);
            if fds <= self.fds + 8 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the server still has {fds} descriptors open (before: {})",
                self.fds
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Resident memory in KiB, less what the allocator has already given back
/// with MADV_FREE (`LazyFree`): the kernel reclaims those pages only under
/// memory pressure, and until then counts them in VmRSS, so after a burst
/// of short-lived allocations VmRSS shows memory the server no longer
/// holds.
fn rss_kib(pid: i32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/smaps_rollup"))
    };
    field("Rss:") - field("LazyFree:")
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Deterministic noise (xorshift64), so a failure can be replayed.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends `bytes` (ignoring a server that already hung up) and then waits,
/// reading and discarding whatever comes, until the server closes the
/// connection. Returns how long that took after the last byte was sent;
/// panics past `max`.
fn send_then_expect_close(mut s: TcpStream, bytes: &[u8], max: Duration, what: &str) -> Duration {
    let _ = s.write_all(bytes);
    expect_close(&mut s, max, what)
}

fn expect_close(s: &mut TcpStream, max: Duration, what: &str) -> Duration {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return started.elapsed(),
        }
        assert!(
            started.elapsed() < max,
            "{what}: the server kept the connection open for {:?}",
            started.elapsed()
        );
    }
}

/// Sends `bytes` one at a time, `every` apart, until the server closes the
/// connection; asserts that it did so within `max` and before the last
/// byte (a slowloris client never gets to finish).
fn slowloris(addr: SocketAddr, bytes: &[u8], every: Duration, max: Duration, what: &str) {
    let mut s = connect(addr);
    s.set_read_timeout(Some(every)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    for (i, b) in bytes.iter().enumerate() {
        if s.write_all(&[*b]).is_err() {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) => {
                assert!(
                    started.elapsed() < max,
                    "{what}: closed only after {i} bytes"
                );
                return;
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        assert!(
            started.elapsed() < max,
            "{what}: still open after {:?} and {} bytes",
            started.elapsed(),
            i + 1
        );
    }
    panic!("{what}: the server took the whole slow request");
}

/// Opens `FLOOD_CONNECTIONS` connections, sends `first` on each (nothing if
/// empty) and abandons them: the test keeps its ends open and reads nothing.
/// On a stalled machine the server may time the first ones out before the
/// last arrive and never reach its limit, so the flood goes on until the
/// server logs that it refuses `listener` connections (for at most a
/// minute, dropping the ends the server has closed). Returns the ends held.
fn flood(server: &Server, addr: SocketAddr, first: &[u8], listener: &str) -> Vec<TcpStream> {
    let needle = format!("refusing new {listener} connections");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut held = Vec::with_capacity(FLOOD_CONNECTIONS);
    let mut opened = 0;
    while opened < FLOOD_CONNECTIONS || !server.log_text().contains(&needle) {
        assert!(
            Instant::now() < deadline,
            "{opened} connections opened and no '{needle}' in the log:\n{}",
            server.log_text()
        );
        for _ in 0..100 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(mut s) => {
                    let _ = s.write_all(first);
                    held.push(s);
                    opened += 1;
                }
                // The accept backlog can overflow for a moment; a refused
                // connection is fine.
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        if held.len() > 2 * FLOOD_CONNECTIONS {
            held.retain_mut(|s| !is_closed(s));
        }
    }
    held
}

/// Whether the server has closed `s` (EOF or reset); reads and drops
/// whatever it sent before.
fn is_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    s.set_nonblocking(true).unwrap();
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// How many of `held` the server has already closed.
fn closed_count(held: &mut [TcpStream]) -> usize {
    held.iter_mut().map(is_closed).filter(|&c| c).count()
}

/// Waits until the server has closed every one of `held`.
fn expect_all_closed(held: &mut [TcpStream], within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let closed = closed_count(held);
        if closed == held.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {} abandoned connections still open",
            held.len() - closed,
            held.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `chunk` again and again without reading anything back, until the
/// server stops taking it (the socket's buffers fill) for a second, or
/// `limit` bytes went out. Returns the bytes written.
fn write_without_reading(s: &mut TcpStream, chunk: &[u8], limit: usize) -> usize {
    s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut sent = 0;
    while sent < limit {
        match s.write(chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    sent
}

// ---------------------------------------------------------------- Kafka

/// A Produce request frame (v9) of one record carrying `value`.
fn produce_frame(topic: &str, value: &str, acks: i16) -> Vec<u8> {
    let batch = encode_batch(&[record(None, value, now_ms())], Compression::None);
    request_frame(&api::produce_request(topic, 0, batch, acks), 9, 1)
}

fn high_watermark(server: &Server, topic: &str) -> i64 {
    api::fetch(&mut server.client(), topic, 0, 0, 1, 0).1
}

fn kafka_values(server: &Server, topic: &str) -> Vec<String> {
    let mut c = server.client();
    api::read_all(&mut c, topic, 0, 0)
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect()
}

/// A normal client is served and the seed is intact.
fn kafka_healthy(server: &Server, seed: &[String], what: &str) {
    assert_eq!(kafka_values(server, "seed"), seed, "{what}: seed records");
}

#[test]
fn kafka_listener_survives_hostile_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = hostile_server(&dir);
    let addr = server.kafka;
    let mut c = server.client();
    assert_eq!(api::create_topic(&mut c, "seed", 1, &[]), 0);
    let seed: Vec<String> = (0..SEED_MESSAGES).map(|i| format!("seed-{i}")).collect();
    for v in &seed {
        let batch = encode_batch(&[record(None, v, now_ms())], Compression::None);
        assert_eq!(api::produce(&mut c, "seed", 0, batch).0, 0);
    }
    drop(c);
    let mut base = Baseline::take(&server);

    // Random bytes: the first four read as a size outside the limits, or as
    // a request that does not parse; either way the connection is closed.
    for seed in 1..=8 {
        send_then_expect_close(
            connect(addr),
            &random_bytes(seed, 64 * 1024),
            SLACK,
            "kafka random bytes",
        );
    }
    kafka_healthy(&server, &seed, "random bytes");
    base.check("kafka random bytes", SLACK);

    // Absurd sizes, up to 2^31 (negative as an i32), closed before anything
    // is allocated for them.
    for size in [i32::MAX as u32, 1 << 31, u32::MAX, 4 * 1024 * 1024 + 1] {
        let mut bytes = size.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0, 18, 0, 3, 0, 0, 0, 1]);
        send_then_expect_close(connect(addr), &bytes, SLACK, "kafka absurd size");
    }
    kafka_healthy(&server, &seed, "absurd sizes");
    base.check("kafka absurd sizes", SLACK);

    // A truncated request, then silence: closed after the request timeout;
    // a connection that sends nothing: closed after the idle timeout.
    let took = send_then_expect_close(
        connect(addr),
        &[0, 0, 0, 100, 0, 18, 0, 3],
        REQUEST_TIMEOUT + SLACK,
        "kafka truncated request",
    );
    assert!(
        took >= REQUEST_TIMEOUT - Duration::from_millis(100),
        "{took:?}"
    );
    let took = send_then_expect_close(connect(addr), &[], KAFKA_IDLE + SLACK, "kafka idle");
    assert!(took >= KAFKA_IDLE - Duration::from_millis(100), "{took:?}");

    // Slowloris: a valid request one byte every 300 ms never completes.
    slowloris(
        addr,
        &produce_frame("seed", "slow", 1),
        Duration::from_millis(300),
        REQUEST_TIMEOUT + SLACK,
        "kafka slowloris",
    );
    kafka_healthy(&server, &seed, "slowloris");

    // A flood of abandoned connections: past the limit they are closed at
    // once (the server logs that it refuses them); the rest when they have
    // been idle for the idle timeout.
    let mut held = flood(&server, addr, &[], "kafka");
    expect_all_closed(&mut held, KAFKA_IDLE + SLACK, "kafka connection flood");
    base.check("kafka connection flood", SLACK);
    drop(held);
    kafka_healthy(&server, &seed, "connection flood");

    // A producer faster than the disk: acks=all batches pipelined for a few
    // seconds, responses read by another thread. Everything acknowledged is
    // stored.
    let acked = produce_flood(addr, Duration::from_secs(2));
    assert!(acked > 0);
    assert_eq!(high_watermark(&server, "fast"), acked as i64);
    base.check_memory("kafka producer faster than the disk");
    base.recount_fds();
    kafka_healthy(&server, &seed, "producer faster than the disk");

    // A client that never reads its responses: small Fetch requests for
    // megabytes each, pipelined. The server answers one Fetch per
    // connection at a time and stops reading while an answer waits for the
    // socket, instead of reading on and holding a response per request.
    let mut s = connect(addr);
    let fetch = request_frame(&api::fetch_request("fast", 0, 0, 8 << 20, 0), 12, 1);
    let sent = write_without_reading(&mut s, &fetch.repeat(1000), 1 << 30);
    assert!(
        sent < 64 << 20,
        "the server took {sent} bytes without being read"
    );
    std::thread::sleep(Duration::from_secs(1));
    base.check("kafka client that never reads", Duration::ZERO);
    drop(s);
    kafka_healthy(&server, &seed, "client that never reads");

    // A client creating topics without end, explicitly and by asking for
    // their metadata: refused once the broker holds partitions_max
    // partitions.
    let mut c = server.client();
    let mut created = 0;
    let refused = loop {
        match api::create_topic(&mut c, &format!("many-{created}"), 1, &[]) {
            0 => created += 1,
            err => break err,
        }
        assert!(created <= PARTITIONS_MAX, "{created} topics created");
    };
    assert_eq!(refused, 37, "INVALID_PARTITIONS");
    let mut req = kafka_protocol::messages::MetadataRequest::default();
    req.topics = Some(vec![
        kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(api::topic_name("one-more"))),
    ]);
    req.allow_auto_topic_creation = true;
    let meta = c.call(&req, 12);
    assert_ne!(meta.topics[0].error_code, 0, "auto-created past the limit");
    assert_ne!(
        api::metadata(&mut c, Some(&["one-more"])).topics[0].error_code,
        0
    );
    drop(c);
    base.check_memory("kafka topics without end");
    kafka_healthy(&server, &seed, "topics without end");
}

/// Pipelines acks=all produce requests of 64 KiB to topic `fast` for
/// `run`; returns how many were acknowledged without error.
fn produce_flood(addr: SocketAddr, run: Duration) -> usize {
    use kafka_protocol::messages::{ProduceResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    let mut c = common::Client::connect(addr);
    assert_eq!(api::create_topic(&mut c, "fast", 1, &[]), 0);
    let mut s = c.stream.try_clone().unwrap();
    let frame = produce_frame("fast", &"y".repeat(64 * 1024), -1);
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut acked = 0;
        while let Ok(mut frame) = c.read_frame() {
            ResponseHeader::decode(&mut frame, 1).unwrap();
            let resp = ProduceResponse::decode(&mut frame, 9).unwrap();
            assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
            acked += 1;
        }
        acked
    });
    let mut sent = 0;
    while started.elapsed() < run {
        s.write_all(&frame).unwrap();
        sent += 1;
    }
    // Close our side for writing: the server answers what it read, then
    // the reader sees EOF.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let acked = reader.join().unwrap();
    assert_eq!(acked, sent, "every request answered");
    acked
}

// ---------------------------------------------------------------- AMQP

fn amqp_login() -> Login<'static> {
    Login::default()
}

/// Publishes with confirms; returns once the broker confirmed them all.
fn amqp_seed(addr: SocketAddr, queue: &str, bodies: &[String]) {
    let mut c = Amqp::handshake(addr, &amqp_login());
    c.open_channel(1);
    c.declare_queue(1, queue);
    c.call(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
    .unwrap();
    for b in bodies {
        c.publish(1, "", queue, None, b.as_bytes());
    }
    let mut confirmed = 0;
    while confirmed < bodies.len() as u64 {
        match c.next_on(1).unwrap() {
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => confirmed = a.delivery_tag,
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
}

/// Every message of `queue`, read with basic.get and left unacked (they go
/// back to the queue when the connection closes).
fn amqp_bodies(addr: SocketAddr, queue: &str) -> BTreeSet<String> {
    let mut c = Amqp::handshake(addr, &amqp_login());
    c.open_channel(1);
    let mut bodies = BTreeSet::new();
    loop {
        let got = c.call(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: queue.into(),
                no_ack: false,
            })),
        );
        match got.unwrap() {
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)) => return bodies,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(_)) => {}
            other => panic!("expected basic.get-ok, got {other:?}"),
        }
        let mut body = Vec::new();
        loop {
            match c.recv().unwrap() {
                AMQPFrame::Header(_, h) if h.body_size == 0 => break,
                AMQPFrame::Header(..) => {}
                AMQPFrame::Body(_, b) => {
                    body.extend_from_slice(&b);
                    break;
                }
                other => panic!("expected content, got {other:?}"),
            }
        }
        bodies.insert(String::from_utf8(body).unwrap());
    }
}

fn amqp_healthy(server: &Server, seed: &BTreeSet<String>, what: &str) {
    assert_eq!(
        &amqp_bodies(server.amqp(), "seed"),
        seed,
        "{what}: seed messages"
    );
}

/// A raw frame: type, channel, size as given (which may lie), payload, end.
fn amqp_frame(kind: u8, channel: u16, size: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&size.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A connection through connection.open-ok with a 1 s heartbeat, so that a
/// client gone silent is noticed after two missed beats.
fn amqp_open_with_heartbeat(addr: SocketAddr) -> Amqp {
    Amqp::handshake(
        addr,
        &Login {
            heartbeat: 1,
            ..amqp_login()
        },
    )
}

/// Many connections producing at once hold at most
/// `queued_request_bytes_max` of requests between them: one connection's
/// produce left unanswered (behind a Fetch response its client does not
/// read) makes another's wait, unread, until the first connection is gone.
#[test]
fn kafka_requests_past_the_queued_bytes_limit_wait_their_turn() {
    use kafka_protocol::messages::{ProduceResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--kafka-queued-request-bytes-max",
            &(1usize << 20).to_string(),
        ],
    );
    let mut admin = server.client();
    for topic in ["queued", "big"] {
        assert_eq!(api::create_topic(&mut admin, topic, 1, &[]), 0);
    }
    // 900 KiB each: two do not fit in 1 MiB.
    let value = "v".repeat(900 * 1024);
    let batch = || encode_batch(&[record(None, &value, now_ms())], Compression::None);
    // More than the socket buffers hold, for a Fetch nobody reads.
    for i in 0..40 {
        assert_eq!(api::produce(&mut admin, "big", 0, batch()), (0, i));
    }

    // A: that Fetch, then a produce whose answer waits behind it.
    let mut a = server.client();
    let fetch = api::fetch_request("big", 0, 0, 50 << 20, 0);
    a.stream.write_all(&request_frame(&fetch, 12, 1)).unwrap();
    let produce = api::produce_request("queued", 0, batch(), -1);
    a.stream.write_all(&request_frame(&produce, 9, 2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while api::fetch(&mut admin, "queued", 0, 0, 1, 0).1 < 1 {
        assert!(Instant::now() < deadline, "A's produce was never appended");
        std::thread::sleep(Duration::from_millis(20));
    }

    // B: its produce is not read while A's bytes are held.
    let mut b = server.client();
    b.stream.write_all(&request_frame(&produce, 9, 1)).unwrap();
    server.wait_for_log("holding kafka requests");
    b.stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = b.stream.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "B was answered while A held the bytes: {early:?}"
    );

    // A goes away: its bytes come back, and B is read, appended, answered.
    drop(a);
    b.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut frame = b.read_frame().unwrap();
    ResponseHeader::decode(&mut frame, 1).unwrap();
    let response = ProduceResponse::decode(&mut frame, 9).unwrap();
    let p = &response.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 1));
}

#[test]
fn amqp_listener_survives_hostile_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = hostile_server(&dir);
    let addr = server.amqp();
    let seed_list: Vec<String> = (0..SEED_MESSAGES).map(|i| format!("seed-{i}")).collect();
    amqp_seed(addr, "seed", &seed_list);
    let seed: BTreeSet<String> = seed_list.into_iter().collect();
    amqp_healthy(&server, &seed, "before");
    let mut base = Baseline::take(&server);

    // Random bytes instead of the protocol header: the server answers with
    // the header it speaks and closes. After a handshake: a frame error.
    for n in 1..=4 {
        send_then_expect_close(
            connect(addr),
            &random_bytes(n, 64 * 1024),
            SLACK,
            "amqp random",
        );
        let mut c = Amqp::handshake(addr, &amqp_login());
        let _ = c.stream.write_all(&random_bytes(n + 100, 64 * 1024));
        expect_close(&mut c.stream, SLACK, "amqp random after handshake");
    }
    amqp_healthy(&server, &seed, "random bytes");
    base.check("amqp random bytes", SLACK);

    // Absurd sizes: a frame of 2^31 - 1 and 2^32 - 1 bytes is refused by
    // frame_max before it is read (connection.close 501); a content header
    // announcing a 2^62-byte body by the message size limit.
    for size in [i32::MAX as u32, u32::MAX] {
        let mut c = Amqp::handshake(addr, &amqp_login());
        c.send_raw(&amqp_frame(1, 0, size, &[0, 10, 0, 50]));
        let (code, text, _, _) = c.expect_connection_close();
        assert_eq!(code, 501, "{text}");
    }
    let mut c = Amqp::handshake(addr, &amqp_login());
    c.open_channel(1);
    c.publish_header(1, "", "seed");
    c.content_header(1, 1 << 62);
    let closed = c.next_on(1);
    assert!(matches!(closed, Err((406, _))), "{closed:?}");
    drop(c);
    amqp_healthy(&server, &seed, "absurd sizes");
    base.check("amqp absurd sizes", SLACK);

    // Truncated, then silence: during the handshake (half a protocol
    // header) the handshake timeout closes it; after it, the frame timeout
    // (with no heartbeat negotiated). A silent client that agreed to
    // heartbeats is closed after two missed ones.
    send_then_expect_close(
        connect(addr),
        &HEADER[..4],
        REQUEST_TIMEOUT + SLACK,
        "amqp half header",
    );
    let mut c = Amqp::handshake(addr, &amqp_login());
    c.send_raw(&amqp_frame(1, 0, 100, &[0, 10]));
    expect_close(
        &mut c.stream,
        REQUEST_TIMEOUT + SLACK,
        "amqp truncated frame",
    );
    let mut c = amqp_open_with_heartbeat(addr);
    expect_close(
        &mut c.stream,
        Duration::from_secs(2) + SLACK,
        "amqp silent client",
    );

    // Slowloris during the handshake.
    slowloris(
        addr,
        &[HEADER, &[0u8; 64][..]].concat(),
        Duration::from_millis(300),
        REQUEST_TIMEOUT + SLACK,
        "amqp slowloris",
    );
    amqp_healthy(&server, &seed, "slowloris");

    // A channel number past channel_max (16): the connection is closed.
    let mut c = Amqp::handshake(addr, &amqp_login());
    for ch in 1..=16 {
        c.open_channel(ch);
    }
    c.send(
        17,
        AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(
            amq_protocol::protocol::channel::Open {},
        )),
    );
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 504, "{text}");
    assert!(
        text.contains("above the negotiated channel_max (16)"),
        "{text}"
    );
    drop(c);

    // A flood of connections that send the protocol header and nothing
    // more: over the limit refused at once, the rest closed by the
    // handshake timeout.
    let mut held = flood(&server, addr, HEADER, "amqp");
    expect_all_closed(&mut held, REQUEST_TIMEOUT + SLACK, "amqp connection flood");
    base.check("amqp connection flood", SLACK);
    drop(held);
    amqp_healthy(&server, &seed, "connection flood");

    // A publisher faster than the disk, and consumers that never ack or
    // never read: 1200 messages of 120 KiB (more than the memory bound)
    // published without confirms as fast as the socket takes them.
    let body = "z".repeat(120 * 1024);
    let mut publisher = Amqp::handshake(addr, &amqp_login());
    publisher.open_channel(1);
    publisher.declare_queue(1, "big");
    for _ in 0..1200 {
        publisher.publish(1, "", "big", None, body.as_bytes());
    }
    // A round trip: everything before it has been handled.
    publisher.declare_queue(1, "big");
    drop(publisher);
    base.check_memory("amqp publisher faster than the disk");
    base.recount_fds();

    // A consumer with prefetch 0 that never acks gets at most
    // consumer_unacked_max deliveries.
    let mut consumer = Amqp::handshake(addr, &amqp_login());
    consumer.open_channel(1);
    consume(&mut consumer, "big", false);
    let got = count_deliveries(&mut consumer, Duration::from_secs(2));
    assert_eq!(
        got, CONSUMER_UNACKED_MAX,
        "deliveries to a prefetch-0 consumer that never acks"
    );
    base.check_memory("amqp consumer that never acks");
    drop(consumer);

    // A no-ack consumer that never reads its socket: the server stops
    // taking deliveries from the queue once its buffers are full, counted
    // in bytes (by message count alone they would hold most of the queue).
    let mut consumer = Amqp::handshake(addr, &amqp_login());
    consumer.open_channel(1);
    consume(&mut consumer, "big", true);
    std::thread::sleep(Duration::from_secs(2));
    base.check_memory("amqp consumer that never reads");
    drop(consumer);
    amqp_healthy(&server, &seed, "consumers");
    base.check("amqp after the consumers", SLACK);

    // A client declaring queues without end: refused with 406 once the
    // vhost holds queues_per_vhost_max (the seed and big queues are two).
    let mut c = Amqp::handshake(addr, &amqp_login());
    c.open_channel(1);
    let (declared, refused) = call_until_refused(&mut c, 2, QUEUES_MAX, |i| {
        let name = format!("many-{i}");
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.as_str().into(),
            durable: true,
            ..Default::default()
        }))
    });
    assert_eq!(declared, QUEUES_MAX);
    assert_eq!(refused.0, 406, "{}", refused.1);
    assert!(
        refused
            .1
            .contains("queue limit in vhost '/' (40) is reached"),
        "{}",
        refused.1
    );
    drop(c);
    amqp_healthy(&server, &seed, "queues without end");

    // Exchanges without end (the vhost starts with the predeclared amq.*
    // ones), then bindings without end: each refused with 406 at its limit.
    let mut c = Amqp::handshake(addr, &amqp_login());
    c.open_channel(1);
    let (declared, refused) = call_until_refused(&mut c, 0, EXCHANGES_MAX, |i| {
        let name = format!("x-{i}");
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name.as_str().into(),
            kind: "direct".into(),
            durable: true,
            ..Default::default()
        }))
    });
    assert!(declared > EXCHANGES_MAX / 2, "only {declared} exchanges");
    assert_eq!(refused.0, 406, "{}", refused.1);
    assert!(
        refused.1.contains(&format!(
            "exchange limit in vhost '/' ({EXCHANGES_MAX}) is reached"
        )),
        "{}",
        refused.1
    );
    c.open_channel(1);
    let (bound, refused) = call_until_refused(&mut c, 0, BINDINGS_MAX, |i| {
        let key = format!("key-{i}");
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: "many-2".into(),
            exchange: "x-0".into(),
            routing_key: key.as_str().into(),
            ..Default::default()
        }))
    });
    assert!(bound > BINDINGS_MAX / 2, "only {bound} bindings");
    assert_eq!(refused.0, 406, "{}", refused.1);
    assert!(
        refused.1.contains(&format!(
            "binding limit in vhost '/' ({BINDINGS_MAX}) is reached"
        )),
        "{}",
        refused.1
    );
    drop(c);
    amqp_healthy(&server, &seed, "exchanges and bindings without end");

    // Consumers without end on one channel: connection.close 530, as
    // RabbitMQ answers past its consumer_max_per_channel.
    let mut c = Amqp::handshake(addr, &amqp_login());
    c.open_channel(1);
    for _ in 0..CONSUMERS_PER_CHANNEL_MAX {
        consume(&mut c, "many-2", false);
    }
    c.send(1, consume_method("many-2", false));
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 530, "{text}");
    assert!(
        text.contains(&format!(
            "reached maximum ({CONSUMERS_PER_CHANNEL_MAX}) of consumers per channel"
        )),
        "{text}"
    );
    drop(c);
    amqp_healthy(&server, &seed, "consumers without end");
}

/// Sends `method(i)` on channel 1 for i = `start`, `start` + 1, ... until
/// the server closes the channel; returns the `i` refused and the refusal.
/// Fails past `limit`.
fn call_until_refused(
    c: &mut Amqp,
    start: usize,
    limit: usize,
    method: impl Fn(usize) -> AMQPClass,
) -> (usize, (u16, String)) {
    let mut i = start;
    loop {
        match c.call(1, method(i)) {
            Ok(_) => i += 1,
            Err(refused) => return (i, refused),
        }
        assert!(i <= limit, "{i} made, past the limit of {limit}");
    }
}

fn consume_method(queue: &str, no_ack: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: queue.into(),
        consumer_tag: "".into(),
        no_local: false,
        no_ack,
        exclusive: false,
        nowait: false,
        arguments: Default::default(),
    }))
}

fn consume(c: &mut Amqp, queue: &str, no_ack: bool) {
    let ok = c.call(1, consume_method(queue, no_ack));
    assert!(
        matches!(ok, Ok(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))),
        "{ok:?}"
    );
}

/// Deliveries received until none came for `quiet`.
fn count_deliveries(c: &mut Amqp, quiet: Duration) -> usize {
    c.stream.set_read_timeout(Some(quiet)).unwrap();
    let mut n = 0;
    loop {
        match c.recv() {
            Ok(AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Deliver(_)))) => n += 1,
            Ok(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(close)),
            )) => panic!("connection.close {}", close.reply_text.as_str()),
            Ok(_) => {}
            Err(_) => return n,
        }
    }
}

// ---------------------------------------------------------------- HTTP

/// One request on a fresh connection; the response's status.
fn http_status(addr: SocketAddr, request: &str) -> u16 {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let head = String::from_utf8_lossy(&response);
    head.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

fn sqs_body(action: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonSQS.{action}\r\n\
         Content-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn sqs_seed(addr: SocketAddr, bodies: &[String]) -> String {
    let (status, created) = common::sqs::call(addr, "CreateQueue", &json!({"QueueName": "seed"}));
    assert_eq!(status, 200, "{created}");
    let url = created["QueueUrl"].as_str().unwrap().to_string();
    for b in bodies {
        let (status, sent) = common::sqs::call(
            addr,
            "SendMessage",
            &json!({"QueueUrl": url, "MessageBody": b}),
        );
        assert_eq!(status, 200, "{sent}");
    }
    url
}

/// Every message of the queue, received with a zero visibility timeout so
/// they stay available.
fn sqs_bodies(addr: SocketAddr, url: &str) -> BTreeSet<String> {
    let (status, got) = common::sqs::call(
        addr,
        "ReceiveMessage",
        &json!({"QueueUrl": url, "MaxNumberOfMessages": 10, "VisibilityTimeout": 0}),
    );
    assert_eq!(status, 200, "{got}");
    got["Messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Body"].as_str().unwrap().to_string())
        .collect()
}

/// The hostile cases every HTTP listener gets: `listener` is `sqs` or
/// `http`, `post` a path that reads a JSON body, `healthy` checks a normal
/// client and the data after each case.
fn http_attacks(
    server: &Server,
    listener: &str,
    post: &str,
    base: &Baseline,
    healthy: &dyn Fn(&str),
) {
    let addr = match listener {
        "sqs" => server.sqs(),
        _ => server.http(),
    };
    // Random bytes: hyper answers 400 or just closes.
    for n in 1..=4 {
        send_then_expect_close(
            connect(addr),
            &random_bytes(n, 64 * 1024),
            SLACK,
            "http random",
        );
    }
    healthy("random bytes");

    // Absurd lengths: a body of 2^31 bytes announced, a chunk of 2^32 - 1.
    let head = format!(
        "POST {post} HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonSQS.ListQueues\r\n\
         Content-Type: application/x-amz-json-1.0\r\n"
    );
    let status = http_status(
        addr,
        &format!("{head}Content-Length: 2147483648\r\n\r\n{{}}"),
    );
    assert_eq!(status, 413);
    let mut s = connect(addr);
    let _ = s.write_all(format!("{head}Transfer-Encoding: chunked\r\n\r\nffffffff\r\n").as_bytes());
    let _ = s.write_all(&[b'a'; 64 * 1024]);
    expect_close(&mut s, REQUEST_TIMEOUT + SLACK, "http huge chunk");
    healthy("absurd lengths");
    base.check("http absurd lengths", SLACK);

    // Truncated head, then silence; truncated body, then silence.
    send_then_expect_close(
        connect(addr),
        b"POST / HTTP/1.1\r\nHost: x\r\n",
        REQUEST_TIMEOUT + SLACK,
        "http truncated head",
    );
    send_then_expect_close(
        connect(addr),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"a\":",
        REQUEST_TIMEOUT + SLACK,
        "http truncated body",
    );
    // An idle keep-alive connection after a request is closed too.
    let mut s = connect(addr);
    s.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    expect_close(&mut s, REQUEST_TIMEOUT + SLACK, "http idle keep-alive");

    // Slowloris: headers a byte at a time.
    slowloris(
        addr,
        "GET / HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
            .as_bytes(),
        Duration::from_millis(300),
        REQUEST_TIMEOUT + SLACK,
        "http slowloris",
    );
    healthy("slowloris");

    // A flood of abandoned connections: over the limit they get a 503 and
    // are closed (the server logs that it refuses them); the rest by the
    // idle timeout.
    let mut held = flood(server, addr, &[], listener);
    expect_all_closed(&mut held, REQUEST_TIMEOUT + SLACK, "http connection flood");
    base.check("http connection flood", SLACK);
    drop(held);
    healthy("connection flood");

    // A client that pipelines requests and never reads the answers: the
    // server answers one at a time and stops reading when the socket is
    // full.
    let mut s = connect(addr);
    let request = sqs_body("ListQueues", &json!({}));
    let sent = write_without_reading(&mut s, request.repeat(100).as_bytes(), 1 << 30);
    assert!(
        sent < 256 << 20,
        "the server took {sent} bytes without being read"
    );
    base.check("http client that never reads", Duration::ZERO);
    drop(s);
    healthy("client that never reads");
}

#[test]
fn sqs_listener_survives_hostile_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = hostile_server(&dir);
    let addr = server.sqs();
    let seed_list: Vec<String> = (0..SEED_MESSAGES).map(|i| format!("seed-{i}")).collect();
    let url = sqs_seed(addr, &seed_list);
    let seed: BTreeSet<String> = seed_list.into_iter().collect();
    assert_eq!(sqs_bodies(addr, &url), seed);
    let base = Baseline::take(&server);
    let healthy = |what: &str| assert_eq!(sqs_bodies(addr, &url), seed, "{what}: seed messages");
    http_attacks(&server, "sqs", "/", &base, &healthy);

    // Over the limit, connections get a 503 before they are closed. They
    // are accepted in order, so the one after `CONNECTIONS_MAX` held ones
    // is past the limit until those time out, a second after they were
    // accepted; only an answer later than that may be a 200 (a stalled
    // machine), and then the test tries again.
    for attempt in 1.. {
        let started = Instant::now();
        let held: Vec<TcpStream> = (0..CONNECTIONS_MAX).map(|_| connect(addr)).collect();
        let status = http_status(addr, &sqs_body("ListQueues", &json!({})));
        drop(held);
        if status == 503 {
            break;
        }
        assert!(
            started.elapsed() >= REQUEST_TIMEOUT && attempt < 3,
            "a connection past the limit got {status} after {:?}",
            started.elapsed()
        );
        // Let the held connections' slots go.
        std::thread::sleep(REQUEST_TIMEOUT);
    }
    base.check("sqs after everything", REQUEST_TIMEOUT + SLACK);
    healthy("the end");

    // A client creating queues without end: OverLimit once the vhost holds
    // queues_per_vhost_max (the seed queue is one).
    let mut created = 1;
    loop {
        let (status, body) = common::sqs::call(
            addr,
            "CreateQueue",
            &json!({"QueueName": format!("many-{created}")}),
        );
        if status != 200 {
            assert_eq!(body["__type"], "com.amazonaws.sqs#OverLimit", "{body}");
            break;
        }
        created += 1;
        assert!(created <= QUEUES_MAX, "{created} queues created");
    }
    assert_eq!(created, QUEUES_MAX);
    healthy("queues without end");
}

#[test]
fn admin_listener_survives_hostile_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = hostile_server(&dir);
    let addr = server.http();
    let mut c = server.client();
    assert_eq!(api::create_topic(&mut c, "seed", 1, &[]), 0);
    drop(c);
    let base = Baseline::take(&server);
    let healthy = |what: &str| {
        assert_eq!(
            http_status(
                addr,
                "GET /api/topics/seed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            ),
            200,
            "{what}"
        );
    };
    healthy("before");
    http_attacks(&server, "http", "/api/topics", &base, &healthy);
}
