//! AMQP field tables read straight from the wire into `messaging::FieldValue`,
//! keeping the order of entries and accepting non-UTF-8 strings (RabbitMQ
//! does), with a bound on nesting so that a hostile frame cannot exhaust the
//! stack. Also the few encoders the front end needs (x-death, server
//! properties).
//!
//! Type tags follow RabbitMQ's dialect, not the 0-9-1 errata: `s` is a
//! signed 16-bit integer, `l` a signed 64-bit one, `x` a byte array.

use bytes::Bytes;
use ferry_core::messaging::FieldValue;

/// Deepest nesting of tables and arrays accepted anywhere (x-death needs 3).
pub const TABLE_DEPTH_MAX: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("field table truncated")]
    Truncated,
    #[error("unknown field type '{0}'")]
    UnknownType(char),
    #[error("field tables nested deeper than {TABLE_DEPTH_MAX}")]
    TooDeep,
}

/// A cursor over a byte slice; every read is bounds-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], TableError> {
        if self.remaining() < n {
            return Err(TableError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, TableError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, TableError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, TableError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, TableError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub fn short_str(&mut self) -> Result<&'a [u8], TableError> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    pub fn long_str(&mut self) -> Result<&'a [u8], TableError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Reads a length-prefixed table.
pub fn read_table(r: &mut Reader<'_>) -> Result<Vec<(String, FieldValue)>, TableError> {
    read_table_at(r, 0)
}

fn read_table_at(
    r: &mut Reader<'_>,
    depth: usize,
) -> Result<Vec<(String, FieldValue)>, TableError> {
    if depth >= TABLE_DEPTH_MAX {
        return Err(TableError::TooDeep);
    }
    let body = r.long_str()?;
    parse_entries(body, depth)
}

/// Parses table entries with no length prefix (AMQPLAIN responses are that).
pub fn parse_entries(body: &[u8], depth: usize) -> Result<Vec<(String, FieldValue)>, TableError> {
    let mut inner = Reader::new(body);
    let mut out = Vec::new();
    while inner.remaining() > 0 {
        let key = String::from_utf8_lossy(inner.short_str()?).into_owned();
        let value = read_value(&mut inner, depth + 1)?;
        out.push((key, value));
    }
    Ok(out)
}

fn read_value(r: &mut Reader<'_>, depth: usize) -> Result<FieldValue, TableError> {
    let tag = r.u8()?;
    Ok(match tag {
        b't' => FieldValue::Bool(r.u8()? != 0),
        b'b' => FieldValue::Int(r.u8()? as i8 as i64),
        b'B' => FieldValue::Int(r.u8()? as i64),
        b's' | b'U' => FieldValue::Int(r.u16()? as i16 as i64),
        b'u' => FieldValue::Int(r.u16()? as i64),
        b'I' => FieldValue::Int(r.u32()? as i32 as i64),
        b'i' => FieldValue::Int(r.u32()? as i64),
        // RabbitMQ reads both as signed 64-bit.
        b'l' | b'L' => FieldValue::Int(r.u64()? as i64),
        b'f' => FieldValue::Float(f32::from_bits(r.u32()?) as f64),
        b'd' => FieldValue::Float(f64::from_bits(r.u64()?)),
        b'D' => FieldValue::Other(Bytes::copy_from_slice(r.take(5)?)),
        b'S' => FieldValue::Str(Bytes::copy_from_slice(r.long_str()?)),
        b'x' => FieldValue::Other(Bytes::copy_from_slice(r.long_str()?)),
        b'A' => {
            if depth >= TABLE_DEPTH_MAX {
                return Err(TableError::TooDeep);
            }
            let body = r.long_str()?;
            let mut inner = Reader::new(body);
            let mut items = Vec::new();
            while inner.remaining() > 0 {
                items.push(read_value(&mut inner, depth + 1)?);
            }
            FieldValue::Array(items)
        }
        b'T' => FieldValue::Timestamp(r.u64()?),
        b'F' => FieldValue::Table(read_table_at(r, depth)?),
        b'V' => FieldValue::Void,
        other => return Err(TableError::UnknownType(other as char)),
    })
}

/// A string value, if it is one.
pub fn as_str(v: &FieldValue) -> Option<String> {
    match v {
        FieldValue::Str(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

pub fn lookup<'a>(t: &'a [(String, FieldValue)], key: &str) -> Option<&'a FieldValue> {
    t.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

pub fn str_value(s: &str) -> FieldValue {
    FieldValue::Str(Bytes::copy_from_slice(s.as_bytes()))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::{BufMut, BytesMut};
    use ferry_core::messaging::field_table::{write_short_str, write_table};

    fn roundtrip(entries: Vec<(String, FieldValue)>) {
        let mut out = BytesMut::new();
        write_table(&mut out, &entries);
        let got = read_table(&mut Reader::new(&out)).unwrap();
        assert_eq!(got, entries);
    }

    #[test]
    fn tables_roundtrip_in_order() {
        roundtrip(vec![
            ("z".into(), FieldValue::Int(-5)),
            ("a".into(), str_value("hello")),
            ("t".into(), FieldValue::Bool(true)),
            (
                "nested".into(),
                FieldValue::Table(vec![(
                    "arr".into(),
                    FieldValue::Array(vec![FieldValue::Int(1), FieldValue::Timestamp(7)]),
                )]),
            ),
            ("v".into(), FieldValue::Void),
            ("d".into(), FieldValue::Float(1.5)),
        ]);
    }

    #[test]
    fn rabbit_integer_tags() {
        // b, B, s, u, I, i, l
        let mut out = BytesMut::new();
        out.put_u32(0);
        for (k, tag, bytes) in [
            ("b", b'b', vec![0xff]),
            ("B", b'B', vec![0xff]),
            ("s", b's', vec![0xff, 0xfe]),
            ("u", b'u', vec![0xff, 0xfe]),
            ("I", b'I', vec![0xff, 0xff, 0xff, 0xfe]),
            ("i", b'i', vec![0xff, 0xff, 0xff, 0xfe]),
        ] {
            write_short_str(&mut out, k.as_bytes());
            out.put_u8(tag);
            out.put_slice(&bytes);
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        let t = read_table(&mut Reader::new(&out)).unwrap();
        let ints: Vec<i64> = t
            .iter()
            .map(|(_, v)| match v {
                FieldValue::Int(i) => *i,
                _ => panic!(),
            })
            .collect();
        assert_eq!(ints, vec![-1, 255, -2, 65534, -2, 4294967294]);
    }

    #[test]
    fn hostile_tables_are_errors_not_panics() {
        // Length beyond the buffer.
        assert_eq!(
            read_table(&mut Reader::new(&[0, 0, 0, 9, 1, b'a'])),
            Err(TableError::Truncated)
        );
        // Unknown tag.
        assert_eq!(
            read_table(&mut Reader::new(&[0, 0, 0, 3, 1, b'a', b'?'])),
            Err(TableError::UnknownType('?'))
        );
        // Deep nesting: table { "a": F { "a": F ... } } 10_000 levels.
        let depth = 10_000;
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..depth {
            let mut t = vec![1, b'a', b'F'];
            t.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            t.extend_from_slice(&inner);
            inner = t;
        }
        let mut buf = (inner.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(&inner);
        assert_eq!(read_table(&mut Reader::new(&buf)), Err(TableError::TooDeep));
        // Arrays nest too.
        let mut arr: Vec<u8> = Vec::new();
        for _ in 0..depth {
            let mut a = vec![b'A'];
            a.extend_from_slice(&(arr.len() as u32).to_be_bytes());
            a.extend_from_slice(&arr);
            arr = a;
        }
        let mut t = vec![1, b'a'];
        t.extend_from_slice(&arr);
        let mut buf = (t.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(&t);
        assert_eq!(read_table(&mut Reader::new(&buf)), Err(TableError::TooDeep));
    }

    pub mod properties {
        use bytes::Bytes;
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;

        /// Keys as clients send them: short strings (at most 255 bytes).
        pub fn key() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9_.-]{0,64}"
        }

        /// Every value the codec writes, nested up to four levels. NaN is
        /// left out only because it is never equal to itself.
        pub fn field_value() -> impl Strategy<Value = FieldValue> {
            let bytes = || vec(any::<u8>(), 0..40).prop_map(Bytes::from);
            let leaf = prop_oneof![
                any::<bool>().prop_map(FieldValue::Bool),
                any::<i64>().prop_map(FieldValue::Int),
                any::<f64>()
                    .prop_filter("NaN != NaN", |f| !f.is_nan())
                    .prop_map(FieldValue::Float),
                bytes().prop_map(FieldValue::Str),
                any::<u64>().prop_map(FieldValue::Timestamp),
                Just(FieldValue::Void),
                bytes().prop_map(FieldValue::Other),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    vec(inner.clone(), 0..8).prop_map(FieldValue::Array),
                    vec((key(), inner), 0..8).prop_map(FieldValue::Table),
                ]
            })
        }

        pub fn table() -> impl Strategy<Value = Vec<(String, FieldValue)>> {
            vec((key(), field_value()), 0..8)
        }

        proptest! {
            #[test]
            fn tables_roundtrip(entries in table()) {
                let mut out = BytesMut::new();
                write_table(&mut out, &entries);
                let mut r = Reader::new(&out);
                prop_assert_eq!(read_table(&mut r), Ok(entries));
                prop_assert_eq!(r.remaining(), 0);
            }
        }
    }
}
