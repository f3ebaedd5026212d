//! A log: the ordered list of segments of one partition or queue, the append
//! path with group commit, reads, timestamp lookups and retention.
//!
//! API CONTRACT: the public signatures are fixed because ferry-core is
//! written against them.
//!
//! Concurrency. All mutable state sits in one `std::sync::Mutex<Inner>`, held
//! only to decide and to account: readers take it to find segments and byte
//! ranges, then copy bytes from an `Arc<File>` without it; appenders hold it
//! for one positional write into the page cache. The only fsyncs under it are
//! the rare ones of a segment roll and of `close`. Group commit's fsync runs
//! on the blocking pool under a separate async lock, so appends continue
//! while it runs and every waiter queued behind it shares the next one.
//!
//! Three positions along the log matter, each a [`Mark`]:
//! - the written end (the active segment's end): where the next batch goes;
//! - the durable mark: what an fsync has covered;
//! - the high watermark: what readers may see. Under `FsyncPolicy::Always` it
//!   is the durable mark (nothing is visible before it is acknowledged);
//!   otherwise it is the written end.
//!
//! Invariants: offsets only grow; every sealed segment was fsynced before the
//! next one was created, so the durable mark and the high watermark always lie
//! in the active segment and sealed segments are wholly readable.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use tokio::sync::watch;

use crate::batch;
use crate::producer_state::{self, Prepared, ProducerBatch, ProducerStates, Stamp};
use crate::segment::{self, BatchMeta, Mark, OpenMode, Segment, WalkEnd};
use crate::sync_observer;
use crate::{Clock, FsyncPolicy, LogConfig, LogError};

/// Written by `close` once everything is fsynced and every index file is
/// current; removed (durably) before anything else is written. Its presence at
/// open means the last segment's indexes can be trusted.
const CLEAN_SHUTDOWN_FILE: &str = ".clean_shutdown";
/// Generations whose discard point is remembered, so that a waiter from an
/// older generation can still learn that its append was durable before the
/// discard. Waiters from generations older than that get `NotDurable`.
const DISCARDS_REMEMBERED_MAX: usize = 64;
/// Segments one read may span: bounds the snapshot a read takes under the lock
/// when `max_bytes` is large and segments are small.
const READ_SEGMENTS_MAX: usize = 16;
/// Attempts at a read or timestamp lookup when the log is cut under it (after
/// a failed fsync) while it copies bytes.
const READ_ATTEMPTS_MAX: usize = 3;

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
    /// Every batch was a retry of one an idempotent producer appended before:
    /// nothing was written, and the offsets are the original batch's. Waiting
    /// for durability then waits for the original.
    pub duplicate: bool,
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

/// The state behind the log's mutex.
struct Inner {
    config: LogConfig,
    /// Sorted by base offset, never empty; the last one is the active segment.
    segments: Vec<Segment>,
    log_start_offset: i64,
    durable: Mark,
    high_watermark: Mark,
    generation: u64,
    /// `(generation, offset)`: when `generation` ended, everything below
    /// `offset` was durable and everything from it on was discarded.
    discards: VecDeque<(u64, i64)>,
    last_fsync_ms: i64,
    clean_marker_present: bool,
    /// Idempotent producers' state, covering every batch written (durable or
    /// not; a discard forgets what it cut off).
    producers: ProducerStates,
    /// The offset of a snapshot file that describes `producers` as they are
    /// and the log end, if one does (nothing appended since): `close` then
    /// need not write it again.
    snapshot_at: Option<i64>,
}

impl Inner {
    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }

    /// Bytes of `segment` readers may see.
    fn readable_end(&self, segment: &Segment) -> u64 {
        let hw = &self.high_watermark;
        if segment.base_offset < hw.segment_base {
            segment.size
        } else if segment.base_offset == hw.segment_base {
            hw.size
        } else {
            0
        }
    }

    /// The index of the segment that would hold `offset`: the last one whose
    /// base offset is not above it.
    fn segment_for(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }
}

/// An fsync to run: the active segment's file and how far it was written when
/// the fsync was decided.
struct SyncPoint {
    file: Arc<File>,
    path: PathBuf,
    end: Mark,
    generation: u64,
    /// Records between the durable mark and `end` (for the sync observer).
    records: u64,
}

/// What a read copies, decided under the lock.
struct ReadRange {
    file: Arc<File>,
    path: PathBuf,
    /// A batch boundary at or before the first batch wanted.
    from: u64,
    /// The offset the batch at `from` must have: its index entry's, or the
    /// segment's base offset. Offsets are contiguous within a segment (they
    /// are assigned in order and nothing compacts a log), so every later
    /// batch must start where the one before it ended; the CRC does not
    /// cover the stored base offset, so that is how its damage is found.
    from_offset: i64,
    /// The readable end of the segment (a batch boundary).
    end: u64,
}

struct ReadPlan {
    ranges: Vec<ReadRange>,
    high_watermark: i64,
    log_start_offset: i64,
    generation: u64,
}

/// Failure injection for tests: the disk errors that are hard to cause for
/// real, and what a power cut would keep.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct TestHooks {
    pub fail_next_sync: std::sync::atomic::AtomicBool,
    pub fail_next_write: std::sync::atomic::AtomicBool,
    pub syncs: std::sync::atomic::AtomicU64,
    /// The next group commit finds another fsync of the log (a queue timer's
    /// `flush`) ending just before it captures what to fsync.
    pub flush_before_capture: std::sync::atomic::AtomicBool,
    /// Bytes of each segment file that are on disk for certain: its length
    /// when an fsync of it began that then succeeded (or when it was opened,
    /// or its directory entry fsynced after creation). A simulated power
    /// cut keeps these and loses, or garbles, what follows.
    pub durable_lens: Mutex<std::collections::HashMap<PathBuf, u64>>,
}

#[cfg(test)]
impl TestHooks {
    fn made_durable(&self, path: &Path, len: u64) {
        let mut lens = self.durable_lens.lock().expect("test hooks lock");
        let known = lens.entry(path.to_path_buf()).or_insert(0);
        *known = (*known).max(len);
    }
}

/// A group-commit turn: frees the lock, then wakes everyone waiting for the
/// turn to end, also when the waiting future is dropped mid-fsync.
struct SyncTurn<'a> {
    guard: Option<tokio::sync::MutexGuard<'a, ()>>,
    ended: &'a tokio::sync::Notify,
}

impl Drop for SyncTurn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        self.ended.notify_waiters();
    }
}

pub struct Log {
    dir: PathBuf,
    core: Arc<Core>,
    /// Serialises group-commit fsyncs: a waiter that gets it after another
    /// fsync finished usually finds its append already covered.
    sync_lock: tokio::sync::Mutex<()>,
    /// Woken whenever a group-commit turn ends (the lock is free again).
    sync_ended: tokio::sync::Notify,
    /// `config.max_batch_bytes`, readable without the lock because batches are
    /// validated before it is taken.
    max_batch_bytes: AtomicU32,
    #[cfg(test)]
    pub(crate) hooks: Arc<TestHooks>,
}

