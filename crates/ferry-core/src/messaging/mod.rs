//! Routed messaging: vhosts, exchanges, bindings and queues — the model AMQP
//! 0-9-1 speaks today and the SQS front end will use next. A queue is a
//! ferry-log `Log` plus delivery state (DESIGN.md, "Queues on logs"):
//! messages are appended as Kafka records (key = routing key, value = body,
//! front-end properties in record headers), and the queue tracks what is
//! ready, delivered-but-unsettled, and settled.
//!
//! This module knows nothing of AMQP frames: properties are opaque bytes the
//! front end stores and gets back byte for byte; headers used for routing
//! and the dead-letter history are structured values here, and the front end
//! renders them (e.g. as AMQP's `x-death`).
//!
//! API CONTRACT: ferry-amqp is written against these signatures; the
//! implementation fills them in without changing them (adding items is fine).
//!
//! Where things are: `engine` (vhosts, exchanges, bindings, routing,
//! dead-lettering, the catalog events, the timer task), `queue` (the queue
//! engine: log + delivery state, consumers), `journal` (a durable queue's
//! delivery-state journal), `codec` (messages as Kafka records), `routing`
//! (binding indexes: topic trie, headers matching), `args` (queue arguments
//! and RabbitMQ's equivalence errors), `value` (field values on disk),
//! `field_table` (field values as AMQP wire tables),
//! `sets` (range sets).
//!
//! Error texts are RabbitMQ's explanations without the `CODE_NAME - `
//! prefix, which the front end adds.

mod args;
mod codec;
mod engine;
pub mod field_table;
mod inspect;
mod journal;
mod queue;
mod routing;
mod sets;
#[cfg(test)]
mod tests;
pub(crate) mod value;

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use ferry_log::{AppendInfo, Log};
use thiserror::Error;
use tokio::sync::Notify;

pub use args::PRIORITY_MAX;
pub use codec::utf8_lossy;
pub use engine::{DEFAULT_VHOST, MessagingConfig};
pub use inspect::{
    BindingInfo, PeekState, PeekedMessage, QueueDetails, QueueTotals, exchange_type_name,
};

use engine::Shared;

use queue::{NextStep, QueueInner, WaitGuard};
use routing::{Binding, Dest};

/// A field value from a message's headers or a declare's arguments, as far
/// as routing and queue arguments need to understand it. Front ends convert
/// their own typed values to these.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Bool(bool),
    /// Every integer width.
    Int(i64),
    Float(f64),
    /// Short and long strings (UTF-8 or not: compared as bytes).
    Str(Bytes),
    /// A nested table (AMQP `F`).
    Table(Vec<(String, FieldValue)>),
    Array(Vec<FieldValue>),
    /// Timestamp in seconds (AMQP `T`).
    Timestamp(u64),
    Void,
    /// Any other type, kept so that equality can still be tested.
    Other(Bytes),
}

/// Arguments of a declare or bind, by name (AMQP's `arguments` table).
pub type Arguments = Vec<(String, FieldValue)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
    /// `x-delayed-message`: holds messages until their `x-delay` passes, then
    /// routes them as the exchange's `x-delayed-type` would.
    Delayed(DelayedRouting),
}

/// The routing a delayed-message exchange applies once a delay passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayedRouting {
    Direct,
    Fanout,
    Topic,
    Headers,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Arguments,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    /// Accepted for compatibility; behaves as a durable classic queue here.
    Quorum,
    /// A replayable log read from `x-stream-offset`; also a Kafka topic.
    Stream,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Empty asks the broker for a generated name (`amq.gen-...`).
    pub name: String,
    pub durable: bool,
    /// The connection that owns an exclusive queue; it is deleted when that
    /// connection closes, and no other connection may use it.
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: Arguments,
}

/// The front end's id for a client connection (for exclusive queues and
/// exclusive consumers).
pub type ConnectionId = u64;

