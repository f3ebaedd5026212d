//! AMQP frames driving one channel's content assembly (publish, content
//! header, bodies), as the connection drives it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_amqp::fuzz::content(data));
