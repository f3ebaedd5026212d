//! Hostile and malformed input over raw sockets: the server answers with the
//! error Kafka would give, or closes that one connection, and keeps serving
//! everyone else.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::api::{self, topic_name};
use common::{Client, Server, encode_batch, record};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::Compression;

const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const MESSAGE_TOO_LARGE: i16 = 10;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const UNSUPPORTED_VERSION: i16 = 35;

/// The server still answers a well-formed request from a new client.
fn assert_alive(server: &mut Server) {
    assert!(server.is_running(), "server died:\n{}", server.log_text());
    let mut c = server.client();
    let resp = c.call(&ApiVersionsRequest::default(), 3);
    assert_eq!(resp.error_code, 0);
    assert!(!resp.api_keys.is_empty());
}

/// A request frame: api key, version, correlation id, client id, then `body`.
fn raw_request(api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(api_key);
    b.put_i16(version);
    b.put_i32(7);
    b.put_i16(-1); // null client id
    if (api_key == 3 && version >= 9) || (api_key == 18 && version >= 3) {
        b.put_u8(0); // flexible header: empty tagged fields
    }
    b.put_slice(body);
    b.to_vec()
}

#[test]
fn oversized_and_negative_lengths_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    for size in [i32::MAX, 100 * 1024 * 1024 + 1, -1, i32::MIN, 3] {
        let mut c = server.client();
        c.stream.write_all(&size.to_be_bytes()).unwrap();
        assert!(c.is_closed_by_server(), "size {size} was not refused");
    }
    server.wait_for_log("request size");
    assert_alive(&mut server);
}

#[test]
fn garbage_bytes_and_truncated_frames_do_not_hurt_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    // Deterministic pseudo-random garbage.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut garbage = vec![0u8; 64 * 1024];
    for b in garbage.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut c = server.client();
    let _ = c.stream.write_all(&garbage);
    // A frame that promises 1000 bytes and delivers 10, then goes silent.
    let mut truncated = server.client();
    truncated.stream.write_all(&1000i32.to_be_bytes()).unwrap();
    truncated.stream.write_all(&[0u8; 10]).unwrap();
    assert_alive(&mut server);
    drop(truncated);
    assert_alive(&mut server);
}

#[test]
fn unknown_keys_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);

    // Unknown API key: Kafka closes the connection.
    let mut c = server.client();
    c.send_frame(&raw_request(999, 0, &[])).unwrap();
    assert!(c.is_closed_by_server());

    // A known API at a version nobody defined: closed too.
    let mut c = server.client();
    c.send_frame(&raw_request(3, 99, &[0; 16])).unwrap();
    assert!(c.is_closed_by_server());

    // ApiVersions at an unknown version: a v0 answer with UNSUPPORTED_VERSION
    // and the versions we do support, so the client can retry (KIP-511).
    let mut c = server.client();
    c.send_frame(&raw_request(18, 99, &[])).unwrap();
    let mut frame = c.read_frame().unwrap();
    let header = ResponseHeader::decode(&mut frame, 0).unwrap();
    assert_eq!(header.correlation_id, 7);
    let resp = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(resp.error_code, UNSUPPORTED_VERSION);
    let produce = resp.api_keys.iter().find(|k| k.api_key == 0).unwrap();
    assert_eq!((produce.min_version, produce.max_version), (3, 10));

    // The same probe without the flexible header's tagged fields, as a
    // careless client might send it, is answered the same way.
    let mut c = server.client();
    let mut probe = raw_request(18, 99, &[]);
    probe.pop();
    c.send_frame(&probe).unwrap();
    let mut frame = c.read_frame().unwrap();
    assert_eq!(
        ResponseHeader::decode(&mut frame, 0)
            .unwrap()
            .correlation_id,
        7
    );
    assert_eq!(
        ApiVersionsResponse::decode(&mut frame, 0)
            .unwrap()
            .error_code,
        UNSUPPORTED_VERSION
    );

    // Transactions have no coordinator yet: a proper error, connection kept,
    // while groups are coordinated here.
    let mut c = server.client();
    let mut req = FindCoordinatorRequest::default();
    req.key = StrBytes::from_static_str("txn");
    req.key_type = 1;
    assert_eq!(c.call(&req, 3).error_code, COORDINATOR_NOT_AVAILABLE);
    req.key_type = 0;
    let resp = c.call(&req, 3);
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.port, i32::from(server.kafka.port()));

    assert_alive(&mut server);
}

#[test]
fn absurd_array_lengths_are_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    // Metadata v1: topics array claiming 2^31-1 entries, then nothing.
    let mut c = server.client();
    c.send_frame(&raw_request(3, 1, &i32::MAX.to_be_bytes()))
        .unwrap();
    assert!(c.is_closed_by_server());
    // Produce v3: a topic array of 2^31-1 entries of a 2-field struct.
    let mut body = BytesMut::new();
    body.put_i16(-1); // transactional id
    body.put_i16(-1); // acks
    body.put_i32(1000);
    body.put_i32(i32::MAX);
    let mut c = server.client();
    c.send_frame(&raw_request(0, 3, &body)).unwrap();
    assert!(c.is_closed_by_server());
    assert_alive(&mut server);
}

