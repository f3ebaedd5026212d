//! Tests of the log through its public API, plus a few looks at its internals
//! (indexes, injected disk failures) that the API does not expose.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;

use super::*;
use crate::batch::tests::make_batch;
use crate::batch::{BatchHeader, HEADER_BYTES, LOG_OVERHEAD_BYTES};
use crate::index::{OffsetIndex, TimeIndex};
use crate::{FsyncPolicy, LogConfig, ManualClock};

const T0: i64 = 1_700_000_000_000;

pub(super) fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 128,
        fsync,
        ..LogConfig::default()
    }
}

pub(super) fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

pub(super) fn open(dir: &Path, config: LogConfig, clock: &Arc<ManualClock>) -> Log {
    Log::open(dir, config, clock.clone()).expect("open log")
}

/// The headers of the concatenated whole batches in `bytes`.
pub(super) fn headers_of(mut bytes: &[u8]) -> Vec<BatchHeader> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let h = BatchHeader::parse(bytes).expect("whole batch");
        assert!(h.total_len() <= bytes.len(), "batch cut short");
        bytes = &bytes[h.total_len()..];
        out.push(h);
    }
    out
}

/// `batch` as the log stores it once given `base_offset`.
pub(super) fn assigned(batch: &[u8], base_offset: i64) -> Vec<u8> {
    let mut b = batch.to_vec();
    crate::batch::assign(&mut b, base_offset, 0);
    b
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// An uncompressed batch with one record per timestamp, as a producer would
/// build it: base timestamp the first, deltas for the others.
fn timestamped_batch(timestamps: &[i64], log_append_time: bool) -> Vec<u8> {
    let base_ts = timestamps[0];
    let mut records = Vec::new();
    for (i, ts) in timestamps.iter().enumerate() {
        let mut body = vec![0u8];
        put_varint(&mut body, ts - base_ts);
        put_varint(&mut body, i as i64);
        put_varint(&mut body, -1);
        put_varint(&mut body, 3);
        body.extend_from_slice(b"abc");
        put_varint(&mut body, 0);
        put_varint(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
    }
    let count = timestamps.len() as i32;
    let max_ts = *timestamps.iter().max().expect("a record");
    let mut b = vec![0u8; HEADER_BYTES];
    b.extend_from_slice(&records);
    let len = (b.len() - LOG_OVERHEAD_BYTES) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[16] = 2;
    let attributes: i16 = if log_append_time { 0x08 } else { 0 };
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    b[27..35].copy_from_slice(&base_ts.to_be_bytes());
    b[35..43].copy_from_slice(&max_ts.to_be_bytes());
    b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    b[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A gzip-compressed batch built by kafka-protocol's encoder.
fn compressed_batch(timestamps: &[i64]) -> Vec<u8> {
    let records: Vec<Record> = timestamps
        .iter()
        .enumerate()
        .map(|(i, &timestamp)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // Equal offset and sequence deltas keep every record in one batch.
            sequence: i as i32,
            timestamp,
            key: None,
            value: Some(Bytes::from(vec![b'z'; 200])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::Gzip,
        },
    )
    .expect("encode");
    buf.to_vec()
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

pub(super) fn log_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(segment::log_file_name(base))
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn indexes(log: &Log) -> Vec<(i64, OffsetIndex, TimeIndex)> {
    log.lock()
        .segments
        .iter()
        .map(|s| (s.base_offset, s.offset_index.clone(), s.time_index.clone()))
        .collect()
}

fn read_all(log: &Log) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let r = log.read(offset, 1 << 20, true).expect("read");
        let headers = headers_of(&r.records);
        let last = headers.last().expect("progress");
        offset = last.last_offset() + 1;
        out.extend_from_slice(&r.records);
    }
    out
}

#[test]
fn log_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Log>();
    assert_send_sync::<Arc<Log>>();
}

#[test]
fn new_log_starts_at_zero_and_ignores_other_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("notes.txt"), b"keep me").expect("write");
    fs::write(dir.path().join("123.log"), b"not a segment").expect("write");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    assert_eq!(log.log_start_offset(), 0);
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.high_watermark(), 0);
    assert_eq!(log.max_timestamp(), None);
    assert_eq!(log.read(0, 100, true).expect("read").records.len(), 0);
    let info = log.append(&make_batch(3, T0, b"a")).expect("append");
    assert_eq!((info.base_offset, info.last_offset), (0, 2));
    assert_eq!(
        fs::read(dir.path().join("notes.txt")).expect("read"),
        b"keep me"
    );
    assert_eq!(
        fs::read(dir.path().join("123.log")).expect("read"),
        b"not a segment"
    );
    assert_eq!(
        segment_files(dir.path()),
        vec!["00000000000000000000.log", "123.log"]
    );
}

#[test]
fn append_assigns_contiguous_offsets_and_reads_return_what_was_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    let a = make_batch(5, T0, b"first");
    let mut two = make_batch(2, T0 + 1, b"second");
    two.extend(make_batch(3, T0 + 2, b"third"));
    let i1 = log.append(&a).expect("append");
    let i2 = log.append(&two).expect("append");
    assert_eq!((i1.base_offset, i1.last_offset), (0, 4));
    assert_eq!((i2.base_offset, i2.last_offset), (5, 9));
    assert_eq!(log.log_end_offset(), 10);
    assert_eq!(log.high_watermark(), 10);

    let mut expected = assigned(&a, 0);
    expected.extend(assigned(
        &two[..two.len() - make_batch(3, T0 + 2, b"third").len()],
        5,
    ));
    expected.extend(assigned(&make_batch(3, T0 + 2, b"third"), 7));
    assert_eq!(read_all(&log), expected);
    // Every stored batch still passes the append checks (CRC intact).
    crate::batch::validate_for_append(&expected, 1 << 20).expect("valid");
}

