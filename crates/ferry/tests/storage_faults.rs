//! Storage faults under the real server: a bit flipped at rest in a sealed
//! segment of a stopped server is never served after a restart; Fetch
//! answers that batch's offsets with CORRUPT_MESSAGE, logs where it is, and
//! serves the rest of the partition.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};

use common::api;
use common::{Server, decode_batches, encode_batch, now_ms, record};
use kafka_protocol::ResponseError;
use kafka_protocol::records::Compression;

const BATCHES: i64 = 30;
const RECORDS_PER_BATCH: i64 = 5;

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
    // Segments of about four batches: most of the partition is sealed.
    assert_eq!(
        api::create_topic(&mut client, "faults", 1, &[("segment.bytes", "1024")]),
        0
    );
    let value = |offset: i64| format!("value-{offset:04}-{}", "x".repeat(100));
    for b in 0..BATCHES {
        let records: Vec<_> = (0..RECORDS_PER_BATCH)
            .map(|i| record(None, &value(b * RECORDS_PER_BATCH + i), now_ms()))
            .collect();
        let (err, base) = api::produce(
            &mut client,
            "faults",
            0,
            encode_batch(&records, Compression::None),
        );
        assert_eq!((err, base), (0, b * RECORDS_PER_BATCH));
    }
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
