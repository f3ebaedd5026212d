//! The `records` of a produce request: validated as an append validates
//! them, then each batch that passes decoded as readers decode it.
#![no_main]

use bytes::Bytes;
use ferry_log::LogConfig;
use ferry_log::batch::validate_for_append;
use ferry_log::records::{decode_batch, split_batches};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max_batch_bytes = LogConfig::default().max_batch_bytes as usize;
    if validate_for_append(data, max_batch_bytes).is_err() {
        return;
    }
    let batches = split_batches(Bytes::copy_from_slice(data))
        .expect("batches that validate for an append split");
    for (_, _, batch) in batches {
        let _ = decode_batch(batch);
    }
});
