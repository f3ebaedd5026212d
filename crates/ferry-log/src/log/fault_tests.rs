//! Storage faults injected under the log: bits flipped at rest in segments
//! opened without a scan, and power cuts that lose what was not fsynced.

use std::fs;

use super::tests::{assigned, clock, config, headers_of, log_path, open};
use super::*;
use crate::FsyncPolicy;
use crate::batch::HEADER_BYTES;
use crate::batch::tests::make_batch;

const T0: i64 = 1_700_000_000_000;

/// Ten batches of two records, three batches to a segment, closed cleanly:
/// every segment is then opened trusted, without a scan. Returns the config
/// and the batches as stored.
fn closed_log(dir: &Path) -> (LogConfig, Vec<Vec<u8>>) {
    let batch = make_batch(2, T0, &[7u8; 100]);
    let cfg = LogConfig {
        segment_bytes: batch.len() as u64 * 3,
        ..config(FsyncPolicy::Never)
    };
    let log = open(dir, cfg.clone(), &clock());
    let stored = (0..10)
        .map(|i| {
            let info = log.append(&batch).expect("append");
            assert_eq!(info.base_offset, i * 2);
            assigned(&batch, info.base_offset)
        })
        .collect();
    log.close().expect("close");
    (cfg, stored)
}

/// Flips one bit in a record of batch `k` (of `stored`), wherever its
/// segment put it.
fn flip_bit_in_batch(dir: &Path, stored: &[Vec<u8>], k: usize) -> PathBuf {
    let per_segment = 3;
    let base = (k / per_segment * per_segment) as i64 * 2;
    let path = log_path(dir, base);
    let position = (k % per_segment) * stored[k].len() + HEADER_BYTES + 5;
    let mut bytes = fs::read(&path).expect("read");
    bytes[position] ^= 0x04;
    fs::write(&path, &bytes).expect("write");
    path
}

#[test]
fn a_batch_corrupted_at_rest_is_never_served_and_the_rest_still_is() {
    // Batch 4 sits in the middle of a sealed segment, batch 9 alone in the
    // last one (trusted after the clean shutdown too).
    for k in [4usize, 9] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cfg, stored) = closed_log(dir.path());
        let path = flip_bit_in_batch(dir.path(), &stored, k);
        let log = open(dir.path(), cfg, &clock());
        let bad = k as i64 * 2;

        // A read from before it stops short of it.
        let r = log.read(0, 1 << 20, true).expect("read");
        assert_eq!(r.records, stored[..k].concat(), "batch {k}");
        // Both of its offsets are refused, naming the batch.
        for offset in [bad, bad + 1] {
            match log.read(offset, 1 << 20, true) {
                Err(LogError::CorruptBatch {
                    path: p,
                    position,
                    base_offset,
                    last_offset,
                    reason,
                }) => {
                    assert_eq!(p, path);
                    assert_eq!(position, (k % 3 * stored[k].len()) as u64);
                    assert_eq!((base_offset, last_offset), (bad, bad + 1));
                    assert!(reason.contains("CRC"), "{reason}");
                }
                other => panic!("batch {k}, offset {offset}: expected CorruptBatch, got {other:?}"),
            }
        }
        // Everything after it is served, and the log still takes appends.
        let mut after = Vec::new();
        let mut offset = bad + 2;
        while offset < log.high_watermark() {
            let r = log.read(offset, 1 << 20, true).expect("read after");
            offset = headers_of(&r.records)
                .last()
                .expect("progress")
                .last_offset()
                + 1;
            after.extend_from_slice(&r.records);
        }
        assert_eq!(after, stored[k + 1..].concat(), "batch {k}");
        let next = make_batch(1, T0, b"after");
        assert_eq!(log.append(&next).expect("append").base_offset, 20);
    }
}