#[test]
fn reads_from_any_offset_inside_a_batch_start_at_that_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    for i in 0..4 {
        log.append(&make_batch(5, T0 + i, b"xyz")).expect("append");
    }
    for offset in 0..20 {
        let r = log.read(offset, 1 << 20, false).expect("read");
        let headers = headers_of(&r.records);
        assert_eq!(headers[0].base_offset, offset / 5 * 5, "offset {offset}");
        assert_eq!(headers.last().expect("batch").last_offset(), 19);
        assert_eq!(r.high_watermark, 20);
        assert_eq!(r.log_start_offset, 0);
    }
}

#[test]
fn min_one_batch_returns_an_oversized_first_batch_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    let big = make_batch(2, T0, &[7u8; 500]);
    log.append(&big).expect("append");
    log.append(&big).expect("append");
    let len = big.len();

    let r = log.read(0, 100, true).expect("read");
    assert_eq!(r.records.len(), len, "first batch whole despite max_bytes");
    let r = log.read(0, 100, false).expect("read");
    assert!(r.records.is_empty(), "nothing fits");
    let r = log.read(0, len + 10, false).expect("read");
    assert_eq!(headers_of(&r.records).len(), 1, "only whole batches");
    let r = log.read(1, 2 * len, false).expect("read");
    assert_eq!(headers_of(&r.records).len(), 2);
    let r = log.read(0, 0, true).expect("read");
    assert_eq!(r.records.len(), len);
}

#[test]
fn out_of_range_offsets_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    log.append(&make_batch(3, T0, b"a")).expect("append");
    for offset in [-1, 4, 1000] {
        match log.read(offset, 100, true) {
            Err(LogError::OffsetOutOfRange {
                requested,
                log_start_offset: 0,
                log_end_offset: 3,
            }) => assert_eq!(requested, offset),
            other => panic!("offset {offset}: {other:?}"),
        }
    }
    let at_end = log.read(3, 100, true).expect("read at the high watermark");
    assert!(at_end.records.is_empty());
    assert_eq!(at_end.high_watermark, 3);
}

#[test]
fn rolls_by_segment_bytes_and_reads_continue_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = make_batch(2, T0, &[1u8; 100]);
    let cfg = LogConfig {
        // Room for two batches per segment.
        segment_bytes: 2 * batch.len() as u64 + 10,
        ..config(FsyncPolicy::Never)
    };
    let log = open(dir.path(), cfg, &clock());
    let mut expected = Vec::new();
    for i in 0..7 {
        let info = log.append(&batch).expect("append");
        assert_eq!(info.base_offset, 2 * i);
        expected.extend(assigned(&batch, 2 * i));
    }
    assert_eq!(
        segment_files(dir.path()),
        vec![
            "00000000000000000000.log",
            "00000000000000000004.log",
            "00000000000000000008.log",
            "00000000000000000012.log",
        ]
    );
    assert_eq!(log.size_bytes(), expected.len() as u64);
    // One read spans the segments.
    let r = log.read(0, 1 << 20, false).expect("read");
    assert_eq!(r.records.as_ref(), expected.as_slice());
    let r = log.read(5, 1 << 20, false).expect("read");
    assert_eq!(r.records.as_ref(), &expected[2 * batch.len()..]);
    assert_eq!(read_all(&log), expected);
}

#[test]
fn an_oversized_batch_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig {
        segment_bytes: 100,
        ..config(FsyncPolicy::Never)
    };
    let log = open(dir.path(), cfg, &clock());
    let big = make_batch(1, T0, &[0u8; 300]);
    log.append(&big).expect("append");
    log.append(&big).expect("append");
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(
        log.read(0, 1 << 20, false).expect("read").records.len(),
        2 * big.len()
    );
}

#[test]
fn rolls_by_segment_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let cfg = LogConfig {
        segment_ms: 1000,
        ..config(FsyncPolicy::Never)
    };
    let log = open(dir.path(), cfg, &clock);
    // An empty segment does not age.
    clock.advance(5000);
    log.append(&make_batch(1, T0, b"a")).expect("append");
    clock.advance(999);
    log.append(&make_batch(1, T0, b"b")).expect("append");
    assert_eq!(segment_files(dir.path()).len(), 1);
    clock.advance(1);
    log.append(&make_batch(1, T0, b"c")).expect("append");
    assert_eq!(
        segment_files(dir.path()),
        vec!["00000000000000000000.log", "00000000000000000002.log"]
    );
    assert_eq!(
        log.read(0, 1 << 20, false).expect("read").records.len(),
        3 * make_batch(1, T0, b"a").len()
    );
}

/// Appends `n` batches of varying sizes, timestamps growing, with small index
/// intervals and segments so that every segment has index entries.
fn fill(log: &Log, n: i64) -> Vec<u8> {
    let mut expected = Vec::new();
    for i in 0..n {
        let b = make_batch(
            1 + (i % 3) as i32,
            T0 + 10 * i,
            &vec![b'v'; 20 + (i as usize * 7) % 60],
        );
        let info = log.append(&b).expect("append");
        expected.extend(assigned(&b, info.base_offset));
    }
    expected
}

