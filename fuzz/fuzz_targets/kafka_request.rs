//! A Kafka request frame (what follows its size): header, then the body with
//! the decoder of its API and version, as the connection decodes it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferry_kafka::decode_request(bytes::Bytes::copy_from_slice(data));
});
