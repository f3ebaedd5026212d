//! Field values as stored: a compact binary form for message headers inside
//! records (cheap to decode on every delivery), a JSON-friendly mirror for
//! the catalog journal, and the way RabbitMQ prints values in its
//! "inequivalent arg" errors.

use bytes::{Buf, Bytes};
use serde::{Deserialize, Serialize};

use super::FieldValue;

/// Nesting of tables and arrays accepted when decoding: a bound on recursion
/// that corrupt bytes could otherwise drive.
const NESTING_MAX: usize = 32;

// Type tags of the binary form.
const T_BOOL_FALSE: u8 = 0;
const T_BOOL_TRUE: u8 = 1;
const T_INT: u8 = 2;
const T_FLOAT: u8 = 3;
const T_STR: u8 = 4;
const T_TABLE: u8 = 5;
const T_ARRAY: u8 = 6;
const T_TIMESTAMP: u8 = 7;
const T_VOID: u8 = 8;
const T_OTHER: u8 = 9;

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_ivarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A reader over the binary form; every method fails on truncation rather
/// than panicking.
#[derive(Debug)]
pub(crate) struct Reader {
    pub buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    // Reading moves the start of `buf` (`Buf::advance`); re-slicing instead
    // would clone and drop the shared buffer, two atomic operations per byte.
    pub fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.first()?;
        self.buf.advance(1);
        Some(b)
    }

    pub fn uvarint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    pub fn ivarint(&mut self) -> Option<i64> {
        let z = self.uvarint()?;
        Some(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    pub fn bytes(&mut self) -> Option<Bytes> {
        let len = usize::try_from(self.uvarint()?).ok()?;
        if len > self.buf.len() {
            return None;
        }
        Some(self.buf.split_to(len))
    }

    pub fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

pub(crate) fn encode_value(out: &mut Vec<u8>, v: &FieldValue) {
    match v {
        FieldValue::Bool(false) => out.push(T_BOOL_FALSE),
        FieldValue::Bool(true) => out.push(T_BOOL_TRUE),
        FieldValue::Int(i) => {
            out.push(T_INT);
            put_ivarint(out, *i);
        }
        FieldValue::Float(f) => {
            out.push(T_FLOAT);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        FieldValue::Str(s) => {
            out.push(T_STR);
            put_bytes(out, s);
        }
        FieldValue::Table(t) => {
            out.push(T_TABLE);
            encode_table(out, t);
        }
        FieldValue::Array(a) => {
            out.push(T_ARRAY);
            put_uvarint(out, a.len() as u64);
            for v in a {
                encode_value(out, v);
            }
        }
        FieldValue::Timestamp(t) => {
            out.push(T_TIMESTAMP);
            put_uvarint(out, *t);
        }
        FieldValue::Void => out.push(T_VOID),
        FieldValue::Other(b) => {
            out.push(T_OTHER);
            put_bytes(out, b);
        }
    }
}

pub(crate) fn encode_table(out: &mut Vec<u8>, t: &[(String, FieldValue)]) {
    put_uvarint(out, t.len() as u64);
    for (k, v) in t {
        put_bytes(out, k.as_bytes());
        encode_value(out, v);
    }
}

fn decode_value_at(r: &mut Reader, depth: usize) -> Option<FieldValue> {
    if depth > NESTING_MAX {
        return None;
    }
    Some(match r.u8()? {
        T_BOOL_FALSE => FieldValue::Bool(false),
        T_BOOL_TRUE => FieldValue::Bool(true),
        T_INT => FieldValue::Int(r.ivarint()?),
        T_FLOAT => {
            if r.buf.len() < 8 {
                return None;
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&r.buf[..8]);
            r.buf.advance(8);
            FieldValue::Float(f64::from_bits(u64::from_le_bytes(a)))
        }
        T_STR => FieldValue::Str(r.bytes()?),
        T_TABLE => FieldValue::Table(decode_table_at(r, depth + 1)?),
        T_ARRAY => {
            let n = usize::try_from(r.uvarint()?).ok()?;
            // Every value takes at least one byte.
            if n > r.buf.len() {
                return None;
            }
            let mut a = Vec::with_capacity(n);
            for _ in 0..n {
                a.push(decode_value_at(r, depth + 1)?);
            }
            FieldValue::Array(a)
        }
        T_TIMESTAMP => FieldValue::Timestamp(r.uvarint()?),
        T_VOID => FieldValue::Void,
        T_OTHER => FieldValue::Other(r.bytes()?),
        _ => return None,
    })
}

fn decode_table_at(r: &mut Reader, depth: usize) -> Option<Vec<(String, FieldValue)>> {
    let n = usize::try_from(r.uvarint()?).ok()?;
    if n > r.buf.len() {
        return None;
    }
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.string()?;
        let v = decode_value_at(r, depth)?;
        t.push((k, v));
    }
    Some(t)
}

pub(crate) fn decode_table(r: &mut Reader) -> Option<Vec<(String, FieldValue)>> {
    decode_table_at(r, 0)
}

/// The catalog's JSON form of a field value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StoredValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    Table(Vec<(String, StoredValue)>),
    Array(Vec<StoredValue>),
    Timestamp(u64),
    Void,
    Other(Vec<u8>),
}

impl From<&FieldValue> for StoredValue {
    fn from(v: &FieldValue) -> Self {
        match v {
            FieldValue::Bool(b) => StoredValue::Bool(*b),
            FieldValue::Int(i) => StoredValue::Int(*i),
            FieldValue::Float(f) => StoredValue::Float(*f),
            FieldValue::Str(s) => StoredValue::Str(s.to_vec()),
            FieldValue::Table(t) => StoredValue::Table(to_stored(t)),
            FieldValue::Array(a) => StoredValue::Array(a.iter().map(StoredValue::from).collect()),
            FieldValue::Timestamp(t) => StoredValue::Timestamp(*t),
            FieldValue::Void => StoredValue::Void,
            FieldValue::Other(b) => StoredValue::Other(b.to_vec()),
        }
    }
}

impl From<&StoredValue> for FieldValue {
    fn from(v: &StoredValue) -> Self {
        match v {
            StoredValue::Bool(b) => FieldValue::Bool(*b),
            StoredValue::Int(i) => FieldValue::Int(*i),
            StoredValue::Float(f) => FieldValue::Float(*f),
            StoredValue::Str(s) => FieldValue::Str(Bytes::from(s.clone())),
            StoredValue::Table(t) => FieldValue::Table(from_stored(t)),
            StoredValue::Array(a) => FieldValue::Array(a.iter().map(FieldValue::from).collect()),
            StoredValue::Timestamp(t) => FieldValue::Timestamp(*t),
            StoredValue::Void => FieldValue::Void,
            StoredValue::Other(b) => FieldValue::Other(Bytes::from(b.clone())),
        }
    }
}

pub(crate) fn to_stored(args: &[(String, FieldValue)]) -> Vec<(String, StoredValue)> {
    args.iter()
        .map(|(k, v)| (k.clone(), StoredValue::from(v)))
        .collect()
}

pub(crate) fn from_stored(args: &[(String, StoredValue)]) -> Vec<(String, FieldValue)> {
    args.iter()
        .map(|(k, v)| (k.clone(), FieldValue::from(v)))
        .collect()
}

/// RabbitMQ's name for a value's type, as its errors print it.
pub(crate) fn type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Bool(_) => "bool",
        FieldValue::Int(i) if i32::try_from(*i).is_ok() => "signedint",
        FieldValue::Int(_) => "long",
        FieldValue::Float(_) => "double",
        FieldValue::Str(_) => "longstr",
        FieldValue::Table(_) => "table",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Void => "void",
        FieldValue::Other(_) => "binary",
    }
}