/// The state an fsync job finishes with: shared with the blocking pool, so
/// that an fsync's outcome is accounted for even if its waiter is cancelled
/// (Linux reports a writeback error to one fsync only; a failure nobody saw
/// would let the next successful fsync vouch for lost data).
struct Core {
    inner: Mutex<Inner>,
    high_watermark_tx: watch::Sender<i64>,
    clock: Arc<dyn Clock>,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock means a broken invariant; carrying on with
        // the state it left behind could corrupt the log.
        self.inner
            .lock()
            .expect("ferry-log: a thread panicked while holding the log lock")
    }

    fn publish(&self, inner: &Inner) {
        let hw = inner.high_watermark.next_offset;
        self.high_watermark_tx.send_if_modified(|current| {
            let changed = *current != hw;
            *current = hw;
            changed
        });
    }

    /// Moves the durable mark forward to `end` (never back) and, under group
    /// commit, the high watermark with it.
    fn advance_durable(&self, inner: &mut Inner, end: Mark) {
        if end.is_after(&inner.durable) {
            inner.durable = end;
        }
        if inner.config.fsync == FsyncPolicy::Always
            && inner.durable.is_after(&inner.high_watermark)
        {
            inner.high_watermark = inner.durable;
            self.publish(inner);
        }
    }

    /// After a failed fsync nothing past the durable mark can be trusted to
    /// reach the disk (the kernel may have dropped the dirty pages), so it is
    /// discarded: the active segment is cut back to the durable mark and the
    /// generation bumped, failing the waiters of everything discarded.
    fn discard_undurable(&self, inner: &mut Inner) {
        let durable = inner.durable;
        // A roll makes everything before the new segment durable, so no
        // segment starts after the durable mark; if one did, its data would
        // not be durable either.
        while inner.segments.len() > 1 && inner.active().base_offset > durable.segment_base {
            if let Some(seg) = inner.segments.pop()
                && let Err(e) = seg.delete_files()
            {
                tracing::warn!(segment = %seg.path.display(), error = %e, "could not delete a discarded segment");
            }
        }
        let active = inner.active_mut();
        if active.base_offset == durable.segment_base {
            let discarded_bytes = active.size - durable.size;
            let discarded_offsets = (durable.next_offset, active.next_offset);
            if let Err(e) = active.file.set_len(durable.size) {
                tracing::error!(
                    segment = %active.path.display(),
                    error = %e,
                    "could not cut back the active segment; the next append overwrites the rest"
                );
            }
            active.restore(&durable);
            tracing::warn!(
                segment = %active.path.display(),
                position = durable.size,
                discarded_bytes,
                discarded_from_offset = discarded_offsets.0,
                discarded_to_offset = discarded_offsets.1,
                "fsync failed: discarded everything written after the last durable point"
            );
        } else {
            tracing::error!(
                segment = %active.path.display(),
                durable_segment = durable.segment_base,
                "durable mark outside the active segment; nothing discarded"
            );
        }
        // A retried batch that was discarded must be written again, not
        // answered as a duplicate of data that is gone.
        inner.producers.truncate_from(durable.next_offset);
        inner.snapshot_at = None;
        inner
            .discards
            .push_back((inner.generation, durable.next_offset));
        if inner.discards.len() > DISCARDS_REMEMBERED_MAX {
            inner.discards.pop_front();
        }
        inner.generation += 1;
        // Under `Interval`/`Never` readers may have seen what was discarded;
        // they now get OffsetOutOfRange past the new end and fetch again.
        if inner.high_watermark.is_after(&durable) {
            inner.high_watermark = durable;
        }
        self.publish(inner);
    }

    /// Accounts for an fsync that covered `point`: on success the durable
    /// mark (and under `Always` the high watermark) moves up to it; on failure
    /// what it should have covered is discarded, unless a newer generation
    /// already did so.
    fn finish_sync(
        &self,
        inner: &mut Inner,
        point: SyncPoint,
        result: io::Result<()>,
    ) -> Result<(), LogError> {
        match result {
            Ok(()) => {
                inner.last_fsync_ms = self.clock.now_ms();
                if point.generation == inner.generation {
                    self.advance_durable(inner, point.end);
                }
                Ok(())
            }
            Err(e) => {
                if point.generation == inner.generation {
                    self.discard_undurable(inner);
                }
                Err(LogError::io(&point.path, e))
            }
        }
    }
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("high_watermark", &*self.core.high_watermark_tx.borrow())
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering it first.
    pub fn open(dir: &Path, config: LogConfig, clock: Arc<dyn Clock>) -> Result<Log, LogError> {
        let dir_err = |e| LogError::io(dir, e);
        fs::create_dir_all(dir).map_err(dir_err)?;
        let now = clock.now_ms();
        let marker = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = match fs::symlink_metadata(&marker) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(LogError::io(&marker, e)),
        };

        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if segment::is_stale_index_temp(name) || producer_state::is_stale_snapshot_temp(name) {
                // Left by a crash while an index file or a snapshot was being
                // replaced; what it was replacing is intact or rebuilt below.
                if let Err(e) = fs::remove_file(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a stale index file");
                }
                continue;
            }
            let Some(base) = segment::parse_log_file_name(name) else {
                continue;
            };
            if !entry.file_type().map_err(dir_err)?.is_file() {
                tracing::warn!(path = %entry.path().display(), "ignoring a segment name that is not a file");
                continue;
            }
            bases.push(base);
        }
        bases.sort_unstable();

        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
        for (i, &base) in bases.iter().enumerate() {
            let mode = if i + 1 < bases.len() {
                OpenMode::Sealed
            } else if clean {
                OpenMode::ActiveTrusted
            } else {
                OpenMode::ActiveRecover
            };
            let path = dir.join(segment::log_file_name(base));
            let (seg, _recovery) =
                Segment::open_existing(&path, base, mode, config.index_interval_bytes, now)?;
            if let Some(prev) = segments.last() {
                if prev.next_offset > seg.base_offset {
                    return Err(LogError::CorruptSegment {
                        path: prev.path.clone(),
                        position: prev.size,
                        reason: format!(
                            "holds offsets up to {} but the next segment starts at {}",
                            prev.next_offset - 1,
                            seg.base_offset
                        ),
                    });
                }
                if prev.next_offset < seg.base_offset {
                    tracing::info!(
                        segment = %seg.path.display(),
                        missing_from = prev.next_offset,
                        "offsets before this segment are missing from the log"
                    );
                }
            }
            segments.push(seg);
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0)?);
        }

        let (producers, snapshot_at) = load_producer_states(dir, &segments)?;

        // What was kept is made durable now, so that the durable mark can
        // start at the end of the log: after a crash of the process alone the
        // last writes may still sit in the page cache only.
        let active = segments
            .last()
            .expect("a segment was pushed if there were none");
        active
            .file
            .sync_data()
            .map_err(|e| LogError::io(&active.path, e))?;
        if clean {
            match fs::remove_file(&marker) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io(&marker, e)),
            }
        }
        // Makes the new segment file, the rebuilt index files, the snapshots'
        // removal and the marker's removal durable at once.
        segment::sync_dir(dir).map_err(dir_err)?;

        #[cfg(test)]
        let hooks = {
            // Everything kept at open is on disk: the sealed segments were
            // fsynced when they were rolled, the last one just now.
            let hooks = Arc::new(TestHooks::default());
            for seg in &segments {
                hooks.made_durable(&seg.path, seg.size);
            }
            hooks
        };
        let end = active.mark();
        let log_start_offset = segments[0].base_offset;
        tracing::info!(
            dir = %dir.display(),
            segments = segments.len(),
            log_start_offset,
            log_end_offset = end.next_offset,
            clean_shutdown = clean,
            "opened log"
        );
        let (high_watermark_tx, _) = watch::channel(end.next_offset);
        let inner = Inner {
            config,
            segments,
            log_start_offset,
            durable: end,
            high_watermark: end,
            generation: 0,
            discards: VecDeque::new(),
            last_fsync_ms: now,
            clean_marker_present: false,
            producers,
            snapshot_at,
        };
        Ok(Log {
            dir: dir.to_path_buf(),
            max_batch_bytes: AtomicU32::new(inner.config.max_batch_bytes),
            core: Arc::new(Core {
                inner: Mutex::new(inner),
                high_watermark_tx,
                clock,
            }),
            sync_lock: tokio::sync::Mutex::new(()),
            sync_ended: tokio::sync::Notify::new(),
            #[cfg(test)]
            hooks,
        })
    }

    /// Validates `records` (one or more v2 batches from a producer), assigns
    /// offsets and writes them. Not yet durable nor visible to readers under
    /// `FsyncPolicy::Always`: call [`Log::wait_durable`].
    ///
    /// Batches of idempotent producers (a producer id) are checked against
    /// the producer's state first, each in turn (see `producer_state`): a
    /// stale epoch or a sequence gap fails the whole append, and an append
    /// whose batches were all appended before writes nothing and returns the
    /// original offsets with `duplicate` set.
    pub fn append(&self, records: &[u8]) -> Result<AppendInfo, LogError> {
        let max_batch_bytes = self.max_batch_bytes.load(Ordering::Relaxed) as usize;
        let headers = batch::validate_for_append(records, max_batch_bytes)?;
        let record_count: i64 = headers
            .iter()
            .map(|h| i64::from(h.last_offset_delta) + 1)
            .sum();
        // Copied before the lock is taken; under it, assigning offsets only
        // rewrites 12 bytes per batch.
        let mut buf = records.to_vec();
        let now = self.core.clock.now_ms();

        let mut guard = self.lock();
        let inner = &mut *guard;
        // A roll starts the new segment at the log end offset, so the offsets
        // are known before deciding whether to roll.
        let producers = match inner
            .producers
            .prepare(&headers, inner.active().next_offset)?
        {
            Prepared::Duplicate {
                base_offset,
                last_offset,
            } => {
                return Ok(AppendInfo {
                    base_offset,
                    last_offset,
                    log_start_offset: inner.log_start_offset,
                    // Everything the producer state remembers is in the log
                    // of the current generation (a discard forgets the rest).
                    generation: inner.generation,
                    duplicate: true,
                });
            }
            Prepared::Append(entries) => entries,
        };
        if inner.clean_marker_present {
            self.remove_clean_marker(inner)?;
        }
        if Self::should_roll(inner, now, buf.len() as u64, record_count) {
            self.roll(inner, now)?;
        }
        let index_interval_bytes = inner.config.index_interval_bytes;
        let visible_when_written = inner.config.fsync != FsyncPolicy::Always;
        let segment = inner.active_mut();
        let base_offset = segment.next_offset;
        let start = segment.size;
        let mut metas = Vec::with_capacity(headers.len());
        let mut at = 0usize;
        let mut next_offset = base_offset;
        for header in &headers {
            let len = header.total_len();
            batch::assign(&mut buf[at..at + len], next_offset, 0);
            let last_offset = next_offset + i64::from(header.last_offset_delta);
            metas.push(BatchMeta {
                position: start + at as u64,
                len: len as u64,
                base_offset: next_offset,
                last_offset,
                max_timestamp: header.max_timestamp,
                producer_id: header.producer_id,
                producer_epoch: header.producer_epoch,
                base_sequence: header.base_sequence,
            });
            next_offset = last_offset + 1;
            at += len;
        }
        if let Err(e) = self.write_at(&segment.file, &buf, start) {
            // Cut off whatever part of the write reached the file, so that the
            // file ends where the log says it does; once space returns the
            // next append starts from a clean end.
            if let Err(cut) = segment.file.set_len(start) {
                tracing::warn!(
                    segment = %segment.path.display(),
                    position = start,
                    error = %cut,
                    "could not cut a failed write; the next append overwrites it"
                );
            }
            return Err(LogError::io(&segment.path, e));
        }
        for meta in &metas {
            segment.record_batch(meta, index_interval_bytes);
        }
        if segment.first_append_ms.is_none() {
            segment.first_append_ms = Some(now);
        }
        let end = segment.mark();
        inner.producers.commit(producers);
        inner.snapshot_at = None;
        if visible_when_written {
            inner.high_watermark = end;
            self.core.publish(inner);
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: next_offset - 1,
            log_start_offset: inner.log_start_offset,
            generation: inner.generation,
            duplicate: false,
        })
    }

    /// Resolves once the append is durable under this log's policy (group
    /// commit for `Always`: one fsync covers every append waiting). Under
    /// `Always`, readers see the batch only after this point.
    pub async fn wait_durable(&self, info: &AppendInfo) -> Result<(), LogError> {
        self.group_commit(info, false).await
    }

    /// Resolves once an fsync covers the append, whatever the log's fsync
    /// policy: group commit on demand. Queues use it with `FsyncPolicy::Never`
    /// logs, whose batches are visible as soon as they are written, to make
    /// only the appends that need it (persistent messages) durable before a
    /// publisher confirm, sharing one fsync among every waiter.
    pub async fn wait_synced(&self, info: &AppendInfo) -> Result<(), LogError> {
        self.group_commit(info, true).await
    }

    /// Group commit: one waiter at a time fsyncs whatever is written; the
    /// others wait for that fsync to end (not in line for the lock one by
    /// one), then look again: most find their append covered.
    async fn group_commit(&self, info: &AppendInfo, strict: bool) -> Result<(), LogError> {
        loop {
            if let Some(settled) = self.durability_for(info, strict) {
                return settled;
            }
            // Registered before the lock is tried, so an fsync ending in
            // between still wakes us.
            let ended = self.sync_ended.notified();
            let Ok(guard) = self.sync_lock.try_lock() else {
                ended.await;
                continue;
            };
            let _turn = SyncTurn {
                guard: Some(guard),
                ended: &self.sync_ended,
            };
            #[cfg(test)]
            if self
                .hooks
                .flush_before_capture
                .swap(false, Ordering::SeqCst)
            {
                self.flush()?;
            }
            // Whoever held the lock before, or a flush outside group commit
            // (a queue's timer), may have covered this append already. The
            // look and the capture share one lock: between two, a flush
            // could cover the append and leave nothing to capture.
            let point = {
                let inner = self.lock();
                if let Some(settled) = Self::durability_locked(&inner, info, strict) {
                    return settled;
                }
                let Some(point) = Self::capture_locked(&inner) else {
                    // Pending, yet nothing is written past the durable mark:
                    // the append is not in this log.
                    return Err(LogError::NotDurable);
                };
                point
            };
            // The blocking job both fsyncs and accounts for the outcome, so that
            // dropping this future (a client hanging up) cannot lose a failure.
            let job = self.sync_job(Arc::clone(&point.file), &point.path);
            let core = Arc::clone(&self.core);
            let path = point.path.clone();
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let result = job();
                if result.is_ok() {
                    sync_observer::report(sync_observer::SyncObservation {
                        elapsed: started.elapsed(),
                        records: point.records,
                    });
                }
                let mut guard = core.lock();
                core.finish_sync(&mut guard, point, result)
            })
            .await
            .map_err(|join| LogError::io(path, io::Error::other(join.to_string())))??;
            return self
                .durability_for(info, strict)
                .unwrap_or(Err(LogError::NotDurable));
        }
    }

    /// Whether everything written has been fsynced.
    pub fn is_synced(&self) -> bool {
        let inner = self.lock();
        !inner.active().mark().is_after(&inner.durable)
    }

    /// Deletes the segments whose every record lies below `offset` (the log
    /// start moves up to the first remaining segment), for queues whose
    /// messages below `offset` are all settled. If the active segment is also
    /// wholly below `offset` and holds at least `roll_active_bytes_min` bytes,
    /// it is sealed first so that it can go too (a drained queue then keeps
    /// only an empty segment). The active segment is never deleted otherwise.
    pub fn delete_segments_before(
        &self,
        offset: i64,
        roll_active_bytes_min: u64,
    ) -> Result<RetentionOutcome, LogError> {
        let now = self.core.clock.now_ms();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut outcome = RetentionOutcome {
            log_start_offset: inner.log_start_offset,
            ..RetentionOutcome::default()
        };
        let active = inner.active();
        if !active.is_empty()
            && active.next_offset <= offset
            && active.size >= roll_active_bytes_min
        {
            self.roll(inner, now)?;
        }
        while inner.segments.len() > 1 && inner.segments[0].next_offset <= offset {
            let oldest = &inner.segments[0];
            oldest
                .delete_files()
                .map_err(|e| LogError::io(&oldest.path, e))?;
            let deleted = inner.segments.remove(0);
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += deleted.size;
            inner.log_start_offset = inner.segments[0].base_offset.max(inner.log_start_offset);
        }
        outcome.log_start_offset = inner.log_start_offset;
        if outcome.segments_deleted > 0 {
            self.delete_snapshots_before(inner.log_start_offset);
            tracing::debug!(
                dir = %self.dir.display(),
                segments = outcome.segments_deleted,
                bytes = outcome.bytes_deleted,
                log_start_offset = inner.log_start_offset,
                "deleted settled segments"
            );
        }
        Ok(outcome)
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
        for _ in 0..READ_ATTEMPTS_MAX {
            let plan = self.plan_read(offset, max_bytes)?;
            let records = copy_batches(&plan, offset, max_bytes as u64, min_one_batch);
            // A failed fsync may have cut the active segment while the bytes
            // were copied; what was read may then mix old and new data.
            if self.lock().generation == plan.generation {
                return records.map(|records| ReadResult {
                    records,
                    high_watermark: plan.high_watermark,
                    log_start_offset: plan.log_start_offset,
                });
            }
        }
        Err(self.truncated_under_reads())
    }

    /// The offset and timestamp of the first record whose timestamp is at
    /// least `timestamp`, or `None` if every readable record is older.
    pub fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<TimestampOffset>, LogError> {
        for _ in 0..READ_ATTEMPTS_MAX {
            let (range, generation) = {
                let inner = self.lock();
                // Segments are in offset order and each knows its largest
                // timestamp, so the first one reaching `timestamp` holds the
                // answer if any readable batch does.
                let Some(seg) = inner
                    .segments
                    .iter()
                    .find(|s| s.max_timestamp().is_some_and(|t| t >= timestamp))
                else {
                    return Ok(None);
                };
                let end = inner.readable_end(seg);
                let indexed = seg
                    .time_index
                    .lookup(timestamp)
                    .map_or(seg.base_offset, |rel| seg.base_offset + i64::from(rel));
                let (from, from_offset) = seg.walk_start(indexed);
                let range = ReadRange {
                    file: Arc::clone(&seg.file),
                    path: seg.path.clone(),
                    from: from.min(end),
                    from_offset,
                    end,
                };
                (range, inner.generation)
            };
            let found = find_by_timestamp(&range, timestamp);
            if self.lock().generation == generation {
                return found;
            }
        }
        Err(self.truncated_under_reads())
    }

    /// The largest record timestamp in the readable log, if any.
    pub fn max_timestamp(&self) -> Option<i64> {
        let inner = self.lock();
        let hw = &inner.high_watermark;
        inner
            .segments
            .iter()
            .filter(|s| s.base_offset < hw.segment_base)
            .filter_map(|s| s.max_timestamp())
            .chain(hw.max_timestamp.map(|(ts, _)| ts))
            .max()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.lock().log_start_offset
    }

    /// The first offset not yet readable.
    pub fn high_watermark(&self) -> i64 {
        // Published under the lock whenever it moves, so this needs no lock.
        *self.core.high_watermark_tx.borrow()
    }

    /// The offset the next append will get.
    pub fn log_end_offset(&self) -> i64 {
        self.lock().active().next_offset
    }

    /// Watches the high watermark, for long-polling readers.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.core.high_watermark_tx.subscribe()
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.lock().segments.iter().map(|s| s.size).sum()
    }

    pub fn config(&self) -> LogConfig {
        self.lock().config.clone()
    }

    pub fn set_config(&self, config: LogConfig) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let was_always = inner.config.fsync == FsyncPolicy::Always;
        self.max_batch_bytes
            .store(config.max_batch_bytes, Ordering::Relaxed);
        inner.config = config;
        if was_always && inner.config.fsync != FsyncPolicy::Always {
            // Without group commit, what is written is visible.
            inner.high_watermark = inner.active().mark();
            self.core.publish(inner);
        }
    }

    /// Deletes whole segments past `retention.ms` / `retention.bytes`.
    pub fn apply_retention(&self) -> Result<RetentionOutcome, LogError> {
        let now = self.core.clock.now_ms();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let retention_ms = inner.config.retention_ms;
        let retention_bytes = inner.config.retention_bytes;
        let expired = |seg: &Segment| {
            retention_ms.is_some_and(|ms| {
                seg.max_timestamp()
                    .is_some_and(|ts| ts < now.saturating_sub(ms))
            })
        };

        // Only sealed segments are deleted; an active segment whose every
        // record has expired is sealed first, so that it can go too.
        if !inner.active().is_empty() && expired(inner.active()) {
            self.roll(inner, now)?;
        }

        let mut outcome = RetentionOutcome::default();
        let mut total_bytes: u64 = inner.segments.iter().map(|s| s.size).sum();
        while inner.segments.len() > 1 {
            let oldest = &inner.segments[0];
            // Kafka's rule: delete the oldest segment while the log would
            // still be at least `retention.bytes` without it.
            let over_size = retention_bytes.is_some_and(|limit| total_bytes - oldest.size >= limit);
            if !(oldest.is_empty() || expired(oldest) || over_size) {
                break;
            }
            oldest
                .delete_files()
                .map_err(|e| LogError::io(&oldest.path, e))?;
            let deleted = inner.segments.remove(0);
            total_bytes -= deleted.size;
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += deleted.size;
            inner.log_start_offset = inner.segments[0].base_offset.max(inner.log_start_offset);
            tracing::info!(
                segment = %deleted.path.display(),
                bytes = deleted.size,
                log_start_offset = inner.log_start_offset,
                "deleted segment past retention"
            );
        }
        outcome.log_start_offset = inner.log_start_offset;
        if outcome.segments_deleted > 0 {
            self.delete_snapshots_before(inner.log_start_offset);
        }
        let expired = inner.producers.expire(inner.log_start_offset, now);
        if expired > 0 {
            inner.snapshot_at = None;
            tracing::info!(
                dir = %self.dir.display(),
                producers = expired,
                "forgot idempotent producers whose data is gone and who have been idle too long"
            );
        }
        Ok(outcome)
    }

    /// Under `FsyncPolicy::Interval`, fsyncs if the interval has elapsed since
    /// the last fsync; returns whether it did. Blocking.
    pub fn flush_if_due(&self) -> Result<bool, LogError> {
        let now = self.core.clock.now_ms();
        let point = {
            let inner = self.lock();
            let FsyncPolicy::Interval { interval_ms } = inner.config.fsync else {
                return Ok(false);
            };
            let interval_ms = i64::try_from(interval_ms).unwrap_or(i64::MAX);
            if now.saturating_sub(inner.last_fsync_ms) < interval_ms {
                return Ok(false);
            }
            Self::capture_locked(&inner)
        };
        let Some(point) = point else {
            return Ok(false);
        };
        let result = self.sync_job(Arc::clone(&point.file), &point.path)();
        let mut guard = self.lock();
        self.core.finish_sync(&mut guard, point, result)?;
        Ok(true)
    }

    /// Fsyncs everything written so far. Blocking.
    pub fn flush(&self) -> Result<(), LogError> {
        let Some(point) = self.capture_sync() else {
            return Ok(());
        };
        let result = self.sync_job(Arc::clone(&point.file), &point.path)();
        let mut guard = self.lock();
        self.core.finish_sync(&mut guard, point, result)
    }

    /// Flushes, writes the indexes and marks a clean shutdown, so the next
    /// open need not rescan. Blocking.
    pub fn close(&self) -> Result<(), LogError> {
        // Everything happens under the lock: the marker promises that the
        // data is fsynced and the index files current, and an append slipping
        // in between would break that promise.
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(point) = Self::capture_locked(inner) {
            let result = self.sync_job(Arc::clone(&point.file), &point.path)();
            self.core.finish_sync(inner, point, result)?;
        }
        for seg in inner.segments.iter_mut().filter(|s| !s.index_files_current) {
            seg.write_index_files()
                .map_err(|e| LogError::io(seg.index_path(), e))?;
        }
        // Spares the next open replaying the active segment's batches.
        let end_offset = inner.active().next_offset;
        if inner.snapshot_at != Some(end_offset) {
            match producer_state::write_snapshot(&self.dir, end_offset, &inner.producers) {
                Ok(()) => inner.snapshot_at = Some(end_offset),
                Err(e) => tracing::warn!(
                    dir = %self.dir.display(),
                    offset = end_offset,
                    error = %e,
                    "could not write the producer state snapshot; the next open replays the log instead"
                ),
            }
        }
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(|e| LogError::io(&marker, e))?;
        segment::sync_dir(&self.dir).map_err(|e| LogError::io(&self.dir, e))?;
        inner.clean_marker_present = true;
        tracing::debug!(dir = %self.dir.display(), "log closed cleanly");
        Ok(())
    }

    /// Deletes the snapshots of states before `log_start_offset`: the batches
    /// after them are partly gone, so they can no longer be replayed onto.
    fn delete_snapshots_before(&self, log_start_offset: i64) {
        match producer_state::list_snapshots(&self.dir) {
            Ok(offsets) => {
                for offset in offsets.into_iter().filter(|o| *o < log_start_offset) {
                    producer_state::delete_snapshot(&self.dir, offset);
                }
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not list producer state snapshots")
            }
        }
    }

    fn truncated_under_reads(&self) -> LogError {
        LogError::io(
            &self.dir,
            io::Error::new(
                io::ErrorKind::Interrupted,
                "the log was cut back under every read attempt",
            ),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.core.lock()
    }

    fn remove_clean_marker(&self, inner: &mut Inner) -> Result<(), LogError> {
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io(&marker, e)),
        }
        segment::sync_dir(&self.dir).map_err(|e| LogError::io(&self.dir, e))?;
        inner.clean_marker_present = false;
        Ok(())
    }

    fn should_roll(inner: &Inner, now: i64, incoming_bytes: u64, incoming_records: i64) -> bool {
        let active = inner.active();
        if active.is_empty() {
            return false;
        }
        let config = &inner.config;
        let size_after = active.size + incoming_bytes;
        let too_large = size_after > config.segment_bytes;
        // Index entries hold positions and relative offsets as u32.
        let positions_overflow = size_after > u64::from(u32::MAX);
        let offsets_overflow =
            active.next_offset + incoming_records - 1 - active.base_offset > i64::from(u32::MAX);
        let too_old = active
            .first_append_ms
            .is_some_and(|first| now.saturating_sub(first) >= config.segment_ms);
        too_large || positions_overflow || offsets_overflow || too_old
    }

    /// Seals the active segment and starts a new one at the log end offset.
    fn roll(&self, inner: &mut Inner, now: i64) -> Result<(), LogError> {
        let (file, path) = {
            let active = inner.active();
            (Arc::clone(&active.file), active.path.clone())
        };
        // Recovery verifies only the last segment, so a segment must be on
        // disk before another is started after it. This fsync holds the lock,
        // stalling appends for its duration; rolls are rare enough for that.
        if let Err(e) = self.sync_job(file, &path)() {
            self.core.discard_undurable(inner);
            return Err(LogError::io(&path, e));
        }
        inner.last_fsync_ms = now;
        let sealed_end = inner.active().mark();
        self.core.advance_durable(inner, sealed_end);

        let next_base = {
            let sealed = inner.active_mut();
            if let Err(e) = sealed.write_index_files() {
                tracing::warn!(
                    segment = %sealed.path.display(),
                    error = %e,
                    "could not write index files of a sealed segment; they will be rebuilt at open"
                );
            }
            sealed.next_offset
        };
        // The producers' state as of the sealed segment's end; the directory
        // fsync below makes it durable with the new segment.
        match producer_state::write_snapshot(&self.dir, next_base, &inner.producers) {
            Ok(()) => inner.snapshot_at = Some(next_base),
            Err(e) => tracing::warn!(
                dir = %self.dir.display(),
                offset = next_base,
                error = %e,
                "could not write the producer state snapshot; the next open replays more of the log"
            ),
        }
        let new = Segment::create(&self.dir, next_base)?;
        if let Err(e) = segment::sync_dir(&self.dir) {
            // Without a durable directory entry the new segment, and what is
            // acknowledged in it, could vanish in a crash: do not use it.
            if let Err(remove) = fs::remove_file(&new.path) {
                tracing::warn!(segment = %new.path.display(), error = %remove, "could not remove an unusable new segment");
            }
            return Err(LogError::io(&self.dir, e));
        }
        #[cfg(test)]
        self.hooks.made_durable(&new.path, 0);
        let start = new.mark();
        inner.segments.push(new);
        // Everything before the new segment is durable, hence visible under
        // every policy.
        inner.durable = start;
        inner.high_watermark = start;
        self.core.publish(inner);
        tracing::info!(
            sealed = %path.display(),
            base_offset = next_base,
            "rolled to a new segment"
        );
        Ok(())
    }

    /// `Some(result)` once an append's fate is settled, `None` while it waits
    /// for an fsync. With `strict`, only an fsync settles an append, whatever
    /// the policy; otherwise policies other than `Always` settle it at once.
    fn durability_for(&self, info: &AppendInfo, strict: bool) -> Option<Result<(), LogError>> {
        Self::durability_locked(&self.lock(), info, strict)
    }

    fn durability_locked(
        inner: &Inner,
        info: &AppendInfo,
        strict: bool,
    ) -> Option<Result<(), LogError>> {
        if info.generation == inner.generation {
            let covered = info.last_offset < inner.durable.next_offset;
            if covered || (!strict && inner.config.fsync != FsyncPolicy::Always) {
                return Some(Ok(()));
            }
            return None;
        }
        // An older generation ended with a discard; what lay below the
        // discard point was durable and stays so.
        let kept_below = inner
            .discards
            .iter()
            .find(|(generation, _)| *generation == info.generation)
            .map(|(_, offset)| *offset);
        match kept_below {
            Some(kept) if info.generation < inner.generation && info.last_offset < kept => {
                Some(Ok(()))
            }
            _ => Some(Err(LogError::NotDurable)),
        }
    }

    fn capture_sync(&self) -> Option<SyncPoint> {
        Self::capture_locked(&self.lock())
    }

    /// What an fsync of the active segment would cover now, or `None` if the
    /// durable mark is already at the written end.
    fn capture_locked(inner: &Inner) -> Option<SyncPoint> {
        let active = inner.active();
        let end = active.mark();
        if !end.is_after(&inner.durable) {
            return None;
        }
        Some(SyncPoint {
            file: Arc::clone(&active.file),
            path: active.path.clone(),
            records: u64::try_from(end.next_offset - inner.durable.next_offset).unwrap_or(0),
            end,
            generation: inner.generation,
        })
    }

    /// The fsync of one segment file, as a job for the blocking pool or to run
    /// in place.
    fn sync_job(
        &self,
        file: Arc<File>,
        path: &Path,
    ) -> impl FnOnce() -> io::Result<()> + Send + 'static {
        #[cfg(test)]
        let (injected, hooks, path) = {
            self.hooks.syncs.fetch_add(1, Ordering::SeqCst);
            let injected = self.hooks.fail_next_sync.swap(false, Ordering::SeqCst);
            (injected, Arc::clone(&self.hooks), path.to_path_buf())
        };
        #[cfg(not(test))]
        let (injected, _) = (false, path);
        move || {
            if injected {
                return Err(io::Error::other("injected fsync failure"));
            }
            #[cfg(test)]
            let len = file.metadata()?.len();
            file.sync_data()?;
            #[cfg(test)]
            hooks.made_durable(&path, len);
            Ok(())
        }
    }

    fn write_at(&self, file: &File, buf: &[u8], position: u64) -> io::Result<()> {
        #[cfg(test)]
        if self.hooks.fail_next_write.swap(false, Ordering::SeqCst) {
            // A disk that fills up half way through the write.
            file.write_all_at(&buf[..buf.len() / 2], position)?;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected ENOSPC",
            ));
        }
        file.write_all_at(buf, position)
    }

    fn plan_read(&self, offset: i64, max_bytes: usize) -> Result<ReadPlan, LogError> {
        let inner = self.lock();
        let high_watermark = inner.high_watermark.next_offset;
        let log_start_offset = inner.log_start_offset;
        if offset < log_start_offset || offset > high_watermark {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                log_start_offset,
                log_end_offset: high_watermark,
            });
        }
        let mut plan = ReadPlan {
            ranges: Vec::new(),
            high_watermark,
            log_start_offset,
            generation: inner.generation,
        };
        if offset == high_watermark {
            return Ok(plan);
        }
        let first = inner.segment_for(offset);
        let mut planned_bytes = 0u64;
        for seg in &inner.segments[first..] {
            if seg.base_offset > inner.high_watermark.segment_base {
                break;
            }
            let end = inner.readable_end(seg);
            // A segment after the first starts above `offset`: the walk
            // starts at its first batch.
            let (from, from_offset) = seg.walk_start(offset);
            let from = from.min(end);
            plan.ranges.push(ReadRange {
                file: Arc::clone(&seg.file),
                path: seg.path.clone(),
                from,
                from_offset,
                end,
            });
            planned_bytes += end - from;
            if planned_bytes >= max_bytes as u64 || plan.ranges.len() >= READ_SEGMENTS_MAX {
                break;
            }
        }
        Ok(plan)
    }
}

