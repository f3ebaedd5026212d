//! The queue engine: a ferry-log `Log` of messages plus delivery state.
//!
//! State, all behind one mutex per queue:
//! - `cursor`: the next offset of the log not yet examined. Every offset at
//!   or above it is ready unless settled, in flight, or *indexed* (below).
//!   A FIFO queue therefore holds nothing in memory per ready message.
//! - `requeued`: offsets below the cursor that are ready again (rejected
//!   with requeue), delivered before the cursor's, in offset order.
//! - indexed messages, the only ones with a per-message entry: a priority
//!   above 0 in a priority queue (`levels`, one ordered set per priority),
//!   a delivery time in the future (`delayed`), a per-message TTL
//!   (`expiries`, a side index). The cursor skips messages whose own fields
//!   say they are indexed, so nothing marks them in the log's order.
//! - `in_flight`: delivered, unsettled (consumer, delivery count).
//! - `settled` above the low-water mark (every offset below it is settled),
//!   as ranges; `counts`: delivery counts of unsettled messages not in
//!   flight (delivered before, then requeued).
//!
//! Durable queues journal settles and deliveries (`journal.rs`); on open
//! the cursor restarts at the low-water mark, so every unsettled message is
//! ready again, flagged redelivered if the journal says it was delivered.
//! Segments wholly below the low-water mark are deleted by the timer.
//!
//! Dead-lettering never happens under the lock: messages to dead-letter are
//! held in flight (`dead_lettering`), published to the dead-letter exchange
//! after the lock is released, then settled.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_log::records::{StoredRecord, decode_batch, split_batches};
use ferry_log::{AppendInfo, Clock, FsyncPolicy, Log, LogConfig};
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use super::args::{QueueArgs, rs};
use super::codec::{self, Meta};
use super::engine::Shared;
use super::journal::{FLAG_INDEXED, Journal};
use super::sets::RangeSet;
use super::{
    Arguments, ConnectionId, ConsumerSpec, DeathReason, Delivery, Message, MessagingError,
    QueueInfo,
};

/// Bytes read ahead of the cursor at once: FIFO delivery costs one read per
/// this many bytes of messages rather than one per message.
const READAHEAD_BYTES: usize = 64 * 1024;
/// Messages expired per queue per timer tick, so one huge expiry cannot
/// hold the queue's lock for long.
const EXPIRE_PER_TICK_MAX: usize = 10_000;
/// A consumer of higher priority that just took a message is presumed to
/// want the next one for this long (it is on its way back to `next()`), so
/// lower-priority consumers do not get messages in that gap. After it, a
/// consumer that has not come back is taken to be out of prefetch room.
const CONSUMER_PRIORITY_GRACE: Duration = Duration::from_millis(5);
/// The active segment of a drained queue is rolled (so that it can be
/// deleted) only once it holds at least this much.
const DRAINED_SEGMENT_ROLL_BYTES_MIN: u64 = 1024 * 1024;
/// Bytes a queue's message may take in its log.
pub(crate) const QUEUE_MESSAGE_BYTES_MAX: u32 = 128 * 1024 * 1024;

/// Everything fixed about a queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueConfig {
    pub name: String,
    pub vhost: String,
    /// The directory name under `queues/` (generated, never a client string).
    pub id: String,
    pub dir: PathBuf,
    /// As declared (for equivalence checks).
    pub durable: bool,
    /// Kept across restarts: durable and not exclusive (an exclusive queue
    /// goes with its connection), or a durable delayed exchange's store.
    pub persist: bool,
    pub auto_delete: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub arguments: Arguments,
    pub args: QueueArgs,
    /// A delayed exchange's store: not in any vhost's queue map.
    pub internal: bool,
    /// The fsync policy of durable queues (the broker's `fsync.policy`).
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    count: u32,
    bytes: u64,
    /// Expiry by per-message TTL, re-indexed if the message is requeued.
    expires_at: Option<i64>,
    priority: u8,
    /// Held while being published to the dead-letter exchange.
    dead_lettering: bool,
    /// Returned to the queue at this time unless settled (a visibility
    /// timeout, as SQS has).
    deadline: Option<i64>,
}

#[derive(Debug)]
struct ConsumerEntry {
    key: u64,
    tag: String,
    priority: i32,
    no_ack: bool,
    exclusive: bool,
    notify: Arc<Notify>,
    /// Inside `next()`, able to take a message.
    waiting: bool,
    /// `serve_seq` when it last got a message: round-robin picks the least
    /// recently served.
    last_served: u64,
    transit_until: Option<Instant>,
}

/// A message taken out of the ready structures.
struct Loaded {
    offset: u64,
    message: Message,
    meta: Meta,
    enqueued_ms: i64,
    bytes: u64,
}

/// A message on its way to a dead-letter exchange.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub offset: u64,
    pub message: Message,
    pub reason: DeathReason,
}

#[derive(Debug)]
pub(crate) struct State {
    journal: Option<Journal>,
    flags: u64,
    low_water: u64,
    cursor: u64,
    log_end: u64,
    settled: RangeSet,
    requeued: BTreeSet<u64>,
    /// Index = priority; level 0 is the cursor and `requeued`.
    levels: Vec<BTreeSet<u64>>,
    delayed: BTreeSet<(i64, u64)>,
    expiries: BTreeSet<(i64, u64)>,
    /// Visibility deadlines of in-flight deliveries (stale entries are
    /// skipped: the in-flight entry's own deadline decides).
    deadlines: BTreeSet<(i64, u64)>,
    in_flight: FxHashMap<u64, InFlight>,
    in_flight_bytes: u64,
    counts: FxHashMap<u64, u32>,
    unsettled: u64,
    unsettled_bytes: u64,
    readahead: VecDeque<(u64, u64, Bytes)>,
    consumers: Vec<ConsumerEntry>,
    next_key: u64,
    serve_seq: u64,
    had_consumer: bool,
    last_used_ms: i64,
    closed: bool,
    reclaimed_to: u64,
}

impl State {
    fn ready(&self) -> u64 {
        self.unsettled
            .saturating_sub(self.in_flight.len() as u64)
            .saturating_sub(self.delayed.len() as u64)
    }

    fn ready_bytes(&self) -> u64 {
        self.unsettled_bytes.saturating_sub(self.in_flight_bytes)
    }

    fn consumer_mut(&mut self, key: u64) -> Option<&mut ConsumerEntry> {
        self.consumers.iter_mut().find(|c| c.key == key)
    }
}

/// What `pick` decided.
enum Pick {
    Consumer(u64),
    /// A higher-priority consumer is presumed on its way back until then.
    Blocked(Instant),
    Nobody,
}

#[derive(Debug)]
pub(crate) struct QueueInner {
    pub cfg: QueueConfig,
    pub log: Arc<Log>,
    state: Mutex<State>,
    shared: Weak<Shared>,
    clock: Arc<dyn Clock>,
    /// Persistent messages wait for an fsync before their confirm.
    sync_persistent: bool,
    /// Set for stream queues: the log is read by each consumer from its own
    /// offset and nothing is ever settled.
    pub stream: Option<StreamInfo>,
    /// Woken (every waiter) whenever messages become ready: pollers that
    /// are not consumers (SQS long polls) wait on it.
    pub receivers: Notify,
    /// Counted since the broker started, for `/metrics`.
    pub totals: Totals,
}

/// What a queue did with its messages since the broker started.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub acked: AtomicU64,
    /// Deliveries of a message delivered before.
    pub redelivered: AtomicU64,
    /// Handed to the dead-letter exchange.
    pub dead_lettered: AtomicU64,
}

#[derive(Debug, Clone)]
pub(crate) struct StreamInfo {
    /// The topic whose partition 0 is the stream's log (the broker owns and
    /// closes that log); `None` when the stream has a log of its own.
    pub topic: Option<String>,
    /// The stream created the topic, so the topic goes with it.
    pub owns_topic: bool,
}

/// One message for [`QueueInner::append_all`]: its encoded batch (one
/// record), what the queue indexes it by, and its body's size.
pub(crate) struct Entry<'a> {
    pub batch: &'a [u8],
    pub meta: &'a Meta,
    pub body_bytes: u64,
}