/// A value as Erlang's `~tp`/`~ts` would print it, near enough.
pub(crate) fn display(v: &FieldValue) -> String {
    match v {
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::Int(i) => i.to_string(),
        FieldValue::Float(f) => f.to_string(),
        FieldValue::Str(s) => String::from_utf8_lossy(s).into_owned(),
        FieldValue::Table(_) | FieldValue::Array(_) => "[...]".to_string(),
        FieldValue::Timestamp(t) => t.to_string(),
        FieldValue::Void => "undefined".to_string(),
        FieldValue::Other(b) => format!("<<{} bytes>>", b.len()),
    }
}

/// Equality as RabbitMQ's argument equivalence sees it: integers of any width
/// are one class (here one variant already), floats another.
pub(crate) fn equivalent(a: &FieldValue, b: &FieldValue) -> bool {
    a == b
}

/// The integer in a value, if it holds one.
pub(crate) fn as_int(v: &FieldValue) -> Option<i64> {
    match v {
        FieldValue::Int(i) => Some(*i),
        _ => None,
    }
}

pub(crate) fn as_str(v: &FieldValue) -> Option<&[u8]> {
    match v {
        FieldValue::Str(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(String, FieldValue)> {
        vec![
            ("b".into(), FieldValue::Bool(true)),
            ("i".into(), FieldValue::Int(-5_000_000_000)),
            ("f".into(), FieldValue::Float(1.5)),
            ("s".into(), FieldValue::Str(Bytes::from_static(b"\xffbin"))),
            (
                "t".into(),
                FieldValue::Table(vec![("n".into(), FieldValue::Void)]),
            ),
            (
                "a".into(),
                FieldValue::Array(vec![FieldValue::Int(1), FieldValue::Timestamp(9)]),
            ),
            ("o".into(), FieldValue::Other(Bytes::from_static(b"x"))),
        ]
    }

    #[test]
    fn binary_form_round_trips() {
        let t = sample();
        let mut out = Vec::new();
        encode_table(&mut out, &t);
        let back = decode_table(&mut Reader::new(Bytes::from(out.clone()))).unwrap();
        assert_eq!(back, t);
        for cut in 0..out.len() {
            assert!(decode_table(&mut Reader::new(Bytes::copy_from_slice(&out[..cut]))).is_none());
        }
    }

    #[test]
    fn stored_form_round_trips_through_json() {
        let t = sample();
        let json = serde_json::to_string(&to_stored(&t)).unwrap();
        let back: Vec<(String, StoredValue)> = serde_json::from_str(&json).unwrap();
        assert_eq!(from_stored(&back), t);
    }
}