/// Rebuilds the idempotent producers' state of a log being opened: the newest
/// usable snapshot (one that loads, within `[log start, log end]`), then the
/// batches after it. Snapshots that are unusable, or are neither the one
/// loaded nor at a segment boundary, are deleted; the caller fsyncs the
/// directory. Also returns the snapshot's offset if it is the log end (the
/// snapshot describes the state as it is).
fn load_producer_states(
    dir: &Path,
    segments: &[Segment],
) -> Result<(ProducerStates, Option<i64>), LogError> {
    let log_start = segments[0].base_offset;
    let log_end = segments
        .last()
        .expect("a log always has an active segment")
        .next_offset;
    let offsets = producer_state::list_snapshots(dir).map_err(|e| LogError::io(dir, e))?;
    let mut unusable: Vec<i64> = Vec::new();
    let mut loaded = None;
    for &offset in offsets.iter().rev() {
        if offset > log_end || offset < log_start {
            tracing::info!(
                dir = %dir.display(),
                offset,
                log_start,
                log_end,
                "ignoring a producer state snapshot outside the log"
            );
            unusable.push(offset);
            continue;
        }
        if loaded.is_some() {
            continue;
        }
        match producer_state::read_snapshot(dir, offset) {
            Ok(states) => loaded = Some((offset, states)),
            Err(reason) => {
                tracing::warn!(
                    dir = %dir.display(),
                    offset,
                    %reason,
                    "producer state snapshot unusable; replaying the log from an earlier point"
                );
                unusable.push(offset);
            }
        }
    }
    let loaded_at = loaded.as_ref().map(|(offset, _)| *offset);
    let (from, mut states) = loaded.unwrap_or((log_start, ProducerStates::default()));
    for &offset in &offsets {
        let boundary = segments.iter().any(|s| s.base_offset == offset);
        if unusable.contains(&offset) || (offset != from && !boundary) {
            producer_state::delete_snapshot(dir, offset);
        }
    }
    let replayed = replay_producer_batches(&mut states, segments, from)?;
    tracing::debug!(
        dir = %dir.display(),
        snapshot = from,
        replayed_batches = replayed,
        producers = states.len(),
        "loaded idempotent producer state"
    );
    let current = loaded_at.filter(|offset| *offset == log_end);
    Ok((states, current))
}

