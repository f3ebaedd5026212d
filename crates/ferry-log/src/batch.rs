//! The Kafka RecordBatch v2 header: parsing, validation and the two fields the
//! broker writes (base offset and partition leader epoch).
//!
//! Layout (big-endian), from Kafka's `DefaultRecordBatch`:
//!
//! ```text
//!  0 baseOffset i64         8 batchLength i32       12 partitionLeaderEpoch i32
//! 16 magic i8              17 crc u32 (CRC-32C of bytes 21..end)
//! 21 attributes i16        23 lastOffsetDelta i32   27 baseTimestamp i64
//! 35 maxTimestamp i64      43 producerId i64        51 producerEpoch i16
//! 53 baseSequence i32      57 recordsCount i32      61 records...
//! ```
//!
//! Only the header is read on the hot path; records stay opaque (and possibly
//! compressed) bytes.

use thiserror::Error;

/// Bytes before the first record.
pub const HEADER_BYTES: usize = 61;
/// `baseOffset` + `batchLength`: the part of the header not counted by `batchLength`.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The smallest value `batchLength` can hold: a header with no records.
const BATCH_LENGTH_MIN: i32 = (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;
/// Where the bytes covered by the CRC start.
const CRC_START: usize = 21;
const MAGIC_V2: i8 = 2;
/// The highest compression codec Kafka defines (zstd).
const COMPRESSION_CODEC_MAX: u8 = 4;
const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("no record batch in the request")]
    Empty,
    #[error("record batch truncated: {needed} bytes needed, {available} present")]
    Truncated { needed: usize, available: usize },
    #[error("record batch length {0} is smaller than a batch header")]
    LengthTooSmall(i32),
    #[error("record batch magic {0} is not supported (only v2)")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record batch of {size} bytes exceeds max.message.bytes = {max}")]
    TooLarge { size: usize, max: usize },
    #[error("record batch compression codec {0} is unknown")]
    UnsupportedCompression(u8),
    #[error("record batch claims {records_count} records but lastOffsetDelta {last_offset_delta}")]
    InvalidRecordCount {
        records_count: i32,
        last_offset_delta: i32,
    },
    #[error("control batches may not be produced by clients")]
    ControlBatch,
    #[error("record batch of producer {producer_id} has invalid sequence number {base_sequence}")]
    InvalidSequence {
        producer_id: i64,
        base_sequence: i32,
    },
}

