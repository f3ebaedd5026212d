//! Records inside a RecordBatch v2, for callers that write and read
//! individual records rather than whole producer batches (the queues of
//! `ferry-core`): [`build_batch`] frames records as an uncompressed batch
//! ready for [`crate::Log::append`], and [`decode_batch`] takes a stored batch
//! apart again.
//!
//! Uncompressed batches are decoded here without copying (keys, values and
//! header values are slices of the batch's `Bytes`); compressed ones, which
//! only Kafka producers write, go through the `kafka-protocol` decoder.
//!
//! Record layout (Kafka's `DefaultRecord`; varints are zig-zag):
//!
//! ```text
//! length varint, attributes i8, timestampDelta varlong, offsetDelta varint,
//! keyLength varint, key, valueLength varint, value,
//! headersCount varint, [headerKeyLength varint, headerKey, headerValueLength varint, headerValue]
//! ```

use bytes::{Buf, Bytes};
use kafka_protocol::records::RecordBatchDecoder;
use thiserror::Error;

use crate::batch::{BatchError, BatchHeader, HEADER_BYTES, LOG_OVERHEAD_BYTES};

/// Where the bytes covered by the CRC start.
const CRC_START: usize = 21;
/// Headers one record may carry when decoding: a bound on what a corrupt or
/// hostile length field can make us allocate.
const RECORD_HEADERS_MAX: usize = 4096;
/// The most bytes the records of one compressed batch may decompress to in
/// [`decode_batch`]: 128 MiB, the default `message_bytes_max` of AMQP (the
/// largest message the broker takes on any protocol) and 128 times the
/// default `max.message.bytes`, so far more than a producer's batch of real
/// data expands to. A batch that decompresses, or whose compressed data
/// claims to decompress, to more is refused as malformed before more than
/// about this much is allocated; before, a 471-byte batch made its reader
/// allocate 2.18 GB.
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 128 << 20;

/// One record to frame with [`build_batch`].
#[derive(Debug, Clone, Copy)]
pub struct RecordParts<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

/// One record taken out of a stored batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

impl StoredRecord {
    /// The value of the first header named `key`.
    pub fn header(&self, key: &[u8]) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|(k, _)| k.as_ref() == key)
            .and_then(|(_, v)| v.as_ref())
    }
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn varint_len(v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => put_varint(out, -1),
    }
}

fn bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        Some(b) => varint_len(b.len() as i64) + b.len(),
        None => 1,
    }
}

/// Frames `records` as one uncompressed v2 batch with every record stamped
/// `timestamp` (create time), no producer id, base offset 0 (the log assigns
/// it) and a valid CRC.
///
/// # Panics
/// If `records` is empty: a batch holds at least one record.
pub fn build_batch(timestamp: i64, records: &[RecordParts<'_>]) -> Vec<u8> {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let body_lens: Vec<usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            1 + varint_len(0)
                + varint_len(i as i64)
                + bytes_len(r.key)
                + bytes_len(r.value)
                + varint_len(r.headers.len() as i64)
                + r.headers
                    .iter()
                    .map(|(k, v)| bytes_len(Some(k)) + bytes_len(*v))
                    .sum::<usize>()
        })
        .collect();
    let total = HEADER_BYTES
        + body_lens
            .iter()
            .map(|l| varint_len(*l as i64) + l)
            .sum::<usize>();
    let mut b = Vec::with_capacity(total);
    b.resize(HEADER_BYTES, 0);
    for (i, (r, len)) in records.iter().zip(&body_lens).enumerate() {
        put_varint(&mut b, *len as i64);
        b.push(0); // attributes
        put_varint(&mut b, 0); // timestamp delta
        put_varint(&mut b, i as i64); // offset delta
        put_bytes(&mut b, r.key);
        put_bytes(&mut b, r.value);
        put_varint(&mut b, r.headers.len() as i64);
        for (k, v) in r.headers {
            put_bytes(&mut b, Some(k));
            put_bytes(&mut b, *v);
        }
    }
    debug_assert_eq!(b.len(), total);
    let count = records.len() as i32;
    let len = (b.len() - LOG_OVERHEAD_BYTES) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[16] = 2; // magic
    b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    b[27..35].copy_from_slice(&timestamp.to_be_bytes());
    b[35..43].copy_from_slice(&timestamp.to_be_bytes());
    b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    b[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

struct Cursor {
    buf: Bytes,
}

/// A stored batch whose records cannot be taken apart.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

fn malformed(what: &'static str) -> RecordError {
    RecordError::Malformed(what)
}

impl Cursor {
    fn varint(&mut self) -> Result<i64, RecordError> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            if !self.buf.has_remaining() {
                return Err(malformed("varint"));
            }
            let byte = self.buf.get_u8();
            z |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(malformed("varint too long"))
    }

    fn bytes(&mut self) -> Result<Option<Bytes>, RecordError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| malformed("length"))?;
        if len > self.buf.remaining() {
            return Err(malformed("field longer than its record"));
        }
        Ok(Some(self.buf.split_to(len)))
    }
}

