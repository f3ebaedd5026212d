//! Idempotent producers through the log's API: duplicates, sequence and epoch
//! checks, and the producer state's survival across close, crash, lost
//! snapshots, discards and retention.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;
use crate::batch::tests::make_batch;
use crate::batch::{BatchHeader, HEADER_BYTES};
use crate::producer_state::{PRODUCER_EXPIRATION_MS, snapshot_file_name};
use crate::{FsyncPolicy, LogConfig, ManualClock};

const T0: i64 = 1_700_000_000_000;

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 128,
        fsync,
        ..LogConfig::default()
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

fn open(dir: &Path, config: LogConfig, clock: &Arc<ManualClock>) -> Log {
    Log::open(dir, config, clock.clone()).expect("open log")
}

/// A batch of `count` records from producer `pid` at `epoch` whose first
/// sequence number is `seq`, as an idempotent producer frames it.
fn idem(pid: i64, epoch: i16, seq: i32, count: i32, payload: &[u8]) -> Vec<u8> {
    idem_at(pid, epoch, seq, count, payload, T0)
}

fn idem_at(pid: i64, epoch: i16, seq: i32, count: i32, payload: &[u8], ts: i64) -> Vec<u8> {
    let mut b = make_batch(count, ts, payload);
    b[43..51].copy_from_slice(&pid.to_be_bytes());
    b[51..53].copy_from_slice(&epoch.to_be_bytes());
    b[53..57].copy_from_slice(&seq.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Every stored batch's (base offset, producer id, first sequence).
fn stored(log: &Log) -> Vec<(i64, i64, i32)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let r = log.read(offset, 1 << 20, true).expect("read");
        let mut bytes: &[u8] = &r.records;
        while bytes.len() >= HEADER_BYTES {
            let h = BatchHeader::parse(bytes).expect("header");
            out.push((h.base_offset, h.producer_id, h.base_sequence));
            offset = h.last_offset() + 1;
            bytes = &bytes[h.total_len()..];
        }
    }
    out
}

fn producers(log: &Log) -> ProducerStates {
    log.lock().producers.clone()
}

fn snapshots(dir: &Path) -> Vec<i64> {
    producer_state::list_snapshots(dir).expect("list snapshots")
}

fn span(info: &AppendInfo) -> (i64, i64, bool) {
    (info.base_offset, info.last_offset, info.duplicate)
}

#[test]
fn a_retried_batch_gets_its_original_offsets_and_is_not_written_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    let a = idem(7, 0, 0, 3, b"a");
    assert_eq!(span(&log.append(&a).expect("append")), (0, 2, false));
    log.append(&make_batch(2, T0, b"plain")).expect("append");
    let size = log.size_bytes();
    let retry = log.append(&a).expect("duplicate");
    assert_eq!(span(&retry), (0, 2, true));
    assert_eq!(log.log_end_offset(), 5);
    assert_eq!(log.size_bytes(), size, "nothing written");
    assert_eq!(stored(&log), vec![(0, 7, 0), (3, -1, -1)]);
    // The producer carries on where it was.
    assert_eq!(
        span(&log.append(&idem(7, 0, 3, 1, b"b")).expect("append")),
        (5, 5, false)
    );
}

#[test]
fn any_of_the_last_five_batches_is_a_duplicate_older_ones_are_out_of_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    let batches: Vec<Vec<u8>> = (0..7).map(|i| idem(1, 0, i * 2, 2, b"x")).collect();
    for b in &batches {
        log.append(b).expect("append");
    }
    for (i, b) in batches.iter().enumerate().skip(2) {
        let info = log.append(b).expect("duplicate");
        assert_eq!(span(&info), (i as i64 * 2, i as i64 * 2 + 1, true));
    }
    for b in &batches[..2] {
        assert!(matches!(
            log.append(b),
            Err(LogError::OutOfOrderSequence { producer_id: 1, .. })
        ));
    }
    // Same first sequence but a different length is not the same batch.
    assert!(matches!(
        log.append(&idem(1, 0, 12, 1, b"x")),
        Err(LogError::OutOfOrderSequence { .. })
    ));
    assert_eq!(log.log_end_offset(), 14);
}

#[test]
fn a_sequence_gap_is_out_of_order_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    log.append(&idem(4, 0, 0, 5, b"a")).expect("append");
    for seq in [6, 4, 1, 0] {
        let err = log.append(&idem(4, 0, seq, 1, b"b")).expect_err("gap");
        assert!(
            matches!(err, LogError::OutOfOrderSequence { producer_id: 4, .. }),
            "seq {seq}: {err}"
        );
    }
    assert_eq!(log.log_end_offset(), 5);
    log.append(&idem(4, 0, 5, 1, b"c")).expect("in sequence");
    // A producer id without a sequence number is not a valid batch at all.
    assert!(matches!(
        log.append(&idem(4, 0, -1, 1, b"d")),
        Err(LogError::InvalidBatch(
            crate::batch::BatchError::InvalidSequence { .. }
        ))
    ));
}