/// Replays onto `states` every idempotent batch at or after offset `from`
/// (a batch boundary). Returns how many batches were replayed.
fn replay_producer_batches(
    states: &mut ProducerStates,
    segments: &[Segment],
    from: i64,
) -> Result<u64, LogError> {
    let mut replayed = 0u64;
    for seg in segments.iter().filter(|s| s.next_offset > from) {
        let (start, first_offset) = seg.walk_start(from);
        let end = segment::walk_batches(
            &seg.file,
            start,
            seg.size,
            first_offset,
            seg.base_offset,
            false,
            |meta| {
                if meta.base_offset < from {
                    return;
                }
                let delta = i32::try_from(meta.last_offset - meta.base_offset).unwrap_or(i32::MAX);
                if let Some(stamp) = Stamp::new(
                    meta.producer_id,
                    meta.producer_epoch,
                    meta.base_sequence,
                    delta,
                ) {
                    states.replay(
                        &stamp,
                        ProducerBatch {
                            first_seq: stamp.first_seq,
                            last_seq: stamp.last_seq,
                            base_offset: meta.base_offset,
                            last_offset: meta.last_offset,
                            max_timestamp: meta.max_timestamp,
                        },
                    );
                    replayed += 1;
                }
            },
        )
        .map_err(|e| LogError::io(&seg.path, e))?;
        if let WalkEnd::Invalid { position, reason } = end {
            // Every segment passed its checks at open; a sealed one whose
            // indexes loaded was not read whole, and damage found now is
            // reported as `rebuild` reports it.
            return Err(LogError::CorruptSegment {
                path: seg.path.clone(),
                position,
                reason,
            });
        }
    }
    Ok(replayed)
}

