//! Frames on the wire: reading them with the negotiated `frame_max` checked
//! before anything is allocated, parsing method payloads with amq-protocol
//! once they are known to be safe for it, and writing the frames the server
//! sends (the hot ones — deliver, ack, content — encoded by hand).
//!
//! amq-protocol trusts every length and recurses into nested tables without
//! a bound; so its parser only ever sees a payload already bounded by
//! `frame_max`, whose class and method ids are known, and whose field tables
//! were parsed first by `table.rs` (bounded nesting). Those tables are what
//! the front end uses: they keep their order and non-UTF-8 strings.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, parse_class};
use bytes::{BufMut, Bytes, BytesMut};
use ferry_core::messaging::{FieldValue, field_table};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::errors::{AmqpError, FRAME_ERROR, NOT_IMPLEMENTED, SYNTAX_ERROR};
use crate::table::{self, Reader, TableError};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Type, channel, size.
pub const FRAME_HEADER_BYTES: usize = 7;
/// Header plus the end octet: what a frame costs besides its payload.
pub const FRAME_OVERHEAD_BYTES: usize = 8;
/// The smallest frame_max a peer may negotiate (AMQP 0-9-1: 4096).
pub const FRAME_MIN_SIZE: u32 = 4096;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// One frame as read: its payload is at most `frame_max` bytes.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Bytes,
}

#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection or the socket failed.
    Closed(std::io::Error),
    /// A framing error: connection.close 501, then the stream is unusable.
    Frame(AmqpError),
}

/// Bytes asked of the socket per read: many small frames (a publish is
/// three) arrive in one read and are cut out of it without copying.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads frames from a socket into one buffer and hands each payload out as
/// a slice of it: no allocation or copy per frame. A payload keeps the chunk
/// it was read into alive until it is dropped; the next read then goes into
/// a fresh chunk.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// Waits, without a time bound, until some of the next frame has arrived.
    pub async fn wait_for_data(&mut self) -> Result<(), ReadError> {
        if self.buf.is_empty() {
            self.fill(1).await?;
        }
        Ok(())
    }

    /// Reads one frame, refusing (before reading its payload) one above
    /// `frame_max`.
    pub async fn read_frame(&mut self, frame_max: u32) -> Result<RawFrame, ReadError> {
        loop {
            match cut_frame(&mut self.buf, frame_max).map_err(ReadError::Frame)? {
                Cut::Frame(f) => return Ok(f),
                Cut::Need(n) => self.fill(n).await?,
            }
        }
    }

    /// The next frame if it is already whole in the buffer: reading it needs
    /// no wait.
    pub fn buffered_frame(&mut self, frame_max: u32) -> Result<Option<RawFrame>, ReadError> {
        match cut_frame(&mut self.buf, frame_max).map_err(ReadError::Frame)? {
            Cut::Frame(f) => Ok(Some(f)),
            Cut::Need(_) => Ok(None),
        }
    }

    /// Reads at least once, with room for `needed` more bytes (bounded by
    /// `frame_max` through `cut_frame`).
    async fn fill(&mut self, needed: usize) -> Result<(), ReadError> {
        self.buf.reserve(needed.max(READ_CHUNK_BYTES));
        let n = self
            .inner
            .read_buf(&mut self.buf)
            .await
            .map_err(ReadError::Closed)?;
        if n == 0 {
            return Err(ReadError::Closed(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }
}

enum Cut {
    Frame(RawFrame),
    /// Bytes still missing before the frame (or its header) is whole.
    Need(usize),
}

/// Cuts the first frame off `buf` if it is whole; checks the type and the
/// size as soon as the 7-byte header is there.
fn cut_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Cut, AmqpError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(Cut::Need(FRAME_HEADER_BYTES - buf.len()));
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(AmqpError::connection(
            FRAME_ERROR,
            format!("type {kind}, all octets = <<>>: unknown_frame"),
        ));
    }
    // frame_max counts the whole frame; like RabbitMQ, accept payloads up to
    // frame_max itself, since some clients count only the payload.
    if size > frame_max {
        return Err(AmqpError::connection(
            FRAME_ERROR,
            format!(
                "type {kind}, all octets = <<>>: {{frame_too_large,{size},{}}}",
                frame_max.saturating_sub(FRAME_OVERHEAD_BYTES as u32)
            ),
        ));
    }
    let total = FRAME_OVERHEAD_BYTES + size as usize;
    if buf.len() < total {
        return Ok(Cut::Need(total - buf.len()));
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(AmqpError::connection(
            FRAME_ERROR,
            format!("type {kind}, all octets = <<>>: {{invalid_frame_end_marker,{end}}}"),
        ));
    }
    let frame = buf.split_to(total).freeze();
    Ok(Cut::Frame(RawFrame {
        kind,
        channel,
        payload: frame.slice(FRAME_HEADER_BYTES..total - 1),
    }))
}