fn indexed_config() -> LogConfig {
    LogConfig {
        segment_bytes: 2000,
        index_interval_bytes: 150,
        ..config(FsyncPolicy::Never)
    }
}

#[test]
fn indexes_are_saved_and_loaded_on_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let log = open(dir.path(), indexed_config(), &clock);
    let expected = fill(&log, 60);
    log.close().expect("close");
    let before = indexes(&log);
    assert!(before.len() > 2, "several segments");
    assert!(
        before
            .iter()
            .all(|(_, ix, tix)| !ix.entries().is_empty() && !tix.entries().is_empty())
    );
    let end = log.log_end_offset();
    drop(log);

    let log = open(dir.path(), indexed_config(), &clock);
    assert_eq!(indexes(&log), before);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.max_timestamp(), Some(T0 + 10 * 59));
    assert_eq!(read_all(&log), expected);
    // Reads from every offset find their batch through the loaded indexes.
    let headers = headers_of(&expected);
    for h in &headers {
        for offset in h.base_offset..=h.last_offset() {
            let r = log.read(offset, 1, true).expect("read");
            assert_eq!(headers_of(&r.records)[0], *h);
        }
    }
}

#[test]
fn missing_and_torn_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let log = open(dir.path(), indexed_config(), &clock);
    let expected = fill(&log, 60);
    log.close().expect("close");
    let before = indexes(&log);
    drop(log);
    let bases: Vec<i64> = before.iter().map(|(b, _, _)| *b).collect();
    let index = |base: i64, ext: &str| log_path(dir.path(), base).with_extension(ext);

    // Sealed segment 0: both files missing. Segment 1: torn offset index.
    // Segment 2: torn time index. Segment 3: an entry moved off its batch.
    fs::remove_file(index(bases[0], "index")).expect("rm");
    fs::remove_file(index(bases[0], "timeindex")).expect("rm");
    let torn = index(bases[1], "index");
    let len = fs::metadata(&torn).expect("meta").len();
    OpenOptions::new()
        .write(true)
        .open(&torn)
        .expect("open")
        .set_len(len - 3)
        .expect("cut");
    let torn = index(bases[2], "timeindex");
    let len = fs::metadata(&torn).expect("meta").len();
    OpenOptions::new()
        .write(true)
        .open(&torn)
        .expect("open")
        .set_len(len - 5)
        .expect("cut");
    let wrong = index(bases[3], "index");
    let mut bytes = fs::read(&wrong).expect("read");
    let last = bytes.len() - 1;
    bytes[last] = bytes[last].wrapping_add(1);
    fs::write(&wrong, &bytes).expect("write");
    // The active segment's index (trusted after a clean shutdown) is gone too.
    let active = *bases.last().expect("active");
    fs::remove_file(index(active, "index")).expect("rm");

    let log = open(dir.path(), indexed_config(), &clock);
    assert_eq!(indexes(&log), before, "rebuilt exactly");
    assert_eq!(read_all(&log), expected);
    // The rebuilt files were saved for the next open.
    for base in &bases[..4] {
        assert!(index(*base, "index").exists() && index(*base, "timeindex").exists());
    }
    drop(log);
    let log = open(dir.path(), indexed_config(), &clock);
    assert_eq!(indexes(&log), before);
}

#[test]
fn retention_by_time_deletes_expired_sealed_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let batch_len = make_batch(2, T0, &[0u8; 50]).len() as u64;
    let cfg = LogConfig {
        segment_bytes: 2 * batch_len,
        retention_ms: Some(1000),
        ..config(FsyncPolicy::Never)
    };
    let log = open(dir.path(), cfg, &clock);
    // Segments: [0..4) with ts T0, [4..8) with ts T0+500, [8..10) active with T0+2000.
    for ts in [T0, T0, T0 + 500, T0 + 500, T0 + 2000] {
        log.append(&make_batch(2, ts, &[0u8; 50])).expect("append");
    }
    assert_eq!(segment_files(dir.path()).len(), 3);
    clock.set(T0 + 1000);
    assert_eq!(
        log.apply_retention().expect("retention").segments_deleted,
        0
    );
    clock.set(T0 + 1001);
    let out = log.apply_retention().expect("retention");
    assert_eq!(
        out,
        RetentionOutcome {
            segments_deleted: 1,
            bytes_deleted: 2 * batch_len,
            log_start_offset: 4
        }
    );
    assert_eq!(log.log_start_offset(), 4);
    assert!(!log_path(dir.path(), 0).exists());
    assert!(!log_path(dir.path(), 0).with_extension("index").exists());
    assert!(matches!(
        log.read(3, 100, true),
        Err(LogError::OffsetOutOfRange {
            log_start_offset: 4,
            ..
        })
    ));
    assert_eq!(
        headers_of(&log.read(4, 1 << 20, true).expect("read").records)[0].base_offset,
        4
    );
    assert_eq!(
        log.offset_for_timestamp(0).expect("lookup"),
        Some(TimestampOffset {
            offset: 4,
            timestamp: T0 + 500
        })
    );
    clock.set(T0 + 1501);
    assert_eq!(
        log.apply_retention().expect("retention").log_start_offset,
        8
    );
    assert_eq!(log.size_bytes(), batch_len);
    // The active segment holds T0+2000, which has not expired.
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000008.log"]);
}

