//! A full disk: produce fails with KAFKA_STORAGE_ERROR, the server stays up
//! and serves reads, and appends resume once space returns.
//!
//! Needs root to mount a small tmpfs as the data directory; CI runs as root.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::api;
use common::tmpfs::Tmpfs;
use common::{Server, encode_batch, now_ms, record};
use kafka_protocol::records::Compression;

const KAFKA_STORAGE_ERROR: i16 = 56;

#[test]
fn disk_full_fails_produce_cleanly_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount_or_skip(&dir.path().join("mnt"), "3m") else {
        return;
    };
    let data = tmpfs.0.join("data");
    // No disk alarm (its default limit is larger than this filesystem): the
    // test is about writes that fail, not producers held before them.
    let mut server = Server::start(
        &data,
        &[
            "--topic-default",
            "segment.bytes=524288",
            "--disk-free-limit",
            "0",
        ],
    );
    let mut c = server.client();
    assert_eq!(api::create_topic(&mut c, "full", 1, &[]), 0);

    let payload = "z".repeat(32 * 1024);
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..400 {
        let value = format!("{i}:{payload}");
        let batch = encode_batch(&[record(None, &value, now_ms())], Compression::None);
        match api::produce(&mut c, "full", 0, batch) {
            (0, offset) => acked.push((offset, value)),
            (KAFKA_STORAGE_ERROR, _) => {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            (err, _) => panic!("unexpected error {err}"),
        }
    }
    assert_eq!(refused, 3, "the disk never filled");
    assert!(acked.len() > 10, "only {} batches fit", acked.len());
    assert!(server.is_running(), "{}", server.log_text());

    // Everything acknowledged is readable while the disk is full.
    let records = api::read_all(&mut c, "full", 0, 0);
    assert_eq!(records.len(), acked.len());

    tmpfs.resize("64m");
    let value = format!("after:{payload}");
    let (err, offset) = api::produce(
        &mut c,
        "full",
        0,
        encode_batch(&[record(None, &value, now_ms())], Compression::None),
    );
    assert_eq!(err, 0, "appends did not resume:\n{}", server.log_text());
    assert_eq!(
        offset,
        acked.len() as i64,
        "offsets skipped or reused after the full disk"
    );
    acked.push((offset, value));

    let records = api::read_all(&mut c, "full", 0, 0);
    assert_eq!(records.len(), acked.len());
    for (r, (offset, value)) in records.iter().zip(&acked) {
        assert_eq!(r.offset, *offset);
        assert_eq!(r.value.as_deref(), Some(value.as_bytes()));
    }
    let status = server.terminate();
    assert!(status.success());
}
