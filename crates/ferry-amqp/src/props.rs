//! Basic-class content properties, kept as the raw bytes the publisher sent
//! (property flags + property list) and read in place. The broker stores the
//! raw bytes and hands them back unchanged; only when RabbitMQ would change
//! them (x-death on dead-lettered messages, the direct reply-to address,
//! `x-stream-offset`) is one field spliced, the rest copied byte for byte.

use bytes::{BufMut, Bytes, BytesMut};
use ferry_core::messaging::{Death, DeathReason, FieldValue, field_table};

use crate::table::{self, Reader, TableError};

// Field indexes, in wire order; flag bit of field i is 1 << (15 - i). All
// are listed, used or not: together they document the layout.
#[allow(dead_code)]
pub const CONTENT_TYPE: usize = 0;
#[allow(dead_code)]
pub const CONTENT_ENCODING: usize = 1;
pub const HEADERS: usize = 2;
pub const DELIVERY_MODE: usize = 3;
pub const PRIORITY: usize = 4;
#[allow(dead_code)]
pub const CORRELATION_ID: usize = 5;
pub const REPLY_TO: usize = 6;
pub const EXPIRATION: usize = 7;
#[allow(dead_code)]
pub const MESSAGE_ID: usize = 8;
#[allow(dead_code)]
pub const TIMESTAMP: usize = 9;
#[allow(dead_code)]
pub const TYPE: usize = 10;
pub const USER_ID: usize = 11;
#[allow(dead_code)]
pub const APP_ID: usize = 12;
#[allow(dead_code)]
pub const CLUSTER_ID: usize = 13;
const FIELDS: usize = 14;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    ShortStr,
    Table,
    Octet,
    Timestamp,
}

const KINDS: [Kind; FIELDS] = [
    Kind::ShortStr,
    Kind::ShortStr,
    Kind::Table,
    Kind::Octet,
    Kind::Octet,
    Kind::ShortStr,
    Kind::ShortStr,
    Kind::ShortStr,
    Kind::ShortStr,
    Kind::Timestamp,
    Kind::ShortStr,
    Kind::ShortStr,
    Kind::ShortStr,
    Kind::ShortStr,
];

/// Properties parsed in place: where each present field sits in `raw`.
#[derive(Debug, Clone)]
pub struct Props {
    pub raw: Bytes,
    flags: u16,
    spans: [Option<(usize, usize)>; FIELDS],
    /// The headers table, decoded (empty when absent).
    pub headers: Vec<(String, FieldValue)>,
}

impl Props {
    /// Parses the property flags and list of a basic-class content header.
    pub fn parse(raw: Bytes) -> Result<Props, TableError> {
        let mut r = Reader::new(&raw);
        let flags = r.u16()?;
        let mut spans = [None; FIELDS];
        let mut headers = Vec::new();
        for (i, kind) in KINDS.iter().enumerate() {
            if flags & (1 << (15 - i)) == 0 {
                continue;
            }
            let start = r.pos;
            match kind {
                Kind::ShortStr => {
                    r.short_str()?;
                }
                Kind::Table => headers = table::read_table(&mut r)?,
                Kind::Octet => {
                    r.u8()?;
                }
                Kind::Timestamp => {
                    r.u64()?;
                }
            }
            spans[i] = Some((start, r.pos));
        }
        Ok(Props {
            raw,
            flags,
            spans,
            headers,
        })
    }

    pub fn empty() -> Props {
        Props {
            raw: Bytes::from_static(&[0, 0]),
            flags: 0,
            spans: [None; FIELDS],
            headers: Vec::new(),
        }
    }

    fn field(&self, i: usize) -> Option<&[u8]> {
        self.spans[i].map(|(s, e)| &self.raw[s..e])
    }

    /// A short-string field's bytes (without its length byte).
    pub fn short_str(&self, i: usize) -> Option<&[u8]> {
        self.field(i).map(|f| &f[1..])
    }

    pub fn octet(&self, i: usize) -> Option<u8> {
        self.field(i).map(|f| f[0])
    }

    pub fn delivery_mode(&self) -> Option<u8> {
        self.octet(DELIVERY_MODE)
    }

    pub fn priority(&self) -> Option<u8> {
        self.octet(PRIORITY)
    }