#[test]
fn retention_rolls_and_deletes_an_expired_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let cfg = LogConfig {
        retention_ms: Some(1000),
        ..config(FsyncPolicy::Always)
    };
    let log = open(dir.path(), cfg, &clock);
    let info = log.append(&make_batch(3, T0, b"old")).expect("append");
    assert_eq!(log.high_watermark(), 0, "not durable yet");
    clock.set(T0 + 5000);
    let out = log.apply_retention().expect("retention");
    assert_eq!(out.segments_deleted, 1);
    assert_eq!(out.log_start_offset, 3);
    assert_eq!(log.log_start_offset(), 3);
    assert_eq!(log.log_end_offset(), 3);
    assert_eq!(log.high_watermark(), 3);
    assert_eq!(log.size_bytes(), 0);
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000003.log"]);
    // The append was made durable by the roll before it was deleted.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(log.wait_durable(&info)).expect("durable");
    let next = log
        .append(&make_batch(1, T0 + 5000, b"new"))
        .expect("append");
    assert_eq!(next.base_offset, 3);
    assert_eq!(next.log_start_offset, 3);
    // Nothing left to delete: the active segment is never deleted.
    assert_eq!(
        log.apply_retention().expect("retention").segments_deleted,
        0
    );
}

#[test]
fn retention_by_size_keeps_at_least_retention_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let batch = make_batch(1, T0, &[0u8; 40]);
    let len = batch.len() as u64;
    let cfg = LogConfig {
        segment_bytes: len,
        retention_ms: None,
        retention_bytes: Some(3 * len),
        ..config(FsyncPolicy::Never)
    };
    let log = open(dir.path(), cfg, &clock);
    for _ in 0..6 {
        log.append(&batch).expect("append");
    }
    assert_eq!(segment_files(dir.path()).len(), 6);
    let out = log.apply_retention().expect("retention");
    // 6 segments of one batch: deleting 3 leaves exactly retention.bytes.
    assert_eq!(out.segments_deleted, 3);
    assert_eq!(out.bytes_deleted, 3 * len);
    assert_eq!(log.log_start_offset(), 3);
    assert_eq!(log.size_bytes(), 3 * len);
    assert!(matches!(
        log.read(2, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        log.apply_retention().expect("retention").segments_deleted,
        0
    );
    // The log start offset survives a reopen (it is the first segment's base).
    drop(log);
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock);
    assert_eq!(log.log_start_offset(), 3);
}

#[test]
fn readers_keep_reading_a_segment_deleted_under_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let batch = make_batch(1, T0, &[9u8; 40]);
    let cfg = LogConfig {
        segment_bytes: batch.len() as u64,
        retention_bytes: Some(1),
        ..config(FsyncPolicy::Never)
    };
    let log = open(dir.path(), cfg, &clock);
    log.append(&batch).expect("append");
    log.append(&batch).expect("append");
    let plan = log.plan_read(0, 1 << 20).expect("plan");
    log.apply_retention().expect("retention");
    assert!(!log_path(dir.path(), 0).exists());
    let bytes = copy_batches(&plan, 0, 1 << 20, true).expect("read unlinked file");
    assert_eq!(headers_of(&bytes).len(), 2);
}

/// Builds a log of `batches` and drops it without closing, as a crash would.
fn crashed_log(dir: &Path, batches: &[Vec<u8>]) -> Vec<u64> {
    let log = open(dir, config(FsyncPolicy::Never), &clock());
    let mut starts = Vec::new();
    let mut pos = 0u64;
    for b in batches {
        starts.push(pos);
        log.append(b).expect("append");
        pos += b.len() as u64;
    }
    starts
}

#[test]
fn recovery_cuts_a_tail_torn_at_every_byte_of_the_last_batch() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let batches: Vec<Vec<u8>> = vec![
        make_batch(2, T0, b"one"),
        make_batch(3, T0 + 1, b"two"),
        make_batch(2, T0 + 2, b"three"),
    ];
    let starts = crashed_log(pristine.path(), &batches);
    let last_start = starts[2];
    let full = fs::read(log_path(pristine.path(), 0)).expect("read");
    let kept: Vec<u8> = full[..last_start as usize].to_vec();
    let next = make_batch(1, T0 + 3, b"after");

    for cut in last_start..full.len() as u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        let path = log_path(dir.path(), 0);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(cut)
            .expect("cut");
        let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
        assert_eq!(log.log_end_offset(), 5, "cut at {cut}");
        assert_eq!(
            fs::metadata(&path).expect("meta").len(),
            last_start,
            "cut at {cut}"
        );
        assert_eq!(read_all(&log), kept, "cut at {cut}");
        let info = log.append(&next).expect("append");
        assert_eq!(info.base_offset, 5, "cut at {cut}");
        let has_copy = fs::read_dir(dir.path()).expect("dir").any(|e| {
            e.expect("entry")
                .file_name()
                .to_string_lossy()
                .contains("corrupt")
        });
        assert!(!has_copy, "a torn tail is not corruption (cut at {cut})");
    }
}

