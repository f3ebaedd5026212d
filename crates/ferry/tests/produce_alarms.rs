//! Resource alarms slow Kafka producers and SQS senders, as they block AMQP
//! publishers (see amqp_alarms.rs): on the real binary with a small tmpfs
//! as its data directory, filling the disk past `--disk-free-limit` raises
//! the disk alarm; a produce request or a SendMessage that arrives then is
//! held (not answered, nothing stored) while consumers keep reading; when
//! space returns the alarm clears and the held request is stored and
//! answered. Refusals when an alarm outlasts the hold are checked with real
//! clients in tests/interop/test_produce_alarms.py.
//!
//! Mounting a tmpfs needs root; CI runs as root.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::sqs::call as sqs;
use common::tmpfs::Tmpfs;
use common::{Server, api, encode_batch, now_ms, record};
use kafka_protocol::records::Compression;
use serde_json::json;

/// A tmpfs of 16 MiB with an 8 MiB disk limit: the alarm goes up once a
/// 10 MiB file is written, and clears when the tmpfs grows to 64 MiB.
fn server_on_small_disk(dir: &tempfile::TempDir) -> Option<(Tmpfs, Server)> {
    let tmpfs = Tmpfs::mount_or_skip(&dir.path().join("mnt"), "16m")?;
    let server = Server::start(&tmpfs.0.join("data"), &["--disk-free-limit", "8MiB"]);
    Some((tmpfs, server))
}

fn fill_disk(tmpfs: &Tmpfs, server: &Server) {
    std::fs::write(tmpfs.0.join("filler"), vec![0u8; 10 << 20]).unwrap();
    server.wait_for_log("disk alarm raised");
}

fn free_disk(tmpfs: &Tmpfs, server: &Server) {
    tmpfs.resize("64m");
    server.wait_for_log("disk alarm cleared");
}

fn values(records: &[kafka_protocol::records::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect()
}

#[test]
fn kafka_produce_is_held_during_a_disk_alarm_and_stored_when_it_clears() {
    let dir = tempfile::tempdir().unwrap();
    let Some((tmpfs, mut server)) = server_on_small_disk(&dir) else {
        return;
    };
    let mut client = server.client();
    assert_eq!(api::create_topic(&mut client, "orders", 1, &[]), 0);
    let batch = |v: &str| encode_batch(&[record(None, v, now_ms())], Compression::None);
    assert_eq!(
        api::produce(&mut client, "orders", 0, batch("before")),
        (0, 0)
    );

    fill_disk(&tmpfs, &server);
    let (done_tx, done) = mpsc::channel();
    let kafka = server.kafka;
    let producer = std::thread::spawn(move || {
        let mut c = common::Client::connect(kafka);
        let started = Instant::now();
        let req = api::produce_request("orders", 0, batch("held"), -1);
        let resp = c.call(&req, 9);
        done_tx.send(()).unwrap();
        (resp, started.elapsed())
    });
    // Held: no answer while the alarm is on...
    assert!(done.recv_timeout(Duration::from_millis(1500)).is_err());
    // ...while a consumer still reads what is stored, and nothing more.
    let mut consumer = server.client();
    assert_eq!(
        values(&api::read_all(&mut consumer, "orders", 0, 0)),
        ["before"]
    );

    free_disk(&tmpfs, &server);
    let (resp, held) = producer.join().unwrap();
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 1));
    // throttle_time_ms says how long it was held.
    assert!(resp.throttle_time_ms >= 1500, "{}", resp.throttle_time_ms);
    assert!(i64::from(resp.throttle_time_ms) <= held.as_millis() as i64);
    assert_eq!(
        values(&api::read_all(&mut consumer, "orders", 0, 0)),
        ["before", "held"]
    );
    assert!(server.terminate().success());
}

#[test]
fn sqs_send_is_held_during_a_disk_alarm_and_stored_when_it_clears() {
    let dir = tempfile::tempdir().unwrap();
    let Some((tmpfs, mut server)) = server_on_small_disk(&dir) else {
        return;
    };
    let addr = server.sqs();
    let (status, created) = sqs(addr, "CreateQueue", &json!({"QueueName": "jobs"}));
    assert_eq!(status, 200, "{created}");
    let url = created["QueueUrl"].as_str().unwrap().to_string();
    let send = |body: &str| json!({"QueueUrl": url, "MessageBody": body});
    let receive = json!({"QueueUrl": url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0});
    assert_eq!(sqs(addr, "SendMessage", &send("before")).0, 200);

    fill_disk(&tmpfs, &server);
    let (done_tx, done) = mpsc::channel();
    let held = send("held");
    let sender = std::thread::spawn(move || {
        let answer = sqs(addr, "SendMessage", &held);
        done_tx.send(()).unwrap();
        answer
    });
    assert!(done.recv_timeout(Duration::from_millis(1500)).is_err());
    // Receives are not held: the consumer drains what is stored.
    let (status, got) = sqs(addr, "ReceiveMessage", &receive);
    assert_eq!(status, 200, "{got}");
    let bodies: Vec<&str> = got["Messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["before"]);

    free_disk(&tmpfs, &server);
    let (status, sent) = sender.join().unwrap();
    assert_eq!(status, 200, "{sent}");
    let (_, got) = sqs(addr, "ReceiveMessage", &receive);
    assert_eq!(got["Messages"][0]["Body"], "held", "{got}");
    assert!(server.terminate().success());
}