/// Why a message was dead-lettered (RabbitMQ's `x-death` reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

/// One entry of a message's dead-letter history, newest first in
/// `Message::deaths`, merged per (queue, reason) with a count, as RabbitMQ does.
#[derive(Debug, Clone, PartialEq)]
pub struct Death {
    pub queue: String,
    pub reason: DeathReason,
    pub count: u64,
    pub exchange: String,
    pub routing_keys: Vec<String>,
    /// Seconds since the epoch of the first death of this kind.
    pub time_s: u64,
    /// The message's per-message TTL when it expired, if it had one.
    pub original_expiration: Option<String>,
}

/// A message as stored and delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    /// The front end's properties, stored and returned byte for byte (AMQP:
    /// the content header's property flags and property list).
    pub properties: Bytes,
    /// Headers as routing needs them (headers exchanges, `x-delay`, CC/BCC).
    pub headers: Vec<(String, FieldValue)>,
    pub body: Bytes,
    /// 0 when none; only meaningful up to the queue's `x-max-priority`.
    pub priority: u8,
    /// Per-message TTL (AMQP `expiration`), from publication.
    pub ttl: Option<Duration>,
    /// AMQP delivery mode 2: written to disk under durable queues.
    pub persistent: bool,
    /// Milliseconds since the epoch when the broker accepted it.
    pub published_ms: i64,
    pub deaths: Vec<Death>,
}

/// A message handed to a consumer or `get`. Settle it with `Queue::ack` or
/// `Queue::reject` by `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The queue's id for this message (its offset in the queue's log).
    pub id: u64,
    pub message: Message,
    /// Delivered before (and not acknowledged), possibly before a restart.
    pub redelivered: bool,
    /// How many times it has been delivered, this time included.
    pub delivery_count: u32,
    /// Messages still ready in the queue after this one (for basic.get-ok).
    pub remaining: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    /// Ready messages (not delivered or requeued).
    pub message_count: u64,
    pub consumer_count: u32,
}

/// How many messages a queue holds, by state (SQS's
/// ApproximateNumberOfMessages, ...NotVisible, ...Delayed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    /// Ready to be delivered now.
    pub ready: u64,
    /// Delivered and not settled yet.
    pub in_flight: u64,
    /// Held back until their delivery time.
    pub delayed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    /// Unique within the queue.
    pub tag: String,
    /// Deliveries are settled as they are handed out.
    pub no_ack: bool,
    /// Only consumer of the queue (AMQP basic.consume exclusive).
    pub exclusive: bool,
    /// `x-priority`: higher-priority consumers get messages first while they
    /// can take them.
    pub priority: i32,
    pub connection: ConnectionId,
    /// Stream queues: where to start (`x-stream-offset`).
    pub stream_offset: Option<StreamOffset>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOffset {
    First,
    Last,
    Next,
    Offset(u64),
    /// Milliseconds since the epoch.
    Timestamp(i64),
}

/// What publishing did.
#[derive(Debug)]
pub struct Published {
    /// Number of queues the message was routed to (0: unroutable, for
    /// `mandatory` returns).
    pub routed: usize,
    /// Appends still waiting for durability (persistent messages to durable
    /// queues under their fsync policy); await `durable()` before a publisher
    /// confirm.
    pub pending: PendingDurability,
}

/// Waits for the fsyncs covering a publish.
#[derive(Debug, Default)]
pub struct PendingDurability {
    /// The appends that need an fsync (persistent messages to durable queues
    /// under `fsync.policy=always`).
    waits: Vec<(Arc<Log>, AppendInfo)>,
}