#[test]
fn recovery_cuts_a_last_batch_with_a_flipped_bit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batches = vec![make_batch(2, T0, b"one"), make_batch(2, T0, b"two")];
    let starts = crashed_log(dir.path(), &batches);
    let path = log_path(dir.path(), 0);
    let mut bytes = fs::read(&path).expect("read");
    let flip = starts[1] as usize + HEADER_BYTES + 3;
    bytes[flip] ^= 0x10;
    fs::write(&path, &bytes).expect("write");

    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(read_all(&log), assigned(&batches[0], 0));
    assert_eq!(fs::metadata(&path).expect("meta").len(), starts[1]);
    assert_eq!(log.append(&batches[1]).expect("append").base_offset, 2);
}

fn corrupt_copies(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect()
}

#[test]
fn recovery_reports_and_keeps_a_copy_of_a_corrupt_middle() {
    // A flipped bit in a record, and one in the length field (which hides
    // where the next batch starts).
    for (name, flip_at) in [("record", HEADER_BYTES + 2), ("length", 10)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let batches: Vec<Vec<u8>> = (0..5).map(|i| make_batch(2, T0 + i, b"payload")).collect();
        let starts = crashed_log(dir.path(), &batches);
        let path = log_path(dir.path(), 0);
        let original = fs::read(&path).expect("read");
        let mut bytes = original.clone();
        bytes[starts[2] as usize + flip_at] ^= 0x40;
        fs::write(&path, &bytes).expect("write");

        let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
        assert_eq!(log.log_end_offset(), 4, "{name}");
        assert_eq!(
            fs::metadata(&path).expect("meta").len(),
            starts[2],
            "{name}"
        );
        let copies = corrupt_copies(dir.path());
        assert_eq!(copies.len(), 1, "{name}");
        assert_eq!(
            copies[0].file_name().expect("name").to_string_lossy(),
            format!("00000000000000000000.log.corrupt-{}", starts[2]),
            "{name}"
        );
        assert_eq!(
            fs::read(&copies[0]).expect("read"),
            &bytes[starts[2] as usize..],
            "{name}"
        );
        // The copy is not mistaken for a segment on the next open.
        drop(log);
        let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
        assert_eq!(log.log_end_offset(), 4, "{name}");
        assert_eq!(corrupt_copies(dir.path()).len(), 1, "{name}");
    }
}

#[test]
fn a_damaged_sealed_segment_is_reported_not_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let batch = make_batch(2, T0, &[0u8; 40]);
    let cfg = LogConfig {
        segment_bytes: batch.len() as u64 * 2,
        ..config(FsyncPolicy::Never)
    };
    let log = open(dir.path(), cfg.clone(), &clock);
    for _ in 0..5 {
        log.append(&batch).expect("append");
    }
    drop(log);
    // Break the second batch's length in the first (sealed) segment and
    // remove its index so that it must be scanned.
    let path = log_path(dir.path(), 0);
    let mut bytes = fs::read(&path).expect("read");
    bytes[batch.len() + 8..batch.len() + 12].copy_from_slice(&i32::MAX.to_be_bytes());
    fs::write(&path, &bytes).expect("write");
    fs::remove_file(path.with_extension("index")).expect("rm");
    match Log::open(dir.path(), cfg, clock.clone()) {
        Err(LogError::CorruptSegment {
            path: p, position, ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(position, batch.len() as u64);
        }
        other => panic!("expected CorruptSegment, got {other:?}"),
    }
    assert_eq!(fs::read(&path).expect("read"), bytes, "left as it was");
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let cfg = LogConfig {
        segment_bytes: 600,
        index_interval_bytes: 100,
        ..config(FsyncPolicy::Never)
    };
    let log = open(dir.path(), cfg.clone(), &clock);
    // Timestamps grow overall but not strictly between batches, as with
    // several producers.
    let batches: Vec<(Vec<i64>, u8)> = vec![
        (vec![T0 + 100, T0 + 110, T0 + 120], 0),
        (vec![T0 + 115, T0 + 130], 0),
        (vec![T0 + 140, T0 + 135, T0 + 160], 1), // gzip
        (vec![T0 + 150], 0),
        (vec![T0 + 170, T0 + 180, T0 + 190, T0 + 200], 0),
        (vec![T0 + 210, T0 + 205], 2), // log-append time
        (vec![T0 + 230, T0 + 260], 1),
        (vec![T0 + 240], 0),
    ];
    // (offset, timestamp) of every record in offset order, as a reader sees them.
    let mut records = Vec::new();
    for (timestamps, kind) in &batches {
        let bytes = match kind {
            0 => timestamped_batch(timestamps, false),
            1 => compressed_batch(timestamps),
            _ => timestamped_batch(timestamps, true),
        };
        let info = log.append(&bytes).expect("append");
        let max = *timestamps.iter().max().expect("ts");
        for (i, ts) in timestamps.iter().enumerate() {
            let ts = if *kind == 2 { max } else { *ts };
            records.push((info.base_offset + i as i64, ts));
        }
    }
    assert!(segment_files(dir.path()).len() > 1);
    let check = |log: &Log| {
        for query in T0 + 90..T0 + 270 {
            let expected = records
                .iter()
                .find(|(_, ts)| *ts >= query)
                .map(|&(offset, timestamp)| TimestampOffset { offset, timestamp });
            assert_eq!(
                log.offset_for_timestamp(query).expect("lookup"),
                expected,
                "query {}",
                query - T0
            );
        }
        assert_eq!(log.max_timestamp(), Some(T0 + 260));
    };
    check(&log);
    log.close().expect("close");
    drop(log);
    let log = open(dir.path(), cfg, &clock);
    check(&log);
}

