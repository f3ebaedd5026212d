//! An SQS JSON 1.0 request: `X-Amz-Target`, a newline, the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_sqs::fuzz::json(data));
