//! Storage faults under the real server: a bit flipped at rest in a sealed
//! segment of a stopped server is never served after a restart; Fetch
//! answers that batch's offsets with CORRUPT_MESSAGE, logs where it is, and
//! serves the rest of the partition. A sealed segment whose batches cannot
//! be walked holds its partition offline without stopping the server.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::api;
use common::{Client, Server, decode_batches, encode_batch, now_ms, record, strip_ansi};
use kafka_protocol::ResponseError;
use kafka_protocol::records::Compression;

const BATCHES: i64 = 30;
const RECORDS_PER_BATCH: i64 = 5;

/// The value of the record at `offset`.
fn value(offset: i64) -> String {
    format!("value-{offset:04}-{}", "x".repeat(100))
}

/// Creates `topic` with segments of about four batches, so that most of it
/// is sealed, and produces `BATCHES` batches of `RECORDS_PER_BATCH` records.
fn fill(client: &mut Client, topic: &str) {
    assert_eq!(
        api::create_topic(client, topic, 1, &[("segment.bytes", "1024")]),
        0
    );
    for b in 0..BATCHES {
        let records: Vec<_> = (0..RECORDS_PER_BATCH)
            .map(|i| record(None, &value(b * RECORDS_PER_BATCH + i), now_ms()))
            .collect();
        let (err, base) = api::produce(client, topic, 0, encode_batch(&records, Compression::None));
        assert_eq!((err, base), (0, b * RECORDS_PER_BATCH));
    }
}

/// The segment files of partition 0 of `topic`, oldest first.
fn segments(data_dir: &Path, topic: &str) -> Vec<PathBuf> {
    let dir = data_dir.join("topics").join(topic).join("0");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// (position, base offset, last offset) of each batch in a segment file.
fn batch_starts(bytes: &[u8]) -> Vec<(usize, i64, i64)> {
    let field = |at: usize, n: usize| {
        bytes[at..at + n]
            .iter()
            .fold(0i64, |acc, b| (acc << 8) | i64::from(*b))
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 27 <= bytes.len() {
        let base = field(pos, 8);
        let len = field(pos + 8, 4);
        let last_offset_delta = field(pos + 23, 4);
        out.push((pos, base, base + last_offset_delta));
        pos += 12 + len as usize;
    }
    out
}

#[test]
fn a_bit_flipped_in_a_sealed_segment_is_never_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut client = server.client();
    fill(&mut client, "faults");
    drop(client);
    assert!(server.terminate().success());

    // The second batch of the second segment gets a flipped bit in a value.
    let files = segments(dir.path(), "faults");
    assert!(files.len() > 3, "segments: {files:?}");
    let sealed = &files[1];
    let mut bytes = std::fs::read(sealed).unwrap();
    let starts = batch_starts(&bytes);
    let (position, bad, bad_last) = starts[1];
    bytes[position + 61 + 20] ^= 0x01;
    std::fs::write(sealed, &bytes).unwrap();

    let mut server = Server::start(dir.path(), &[]);
    let mut client = server.client();
    let mut served = Vec::new();
    let mut offset = 0;
    let end = BATCHES * RECORDS_PER_BATCH;
    while offset < end {
        let (err, hw, records) = api::fetch(&mut client, "faults", 0, offset, 1 << 20, 0);
        assert_eq!(hw, end);
        if (bad..=bad_last).contains(&offset) {
            assert_eq!(
                err,
                ResponseError::CorruptMessage.code(),
                "offset {offset} of the corrupt batch"
            );
            assert!(records.is_empty(), "nothing of a corrupt batch is sent");
            offset += 1;
            continue;
        }
        assert_eq!(err, 0, "fetch at offset {offset}");
        let records = decode_batches(records);
        assert!(!records.is_empty(), "progress at offset {offset}");
        let from = offset;
        for r in records.into_iter().filter(|r| r.offset >= from) {
            assert!(!(bad..=bad_last).contains(&r.offset), "served {}", r.offset);
            let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            assert_eq!(v, value(r.offset));
            served.push(r.offset);
            offset = r.offset + 1;
        }
    }
    let expected: Vec<i64> = (0..end).filter(|o| !(bad..=bad_last).contains(o)).collect();
    assert_eq!(served, expected);

    server.wait_for_log("not serving a corrupt record batch");
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("not serving a corrupt record batch"))
        .unwrap();
    let segment_name = sealed.file_name().unwrap().to_string_lossy();
    for needle in ["faults", &segment_name, &format!("{bad}..={bad_last}")] {
        assert!(line.contains(needle), "no {needle} in: {line}");
    }
    // The server is up and the partition takes new records.
    let (err, base) = api::produce(
        &mut client,
        "faults",
        0,
        encode_batch(&[record(None, "after", now_ms())], Compression::None),
    );
    assert_eq!((err, base), (0, end));
    assert!(server.is_running());
}