#[tokio::test]
async fn under_always_a_batch_is_invisible_until_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Always), &clock());
    let mut rx = log.subscribe();
    let batch = make_batch(4, T0, b"wait");
    let info = log.append(&batch).expect("append");
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.high_watermark(), 0);
    assert!(log.read(0, 1 << 20, true).expect("read").records.is_empty());
    assert!(matches!(
        log.read(1, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.offset_for_timestamp(T0).expect("lookup"), None);
    assert_eq!(log.max_timestamp(), None);
    assert!(!rx.has_changed().expect("sender alive"));

    log.wait_durable(&info).await.expect("durable");
    assert!(rx.has_changed().expect("sender alive"));
    assert_eq!(*rx.borrow_and_update(), 4);
    assert_eq!(log.high_watermark(), 4);
    assert_eq!(
        log.read(0, 1 << 20, true).expect("read").records.as_ref(),
        assigned(&batch, 0).as_slice()
    );
    assert_eq!(
        log.offset_for_timestamp(T0).expect("lookup"),
        Some(TimestampOffset {
            offset: 0,
            timestamp: T0
        })
    );
    assert_eq!(log.max_timestamp(), Some(T0));
    // Already durable: returns at once, no fsync.
    let syncs = log.hooks.syncs.load(Ordering::SeqCst);
    log.wait_durable(&info).await.expect("durable");
    assert_eq!(log.hooks.syncs.load(Ordering::SeqCst), syncs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_shares_fsyncs_among_concurrent_appenders() {
    const TASKS: usize = 16;
    const APPENDS_PER_TASK: usize = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(open(dir.path(), config(FsyncPolicy::Always), &clock()));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..APPENDS_PER_TASK {
                let info = log
                    .append(&make_batch(2, T0, format!("{t}-{i}").as_bytes()))
                    .expect("append");
                log.wait_durable(&info).await.expect("durable");
                // Acknowledged means readable.
                assert!(log.high_watermark() > info.last_offset);
                offsets.push(info.base_offset);
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable();
    let expected: Vec<i64> = (0..(TASKS * APPENDS_PER_TASK) as i64)
        .map(|i| 2 * i)
        .collect();
    assert_eq!(all, expected, "every append got its own offsets");
    let end = 2 * (TASKS * APPENDS_PER_TASK) as i64;
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.high_watermark(), end);
    assert_eq!(*log.subscribe().borrow(), end);
    let syncs = log.hooks.syncs.load(Ordering::SeqCst);
    // Sixteen appenders racing one fsync at a time share most fsyncs (about
    // 20 for 320 appends here); fewer fsyncs than appends proves sharing.
    assert!(
        syncs < (TASKS * APPENDS_PER_TASK) as u64,
        "{syncs} fsyncs for {} appends",
        TASKS * APPENDS_PER_TASK
    );
    let read = read_all(&log);
    assert_eq!(headers_of(&read).len(), TASKS * APPENDS_PER_TASK);
}

/// A queue's timer fsyncs its log with `flush`, outside group commit. A
/// waiter whose append that flush covers while the waiter is deciding what
/// to fsync must be told it is durable, not `NotDurable` (which a publisher
/// saw as a spurious basic.nack, a few per million messages).
#[tokio::test]
async fn a_waiter_covered_by_a_concurrent_flush_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    let info = log.append(&make_batch(1, T0, b"a")).expect("append");
    log.hooks.flush_before_capture.store(true, Ordering::SeqCst);
    log.wait_synced(&info).await.expect("durable");
    assert!(log.is_synced());
    assert!(
        !log.hooks.flush_before_capture.load(Ordering::SeqCst),
        "the flush ran"
    );
}

#[tokio::test]
async fn never_and_interval_make_batches_visible_when_written() {
    for policy in [
        FsyncPolicy::Never,
        FsyncPolicy::Interval { interval_ms: 100 },
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), config(policy), &clock());
        let rx = log.subscribe();
        let info = log.append(&make_batch(2, T0, b"now")).expect("append");
        assert_eq!(log.high_watermark(), 2, "{policy:?}");
        assert_eq!(*rx.borrow(), 2, "{policy:?}");
        assert_eq!(
            headers_of(&log.read(0, 1 << 20, true).expect("read").records).len(),
            1
        );
        let syncs = log.hooks.syncs.load(Ordering::SeqCst);
        log.wait_durable(&info).await.expect("acknowledged at once");
        assert_eq!(
            log.hooks.syncs.load(Ordering::SeqCst),
            syncs,
            "no fsync for the ack"
        );
    }
}

#[test]
fn flush_if_due_fsyncs_once_per_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let log = open(
        dir.path(),
        config(FsyncPolicy::Interval { interval_ms: 100 }),
        &clock,
    );
    log.append(&make_batch(1, T0, b"a")).expect("append");
    assert!(!log.flush_if_due().expect("flush"), "interval not elapsed");
    clock.advance(100);
    assert!(log.flush_if_due().expect("flush"));
    assert_eq!(log.lock().durable.next_offset, 1);
    clock.advance(100);
    assert!(!log.flush_if_due().expect("flush"), "nothing new to sync");
    log.append(&make_batch(1, T0, b"b")).expect("append");
    assert!(log.flush_if_due().expect("flush"));
    // Other policies never flush on a timer.
    log.set_config(config(FsyncPolicy::Never));
    log.append(&make_batch(1, T0, b"c")).expect("append");
    clock.advance(1000);
    assert!(!log.flush_if_due().expect("flush"));
    log.flush().expect("flush");
    assert_eq!(log.lock().durable.next_offset, 3);
}

