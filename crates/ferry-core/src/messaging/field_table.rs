//! AMQP 0-9-1 field tables as wire bytes, in RabbitMQ's dialect (`l` a
//! signed 64-bit integer, `x` a byte array). The AMQP front end writes its
//! frames with these, and the SQS front end the AMQP properties of the
//! messages it stores, so that AMQP consumers read SQS messages' attributes
//! as headers. Reading tables (with a bound on nesting) is the AMQP front
//! end's: only it takes tables from the wire.

use bytes::{BufMut, BytesMut};

use crate::messaging::FieldValue;

/// Writes a table with its 4-byte length.
pub fn write_table(out: &mut BytesMut, entries: &[(String, FieldValue)]) {
    let at = out.len();
    out.put_u32(0);
    for (k, v) in entries {
        write_short_str(out, k.as_bytes());
        write_value(out, v);
    }
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn write_short_str(out: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    out.put_u8(s.len() as u8);
    out.put_slice(s);
}

/// Writes one value. Integers as `l` (signed 64-bit, as RabbitMQ's `long`),
/// strings as `S`; `Other` bytes are written back as a byte array.
pub fn write_value(out: &mut BytesMut, v: &FieldValue) {
    match v {
        FieldValue::Bool(b) => {
            out.put_u8(b't');
            out.put_u8(u8::from(*b));
        }
        FieldValue::Int(i) => {
            out.put_u8(b'l');
            out.put_i64(*i);
        }
        FieldValue::Float(f) => {
            out.put_u8(b'd');
            out.put_f64(*f);
        }
        FieldValue::Str(s) => {
            out.put_u8(b'S');
            out.put_u32(s.len() as u32);
            out.put_slice(s);
        }
        FieldValue::Table(t) => {
            out.put_u8(b'F');
            write_table(out, t);
        }
        FieldValue::Array(items) => {
            out.put_u8(b'A');
            let at = out.len();
            out.put_u32(0);
            for item in items {
                write_value(out, item);
            }
            let len = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        FieldValue::Timestamp(t) => {
            out.put_u8(b'T');
            out.put_u64(*t);
        }
        FieldValue::Void => out.put_u8(b'V'),
        FieldValue::Other(b) => {
            out.put_u8(b'x');
            out.put_u32(b.len() as u32);
            out.put_slice(b);
        }
    }
}