impl PendingDurability {
    /// Resolves once every append of the publish is durable; an error means
    /// the message may not have been stored (nack the confirm).
    pub async fn durable(self) -> Result<(), MessagingError> {
        for (log, info) in &self.waits {
            log.wait_synced(info)
                .await
                .map_err(|e| MessagingError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    /// Whether there is nothing to wait for.
    pub fn is_empty(&self) -> bool {
        self.waits.is_empty()
    }

    /// Whether `other` waits for exactly the same appends (as the messages
    /// of one `publish_all` to one queue do), so one wait serves both.
    pub fn same_waits(&self, other: &PendingDurability) -> bool {
        self.waits.len() == other.waits.len()
            && self
                .waits
                .iter()
                .zip(&other.waits)
                .all(|((a, x), (b, y))| Arc::ptr_eq(a, b) && x == y)
    }
}

/// Errors, each mapping to an AMQP reply code in the front end (noted).
#[derive(Debug, Clone, Error, PartialEq)]
pub enum MessagingError {
    /// 404 NOT_FOUND
    #[error("no {kind} '{name}' in vhost '{vhost}'")]
    NotFound {
        kind: &'static str,
        name: String,
        vhost: String,
    },
    /// 406 PRECONDITION_FAILED, with RabbitMQ's wording in the message.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 405 RESOURCE_LOCKED (exclusive queue of another connection, or an
    /// exclusive consumer).
    #[error("{0}")]
    ResourceLocked(String),
    /// 403 ACCESS_REFUSED (e.g. declaring `amq.*` names, internal exchanges).
    #[error("{0}")]
    AccessRefused(String),
    /// 406 in RabbitMQ for bad arguments (`x-max-length` negative...).
    /// `reason` continues RabbitMQ's text after the argument's name, e.g.
    /// `for queue 'q' in vhost '/': {value_negative,-1}`.
    #[error("invalid arg '{name}' {reason}")]
    InvalidArgument { name: String, reason: String },
    /// The queue refused the message (x-overflow reject-publish): nack.
    #[error("queue '{0}' is full")]
    QueueFull(String),
    /// Disk trouble: 541 INTERNAL_ERROR / nack.
    #[error("storage error: {0}")]
    Storage(String),
    /// A limit on what clients may create (queues per vhost): 406
    /// PRECONDITION_FAILED in RabbitMQ, OverLimit in SQS.
    #[error("{0}")]
    LimitReached(String),
}

impl MessagingError {
    /// The AMQP reply code RabbitMQ would answer with.
    pub fn reply_code(&self) -> u16 {
        match self {
            MessagingError::NotFound { .. } => 404,
            MessagingError::PreconditionFailed(_)
            | MessagingError::InvalidArgument { .. }
            | MessagingError::QueueFull(_)
            | MessagingError::LimitReached(_) => 406,
            MessagingError::ResourceLocked(_) => 405,
            MessagingError::AccessRefused(_) => 403,
            MessagingError::Storage(_) => 541,
        }
    }
}

/// A registered consumer; dropping it (or `Queue::cancel`) stops deliveries.
#[derive(Debug)]
pub struct Consumer {
    queue: Arc<QueueInner>,
    key: u64,
    tag: String,
    notify: Arc<Notify>,
    shared: Weak<Shared>,
    /// Stream queues: this consumer's own position in the log.
    stream: Option<StreamCursor>,
}

/// Bytes a stream consumer reads from the log at once.
const STREAM_READ_BYTES: usize = 256 * 1024;

#[derive(Debug)]
struct StreamCursor {
    offset: i64,
    buffer: std::collections::VecDeque<ferry_log::records::StoredRecord>,
    changes: tokio::sync::watch::Receiver<i64>,
}

impl Consumer {
    async fn next_in_stream(&mut self) -> Option<Delivery> {
        loop {
            if !self.queue.consumer_alive(self.key) {
                return None;
            }
            let cursor = self.stream.as_mut()?;
            if let Some(rec) = cursor.buffer.pop_front() {
                cursor.offset = rec.offset + 1;
                let (mut message, _) = codec::decode_message(&rec);
                // RabbitMQ tells stream consumers where each message is.
                message
                    .headers
                    .push(("x-stream-offset".to_string(), FieldValue::Int(rec.offset)));
                let hw = self.queue.log.high_watermark();
                return Some(Delivery {
                    id: u64::try_from(rec.offset).unwrap_or(0),
                    message,
                    redelivered: false,
                    delivery_count: 1,
                    remaining: u64::try_from(hw - rec.offset - 1).unwrap_or(0),
                });
            }
            cursor.changes.borrow_and_update();
            match self.queue.log.read(cursor.offset, STREAM_READ_BYTES, true) {
                Ok(read) if !read.records.is_empty() => {
                    let batches =
                        ferry_log::records::split_batches(read.records).unwrap_or_default();
                    for (_, last, batch) in batches {
                        match ferry_log::records::decode_batch(batch) {
                            Ok(records) => cursor
                                .buffer
                                .extend(records.into_iter().filter(|r| r.offset >= cursor.offset)),
                            Err(e) => {
                                tracing::warn!(queue = %self.queue.cfg.name, error = %e, "skipping an undecodable batch of a stream")
                            }
                        }
                        if cursor.buffer.is_empty() {
                            cursor.offset = cursor.offset.max(last + 1);
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(ferry_log::LogError::OffsetOutOfRange {
                    log_start_offset, ..
                }) if cursor.offset < log_start_offset => {
                    // Retention removed what this consumer had not read yet.
                    cursor.offset = log_start_offset;
                    continue;
                }
                Err(e @ ferry_log::LogError::CorruptBatch { last_offset, .. }) => {
                    // Never delivered, and must not wedge the consumer: the
                    // stream goes on after the damaged batch.
                    tracing::error!(queue = %self.queue.cfg.name, error = %e, "skipping a corrupt batch of a stream");
                    cursor.offset = cursor.offset.max(last_offset + 1);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue.cfg.name, error = %e, "stream read failed");
                }
            }
            let notify = self.notify.clone();
            tokio::select! {
                changed = cursor.changes.changed() => {
                    if changed.is_err() {
                        // The log is gone (queue deleted): look again shortly.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                _ = notify.notified() => {}
            }
        }
    }
}

impl Consumer {
    /// Waits for the next delivery for this consumer. The front end calls it
    /// only when the consumer has prefetch room, so the queue never hands out
    /// more than the consumer can take. `None` once the consumer is
    /// cancelled or the queue is deleted (AMQP: basic.cancel to the client).
    ///
    /// Cancel-safe: dropping the future loses no message (a delivery is
    /// handed over in the same synchronous step that takes it).
    pub async fn next(&mut self) -> Option<Delivery> {
        self.next_batch(1).await.into_iter().next()
    }

    /// Like `next`, but takes up to `max` deliveries at once when they are
    /// ready and no other consumer of the queue is waiting for its turn
    /// (the front end passes the prefetch room it has). Empty once the
    /// consumer is cancelled or the queue is deleted.
    pub async fn next_batch(&mut self, max: usize) -> Vec<Delivery> {
        if self.stream.is_some() {
            return self.next_in_stream().await.into_iter().collect();
        }
        loop {
            let mut outbox = Vec::new();
            let step = self.queue.try_next(self.key, max.max(1), &mut outbox);
            self.queue.finish(outbox);
            let deadline = match step {
                NextStep::Delivered(ds) => return ds,
                NextStep::Closed => return Vec::new(),
                NextStep::Wait(deadline) => deadline,
            };
            let mut guard = WaitGuard {
                queue: &self.queue,
                key: self.key,
                armed: true,
            };
            match deadline {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), self.notify.notified()).await;
                }
                None => self.notify.notified().await,
            }
            guard.armed = false;
        }
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        cancel_consumer(&self.queue, &self.shared, self.key);
    }
}

fn cancel_consumer(queue: &QueueInner, shared: &Weak<Shared>, key: u64) -> bool {
    let (existed, auto_delete) = queue.cancel_key(key);
    if auto_delete && let Some(shared) = shared.upgrade() {
        shared.delete_queue_instance(&queue.cfg.vhost, &queue.cfg.name, &queue.cfg.id);
    }
    existed
}

/// One queue.
#[derive(Debug)]
pub struct Queue {
    inner: Arc<QueueInner>,
}

impl Queue {
    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    pub fn info(&self) -> QueueInfo {
        self.inner.info()
    }

    pub fn consume(&self, spec: ConsumerSpec) -> Result<Consumer, MessagingError> {
        let stream = self.inner.is_stream().then(|| {
            let log = &self.inner.log;
            let start = log.log_start_offset();
            let hw = log.high_watermark();
            let offset = match spec.stream_offset.unwrap_or(StreamOffset::Next) {
                StreamOffset::First => start,
                StreamOffset::Last => (hw - 1).max(start),
                StreamOffset::Next => hw,
                StreamOffset::Offset(n) => i64::try_from(n).unwrap_or(i64::MAX).clamp(start, hw),
                StreamOffset::Timestamp(ms) => log
                    .offset_for_timestamp(ms)
                    .ok()
                    .flatten()
                    .map_or(hw, |t| t.offset),
            };
            StreamCursor {
                offset,
                buffer: std::collections::VecDeque::new(),
                changes: log.subscribe(),
            }
        });
        let (key, notify) = self.inner.consume(&spec)?;
        Ok(Consumer {
            queue: self.inner.clone(),
            key,
            tag: spec.tag,
            notify,
            shared: self.inner.shared(),
            stream,
        })
    }

    /// Stops a consumer by tag; its unacked deliveries stay unacked until
    /// settled or requeued.
    pub fn cancel(&self, tag: &str) -> bool {
        match self.inner.key_for_tag(tag) {
            Some(key) => cancel_consumer(&self.inner, &self.inner.shared(), key),
            None => false,
        }
    }

    /// basic.get: the next ready message, if any.
    pub fn get(&self, no_ack: bool) -> Result<Option<Delivery>, MessagingError> {
        self.inner.get(no_ack)
    }

    /// Settles a delivery for good.
    pub fn ack(&self, id: u64) -> Result<(), MessagingError> {
        self.inner.ack(id)
    }

    /// `ack`, with the journal write left for `write_journal` (or the next
    /// operation on the queue that journals anything): a front end settles
    /// a burst of acks and writes the queue's journal once, before it next
    /// reads from or writes to its client. Until then a crash of the
    /// process may bring the message back (flagged redelivered).
    pub fn ack_journal_later(&self, id: u64) -> Result<(), MessagingError> {
        self.inner.ack_journal_later(id)
    }

    /// Writes what `ack_journal_later` left buffered.
    pub fn write_journal(&self) {
        self.inner.write_journal();
    }

    /// Returns a delivery to the queue (`requeue`), or drops it —
    /// dead-lettering it if the queue has a dead-letter exchange.
    pub fn reject(&self, id: u64, requeue: bool) -> Result<(), MessagingError> {
        self.inner.reject(id, requeue)
    }

    /// Removes every ready message; returns how many.
    pub fn purge(&self) -> Result<u64, MessagingError> {
        self.inner.purge()
    }

    /// Takes the next ready message for at most `visibility` (SQS
    /// ReceiveMessage): unless acked, or given more time with
    /// [`Queue::set_visibility`], it comes back to the queue then, counted
    /// as a failed delivery (`x-delivery-limit` applies: SQS's
    /// maxReceiveCount with a dead-letter target).
    pub fn receive(&self, visibility: Duration) -> Result<Option<Delivery>, MessagingError> {
        self.inner.receive(visibility)
    }

    /// A new visibility deadline, from now, for a delivery (SQS
    /// ChangeMessageVisibility); zero returns it to the queue at once.
    pub fn set_visibility(&self, id: u64, visibility: Duration) -> Result<(), MessagingError> {
        self.inner.set_visibility(id, visibility)
    }

    /// Takes up to `max` ready messages at once, each for at most
    /// `visibility` (like [`Queue::receive`]), skipping those `accept` turns
    /// down: they stay ready, in their place, and do not count as
    /// deliveries. At most `scan_max` messages are examined. SQS FIFO queues
    /// pass over the message groups that have a message in flight this way.
    pub fn receive_batch(
        &self,
        visibility: Duration,
        max: usize,
        scan_max: usize,
        accept: &mut dyn FnMut(&Message) -> bool,
    ) -> Result<Vec<Delivery>, MessagingError> {
        self.inner.receive_batch(visibility, max, scan_max, accept)
    }

    /// Woken (`notify_waiters`) whenever messages become ready: appended,
    /// returned after a visibility timeout, delayed ones coming due. A
    /// poller that is not a consumer (an SQS long poll) creates and
    /// `enable()`s a `notified()` future *before* it tries to receive, then
    /// awaits it if there was nothing.
    pub fn receivers(&self) -> &Notify {
        &self.inner.receivers
    }

    /// The delivery count of an in-flight delivery; `None` when `id` is not
    /// in flight (settled, or back in the queue).
    pub fn in_flight_count(&self, id: u64) -> Option<u32> {
        self.inner.in_flight_count(id)
    }

    /// Every in-flight delivery, read back from the log (see
    /// `QueueInner::in_flight_deliveries`).
    pub fn in_flight_deliveries(&self) -> Vec<Delivery> {
        self.inner.in_flight_deliveries()
    }

    /// Messages by state: ready, in flight, delayed.
    pub fn counts(&self) -> QueueCounts {
        self.inner.counts()
    }

    /// Appends a message to this queue directly, without routing (SQS
    /// SendMessage), ready after `delay` if one is given (DelaySeconds).
    pub fn send(
        &self,
        message: Message,
        delay: Option<Duration>,
    ) -> Result<Published, MessagingError> {
        let mut sent = self.send_all(vec![(message, delay)])?;
        sent.pop().unwrap_or_else(|| Err(self.inner.gone()))
    }

    /// Appends messages to this queue in order, with one write to its log
    /// (SQS SendMessageBatch), each ready after its delay if it has one.
    /// The outer error is the log's (nothing stored); the inner ones are
    /// per message (a full queue refuses the messages that do not fit).
    pub fn send_all(
        &self,
        mut messages: Vec<(Message, Option<Duration>)>,
    ) -> Result<Vec<Result<Published, MessagingError>>, MessagingError> {
        let shared = self.inner.shared().upgrade();
        let now = shared
            .as_ref()
            .map_or_else(|| self.inner.now_ms(), |s| s.clock.now_ms());
        let mut batches = Vec::with_capacity(messages.len());
        let mut metas = Vec::with_capacity(messages.len());
        for (message, delay) in &mut messages {
            if message.published_ms == 0 {
                message.published_ms = now;
            }
            let at = delay
                .filter(|d| !d.is_zero())
                .map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
            batches.push(codec::encode_batch(message, at, now));
            metas.push(codec::Meta::of(message, at));
        }
        let entries: Vec<queue::Entry<'_>> = batches
            .iter()
            .zip(&metas)
            .zip(&messages)
            .map(|((batch, meta), (message, _))| queue::Entry {
                batch,
                meta,
                body_bytes: message.body.len() as u64,
            })
            .collect();
        let mut outbox = Vec::new();
        let appended = self.inner.append_all(&entries, &mut outbox);
        self.inner.finish(outbox);
        let mut refused = Vec::new();
        let results = appended?
            .into_iter()
            .zip(messages)
            .map(|(appended, (message, _))| match appended {
                queue::Appended::Stored(wait) => Ok(Published {
                    routed: 1,
                    pending: PendingDurability {
                        waits: wait
                            .map(|info| vec![(self.inner.log.clone(), info)])
                            .unwrap_or_default(),
                    },
                }),
                queue::Appended::Refused { dead_letter } => {
                    if dead_letter {
                        refused.push(queue::DeadLetter {
                            offset: 0,
                            message,
                            reason: DeathReason::Maxlen,
                        });
                    }
                    Err(MessagingError::QueueFull(self.inner.cfg.name.clone()))
                }
                queue::Appended::Gone => Err(self.inner.gone()),
            })
            .collect();
        if !refused.is_empty()
            && let Some(shared) = shared
        {
            shared.dead_letter(&self.inner.cfg, &refused);
        }
        Ok(results)
    }

    /// Whether the queue keeps its messages across restarts (durable and not
    /// exclusive).
    pub fn is_durable(&self) -> bool {
        self.inner.journaled()
    }

    /// Messages held: ready, delayed and unacknowledged.
    pub fn unsettled(&self) -> u64 {
        self.inner.unsettled()
    }

    /// Bytes of the queue's log on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.log.size_bytes()
    }
}

/// The routed-messaging model of one broker: every vhost, exchange, binding
/// and queue, durable ones journaled in the catalog.
#[derive(Debug)]
pub struct Messaging {
    shared: Arc<Shared>,
}

#[allow(clippy::too_many_arguments)]
impl Messaging {
    pub(crate) fn open(
        data_dir: std::path::PathBuf,
        config: MessagingConfig,
        catalog: Arc<std::sync::Mutex<crate::catalog::Catalog>>,
        clock: Arc<dyn ferry_log::Clock>,
    ) -> Result<Messaging, MessagingError> {
        Ok(Messaging {
            shared: Shared::open(data_dir, config, catalog, clock)?,
        })
    }

    /// Gives the engine its broker (stream queues are topics) and restores
    /// the durable exchanges, queues and bindings of the catalog.
    pub(crate) fn attach(
        &self,
        broker: Weak<crate::Broker>,
        records: crate::catalog::MessagingRecords,
    ) -> Result<(), MessagingError> {
        self.shared.attach(broker, records)
    }

    /// Creates a vhost (with its standard exchanges) if it does not exist.
    pub fn add_vhost(&self, vhost: &str) {
        self.shared.add_vhost(vhost);
    }

    /// Starts the background task (expiry, delayed messages, journal fsyncs,
    /// disk reclaim) if it is not running; needs a tokio runtime. Declares
    /// and publishes start it too.
    pub fn start_timers(&self) {
        self.shared.ensure_timers();
    }

    /// Runs one round of the background work now. Blocking.
    pub fn run_timers_once(&self) {
        self.shared.tick();
    }

    /// Flushes every queue's journal and log, for a clean shutdown. Blocking.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }

    pub fn vhost_exists(&self, vhost: &str) -> bool {
        self.shared.vhost_exists(vhost)
    }

    /// Declares (or with `passive`, checks) an exchange. Re-declaring with
    /// different properties is PreconditionFailed, as in RabbitMQ.
    pub fn declare_exchange(
        &self,
        vhost: &str,
        spec: ExchangeSpec,
        passive: bool,
    ) -> Result<(), MessagingError> {
        self.shared.ensure_timers();
        self.shared.declare_exchange(vhost, spec, passive)
    }

    pub fn delete_exchange(
        &self,
        vhost: &str,
        name: &str,
        if_unused: bool,
    ) -> Result<(), MessagingError> {
        self.shared.delete_exchange(vhost, name, if_unused)
    }

    /// Declares (or with `passive`, checks) a queue; returns its name (generated
    /// if the spec's was empty) and counts.
    pub fn declare_queue(
        &self,
        vhost: &str,
        spec: QueueSpec,
        passive: bool,
        connection: ConnectionId,
    ) -> Result<QueueInfo, MessagingError> {
        self.shared.declare_queue(vhost, spec, passive, connection)
    }

    /// Deletes a queue; returns the number of messages it held. Its consumers
    /// end (their `next` returns `None`).
    pub fn delete_queue(
        &self,
        vhost: &str,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: ConnectionId,
    ) -> Result<u64, MessagingError> {
        self.shared
            .delete_queue(vhost, name, if_unused, if_empty, connection)
    }

    /// The queue, if this connection may use it (exclusive queues belong to one).
    pub fn queue(
        &self,
        vhost: &str,
        name: &str,
        connection: ConnectionId,
    ) -> Result<std::sync::Arc<Queue>, MessagingError> {
        self.shared.queue(vhost, name, connection)
    }

    pub fn bind_queue(
        &self,
        vhost: &str,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: Arguments,
        connection: ConnectionId,
    ) -> Result<(), MessagingError> {
        let b = Binding {
            dest: Dest::Queue(queue.to_string()),
            key: routing_key.to_string(),
            args: arguments,
        };
        self.shared
            .change_binding(vhost, exchange, b, true, Some(connection))
    }

    pub fn unbind_queue(
        &self,
        vhost: &str,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: Arguments,
        connection: ConnectionId,
    ) -> Result<(), MessagingError> {
        let b = Binding {
            dest: Dest::Queue(queue.to_string()),
            key: routing_key.to_string(),
            args: arguments,
        };
        self.shared
            .change_binding(vhost, exchange, b, false, Some(connection))
    }

    pub fn bind_exchange(
        &self,
        vhost: &str,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: Arguments,
    ) -> Result<(), MessagingError> {
        let b = Binding {
            dest: Dest::Exchange(destination.to_string()),
            key: routing_key.to_string(),
            args: arguments,
        };
        self.shared.change_binding(vhost, source, b, true, None)
    }

    pub fn unbind_exchange(
        &self,
        vhost: &str,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: Arguments,
    ) -> Result<(), MessagingError> {
        let b = Binding {
            dest: Dest::Exchange(destination.to_string()),
            key: routing_key.to_string(),
            args: arguments,
        };
        self.shared.change_binding(vhost, source, b, false, None)
    }

    /// Routes and appends a message (the default exchange is `""`). Returns
    /// how many queues got it and what to await for publisher confirms.
    pub fn publish(&self, vhost: &str, message: Message) -> Result<Published, MessagingError> {
        let mut published = self.shared.publish_all(vhost, vec![message]);
        published
            .pop()
            .unwrap_or_else(|| Err(MessagingError::Storage("nothing published".into())))
    }

    /// What [`Messaging::publish`] would refuse every message to `exchange`
    /// for before routing it: an exchange that does not exist or is
    /// internal. For a front end that holds publishes back to append them
    /// together, so that the refusal still comes at the publish.
    pub fn check_publish(&self, vhost: &str, exchange: &str) -> Result<(), MessagingError> {
        self.shared.check_publish(vhost, exchange)
    }

    /// Routes and appends messages in order, each queue with one write for
    /// all the messages it takes (the publishes of one socket read). Per
    /// message, what [`Messaging::publish`] would answer.
    pub fn publish_all(
        &self,
        vhost: &str,
        messages: Vec<Message>,
    ) -> Vec<Result<Published, MessagingError>> {
        self.shared.publish_all(vhost, messages)
    }

    /// A connection closed: delete its exclusive queues.
    pub fn connection_closed(&self, connection: ConnectionId) {
        self.shared.connection_closed(connection)
    }

    /// Every exchange and queue of a vhost, for listings.
    pub fn list(&self, vhost: &str) -> (Vec<ExchangeSpec>, Vec<QueueInfo>) {
        self.shared.list(vhost)
    }
}

/// Arguments looked up by name.
pub fn argument<'a>(args: &'a Arguments, name: &str) -> Option<&'a FieldValue> {
    args.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}
