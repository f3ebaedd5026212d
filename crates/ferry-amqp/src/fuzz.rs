//! Entry points of the fuzz targets in `fuzz/`: the server's own frame
//! reader, method parser and content assembly, run on arbitrary bytes with
//! no connection or broker around them. Not an API for anything else.

use amq_protocol::protocol::{AMQPClass, basic};
use futures_util::FutureExt;

use crate::content::Assembly;
use crate::frame::{self, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, RawFrame};
use crate::props::Props;
use crate::{FRAME_MAX_DEFAULT, MESSAGE_BYTES_MAX_DEFAULT};

/// Content header bytes before the property flags: class, weight, body size.
const HEADER_PREFIX_BYTES: usize = 12;

/// The frames of `input`, as the connection reads them with the default
/// `frame_max`, up to the first where the connection would stop reading.
/// Reading from a slice never waits, so each future is ready at once. (The
/// defaults are the constants, not `AmqpConfig::default()`, which compiles
/// the guest user's permission regexes: 140 runs a second instead of
/// thousands.)
fn read_frames(input: &[u8]) -> impl Iterator<Item = RawFrame> + '_ {
    let mut reader = frame::FrameReader::new(input);
    std::iter::from_fn(move || reader.read_frame(FRAME_MAX_DEFAULT).now_or_never()?.ok())
}

/// Reads frames from `data` until one does not read, parsing each method
/// and content header.
pub fn frames(data: &[u8]) {
    for f in read_frames(data) {
        match f.kind {
            FRAME_METHOD => drop(frame::parse_method(&f.payload)),
            FRAME_HEADER if f.payload.len() >= HEADER_PREFIX_BYTES => {
                drop(Props::parse(f.payload.slice(HEADER_PREFIX_BYTES..)))
            }
            _ => {}
        }
    }
}

/// Feeds the frames of `data` to one channel's content assembly, as the
/// connection does, until a frame would close the connection. Panics if a
/// message is completed with a body other than the size its header gave.
pub fn content(data: &[u8]) {
    let message_bytes_max = MESSAGE_BYTES_MAX_DEFAULT;
    let mut assembly: Option<Assembly> = None;
    for f in read_frames(data) {
        let step = match (f.kind, assembly.as_mut()) {
            (FRAME_HEARTBEAT, _) => Ok(false),
            (FRAME_METHOD, None) => frame::parse_method(&f.payload).map(|m| {
                if let AMQPClass::Basic(basic::AMQPMethod::Publish(p)) = m.class {
                    assembly = Some(Assembly::new(
                        p.exchange.to_string(),
                        p.routing_key.to_string(),
                        p.mandatory,
                    ));
                }
                false
            }),
            (FRAME_HEADER, Some(a)) => a.on_header(&f.payload, message_bytes_max),
            (FRAME_BODY, Some(a)) => a.on_body(&f.payload),
            // A method in the middle of a message, or content without a
            // publish: the connection closes.
            _ => return,
        };
        match step {
            Ok(true) => {
                if let Some(a) = assembly.take() {
                    assert_eq!(a.body.len() as u64, a.body_size);
                    assert!(a.props.is_some());
                }
            }
            Ok(false) => {}
            Err(_) => return,
        }
    }
}