#[test]
fn random_bodies_for_every_api_never_crash_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut x: u64 = 42;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (key, min, max) in ferry_kafka_apis() {
        for version in min..=max {
            for round in 0..5 {
                let len = (next() % 200) as usize + round;
                let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let Ok(mut c) = Client::try_connect(server.kafka) else {
                    panic!("server stopped accepting:\n{}", server.log_text());
                };
                let mut frame = BytesMut::new();
                frame.put_i16(key);
                frame.put_i16(version);
                frame.put_i32(1);
                frame.put_slice(&body);
                let _ = c.send_frame(&frame);
                let _ = c.stream.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = c.read_frame();
            }
        }
    }
    assert_alive(&mut server);
}

/// The API table the server advertises.
fn ferry_kafka_apis() -> Vec<(i16, i16, i16)> {
    ferry_kafka::SUPPORTED_APIS
        .iter()
        .map(|(key, min, max)| (*key as i16, *min, *max))
        .collect()
}

#[test]
fn corrupt_and_oversized_batches_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = server.client();
    assert_eq!(
        api::create_topic(&mut c, "t", 1, &[("max.message.bytes", "2000")]),
        0
    );

    let good = encode_batch(
        &[record(Some("k"), "hello", common::now_ms())],
        Compression::None,
    );
    let mut bad = good.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    let (err, _) = api::produce(&mut c, "t", 0, bad.into());
    assert_eq!(err, CORRUPT_MESSAGE);

    let big = encode_batch(&[record(None, &"x".repeat(5000), 1)], Compression::None);
    let (err, _) = api::produce(&mut c, "t", 0, big);
    assert_eq!(err, MESSAGE_TOO_LARGE);

    let (_, hw, bytes) = api::fetch(&mut c, "t", 0, 0, 1 << 20, 0);
    assert_eq!((hw, bytes.len()), (0, 0), "a refused batch was stored");

    let (err, offset) = api::produce(&mut c, "t", 0, good);
    assert_eq!((err, offset), (0, 0));
    let (err, _) = api::produce(
        &mut c,
        "t",
        7,
        encode_batch(&[record(None, "x", 1)], Compression::None),
    );
    assert_eq!(err, UNKNOWN_TOPIC_OR_PARTITION);
    assert_alive(&mut server);
}

#[test]
fn invalid_topic_names_never_touch_paths_outside_the_data_dir() {
    let outer = tempfile::tempdir().unwrap();
    let data = outer.path().join("data");
    let mut server = Server::start(&data, &[]);
    let mut c = server.client();
    let long = "x".repeat(250);
    let names = [
        "../../etc",
        "..",
        ".",
        "a/b",
        "/abs",
        "",
        "sp ace",
        "evil\\x",
        long.as_str(),
    ];
    for name in names {
        assert_eq!(
            api::create_topic(&mut c, name, 1, &[]),
            INVALID_TOPIC_EXCEPTION,
            "CreateTopics {name:?}"
        );
        let (err, _) = api::produce(
            &mut c,
            name,
            0,
            encode_batch(&[record(None, "x", 1)], Compression::None),
        );
        assert_eq!(err, INVALID_TOPIC_EXCEPTION, "Produce to {name:?}");
    }
    // Metadata with auto-creation must refuse the names too.
    let mut req = MetadataRequest::default();
    req.topics = Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name("../escape"))),
    ]);
    req.allow_auto_topic_creation = true;
    let resp = c.call(&req, 12);
    assert_eq!(resp.topics[0].error_code, INVALID_TOPIC_EXCEPTION);

    // Only the data directory exists beside where we started.
    let entries: Vec<_> = std::fs::read_dir(outer.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("data")]);
    let topics: Vec<_> = std::fs::read_dir(data.join("topics")).unwrap().collect();
    assert!(topics.is_empty(), "{topics:?}");
    assert_alive(&mut server);
}

#[test]
fn duplicate_and_colliding_topics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client();
    assert_eq!(api::create_topic(&mut c, "a.b", 1, &[]), 0);
    assert_eq!(api::create_topic(&mut c, "a.b", 1, &[]), 36); // TOPIC_ALREADY_EXISTS
    assert_eq!(
        api::create_topic(&mut c, "a_b", 1, &[]),
        INVALID_TOPIC_EXCEPTION
    );
    let mut req = CreateTopicsRequest::default();
    let mut t = CreatableTopic::default();
    t.name = topic_name("rf3");
    t.num_partitions = 1;
    t.replication_factor = 3;
    req.topics = vec![t];
    assert_eq!(c.call(&req, 7).topics[0].error_code, 38); // INVALID_REPLICATION_FACTOR
    assert_eq!(
        api::create_topic(&mut c, "cfg", 1, &[("cleanup.policy", "compact")]),
        40
    ); // INVALID_CONFIG
    assert_eq!(api::create_topic(&mut c, "zero", 0, &[]), 37); // INVALID_PARTITIONS
}
