//! A message as a Kafka record: key = routing key, value = body, timestamp =
//! when the queue got it, and one record header, `x-ferry`, holding the rest
//! in a compact binary form (version 1):
//!
//! ```text
//! version u8 | flags u8 | priority u8 | exchange bytes | properties bytes
//! | published_ms ivarint | [ttl_ms uvarint] | [deliver_at_ms ivarint]
//! | [headers table] | [deaths]
//! ```
//!
//! `flags`: 1 persistent, 2 ttl, 4 deliver_at, 8 headers, 16 deaths. Bytes
//! fields are a uvarint length and the bytes. The fields a queue needs to
//! decide what to do with a message (priority, expiry, delay) come first, so
//! [`decode_meta`] stops before the headers. Records without the header
//! (written by Kafka producers into a stream queue's topic) decode as plain
//! messages: body = value, routing key = key.

use std::time::Duration;

use bytes::Bytes;
use ferry_log::records::{RecordParts, StoredRecord, build_batch};

use super::value::{Reader, decode_table, encode_table, put_bytes, put_ivarint, put_uvarint};
use super::{Death, DeathReason, Message};

pub(crate) const HEADER_KEY: &[u8] = b"x-ferry";
const VERSION: u8 = 1;
const F_PERSISTENT: u8 = 1;
const F_TTL: u8 = 2;
const F_DELIVER_AT: u8 = 4;
const F_HEADERS: u8 = 8;
const F_DEATHS: u8 = 16;
/// Deaths a message may carry when decoding (one per queue and reason).
const DEATHS_MAX: usize = 4096;

/// What a queue needs to know of a message without its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Meta {
    pub persistent: bool,
    pub priority: u8,
    pub ttl_ms: Option<u64>,
    /// Not deliverable before this (delayed messages).
    pub deliver_at_ms: Option<i64>,
}

impl Meta {
    /// What a queue indexes `message` by, not deliverable before
    /// `deliver_at_ms` if that is given.
    pub fn of(message: &Message, deliver_at_ms: Option<i64>) -> Meta {
        Meta {
            persistent: message.persistent,
            priority: message.priority,
            ttl_ms: message
                .ttl
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            deliver_at_ms,
        }
    }
}

fn reason_code(r: DeathReason) -> u8 {
    match r {
        DeathReason::Rejected => 0,
        DeathReason::Expired => 1,
        DeathReason::Maxlen => 2,
        DeathReason::DeliveryLimit => 3,
    }
}

fn reason_from(c: u8) -> Option<DeathReason> {
    Some(match c {
        0 => DeathReason::Rejected,
        1 => DeathReason::Expired,
        2 => DeathReason::Maxlen,
        3 => DeathReason::DeliveryLimit,
        _ => return None,
    })
}

/// The `x-ferry` header of a message; `deliver_at_ms` holds it back.
pub(crate) fn encode_header(m: &Message, deliver_at_ms: Option<i64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + m.exchange.len() + m.properties.len());
    let mut flags = 0u8;
    if m.persistent {
        flags |= F_PERSISTENT;
    }
    if m.ttl.is_some() {
        flags |= F_TTL;
    }
    if deliver_at_ms.is_some() {
        flags |= F_DELIVER_AT;
    }
    if !m.headers.is_empty() {
        flags |= F_HEADERS;
    }
    if !m.deaths.is_empty() {
        flags |= F_DEATHS;
    }
    out.push(VERSION);
    out.push(flags);
    out.push(m.priority);
    put_bytes(&mut out, m.exchange.as_bytes());
    put_bytes(&mut out, &m.properties);
    put_ivarint(&mut out, m.published_ms);
    if let Some(ttl) = m.ttl {
        put_uvarint(&mut out, u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    }
    if let Some(at) = deliver_at_ms {
        put_ivarint(&mut out, at);
    }
    if !m.headers.is_empty() {
        encode_table(&mut out, &m.headers);
    }
    if !m.deaths.is_empty() {
        put_uvarint(&mut out, m.deaths.len() as u64);
        for d in &m.deaths {
            put_bytes(&mut out, d.queue.as_bytes());
            out.push(reason_code(d.reason));
            put_uvarint(&mut out, d.count);
            put_bytes(&mut out, d.exchange.as_bytes());
            put_uvarint(&mut out, d.routing_keys.len() as u64);
            for k in &d.routing_keys {
                put_bytes(&mut out, k.as_bytes());
            }
            put_uvarint(&mut out, d.time_s);
            match &d.original_expiration {
                Some(e) => {
                    out.push(1);
                    put_bytes(&mut out, e.as_bytes());
                }
                None => out.push(0),
            }
        }
    }
    out
}

/// A whole batch holding the message as one record, stamped `now_ms`.
pub(crate) fn encode_batch(m: &Message, deliver_at_ms: Option<i64>, now_ms: i64) -> Vec<u8> {
    let header = encode_header(m, deliver_at_ms);
    let headers: [(&[u8], Option<&[u8]>); 1] = [(HEADER_KEY, Some(&header))];
    build_batch(
        now_ms,
        &[RecordParts {
            key: Some(m.routing_key.as_bytes()),
            value: Some(&m.body),
            headers: &headers,
        }],
    )
}

struct Head {
    meta: Meta,
    exchange: Bytes,
    properties: Bytes,
    published_ms: i64,
    flags: u8,
}

fn decode_head(r: &mut Reader) -> Option<Head> {
    if r.u8()? != VERSION {
        return None;
    }
    let flags = r.u8()?;
    let priority = r.u8()?;
    let exchange = r.bytes()?;
    let properties = r.bytes()?;
    let published_ms = r.ivarint()?;
    let ttl_ms = if flags & F_TTL != 0 {
        Some(r.uvarint()?)
    } else {
        None
    };
    let deliver_at_ms = if flags & F_DELIVER_AT != 0 {
        Some(r.ivarint()?)
    } else {
        None
    };
    Some(Head {
        meta: Meta {
            persistent: flags & F_PERSISTENT != 0,
            priority,
            ttl_ms,
            deliver_at_ms,
        },
        exchange,
        properties,
        published_ms,
        flags,
    })
}

