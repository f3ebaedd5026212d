//! Per-log settings. Names follow Kafka's topic configs; the front end maps
//! `segment.bytes` and friends onto these fields.

/// When appended batches are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Group commit: a batch is acknowledged (and visible to readers) only once
    /// an fsync covering it has returned; one fsync covers every batch waiting.
    Always,
    /// An fsync at most every `interval_ms`; batches are visible and
    /// acknowledged as soon as they are written to the page cache.
    Interval { interval_ms: u64 },
    /// Never fsync except when a segment is sealed and at shutdown.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll to a new segment before one would exceed this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll once the active segment is this old (by wall clock).
    pub segment_ms: i64,
    /// `retention.ms`: delete sealed segments whose newest record is older than
    /// this. `None` keeps them forever (Kafka's `-1`).
    pub retention_ms: Option<i64>,
    /// `retention.bytes`: delete the oldest segments while the log is larger
    /// than this. `None` means no size limit (Kafka's `-1`).
    pub retention_bytes: Option<u64>,
    /// `max.message.bytes`: the largest batch accepted, header included.
    pub max_batch_bytes: u32,
    /// `index.interval.bytes`: bytes of log between two sparse index entries.
    pub index_interval_bytes: u32,
    pub fsync: FsyncPolicy,
}

impl Default for LogConfig {
    /// Kafka's defaults, with group-commit fsync.
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            retention_ms: Some(7 * 24 * 60 * 60 * 1000),
            retention_bytes: None,
            max_batch_bytes: 1_048_588,
            index_interval_bytes: 4096,
            fsync: FsyncPolicy::Always,
        }
    }
}
