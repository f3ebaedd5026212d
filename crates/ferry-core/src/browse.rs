//! Reading a topic partition's records for operators (the admin API's
//! message browser): whole records out of the stored batches, at most a
//! given number, never past the high watermark.

use ferry_log::LogError;
use ferry_log::records::{RecordError, StoredRecord, decode_batch, split_batches};

use crate::{Broker, CoreError};

/// Bytes read from the log per step while browsing: a few batches at a time.
const BROWSE_READ_BYTES: usize = 256 * 1024;

impl Broker {
    /// Up to `max` records of `topic`/`partition` from `offset` on (an offset
    /// below the log start reads from the log start). Blocking: it reads
    /// from disk.
    pub fn read_records(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, CoreError> {
        let log = self.partition(topic, partition)?;
        let mut next = offset.max(log.log_start_offset());
        let mut out = Vec::new();
        while out.len() < max && next < log.high_watermark() {
            let read = log.read(next, BROWSE_READ_BYTES, true)?;
            if read.records.is_empty() {
                break;
            }
            let batches = split_batches(read.records).map_err(LogError::from)?;
            for (_, last, batch) in batches {
                let records = decode_batch(batch).map_err(|e| unreadable(topic, partition, e))?;
                out.extend(
                    records
                        .into_iter()
                        .filter(|r| r.offset >= next)
                        .take(max - out.len()),
                );
                next = last + 1;
                if out.len() >= max {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// A stored batch that passed its CRC yet cannot be taken apart: reported as
/// the storage error it is, naming the partition.
fn unreadable(topic: &str, partition: i32, e: RecordError) -> CoreError {
    CoreError::Log(LogError::Io {
        path: format!("topics/{topic}/{partition}").into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}