/// How an append went.
#[derive(Debug)]
pub(crate) enum Appended {
    /// Stored; `Some` if a publisher confirm must wait for an fsync.
    Stored(Option<AppendInfo>),
    /// Refused by `x-overflow` reject-publish(-dlx); `dead_letter` says
    /// whether to dead-letter the refused message.
    Refused { dead_letter: bool },
    /// The queue was deleted meanwhile.
    Gone,
}

/// What the timer found.
#[derive(Debug, Default)]
pub(crate) struct TickOutcome {
    /// Unused for longer than `x-expires`: delete it.
    pub expired: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn storage(e: impl std::fmt::Display) -> MessagingError {
    MessagingError::Storage(e.to_string())
}

fn lossy_expiration(ttl_ms: Option<u64>) -> Option<String> {
    ttl_ms.map(|t| t.to_string())
}

impl QueueInner {
    /// Opens (creating, or recovering) a queue's log and state.
    pub fn open(
        cfg: QueueConfig,
        shared: Weak<Shared>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<QueueInner>, MessagingError> {
        let fsync = if cfg.persist {
            match cfg.fsync {
                // Visible when written; persistent messages are synced on
                // demand (group commit) before their confirm.
                FsyncPolicy::Always => FsyncPolicy::Never,
                other => other,
            }
        } else {
            FsyncPolicy::Never
        };
        let log_config = LogConfig {
            segment_bytes: cfg.segment_bytes.max(1024),
            segment_ms: i64::MAX / 4,
            retention_ms: None,
            retention_bytes: None,
            max_batch_bytes: QUEUE_MESSAGE_BYTES_MAX,
            index_interval_bytes: 4096,
            fsync,
        };
        let log = Log::open(&cfg.dir.join("log"), log_config, clock.clone()).map_err(storage)?;
        let log_start = u64::try_from(log.log_start_offset()).unwrap_or(0);
        let log_end = u64::try_from(log.log_end_offset()).unwrap_or(0);
        let (journal, mut js) = if cfg.persist {
            let (j, s) = Journal::open(&cfg.dir).map_err(storage)?;
            (Some(j), s)
        } else {
            (None, Default::default())
        };
        // Entries past the log's end describe appends a crash took back; their
        // offsets will be reused by new messages.
        js.settled.remove_below(log_start);
        let mut settled = RangeSet::default();
        for (s, e) in js.settled.ranges() {
            settled.insert_range(s.max(log_start), e.min(log_end));
        }
        js.delivered.retain(|o, _| *o >= log_start && *o < log_end);
        let low_water = settled.first_absent_from(log_start).min(log_end);
        settled.remove_below(low_water);
        let unsettled = (log_end - low_water) - settled.count_in(low_water, log_end);
        let levels = match cfg.args.max_priority {
            Some(p) => (0..=usize::from(p)).map(|_| BTreeSet::new()).collect(),
            None => Vec::new(),
        };
        let now_ms = clock.now_ms();
        let inner = Arc::new(QueueInner {
            sync_persistent: cfg.persist && cfg.fsync == FsyncPolicy::Always,
            cfg,
            log: Arc::new(log),
            state: Mutex::new(State {
                journal,
                flags: js.flags,
                low_water,
                cursor: low_water,
                log_end,
                settled,
                requeued: BTreeSet::new(),
                levels,
                delayed: BTreeSet::new(),
                expiries: BTreeSet::new(),
                deadlines: BTreeSet::new(),
                in_flight: FxHashMap::default(),
                in_flight_bytes: 0,
                counts: js.delivered,
                unsettled,
                unsettled_bytes: 0,
                readahead: VecDeque::new(),
                consumers: Vec::new(),
                next_key: 1,
                serve_seq: 0,
                had_consumer: false,
                last_used_ms: now_ms,
                closed: false,
                reclaimed_to: log_start,
            }),
            shared,
            clock,
            stream: None,
            receivers: Notify::new(),
            totals: Totals::default(),
        });
        {
            let mut st = lock(&inner.state);
            // In flight with a visibility deadline still ahead (SQS): they
            // stay in flight until it, as if the broker had not stopped.
            inner.restore_hidden(&mut st, js.hidden, now_ms);
            if unsettled > 0 && inner.needs_scan(&st) {
                inner.rebuild_indexes(&mut st)?;
            }
            // Start from a compact journal describing the recovered state.
            inner.rewrite_journal(&mut st).map_err(storage)?;
            if unsettled > 0 {
                tracing::info!(
                    queue = %inner.cfg.name,
                    vhost = %inner.cfg.vhost,
                    messages = unsettled,
                    low_water,
                    log_end,
                    "recovered queue"
                );
            }
        }
        Ok(inner)
    }

    /// A stream queue over `log` (a topic's partition or its own log).
    pub fn open_stream(
        cfg: QueueConfig,
        log: Arc<Log>,
        stream: StreamInfo,
        shared: Weak<Shared>,
        clock: Arc<dyn Clock>,
    ) -> Arc<QueueInner> {
        let now_ms = clock.now_ms();
        Arc::new(QueueInner {
            sync_persistent: true,
            cfg,
            log,
            state: Mutex::new(State {
                journal: None,
                flags: 0,
                low_water: 0,
                cursor: 0,
                log_end: 0,
                settled: RangeSet::default(),
                requeued: BTreeSet::new(),
                levels: Vec::new(),
                delayed: BTreeSet::new(),
                expiries: BTreeSet::new(),
                deadlines: BTreeSet::new(),
                in_flight: FxHashMap::default(),
                in_flight_bytes: 0,
                counts: FxHashMap::default(),
                unsettled: 0,
                unsettled_bytes: 0,
                readahead: VecDeque::new(),
                consumers: Vec::new(),
                next_key: 1,
                serve_seq: 0,
                had_consumer: false,
                last_used_ms: now_ms,
                closed: false,
                reclaimed_to: 0,
            }),
            shared,
            clock,
            stream: Some(stream),
            receivers: Notify::new(),
            totals: Totals::default(),
        })
    }

    pub fn is_stream(&self) -> bool {
        self.stream.is_some()
    }

    pub fn owned_topic(&self) -> Option<String> {
        self.stream
            .as_ref()
            .filter(|s| s.owns_topic)
            .and_then(|s| s.topic.clone())
    }

    fn not_for_streams(&self, what: &str) -> MessagingError {
        MessagingError::PreconditionFailed(format!(
            "{what} is not supported by stream {}",
            rs("queue", &self.cfg.name, &self.cfg.vhost)
        ))
    }

    /// Whether a stream consumer is still registered (and its queue alive).
    pub fn consumer_alive(&self, key: u64) -> bool {
        let st = lock(&self.state);
        !st.closed && st.consumers.iter().any(|c| c.key == key)
    }

    /// Streams keep every message; one write for all of `entries` (their
    /// batches concatenated in `records`).
    fn append_stream(
        &self,
        records: &[u8],
        entries: &[Entry<'_>],
    ) -> Result<Vec<Appended>, MessagingError> {
        if lock(&self.state).closed {
            return Ok(entries.iter().map(|_| Appended::Gone).collect());
        }
        let info = self.log.append(records).map_err(storage)?;
        // Under group commit nothing is readable before an fsync: start one
        // for messages nobody waits for (the timer is the fallback).
        if entries.iter().any(|e| !e.meta.persistent)
            && self.log.config().fsync == FsyncPolicy::Always
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let log = self.log.clone();
            handle.spawn(async move {
                if let Err(e) = log.wait_synced(&info).await {
                    tracing::warn!(error = %e, "could not fsync a stream queue's log");
                }
            });
        }
        Ok(entries
            .iter()
            .map(|e| Appended::Stored(e.meta.persistent.then_some(info)))
            .collect())
    }

    /// Puts recovered offsets whose visibility deadline is still ahead back
    /// in flight until it (no consumer holds them: the timer returns them).
    fn restore_hidden(&self, st: &mut State, hidden: HashMap<u64, i64>, now: i64) {
        let mut offsets: Vec<(u64, i64)> = hidden
            .into_iter()
            .filter(|(o, at)| {
                *at > now && *o >= st.low_water && *o < st.log_end && !st.settled.contains(*o)
            })
            .collect();
        offsets.sort_unstable();
        for (offset, at) in offsets {
            let Some(l) = self.load_or_drop(st, offset) else {
                continue;
            };
            let count = st.counts.remove(&offset).unwrap_or(1);
            let expires_at = if l.meta.ttl_ms.is_some() {
                self.expiry_of(&l.meta, l.enqueued_ms)
            } else {
                None
            };
            st.in_flight.insert(
                offset,
                InFlight {
                    count,
                    bytes: l.bytes,
                    expires_at,
                    priority: self.effective_priority(&l.meta),
                    dead_lettering: false,
                    deadline: Some(at),
                },
            );
            st.in_flight_bytes += l.bytes;
            st.deadlines.insert((at, offset));
        }
    }

    fn needs_scan(&self, st: &State) -> bool {
        st.flags & FLAG_INDEXED != 0
            || self.cfg.args.max_priority.is_some()
            || self.cfg.args.max_length_bytes.is_some()
    }

    /// Walks the unsettled part of the log to rebuild the per-message
    /// indexes and the byte count. Only queues that may hold indexed
    /// messages (or count bytes) pay for it.
    fn rebuild_indexes(&self, st: &mut State) -> Result<(), MessagingError> {
        let now = self.clock.now_ms();
        let mut offset = st.low_water;
        let mut bytes = 0u64;
        while offset < st.log_end {
            let read = match self.log.read(offset as i64, 1024 * 1024, true) {
                Ok(read) => read,
                Err(e @ ferry_log::LogError::CorruptBatch { last_offset, .. }) => {
                    // Its messages stay unindexed; delivery drops them when
                    // it reaches them. The rest of the queue must open.
                    tracing::error!(queue = %self.cfg.name, error = %e, "a stored batch is corrupt; its messages will not be delivered");
                    offset = offset.max(u64::try_from(last_offset).unwrap_or(0) + 1);
                    continue;
                }
                Err(e) => return Err(storage(e)),
            };
            if read.records.is_empty() {
                break;
            }
            for (_, last, batch) in split_batches(read.records).map_err(storage)? {
                for rec in decode_batch(batch).map_err(storage)? {
                    let Ok(o) = u64::try_from(rec.offset) else {
                        continue;
                    };
                    if o < offset || st.settled.contains(o) {
                        continue;
                    }
                    bytes += rec.value.as_ref().map_or(0, |v| v.len() as u64);
                    if st.in_flight.contains_key(&o) {
                        // Restored in flight: indexed if it comes back.
                        continue;
                    }
                    let meta = codec::decode_meta(&rec);
                    self.index_new(st, o, &meta, rec.timestamp, now);
                }
                offset = offset.max(u64::try_from(last).unwrap_or(0) + 1);
            }
        }
        st.unsettled_bytes = bytes;
        Ok(())
    }

    fn effective_priority(&self, meta: &Meta) -> u8 {
        match self.cfg.args.max_priority {
            Some(max) => meta.priority.min(max),
            None => 0,
        }
    }

    /// Whether the cursor leaves this message to an index.
    fn is_indexed(&self, meta: &Meta) -> bool {
        self.effective_priority(meta) > 0 || meta.deliver_at_ms.is_some()
    }

    fn expiry_of(&self, meta: &Meta, enqueued_ms: i64) -> Option<i64> {
        let ttl = match (self.cfg.args.message_ttl_ms, meta.ttl_ms) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => return None,
        };
        Some(enqueued_ms.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)))
    }

    /// Puts a new (or recovered) ready message into the index its fields ask
    /// for, if any.
    fn index_new(&self, st: &mut State, offset: u64, meta: &Meta, enqueued_ms: i64, now: i64) {
        if meta.ttl_ms.is_some()
            && let Some(at) = self.expiry_of(meta, enqueued_ms)
        {
            st.expiries.insert((at, offset));
        }
        if let Some(at) = meta.deliver_at_ms {
            if at > now {
                st.delayed.insert((at, offset));
                return;
            }
            self.make_ready(st, offset, self.effective_priority(meta));
            return;
        }
        let p = self.effective_priority(meta);
        if p > 0 {
            st.levels[usize::from(p)].insert(offset);
        }
    }

    /// Returns an offset below the cursor (or an indexed one) to the ready
    /// structures.
    fn make_ready(&self, st: &mut State, offset: u64, priority: u8) {
        if priority > 0 && usize::from(priority) < st.levels.len() {
            st.levels[usize::from(priority)].insert(offset);
        } else {
            st.requeued.insert(offset);
        }
    }

    fn load(&self, st: &mut State, offset: u64) -> Result<StoredRecord, MessagingError> {
        let batch = match st
            .readahead
            .iter()
            .find(|(first, last, _)| *first <= offset && offset <= *last)
        {
            Some((_, _, b)) => b.clone(),
            None => {
                let read = self.log.read(offset as i64, 1, true).map_err(storage)?;
                let batches = split_batches(read.records).map_err(storage)?;
                let Some((_, _, b)) = batches.into_iter().next() else {
                    return Err(MessagingError::Storage(format!(
                        "message {offset} of queue '{}' is not in its log",
                        self.cfg.name
                    )));
                };
                b
            }
        };
        decode_batch(batch)
            .map_err(storage)?
            .into_iter()
            .find(|r| r.offset == offset as i64)
            .ok_or_else(|| {
                MessagingError::Storage(format!(
                    "message {offset} of queue '{}' is missing from its batch",
                    self.cfg.name
                ))
            })
    }

    fn fill_readahead(&self, st: &mut State) -> Result<(), MessagingError> {
        let cursor = st.cursor;
        while st
            .readahead
            .front()
            .is_some_and(|(_, last, _)| *last < cursor)
        {
            st.readahead.pop_front();
        }
        if st
            .readahead
            .front()
            .is_some_and(|(first, _, _)| *first <= cursor)
        {
            return Ok(());
        }
        st.readahead.clear();
        let read = self
            .log
            .read(cursor as i64, READAHEAD_BYTES, true)
            .map_err(storage)?;
        for (first, last, b) in split_batches(read.records).map_err(storage)? {
            st.readahead.push_back((
                u64::try_from(first).unwrap_or(0),
                u64::try_from(last).unwrap_or(0),
                b,
            ));
        }
        Ok(())
    }

    fn loaded(&self, offset: u64, rec: &StoredRecord) -> Loaded {
        let (message, meta) = codec::decode_message(rec);
        Loaded {
            offset,
            bytes: message.body.len() as u64,
            message,
            meta,
            enqueued_ms: rec.timestamp,
        }
    }

    /// Moves the cursor over settled, in-flight and indexed offsets to the
    /// next FIFO message, and loads it (the cursor stays on it).
    fn peek_cursor(&self, st: &mut State) -> Option<Loaded> {
        loop {
            let c = st.cursor;
            if c >= st.log_end {
                return None;
            }
            if c < st.low_water {
                st.cursor = st.low_water;
                continue;
            }
            if st.settled.contains(c) {
                st.cursor = st.settled.first_absent_from(c);
                continue;
            }
            if st.in_flight.contains_key(&c) {
                st.cursor += 1;
                continue;
            }
            let rec = match self.fill_readahead(st).and_then(|()| self.load(st, c)) {
                Ok(rec) => rec,
                Err(_) if self.check_discard(st) => continue,
                Err(e) => {
                    // Undeliverable bytes must not wedge the queue.
                    tracing::error!(queue = %self.cfg.name, offset = c, error = %e, "dropping an unreadable message");
                    self.settle(st, c, 0);
                    st.cursor += 1;
                    continue;
                }
            };
            let l = self.loaded(c, &rec);
            if self.is_indexed(&l.meta) {
                st.cursor += 1;
                continue;
            }
            return Some(l);
        }
    }

    /// Whether the log lost its unsynced tail (a failed fsync); if so the
    /// queue forgets those messages too.
    fn check_discard(&self, st: &mut State) -> bool {
        let end = u64::try_from(self.log.log_end_offset()).unwrap_or(0);
        if end < st.log_end {
            self.forget_from(st, end);
            return true;
        }
        false
    }

    fn load_or_drop(&self, st: &mut State, offset: u64) -> Option<Loaded> {
        match self.load(st, offset) {
            Ok(rec) => Some(self.loaded(offset, &rec)),
            Err(_) if self.check_discard(st) => None,
            Err(e) => {
                tracing::error!(queue = %self.cfg.name, offset, error = %e, "dropping an unreadable message");
                self.settle(st, offset, 0);
                None
            }
        }
    }

    /// Takes the next message to deliver out of the ready structures:
    /// highest priority first, then requeued ones, then the cursor's.
    fn pop_ready(&self, st: &mut State) -> Option<Loaded> {
        loop {
            let mut popped = None;
            for p in (1..st.levels.len()).rev() {
                if let Some(o) = st.levels[p].pop_first() {
                    popped = Some(o);
                    break;
                }
            }
            if popped.is_none() {
                popped = st.requeued.pop_first();
            }
            if let Some(o) = popped {
                match self.load_or_drop(st, o) {
                    Some(l) => return Some(l),
                    None => continue,
                }
            }
            let l = self.peek_cursor(st)?;
            st.cursor = l.offset + 1;
            return Some(l);
        }
    }

    fn settle(&self, st: &mut State, offset: u64, bytes: u64) {
        if offset < st.low_water || !st.settled.insert(offset) {
            return;
        }
        st.unsettled = st.unsettled.saturating_sub(1);
        st.unsettled_bytes = st.unsettled_bytes.saturating_sub(bytes);
        st.counts.remove(&offset);
        if let Some(j) = st.journal.as_mut() {
            j.settled(offset);
        }
        if offset == st.low_water {
            st.low_water = st.settled.first_absent_from(offset);
            st.settled.remove_below(st.low_water);
        }
    }

    /// Drops a message that left the ready structures, or holds it for the
    /// dead-letter exchange if the queue has one.
    fn discard(
        &self,
        st: &mut State,
        l: Loaded,
        reason: DeathReason,
        outbox: &mut Vec<DeadLetter>,
    ) {
        if self.cfg.args.dead_letter_exchange.is_some() {
            st.in_flight.insert(
                l.offset,
                InFlight {
                    count: 0,
                    bytes: l.bytes,
                    expires_at: None,
                    priority: 0,
                    dead_lettering: true,
                    deadline: None,
                },
            );
            st.in_flight_bytes += l.bytes;
            st.counts.remove(&l.offset);
            self.totals.dead_lettered.fetch_add(1, Ordering::Relaxed);
            outbox.push(DeadLetter {
                offset: l.offset,
                message: l.message,
                reason,
            });
        } else {
            self.settle(st, l.offset, l.bytes);
        }
    }

    fn is_expired(&self, l: &Loaded, now: i64) -> bool {
        self.expiry_of(&l.meta, l.enqueued_ms)
            .is_some_and(|at| now > at)
    }

    /// The next deliverable message, expiring what has expired on the way.
    fn take(
        &self,
        st: &mut State,
        no_ack: bool,
        visibility_ms: Option<u64>,
        outbox: &mut Vec<DeadLetter>,
    ) -> Option<Delivery> {
        let now = self.clock.now_ms();
        loop {
            let l = self.pop_ready(st)?;
            if self.is_expired(&l, now) {
                self.discard(st, l, DeathReason::Expired, outbox);
                continue;
            }
            return Some(self.deliver_loaded(st, l, no_ack, visibility_ms, now));
        }
    }

    /// Hands a message taken out of the ready structures to its receiver:
    /// settled at once (`no_ack`) or in flight, with a visibility deadline
    /// if one is given.
    fn deliver_loaded(
        &self,
        st: &mut State,
        l: Loaded,
        no_ack: bool,
        visibility_ms: Option<u64>,
        now: i64,
    ) -> Delivery {
        let count = st.counts.remove(&l.offset).unwrap_or(0).saturating_add(1);
        if no_ack {
            self.settle(st, l.offset, l.bytes);
        } else {
            let expires_at = if l.meta.ttl_ms.is_some() {
                self.expiry_of(&l.meta, l.enqueued_ms)
            } else {
                None
            };
            st.in_flight.insert(
                l.offset,
                InFlight {
                    count,
                    bytes: l.bytes,
                    expires_at,
                    priority: self.effective_priority(&l.meta),
                    dead_lettering: false,
                    deadline: visibility_ms.map(|v| {
                        let at = now.saturating_add(i64::try_from(v).unwrap_or(i64::MAX));
                        st.deadlines.insert((at, l.offset));
                        at
                    }),
                },
            );
            st.in_flight_bytes += l.bytes;
            let deadline = st.in_flight.get(&l.offset).and_then(|f| f.deadline);
            if let Some(j) = st.journal.as_mut() {
                j.delivered(l.offset, count);
                if let Some(at) = deadline {
                    j.hidden(l.offset, at);
                }
            }
        }
        if count > 1 {
            self.totals.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        Delivery {
            id: l.offset,
            message: l.message,
            redelivered: count > 1,
            delivery_count: count,
            remaining: st.ready(),
        }
    }

    /// Writes what the operation journaled; a failed write is logged (the
    /// state in memory is right, and the next compaction rewrites it).
    fn commit(&self, st: &mut State) {
        if let Some(j) = st.journal.as_mut()
            && let Err(e) = j.write_pending()
        {
            tracing::error!(queue = %self.cfg.name, path = %j.path().display(), error = %e, "could not write the queue's state journal");
        }
    }

    fn pick(&self, st: &State, now: Instant) -> Pick {
        let sac_active = if self.cfg.args.single_active_consumer {
            // The active consumer: highest priority, then first registered.
            st.consumers
                .iter()
                .min_by_key(|c| (std::cmp::Reverse(c.priority), c.key))
                .map(|c| c.key)
        } else {
            None
        };
        let eligible = st.consumers.iter().filter(|c| {
            sac_active.is_none_or(|k| k == c.key)
                && (c.waiting || c.transit_until.is_some_and(|t| t > now))
        });
        let Some(top) = eligible.clone().map(|c| c.priority).max() else {
            return Pick::Nobody;
        };
        if let Some(c) = eligible
            .clone()
            .filter(|c| c.priority == top && c.waiting)
            .min_by_key(|c| (c.last_served, c.key))
        {
            return Pick::Consumer(c.key);
        }
        match eligible
            .filter(|c| c.priority == top)
            .filter_map(|c| c.transit_until)
            .min()
        {
            Some(t) => Pick::Blocked(t),
            None => Pick::Nobody,
        }
    }

    /// Wakes the consumer that should take the next ready message.
    fn notify_next(&self, st: &State) {
        if st.ready() == 0 {
            return;
        }
        self.receivers.notify_waiters();
        match self.pick(st, Instant::now()) {
            Pick::Consumer(k) => {
                if let Some(c) = st.consumers.iter().find(|c| c.key == k) {
                    c.notify.notify_one();
                }
            }
            // A higher-priority consumer may be out of prefetch room: the
            // waiting ones must look again once its grace has passed, so
            // they are woken to sleep until then.
            Pick::Blocked(_) => {
                for c in st.consumers.iter().filter(|c| c.waiting) {
                    c.notify.notify_one();
                }
            }
            Pick::Nobody => {}
        }
    }

    pub fn append(
        &self,
        batch: &[u8],
        meta: &Meta,
        body_bytes: u64,
        outbox: &mut Vec<DeadLetter>,
    ) -> Result<Appended, MessagingError> {
        let entry = Entry {
            batch,
            meta,
            body_bytes,
        };
        let mut appended = self.append_all(&[entry], outbox)?;
        Ok(appended.pop().unwrap_or(Appended::Gone))
    }

    /// Appends messages in order, with one write to the log for all of them
    /// (a SendMessageBatch: a write per message was most of its cost), and
    /// answers for each. Each entry's batch holds exactly one record, so the
    /// messages take consecutive offsets. Under `x-overflow` reject-publish
    /// the messages that fit are taken and the rest refused, each message
    /// counted as ready: exact for one message, for several it may refuse a
    /// delayed one a little early.
    pub fn append_all(
        &self,
        entries: &[Entry<'_>],
        outbox: &mut Vec<DeadLetter>,
    ) -> Result<Vec<Appended>, MessagingError> {
        let records = if let [one] = entries {
            std::borrow::Cow::Borrowed(one.batch)
        } else {
            std::borrow::Cow::Owned(entries.iter().map(|e| e.batch).collect::<Vec<_>>().concat())
        };
        if self.is_stream() {
            return self.append_stream(&records, entries);
        }
        let mut st = lock(&self.state);
        if st.closed {
            return Ok(entries.iter().map(|_| Appended::Gone).collect());
        }
        let args = &self.cfg.args;
        let overflow = args.overflow();
        let mut taken = entries.len();
        if overflow != super::Overflow::DropHead {
            let (mut ready, mut ready_bytes) = (st.ready(), st.ready_bytes());
            taken = entries
                .iter()
                .take_while(|e| {
                    let full = args.max_length.is_some_and(|m| ready >= m)
                        || args
                            .max_length_bytes
                            .is_some_and(|m| ready_bytes + e.body_bytes > m);
                    ready += 1;
                    ready_bytes += e.body_bytes;
                    !full
                })
                .count();
        }
        let refused = || Appended::Refused {
            dead_letter: overflow == super::Overflow::RejectPublishDlx
                && args.dead_letter_exchange.is_some(),
        };
        if taken == 0 {
            return Ok(entries.iter().map(|_| refused()).collect());
        }
        let (stored, rest) = entries.split_at(taken);
        let stored_len: usize = stored.iter().map(|e| e.batch.len()).sum();
        let info = self.log.append(&records[..stored_len]).map_err(storage)?;
        let first = u64::try_from(info.base_offset).unwrap_or(0);
        if first < st.log_end {
            // A failed fsync made the log discard what it had not synced;
            // those offsets are about to be reused.
            self.forget_from(&mut st, first);
        }
        st.log_end = u64::try_from(info.last_offset).unwrap_or(first) + 1;
        let now = self.clock.now_ms();
        let mut out = Vec::with_capacity(entries.len());
        for (offset, e) in (first..).zip(stored) {
            st.unsettled += 1;
            st.unsettled_bytes += e.body_bytes;
            if (e.meta.ttl_ms.is_some() || self.is_indexed(e.meta)) && st.flags & FLAG_INDEXED == 0
            {
                st.flags |= FLAG_INDEXED;
                let flags = st.flags;
                if let Some(j) = st.journal.as_mut() {
                    j.flags(flags);
                }
            }
            self.index_new(&mut st, offset, e.meta, now, now);
            let wait = (self.sync_persistent && e.meta.persistent).then_some(info);
            out.push(Appended::Stored(wait));
        }
        if overflow == super::Overflow::DropHead {
            while args.max_length.is_some_and(|m| st.ready() > m)
                || args.max_length_bytes.is_some_and(|m| st.ready_bytes() > m)
            {
                let Some(l) = self.pop_ready(&mut st) else {
                    break;
                };
                self.discard(&mut st, l, DeathReason::Maxlen, outbox);
            }
        }
        self.commit(&mut st);
        self.notify_next(&st);
        out.extend(rest.iter().map(|_| refused()));
        Ok(out)
    }

    /// Settles dead-lettered messages once they have been republished.
    pub fn finish(&self, outbox: Vec<DeadLetter>) {
        if outbox.is_empty() {
            return;
        }
        if let Some(shared) = self.shared.upgrade() {
            shared.dead_letter(&self.cfg, &outbox);
        }
        let mut st = lock(&self.state);
        for d in &outbox {
            if let Some(f) = st.in_flight.remove(&d.offset) {
                st.in_flight_bytes = st.in_flight_bytes.saturating_sub(f.bytes);
                self.settle(&mut st, d.offset, f.bytes);
            }
        }
        self.commit(&mut st);
    }

    pub fn info(&self) -> QueueInfo {
        let st = lock(&self.state);
        let message_count = if self.is_stream() {
            u64::try_from(self.log.high_watermark() - self.log.log_start_offset()).unwrap_or(0)
        } else {
            st.ready()
        };
        QueueInfo {
            name: self.cfg.name.clone(),
            message_count,
            consumer_count: st.consumers.len() as u32,
        }
    }

    /// Messages held (ready, delayed or unacknowledged).
    pub fn unsettled(&self) -> u64 {
        lock(&self.state).unsettled
    }

    pub fn touch(&self) {
        lock(&self.state).last_used_ms = self.clock.now_ms();
    }

    pub fn consumer_count(&self) -> usize {
        lock(&self.state).consumers.len()
    }

    pub fn get(&self, no_ack: bool) -> Result<Option<Delivery>, MessagingError> {
        if self.is_stream() {
            return Err(self.not_for_streams("basic.get"));
        }
        let mut outbox = Vec::new();
        let d = {
            let mut st = lock(&self.state);
            if st.closed {
                return Err(self.gone());
            }
            st.last_used_ms = self.clock.now_ms();
            let d = self.take(&mut st, no_ack, None, &mut outbox);
            self.commit(&mut st);
            d
        };
        self.finish(outbox);
        Ok(d)
    }

    pub(crate) fn gone(&self) -> MessagingError {
        MessagingError::NotFound {
            kind: "queue",
            name: self.cfg.name.clone(),
            vhost: self.cfg.vhost.clone(),
        }
    }

    fn unknown_tag(id: u64) -> MessagingError {
        MessagingError::PreconditionFailed(format!("unknown delivery tag {id}"))
    }

    pub fn ack(&self, id: u64) -> Result<(), MessagingError> {
        self.ack_then(id, true)
    }

    /// Settles like `ack`, but leaves the journal record in the journal's
    /// buffer: `write_journal` (or any later operation on the queue that
    /// journals something) writes it. A front end acks a burst of
    /// deliveries this way and writes once, before it reads or writes the
    /// socket again.
    pub fn ack_journal_later(&self, id: u64) -> Result<(), MessagingError> {
        self.ack_then(id, false)
    }

    /// Writes journal records left buffered (to the page cache).
    pub fn write_journal(&self) {
        let mut st = lock(&self.state);
        self.commit(&mut st);
    }

    fn ack_then(&self, id: u64, write: bool) -> Result<(), MessagingError> {
        if self.is_stream() {
            // Stream consumers ack for flow control only; nothing is removed.
            return Ok(());
        }
        let mut st = lock(&self.state);
        match st.in_flight.get(&id) {
            Some(f) if !f.dead_lettering => {}
            _ => return Err(Self::unknown_tag(id)),
        }
        if let Some(f) = st.in_flight.remove(&id) {
            st.in_flight_bytes = st.in_flight_bytes.saturating_sub(f.bytes);
            self.settle(&mut st, id, f.bytes);
            self.totals.acked.fetch_add(1, Ordering::Relaxed);
        }
        if write {
            self.commit(&mut st);
        }
        Ok(())
    }

    pub fn reject(&self, id: u64, requeue: bool) -> Result<(), MessagingError> {
        if self.is_stream() {
            return Ok(());
        }
        let mut outbox = Vec::new();
        {
            let mut st = lock(&self.state);
            let f = match st.in_flight.get(&id) {
                Some(f) if !f.dead_lettering => *f,
                _ => return Err(Self::unknown_tag(id)),
            };
            self.return_in_flight(&mut st, id, f, requeue, &mut outbox);
            self.commit(&mut st);
        }
        self.finish(outbox);
        Ok(())
    }

    /// Takes a delivery back: ready again (`requeue`, unless past the
    /// delivery limit), or dead-lettered/dropped.
    fn return_in_flight(
        &self,
        st: &mut State,
        id: u64,
        f: InFlight,
        requeue: bool,
        outbox: &mut Vec<DeadLetter>,
    ) {
        st.in_flight.remove(&id);
        st.in_flight_bytes = st.in_flight_bytes.saturating_sub(f.bytes);
        let over_limit = self
            .cfg
            .args
            .delivery_limit
            .is_some_and(|limit| u64::from(f.count) > limit);
        if requeue && !over_limit && !st.closed {
            if let Some(j) = st.journal.as_mut()
                && f.deadline.is_some_and(|at| at > self.clock.now_ms())
            {
                // Returned before its deadline: a restart must not hide it.
                j.hidden(id, 0);
            }
            st.counts.insert(id, f.count);
            self.make_ready(st, id, f.priority);
            if let Some(at) = f.expires_at {
                st.expiries.insert((at, id));
            }
            self.notify_next(st);
        } else {
            let reason = if requeue {
                DeathReason::DeliveryLimit
            } else {
                DeathReason::Rejected
            };
            if self.cfg.args.dead_letter_exchange.is_some() {
                if let Some(l) = self.load_or_drop(st, id) {
                    self.discard(st, l, reason, outbox);
                }
            } else {
                self.settle(st, id, f.bytes);
            }
        }
    }

    /// Takes the next ready message for at most `visibility`: unless acked
    /// (or its visibility changed) by then, it is returned to the queue as a
    /// rejected-with-requeue delivery would be (SQS's visibility timeout).
    pub fn receive(&self, visibility: Duration) -> Result<Option<Delivery>, MessagingError> {
        if self.is_stream() {
            return Err(self.not_for_streams("receive"));
        }
        let mut outbox = Vec::new();
        let d = {
            let mut st = lock(&self.state);
            if st.closed {
                return Err(self.gone());
            }
            st.last_used_ms = self.clock.now_ms();
            let ms = u64::try_from(visibility.as_millis()).unwrap_or(u64::MAX);
            let d = self.take(&mut st, false, Some(ms), &mut outbox);
            self.commit(&mut st);
            d
        };
        self.finish(outbox);
        Ok(d)
    }

    /// Gives an in-flight delivery a new visibility deadline from now; zero
    /// returns it to the queue at once.
    pub fn set_visibility(&self, id: u64, visibility: Duration) -> Result<(), MessagingError> {
        let mut outbox = Vec::new();
        {
            let mut st = lock(&self.state);
            let now = self.clock.now_ms();
            let at = now.saturating_add(i64::try_from(visibility.as_millis()).unwrap_or(i64::MAX));
            let f = match st.in_flight.get_mut(&id) {
                Some(f) if !f.dead_lettering => {
                    f.deadline = Some(at);
                    *f
                }
                _ => return Err(Self::unknown_tag(id)),
            };
            if visibility.is_zero() {
                // Back before the deadline it was given: a restart must not
                // hide it (the in-flight entry already holds the new one).
                if let Some(j) = st.journal.as_mut() {
                    j.hidden(id, 0);
                }
                self.return_in_flight(&mut st, id, f, true, &mut outbox);
            } else {
                st.deadlines.insert((at, id));
                if let Some(j) = st.journal.as_mut() {
                    j.hidden(id, at);
                }
            }
            self.commit(&mut st);
        }
        self.finish(outbox);
        Ok(())
    }

    /// Takes up to `max` ready messages, each for at most `visibility`, in
    /// delivery order. Messages `accept` turns down stay ready where they
    /// were (not counted as deliveries); at most `scan_max` messages are
    /// looked at. SQS FIFO queues use it to pass over message groups that
    /// have a message in flight.
    pub fn receive_batch(
        &self,
        visibility: Duration,
        max: usize,
        scan_max: usize,
        accept: &mut dyn FnMut(&Message) -> bool,
    ) -> Result<Vec<Delivery>, MessagingError> {
        if self.is_stream() {
            return Err(self.not_for_streams("receive"));
        }
        let mut outbox = Vec::new();
        let out = {
            let mut st = lock(&self.state);
            if st.closed {
                return Err(self.gone());
            }
            let now = self.clock.now_ms();
            st.last_used_ms = now;
            let ms = u64::try_from(visibility.as_millis()).unwrap_or(u64::MAX);
            let mut out = Vec::new();
            let mut skipped = Vec::new();
            let mut scanned = 0usize;
            while out.len() < max && scanned < scan_max {
                let Some(l) = self.pop_ready(&mut st) else {
                    break;
                };
                scanned += 1;
                if self.is_expired(&l, now) {
                    self.discard(&mut st, l, DeathReason::Expired, &mut outbox);
                    continue;
                }
                if !accept(&l.message) {
                    skipped.push((l.offset, self.effective_priority(&l.meta)));
                    continue;
                }
                out.push(self.deliver_loaded(&mut st, l, false, Some(ms), now));
            }
            for (offset, priority) in skipped {
                self.make_ready(&mut st, offset, priority);
            }
            self.commit(&mut st);
            out
        };
        self.finish(outbox);
        Ok(out)
    }

    /// The delivery count of an in-flight delivery, `None` if `id` is not
    /// in flight (settled, or back in the queue).
    pub fn in_flight_count(&self, id: u64) -> Option<u32> {
        let st = lock(&self.state);
        st.in_flight
            .get(&id)
            .filter(|f| !f.dead_lettering)
            .map(|f| f.count)
    }

    /// Every in-flight delivery (not being dead-lettered), read back from
    /// the log, in offset order: what a front end that keeps per-delivery
    /// state (SQS FIFO group locks) rebuilds it from after a restart.
    pub fn in_flight_deliveries(&self) -> Vec<Delivery> {
        let mut st = lock(&self.state);
        let mut ids: Vec<(u64, u32)> = st
            .in_flight
            .iter()
            .filter(|(_, f)| !f.dead_lettering)
            .map(|(o, f)| (*o, f.count))
            .collect();
        ids.sort_unstable();
        let remaining = st.ready();
        ids.into_iter()
            .filter_map(|(offset, count)| {
                let rec = self.load(&mut st, offset).ok()?;
                let (message, _) = codec::decode_message(&rec);
                Some(Delivery {
                    id: offset,
                    message,
                    redelivered: count > 1,
                    delivery_count: count,
                    remaining,
                })
            })
            .collect()
    }

    /// Ready, in-flight and delayed messages.
    pub fn counts(&self) -> super::QueueCounts {
        let st = lock(&self.state);
        super::QueueCounts {
            ready: st.ready(),
            in_flight: st.in_flight.len() as u64,
            delayed: st.delayed.len() as u64,
        }
    }

    /// Returns in-flight deliveries whose visibility deadline has passed.
    fn return_overdue(&self, st: &mut State, now: i64, outbox: &mut Vec<DeadLetter>) {
        while let Some(&(at, id)) = st.deadlines.first() {
            if at > now {
                break;
            }
            st.deadlines.pop_first();
            if let Some(f) = st.in_flight.get(&id).copied()
                && f.deadline == Some(at)
                && !f.dead_lettering
            {
                self.return_in_flight(st, id, f, true, outbox);
            }
        }
    }

    pub fn purge(&self) -> Result<u64, MessagingError> {
        if self.is_stream() {
            return Err(self.not_for_streams("purge"));
        }
        let mut st = lock(&self.state);
        let purged = st.ready() + st.delayed.len() as u64;
        // Everything not in flight goes: the cursor's region in runs between
        // in-flight offsets, then the indexes.
        let mut holes: Vec<u64> = st
            .in_flight
            .keys()
            .copied()
            .filter(|o| *o >= st.cursor)
            .collect();
        holes.sort_unstable();
        let mut from = st.cursor.max(st.low_water);
        let end = st.log_end;
        let mut runs = Vec::new();
        for h in holes.into_iter().chain(std::iter::once(end)) {
            if h > from {
                runs.push((from, h));
            }
            from = from.max(h + 1);
        }
        let mut singles: Vec<u64> = std::mem::take(&mut st.requeued).into_iter().collect();
        for level in st.levels.iter_mut() {
            singles.extend(std::mem::take(level));
        }
        singles.extend(std::mem::take(&mut st.delayed).into_iter().map(|(_, o)| o));
        st.expiries.clear();
        st.counts.clear();
        st.readahead.clear();
        let State {
            settled, journal, ..
        } = &mut *st;
        for (a, b) in runs {
            settled.insert_range(a, b);
            if let Some(j) = journal.as_mut() {
                j.settled_range(a, b);
            }
        }
        for o in singles {
            settled.insert(o);
            if let Some(j) = journal.as_mut() {
                j.settled(o);
            }
        }
        st.cursor = st.log_end;
        st.unsettled = st.in_flight.len() as u64;
        st.unsettled_bytes = st.in_flight_bytes;
        st.low_water = st.settled.first_absent_from(st.low_water);
        let lw = st.low_water;
        st.settled.remove_below(lw);
        self.commit(&mut st);
        Ok(purged)
    }

    /// Marks the queue deleted: consumers end, appends are refused.
    /// Returns the messages it held.
    pub fn close_for_delete(&self) -> u64 {
        let mut st = lock(&self.state);
        st.closed = true;
        for c in &st.consumers {
            c.notify.notify_one();
        }
        st.ready()
    }

    /// Flushes the journal and the log, for a clean shutdown. Blocking.
    pub fn shutdown(&self) {
        if self.stream.as_ref().is_some_and(|s| s.topic.is_some()) {
            // A topic's log: the broker closes it with its topics.
            return;
        }
        let mut st = lock(&self.state);
        if let Some(j) = st.journal.as_mut()
            && let Err(e) = j.sync()
        {
            tracing::warn!(queue = %self.cfg.name, error = %e, "could not sync the queue's journal");
        }
        if let Err(e) = self.log.close() {
            tracing::warn!(queue = %self.cfg.name, error = %e, "could not close the queue's log cleanly");
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn shared(&self) -> Weak<Shared> {
        self.shared.clone()
    }

    /// Whether the queue is in the catalog and keeps its messages across
    /// restarts.
    pub fn journaled(&self) -> bool {
        self.cfg.persist
    }

    /// Background work: delayed messages that came due, expiry, journal and
    /// log fsyncs, reclaiming settled segments, journal compaction and the
    /// `x-expires` check. Blocking (it may fsync).
    pub fn tick(&self) -> TickOutcome {
        if self.is_stream() {
            if self.log.config().fsync == FsyncPolicy::Always
                && !self.log.is_synced()
                && let Err(e) = self.log.flush()
            {
                tracing::warn!(queue = %self.cfg.name, error = %e, "could not fsync a stream queue's log");
            }
            return TickOutcome::default();
        }
        let now = self.clock.now_ms();
        let mut outbox = Vec::new();
        let mut outcome = TickOutcome::default();
        let (mut reclaim_to, sync_log, journal_sync) = {
            let mut st = lock(&self.state);
            if st.closed {
                return outcome;
            }
            // Delayed messages whose time has come.
            let mut woke = false;
            while let Some(&(at, o)) = st.delayed.first() {
                if at > now {
                    break;
                }
                st.delayed.pop_first();
                let p = match self.load(&mut st, o) {
                    Ok(rec) => self.effective_priority(&codec::decode_meta(&rec)),
                    Err(_) => 0,
                };
                self.make_ready(&mut st, o, p);
                woke = true;
            }
            self.return_overdue(&mut st, now, &mut outbox);
            self.expire_due(&mut st, now, &mut outbox);
            if woke {
                self.notify_next(&st);
            }
            if let Some(expires) = self.cfg.args.expires_ms
                && st.consumers.is_empty()
                && now.saturating_sub(st.last_used_ms) >= i64::try_from(expires).unwrap_or(i64::MAX)
            {
                outcome.expired = true;
            }
            self.compact_if_needed(&mut st);
            let journal_sync = match st.journal.as_mut().map(|j| j.begin_sync()) {
                Some(Ok(file)) => file,
                Some(Err(e)) => {
                    tracing::warn!(queue = %self.cfg.name, error = %e, "could not sync the queue's journal");
                    None
                }
                None => None,
            };
            let reclaim = (st.low_water > st.reclaimed_to).then_some(st.low_water);
            (reclaim, self.cfg.persist, journal_sync)
        };
        // The fsync without the lock: the queue goes on meanwhile. Segments
        // are reclaimed only after it, so that the settles that allow it are
        // on disk first.
        if let Some(file) = journal_sync
            && let Err(e) = file.sync_data()
        {
            tracing::warn!(queue = %self.cfg.name, error = %e, "could not sync the queue's journal");
            if let Some(j) = lock(&self.state).journal.as_mut() {
                j.sync_failed();
            }
            reclaim_to = None;
        }
        self.finish(outbox);
        if sync_log {
            let result = match self.cfg.fsync {
                FsyncPolicy::Always if !self.log.is_synced() => self.log.flush(),
                FsyncPolicy::Interval { .. } => self.log.flush_if_due().map(|_| ()),
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(queue = %self.cfg.name, error = %e, "could not fsync the queue's log");
            }
        }
        if let Some(to) = reclaim_to {
            match self.log.delete_segments_before(
                to as i64,
                DRAINED_SEGMENT_ROLL_BYTES_MIN.min(self.cfg.segment_bytes / 2),
            ) {
                Ok(_) => lock(&self.state).reclaimed_to = to,
                Err(e) => {
                    tracing::warn!(queue = %self.cfg.name, error = %e, "could not delete settled segments")
                }
            }
        }
        outcome
    }

    /// Forgets every message at or above `end`: the log discarded them
    /// (a failed fsync). The journal is rewritten, since its records about
    /// those offsets would describe the new messages that reuse them.
    fn forget_from(&self, st: &mut State, end: u64) {
        tracing::warn!(
            queue = %self.cfg.name,
            from = end,
            to = st.log_end,
            "messages discarded by the log after a failed fsync are gone from the queue"
        );
        let gone =
            (st.log_end.saturating_sub(end)).saturating_sub(st.settled.count_in(end, st.log_end));
        st.unsettled = st.unsettled.saturating_sub(gone);
        st.settled.truncate_from(end);
        st.requeued.retain(|o| *o < end);
        for level in st.levels.iter_mut() {
            level.retain(|o| *o < end);
        }
        st.delayed.retain(|(_, o)| *o < end);
        st.expiries.retain(|(_, o)| *o < end);
        st.deadlines.retain(|(_, o)| *o < end);
        let dropped: Vec<u64> = st.in_flight.keys().copied().filter(|o| *o >= end).collect();
        for o in dropped {
            if let Some(f) = st.in_flight.remove(&o) {
                st.in_flight_bytes = st.in_flight_bytes.saturating_sub(f.bytes);
            }
        }
        st.counts.retain(|o, _| *o < end);
        st.readahead.clear();
        st.cursor = st.cursor.min(end);
        st.low_water = st.low_water.min(end);
        st.log_end = end;
        self.compact(st, true);
    }

    fn compact_if_needed(&self, st: &mut State) {
        self.compact(st, false);
    }

    fn compact(&self, st: &mut State, force: bool) {
        let records = 1 + st.settled.range_count() + st.counts.len() + 2 * st.in_flight.len();
        let Some(j) = st.journal.as_ref() else {
            return;
        };
        if !force && !j.wants_compaction(records) {
            return;
        }
        if let Err(e) = self.rewrite_journal(st) {
            tracing::warn!(queue = %self.cfg.name, error = %e, "could not compact the queue's state journal");
        }
    }

    /// Replaces the journal with one describing the state in memory.
    fn rewrite_journal(&self, st: &mut State) -> std::io::Result<()> {
        let State {
            journal,
            settled,
            counts,
            in_flight,
            low_water,
            flags,
            ..
        } = st;
        let Some(j) = journal.as_mut() else {
            return Ok(());
        };
        let delivered = counts.iter().map(|(o, c)| (*o, *c)).chain(
            in_flight
                .iter()
                .filter(|(_, f)| !f.dead_lettering)
                .map(|(o, f)| (*o, f.count)),
        );
        let hidden = in_flight
            .iter()
            .filter(|(_, f)| !f.dead_lettering)
            .filter_map(|(o, f)| f.deadline.map(|at| (*o, at)));
        j.rewrite(
            std::iter::once((0, *low_water)).chain(settled.ranges()),
            delivered,
            hidden,
            *flags,
        )
    }

    /// Expires messages whose TTL has passed, wherever they are: those with
    /// a per-message TTL through the expiry index, the rest (queue TTL,
    /// oldest first in each ready structure) from the heads.
    fn expire_due(&self, st: &mut State, now: i64, outbox: &mut Vec<DeadLetter>) {
        let mut budget = EXPIRE_PER_TICK_MAX;
        while budget > 0 {
            let Some(&(at, o)) = st.expiries.first() else {
                break;
            };
            if at >= now {
                break;
            }
            st.expiries.pop_first();
            if o < st.low_water || st.settled.contains(o) || st.in_flight.contains_key(&o) {
                continue;
            }
            if st.delayed.iter().any(|(_, d)| *d == o) {
                // Expired while delayed: it goes when it comes due.
                continue;
            }
            let Some(l) = self.load_or_drop(st, o) else {
                continue;
            };
            let removed = st.requeued.remove(&o)
                || st
                    .levels
                    .get_mut(usize::from(self.effective_priority(&l.meta)))
                    .is_some_and(|s| s.remove(&o));
            if !removed && o < st.cursor {
                // Neither ready nor ahead of the cursor: already gone.
                continue;
            }
            self.discard(st, l, DeathReason::Expired, outbox);
            budget -= 1;
        }
        if self.cfg.args.message_ttl_ms.is_none() {
            return;
        }
        // Queue TTL: each ready structure is in enqueue order, so only its
        // head can be the oldest.
        while budget > 0 {
            let head = st.requeued.first().copied();
            let Some(o) = head else { break };
            let Some(l) = self.load_or_drop(st, o) else {
                st.requeued.remove(&o);
                continue;
            };
            if !self.is_expired(&l, now) {
                break;
            }
            st.requeued.remove(&o);
            self.discard(st, l, DeathReason::Expired, outbox);
            budget -= 1;
        }
        for p in 1..st.levels.len() {
            while budget > 0 {
                let Some(o) = st.levels[p].first().copied() else {
                    break;
                };
                let Some(l) = self.load_or_drop(st, o) else {
                    st.levels[p].remove(&o);
                    continue;
                };
                if !self.is_expired(&l, now) {
                    break;
                }
                st.levels[p].remove(&o);
                self.discard(st, l, DeathReason::Expired, outbox);
                budget -= 1;
            }
        }
        while budget > 0 {
            let Some(l) = self.peek_cursor(st) else {
                break;
            };
            if !self.is_expired(&l, now) {
                break;
            }
            st.cursor = l.offset + 1;
            self.discard(st, l, DeathReason::Expired, outbox);
            budget -= 1;
        }
        self.commit(st);
    }

    // ---- consumers ----

    pub fn consume(&self, spec: &ConsumerSpec) -> Result<(u64, Arc<Notify>), MessagingError> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(self.gone());
        }
        if st.consumers.iter().any(|c| c.tag == spec.tag) {
            return Err(MessagingError::PreconditionFailed(format!(
                "consumer tag '{}' is already in use on {}",
                spec.tag,
                rs("queue", &self.cfg.name, &self.cfg.vhost)
            )));
        }
        if st.consumers.iter().any(|c| c.exclusive) || (spec.exclusive && !st.consumers.is_empty())
        {
            // RabbitMQ answers 403 ACCESS_REFUSED here (`rabbit_channel`).
            return Err(MessagingError::AccessRefused(format!(
                "{} in exclusive use",
                rs("queue", &self.cfg.name, &self.cfg.vhost)
            )));
        }
        let key = st.next_key;
        st.next_key += 1;
        let notify = Arc::new(Notify::new());
        st.consumers.push(ConsumerEntry {
            key,
            tag: spec.tag.clone(),
            priority: spec.priority,
            no_ack: spec.no_ack,
            exclusive: spec.exclusive,
            notify: notify.clone(),
            waiting: false,
            last_served: 0,
            // A new consumer is on its way to `next()`.
            transit_until: Some(Instant::now() + CONSUMER_PRIORITY_GRACE),
        });
        st.had_consumer = true;
        st.last_used_ms = self.clock.now_ms();
        Ok((key, notify))
    }

    /// Stops a consumer; returns whether it existed and whether the queue
    /// should now be auto-deleted.
    pub fn cancel_key(&self, key: u64) -> (bool, bool) {
        let mut st = lock(&self.state);
        let Some(i) = st.consumers.iter().position(|c| c.key == key) else {
            return (false, false);
        };
        let c = st.consumers.remove(i);
        c.notify.notify_one();
        st.last_used_ms = self.clock.now_ms();
        self.notify_next(&st);
        let auto_delete = self.cfg.auto_delete && st.consumers.is_empty() && !st.closed;
        (true, auto_delete)
    }

    pub fn key_for_tag(&self, tag: &str) -> Option<u64> {
        lock(&self.state)
            .consumers
            .iter()
            .find(|c| c.tag == tag)
            .map(|c| c.key)
    }

    /// One attempt of `Consumer::next_batch`: up to `max` deliveries (at
    /// least one) while this consumer stays the one whose turn it is, so
    /// competing consumers still take turns message by message; one lock
    /// and one journal write for all of them.
    pub fn try_next(&self, key: u64, max: usize, outbox: &mut Vec<DeadLetter>) -> NextStep {
        let mut st = lock(&self.state);
        if st.closed {
            return NextStep::Closed;
        }
        let Some(entry) = st.consumer_mut(key) else {
            return NextStep::Closed;
        };
        entry.waiting = true;
        let no_ack = entry.no_ack;
        let now = Instant::now();
        match self.pick(&st, now) {
            Pick::Consumer(k) if k == key => {
                let mut ds = Vec::new();
                while let Some(d) = self.take(&mut st, no_ack, None, outbox) {
                    ds.push(d);
                    st.serve_seq += 1;
                    let seq = st.serve_seq;
                    if let Some(e) = st.consumer_mut(key) {
                        e.last_served = seq;
                    }
                    // Still waiting, served last: picked again only if no
                    // other consumer of its priority is waiting.
                    if ds.len() >= max
                        || !matches!(self.pick(&st, now), Pick::Consumer(k) if k == key)
                    {
                        break;
                    }
                }
                self.commit(&mut st);
                if ds.is_empty() {
                    return NextStep::Wait(None);
                }
                if let Some(e) = st.consumer_mut(key) {
                    e.waiting = false;
                    e.transit_until = Some(now + CONSUMER_PRIORITY_GRACE);
                }
                self.notify_next(&st);
                NextStep::Delivered(ds)
            }
            Pick::Consumer(other) => {
                if st.ready() > 0
                    && let Some(c) = st.consumers.iter().find(|c| c.key == other)
                {
                    c.notify.notify_one();
                }
                NextStep::Wait(None)
            }
            Pick::Blocked(until) => NextStep::Wait(Some(until)),
            Pick::Nobody => NextStep::Wait(None),
        }
    }

    /// A `next()` future was dropped while waiting: the consumer no longer
    /// takes messages until it calls `next()` again.
    pub fn stop_waiting(&self, key: u64) {
        let mut st = lock(&self.state);
        if let Some(e) = st.consumer_mut(key)
            && e.waiting
        {
            e.waiting = false;
            self.notify_next(&st);
        }
    }
}

/// What one attempt of `Consumer::next` found.
pub(crate) enum NextStep {
    /// At least one.
    Delivered(Vec<Delivery>),
    Closed,
    /// Wait to be notified, or until the instant if given.
    Wait(Option<Instant>),
}

/// Clears a consumer's waiting flag if its `next()` future is dropped while
/// it waits (cancel safety: otherwise round-robin would keep picking it).
pub(crate) struct WaitGuard<'a> {
    pub queue: &'a QueueInner,
    pub key: u64,
    pub armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.stop_waiting(self.key);
        }
    }
}