/// Bytes read past what a read asks for when a segment is first read: the
/// walk from the index entry before the wanted offset to that offset (the
/// index is sparse) is then within the same read.
const READ_WINDOW_SLACK_BYTES: u64 = 16 * 1024;

/// Bytes of a segment read at once ahead of the batch walk, so that stepping
/// over many small batches (a queue stores one message per batch) costs one
/// read, not one per batch header.
struct ReadWindow {
    start: u64,
    bytes: Bytes,
}

impl ReadWindow {
    fn covers(&self, pos: u64, len: u64) -> bool {
        pos >= self.start && pos + len <= self.start + self.bytes.len() as u64
    }

    fn slice(&self, pos: u64, len: u64) -> Bytes {
        let at = (pos - self.start) as usize;
        self.bytes.slice(at..at + len as usize)
    }
}

/// The header of the batch at `pos` of `range`, from `window` when it holds
/// it, else from a new window of `want` bytes (or to the range's end) read
/// at `pos`.
fn walk_header(
    range: &ReadRange,
    window: &mut Option<ReadWindow>,
    pos: u64,
    want: u64,
) -> Result<segment::WalkHeader, LogError> {
    let head = segment::WALK_HEADER_BYTES as u64;
    if !window.as_ref().is_some_and(|w| w.covers(pos, head)) {
        if range.end - pos < head {
            // Too short for a batch: let the parser say so.
            return segment::peek_batch(&range.file, &range.path, pos, range.end);
        }
        let len = want.max(head).min(range.end - pos) as usize;
        let mut buf = vec![0u8; len];
        range
            .file
            .read_exact_at(&mut buf, pos)
            .map_err(|e| LogError::io(&range.path, e))?;
        *window = Some(ReadWindow {
            start: pos,
            bytes: Bytes::from(buf),
        });
    }
    let w = window.as_ref().expect("the window was just filled");
    let at = (pos - w.start) as usize;
    segment::parse_walk_header(
        &w.bytes[at..at + head as usize],
        &range.path,
        pos,
        range.end,
    )
}

