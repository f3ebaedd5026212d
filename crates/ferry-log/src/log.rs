//! A log: the ordered list of segments of one partition or queue, the append
//! path with group commit, reads, timestamp lookups and retention.
//!
//! API CONTRACT (implemented by the storage-engine work; signatures are fixed
//! because ferry-core is written against them).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::{Clock, LogConfig, LogError};

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset given to the first record of the first batch.
    pub base_offset: i64,
    /// Offset of the last record of the last batch.
    pub last_offset: i64,
    /// The log start offset after the append.
    pub log_start_offset: i64,
    /// Bumped whenever unsynced data is discarded after a failed fsync; a waiter
    /// whose append belongs to an older generation gets `NotDurable`.
    pub generation: u64,
}

/// Whole batches read from the log, as stored.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Concatenated whole batches, the first one containing the requested offset.
    pub records: Bytes,
    /// The first offset not yet readable (Kafka's high watermark).
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub offset: i64,
    pub timestamp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start_offset: i64,
}

#[derive(Debug)]
pub struct Log {
    _todo: (),
}

#[allow(clippy::todo, unused_variables)]
impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering it first.
    pub fn open(dir: &Path, config: LogConfig, clock: Arc<dyn Clock>) -> Result<Log, LogError> {
        todo!()
    }

    /// Validates `records` (one or more v2 batches from a producer), assigns
    /// offsets and writes them. Not yet durable nor visible to readers under
    /// `FsyncPolicy::Always`: call [`Log::wait_durable`].
    pub fn append(&self, records: &[u8]) -> Result<AppendInfo, LogError> {
        todo!()
    }

    /// Resolves once the append is durable under this log's policy (group
    /// commit for `Always`: one fsync covers every append waiting). Under
    /// `Always`, readers see the batch only after this point.
    pub async fn wait_durable(&self, info: &AppendInfo) -> Result<(), LogError> {
        todo!()
    }

    /// Reads whole batches starting with the one containing `offset`, at most
    /// `max_bytes` in all, except that the first batch is returned whole even
    /// if larger when `min_one_batch` is set (Kafka KIP-74). Never returns
    /// anything at or beyond the high watermark.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
    ) -> Result<ReadResult, LogError> {
        todo!()
    }

    /// The offset and timestamp of the first record whose timestamp is at
    /// least `timestamp`, or `None` if every readable record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<TimestampOffset>, LogError> {
        todo!()
    }

    /// The largest record timestamp in the readable log, if any.
    pub fn max_timestamp(&self) -> Option<i64> {
        todo!()
    }

    pub fn log_start_offset(&self) -> i64 {
        todo!()
    }

    /// The first offset not yet readable.
    pub fn high_watermark(&self) -> i64 {
        todo!()
    }

    /// The offset the next append will get.
    pub fn log_end_offset(&self) -> i64 {
        todo!()
    }

    /// Watches the high watermark, for long-polling readers.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        todo!()
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        todo!()
    }

    pub fn config(&self) -> LogConfig {
        todo!()
    }

    pub fn set_config(&self, config: LogConfig) {
        todo!()
    }

    /// Deletes whole segments past `retention.ms` / `retention.bytes`.
    pub fn apply_retention(&self) -> Result<RetentionOutcome, LogError> {
        todo!()
    }

    /// Under `FsyncPolicy::Interval`, fsyncs if the interval has elapsed since
    /// the last fsync; returns whether it did. Blocking.
    pub fn flush_if_due(&self) -> Result<bool, LogError> {
        todo!()
    }

    /// Fsyncs everything written so far. Blocking.
    pub fn flush(&self) -> Result<(), LogError> {
        todo!()
    }

    /// Flushes, writes the indexes and marks a clean shutdown, so the next
    /// open need not rescan. Blocking.
    pub fn close(&self) -> Result<(), LogError> {
        todo!()
    }
}