/// A parsed method with the field table it carries (declare/bind arguments,
/// consume arguments, client properties), decoded by `table.rs`.
#[derive(Debug, Clone)]
pub struct Method {
    pub class: AMQPClass,
    pub table: Vec<(String, FieldValue)>,
    pub class_id: u16,
    pub method_id: u16,
    /// The arguments as sent (after the class and method ids), for the
    /// fields amq-protocol drops (basic.qos prefetch-size).
    pub args: Bytes,
}

/// Every (class, method) pair of 0-9-1 with RabbitMQ's extensions.
fn is_known(class_id: u16, method_id: u16) -> bool {
    matches!(
        (class_id, method_id),
        (
            10,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ) | (20, 10 | 11 | 20 | 21 | 40 | 41)
            | (30, 10 | 11)
            | (40, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51)
            | (50, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51)
            | (
                60,
                10 | 11 | 20 | 21 | 30 | 31 | 40 | 50 | 60 | 70 | 71 | 72 | 80 | 90
            )
            | (60, 100 | 110 | 111 | 120)
            | (85, 10 | 11)
            | (90, 10 | 11 | 20 | 21 | 30 | 31)
    )
}

fn syntax(e: impl std::fmt::Display) -> AmqpError {
    AmqpError::connection(SYNTAX_ERROR, e)
}

/// Finds and decodes the one field table a method carries, if any.
fn method_table(
    class_id: u16,
    method_id: u16,
    args: &[u8],
) -> Result<Vec<(String, FieldValue)>, TableError> {
    let mut r = Reader::new(args);
    match (class_id, method_id) {
        // connection.start: version-major, version-minor, server-properties
        (10, 10) => {
            r.take(2)?;
        }
        // connection.start-ok: client-properties first
        (10, 11) => {}
        // exchange.declare: ticket, exchange, type, bits, arguments
        (40, 10) => {
            r.u16()?;
            r.short_str()?;
            r.short_str()?;
            r.u8()?;
        }
        // exchange.bind/unbind: ticket, destination, source, routing-key, bits, arguments
        (40, 30) | (40, 40) => {
            r.u16()?;
            r.short_str()?;
            r.short_str()?;
            r.short_str()?;
            r.u8()?;
        }
        // queue.declare: ticket, queue, bits, arguments
        (50, 10) => {
            r.u16()?;
            r.short_str()?;
            r.u8()?;
        }
        // queue.bind: ticket, queue, exchange, routing-key, bits, arguments
        (50, 20) => {
            r.u16()?;
            r.short_str()?;
            r.short_str()?;
            r.short_str()?;
            r.u8()?;
        }
        // queue.unbind: ticket, queue, exchange, routing-key, arguments (no bits)
        (50, 50) => {
            r.u16()?;
            r.short_str()?;
            r.short_str()?;
            r.short_str()?;
        }
        // basic.consume: ticket, queue, consumer-tag, bits, arguments
        (60, 20) => {
            r.u16()?;
            r.short_str()?;
            r.short_str()?;
            r.u8()?;
        }
        _ => return Ok(Vec::new()),
    }
    table::read_table(&mut r)
}