#[tokio::test]
async fn a_failed_fsync_discards_what_it_covered_and_the_log_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Always), &clock());
    let a = make_batch(2, T0, b"a");
    let d = make_batch(3, T0, b"d");
    let ia = log.append(&a).expect("append");
    log.wait_durable(&ia).await.expect("durable");
    let ib = log.append(&make_batch(2, T0, b"b")).expect("append");
    let ic = log.append(&make_batch(2, T0, b"c")).expect("append");
    log.hooks.fail_next_sync.store(true, Ordering::SeqCst);
    assert!(matches!(
        log.wait_durable(&ib).await,
        Err(LogError::Io { .. })
    ));
    assert!(matches!(
        log.wait_durable(&ic).await,
        Err(LogError::NotDurable)
    ));
    // What was durable before the failure stays acknowledged.
    log.wait_durable(&ia).await.expect("still durable");
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(log.high_watermark(), 2);
    assert_eq!(
        fs::metadata(log_path(dir.path(), 0)).expect("meta").len(),
        a.len() as u64
    );

    let id = log.append(&d).expect("append");
    assert_eq!(id.base_offset, 2, "discarded offsets are given out again");
    assert_eq!(id.generation, ib.generation + 1);
    log.wait_durable(&id).await.expect("durable");
    // An old waiter for the reused offsets is not fooled by the new data.
    assert!(matches!(
        log.wait_durable(&ib).await,
        Err(LogError::NotDurable)
    ));
    let mut expected = assigned(&a, 0);
    expected.extend(assigned(&d, 2));
    assert_eq!(read_all(&log), expected);
    drop(log);
    let log = open(dir.path(), config(FsyncPolicy::Always), &clock());
    assert_eq!(read_all(&log), expected);
}

#[tokio::test]
async fn a_failed_fsync_is_accounted_for_even_if_its_waiter_is_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Always), &clock());
    let info = log.append(&make_batch(2, T0, b"a")).expect("append");
    log.hooks.fail_next_sync.store(true, Ordering::SeqCst);
    {
        // Poll the waiter once (it starts the fsync) and drop it.
        let waiter = log.wait_durable(&info);
        let _ = tokio::time::timeout(std::time::Duration::ZERO, waiter).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while log.lock().generation == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "failure never accounted for"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert!(matches!(
        log.wait_durable(&info).await,
        Err(LogError::NotDurable)
    ));
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.high_watermark(), 0);
}

#[test]
fn a_failed_write_leaves_the_log_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    let a = make_batch(2, T0, b"a");
    let b = make_batch(3, T0, &[5u8; 300]);
    log.append(&a).expect("append");
    log.hooks.fail_next_write.store(true, Ordering::SeqCst);
    match log.append(&b) {
        Err(LogError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull)
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(
        fs::metadata(log_path(dir.path(), 0)).expect("meta").len(),
        a.len() as u64
    );
    // Space is back: appends continue where they left off.
    assert_eq!(log.append(&b).expect("append").base_offset, 2);
    let mut expected = assigned(&a, 0);
    expected.extend(assigned(&b, 2));
    assert_eq!(read_all(&log), expected);
    drop(log);
    let log = open(dir.path(), config(FsyncPolicy::Never), &clock());
    assert_eq!(read_all(&log), expected);
}

#[test]
fn set_config_applies_to_later_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), config(FsyncPolicy::Always), &clock());
    let batch = make_batch(1, T0, &[0u8; 100]);
    log.append(&batch).expect("append");
    assert_eq!(log.high_watermark(), 0);
    let cfg = LogConfig {
        max_batch_bytes: 50,
        segment_bytes: batch.len() as u64,
        ..config(FsyncPolicy::Never)
    };
    log.set_config(cfg.clone());
    assert_eq!(log.config(), cfg);
    assert_eq!(
        log.high_watermark(),
        1,
        "no longer waiting for group commit"
    );
    assert!(matches!(
        log.append(&batch),
        Err(LogError::InvalidBatch(
            crate::batch::BatchError::TooLarge { .. }
        ))
    ));
    log.set_config(LogConfig {
        max_batch_bytes: 1 << 20,
        ..cfg
    });
    log.append(&batch).expect("append");
    assert_eq!(
        segment_files(dir.path()).len(),
        2,
        "rolled by the new segment size"
    );
}

#[test]
fn close_marks_a_clean_shutdown_that_the_next_write_or_open_removes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let marker = dir.path().join(CLEAN_SHUTDOWN_FILE);
    let log = open(dir.path(), indexed_config(), &clock);
    let mut expected = fill(&log, 10);
    log.close().expect("close");
    assert!(marker.exists());
    // Writing after close withdraws the promise.
    let b = make_batch(1, T0, b"late");
    let info = log.append(&b).expect("append");
    expected.extend(assigned(&b, info.base_offset));
    assert!(!marker.exists());
    log.close().expect("close");
    drop(log);
    let log = open(dir.path(), indexed_config(), &clock);
    assert!(!marker.exists());
    assert_eq!(read_all(&log), expected);
}

