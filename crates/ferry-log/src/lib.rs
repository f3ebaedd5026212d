//! Ferry's storage engine: segmented, append-only logs whose unit is a Kafka
//! RecordBatch v2, stored exactly as the producer framed it once its CRC has
//! been checked and its base offset assigned.
//!
//! A [`Log`] is a directory of segments (`<20-digit base offset>.log`) with a
//! sparse offset index (`.index`) and a time index (`.timeindex`) beside each.
//! Reads are byte ranges of whole batches, so a Kafka fetch needs no
//! re-encoding.
//!
//! Appends of idempotent producers (batches with a producer id) are checked
//! against the log's producer state (epoch, sequence numbers, the last five
//! batches of each producer; see `producer_state`) under the same lock as the
//! write, and a retried batch is answered with its original offsets. That
//! state is saved in `<20-digit offset>.snapshot` files when a segment is
//! sealed and at close, and rebuilt at open from the newest usable snapshot
//! plus the batch headers after it.
//!
//! This crate knows nothing of network protocols, topics or queues: it must
//! never depend on `ferry-core` or any front end.

pub mod batch;
mod clock;
mod config;
mod error;
mod index;
mod log;
mod producer_state;
pub mod records;
mod segment;
pub mod sync_observer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{FsyncPolicy, LogConfig};
pub use error::LogError;
pub use log::{AppendInfo, Log, ReadResult, RetentionOutcome, TimestampOffset};