/// A batch a read is about to return: where it is stored, the offset it
/// must start at, and its header.
struct ServedBatch {
    range: usize,
    position: u64,
    base_offset: i64,
    header: segment::WalkHeader,
}

/// The offset after a batch that starts at `base_offset`.
fn offset_after(base_offset: i64, header: &segment::WalkHeader) -> i64 {
    base_offset + i64::from(header.last_offset_delta) + 1
}

/// Why a batch whose stored base offset is not `expected` is refused.
fn misplaced(stored: i64, expected: i64) -> String {
    format!(
        "the batch stores base offset {stored} where its place in the segment gives \
         {expected}: its first bytes, which the CRC does not cover, are damaged"
    )
}

/// Copies whole batches from the planned ranges, without the log's lock:
/// skips the batches before `offset`, then takes batches while they fit in
/// `max_bytes` (the first one regardless if `min_one_batch`). Each range is
/// read in windows (`ReadWindow`) that serve both the walk over batch
/// headers and the copy. The walk goes by the offsets each batch must have
/// (from `ReadRange::from_offset` on), not by stored base offsets, which
/// damage could set anywhere. Every batch taken is checked
/// (`verify_batches`) before it is returned.
fn copy_batches(
    plan: &ReadPlan,
    offset: i64,
    max_bytes: u64,
    min_one_batch: bool,
) -> Result<Bytes, LogError> {
    // (range, start position, length) of each run of bytes to copy, the
    // batches in them, and the last window read from each range.
    let mut pieces: Vec<(usize, u64, u64)> = Vec::new();
    let mut served: Vec<ServedBatch> = Vec::new();
    let mut windows: Vec<Option<ReadWindow>> = Vec::with_capacity(plan.ranges.len());
    let mut total = 0u64;
    let mut found = false;
    'ranges: for (i, range) in plan.ranges.iter().enumerate() {
        windows.push(None);
        let window = &mut windows[i];
        let mut pos = range.from;
        let mut expected = range.from_offset;
        if !found {
            loop {
                if pos >= range.end {
                    continue 'ranges;
                }
                let batch = walk_header(
                    range,
                    window,
                    pos,
                    max_bytes.saturating_add(READ_WINDOW_SLACK_BYTES),
                )?;
                let next = offset_after(expected, &batch);
                if next > offset {
                    break;
                }
                pos += batch.len;
                expected = next;
            }
            found = true;
        }
        let start = pos;
        let mut full = false;
        while pos < range.end {
            let batch = walk_header(range, window, pos, max_bytes.saturating_sub(total))?;
            let fits = total + batch.len <= max_bytes || (total == 0 && min_one_batch);
            if !fits {
                full = true;
                break;
            }
            served.push(ServedBatch {
                range: i,
                position: pos,
                base_offset: expected,
                header: batch,
            });
            total += batch.len;
            pos += batch.len;
            expected = offset_after(expected, &batch);
        }
        if pos > start {
            pieces.push((i, start, pos - start));
        }
        if full {
            break;
        }
    }
    // One run inside a window (the usual case): no copy at all.
    if let [(i, start, len)] = pieces[..]
        && let Some(w) = windows[i].as_ref().filter(|w| w.covers(start, len))
    {
        return verify_batches(w.slice(start, len), &served, plan);
    }
    // `total` is at most `max_bytes` (a usize) or one stored batch.
    let mut buf = vec![0u8; total as usize];
    let mut at = 0usize;
    for (i, start, len) in pieces {
        let range = &plan.ranges[i];
        let n = len as usize;
        match windows[i].as_ref().filter(|w| w.covers(start, len)) {
            Some(w) => buf[at..at + n].copy_from_slice(&w.slice(start, len)),
            None => range
                .file
                .read_exact_at(&mut buf[at..at + n], start)
                .map_err(|e| LogError::io(&range.path, e))?,
        }
        at += n;
    }
    verify_batches(Bytes::from(buf), &served, plan)
}

