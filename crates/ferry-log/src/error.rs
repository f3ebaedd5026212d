//! Errors of the storage engine. Front ends map each variant to their
//! protocol's error code in one place.

use std::path::PathBuf;

use thiserror::Error;

use crate::batch::BatchError;

#[derive(Debug, Error)]
pub enum LogError {
    /// The batches offered for append were invalid; nothing was written.
    #[error(transparent)]
    InvalidBatch(#[from] BatchError),
    /// A read or timestamp lookup asked for an offset outside `[start, end]`.
    #[error("offset {requested} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        requested: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    /// The disk refused a write or an fsync (full, read-only, failing). What was
    /// not made durable has been discarded; the log stays usable.
    #[error("storage error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A sealed segment failed its checks while opening the log; it is reported
    /// and kept on disk rather than silently dropped.
    #[error("segment {path} is corrupt at byte {position}: {reason}")]
    CorruptSegment {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    /// A stored batch failed its CRC when read: its bytes changed on disk
    /// after they were written. It is never returned to a reader; reads from
    /// offsets before and after it are served as usual.
    #[error(
        "record batch at offsets {base_offset}..={last_offset} in {path} (byte {position}) is corrupt: {reason}"
    )]
    CorruptBatch {
        path: PathBuf,
        position: u64,
        base_offset: i64,
        last_offset: i64,
        reason: String,
    },
    /// Appended data was discarded before it became durable (an fsync failed).
    #[error("appended data was discarded before it became durable")]
    NotDurable,
    /// A batch from an idempotent producer carries an epoch older than the
    /// producer's current one (a fenced, "zombie" producer); nothing was written.
    #[error(
        "producer {producer_id} sent epoch {epoch}, older than its current epoch {current_epoch}"
    )]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current_epoch: i16,
    },
    /// A batch from an idempotent producer whose sequence number does not
    /// follow the producer's last appended batch; nothing was written.
    #[error("out of order sequence number from producer {producer_id}: {reason}")]
    OutOfOrderSequence { producer_id: i64, reason: String },
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            source,
        }
    }
}