#[test]
fn a_stale_index_after_a_clean_shutdown_falls_back_to_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let log = open(dir.path(), indexed_config(), &clock);
    let mut expected = fill(&log, 5);
    let end = log.log_end_offset();
    log.close().expect("close");
    drop(log);
    // A writer that ignored the protocol: data appended behind the marker's
    // back, ending in a torn batch.
    let path = log_path(dir.path(), 0);
    let extra = assigned(&make_batch(1, T0, b"extra"), end);
    let mut file = OpenOptions::new().append(true).open(&path).expect("open");
    std::io::Write::write_all(&mut file, &extra).expect("write");
    std::io::Write::write_all(&mut file, &extra[..20]).expect("write");
    drop(file);
    let log = open(dir.path(), indexed_config(), &clock);
    expected.extend(&extra);
    assert_eq!(log.log_end_offset(), end + 1);
    assert_eq!(read_all(&log), expected);
    assert_eq!(
        fs::metadata(&path).expect("meta").len(),
        expected.len() as u64,
        "torn tail cut"
    );
}

#[derive(Debug, Clone)]
struct Workload {
    /// Each append: batches of (record count, payload bytes).
    appends: Vec<Vec<(i32, usize)>>,
    segment_bytes: u64,
    index_interval_bytes: u32,
    max_bytes: usize,
    min_one_batch: bool,
}

fn workload() -> impl Strategy<Value = Workload> {
    (
        prop::collection::vec(prop::collection::vec((1i32..5, 0usize..200), 1..4), 1..30),
        200u64..3000,
        0u32..400,
        1usize..2000,
        any::<bool>(),
    )
        .prop_map(
            |(appends, segment_bytes, index_interval_bytes, max_bytes, min_one_batch)| Workload {
                appends,
                segment_bytes,
                index_interval_bytes,
                max_bytes,
                min_one_batch,
            },
        )
}

/// Checks one read against the expected batches: whole batches, the first
/// holding `offset`, contiguous, within `max_bytes` (save a lone first batch
/// under `min_one_batch`), and byte for byte what was stored.
fn check_read(
    log: &Log,
    expected: &[(i64, Vec<u8>)],
    offset: i64,
    max_bytes: usize,
    min_one_batch: bool,
) {
    let r = log.read(offset, max_bytes, min_one_batch).expect("read");
    let first = expected
        .iter()
        .position(|(_, b)| BatchHeader::parse(b).expect("header").last_offset() >= offset)
        .expect("offset below the end");
    let mut want = Vec::new();
    for (i, (_, b)) in expected[first..].iter().enumerate() {
        if want.len() + b.len() > max_bytes && !(i == 0 && min_one_batch) {
            // Whole batches only, and the read may stop early at a segment end
            // or the per-read segment limit; it must never go past this point.
            break;
        }
        want.extend_from_slice(b);
    }
    assert!(r.records.len() <= want.len(), "read past max_bytes");
    assert_eq!(r.records.as_ref(), &want[..r.records.len()], "bytes differ");
    if !r.records.is_empty() {
        let headers = headers_of(&r.records);
        assert!(headers[0].base_offset <= offset && offset <= headers[0].last_offset());
    } else {
        // Empty only when the first batch does not fit.
        assert!(!min_one_batch && expected[first].1.len() > max_bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn everything_appended_reads_back(w in workload()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = clock();
        let cfg = LogConfig {
            segment_bytes: w.segment_bytes,
            index_interval_bytes: w.index_interval_bytes,
            ..config(FsyncPolicy::Never)
        };
        let log = open(dir.path(), cfg.clone(), &clock);
        let mut expected: Vec<(i64, Vec<u8>)> = Vec::new();
        let mut next = 0i64;
        for (n, append) in w.appends.iter().enumerate() {
            let mut records = Vec::new();
            let mut parts = Vec::new();
            for (i, &(count, payload)) in append.iter().enumerate() {
                let b = make_batch(count, T0 + (n * 10 + i) as i64, &vec![n as u8; payload]);
                records.extend_from_slice(&b);
                parts.push(b);
            }
            let info = log.append(&records).expect("append");
            prop_assert_eq!(info.base_offset, next);
            for b in parts {
                let count = i64::from(BatchHeader::parse(&b).expect("header").records_count);
                expected.push((next, assigned(&b, next)));
                next += count;
            }
            prop_assert_eq!(info.last_offset, next - 1);
        }
        prop_assert_eq!(log.high_watermark(), next);
        let all: Vec<u8> = expected.iter().flat_map(|(_, b)| b.clone()).collect();

        let check_all = |log: &Log| -> Result<(), TestCaseError> {
            // Sequential consumption with the workload's fetch size.
            let mut offset = 0;
            let mut got = Vec::new();
            while offset < next {
                let r = log.read(offset, w.max_bytes, true).expect("read");
                let headers = headers_of(&r.records);
                prop_assert!(!headers.is_empty());
                prop_assert!(headers[0].base_offset <= offset);
                offset = headers.last().expect("batch").last_offset() + 1;
                got.extend_from_slice(&r.records);
            }
            prop_assert_eq!(&got, &all);
            for offset in 0..next {
                check_read(log, &expected, offset, w.max_bytes, w.min_one_batch);
            }
            Ok(())
        };
        check_all(&log)?;
        log.close().expect("close");
        drop(log);
        let log = open(dir.path(), cfg, &clock);
        prop_assert_eq!(log.log_end_offset(), next);
        check_all(&log)?;
    }
}