/// Parses a method frame's payload. Unknown class or method ids are 540
/// NOT_IMPLEMENTED; anything else that does not parse is 502 SYNTAX_ERROR.
pub fn parse_method(payload: &Bytes) -> Result<Method, AmqpError> {
    if payload.len() < 4 {
        return Err(syntax("method frame shorter than its class and method ids"));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    if !is_known(class_id, method_id) {
        return Err(AmqpError::connection(
            NOT_IMPLEMENTED,
            format!("unknown method: class {class_id}, method {method_id}"),
        )
        .at(class_id, method_id));
    }
    let table = method_table(class_id, method_id, &payload[4..])
        .map_err(|e| syntax(format!("{e}")).at(class_id, method_id))?;
    match parse_class(&payload[..]) {
        Ok((&[], class)) => Ok(Method {
            class,
            table,
            class_id,
            method_id,
            args: payload.slice(4..),
        }),
        Ok((rest, _)) => Err(syntax(format!(
            "{} unexpected bytes after the method's arguments",
            rest.len()
        ))
        .at(class_id, method_id)),
        Err(_) => Err(syntax("malformed method arguments").at(class_id, method_id)),
    }
}

/// basic.publish and basic.ack: the methods a client sends once per
/// message, read directly (amq-protocol's general parser, the method table
/// and a clone of the connection's vhost per method were a few percent of
/// the broker's CPU per message).
#[derive(Debug, PartialEq, Eq)]
pub enum HotMethod {
    Publish {
        exchange: String,
        routing_key: String,
        mandatory: bool,
        immediate: bool,
    },
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
}

/// A method payload that is exactly a well-formed basic.publish or
/// basic.ack; `None` for anything else, which takes `parse_method` and its
/// errors, so both paths answer the same for every input.
pub fn parse_hot(payload: &[u8]) -> Option<HotMethod> {
    let short_str = |b: &[u8]| -> Option<(String, usize)> {
        let n = usize::from(*b.first()?);
        let s = std::str::from_utf8(b.get(1..1 + n)?).ok()?;
        Some((s.to_string(), 1 + n))
    };
    match payload.get(..4)? {
        [0, 60, 0, 40] => {
            // reserved-1 (ticket), exchange, routing-key, bits
            let rest = payload.get(6..)?;
            let (exchange, used) = short_str(rest)?;
            let rest = &rest[used..];
            let (routing_key, used) = short_str(rest)?;
            let [bits] = rest[used..] else {
                return None;
            };
            Some(HotMethod::Publish {
                exchange,
                routing_key,
                mandatory: bits & 1 != 0,
                immediate: bits & 2 != 0,
            })
        }
        [0, 60, 0, 80] => {
            let [t0, t1, t2, t3, t4, t5, t6, t7, bits] = payload[4..] else {
                return None;
            };
            Some(HotMethod::Ack {
                delivery_tag: u64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
                multiple: bits & 1 != 0,
            })
        }
        _ => None,
    }
}

/// Appends a method frame encoded by amq-protocol.
pub fn put_method(out: &mut BytesMut, channel: u16, class: AMQPClass) {
    let frame = AMQPFrame::Method(channel, class);
    match gen_frame(&frame)(WriteContext::from(Vec::with_capacity(64))) {
        Ok(ctx) => out.put_slice(&ctx.into_inner().0),
        // Only reachable with a short string over 255 bytes, which the
        // callers never build; losing the frame beats a panic.
        Err(e) => tracing::error!(error = %e, "cannot encode AMQP method frame"),
    }
}

fn put_short_str(out: &mut BytesMut, s: &[u8]) {
    field_table::write_short_str(out, s);
}

fn begin(out: &mut BytesMut, kind: u8, channel: u16) -> usize {
    out.put_u8(kind);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    at
}

fn finish(out: &mut BytesMut, at: usize) {
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// basic.deliver, encoded by hand: it is the hottest frame we send.
pub fn put_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(60);
    put_short_str(out, consumer_tag.as_bytes());
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(redelivered));
    put_short_str(out, exchange.as_bytes());
    put_short_str(out, routing_key.as_bytes());
    finish(out, at);
}

/// basic.ack or basic.nack to a publisher in confirm mode.
pub fn put_confirm(out: &mut BytesMut, channel: u16, ack: bool, tag: u64, multiple: bool) {
    let at = begin(out, FRAME_METHOD, channel);
    out.put_u16(60);
    if ack {
        out.put_u16(80);
        out.put_u64(tag);
        out.put_u8(u8::from(multiple));
    } else {
        out.put_u16(120);
        out.put_u64(tag);
        // multiple, requeue=false
        out.put_u8(u8::from(multiple));
    }
    finish(out, at);
}