/// Takes apart one stored batch (exactly one, as [`crate::Log::read`] returns
/// them back to back; see [`split_batches`]). The CRC is not checked again:
/// the log checked it on append and on recovery. A compressed batch may
/// decompress to at most [`DECOMPRESSED_BATCH_BYTES_MAX`].
pub fn decode_batch(batch: Bytes) -> Result<Vec<StoredRecord>, RecordError> {
    decode_batch_with_limit(batch, DECOMPRESSED_BATCH_BYTES_MAX)
}

/// [`decode_batch`] with a limit of its own on what a compressed batch's
/// records may decompress to: more is refused as malformed before more than
/// about `max_decompressed_bytes` is allocated.
pub fn decode_batch_with_limit(
    batch: Bytes,
    max_decompressed_bytes: usize,
) -> Result<Vec<StoredRecord>, RecordError> {
    let header = BatchHeader::parse(&batch)?;
    if header.total_len() > batch.len() {
        return Err(BatchError::Truncated {
            needed: header.total_len(),
            available: batch.len(),
        }
        .into());
    }
    if header.magic != 2 {
        return Err(BatchError::UnsupportedMagic(header.magic).into());
    }
    if header.compression() != 0 {
        let mut buf = batch.slice(..header.total_len());
        let set = RecordBatchDecoder::decode_with_limit(&mut buf, max_decompressed_bytes)
            .map_err(|_| malformed("compressed"))?;
        return Ok(set
            .records
            .into_iter()
            .filter(|r| !r.control)
            .map(|r| StoredRecord {
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (Bytes::from(k.to_string()), v))
                    .collect(),
            })
            .collect());
    }
    if header.is_control() {
        return Ok(Vec::new());
    }
    let count = usize::try_from(header.records_count).map_err(|_| malformed("count"))?;
    let mut cur = Cursor {
        buf: batch.slice(HEADER_BYTES..header.total_len()),
    };
    let mut out = Vec::with_capacity(count.min(cur.buf.len()));
    for _ in 0..count {
        let len = usize::try_from(cur.varint()?).map_err(|_| malformed("record length"))?;
        if len > cur.buf.remaining() {
            return Err(malformed("record longer than its batch"));
        }
        let mut rec = Cursor {
            buf: cur.buf.split_to(len),
        };
        if !rec.buf.has_remaining() {
            return Err(malformed("attributes"));
        }
        rec.buf.advance(1);
        let ts_delta = rec.varint()?;
        let offset_delta = rec.varint()?;
        let key = rec.bytes()?;
        let value = rec.bytes()?;
        let n_headers = usize::try_from(rec.varint()?).map_err(|_| malformed("headers"))?;
        if n_headers > RECORD_HEADERS_MAX {
            return Err(malformed("too many headers"));
        }
        let mut headers = Vec::with_capacity(n_headers);
        for _ in 0..n_headers {
            let k = rec.bytes()?.unwrap_or_default();
            let v = rec.bytes()?;
            headers.push((k, v));
        }
        let timestamp = if header.is_log_append_time() {
            header.max_timestamp
        } else {
            header.base_timestamp.wrapping_add(ts_delta)
        };
        out.push(StoredRecord {
            offset: header.base_offset.wrapping_add(offset_delta),
            timestamp,
            key,
            value,
            headers,
        });
    }
    Ok(out)
}

