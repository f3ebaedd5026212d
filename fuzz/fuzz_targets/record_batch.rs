//! The `records` of a produce request: validated as an append validates
//! them, then each batch that passes decoded as readers decode it.
//!
//! Each input is tried twice: as it is, and with every batch's CRC-32C
//! recomputed. A fuzzer almost never guesses a CRC, while a hostile client
//! computes it like any other; the second try takes the fuzzer to what lies
//! behind the check (record decoding, decompression).
#![no_main]

use bytes::Bytes;
use ferry_log::LogConfig;
use ferry_log::batch::validate_for_append;
use ferry_log::records::{decode_batch, split_batches};
use libfuzzer_sys::fuzz_target;

/// Where a batch's length, CRC and CRC-covered bytes sit (Kafka's RecordBatch v2).
const LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
const CRC_START: usize = 21;
const LOG_OVERHEAD: usize = 12;

fn with_crcs_fixed(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut at = 0;
    while at + CRC_START <= out.len() {
        let length = i32::from_be_bytes([
            out[at + LENGTH_AT],
            out[at + LENGTH_AT + 1],
            out[at + LENGTH_AT + 2],
            out[at + LENGTH_AT + 3],
        ]);
        let Ok(length) = usize::try_from(length) else {
            break;
        };
        let end = at + LOG_OVERHEAD + length;
        if length < CRC_START - LOG_OVERHEAD || end > out.len() {
            break;
        }
        let crc = crc32c::crc32c(&out[at + CRC_START..end]);
        out[at + CRC_AT..at + CRC_START].copy_from_slice(&crc.to_be_bytes());
        at = end;
    }
    out
}

fn validate_and_decode(data: &[u8]) {
    let max_batch_bytes = LogConfig::default().max_batch_bytes as usize;
    if validate_for_append(data, max_batch_bytes).is_err() {
        return;
    }
    let batches = split_batches(Bytes::copy_from_slice(data))
        .expect("batches that validate for an append split");
    for (_, _, batch) in batches {
        let _ = decode_batch(batch);
    }
}

fuzz_target!(|data: &[u8]| {
    validate_and_decode(data);
    validate_and_decode(&with_crcs_fixed(data));
});