/// A content header (raw properties) and the body split into frames of at
/// most `frame_max` bytes.
pub fn put_content(
    out: &mut BytesMut,
    channel: u16,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let at = begin(out, FRAME_HEADER, channel);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(body.len() as u64);
    out.put_slice(properties);
    finish(out, at);
    let chunk = (frame_max as usize)
        .saturating_sub(FRAME_OVERHEAD_BYTES)
        .max(1);
    for part in body.chunks(chunk) {
        let at = begin(out, FRAME_BODY, channel);
        out.put_slice(part);
        finish(out, at);
    }
}

/// The name of a method clients send (`basic.publish`), for request
/// metrics; `None` for ids outside AMQP 0-9-1, so that a client cannot add
/// metric series of its own.
pub fn method_name(class_id: u16, method_id: u16) -> Option<&'static str> {
    Some(match (class_id, method_id) {
        (10, 11) => "connection.start-ok",
        (10, 21) => "connection.secure-ok",
        (10, 31) => "connection.tune-ok",
        (10, 40) => "connection.open",
        (10, 50) => "connection.close",
        (10, 51) => "connection.close-ok",
        (10, 60) => "connection.blocked",
        (10, 61) => "connection.unblocked",
        (10, 70) => "connection.update-secret",
        (20, 10) => "channel.open",
        (20, 20) => "channel.flow",
        (20, 21) => "channel.flow-ok",
        (20, 40) => "channel.close",
        (20, 41) => "channel.close-ok",
        (40, 10) => "exchange.declare",
        (40, 20) => "exchange.delete",
        (40, 30) => "exchange.bind",
        (40, 40) => "exchange.unbind",
        (50, 10) => "queue.declare",
        (50, 20) => "queue.bind",
        (50, 30) => "queue.purge",
        (50, 40) => "queue.delete",
        (50, 50) => "queue.unbind",
        (60, 10) => "basic.qos",
        (60, 20) => "basic.consume",
        (60, 30) => "basic.cancel",
        (60, 40) => "basic.publish",
        (60, 70) => "basic.get",
        (60, 80) => "basic.ack",
        (60, 90) => "basic.reject",
        (60, 100) => "basic.recover-async",
        (60, 110) => "basic.recover",
        (60, 120) => "basic.nack",
        (85, 10) => "confirm.select",
        (90, 10) => "tx.select",
        (90, 20) => "tx.commit",
        (90, 30) => "tx.rollback",
        _ => return None,
    })
}

/// How many whole frames `chunk` (frames we encoded) holds, for the
/// connection's traffic counters: it walks the size fields only.
pub fn count_frames(chunk: &[u8]) -> u64 {
    let mut count = 0;
    let mut at = 0;
    while let Some(size) = chunk.get(at + 3..at + 7) {
        let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
        at += FRAME_OVERHEAD_BYTES + size;
        count += 1;
    }
    count
}