/// Every file of a directory, by name, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn a_sealed_segment_that_cannot_be_walked_holds_its_partition_offline_not_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut client = server.client();
    fill(&mut client, "damaged");
    fill(&mut client, "healthy");
    drop(client);
    assert!(server.terminate().success());

    // The second batch of the second segment claims 2^31 - 1 bytes, and the
    // segment's offset index is gone: opening the log has to walk the
    // batches to rebuild it, and cannot get past that one.
    let files = segments(dir.path(), "damaged");
    let sealed = &files[1];
    let mut bytes = std::fs::read(sealed).unwrap();
    let (position, _, _) = batch_starts(&bytes)[1];
    bytes[position + 8..position + 12].copy_from_slice(&i32::MAX.to_be_bytes());
    std::fs::write(sealed, &bytes).unwrap();
    std::fs::remove_file(sealed.with_extension("index")).unwrap();
    let partition_dir = dir.path().join("topics").join("damaged").join("0");
    let before = snapshot(&partition_dir);

    let mut server = Server::start(dir.path(), &[]);
    let mut client = server.client();

    // Every other partition serves as usual.
    let healthy = api::read_all(&mut client, "healthy", 0, 0);
    let offsets: Vec<i64> = healthy.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (0..BATCHES * RECORDS_PER_BATCH).collect::<Vec<_>>()
    );
    let after = encode_batch(&[record(None, "after", now_ms())], Compression::None);
    assert_eq!(
        api::produce(&mut client, "healthy", 0, after.clone()),
        (0, BATCHES * RECORDS_PER_BATCH)
    );

    // The damaged partition answers as Kafka answers for a partition of a
    // failed log directory.
    let storage_error = ResponseError::KafkaStorageError.code();
    assert_eq!(
        api::produce(&mut client, "damaged", 0, after.clone()).0,
        storage_error
    );
    assert_eq!(
        api::fetch(&mut client, "damaged", 0, 0, 1 << 20, 0).0,
        storage_error
    );
    let metadata = api::metadata(&mut client, Some(&["damaged", "healthy"]));
    for topic in &metadata.topics {
        let name = topic.name.as_ref().unwrap().0.to_string();
        let p = &topic.partitions[0];
        if name == "damaged" {
            assert_eq!(p.error_code, ResponseError::LeaderNotAvailable.code());
            assert_eq!(p.leader_id.0, -1);
            assert_eq!(p.offline_replicas.len(), 1);
        } else {
            assert_eq!((p.error_code, p.offline_replicas.len()), (0, 0));
        }
    }

    // The admin API lists it as offline with the reason, and its message
    // browser answers 503 rather than a bare 500.
    let (status, body) = http_get(server.http(), "/api/topics/damaged");
    assert_eq!(status, 200, "{body}");
    let topic: serde_json::Value = serde_json::from_str(&body).unwrap();
    let p = &topic["partitions"][0];
    assert_eq!(p["online"], false, "{body}");
    assert!(p["high_watermark"].is_null(), "{body}");
    assert!(p["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    let (status, body) = http_get(server.http(), "/api/topics/damaged/partitions/0/records");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("\"unavailable\"") && body.contains("offline"),
        "{body}"
    );
    let (_, body) = http_get(server.http(), "/api/topics/healthy");
    let topic: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(topic["partitions"][0]["online"], true, "{body}");

    // One error line names the partition, the file and the byte, and says
    // what to do.
    server.wait_for_log("partition held offline");
    let log = server.log_text();
    let line = strip_ansi(
        log.lines()
            .find(|l| l.contains("partition held offline"))
            .unwrap(),
    );
    let segment_name = sealed.file_name().unwrap().to_string_lossy();
    for needle in [
        "damaged",
        "partition=0",
        &segment_name,
        &format!("position={position}"),
        "truncate -s POSITION FILE",
    ] {
        assert!(line.contains(needle), "no {needle} in: {line}");
    }
    assert!(server.is_running());
    drop(client);
    assert!(server.terminate().success());
    // Nothing of the damaged partition was rewritten, cut or rebuilt.
    assert_eq!(snapshot(&partition_dir), before);

    // What the log line advises brings the partition back: the segment cut
    // at the damaged batch, its records before that are served, the later
    // segments' too, and it takes records again.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(sealed)
        .unwrap();
    file.set_len(position as u64).unwrap();
    drop(file);
    let server = Server::start(dir.path(), &[]);
    let mut client = server.client();
    let lost_from = batch_starts(&bytes)[1].1;
    let lost_to = segments(dir.path(), "damaged")
        .get(2)
        .map(|f| batch_starts(&std::fs::read(f).unwrap())[0].1)
        .unwrap();
    let served: Vec<i64> = api::read_all(&mut client, "damaged", 0, 0)
        .iter()
        .map(|r| r.offset)
        .collect();
    let expected: Vec<i64> = (0..BATCHES * RECORDS_PER_BATCH)
        .filter(|o| !(lost_from..lost_to).contains(o))
        .collect();
    assert_eq!(served, expected);
    assert_eq!(
        api::produce(&mut client, "damaged", 0, after),
        (0, BATCHES * RECORDS_PER_BATCH)
    );
}

/// A GET to the admin API: the status and the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}