/// The decoded 61-byte header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Decodes the header at the start of `buf`. Checks only that the header is
    /// present and its length field is sane; see [`check_crc`] for the rest.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed: HEADER_BYTES,
                available: buf.len(),
            });
        }
        let batch_length = be_i32(buf, 8);
        if batch_length < BATCH_LENGTH_MIN {
            return Err(BatchError::LengthTooSmall(batch_length));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length,
            partition_leader_epoch: be_i32(buf, 12),
            magic: buf[16] as i8,
            crc: u32::from_be_bytes([buf[17], buf[18], buf[19], buf[20]]),
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            records_count: be_i32(buf, 57),
        })
    }

    /// Size of the whole batch on disk, header included.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD_BYTES
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        (self.attributes & ATTR_COMPRESSION_MASK) as u8
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Checks that `batch` (exactly one whole batch) is a v2 batch whose CRC-32C
/// matches its contents. This is what recovery applies to stored batches.
pub fn check_crc(header: &BatchHeader, batch: &[u8]) -> Result<(), BatchError> {
    if header.magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(header.magic));
    }
    let computed = crc32c::crc32c(&batch[CRC_START..header.total_len()]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// Splits the `records` field of a produce request into its batches and
/// validates each as Kafka's broker does before appending: whole, v2, CRC
/// intact, at most `max_batch_bytes`, a known codec, a record count that
/// matches `lastOffsetDelta`, not a control batch, and a sequence number if
/// it has a producer id.
pub fn validate_for_append(
    records: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<BatchHeader>, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut headers = Vec::new();
    let mut rest = records;
    while !rest.is_empty() {
        let header = BatchHeader::parse(rest)?;
        let size = header.total_len();
        if size > max_batch_bytes {
            return Err(BatchError::TooLarge {
                size,
                max: max_batch_bytes,
            });
        }
        if size > rest.len() {
            return Err(BatchError::Truncated {
                needed: size,
                available: rest.len(),
            });
        }
        check_crc(&header, &rest[..size])?;
        if header.compression() > COMPRESSION_CODEC_MAX {
            return Err(BatchError::UnsupportedCompression(header.compression()));
        }
        if header.records_count < 1 || header.last_offset_delta != header.records_count - 1 {
            return Err(BatchError::InvalidRecordCount {
                records_count: header.records_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        if header.is_control() {
            return Err(BatchError::ControlBatch);
        }
        // Kafka's LogValidator: a producer id without a sequence number.
        if header.producer_id >= 0 && header.base_sequence < 0 {
            return Err(BatchError::InvalidSequence {
                producer_id: header.producer_id,
                base_sequence: header.base_sequence,
            });
        }
        headers.push(header);
        rest = &rest[size..];
    }
    Ok(headers)
}

/// Writes the broker-assigned fields into a batch. Neither is covered by the
/// CRC, so the batch stays valid without recomputing it.
pub fn assign(batch: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&partition_leader_epoch.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal valid uncompressed batch of `count` empty-keyed records
    /// with the given value bytes; enough for storage tests, which never look
    /// inside records.
    pub(crate) fn make_batch(count: i32, base_timestamp: i64, payload: &[u8]) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..count {
            // Record: length varint, attributes i8, timestampDelta varint,
            // offsetDelta varint, keyLength varint(-1), valueLength, value, headers varint(0).
            let mut body = vec![0u8];
            put_varint(&mut body, 0);
            put_varint(&mut body, i64::from(i));
            put_varint(&mut body, -1);
            put_varint(&mut body, payload.len() as i64);
            body.extend_from_slice(payload);
            put_varint(&mut body, 0);
            put_varint(&mut records, body.len() as i64);
            records.extend_from_slice(&body);
        }
        let mut b = vec![0u8; HEADER_BYTES];
        b.extend_from_slice(&records);
        let len = (b.len() - LOG_OVERHEAD_BYTES) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[16] = 2;
        b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        b[27..35].copy_from_slice(&base_timestamp.to_be_bytes());
        b[35..43].copy_from_slice(&base_timestamp.to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    #[test]
    fn valid_batch_round_trips_its_header() {
        let b = make_batch(3, 1_700_000_000_000, b"hello");
        let headers = validate_for_append(&b, 1 << 20).unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].records_count, 3);
        assert_eq!(headers[0].last_offset_delta, 2);
        assert_eq!(headers[0].total_len(), b.len());
        assert_eq!(headers[0].max_timestamp, 1_700_000_000_000);
    }

    #[test]
    fn assigned_offsets_keep_the_crc_valid() {
        let mut b = make_batch(2, 0, b"x");
        assign(&mut b, 4242, 7);
        let h = validate_for_append(&b, 1 << 20).unwrap()[0];
        assert_eq!(h.base_offset, 4242);
        assert_eq!(h.last_offset(), 4243);
        assert_eq!(h.partition_leader_epoch, 7);
    }

    #[test]
    fn every_flipped_bit_in_the_crc_range_is_caught() {
        let b = make_batch(2, 5, b"payload");
        for byte in CRC_START..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[byte] ^= 1 << bit;
                assert!(
                    validate_for_append(&c, 1 << 20).is_err(),
                    "flip at byte {byte} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn rejects_what_kafka_rejects() {
        let b = make_batch(1, 0, b"abc");
        assert_eq!(validate_for_append(&[], 100), Err(BatchError::Empty));
        assert!(matches!(
            validate_for_append(&b[..b.len() - 1], 1 << 20),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            validate_for_append(&b, b.len() - 1),
            Err(BatchError::TooLarge { .. })
        ));
        let mut magic = b.clone();
        magic[16] = 1;
        assert_eq!(
            validate_for_append(&magic, 1 << 20),
            Err(BatchError::UnsupportedMagic(1))
        );
        let mut short = b.clone();
        short[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert_eq!(
            validate_for_append(&short, 1 << 20),
            Err(BatchError::LengthTooSmall(10))
        );
    }

    #[test]
    fn several_batches_in_one_request_are_all_checked() {
        let mut two = make_batch(1, 0, b"a");
        two.extend(make_batch(4, 0, b"b"));
        let headers = validate_for_append(&two, 1 << 20).unwrap();
        assert_eq!(
            headers.iter().map(|h| h.records_count).collect::<Vec<_>>(),
            vec![1, 4]
        );
    }
}