#[test]
fn sequences_wrap_to_zero_after_i32_max() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    // An unknown producer may start anywhere (see the next test).
    log.append(&idem(2, 0, i32::MAX - 2, 2, b"a"))
        .expect("append");
    // This one holds sequences MAX, 0 and 1.
    let wrapping = idem(2, 0, i32::MAX, 3, b"b");
    assert_eq!(span(&log.append(&wrapping).expect("append")), (2, 4, false));
    assert_eq!(span(&log.append(&wrapping).expect("dup")), (2, 4, true));
    log.append(&idem(2, 0, 2, 1, b"c")).expect("after the wrap");
    assert!(matches!(
        log.append(&idem(2, 0, 0, 1, b"d")),
        Err(LogError::OutOfOrderSequence { .. })
    ));
}

#[test]
fn an_unknown_producer_is_accepted_whatever_its_sequence() {
    // Kafka >= 2.5 (KIP-360): a producer the log has no state for (new, or
    // forgotten after retention) is not refused with UNKNOWN_PRODUCER_ID.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    log.append(&idem(9, 3, 0, 1, b"new"))
        .expect("fresh producer");
    log.append(&idem(10, 0, 500, 1, b"late"))
        .expect("lost state");
    log.append(&idem(10, 0, 501, 1, b"next"))
        .expect("in sequence");
}

#[test]
fn an_older_epoch_is_fenced_and_a_newer_one_starts_over_at_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    let e1 = idem(5, 1, 0, 2, b"e1");
    log.append(&e1).expect("append");
    log.append(&idem(5, 1, 2, 2, b"e1")).expect("append");
    assert!(matches!(
        log.append(&idem(5, 0, 4, 1, b"zombie")),
        Err(LogError::InvalidProducerEpoch {
            producer_id: 5,
            epoch: 0,
            current_epoch: 1
        })
    ));
    // A new epoch must start at 0.
    assert!(matches!(
        log.append(&idem(5, 2, 4, 1, b"e2")),
        Err(LogError::OutOfOrderSequence { .. })
    ));
    assert_eq!(
        span(&log.append(&idem(5, 2, 0, 3, b"e2")).expect("new epoch")),
        (4, 6, false)
    );
    // The old epoch is now fenced, even for a retry of its own batch.
    assert!(matches!(
        log.append(&e1),
        Err(LogError::InvalidProducerEpoch { .. })
    ));
    log.append(&idem(5, 2, 3, 1, b"e2")).expect("in sequence");
    assert_eq!(log.log_end_offset(), 8);
}

#[test]
fn the_batches_of_one_append_are_checked_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    let mut two = idem(3, 0, 0, 2, b"a");
    two.extend(idem(3, 0, 2, 3, b"b"));
    assert_eq!(span(&log.append(&two).expect("append")), (0, 4, false));
    // The whole append retried: both batches are duplicates.
    assert_eq!(span(&log.append(&two).expect("dup")), (0, 4, true));
    // The second batch does not follow the first: nothing is written.
    let mut gap = idem(3, 0, 5, 1, b"c");
    gap.extend(idem(3, 0, 7, 1, b"d"));
    assert!(matches!(
        log.append(&gap),
        Err(LogError::OutOfOrderSequence { .. })
    ));
    // A retried batch followed by a new one is refused rather than half done.
    let mut mixed = idem(3, 0, 2, 3, b"b");
    mixed.extend(idem(3, 0, 5, 1, b"c"));
    assert!(matches!(
        log.append(&mixed),
        Err(LogError::OutOfOrderSequence { .. })
    ));
    // Two producers in one append, each in sequence.
    let mut both = idem(3, 0, 5, 1, b"c");
    both.extend(idem(8, 0, 0, 1, b"e"));
    both.extend(idem(3, 0, 6, 1, b"f"));
    assert_eq!(span(&log.append(&both).expect("append")), (5, 7, false));
    assert_eq!(
        stored(&log),
        vec![(0, 3, 0), (2, 3, 2), (5, 3, 5), (6, 8, 0), (7, 3, 6)]
    );
}

#[tokio::test]
async fn a_retry_of_a_batch_still_in_group_commit_waits_for_the_original() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Always), &clock());
    let a = idem(6, 0, 0, 4, b"a");
    let original = log.append(&a).expect("append");
    let retry = log.append(&a).expect("dup");
    assert_eq!(span(&retry), (0, 3, true));
    assert_eq!(log.high_watermark(), 0, "the original is not durable yet");
    log.wait_durable(&retry).await.expect("durable");
    assert_eq!(log.high_watermark(), 4);
    log.wait_durable(&original).await.expect("durable");
    assert_eq!(log.log_end_offset(), 4);
}

