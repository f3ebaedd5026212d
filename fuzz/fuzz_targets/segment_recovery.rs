//! Arbitrary bytes as the files of a log directory, then the log opened
//! (recovered) and read back from its start to its end. Opening must never
//! panic, reads return whole batches, and a read must never return a batch
//! whose CRC does not check: not after a recovery, nor with the
//! clean-shutdown marker, when the segment is opened without a scan and
//! reads check each batch (the first run of this target found such batches
//! served, see docs/reliability.md#fuzzing). A batch a read refuses as
//! corrupt is stepped over, so the rest of the log is read too.
//!
//! Input: one flag byte (bit 0: a clean-shutdown marker), the lengths of the
//! offset index, the time index and the producer-state snapshot (u16 each,
//! big-endian), those three files, and the rest is the segment file.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use ferry_log::batch::{BatchHeader, check_crc};
use ferry_log::records::{RecordParts, build_batch, split_batches};
use ferry_log::{FsyncPolicy, Log, LogConfig, LogError, ManualClock};
use libfuzzer_sys::fuzz_target;

const BASE: &str = "00000000000000000000";
/// Enough for any segment the fuzzer writes: reads cover it in a few calls.
const READ_BYTES: usize = 1 << 20;

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

fn take_len(data: &mut &[u8]) -> usize {
    match take(data, 2) {
        [hi, lo] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => 0,
    }
}

fn write(dir: &Path, name: String, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write a file of the fuzzed log");
}

/// Reads every batch from the log start to the high watermark, checking
/// each one's CRC and stepping over those the log refuses as corrupt;
/// returns the offset after the last.
fn read_all(log: &Log) -> i64 {
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let read = match log.read(offset, READ_BYTES, true) {
            Ok(read) => read,
            Err(LogError::CorruptBatch { last_offset, .. }) => {
                assert!(
                    last_offset >= offset,
                    "a corrupt batch before the offset read"
                );
                offset = last_offset + 1;
                continue;
            }
            Err(_) => break,
        };
        if read.records.is_empty() {
            break;
        }
        let batches = split_batches(read.records).expect("a read returns whole batches");
        for (_, last, batch) in batches {
            let header = BatchHeader::parse(&batch).expect("a read returns whole batches");
            check_crc(&header, &batch).expect("a read returned a batch whose CRC does not check");
            assert!(last >= offset, "a read went backwards: {last} < {offset}");
            offset = last + 1;
        }
    }
    offset
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let flags = take(&mut data, 1).first().copied().unwrap_or(0);
    let lens = [
        take_len(&mut data),
        take_len(&mut data),
        take_len(&mut data),
    ];
    // tmpfs when there is one: this target writes files on every run.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory");
    for (len, ext) in lens.into_iter().zip(["index", "timeindex", "snapshot"]) {
        write(dir.path(), format!("{BASE}.{ext}"), take(&mut data, len));
    }
    write(dir.path(), format!("{BASE}.log"), data);
    let clean = flags & 1 != 0;
    if clean {
        write(dir.path(), ".clean_shutdown".to_string(), b"");
    }
    let config = LogConfig {
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let Ok(log) = Log::open(dir.path(), config, Arc::new(ManualClock::new(0))) else {
        return;
    };
    let end = read_all(&log);
    // What recovery kept must take an append after it, readable back.
    let batch = build_batch(
        0,
        &[RecordParts {
            key: None,
            value: Some(b"after"),
            headers: &[],
        }],
    );
    if let Ok(info) = log.append(&batch) {
        assert!(
            info.base_offset >= end,
            "an append reused offset {}",
            info.base_offset
        );
        assert_eq!(read_all(&log), info.last_offset + 1);
    }
});