/// Checks each batch in `records` (the `served` batches, in order) before
/// any of it reaches a client: its stored base offset is the one its place
/// gives it, its magic byte is 2 and its CRC-32C matches. A sealed segment,
/// and the last one after a clean shutdown, are opened without a scan, so
/// bits that flipped at rest are caught here. Returns the batches before the
/// first that fails; if that is the first batch, the failure (with the
/// offsets the batch holds, whatever its header says), so that a read from
/// any other offset still gets the intact batches around it.
fn verify_batches(
    records: Bytes,
    served: &[ServedBatch],
    plan: &ReadPlan,
) -> Result<Bytes, LogError> {
    let mut at = 0usize;
    for b in served {
        let end = at + b.header.len as usize;
        let bytes = &records[at..end];
        let damage = if b.header.base_offset == b.base_offset {
            batch::BatchHeader::parse(bytes)
                .and_then(|h| batch::check_crc(&h, bytes))
                .err()
                .map(|e| e.to_string())
        } else {
            Some(misplaced(b.header.base_offset, b.base_offset))
        };
        if let Some(reason) = damage {
            if at > 0 {
                return Ok(records.slice(..at));
            }
            return Err(LogError::CorruptBatch {
                path: plan.ranges[b.range].path.clone(),
                position: b.position,
                base_offset: b.base_offset,
                last_offset: offset_after(b.base_offset, &b.header) - 1,
                reason,
            });
        }
        at = end;
    }
    Ok(records)
}