#[tokio::test]
async fn a_batch_discarded_by_a_failed_fsync_is_written_again_when_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Always), &clock());
    let a = idem(6, 0, 0, 2, b"a");
    let b = idem(6, 0, 2, 2, b"b");
    let ia = log.append(&a).expect("append");
    log.wait_durable(&ia).await.expect("durable");
    let ib = log.append(&b).expect("append");
    log.hooks.fail_next_sync.store(true, Ordering::SeqCst);
    assert!(log.wait_durable(&ib).await.is_err());
    assert_eq!(log.log_end_offset(), 2);
    // Not a duplicate: the original is gone.
    let again = log.append(&b).expect("append");
    assert_eq!(span(&again), (2, 3, false));
    log.wait_durable(&again).await.expect("durable");
    assert_eq!(span(&log.append(&a).expect("dup")), (0, 1, true));
    assert_eq!(stored(&log), vec![(0, 6, 0), (2, 6, 2)]);

    // A producer whose every remembered batch was discarded becomes unknown,
    // so its retries are accepted.
    let c = idem(11, 0, 0, 1, b"c");
    let ic = log.append(&c).expect("append");
    log.hooks.fail_next_sync.store(true, Ordering::SeqCst);
    assert!(log.wait_durable(&ic).await.is_err());
    assert_eq!(span(&log.append(&c).expect("append")), (4, 4, false));
}

/// Appends 40 batches from five idempotent producers and plain ones, each
/// producer in sequence; returns them.
fn busy_log(log: &Log) -> Vec<Vec<u8>> {
    let mut next: std::collections::HashMap<i64, i32> = Default::default();
    let mut out = Vec::new();
    for i in 0..40i32 {
        let b = match i % 4 {
            3 => make_batch(2, T0, &[b'n'; 40]),
            k => {
                let pid = 100 + i64::from(k) + if k == 2 { i64::from(i % 3) * 10 } else { 0 };
                let count = 1 + i % 3;
                let seq = next.entry(pid).or_insert(0);
                let b = idem(pid, 0, *seq, count, &[b'p'; 40]);
                *seq += count;
                b
            }
        };
        log.append(&b).expect("append");
        out.push(b);
    }
    out
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        ..config(FsyncPolicy::Never)
    }
}

#[test]
fn the_state_survives_close_and_reopen_from_its_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let log = open(dir.path(), small_segments(), &clock);
    let batches = busy_log(&log);
    let before = producers(&log);
    assert_eq!(before.len(), 5);
    let end = log.log_end_offset();
    log.close().expect("close");
    drop(log);
    assert!(snapshots(dir.path()).contains(&end), "snapshot at the end");
    assert!(snapshots(dir.path()).len() > 1, "and one per roll");

    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(producers(&log), before);
    let idempotent = |b: &&Vec<u8>| BatchHeader::parse(b).expect("header").producer_id >= 0;
    let last = batches.iter().rfind(idempotent).expect("batch");
    let info = log.append(last).expect("dup");
    assert!(info.duplicate);
    assert_eq!(
        info.last_offset,
        end - 3,
        "followed by one plain batch of 2"
    );
    assert_eq!(log.log_end_offset(), end);
    log.close().expect("close");
    drop(log);

    // The snapshot at the end is trusted: nothing before it is replayed.
    fs::write(
        dir.path().join(snapshot_file_name(end)),
        ProducerStates::default().encode(end),
    )
    .expect("write");
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(producers(&log).len(), 0);
}

#[test]
fn the_state_survives_a_crash_through_the_last_roll_snapshot_and_a_tail_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let log = open(dir.path(), small_segments(), &clock);
    let batches = busy_log(&log);
    let before = producers(&log);
    let end = log.log_end_offset();
    drop(log); // no close: a crash
    let active_base = *snapshots(dir.path()).last().expect("roll snapshot");
    assert!(active_base < end, "the tail after it is replayed");

    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(producers(&log), before);
    for b in batches.iter().rev().take(3) {
        let h = BatchHeader::parse(b).expect("header");
        if h.producer_id >= 0 {
            assert!(log.append(b).expect("dup").duplicate);
        }
    }
    assert_eq!(log.log_end_offset(), end);
}

