//! AMQP frames as the connection reads them, with every method and content
//! header parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_amqp::fuzz::frames(data));