/// Walks the batches of `range` to the first whose max timestamp reaches
/// `timestamp`, then decodes it (decompressing if need be; this call is rare)
/// to find the first record that does.
fn find_by_timestamp(
    range: &ReadRange,
    timestamp: i64,
) -> Result<Option<TimestampOffset>, LogError> {
    let mut pos = range.from;
    let mut expected = range.from_offset;
    while pos < range.end {
        let header = segment::read_header(&range.file, &range.path, pos, range.end)?;
        let len = header.total_len() as u64;
        if header.max_timestamp >= timestamp {
            // The answer is an offset taken from this batch's header.
            if header.base_offset != expected {
                return Err(LogError::CorruptBatch {
                    path: range.path.clone(),
                    position: pos,
                    base_offset: expected,
                    last_offset: expected + i64::from(header.last_offset_delta),
                    reason: misplaced(header.base_offset, expected),
                });
            }
            if header.is_log_append_time() {
                // Log-append time gives every record the batch's timestamp.
                return Ok(Some(TimestampOffset {
                    offset: header.base_offset,
                    timestamp: header.max_timestamp,
                }));
            }
            let mut bytes = vec![0u8; len as usize];
            range
                .file
                .read_exact_at(&mut bytes, pos)
                .map_err(|e| LogError::io(&range.path, e))?;
            let mut bytes = Bytes::from(bytes);
            let set =
                RecordBatchDecoder::decode(&mut bytes).map_err(|e| LogError::CorruptSegment {
                    path: range.path.clone(),
                    position: pos,
                    reason: format!("cannot decode the records of the batch: {e}"),
                })?;
            if let Some(record) = set.records.iter().find(|r| r.timestamp >= timestamp) {
                return Ok(Some(TimestampOffset {
                    offset: record.offset,
                    timestamp: record.timestamp,
                }));
            }
            // The header's max timestamp overstated its records; look on.
        }
        pos += len;
        expected += i64::from(header.last_offset_delta) + 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod idempotence_tests;

#[cfg(test)]
mod fault_tests;