    /// Replaces (or adds, or with `None` removes) one field's encoded bytes,
    /// copying every other byte as it was.
    pub fn with_field(&self, i: usize, encoded: Option<&[u8]>) -> Bytes {
        let insert_at = match self.spans[i] {
            Some((s, _)) => s,
            None => self.spans[..i]
                .iter()
                .rev()
                .flatten()
                .map(|&(_, e)| e)
                .next()
                .unwrap_or(2),
        };
        let resume_at = self.spans[i].map(|(_, e)| e).unwrap_or(insert_at);
        let bit = 1u16 << (15 - i);
        let flags = if encoded.is_some() {
            self.flags | bit
        } else {
            self.flags & !bit
        };
        let mut out = BytesMut::with_capacity(self.raw.len() + encoded.map_or(0, <[u8]>::len));
        out.put_u16(flags);
        out.put_slice(&self.raw[2..insert_at]);
        if let Some(e) = encoded {
            out.put_slice(e);
        }
        out.put_slice(&self.raw[resume_at..]);
        out.freeze()
    }

    /// The properties with `headers` as the headers table.
    pub fn with_headers(&self, headers: &[(String, FieldValue)]) -> Bytes {
        let mut t = BytesMut::new();
        field_table::write_table(&mut t, headers);
        self.with_field(HEADERS, Some(&t))
    }

    pub fn with_short_str(&self, i: usize, value: &[u8]) -> Bytes {
        let mut t = BytesMut::new();
        field_table::write_short_str(&mut t, value);
        self.with_field(i, Some(&t))
    }
}

/// Parses the `expiration` property as RabbitMQ does: a non-negative
/// integer of milliseconds. The error is RabbitMQ's reply text after
/// "PRECONDITION_FAILED - ".
pub fn parse_expiration(raw: &[u8]) -> Result<u64, String> {
    let s = String::from_utf8_lossy(raw);
    let digits_end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '-' || c == '+'))))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(digits_end);
    let Ok(n) = num.parse::<i64>() else {
        return Err(format!("invalid expiration '{s}': no_integer"));
    };
    if !rest.is_empty() {
        return Err(format!(
            "invalid expiration '{s}': {{leftover_string,\"{rest}\"}}"
        ));
    }
    if n < 0 {
        return Err(format!("invalid expiration '{s}': {{value_negative,{n}}}"));
    }
    Ok(n as u64)
}

pub fn reason_name(r: DeathReason) -> &'static str {
    match r {
        DeathReason::Rejected => "rejected",
        DeathReason::Expired => "expired",
        DeathReason::Maxlen => "maxlen",
        DeathReason::DeliveryLimit => "delivery_limit",
    }
}

fn reason_from(s: &str) -> Option<DeathReason> {
    Some(match s {
        "rejected" => DeathReason::Rejected,
        "expired" => DeathReason::Expired,
        "maxlen" => DeathReason::Maxlen,
        "delivery_limit" => DeathReason::DeliveryLimit,
        _ => return None,
    })
}

/// One x-death table, in RabbitMQ's field order.
fn death_table(d: &Death) -> FieldValue {
    let mut t = vec![
        ("count".to_string(), FieldValue::Int(d.count as i64)),
        (
            "reason".to_string(),
            table::str_value(reason_name(d.reason)),
        ),
        ("queue".to_string(), table::str_value(&d.queue)),
        ("time".to_string(), FieldValue::Timestamp(d.time_s)),
        ("exchange".to_string(), table::str_value(&d.exchange)),
        (
            "routing-keys".to_string(),
            FieldValue::Array(d.routing_keys.iter().map(|k| table::str_value(k)).collect()),
        ),
    ];
    if let Some(e) = &d.original_expiration {
        t.push(("original-expiration".to_string(), table::str_value(e)));
    }
    FieldValue::Table(t)
}

/// Headers with `x-death` (and `x-first-death-*`, `x-last-death-*`) set from
/// `deaths` (newest first), as RabbitMQ writes them.
pub fn headers_with_deaths(
    headers: &[(String, FieldValue)],
    deaths: &[Death],
) -> Vec<(String, FieldValue)> {
    let has_first = headers.iter().any(|(k, _)| k == "x-first-death-reason");
    let mut out: Vec<(String, FieldValue)> = headers
        .iter()
        .filter(|(k, _)| k != "x-death" && !k.starts_with("x-last-death-"))
        .cloned()
        .collect();
    if let (false, Some(first)) = (has_first, deaths.last()) {
        out.push((
            "x-first-death-exchange".into(),
            table::str_value(&first.exchange),
        ));
        out.push(("x-first-death-queue".into(), table::str_value(&first.queue)));
        out.push((
            "x-first-death-reason".into(),
            table::str_value(reason_name(first.reason)),
        ));
    }
    if let Some(last) = deaths.first() {
        out.push((
            "x-last-death-exchange".into(),
            table::str_value(&last.exchange),
        ));
        out.push(("x-last-death-queue".into(), table::str_value(&last.queue)));
        out.push((
            "x-last-death-reason".into(),
            table::str_value(reason_name(last.reason)),
        ));
    }
    out.push((
        "x-death".into(),
        FieldValue::Array(deaths.iter().map(death_table).collect()),
    ));
    out
}