#[test]
fn missing_or_corrupt_snapshots_are_rebuilt_from_the_log() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let log = open(pristine.path(), small_segments(), &clock);
    busy_log(&log);
    let before = producers(&log);
    log.close().expect("close");
    drop(log);
    let all = snapshots(pristine.path());
    let copy = |dir: &Path| {
        for entry in fs::read_dir(pristine.path()).expect("dir") {
            let entry = entry.expect("entry");
            fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
        }
    };

    // No snapshot at all: the whole log is replayed.
    let dir = tempfile::tempdir().expect("tempdir");
    copy(dir.path());
    for offset in &all {
        fs::remove_file(dir.path().join(snapshot_file_name(*offset))).expect("rm");
    }
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(producers(&log), before);
    drop(log);

    // The newest snapshots damaged (a flipped bit, a truncation): an older
    // one is used, and the damaged ones are deleted.
    let dir = tempfile::tempdir().expect("tempdir");
    copy(dir.path());
    let newest = dir.path().join(snapshot_file_name(all[all.len() - 1]));
    let mut bytes = fs::read(&newest).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&newest, &bytes).expect("write");
    let second = dir.path().join(snapshot_file_name(all[all.len() - 2]));
    let len = fs::metadata(&second).expect("meta").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&second)
        .expect("open")
        .set_len(len - 3)
        .expect("truncate");
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(producers(&log), before);
    assert!(!newest.exists() && !second.exists());
    drop(log);

    // A snapshot claiming more than the log holds (the log lost its tail) is
    // not used.
    let dir = tempfile::tempdir().expect("tempdir");
    copy(dir.path());
    let bogus = before.encode(1_000_000);
    fs::write(dir.path().join(snapshot_file_name(1_000_000)), bogus).expect("write");
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(producers(&log), before);
    assert!(!snapshots(dir.path()).contains(&1_000_000));
}

#[test]
fn a_crash_mid_snapshot_leaves_a_temp_file_that_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock);
    log.append(&idem(1, 0, 0, 1, b"a")).expect("append");
    log.close().expect("close");
    drop(log);
    let tmp = dir.path().join("00000000000000000001.snapshot.tmp");
    fs::write(&tmp, b"half a snap").expect("write");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock);
    assert!(!tmp.exists());
    assert!(log.append(&idem(1, 0, 0, 1, b"a")).expect("dup").duplicate);
}

#[test]
fn retention_keeps_producers_whose_data_is_gone_until_they_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let cfg = LogConfig {
        // One batch per segment.
        segment_bytes: 1,
        retention_ms: Some(60 * 60 * 1000),
        ..config(FsyncPolicy::Never)
    };
    let log = open(dir.path(), cfg.clone(), &clock);
    let p0 = idem_at(1, 0, 0, 2, b"p", T0);
    let p1 = idem_at(1, 0, 2, 2, b"p", T0);
    log.append(&p0).expect("append");
    log.append(&p1).expect("append");
    clock.advance(2 * 60 * 60 * 1000);
    let now = clock.now_ms();
    log.append(&idem_at(2, 0, 0, 1, b"q", now)).expect("append");
    let outcome = log.apply_retention().expect("retention");
    assert_eq!(outcome.segments_deleted, 2);
    assert_eq!(log.log_start_offset(), 4);
    assert!(
        snapshots(dir.path()).iter().all(|o| *o >= 4),
        "snapshots before the log start are deleted: {:?}",
        snapshots(dir.path())
    );

    // Producer 1's data is gone, its state is not: a late retry is still
    // recognised, across a restart too.
    assert_eq!(span(&log.append(&p1).expect("dup")), (2, 3, true));
    log.close().expect("close");
    drop(log);
    let log = open(dir.path(), cfg.clone(), &clock);
    assert_eq!(span(&log.append(&p1).expect("dup")), (2, 3, true));
    assert!(matches!(
        log.append(&idem_at(1, 0, 9, 1, b"p", now)),
        Err(LogError::OutOfOrderSequence { .. })
    ));

    // A week later it is forgotten, and may start anywhere.
    clock.advance(PRODUCER_EXPIRATION_MS);
    let now = clock.now_ms();
    log.append(&idem_at(2, 0, 1, 1, b"q", now)).expect("append");
    log.apply_retention().expect("retention");
    assert_eq!(producers(&log).len(), 1);
    log.append(&idem_at(1, 0, 9, 1, b"p", now))
        .expect("unknown again");
}

#[test]
fn close_rewrites_the_snapshot_only_when_something_changed() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock);
    log.append(&idem(1, 0, 0, 1, b"a")).expect("append");
    log.close().expect("close");
    let path = dir.path().join(snapshot_file_name(1));
    let inode = fs::metadata(&path).expect("snapshot").ino();
    log.close().expect("close again");
    drop(log);
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock);
    log.close().expect("close after reopen");
    assert_eq!(fs::metadata(&path).expect("snapshot").ino(), inode);
    log.append(&idem(1, 0, 1, 1, b"b")).expect("append");
    log.close().expect("close");
    assert!(snapshots(dir.path()).contains(&2));
    drop(log);
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock);
    assert_eq!(snapshots(dir.path()), vec![2], "the older one is dropped");
    assert!(log.append(&idem(1, 0, 1, 1, b"b")).expect("dup").duplicate);
}