/// Splits the concatenated whole batches of a read into one `Bytes` each
/// (no copy), with the first and last offset of each.
pub fn split_batches(mut records: Bytes) -> Result<Vec<(i64, i64, Bytes)>, BatchError> {
    let mut out = Vec::new();
    while !records.is_empty() {
        let header = BatchHeader::parse(&records)?;
        let len = header.total_len();
        if len > records.len() {
            return Err(BatchError::Truncated {
                needed: len,
                available: records.len(),
            });
        }
        out.push((
            header.base_offset,
            header.last_offset(),
            records.split_to(len),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate_for_append;

    #[test]
    fn built_batches_validate_and_decode_back() {
        let headers: &[(&[u8], Option<&[u8]>)] = &[(b"h1", Some(b"v1")), (b"h2", None)];
        let recs = [
            RecordParts {
                key: Some(b"rk"),
                value: Some(b"body"),
                headers,
            },
            RecordParts {
                key: None,
                value: Some(b""),
                headers: &[],
            },
        ];
        let mut b = build_batch(1234, &recs);
        let h = validate_for_append(&b, 1 << 20).unwrap();
        assert_eq!(h[0].records_count, 2);
        crate::batch::assign(&mut b, 40, 0);
        let out = decode_batch(Bytes::from(b)).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].offset, 40);
        assert_eq!(out[0].timestamp, 1234);
        assert_eq!(out[0].key.as_deref(), Some(&b"rk"[..]));
        assert_eq!(out[0].value.as_deref(), Some(&b"body"[..]));
        assert_eq!(out[0].header(b"h1").map(|v| &v[..]), Some(&b"v1"[..]));
        assert_eq!(out[0].headers[1].1, None);
        assert_eq!(out[1].offset, 41);
        assert_eq!(out[1].key, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let b = build_batch(
            0,
            &[RecordParts {
                key: Some(b"k"),
                value: Some(b"v"),
                headers: &[],
            }],
        );
        for cut in 0..b.len() {
            let _ = decode_batch(Bytes::copy_from_slice(&b[..cut]));
        }
        let mut bad = b.clone();
        bad[HEADER_BYTES] = 0xff;
        let _ = decode_batch(Bytes::from(bad));
    }

    mod properties {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;

        type Bytes0 = Option<Vec<u8>>;
        type Record = (Bytes0, Bytes0, Vec<(Vec<u8>, Bytes0)>);
        /// A header as `RecordParts` and `StoredRecord` hold it, borrowed.
        type Header<'a> = (&'a [u8], Option<&'a [u8]>);

        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            vec(any::<u8>(), 0..300)
        }

        fn record() -> impl Strategy<Value = Record> {
            let opt = || proptest::option::of(bytes());
            (opt(), opt(), vec((bytes(), opt()), 0..4))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            /// A batch built from any records (keys, values and headers of
            /// any bytes, null or empty; lengths across varint widths)
            /// validates for an append and decodes back to those records.
            #[test]
            fn built_batches_validate_and_decode_back(
                timestamp in 0i64..=i64::MAX / 2,
                records in vec(record(), 1..20),
            ) {
                let headers: Vec<Vec<Header<'_>>> = records
                    .iter()
                    .map(|(_, _, h)| h.iter().map(|(k, v)| (&k[..], v.as_deref())).collect())
                    .collect();
                let parts: Vec<RecordParts<'_>> = records
                    .iter()
                    .zip(&headers)
                    .map(|((key, value, _), headers)| RecordParts {
                        key: key.as_deref(),
                        value: value.as_deref(),
                        headers,
                    })
                    .collect();
                let batch = build_batch(timestamp, &parts);
                let validated = validate_for_append(&batch, batch.len()).unwrap();
                prop_assert_eq!(validated.len(), 1);
                prop_assert_eq!(validated[0].records_count as usize, records.len());
                let decoded = decode_batch(Bytes::from(batch)).unwrap();
                prop_assert_eq!(decoded.len(), records.len());
                for (i, (got, (key, value, headers))) in decoded.iter().zip(&records).enumerate() {
                    prop_assert_eq!(got.offset, i as i64);
                    prop_assert_eq!(got.timestamp, timestamp);
                    prop_assert_eq!(got.key.as_deref(), key.as_deref());
                    prop_assert_eq!(got.value.as_deref(), value.as_deref());
                    let got_headers: Vec<Header<'_>> =
                        got.headers.iter().map(|(k, v)| (&k[..], v.as_deref())).collect();
                    let want: Vec<Header<'_>> =
                        headers.iter().map(|(k, v)| (&k[..], v.as_deref())).collect();
                    prop_assert_eq!(got_headers, want);
                }
            }
        }
    }
}