pub fn put_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {

    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What the general parser makes of a payload, as a `HotMethod` if it
    /// is a publish or an ack.
    fn parsed_generally(payload: &[u8]) -> Option<HotMethod> {
        match parse_method(&Bytes::copy_from_slice(payload)).ok()?.class {
            AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => Some(HotMethod::Publish {
                exchange: p.exchange.as_str().to_string(),
                routing_key: p.routing_key.as_str().to_string(),
                mandatory: p.mandatory,
                immediate: p.immediate,
            }),
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => Some(HotMethod::Ack {
                delivery_tag: a.delivery_tag,
                multiple: a.multiple,
            }),
            _ => None,
        }
    }

    proptest::proptest! {
        /// Whatever the bytes, the direct reading agrees with the general
        /// parser whenever it answers.
        #[test]
        fn hot_methods_read_as_the_general_parser_reads_them(
            ids in proptest::sample::select(vec![[0u8, 60, 0, 40], [0, 60, 0, 80], [0, 60, 0, 90]]),
            args in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
        ) {
            let payload = [&ids[..], &args].concat();
            if let Some(hot) = parse_hot(&payload) {
                proptest::prop_assert_eq!(Some(hot), parsed_generally(&payload));
            }
        }

        /// Every well-formed publish and ack is read directly.
        #[test]
        fn well_formed_publishes_and_acks_take_the_direct_reading(
            exchange in "[a-z.]{0,20}|\\PC{0,8}",
            routing_key in "\\PC{0,40}",
            bits in 0u8..4,
            tag in proptest::prelude::any::<u64>(),
        ) {
            let publish = encode(AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.as_str().into(),
                routing_key: routing_key.as_str().into(),
                mandatory: bits & 1 != 0,
                immediate: bits & 2 != 0,
            })));
            let hot = parse_hot(&publish);
            proptest::prop_assert!(hot.is_some());
            proptest::prop_assert_eq!(hot, parsed_generally(&publish));
            let ack = encode(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple: bits & 1 != 0,
            })));
            let hot = parse_hot(&ack);
            proptest::prop_assert!(hot.is_some());
            proptest::prop_assert_eq!(hot, parsed_generally(&ack));
        }
    }

    #[test]
    fn counts_the_frames_it_encoded() {
        let mut out = BytesMut::new();
        put_heartbeat(&mut out);
        put_confirm(&mut out, 1, true, 7, false);
        // A header and two body frames.
        put_content(&mut out, 1, &[0, 0], &[1u8; 30], 28);
        assert_eq!(count_frames(&out), 5);
    }
    use amq_protocol::protocol::{basic, queue};
    use amq_protocol::types::{AMQPValue, FieldTable};

    fn encode(class: AMQPClass) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_method(&mut out, 1, class);
        out[7..out.len() - 1].to_vec()
    }

    #[test]
    fn methods_and_their_tables() {
        let mut args = FieldTable::default();
        args.insert("x-max-priority".into(), AMQPValue::LongInt(10));
        let payload = encode(AMQPClass::Queue(queue::AMQPMethod::Declare(
            queue::Declare {
                queue: "q".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: args,
            },
        )));
        let m = parse_method(&Bytes::from(payload)).unwrap();
        assert_eq!((m.class_id, m.method_id), (50, 10));
        assert_eq!(
            m.table,
            vec![("x-max-priority".into(), FieldValue::Int(10))]
        );
    }

    #[test]
    fn unknown_and_malformed_methods() {
        assert_eq!(
            parse_method(&Bytes::from_static(&[0, 99, 0, 1]))
                .unwrap_err()
                .code,
            540
        );
        assert_eq!(
            parse_method(&Bytes::from_static(&[0, 60, 0, 99]))
                .unwrap_err()
                .code,
            540
        );
        assert_eq!(
            parse_method(&Bytes::from_static(&[0, 60]))
                .unwrap_err()
                .code,
            502
        );
        // basic.qos with a missing byte.
        assert_eq!(
            parse_method(&Bytes::from_static(&[0, 60, 0, 10, 0, 0, 0, 0, 0]))
                .unwrap_err()
                .code,
            502
        );
        // Trailing bytes.
        let mut ok = encode(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })));
        assert!(parse_method(&Bytes::from(ok.clone())).is_ok());
        ok.push(0);
        assert_eq!(parse_method(&Bytes::from(ok)).unwrap_err().code, 502);
        // Every prefix of a valid frame is an error, never a panic.
        let full = encode(AMQPClass::Basic(basic::AMQPMethod::Consume(
            basic::Consume {
                queue: "q".into(),
                consumer_tag: "t".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            },
        )));
        for cut in 0..full.len() {
            assert!(parse_method(&Bytes::copy_from_slice(&full[..cut])).is_err());
        }
    }

    #[test]
    fn deeply_nested_arguments_do_not_reach_amq_protocol() {
        // queue.declare with arguments nested 20_000 tables deep.
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..20_000 {
            let mut t = vec![1, b'a', b'F'];
            t.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            t.extend_from_slice(&inner);
            inner = t;
        }
        let mut p = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        p.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        p.extend_from_slice(&inner);
        assert_eq!(parse_method(&Bytes::from(p)).unwrap_err().code, 502);
    }

    #[test]
    fn hand_encoded_frames_parse_with_amq_protocol() {
        let mut out = BytesMut::new();
        put_deliver(&mut out, 3, "ctag", 9, true, "ex", "rk");
        let (_, f) = amq_protocol::frame::parse_frame(&out[..]).unwrap();
        match f {
            AMQPFrame::Method(3, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
                assert_eq!(d.consumer_tag.as_str(), "ctag");
                assert_eq!(d.delivery_tag, 9);
                assert!(d.redelivered);
                assert_eq!(d.exchange.as_str(), "ex");
                assert_eq!(d.routing_key.as_str(), "rk");
            }
            other => panic!("{other:?}"),
        }
        let mut out = BytesMut::new();
        put_confirm(&mut out, 1, false, 5, true);
        let (_, f) = amq_protocol::frame::parse_frame(&out[..]).unwrap();
        assert!(matches!(
            f,
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) if n.delivery_tag == 5 && n.multiple && !n.requeue
        ));
        let mut out = BytesMut::new();
        put_content(&mut out, 1, &[0, 0], &[7u8; 10_000], 4096);
        // header + 3 body frames of at most 4088 bytes
        let mut rest = &out[..];
        let mut bodies = 0;
        while !rest.is_empty() {
            let (r, f) = amq_protocol::frame::parse_frame(rest).unwrap();
            if let AMQPFrame::Body(_, b) = f {
                assert!(b.len() <= 4088);
                bodies += 1;
            }
            rest = r;
        }
        assert_eq!(bodies, 3);
    }

    fn wire_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(FRAME_END);
        f
    }

    #[tokio::test]
    async fn frames_are_cut_whole_however_they_arrive() {
        let sent = [
            (FRAME_METHOD, 1u16, b"abc".to_vec()),
            (FRAME_BODY, 1, (0..5000u32).map(|i| i as u8).collect()),
            (FRAME_HEARTBEAT, 0, Vec::new()),
        ];
        let wire: Vec<u8> = sent
            .iter()
            .flat_map(|(k, c, p)| wire_frame(*k, *c, p))
            .collect();
        let check = |f: RawFrame, i: usize| {
            assert_eq!((f.kind, f.channel), (sent[i].0, sent[i].1), "frame {i}");
            assert_eq!(&f.payload[..], &sent[i].2[..], "frame {i}");
        };

        // In one read: the first waits, the others are already buffered.
        let mut r = FrameReader::new(&wire[..]);
        check(r.read_frame(131072).await.unwrap(), 0);
        check(r.buffered_frame(131072).unwrap().unwrap(), 1);
        check(r.buffered_frame(131072).unwrap().unwrap(), 2);
        assert!(r.buffered_frame(131072).unwrap().is_none());
        assert!(matches!(
            r.read_frame(131072).await,
            Err(ReadError::Closed(_))
        ));

        // Three bytes at a time: never a whole frame buffered early, each
        // one complete when read.
        let (mut tx, rx) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in wire.chunks(3) {
                tx.write_all(piece).await.unwrap();
            }
        });
        let mut r = FrameReader::new(rx);
        for i in 0..sent.len() {
            r.wait_for_data().await.unwrap();
            check(r.read_frame(131072).await.unwrap(), i);
        }
        writer.await.unwrap();
        assert!(r.wait_for_data().await.is_err());
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_reading_them() {
        let mut data = FrameReader::new(&[1u8, 0, 1, 0x7f, 0xff, 0xff, 0xff][..]);
        match data.read_frame(131072).await {
            Err(ReadError::Frame(e)) => assert_eq!(e.code, 501),
            other => panic!("{other:?}"),
        }
        let mut data = FrameReader::new(&[1u8, 0, 1, 0, 0, 0, 1, 9, 0xCD][..]);
        match data.read_frame(131072).await {
            Err(ReadError::Frame(e)) => assert_eq!(e.code, 501),
            other => panic!("{other:?}"),
        }
        let mut data = FrameReader::new(&[9u8, 0, 1, 0, 0, 0, 0, 0xCE][..]);
        assert!(matches!(
            data.read_frame(131072).await,
            Err(ReadError::Frame(_))
        ));
    }
}