/// The queue-relevant fields of a stored record.
pub(crate) fn decode_meta(rec: &StoredRecord) -> Meta {
    rec.header(HEADER_KEY)
        .and_then(|h| decode_head(&mut Reader::new(h.clone())))
        .map(|h| h.meta)
        .unwrap_or(Meta {
            persistent: true,
            ..Meta::default()
        })
}

/// Stored bytes as text: what the front ends store is UTF-8, and a check
/// of that is faster than the lossy conversion's walk over chunks; other
/// bytes (a non-UTF-8 AMQP routing key) show with replacement characters.
pub fn utf8_lossy(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// The message of a stored record, and its meta. Malformed headers degrade to
/// a plain message rather than failing a delivery.
pub(crate) fn decode_message(rec: &StoredRecord) -> (Message, Meta) {
    let routing_key = rec.key.as_deref().map(utf8_lossy).unwrap_or_default();
    let body = rec.value.clone().unwrap_or_default();
    let plain = |meta: Meta| Message {
        exchange: String::new(),
        routing_key: routing_key.clone(),
        properties: Bytes::new(),
        headers: Vec::new(),
        body: body.clone(),
        priority: 0,
        ttl: None,
        persistent: meta.persistent,
        published_ms: rec.timestamp,
        deaths: Vec::new(),
    };
    let Some(h) = rec.header(HEADER_KEY) else {
        let meta = Meta {
            persistent: true,
            ..Meta::default()
        };
        return (plain(meta), meta);
    };
    let mut r = Reader::new(h.clone());
    let Some(head) = decode_head(&mut r) else {
        return (plain(Meta::default()), Meta::default());
    };
    let headers = if head.flags & F_HEADERS != 0 {
        decode_table(&mut r).unwrap_or_default()
    } else {
        Vec::new()
    };
    let deaths = if head.flags & F_DEATHS != 0 {
        decode_deaths(&mut r).unwrap_or_default()
    } else {
        Vec::new()
    };
    let meta = head.meta;
    (
        Message {
            exchange: utf8_lossy(&head.exchange),
            routing_key,
            properties: head.properties,
            headers,
            body,
            priority: meta.priority,
            ttl: meta.ttl_ms.map(Duration::from_millis),
            persistent: meta.persistent,
            published_ms: head.published_ms,
            deaths,
        },
        meta,
    )
}

fn decode_deaths(r: &mut Reader) -> Option<Vec<Death>> {
    let n = usize::try_from(r.uvarint()?).ok()?;
    if n > DEATHS_MAX {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let queue = r.string()?;
        let reason = reason_from(r.u8()?)?;
        let count = r.uvarint()?;
        let exchange = r.string()?;
        let nk = usize::try_from(r.uvarint()?).ok()?;
        if nk > r.buf.len() {
            return None;
        }
        let mut routing_keys = Vec::with_capacity(nk);
        for _ in 0..nk {
            routing_keys.push(r.string()?);
        }
        let time_s = r.uvarint()?;
        let original_expiration = match r.u8()? {
            0 => None,
            _ => Some(r.string()?),
        };
        out.push(Death {
            queue,
            reason,
            count,
            exchange,
            routing_keys,
            time_s,
            original_expiration,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messaging::FieldValue;

    pub(crate) fn sample() -> Message {
        Message {
            exchange: "ex".into(),
            routing_key: "a.b".into(),
            properties: Bytes::from_static(b"\x90\x00props"),
            headers: vec![("k".into(), FieldValue::Int(7))],
            body: Bytes::from_static(b"hello"),
            priority: 3,
            ttl: Some(Duration::from_millis(1500)),
            persistent: true,
            published_ms: 1_700_000_000_123,
            deaths: vec![Death {
                queue: "q".into(),
                reason: DeathReason::Expired,
                count: 2,
                exchange: "".into(),
                routing_keys: vec!["q".into()],
                time_s: 1_700_000_000,
                original_expiration: Some("1500".into()),
            }],
        }
    }

    fn stored(batch: Vec<u8>) -> StoredRecord {
        ferry_log::records::decode_batch(Bytes::from(batch))
            .unwrap()
            .remove(0)
    }

    #[test]
    fn messages_round_trip() {
        let m = sample();
        let rec = stored(encode_batch(&m, Some(99), 5));
        let (back, meta) = decode_message(&rec);
        assert_eq!(back, m);
        assert_eq!(rec.timestamp, 5);
        assert_eq!(
            meta,
            Meta {
                persistent: true,
                priority: 3,
                ttl_ms: Some(1500),
                deliver_at_ms: Some(99)
            }
        );
        assert_eq!(decode_meta(&rec), meta);
        let mut plain = m.clone();
        plain.headers.clear();
        plain.deaths.clear();
        plain.ttl = None;
        plain.persistent = false;
        let (back, _) = decode_message(&stored(encode_batch(&plain, None, 5)));
        assert_eq!(back, plain);
    }

    #[test]
    fn records_from_kafka_producers_are_plain_messages() {
        let b = build_batch(
            42,
            &[RecordParts {
                key: Some(b"k"),
                value: Some(b"v"),
                headers: &[],
            }],
        );
        let (m, meta) = decode_message(&stored(b));
        assert_eq!(m.routing_key, "k");
        assert_eq!(&m.body[..], b"v");
        assert_eq!(m.published_ms, 42);
        assert!(meta.persistent);
    }
}
