//! Storage faults injected under the log: bits flipped at rest in segments
//! opened without a scan, and power cuts that lose what was not fsynced.

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::AtomicBool;

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

/// Flips the bits of `mask` in byte `at` of batch `k` (of `stored`),
/// wherever its segment put it.
fn flip_bit_in_batch(dir: &Path, stored: &[Vec<u8>], k: usize, at: usize, mask: u8) -> PathBuf {
    let per_segment = 3;
    let base = (k / per_segment * per_segment) as i64 * 2;
    let path = log_path(dir, base);
    let position = (k % per_segment) * stored[k].len() + at;
    let mut bytes = fs::read(&path).expect("read");
    bytes[position] ^= mask;
    fs::write(&path, &bytes).expect("write");
    path
}

/// Checks a log reopened over `stored` whose batch `k` was damaged in
/// `path`: that batch is refused at each of its offsets, naming it (the
/// refusal's reason containing `reason`), everything before and after it
/// is served as stored, and the log still takes appends.
fn assert_only_batch_refused(log: &Log, stored: &[Vec<u8>], k: usize, path: &Path, reason: &str) {
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
                reason: why,
            }) => {
                assert_eq!(p, path);
                assert_eq!(position, (k % 3 * stored[k].len()) as u64);
                assert_eq!((base_offset, last_offset), (bad, bad + 1));
                assert!(why.contains(reason), "{why}");
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

#[test]
fn a_batch_corrupted_at_rest_is_never_served_and_the_rest_still_is() {
    // Batch 4 sits in the middle of a sealed segment, batch 9 alone in the
    // last one (trusted after the clean shutdown too).
    for k in [4usize, 9] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cfg, stored) = closed_log(dir.path());
        let path = flip_bit_in_batch(dir.path(), &stored, k, HEADER_BYTES + 5, 0x04);
        let log = open(dir.path(), cfg, &clock());
        assert_only_batch_refused(&log, &stored, k, &path, "CRC");
    }
}

#[test]
fn a_batch_whose_base_offset_changed_at_rest_is_never_served_and_the_rest_still_is() {
    // The CRC does not cover the base offset (bytes 0..8), so a reader that
    // trusted it would serve the batch's records at offsets it never had.
    // Batch 3 starts the second sealed segment: opening the log reads the
    // batches at index entries and after the last one, not it, so only the
    // read can notice. Flipped: the lowest bit (6 becomes 7, an offset of
    // the batch itself), a middle one, and the sign bit.
    for (byte, mask) in [(7usize, 0x01u8), (5, 0x10), (0, 0x80)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cfg, stored) = closed_log(dir.path());
        let path = flip_bit_in_batch(dir.path(), &stored, 3, byte, mask);
        let log = open(dir.path(), cfg, &clock());
        assert_only_batch_refused(&log, &stored, 3, &path, "base offset");
    }
}

/// What a power cut leaves of what was written after the last fsync.
#[derive(Debug, Clone, Copy)]
enum Unsynced {
    /// Nothing: every file ends where its last fsync left it.
    Lost,
    /// Its first half (the page cache wrote some of it back), cutting a
    /// batch short.
    HalfWritten,
    /// Zeros: the file's size reached the disk but its data did not.
    Zeros,
}

/// Applies a power cut to the segment files of a log directory: each keeps
/// the bytes `durable_lens` says an fsync covered, then what `unsynced`
/// leaves of the rest; a segment whose creation was never made durable is
/// gone.
fn power_cut(dir: &Path, durable_lens: &HashMap<PathBuf, u64>, unsynced: Unsynced) {
    for entry in fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let Some(&durable) = durable_lens.get(&path) else {
            fs::remove_file(&path).expect("rm");
            continue;
        };
        let mut bytes = fs::read(&path).expect("read");
        let written = bytes.len();
        let durable = durable as usize;
        match unsynced {
            Unsynced::Lost => bytes.truncate(durable),
            Unsynced::HalfWritten => bytes.truncate(durable + (written - durable) / 2),
            Unsynced::Zeros => bytes[durable..].fill(0),
        }
        fs::write(&path, &bytes).expect("write");
    }
}

/// Each batch acknowledged (durable) before the cut: its base offset and
/// the batch as appended.
type Acked = Arc<Mutex<Vec<(i64, Vec<u8>)>>>;

/// Appends distinct batches and waits for each to be durable, recording the
/// acknowledged ones, until `stop`.
async fn appender(log: Arc<Log>, id: u8, acked: Acked, stop: Arc<AtomicBool>) {
    let mut seq = 0u32;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let payload = format!("appender {id} batch {seq} {}", "p".repeat(200));
        let batch = make_batch(3, T0, payload.as_bytes());
        let info = log.append(&batch).expect("append");
        log.wait_durable(&info).await.expect("durable");
        acked.lock().expect("lock").push((info.base_offset, batch));
    }
}

/// Concurrent appenders under `fsync.policy=always`, a power cut while
/// they run, and a reopen: every acknowledged batch is there as it was
/// appended, at its offset, and the log's offsets are contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_acknowledged_under_always_survives_a_power_cut() {
    for unsynced in [Unsynced::Lost, Unsynced::HalfWritten, Unsynced::Zeros] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = LogConfig {
            // A roll every dozen batches or so: cuts land around rolls too.
            segment_bytes: 4096,
            ..config(FsyncPolicy::Always)
        };
        let log = Arc::new(open(dir.path(), cfg.clone(), &clock()));
        let acked: Acked = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..4)
            .map(|id| {
                tokio::spawn(appender(
                    Arc::clone(&log),
                    id,
                    Arc::clone(&acked),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while acked.lock().expect("lock").len() < 300 {
            assert!(std::time::Instant::now() < deadline, "appenders stalled");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The cut: what was acknowledged by now, then what was durable by
        // now (an acknowledgement is recorded after its fsync, so every
        // acknowledged batch is inside the durable lengths).
        let acked_at_cut = acked.lock().expect("lock").clone();
        let durable_lens = log.hooks.durable_lens.lock().expect("lock").clone();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("appender");
        }
        let log = Arc::into_inner(log).expect("appenders are done");
        drop(log);
        power_cut(dir.path(), &durable_lens, unsynced);

        let log = open(dir.path(), cfg, &clock());
        for (base, batch) in &acked_at_cut {
            let r = log.read(*base, 1, true).expect("read acknowledged");
            assert!(
                r.records.len() >= batch.len(),
                "{unsynced:?}: acknowledged batch at {base} lost"
            );
            let first = &r.records[..batch.len()];
            assert_eq!(
                first,
                assigned(batch, *base),
                "{unsynced:?}: batch at {base}"
            );
        }
        // Contiguous offsets, every batch whole and intact (reads check CRCs).
        let mut next = 0;
        while next < log.high_watermark() {
            let r = log.read(next, 1 << 20, true).expect("read");
            for h in headers_of(&r.records) {
                assert_eq!(h.base_offset, next, "{unsynced:?}: a gap or overlap");
                next = h.last_offset() + 1;
            }
        }
        let max_acked = acked_at_cut.iter().map(|(b, _)| b + 2).max().expect("acks");
        assert!(next > max_acked, "{unsynced:?}: log ends at {next}");
        let info = log.append(&make_batch(1, T0, b"after")).expect("append");
        assert_eq!(info.base_offset, next, "{unsynced:?}");
    }
}