/// The dead-letter history a publisher's `x-death` header carries (a client
/// moving a dead-lettered message back), newest first.
pub fn deaths_from_headers(headers: &[(String, FieldValue)]) -> Vec<Death> {
    let Some(FieldValue::Array(items)) = table::lookup(headers, "x-death") else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let FieldValue::Table(t) = item else {
                return None;
            };
            let s = |k: &str| table::lookup(t, k).and_then(table::as_str);
            Some(Death {
                queue: s("queue")?,
                reason: reason_from(&s("reason")?)?,
                count: match table::lookup(t, "count") {
                    Some(FieldValue::Int(n)) if *n > 0 => *n as u64,
                    _ => 1,
                },
                exchange: s("exchange").unwrap_or_default(),
                routing_keys: match table::lookup(t, "routing-keys") {
                    Some(FieldValue::Array(keys)) => {
                        keys.iter().filter_map(table::as_str).collect()
                    }
                    _ => Vec::new(),
                },
                time_s: match table::lookup(t, "time") {
                    Some(FieldValue::Timestamp(ts)) => *ts,
                    Some(FieldValue::Int(n)) if *n >= 0 => *n as u64,
                    _ => 0,
                },
                original_expiration: s("original-expiration"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Bytes {
        // content-type "text/plain", headers {a: S "b"}, delivery-mode 2,
        // reply-to "r", timestamp 5, app-id "app".
        let mut out = BytesMut::new();
        let flags: u16 = (1 << 15) | (1 << 13) | (1 << 12) | (1 << 9) | (1 << 6) | (1 << 3);
        out.put_u16(flags);
        field_table::write_short_str(&mut out, b"text/plain");
        field_table::write_table(&mut out, &[("a".into(), table::str_value("b"))]);
        out.put_u8(2);
        field_table::write_short_str(&mut out, b"r");
        out.put_u64(5);
        field_table::write_short_str(&mut out, b"app");
        out.freeze()
    }

    #[test]
    fn parses_fields_in_place() {
        let p = Props::parse(sample()).unwrap();
        assert_eq!(p.short_str(CONTENT_TYPE), Some(&b"text/plain"[..]));
        assert_eq!(p.delivery_mode(), Some(2));
        assert_eq!(p.priority(), None);
        assert_eq!(p.short_str(REPLY_TO), Some(&b"r"[..]));
        assert_eq!(p.short_str(APP_ID), Some(&b"app"[..]));
        assert_eq!(p.headers, vec![("a".into(), table::str_value("b"))]);
    }

    #[test]
    fn splicing_keeps_every_other_byte() {
        let raw = sample();
        let p = Props::parse(raw.clone()).unwrap();
        // Same value back: identical bytes.
        assert_eq!(p.with_short_str(REPLY_TO, b"r"), raw);
        assert_eq!(p.with_headers(&p.headers), raw);
        let changed = Props::parse(p.with_short_str(REPLY_TO, b"amq.rabbitmq.reply-to.x")).unwrap();
        assert_eq!(
            changed.short_str(REPLY_TO),
            Some(&b"amq.rabbitmq.reply-to.x"[..])
        );
        assert_eq!(changed.short_str(APP_ID), Some(&b"app"[..]));
        assert_eq!(changed.delivery_mode(), Some(2));
        // Adding a field that was absent (priority) and removing one.
        let with_prio = Props::parse(p.with_field(PRIORITY, Some(&[7]))).unwrap();
        assert_eq!(with_prio.priority(), Some(7));
        assert_eq!(with_prio.short_str(REPLY_TO), Some(&b"r"[..]));
        let without = Props::parse(p.with_field(HEADERS, None)).unwrap();
        assert!(without.headers.is_empty());
        assert_eq!(without.short_str(CONTENT_TYPE), Some(&b"text/plain"[..]));
        // Headers added to empty properties.
        let e = Props::empty();
        let h = Props::parse(e.with_headers(&[("k".into(), FieldValue::Int(1))])).unwrap();
        assert_eq!(h.headers, vec![("k".into(), FieldValue::Int(1))]);
    }

    #[test]
    fn truncated_properties_are_errors() {
        let raw = sample();
        for cut in 0..raw.len() {
            assert!(Props::parse(raw.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn expiration_as_rabbitmq_parses_it() {
        assert_eq!(parse_expiration(b"60000"), Ok(60000));
        assert_eq!(parse_expiration(b"0"), Ok(0));
        assert_eq!(
            parse_expiration(b"abc"),
            Err("invalid expiration 'abc': no_integer".into())
        );
        assert_eq!(
            parse_expiration(b"-1"),
            Err("invalid expiration '-1': {value_negative,-1}".into())
        );
        assert_eq!(
            parse_expiration(b"10s"),
            Err("invalid expiration '10s': {leftover_string,\"s\"}".into())
        );
    }

    #[test]
    fn x_death_roundtrip() {
        let deaths = vec![
            Death {
                queue: "work".into(),
                reason: DeathReason::Rejected,
                count: 3,
                exchange: "".into(),
                routing_keys: vec!["work".into()],
                time_s: 1_700_000_000,
                original_expiration: None,
            },
            Death {
                queue: "delay".into(),
                reason: DeathReason::Expired,
                count: 1,
                exchange: "x".into(),
                routing_keys: vec!["a".into(), "b".into()],
                time_s: 1_600_000_000,
                original_expiration: Some("100".into()),
            },
        ];
        let h = headers_with_deaths(&[("keep".into(), FieldValue::Int(1))], &deaths);
        assert_eq!(h[0].0, "keep");
        assert_eq!(
            table::lookup(&h, "x-first-death-queue"),
            Some(&table::str_value("delay"))
        );
        assert_eq!(
            table::lookup(&h, "x-last-death-reason"),
            Some(&table::str_value("rejected"))
        );
        assert_eq!(deaths_from_headers(&h), deaths);
        // Rendering again replaces x-death rather than adding a second one.
        let again = headers_with_deaths(&h, &deaths[..1]);
        assert_eq!(again.iter().filter(|(k, _)| k == "x-death").count(), 1);
        assert_eq!(
            table::lookup(&again, "x-first-death-queue"),
            Some(&table::str_value("delay"))
        );
    }

    mod properties {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;
        use crate::table::tests::properties::table;

        /// One value per field, of the field's kind; `None` leaves it out.
        #[derive(Debug, Clone)]
        enum Value {
            ShortStr(Vec<u8>),
            Table(Vec<(String, FieldValue)>),
            Octet(u8),
            Timestamp(u64),
        }

        fn value(kind: Kind) -> BoxedStrategy<Value> {
            match kind {
                Kind::ShortStr => vec(any::<u8>(), 0..=255).prop_map(Value::ShortStr).boxed(),
                Kind::Table => table().prop_map(Value::Table).boxed(),
                Kind::Octet => any::<u8>().prop_map(Value::Octet).boxed(),
                Kind::Timestamp => any::<u64>().prop_map(Value::Timestamp).boxed(),
            }
        }

        fn encode(v: &Value) -> Vec<u8> {
            let mut out = BytesMut::new();
            match v {
                Value::ShortStr(s) => field_table::write_short_str(&mut out, s),
                Value::Table(t) => field_table::write_table(&mut out, t),
                Value::Octet(o) => out.put_u8(*o),
                Value::Timestamp(t) => out.put_u64(*t),
            }
            out.to_vec()
        }

        /// Every field present or not, and the order `with_field` sets them in.
        fn fields() -> impl Strategy<Value = (Vec<Option<Value>>, Vec<usize>)> {
            let fields: Vec<_> = KINDS
                .iter()
                .map(|&k| proptest::option::of(value(k)))
                .collect();
            (fields, Just((0..FIELDS).collect::<Vec<_>>()).prop_shuffle())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            /// Properties set one field at a time, in any order, parse back
            /// to exactly those fields.
            #[test]
            fn fields_set_in_any_order_parse_back((values, order) in fields()) {
                let mut props = Props::empty();
                for &i in &order {
                    let encoded = values[i].as_ref().map(encode);
                    props = Props::parse(props.with_field(i, encoded.as_deref())).unwrap();
                }
                for (i, v) in values.iter().enumerate() {
                    let want = v.as_ref().map(encode);
                    prop_assert_eq!(props.field(i), want.as_deref(), "field {}", i);
                }
                let headers = match &values[HEADERS] {
                    Some(Value::Table(t)) => t.clone(),
                    _ => Vec::new(),
                };
                prop_assert_eq!(&props.headers, &headers);
                if let Some(Value::ShortStr(s)) = &values[CONTENT_TYPE] {
                    prop_assert_eq!(props.short_str(CONTENT_TYPE), Some(&s[..]));
                }
            }
        }
    }
}
