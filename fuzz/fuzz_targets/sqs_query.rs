//! An SQS query-protocol request: the URL's query string, a newline, the
//! form-encoded body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_sqs::fuzz::query(data));