/// The `original-expiration` of a dead-lettered message.
pub(crate) fn original_expiration(m: &Message) -> Option<String> {
    lossy_expiration(
        m.ttl
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
    )
}

/// Where a message held by a queue stands, for [`QueueInner::peek`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeldState {
    Ready,
    InFlight,
    Delayed,
}

/// Read-only browsing for the admin API: nothing here changes delivery state.
impl QueueInner {
    /// Up to `max` messages the queue holds (not settled), from offset
    /// `from` on, in log order, each with its state and delivery count. A
    /// stream queue holds its whole log. The state lock is held while the
    /// messages are read, as `in_flight_deliveries` does, so `max` must be
    /// small.
    pub fn peek(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, Message, HeldState, u32)>, MessagingError> {
        let mut st = lock(&self.state);
        let mut out = Vec::new();
        let end = u64::try_from(self.log.high_watermark()).unwrap_or(0);
        let start = u64::try_from(self.log.log_start_offset()).unwrap_or(0);
        let mut offset = from.max(start);
        if !self.is_stream() {
            offset = offset.max(st.low_water);
        }
        while offset < end && out.len() < max {
            if !self.is_stream() {
                let next = st.settled.first_absent_from(offset);
                if next != offset {
                    offset = next;
                    continue;
                }
            }
            let (state, count) = match st.in_flight.get(&offset) {
                Some(f) => (HeldState::InFlight, f.count),
                None if st.delayed.iter().any(|(_, o)| *o == offset) => (HeldState::Delayed, 0),
                None => (
                    HeldState::Ready,
                    st.counts.get(&offset).copied().unwrap_or(0),
                ),
            };
            let rec = self.load(&mut st, offset)?;
            let (message, _) = codec::decode_message(&rec);
            out.push((offset, message, state, count));
            offset += 1;
        }
        Ok(out)
    }
}
