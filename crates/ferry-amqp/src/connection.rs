//! One AMQP connection: the protocol header, connection.start/tune/open,
//! then channels until connection.close.
//!
//! Three tasks per connection: a reader (frames, with the negotiated
//! frame_max checked before anything is allocated), a writer (encoded bytes
//! to the socket), and this task, which owns all connection and channel
//! state and handles, one at a time: frames from the reader, deliveries from
//! consumer tasks (one per basic.consume), direct replies from other
//! connections, publisher confirms as their fsyncs complete, the heartbeat
//! timer and the resource alarm. Everything the client sees is written from
//! here, so delivery tags and confirms go out in order.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amq_protocol::protocol::{
    AMQPClass, access, basic, channel as chan, confirm, connection, exchange, queue, tx,
};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::{Bytes, BytesMut};
use ferry_core::access::{Permission, Resource};
use ferry_core::alarm::ResourceAlarms;
use ferry_core::connections::{Channel as ChannelInfo, Registration};
use ferry_core::messaging::{
    ConsumerSpec, DelayedRouting, Delivery, ExchangeKind, ExchangeSpec, FieldValue, Message,
    MessagingError, PendingDurability, Published, Queue, QueueSpec, StreamOffset,
};
use ferry_core::metrics::RequestMeter;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rustc_hash::FxHashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::auth::{self, AuthFailure, MECHANISMS};
use crate::content::Assembly;
use crate::credit::Credit;
use crate::errors::*;
use crate::frame::{
    self, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, HotMethod, Method,
};
use crate::frame::{FrameReader, PROTOCOL_HEADER, RawFrame, ReadError};
use crate::props::{self, Props};
use crate::table;
use crate::{DirectReply, ReplyTarget, Shared};

/// Batches of frames read ahead of the connection task (a batch is one frame
/// of at most frame_max plus what the 64 KiB read buffer held whole).
const READ_AHEAD_BATCHES: usize = 8;
/// Frames the reader hands over at once.
const READ_BATCH_FRAMES_MAX: usize = 64;
/// Encoded chunks queued for the socket before the connection task waits.
const WRITE_QUEUE_CHUNKS: usize = 64;
/// And their bytes: with `DELIVERY_QUEUE_BYTES_MAX`, this bounds what a
/// client that does not read can make the server hold, whatever the size of
/// the messages it consumes (counts of chunks and batches alone let hundreds
/// of megabytes of large messages pile up). A single larger chunk or batch
/// still goes through, alone.
const WRITE_QUEUE_BYTES_MAX: usize = 8 << 20;
/// The writer joins queued chunks into one write up to about this size.
const WRITE_JOIN_BYTES_MAX: usize = 256 * 1024;
/// Delivery batches consumer tasks may queue for the connection task.
const DELIVERY_QUEUE_MAX: usize = 256;
/// And the bytes of their bodies.
const DELIVERY_QUEUE_BYTES_MAX: usize = 8 << 20;
/// Deliveries a consumer task takes from its queue at once (when that many
/// are ready and its prefetch allows).
const DELIVERY_BATCH_MAX: usize = 64;
/// The same without a prefetch limit (no-ack, or prefetch 0): nothing but
/// the delivery queue holds those back, so batches stay small.
const DELIVERY_BATCH_UNLIMITED_MAX: usize = 8;
/// Events the connection task handles between two writes to the socket
/// (when that many are ready at once).
const EVENTS_PER_FLUSH_MAX: usize = 256;
/// Output that is written without waiting for more ready events.
const FLUSH_BYTES_MIN: usize = 128 * 1024;
/// Direct replies queued for one connection; more are dropped, as RabbitMQ
/// drops replies whose requester cannot take them.
const DIRECT_REPLY_QUEUE_MAX: usize = 4096;
/// How long we wait for connection.close-ok after sending connection.close.
const CLOSE_OK_WAIT: Duration = Duration::from_secs(3);
/// Before an unauthenticated client is disconnected (slows password guessing).
const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(500);
pub const DIRECT_REPLY_QUEUE: &str = "amq.rabbitmq.reply-to";
const DIRECT_REPLY_PREFIX: &str = "amq.rabbitmq.reply-to.";
/// basic.publish's class and method ids.
const BASIC_PUBLISH: (u16, u16) = (60, 40);
/// Exchanges a connection remembers it may publish to (RabbitMQ caches
/// permission checks per channel too); forgotten all at once past this.
const WRITE_PERMISSION_CACHE_MAX: usize = 64;

enum ReadEvent {
    /// One frame, and those that followed it already whole in the read
    /// buffer (at most `READ_BATCH_FRAMES_MAX`).
    Frames(Vec<RawFrame>),
    Error(AmqpError),
    Closed,
}

// Deliveries are the common case; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum ConsumerEvent {
    /// `channel_credit` is Some when the deliveries took prefetch credit
    /// (one unit each).
    Deliveries {
        consumer: u64,
        queue: Arc<Queue>,
        deliveries: Vec<Delivery>,
        channel_credit: Option<Arc<Credit>>,
        /// The bodies' share of `DELIVERY_QUEUE_BYTES_MAX`, given back
        /// once they are encoded.
        bytes: OwnedSemaphorePermit,
    },
    /// The engine ended the consumer; credit taken for nothing is returned.
    Ended {
        consumer: u64,
        channel_credit: Option<Arc<Credit>>,
    },
}

/// Where consumer tasks hand their deliveries to the connection task: a
/// queue bounded in batches, and in body bytes by `bytes`.
#[derive(Clone)]
struct DeliveryQueue {
    tx: mpsc::Sender<ConsumerEvent>,
    bytes: Arc<Semaphore>,
}

struct ConfirmDone {
    channel: u16,
    generation: u64,
    seqs: Vec<u64>,
    ok: bool,
}

/// Publishes of one channel whose confirms wait for the same appends.
struct ConfirmWait {
    channel: u16,
    generation: u64,
    seqs: Vec<u64>,
    pending: PendingDurability,
}

struct ConsumerEntry {
    id: u64,
    /// None for the direct reply-to pseudo-consumer.
    queue: Option<Arc<Queue>>,
    engine_tag: String,
    no_ack: bool,
    credit: Arc<Credit>,
    stop: watch::Sender<bool>,
    /// Deliveries carry `x-stream-offset` (stream consumers).
    stream: bool,
}

struct Unacked {
    queue: Arc<Queue>,
    id: u64,
    consumer: Option<u64>,
    credited: bool,
}

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Reject { requeue: bool },
}

/// What a basic.return of a mandatory message that no queue took carries.
struct Returned {
    exchange: String,
    routing_key: String,
    properties: Bytes,
    body: Bytes,
}

impl Returned {
    /// What to return if `msg` turns out unroutable; `None` unless mandatory.
    fn of(msg: &Message, mandatory: bool) -> Option<Returned> {
        mandatory.then(|| Returned {
            exchange: msg.exchange.clone(),
            routing_key: msg.routing_key.clone(),
            properties: msg.properties.clone(),
            body: msg.body.clone(),
        })
    }
}

/// basic.publish: the channel assembles the content that follows.
fn start_publish(
    ch: &mut Channel,
    exchange: String,
    routing_key: String,
    mandatory: bool,
    immediate: bool,
) -> Result<(), AmqpError> {
    if immediate {
        return Err(AmqpError::connection(NOT_IMPLEMENTED, "immediate=true"));
    }
    ch.assembly = Some(Assembly::new(exchange, routing_key, mandatory));
    Ok(())
}

/// Whether a message goes to a direct reply-to address (`amq.rabbitmq.reply-to.*`
/// through the default exchange) rather than through a queue.
fn is_direct_reply(msg: &Message) -> bool {
    msg.exchange.is_empty() && msg.routing_key.starts_with(DIRECT_REPLY_PREFIX)
}

/// A publish held back until the frames read with it are handled.
struct Held {
    channel: u16,
    generation: u64,
    /// Its publisher-confirm sequence number (confirm mode).
    seq: Option<u64>,
    mandatory: bool,
    msg: Message,
}

#[derive(Default)]
struct Tx {
    publishes: Vec<(Message, bool)>,
    settles: Vec<(u64, Unacked, Settle)>,
}

struct Channel {
    id: u16,
    generation: u64,
    /// We sent channel.close and wait for close-ok; everything else is dropped.
    closing: bool,
    /// Closed for good: the channel number is free again.
    gone: bool,
    assembly: Option<Assembly>,
    consumers: HashMap<String, ConsumerEntry>,
    /// basic.qos global=false: the prefetch of consumers created from now on.
    prefetch: u32,
    /// basic.qos global=true: shared by the channel's consumers.
    credit: Arc<Credit>,
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    confirm: bool,
    next_seq: u64,
    /// Confirm sequence numbers not yet confirmed: None while in flight,
    /// Some(ack?) once known but waiting for an earlier one (confirms go out
    /// in order so that `multiple` can batch them).
    outstanding: BTreeMap<u64, Option<bool>>,
    tx: Option<Tx>,
    last_queue: String,
    /// (consumer tag, reply address) when consuming direct reply-to.
    reply: Option<(String, String)>,
    /// What the connection registry was last told of this channel.
    reported: Option<ChannelInfo>,
}

impl Channel {
    fn new(id: u16, generation: u64) -> Self {
        Channel {
            id,
            generation,
            closing: false,
            gone: false,
            assembly: None,
            consumers: HashMap::new(),
            prefetch: 0,
            credit: Arc::new(Credit::new(0)),
            next_tag: 1,
            unacked: BTreeMap::new(),
            confirm: false,
            next_seq: 1,
            outstanding: BTreeMap::new(),
            tx: None,
            last_queue: String::new(),
            reply: None,
            reported: None,
        }
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct ClientCaps {
    cancel_notify: bool,
    auth_failure_close: bool,
    blocked: bool,
}

struct Conn {
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    epoch: Instant,
    user: String,
    vhost: String,
    frame_max: u32,
    channel_max: u16,
    heartbeat_s: u16,
    caps: ClientCaps,
    /// Boxed: a channel is taken out of the map while a frame is handled
    /// and put back, a move per frame that should not copy the whole struct.
    channels: FxHashMap<u16, Box<Channel>>,
    next_generation: u64,
    out: BytesMut,
    wrote_since_tick: bool,
    writer: mpsc::Sender<(Bytes, OwnedSemaphorePermit)>,
    /// Bytes queued for the writer (`WRITE_QUEUE_BYTES_MAX`).
    write_budget: Arc<Semaphore>,
    frames: mpsc::Receiver<ReadEvent>,
    /// Frames received from the reader and not handled yet.
    read_ahead: VecDeque<RawFrame>,
    frame_limit: Arc<AtomicU32>,
    last_read_ms: Arc<AtomicU64>,
    deliveries_tx: DeliveryQueue,
    deliveries: mpsc::Receiver<ConsumerEvent>,
    replies_tx: mpsc::Sender<DirectReply>,
    replies: mpsc::Receiver<DirectReply>,
    confirms: FuturesUnordered<BoxFuture<'static, ConfirmDone>>,
    /// consumer id → (channel, client's consumer tag)
    consumer_index: FxHashMap<u64, (u16, String)>,
    next_consumer: u64,
    /// Set once connection.close went out: the time we give up waiting.
    closing: Option<Instant>,
    done: bool,
    /// Channels and exclusive queues released (once).
    released: bool,
    /// The broker's resource alarms as last seen.
    alarms: ResourceAlarms,
    /// A publish arrived while an alarm was on: the connection is blocked
    /// (not read from) until every alarm clears (RabbitMQ's `should_block`).
    should_block: bool,
    /// connection.blocked went out and connection.unblocked is owed.
    blocked_sent: bool,
    /// Exchanges this connection's user may write to, already checked.
    write_permitted: HashSet<String>,
    /// Queues with acks whose journal records are not written yet (written
    /// by `flush`).
    journal_owed: Vec<Arc<Queue>>,
    /// Publishes whose content is complete, held back to be routed together
    /// by `publish_held`: every queue then gets one write for all of them.
    held: Vec<Held>,
    /// The per-method request metrics, counted once per method frame.
    meter: RequestMeter,
    /// This connection in the broker's registry (admin API): traffic,
    /// identity, channels, and an operator's request to close it.
    registration: Registration,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ss(s: &str) -> ShortString {
    ShortString::from(s.to_string())
}

fn s_of(s: &ShortString) -> String {
    s.as_str().to_string()
}

/// A consumer tag as RabbitMQ generates them: `amq.ctag-` and 22
/// URL-safe base64 characters of 16 random bytes.
fn generated_tag(prefix: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut bits: u128 = u128::from_be_bytes(bytes);
    let mut out = String::with_capacity(prefix.len() + 22);
    out.push_str(prefix);
    for _ in 0..22 {
        out.push(ALPHABET[(bits & 63) as usize] as char);
        bits >>= 6;
    }
    out
}

pub(crate) async fn run(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
    }
    let local = socket.local_addr().unwrap_or(peer);
    let registration = shared
        .config
        .metrics
        .connections()
        .register("amqp", peer, local);
    let (mut rd, mut wr) = socket.into_split();
    let mut header = [0u8; 8];
    match tokio::time::timeout(shared.config.handshake_timeout, rd.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    if &header != PROTOCOL_HEADER {
        // AMQP 0-9-1 §4.2.2: answer with the protocol we speak, then close.
        tracing::warn!(%peer, header = ?header, "closing amqp connection: not an AMQP 0-9-1 protocol header");
        let _ = wr.write_all(PROTOCOL_HEADER).await;
        let _ = wr.shutdown().await;
        return;
    }

    let epoch = Instant::now();
    let frame_limit = Arc::new(AtomicU32::new(shared.config.frame_max));
    let last_read_ms = Arc::new(AtomicU64::new(0));
    let (frames_tx, frames) = mpsc::channel(READ_AHEAD_BATCHES);
    let reader = tokio::spawn(read_loop(
        FrameReader::new(rd),
        frames_tx,
        frame_limit.clone(),
        last_read_ms.clone(),
        epoch,
        shared.config.frame_timeout,
        peer,
    ));
    let (writer, writer_rx) = mpsc::channel(WRITE_QUEUE_CHUNKS);
    let writer_task = tokio::spawn(write_loop(wr, writer_rx));
    let (deliveries_tx, deliveries) = mpsc::channel(DELIVERY_QUEUE_MAX);
    let (replies_tx, replies) = mpsc::channel(DIRECT_REPLY_QUEUE_MAX);
    let meter = shared.config.metrics.request_meter("amqp");
    let mut conn = Conn {
        id: shared.next_connection_id(),
        frame_max: shared.config.frame_max,
        channel_max: shared.config.channel_max,
        heartbeat_s: 0,
        shared,
        peer,
        epoch,
        user: String::new(),
        vhost: String::new(),
        caps: ClientCaps::default(),
        channels: FxHashMap::default(),
        next_generation: 1,
        out: BytesMut::with_capacity(64 * 1024),
        wrote_since_tick: false,
        writer,
        write_budget: Arc::new(Semaphore::new(WRITE_QUEUE_BYTES_MAX)),
        frames,
        read_ahead: VecDeque::new(),
        frame_limit,
        last_read_ms,
        deliveries_tx: DeliveryQueue {
            tx: deliveries_tx,
            bytes: Arc::new(Semaphore::new(DELIVERY_QUEUE_BYTES_MAX)),
        },
        deliveries,
        replies_tx,
        replies,
        confirms: FuturesUnordered::new(),
        consumer_index: FxHashMap::default(),
        next_consumer: 1,
        closing: None,
        done: false,
        released: false,
        alarms: ResourceAlarms::default(),
        should_block: false,
        blocked_sent: false,
        write_permitted: HashSet::new(),
        journal_owed: Vec::new(),
        held: Vec::new(),
        meter,
        registration,
    };
    let opened = conn.handshake().await;
    if opened {
        tracing::debug!(%peer, connection = conn.id, user = %conn.user, vhost = %conn.vhost, "amqp connection open");
        conn.main_loop().await;
        conn.release_everything();
        conn.drain_deliveries();
    }
    let Conn { writer, .. } = conn;
    drop(writer);
    // Let the writer flush a final connection.close, but not forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
    reader.abort();
    tracing::debug!(%peer, "amqp connection closed");
}

async fn read_loop(
    mut rd: FrameReader<OwnedReadHalf>,
    tx: mpsc::Sender<ReadEvent>,
    frame_limit: Arc<AtomicU32>,
    last_read_ms: Arc<AtomicU64>,
    epoch: Instant,
    frame_timeout: Duration,
    peer: SocketAddr,
) {
    loop {
        let mut batch = Vec::new();
        let mut failed = None;
        // The wait for a frame's first byte has no bound here (heartbeats
        // watch it); the rest of the frame must follow within frame_timeout.
        if let Err(e) = rd.wait_for_data().await {
            failed = Some(e);
        } else {
            let read = rd.read_frame(frame_limit.load(Ordering::Relaxed));
            match tokio::time::timeout(frame_timeout, read).await {
                Ok(Ok(f)) => batch.push(f),
                Ok(Err(e)) => failed = Some(e),
                Err(_) => {
                    tracing::warn!(
                        %peer,
                        "closing amqp connection: a frame was not complete {} ms after it began (frame_timeout)",
                        frame_timeout.as_millis()
                    );
                    failed = Some(ReadError::Closed(std::io::ErrorKind::TimedOut.into()));
                }
            }
        }
        // Frames already whole in the buffer go with it: reading them needs
        // no wait, and one hand-over instead of one each.
        while failed.is_none() && batch.len() < READ_BATCH_FRAMES_MAX {
            match rd.buffered_frame(frame_limit.load(Ordering::Relaxed)) {
                Ok(Some(f)) => batch.push(f),
                Ok(None) => break,
                Err(e) => failed = Some(e),
            }
        }
        if !batch.is_empty() {
            last_read_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            if tx.send(ReadEvent::Frames(batch)).await.is_err() {
                return;
            }
        }
        match failed {
            None => {}
            Some(ReadError::Frame(e)) => {
                let _ = tx.send(ReadEvent::Error(e)).await;
                return;
            }
            Some(ReadError::Closed(e)) => {
                tracing::trace!(error = %e, "amqp socket closed");
                let _ = tx.send(ReadEvent::Closed).await;
                return;
            }
        }
    }
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>) {
    let mut joined = BytesMut::new();
    // The write budget of the chunks being written, given back once they are.
    let mut written = Vec::new();
    while let Some((chunk, permit)) = rx.recv().await {
        written.push(permit);
        // Chunks that queued up while the last write was in progress go out
        // together, in one write.
        let chunk = match rx.try_recv() {
            Ok((next, permit)) => {
                written.push(permit);
                joined.clear();
                joined.extend_from_slice(&chunk);
                joined.extend_from_slice(&next);
                while joined.len() < WRITE_JOIN_BYTES_MAX
                    && let Ok((more, permit)) = rx.try_recv()
                {
                    written.push(permit);
                    joined.extend_from_slice(&more);
                }
                &joined[..]
            }
            Err(_) => &chunk[..],
        };
        if wr.write_all(chunk).await.is_err() {
            return;
        }
        written.clear();
    }
    let _ = wr.shutdown().await;
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(ss(cap), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert(ss("capabilities"), AMQPValue::FieldTable(caps));
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    props.insert(ss("cluster_name"), text("ferry"));
    props.insert(ss("copyright"), text("Ferry contributors"));
    props.insert(
        ss("information"),
        text("Ferry: one broker for Kafka, AMQP 0-9-1 and SQS clients"),
    );
    props.insert(ss("platform"), text("Rust"));
    props.insert(ss("product"), text("Ferry"));
    props.insert(ss("version"), text(env!("CARGO_PKG_VERSION")));
    props
}

impl Conn {
    fn config(&self) -> &crate::AmqpConfig {
        &self.shared.config
    }

    fn send_method(&mut self, channel: u16, class: AMQPClass) {
        frame::put_method(&mut self.out, channel, class);
    }

    async fn flush(&mut self) {
        // The journal first: acks handled so far are recorded before the
        // client hears anything more from us or we read more from it.
        for q in self.journal_owed.drain(..) {
            q.write_journal();
        }
        if self.out.is_empty() {
            return;
        }
        let chunk = self.out.split().freeze();
        self.registration
            .sent(chunk.len() as u64, frame::count_frames(&chunk));
        self.wrote_since_tick = true;
        let share = chunk.len().min(WRITE_QUEUE_BYTES_MAX) as u32;
        let Ok(permit) = self.write_budget.clone().acquire_many_owned(share).await else {
            self.done = true;
            return;
        };
        if self.writer.send((chunk, permit)).await.is_err() {
            self.done = true;
        }
    }

    /// Sends connection.close and waits (bounded) for close-ok.
    async fn close_connection(&mut self, e: &AmqpError) {
        if self.closing.is_some() {
            return;
        }
        tracing::info!(peer = %self.peer, connection = self.id, code = e.code, text = %e.text, "closing amqp connection");
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: e.code,
                reply_text: ss(&e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        self.closing = Some(Instant::now() + CLOSE_OK_WAIT);
    }

    /// Waits for the next method on channel 0 during the handshake.
    async fn handshake_method(&mut self, deadline: Instant) -> Option<Result<Method, AmqpError>> {
        loop {
            let Some(f) = self.read_ahead.pop_front() else {
                let ev = tokio::time::timeout_at(deadline.into(), self.frames.recv())
                    .await
                    .ok()??;
                match ev {
                    ReadEvent::Frames(fs) => self.read_ahead.extend(fs),
                    ReadEvent::Error(e) => return Some(Err(e)),
                    ReadEvent::Closed => return None,
                }
                continue;
            };
            if f.kind == FRAME_HEARTBEAT {
                continue;
            }
            if f.kind == FRAME_METHOD && f.channel == 0 {
                return Some(frame::parse_method(&f.payload));
            }
            return Some(Err(AmqpError::connection(
                COMMAND_INVALID,
                format!(
                    "frame type {} on channel {} before the connection is open",
                    f.kind, f.channel
                ),
            )));
        }
    }

    /// Closes during the handshake: connection.close, a short wait for
    /// close-ok, done.
    async fn fail_handshake(&mut self, e: AmqpError) {
        self.close_connection(&e).await;
        self.flush().await;
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Some(Ok(m)) = self.handshake_method(deadline).await {
            if (m.class_id, m.method_id) == (10, 51) {
                break;
            }
        }
    }

    /// connection.start → start-ok → tune → tune-ok → open → open-ok.
    async fn handshake(&mut self) -> bool {
        let deadline = Instant::now() + self.config().handshake_timeout;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                mechanisms: LongString::from(MECHANISMS.as_bytes().to_vec()),
                locales: LongString::from(b"en_US".to_vec()),
            })),
        );
        self.flush().await;

        // start-ok
        let m = match self.handshake_method(deadline).await {
            None => return false,
            Some(Err(e)) => {
                self.fail_handshake(e).await;
                return false;
            }
            Some(Ok(m)) => m,
        };
        let AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)) = &m.class else {
            self.fail_handshake(
                AmqpError::connection(COMMAND_INVALID, "expected 'connection.start_ok'")
                    .at(m.class_id, m.method_id),
            )
            .await;
            return false;
        };
        let client = ["connection_name", "product"].into_iter().find_map(|k| {
            match table::lookup(&m.table, k) {
                Some(FieldValue::Str(s)) => Some(String::from_utf8_lossy(s).into_owned()),
                _ => None,
            }
        });
        self.registration.update_identity(|i| i.client = client);
        if let Some(FieldValue::Table(caps)) = table::lookup(&m.table, "capabilities") {
            let on = |k: &str| matches!(table::lookup(caps, k), Some(FieldValue::Bool(true)));
            self.caps = ClientCaps {
                cancel_notify: on("consumer_cancel_notify"),
                auth_failure_close: on("authentication_failure_close"),
                blocked: on("connection.blocked"),
            };
        }
        let mechanism = s_of(&start_ok.mechanism);
        match auth::authenticate(
            &self.shared.config.access,
            &mechanism,
            start_ok.response.as_bytes(),
            self.peer.ip(),
        ) {
            Ok(user) => self.user = user,
            Err(AuthFailure::UnknownMechanism(m)) => {
                self.fail_handshake(
                    AmqpError::connection(
                        COMMAND_INVALID,
                        format!("unknown authentication mechanism '{m}'"),
                    )
                    .at(10, 11),
                )
                .await;
                return false;
            }
            Err(failure @ (AuthFailure::Refused(_) | AuthFailure::BadResponse(_))) => {
                let why = match failure {
                    AuthFailure::Refused(r) => r.to_string(),
                    AuthFailure::BadResponse(b) => b,
                    AuthFailure::UnknownMechanism(m) => m,
                };
                tracing::warn!(peer = %self.peer, mechanism = %mechanism, "amqp login refused: {why}");
                tokio::time::sleep(AUTH_FAILURE_DELAY).await;
                if self.caps.auth_failure_close {
                    self.fail_handshake(
                        AmqpError::connection(
                            ACCESS_REFUSED,
                            format!(
                                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                            ),
                        )
                        .at(10, 11),
                    )
                    .await;
                }
                return false;
            }
        }

        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: self.config().channel_max,
                frame_max: self.config().frame_max,
                heartbeat: self.config().heartbeat_s,
            })),
        );
        self.flush().await;

        // tune-ok
        let m = match self.handshake_method(deadline).await {
            None => return false,
            Some(Err(e)) => {
                self.fail_handshake(e).await;
                return false;
            }
            Some(Ok(m)) => m,
        };
        let AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune)) = &m.class else {
            self.fail_handshake(
                AmqpError::connection(COMMAND_INVALID, "expected 'connection.tune_ok'")
                    .at(m.class_id, m.method_id),
            )
            .await;
            return false;
        };
        if let Err(e) = self.negotiate(tune.frame_max, tune.channel_max, tune.heartbeat) {
            self.fail_handshake(e.at(10, 31)).await;
            return false;
        }

        // open
        let m = match self.handshake_method(deadline).await {
            None => return false,
            Some(Err(e)) => {
                self.fail_handshake(e).await;
                return false;
            }
            Some(Ok(m)) => m,
        };
        let AMQPClass::Connection(connection::AMQPMethod::Open(open)) = &m.class else {
            self.fail_handshake(
                AmqpError::connection(COMMAND_INVALID, "expected 'connection.open'")
                    .at(m.class_id, m.method_id),
            )
            .await;
            return false;
        };
        let vhost = s_of(&open.virtual_host);
        // As RabbitMQ: a missing vhost first, then the user's permissions.
        if !self.shared.messaging.vhost_exists(&vhost) {
            self.fail_handshake(
                AmqpError::connection(NOT_ALLOWED, format!("vhost {vhost} not found")).at(10, 40),
            )
            .await;
            return false;
        }
        if let Err(e) = self
            .shared
            .config
            .access
            .check_vhost_access(&self.user, &vhost)
        {
            tracing::warn!(peer = %self.peer, user = %self.user, "amqp connection refused: {e}");
            self.fail_handshake(AmqpError::connection(NOT_ALLOWED, e.message).at(10, 40))
                .await;
            return false;
        }
        self.registration.update_identity(|i| {
            i.user = Some(self.user.clone());
            i.vhost = Some(vhost.clone());
        });
        self.vhost = vhost;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        // Nothing is sent for an alarm that is already on: like RabbitMQ,
        // a connection is blocked when it publishes during an alarm.
        self.flush().await;
        !self.done
    }

    /// Applies tune-ok as RabbitMQ validates it; 0 from the client means
    /// "no limit of mine", i.e. the server's.
    fn negotiate(
        &mut self,
        frame_max: u32,
        channel_max: u16,
        heartbeat: u16,
    ) -> Result<(), AmqpError> {
        let server_frame_max = self.config().frame_max;
        let server_channel_max = self.config().channel_max;
        if frame_max != 0 && frame_max < frame::FRAME_MIN_SIZE {
            return Err(AmqpError::connection(
                NOT_ALLOWED,
                format!(
                    "negotiated frame_max = {frame_max} is lower than the minimum allowed value ({})",
                    frame::FRAME_MIN_SIZE
                ),
            ));
        }
        if frame_max > server_frame_max {
            return Err(AmqpError::connection(
                NOT_ALLOWED,
                format!(
                    "negotiated frame_max = {frame_max} is higher than the maximum allowed value ({server_frame_max})"
                ),
            ));
        }
        if channel_max > server_channel_max {
            return Err(AmqpError::connection(
                NOT_ALLOWED,
                format!(
                    "negotiated channel_max = {channel_max} is higher than the maximum allowed value ({server_channel_max})"
                ),
            ));
        }
        self.frame_max = if frame_max == 0 {
            server_frame_max
        } else {
            frame_max
        };
        self.channel_max = if channel_max == 0 {
            server_channel_max
        } else {
            channel_max
        };
        self.heartbeat_s = heartbeat;
        self.frame_limit.store(self.frame_max, Ordering::Relaxed);
        Ok(())
    }

    async fn main_loop(&mut self) {
        let hb = self.heartbeat_s;
        let tick_every = Duration::from_millis((u64::from(hb) * 1000 / 2).max(500));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut alarm = self.shared.alarm.clone();
        self.alarms = *alarm.borrow_and_update();
        while !self.done {
            self.flush().await;
            if self.done {
                break;
            }
            let close_deadline = self.closing;
            let reading = !self.is_blocked();
            if reading && !self.read_ahead.is_empty() {
                // Frames read before a block (alarm) come first once it lifts.
                self.on_read_ahead().await;
                self.handle_ready_events().await;
                continue;
            }
            tokio::select! {
                ev = self.frames.recv(), if reading => self.on_read_event(ev).await,
                Some(ev) = self.deliveries.recv() => self.on_consumer_event(ev),
                Some(r) = self.replies.recv() => self.on_direct_reply(r),
                Some(c) = self.confirms.next(), if !self.confirms.is_empty() => self.on_confirm(c),
                _ = tick.tick() => {
                    if hb > 0 {
                        self.on_tick(hb);
                    }
                }
                changed = alarm.changed() => {
                    if changed.is_err() {
                        // No alarm source any more: nothing will be raised.
                        alarm = watch::channel(ResourceAlarms::default()).1;
                        self.on_alarms(ResourceAlarms::default());
                    } else {
                        let now = *alarm.borrow_and_update();
                        self.on_alarms(now);
                    }
                }
                _ = sleep_until_opt(close_deadline) => self.done = true,
                reason = self.registration.close_requested(), if close_deadline.is_none() => {
                    // As RabbitMQ's management API closes a connection.
                    self.close_connection(&AmqpError::connection(CONNECTION_FORCED, reason)).await;
                }
            }
            self.handle_ready_events().await;
        }
        self.flush().await;
    }

    async fn on_read_event(&mut self, ev: Option<ReadEvent>) {
        match ev {
            Some(ReadEvent::Frames(fs)) => {
                let bytes: usize = fs
                    .iter()
                    .map(|f| frame::FRAME_OVERHEAD_BYTES + f.payload.len())
                    .sum();
                self.registration.received(bytes as u64, fs.len() as u64);
                self.read_ahead.extend(fs);
                self.on_read_ahead().await;
            }
            Some(ReadEvent::Error(e)) => {
                // The stream is out of step: close and stop reading.
                self.close_connection(&e).await;
                self.flush().await;
                self.done = true;
            }
            Some(ReadEvent::Closed) | None => self.done = true,
        }
    }

    /// Handles the frames read so far, in order, until a publish blocks the
    /// connection (resource alarm): the rest wait until it is unblocked.
    /// Publishes are held back and routed together once these frames are
    /// handled, or before any other method, which may depend on them (a
    /// basic.get, a queue.purge, a channel.close, tx.commit, ...).
    async fn on_read_ahead(&mut self) {
        while !self.done && !self.is_blocked() {
            let Some(f) = self.read_ahead.pop_front() else {
                break;
            };
            let ids = match (f.kind, f.payload.get(..4)) {
                (FRAME_METHOD, Some(ids)) => Some((
                    u16::from_be_bytes([ids[0], ids[1]]),
                    u16::from_be_bytes([ids[2], ids[3]]),
                )),
                _ => None,
            };
            if ids.is_some_and(|ids| ids != BASIC_PUBLISH) {
                self.publish_held().await;
            }
            let method = ids.and_then(|(c, m)| frame::method_name(c, m));
            // Content frames are not timed: only methods are counted.
            let started = method.map(|_| Instant::now());
            if let Err(e) = self.on_frame(f).await {
                self.publish_held().await;
                self.on_error(e).await;
            }
            if let (Some(name), Some(started)) = (method, started) {
                // The connection's own time on the method: a confirm's
                // fsync is waited for elsewhere, after this.
                let elapsed = started.elapsed();
                self.meter.record(name, elapsed);
            }
        }
        self.publish_held().await;
    }

    /// Handles whatever else is ready at once (frames already read, confirms
    /// whose fsync completed, deliveries, direct replies) before the output
    /// is flushed, so that one write to the socket carries many confirms or
    /// deliveries, and one journal write many acks, instead of one each.
    /// Bounded, so the client hears from us at least every
    /// `EVENTS_PER_FLUSH_MAX` events.
    async fn handle_ready_events(&mut self) {
        for _ in 1..EVENTS_PER_FLUSH_MAX {
            if self.done || self.out.len() >= FLUSH_BYTES_MIN {
                return;
            }
            let mut handled = false;
            if !self.is_blocked()
                && self.read_ahead.is_empty()
                && let Ok(ev) = self.frames.try_recv()
            {
                self.on_read_event(Some(ev)).await;
                handled = true;
            }
            if !self.confirms.is_empty()
                && let Some(Some(c)) = self.confirms.next().now_or_never()
            {
                self.on_confirm(c);
                handled = true;
            }
            if let Ok(ev) = self.deliveries.try_recv() {
                self.on_consumer_event(ev);
                handled = true;
            }
            if let Ok(r) = self.replies.try_recv() {
                self.on_direct_reply(r);
                handled = true;
            }
            if !handled {
                return;
            }
        }
    }

    /// Blocked: a publish arrived during an alarm that is still on. Nothing
    /// is read from the client until it clears.
    fn is_blocked(&self) -> bool {
        self.should_block && self.alarms.any()
    }

    /// A content frame arrived (RabbitMQ's `publish_received`): during an
    /// alarm, the connection is blocked from now on.
    fn publish_received(&mut self) {
        // The alarm as it is now, not as the main loop last saw it: an alarm
        // raised before this publish was read may still wait in the select.
        let now = *self.shared.alarm.borrow();
        if now != self.alarms {
            self.on_alarms(now);
        }
        if !self.alarms.any() || self.should_block {
            return;
        }
        self.should_block = true;
        tracing::debug!(peer = %self.peer, connection = self.id, "amqp connection blocked: it published during a resource alarm");
        self.send_blocked();
    }

    fn send_blocked(&mut self) {
        if let Some(reason) = self.alarms.blocked_reason()
            && self.caps.blocked
            && !self.blocked_sent
            && self.closing.is_none()
        {
            self.send_method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: ss(reason),
                })),
            );
            self.blocked_sent = true;
        }
    }

    fn on_alarms(&mut self, now: ResourceAlarms) {
        let was_blocked = self.is_blocked();
        self.alarms = now;
        if now.any() {
            if self.should_block {
                self.send_blocked();
            }
            return;
        }
        // Every alarm cleared: read again, and say so if we said blocked.
        self.should_block = false;
        if was_blocked {
            tracing::debug!(peer = %self.peer, connection = self.id, "amqp connection unblocked");
            // The heartbeat monitor was paused while we did not read.
            self.last_read_ms
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        if self.blocked_sent {
            self.blocked_sent = false;
            if self.closing.is_none() {
                self.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Unblocked(
                        connection::Unblocked {},
                    )),
                );
            }
        }
    }

    fn on_tick(&mut self, hb: u16) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_read_ms.load(Ordering::Relaxed);
        // Two missed intervals, as RabbitMQ (and the spec) allow; not while
        // we are the ones not reading (RabbitMQ pauses the monitor too).
        if self.is_blocked() {
            self.last_read_ms.store(now, Ordering::Relaxed);
        } else if now.saturating_sub(last) > u64::from(hb) * 2 * 1000 {
            tracing::warn!(peer = %self.peer, connection = self.id, "missed heartbeats from client, timeout: {hb}s");
            self.done = true;
            return;
        }
        if !self.wrote_since_tick {
            frame::put_heartbeat(&mut self.out);
        }
        self.wrote_since_tick = false;
    }

    async fn on_error(&mut self, e: AmqpError) {
        if e.scope == Scope::Channel {
            // Channel errors are handled where the channel is known; one
            // reaching here is a bug, so it closes the connection instead.
            tracing::error!(code = e.code, text = %e.text, "channel error outside a channel");
        }
        self.close_connection(&e).await;
    }

    async fn on_frame(&mut self, f: RawFrame) -> Result<(), AmqpError> {
        if self.closing.is_some() {
            // After connection.close only close/close-ok matter.
            if f.kind == FRAME_METHOD
                && f.channel == 0
                && let Ok(m) = frame::parse_method(&f.payload)
            {
                match (m.class_id, m.method_id) {
                    (10, 51) => self.done = true,
                    (10, 50) => {
                        self.send_method(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        self.done = true;
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        match f.kind {
            FRAME_HEARTBEAT => {
                if f.channel != 0 {
                    return Err(AmqpError::connection(
                        FRAME_ERROR,
                        format!("heartbeat frame on channel {}", f.channel),
                    ));
                }
                Ok(())
            }
            FRAME_METHOD => {
                if f.channel == 0 {
                    let m = frame::parse_method(&f.payload)?;
                    return self.on_connection_method(m);
                }
                self.on_channel_frame(f).await
            }
            FRAME_HEADER | FRAME_BODY => {
                if f.channel == 0 {
                    return Err(AmqpError::connection(
                        UNEXPECTED_FRAME,
                        "expected method frame, got non method frame instead",
                    ));
                }
                let r = self.on_channel_frame(f).await;
                self.publish_received();
                r
            }
            _ => Err(AmqpError::connection(FRAME_ERROR, "unknown frame type")),
        }
    }

    fn on_connection_method(&mut self, m: Method) -> Result<(), AmqpError> {
        let (c, mid) = (m.class_id, m.method_id);
        match m.class {
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                tracing::debug!(peer = %self.peer, code = close.reply_code, text = %close.reply_text.as_str(), "client closed amqp connection");
                self.release_everything();
                self.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.done = true;
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Ok(()),
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            // Clients may tell us they are blocked/unblocked; nothing to do.
            AMQPClass::Connection(
                connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
            ) => Ok(()),
            _ => Err(AmqpError::connection(
                COMMAND_INVALID,
                format!("unexpected method on channel 0: class {c}, method {mid}"),
            )
            .at(c, mid)),
        }
    }

    async fn on_channel_frame(&mut self, f: RawFrame) -> Result<(), AmqpError> {
        let id = f.channel;
        let Some(mut ch) = self.channels.remove(&id) else {
            // Only channel.open may name a channel that is not open.
            if f.kind == FRAME_METHOD {
                let m = frame::parse_method(&f.payload)?;
                if let AMQPClass::Channel(chan::AMQPMethod::Open(_)) = m.class {
                    return self.open_channel(id);
                }
                return Err(
                    AmqpError::connection(CHANNEL_ERROR, "expected 'channel.open'")
                        .at(m.class_id, m.method_id),
                );
            }
            return Err(AmqpError::connection(
                CHANNEL_ERROR,
                format!("frame on channel {id}, which is not open"),
            ));
        };
        let result = if ch.closing {
            self.on_closing_channel_frame(&mut ch, f)
        } else {
            self.on_open_channel_frame(&mut ch, f).await
        };
        let result = match result {
            Err(e) if e.scope == Scope::Channel => {
                self.close_channel(&mut ch, &e);
                Ok(())
            }
            other => other,
        };
        if ch.gone {
            self.registration.remove_channel(id);
        } else {
            self.report_channel(&mut ch);
            self.channels.insert(id, ch);
        }
        result
    }

    /// Tells the registry about a channel whose settings changed (opened,
    /// qos, consumers, confirm or tx mode); most frames change none.
    fn report_channel(&self, ch: &mut Channel) {
        let now = ChannelInfo {
            id: ch.id,
            prefetch: ch.prefetch,
            consumers: ch.consumers.len(),
            confirm: ch.confirm,
            transactional: ch.tx.is_some(),
        };
        if ch.reported.as_ref() != Some(&now) {
            self.registration.set_channel(now.clone());
            ch.reported = Some(now);
        }
    }

    fn open_channel(&mut self, id: u16) -> Result<(), AmqpError> {
        if id > self.channel_max {
            return Err(AmqpError::connection(
                CHANNEL_ERROR,
                format!(
                    "channel {id} is above the negotiated channel_max ({})",
                    self.channel_max
                ),
            )
            .at(20, 10));
        }
        if self.channels.len() >= usize::from(self.channel_max) {
            return Err(AmqpError::connection(
                NOT_ALLOWED,
                format!(
                    "number of channels opened ({}) has reached the negotiated channel_max ({})",
                    self.channels.len(),
                    self.channel_max
                ),
            )
            .at(20, 10));
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let mut ch = Box::new(Channel::new(id, generation));
        self.report_channel(&mut ch);
        self.channels.insert(id, ch);
        self.send_method(
            id,
            AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
        );
        Ok(())
    }

    /// A closing channel drops everything but close and close-ok.
    fn on_closing_channel_frame(&mut self, ch: &mut Channel, f: RawFrame) -> Result<(), AmqpError> {
        if f.kind != FRAME_METHOD {
            return Ok(());
        }
        let m = frame::parse_method(&f.payload)?;
        match m.class {
            AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)) => mark_gone(ch),
            AMQPClass::Channel(chan::AMQPMethod::Close(_)) => {
                self.send_method(
                    ch.id,
                    AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                );
                mark_gone(ch);
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends channel.close for a channel-level error and releases the
    /// channel's consumers and unacked deliveries.
    fn close_channel(&mut self, ch: &mut Channel, e: &AmqpError) {
        tracing::debug!(peer = %self.peer, channel = ch.id, code = e.code, text = %e.text, "closing amqp channel");
        self.release_channel(ch);
        ch.closing = true;
        self.send_method(
            ch.id,
            AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
                reply_code: e.code,
                reply_text: ss(&e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    async fn on_open_channel_frame(
        &mut self,
        ch: &mut Channel,
        f: RawFrame,
    ) -> Result<(), AmqpError> {
        match f.kind {
            FRAME_METHOD => {
                if let Some(a) = &ch.assembly {
                    let what = if a.props.is_none() {
                        "expected content header for class 60, got non content header frame instead"
                    } else {
                        "expected content body, got non content body frame instead"
                    };
                    return Err(AmqpError::connection(UNEXPECTED_FRAME, what).at(60, 40));
                }
                match frame::parse_hot(&f.payload) {
                    Some(HotMethod::Publish {
                        exchange,
                        routing_key,
                        mandatory,
                        immediate,
                    }) => {
                        return start_publish(ch, exchange, routing_key, mandatory, immediate)
                            .map_err(|e| e.at(BASIC_PUBLISH.0, BASIC_PUBLISH.1));
                    }
                    Some(HotMethod::Ack {
                        delivery_tag,
                        multiple,
                    }) => {
                        return self
                            .settle(ch, delivery_tag, multiple, Settle::Ack)
                            .map_err(|e| e.at(60, 80));
                    }
                    None => {}
                }
                let m = frame::parse_method(&f.payload)?;
                let (c, mid) = (m.class_id, m.method_id);
                self.on_channel_method(ch, m)
                    .await
                    .map_err(|e| e.at(c, mid))
            }
            FRAME_HEADER => {
                let Some(a) = ch.assembly.as_mut() else {
                    return Err(AmqpError::connection(
                        UNEXPECTED_FRAME,
                        "expected method frame, got non method frame instead",
                    ));
                };
                match a.on_header(&f.payload, self.config().message_bytes_max) {
                    Ok(true) => self.publish_assembled(ch).await,
                    Ok(false) => Ok(()),
                    Err(e) => {
                        // A channel error (too large) leaves the channel
                        // without a message in assembly.
                        ch.assembly = None;
                        Err(e)
                    }
                }
            }
            FRAME_BODY => {
                let Some(a) = ch.assembly.as_mut() else {
                    return Err(AmqpError::connection(
                        UNEXPECTED_FRAME,
                        "expected method frame, got non method frame instead",
                    ));
                };
                if a.on_body(&f.payload)? {
                    return self.publish_assembled(ch).await;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The one question every operation asks before it touches the engine:
    /// may this connection's user do `permission` on `resource`?
    fn permit(&self, resource: Resource<'_>, permission: Permission) -> Result<(), AmqpError> {
        self.shared
            .config
            .access
            .check_resource_access(&self.user, resource, permission)
            .map_err(auth::refused)
    }

    /// basic.publish needs write on the exchange; remembered per connection
    /// so that a stream of publishes is not a regex match each.
    fn permit_publish(&mut self, exchange: &str) -> Result<(), AmqpError> {
        if self.write_permitted.contains(exchange) {
            return Ok(());
        }
        self.permit(Resource::exchange(&self.vhost, exchange), Permission::Write)?;
        if self.write_permitted.len() >= WRITE_PERMISSION_CACHE_MAX {
            self.write_permitted.clear();
        }
        self.write_permitted.insert(exchange.to_string());
        Ok(())
    }

    fn exchange_exists(&self, name: &str) -> bool {
        let probe = ExchangeSpec {
            name: name.to_string(),
            kind: ExchangeKind::Direct,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: Vec::new(),
        };
        self.shared
            .messaging
            .declare_exchange(&self.vhost, probe, true)
            .is_ok()
    }

    fn queue_exists(&self, name: &str) -> bool {
        !matches!(
            self.shared.messaging.queue(&self.vhost, name, self.id),
            Err(MessagingError::NotFound { .. })
        )
    }

    /// exchange.declare (not passive): configure on the exchange; when it
    /// is created with an alternate exchange, also read on it and write on
    /// the alternate (RabbitMQ's rules).
    fn permit_exchange_declare(
        &self,
        name: &str,
        args: &[(String, FieldValue)],
    ) -> Result<(), AmqpError> {
        if name.is_empty() {
            // The engine refuses the default exchange, as RabbitMQ does
            // before it looks at permissions.
            return Ok(());
        }
        let x = Resource::exchange(&self.vhost, name);
        self.permit(x, Permission::Configure)?;
        if let Some(ae) = table::lookup(args, "alternate-exchange").and_then(table::as_str)
            && !self.exchange_exists(name)
        {
            self.permit(x, Permission::Read)?;
            self.permit(Resource::exchange(&self.vhost, &ae), Permission::Write)?;
        }
        Ok(())
    }

    /// queue.declare (not passive): configure on the queue (for a
    /// server-named queue, on a name of the form the server generates);
    /// when it is created with a dead-letter exchange, also read on the
    /// queue and write on that exchange.
    fn permit_queue_declare(
        &self,
        name: &str,
        args: &[(String, FieldValue)],
    ) -> Result<(), AmqpError> {
        let checked = if name.is_empty() {
            generated_tag("amq.gen-")
        } else {
            name.to_string()
        };
        let q = Resource::queue(&self.vhost, &checked);
        self.permit(q, Permission::Configure)?;
        if let Some(dlx) = table::lookup(args, "x-dead-letter-exchange").and_then(table::as_str)
            && (name.is_empty() || !self.queue_exists(name))
        {
            self.permit(q, Permission::Read)?;
            self.permit(Resource::exchange(&self.vhost, &dlx), Permission::Write)?;
        }
        Ok(())
    }

    fn queue_name(&self, ch: &Channel, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        if ch.last_queue.is_empty() {
            return Err(AmqpError::not_found("no previously declared queue"));
        }
        Ok(ch.last_queue.clone())
    }

    async fn on_channel_method(&mut self, ch: &mut Channel, m: Method) -> Result<(), AmqpError> {
        let id = ch.id;
        let vhost = self.vhost.clone();
        let messaging = self.shared.messaging.clone();
        let conn_id = self.id;
        match m.class {
            AMQPClass::Channel(method) => match method {
                chan::AMQPMethod::Open(_) => Err(AmqpError::connection(
                    CHANNEL_ERROR,
                    "second 'channel.open' seen",
                )),
                chan::AMQPMethod::Close(_) => {
                    self.release_channel(ch);
                    self.send_method(
                        id,
                        AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                    );
                    mark_gone(ch);
                    Ok(())
                }
                chan::AMQPMethod::CloseOk(_) => Ok(()),
                chan::AMQPMethod::Flow(flow) => {
                    if !flow.active {
                        // As RabbitMQ: consumers are paced by prefetch instead.
                        return Err(AmqpError::connection(NOT_IMPLEMENTED, "active=false"));
                    }
                    self.send_method(
                        id,
                        AMQPClass::Channel(chan::AMQPMethod::FlowOk(chan::FlowOk { active: true })),
                    );
                    Ok(())
                }
                chan::AMQPMethod::FlowOk(_) => Ok(()),
                chan::AMQPMethod::OpenOk(_) => Err(command_invalid()),
            },
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.send_method(
                    id,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            AMQPClass::Exchange(method) => match method {
                exchange::AMQPMethod::Declare(d) => {
                    if !d.passive {
                        self.permit_exchange_declare(d.exchange.as_str(), &m.table)?;
                    }
                    let name = s_of(&d.exchange);
                    let spec = if d.passive {
                        ExchangeSpec {
                            name,
                            kind: ExchangeKind::Direct,
                            durable: false,
                            auto_delete: false,
                            internal: false,
                            arguments: Vec::new(),
                        }
                    } else {
                        ExchangeSpec {
                            kind: exchange_kind(d.kind.as_str(), &m.table)?,
                            name,
                            durable: d.durable,
                            auto_delete: d.auto_delete,
                            internal: d.internal,
                            arguments: m.table,
                        }
                    };
                    messaging.declare_exchange(&vhost, spec, d.passive)?;
                    if !d.nowait {
                        self.send_method(
                            id,
                            AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                                exchange::DeclareOk {},
                            )),
                        );
                    }
                    Ok(())
                }
                exchange::AMQPMethod::Delete(d) => {
                    let name = d.exchange.as_str();
                    // The default and amq.* exchanges are refused by the
                    // engine whatever the permissions, as in RabbitMQ.
                    if !name.is_empty() && !name.starts_with("amq.") {
                        self.permit(Resource::exchange(&vhost, name), Permission::Configure)?;
                    }
                    match messaging.delete_exchange(&vhost, d.exchange.as_str(), d.if_unused) {
                        // Deleting what is not there succeeds, as in RabbitMQ.
                        Ok(()) | Err(MessagingError::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                    if !d.nowait {
                        self.send_method(
                            id,
                            AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(
                                exchange::DeleteOk {},
                            )),
                        );
                    }
                    Ok(())
                }
                exchange::AMQPMethod::Bind(b) => {
                    self.permit(
                        Resource::exchange(&vhost, b.destination.as_str()),
                        Permission::Write,
                    )?;
                    self.permit(
                        Resource::exchange(&vhost, b.source.as_str()),
                        Permission::Read,
                    )?;
                    messaging.bind_exchange(
                        &vhost,
                        b.destination.as_str(),
                        b.source.as_str(),
                        b.routing_key.as_str(),
                        m.table,
                    )?;
                    if !b.nowait {
                        self.send_method(
                            id,
                            AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                        );
                    }
                    Ok(())
                }
                exchange::AMQPMethod::Unbind(b) => {
                    self.permit(
                        Resource::exchange(&vhost, b.destination.as_str()),
                        Permission::Write,
                    )?;
                    self.permit(
                        Resource::exchange(&vhost, b.source.as_str()),
                        Permission::Read,
                    )?;
                    messaging.unbind_exchange(
                        &vhost,
                        b.destination.as_str(),
                        b.source.as_str(),
                        b.routing_key.as_str(),
                        m.table,
                    )?;
                    if !b.nowait {
                        self.send_method(
                            id,
                            AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(
                                exchange::UnbindOk {},
                            )),
                        );
                    }
                    Ok(())
                }
                _ => Err(command_invalid()),
            },
            AMQPClass::Queue(method) => match method {
                queue::AMQPMethod::Declare(d) => {
                    let name = s_of(&d.queue);
                    let (name, messages, consumers) = if name == DIRECT_REPLY_QUEUE {
                        (name, 0, 0)
                    } else {
                        if !d.passive {
                            self.permit_queue_declare(&name, &m.table)?;
                        }
                        let spec = QueueSpec {
                            name,
                            durable: d.durable,
                            exclusive_owner: d.exclusive.then_some(conn_id),
                            auto_delete: d.auto_delete,
                            arguments: m.table,
                        };
                        let info = messaging.declare_queue(&vhost, spec, d.passive, conn_id)?;
                        (info.name, info.message_count, info.consumer_count)
                    };
                    ch.last_queue = name.clone();
                    if !d.nowait {
                        self.send_method(
                            id,
                            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                                queue: ss(&name),
                                message_count: messages.min(u64::from(u32::MAX)) as u32,
                                consumer_count: consumers,
                            })),
                        );
                    }
                    Ok(())
                }
                queue::AMQPMethod::Bind(b) => {
                    let q = self.queue_name(ch, b.queue.as_str())?;
                    // An empty queue and routing key bind with the queue's name.
                    let rk = if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                        q.clone()
                    } else {
                        s_of(&b.routing_key)
                    };
                    self.permit(Resource::queue(&vhost, &q), Permission::Write)?;
                    self.permit(
                        Resource::exchange(&vhost, b.exchange.as_str()),
                        Permission::Read,
                    )?;
                    messaging.bind_queue(&vhost, &q, b.exchange.as_str(), &rk, m.table, conn_id)?;
                    if !b.nowait {
                        self.send_method(
                            id,
                            AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                        );
                    }
                    Ok(())
                }
                queue::AMQPMethod::Unbind(b) => {
                    let q = self.queue_name(ch, b.queue.as_str())?;
                    self.permit(Resource::queue(&vhost, &q), Permission::Write)?;
                    self.permit(
                        Resource::exchange(&vhost, b.exchange.as_str()),
                        Permission::Read,
                    )?;
                    messaging.unbind_queue(
                        &vhost,
                        &q,
                        b.exchange.as_str(),
                        b.routing_key.as_str(),
                        m.table,
                        conn_id,
                    )?;
                    self.send_method(
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                    );
                    Ok(())
                }
                queue::AMQPMethod::Purge(p) => {
                    let q = self.queue_name(ch, p.queue.as_str())?;
                    self.permit(Resource::queue(&vhost, &q), Permission::Read)?;
                    let n = messaging.queue(&vhost, &q, conn_id)?.purge()?;
                    if !p.nowait {
                        self.send_method(
                            id,
                            AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                                message_count: n.min(u64::from(u32::MAX)) as u32,
                            })),
                        );
                    }
                    Ok(())
                }
                queue::AMQPMethod::Delete(d) => {
                    let q = self.queue_name(ch, d.queue.as_str())?;
                    self.permit(Resource::queue(&vhost, &q), Permission::Configure)?;
                    let n = match messaging.delete_queue(
                        &vhost,
                        &q,
                        d.if_unused,
                        d.if_empty,
                        conn_id,
                    ) {
                        Ok(n) => n,
                        // Deleting what is not there succeeds, as in RabbitMQ.
                        Err(MessagingError::NotFound { .. }) => 0,
                        Err(e) => return Err(e.into()),
                    };
                    if !d.nowait {
                        self.send_method(
                            id,
                            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                                message_count: n.min(u64::from(u32::MAX)) as u32,
                            })),
                        );
                    }
                    Ok(())
                }
                _ => Err(command_invalid()),
            },
            AMQPClass::Basic(method) => self.on_basic(ch, method, m.table, m.args).await,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if ch.tx.is_some() {
                    return Err(AmqpError::precondition(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                ch.confirm = true;
                if !s.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(method) => match method {
                tx::AMQPMethod::Select(_) => {
                    if ch.confirm {
                        return Err(AmqpError::precondition(
                            "cannot switch from confirm to tx mode",
                        ));
                    }
                    if ch.tx.is_none() {
                        ch.tx = Some(Tx::default());
                    }
                    self.send_method(id, AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
                    Ok(())
                }
                tx::AMQPMethod::Commit(_) => {
                    let Some(t) = ch.tx.replace(Tx::default()) else {
                        return Err(AmqpError::precondition("channel is not transactional"));
                    };
                    self.commit(ch, t).await?;
                    self.send_method(id, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
                    Ok(())
                }
                tx::AMQPMethod::Rollback(_) => {
                    let Some(t) = ch.tx.replace(Tx::default()) else {
                        return Err(AmqpError::precondition("channel is not transactional"));
                    };
                    // Acks are forgotten: those deliveries are unacked again.
                    for (tag, u, _) in t.settles {
                        ch.unacked.insert(tag, u);
                    }
                    self.send_method(
                        id,
                        AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                    );
                    Ok(())
                }
                _ => Err(command_invalid()),
            },
            AMQPClass::Connection(_) => Err(AmqpError::connection(
                COMMAND_INVALID,
                "connection class method on a channel other than 0",
            )),
            _ => Err(command_invalid()),
        }
    }

    async fn on_basic(
        &mut self,
        ch: &mut Channel,
        method: basic::AMQPMethod,
        table: Vec<(String, FieldValue)>,
        args: Bytes,
    ) -> Result<(), AmqpError> {
        let id = ch.id;
        match method {
            basic::AMQPMethod::Qos(q) => {
                let prefetch_size = if args.len() >= 4 {
                    u32::from_be_bytes([args[0], args[1], args[2], args[3]])
                } else {
                    0
                };
                if prefetch_size != 0 {
                    return Err(AmqpError::connection(
                        NOT_IMPLEMENTED,
                        format!("prefetch_size!=0 ({prefetch_size})"),
                    ));
                }
                if q.global {
                    ch.credit.set_limit(u32::from(q.prefetch_count));
                } else {
                    ch.prefetch = u32::from(q.prefetch_count);
                }
                self.send_method(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::Consume(c) => self.consume(ch, c, &table),
            basic::AMQPMethod::Cancel(c) => {
                let tag = s_of(&c.consumer_tag);
                self.cancel_consumer(ch, &tag);
                if !c.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Publish(p) => start_publish(
                ch,
                s_of(&p.exchange),
                s_of(&p.routing_key),
                p.mandatory,
                p.immediate,
            ),
            basic::AMQPMethod::Get(g) => {
                let q = self.queue_name(ch, g.queue.as_str())?;
                self.permit(Resource::queue(&self.vhost, &q), Permission::Read)?;
                let queue = self.shared.messaging.queue(&self.vhost, &q, self.id)?;
                match queue.get(g.no_ack)? {
                    None => self.send_method(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                    ),
                    Some(d) => {
                        let tag = ch.next_tag;
                        ch.next_tag += 1;
                        self.send_method(
                            id,
                            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                                delivery_tag: tag,
                                redelivered: d.redelivered,
                                exchange: ss(&d.message.exchange),
                                routing_key: ss(&d.message.routing_key),
                                message_count: d.remaining.min(u64::from(u32::MAX)) as u32,
                            })),
                        );
                        let props = delivery_properties(&d, None);
                        frame::put_content(
                            &mut self.out,
                            id,
                            &props,
                            &d.message.body,
                            self.frame_max,
                        );
                        if !g.no_ack {
                            ch.unacked.insert(
                                tag,
                                Unacked {
                                    queue,
                                    id: d.id,
                                    consumer: None,
                                    credited: false,
                                },
                            );
                        }
                    }
                }
                Ok(())
            }
            basic::AMQPMethod::Ack(a) => self.settle(ch, a.delivery_tag, a.multiple, Settle::Ack),
            basic::AMQPMethod::Nack(n) => self.settle(
                ch,
                n.delivery_tag,
                n.multiple,
                Settle::Reject { requeue: n.requeue },
            ),
            basic::AMQPMethod::Reject(r) => self.settle(
                ch,
                r.delivery_tag,
                false,
                Settle::Reject { requeue: r.requeue },
            ),
            basic::AMQPMethod::Recover(r) => {
                if !r.requeue {
                    return Err(AmqpError::connection(NOT_IMPLEMENTED, "requeue=false"));
                }
                self.requeue_unacked(ch);
                self.send_method(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(r) => {
                if !r.requeue {
                    return Err(AmqpError::connection(NOT_IMPLEMENTED, "requeue=false"));
                }
                self.requeue_unacked(ch);
                Ok(())
            }
            _ => Err(command_invalid()),
        }
    }

    fn consume(
        &mut self,
        ch: &mut Channel,
        c: basic::Consume,
        table: &[(String, FieldValue)],
    ) -> Result<(), AmqpError> {
        let id = ch.id;
        let mut tag = s_of(&c.consumer_tag);
        if tag.is_empty() {
            tag = generated_tag("amq.ctag-");
        }
        if ch.consumers.contains_key(&tag) || ch.reply.as_ref().is_some_and(|(t, _)| *t == tag) {
            return Err(AmqpError::connection(
                NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let max = self.config().consumers_per_channel_max;
        if ch.consumers.len() + usize::from(ch.reply.is_some()) >= max {
            // RabbitMQ's answer and text.
            return Err(AmqpError::connection(
                NOT_ALLOWED,
                format!("reached maximum ({max}) of consumers per channel"),
            ));
        }
        if c.queue.as_str() == DIRECT_REPLY_QUEUE {
            if !c.no_ack {
                return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
            }
            if ch.reply.is_some() {
                return Err(AmqpError::precondition("reply consumer already set"));
            }
            let key = generated_tag(DIRECT_REPLY_PREFIX);
            self.shared.replies().insert(
                key.clone(),
                ReplyTarget {
                    tx: self.replies_tx.clone(),
                    channel: id,
                    generation: ch.generation,
                },
            );
            ch.reply = Some((tag.clone(), key));
            if !c.nowait {
                self.send_method(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                        consumer_tag: ss(&tag),
                    })),
                );
            }
            return Ok(());
        }
        let q = self.queue_name(ch, c.queue.as_str())?;
        self.permit(Resource::queue(&self.vhost, &q), Permission::Read)?;
        let queue = self.shared.messaging.queue(&self.vhost, &q, self.id)?;
        let priority = match table::lookup(table, "x-priority") {
            None => 0,
            Some(FieldValue::Int(p)) => (*p).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
            Some(other) => {
                return Err(AmqpError::precondition(format!(
                    "invalid arg 'x-priority' for consumer: {other:?} is not an integer"
                )));
            }
        };
        let stream_offset = match table::lookup(table, "x-stream-offset") {
            None => None,
            Some(v) => Some(stream_offset(v)?),
        };
        let consumer_id = self.next_consumer;
        self.next_consumer += 1;
        // Unique across the queue even when clients reuse tags on other
        // channels or connections.
        let engine_tag = format!("{}.{}.{}", self.id, id, tag);
        let consumer = queue.consume(ConsumerSpec {
            tag: engine_tag.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            priority,
            connection: self.id,
            stream_offset,
        })?;
        if !c.nowait {
            self.send_method(
                id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: ss(&tag),
                })),
            );
        }
        // Prefetch 0 means no limit of the client's; ours still applies.
        let unacked_max = self.config().consumer_unacked_max;
        let credit = Arc::new(Credit::new(match ch.prefetch {
            0 => unacked_max,
            p => p.min(unacked_max),
        }));
        let (stop, stop_rx) = watch::channel(false);
        let limits = (!c.no_ack).then(|| (credit.clone(), ch.credit.clone()));
        tokio::spawn(consumer_loop(
            consumer,
            consumer_id,
            queue.clone(),
            limits,
            self.deliveries_tx.clone(),
            stop_rx,
            c.no_ack,
        ));
        self.consumer_index.insert(consumer_id, (id, tag.clone()));
        ch.consumers.insert(
            tag,
            ConsumerEntry {
                id: consumer_id,
                queue: Some(queue),
                engine_tag,
                no_ack: c.no_ack,
                credit,
                stop,
                stream: stream_offset.is_some(),
            },
        );
        Ok(())
    }

    /// Stops a consumer (client basic.cancel, channel close): the engine
    /// ends its `next`, and the task ends with it.
    fn cancel_consumer(&mut self, ch: &mut Channel, tag: &str) {
        if ch.reply.as_ref().is_some_and(|(t, _)| t == tag) {
            if let Some((_, key)) = ch.reply.take() {
                self.shared.replies().remove(&key);
            }
            return;
        }
        if let Some(c) = ch.consumers.remove(tag) {
            self.consumer_index.remove(&c.id);
            if let Some(q) = &c.queue {
                q.cancel(&c.engine_tag);
            }
            let _ = c.stop.send(true);
        }
    }

    /// Puts every unacked delivery of the channel back in its queue, in
    /// delivery order, flagged redelivered.
    fn requeue_unacked(&mut self, ch: &mut Channel) {
        let unacked = std::mem::take(&mut ch.unacked);
        for (_, u) in unacked {
            self.release_credit(ch, &u);
            if let Err(e) = u.queue.reject(u.id, true) {
                tracing::debug!(error = %e, "requeue of an unacked delivery failed");
            }
        }
    }

    fn release_credit(&self, ch: &Channel, u: &Unacked) {
        if !u.credited {
            return;
        }
        ch.credit.release(1);
        if let Some(cid) = u.consumer
            && let Some(c) = ch.consumers.values().find(|c| c.id == cid)
        {
            c.credit.release(1);
        }
    }

    /// Releases what a channel holds: consumers stop, unacked deliveries
    /// (and acks held by an uncommitted transaction) go back to their queues.
    fn release_channel(&mut self, ch: &mut Channel) {
        let tags: Vec<String> = ch.consumers.keys().cloned().collect();
        for tag in tags {
            self.cancel_consumer(ch, &tag);
        }
        if let Some((_, key)) = ch.reply.take() {
            self.shared.replies().remove(&key);
        }
        if let Some(t) = ch.tx.take() {
            for (tag, u, _) in t.settles {
                ch.unacked.insert(tag, u);
            }
        }
        self.requeue_unacked(ch);
        ch.assembly = None;
        ch.outstanding.clear();
    }

    fn release_everything(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            if let Some(mut ch) = self.channels.remove(&id) {
                self.release_channel(&mut ch);
            }
        }
        self.shared.messaging.connection_closed(self.id);
    }

    /// Deliveries consumer tasks had queued for a connection that is going
    /// away go back to their queues; later sends fail and the tasks requeue
    /// what they hold themselves.
    fn drain_deliveries(&mut self) {
        self.deliveries.close();
        while let Ok(ev) = self.deliveries.try_recv() {
            if let ConsumerEvent::Deliveries {
                queue,
                deliveries,
                channel_credit: Some(_),
                ..
            } = ev
            {
                for d in deliveries {
                    let _ = queue.reject(d.id, true);
                }
            }
        }
    }

    fn settle(
        &mut self,
        ch: &mut Channel,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Result<(), AmqpError> {
        let tags: Vec<u64> = if multiple && tag == 0 {
            ch.unacked.keys().copied().collect()
        } else {
            if !ch.unacked.contains_key(&tag) {
                return Err(AmqpError::precondition(format!(
                    "unknown delivery tag {tag}"
                )));
            }
            if multiple {
                ch.unacked.range(..=tag).map(|(t, _)| *t).collect()
            } else {
                vec![tag]
            }
        };
        for t in tags {
            let Some(u) = ch.unacked.remove(&t) else {
                continue;
            };
            if let Some(txn) = ch.tx.as_mut() {
                txn.settles.push((t, u, how));
                continue;
            }
            self.apply_settle(ch, u, how)?;
        }
        Ok(())
    }

    fn apply_settle(&mut self, ch: &mut Channel, u: Unacked, how: Settle) -> Result<(), AmqpError> {
        self.release_credit(ch, &u);
        let r = match how {
            Settle::Ack => {
                // Written by the next flush, once for all the acks handled
                // before it.
                if !self.journal_owed.iter().any(|q| Arc::ptr_eq(q, &u.queue)) {
                    self.journal_owed.push(u.queue.clone());
                }
                u.queue.ack_journal_later(u.id)
            }
            Settle::Reject { requeue } => u.queue.reject(u.id, requeue),
        };
        match r {
            Ok(()) => Ok(()),
            // The queue was deleted under the delivery: nothing left to settle.
            Err(MessagingError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn commit(&mut self, ch: &mut Channel, t: Tx) -> Result<(), AmqpError> {
        let mut pending = Vec::new();
        let mut messages = Vec::with_capacity(t.publishes.len());
        let mut returns = Vec::with_capacity(t.publishes.len());
        for (msg, mandatory) in t.publishes {
            if is_direct_reply(&msg) {
                self.reply_directly(ch.id, msg, mandatory);
                continue;
            }
            returns.push(Returned::of(&msg, mandatory));
            messages.push(msg);
        }
        let results = self.shared.messaging.publish_all(&self.vhost, messages);
        for (returned, result) in returns.into_iter().zip(results) {
            match result {
                Ok(published) => {
                    if published.routed == 0
                        && let Some(r) = returned
                    {
                        self.basic_return(ch.id, &r);
                    }
                    pending.push(published.pending);
                }
                Err(MessagingError::QueueFull(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for p in pending {
            if let Err(e) = p.durable().await {
                return Err(e.into());
            }
        }
        for (_, u, how) in t.settles {
            self.apply_settle(ch, u, how)?;
        }
        Ok(())
    }

    fn basic_return(&mut self, channel: u16, r: &Returned) {
        self.send_method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: NO_ROUTE,
                reply_text: ss("NO_ROUTE"),
                exchange: ss(&r.exchange),
                routing_key: ss(&r.routing_key),
            })),
        );
        frame::put_content(
            &mut self.out,
            channel,
            &r.properties,
            &r.body,
            self.frame_max,
        );
    }

    /// Hands a message published to a direct reply-to address to the
    /// connection waiting for it (not through a queue), or returns it to
    /// the publisher if it is mandatory and nobody waits.
    fn reply_directly(&mut self, channel: u16, msg: Message, mandatory: bool) {
        let returned = Returned::of(&msg, mandatory);
        let taken = self
            .shared
            .replies()
            .get(&msg.routing_key)
            .cloned()
            .is_some_and(|t| {
                t.tx.try_send(DirectReply {
                    channel: t.channel,
                    generation: t.generation,
                    routing_key: msg.routing_key,
                    properties: msg.properties,
                    body: msg.body,
                })
                .is_ok()
            });
        if !taken && let Some(r) = returned {
            self.basic_return(channel, &r);
        }
    }

    async fn publish_assembled(&mut self, ch: &mut Channel) -> Result<(), AmqpError> {
        let Some(a) = ch.assembly.take() else {
            return Ok(());
        };
        // RabbitMQ's order: size (checked at the header), write permission,
        // then the exchange, user_id and expiration.
        self.permit_publish(&a.exchange)?;
        self.shared
            .messaging
            .check_publish(&self.vhost, &a.exchange)?;
        let props = a.props.unwrap_or_else(Props::empty);
        if let Some(u) = props.short_str(props::USER_ID)
            && u != self.user.as_bytes()
            && !self.shared.config.access.may_impersonate(&self.user)
        {
            return Err(AmqpError::precondition(format!(
                "user_id property set to '{}' but authenticated user was '{}'",
                String::from_utf8_lossy(u),
                self.user
            )));
        }
        let ttl = match props.short_str(props::EXPIRATION) {
            Some(e) => Some(Duration::from_millis(
                props::parse_expiration(e).map_err(AmqpError::precondition)?,
            )),
            None => None,
        };
        let mut raw = props.raw.clone();
        // BCC routes but is never delivered (RabbitMQ removes it).
        if props.headers.iter().any(|(k, _)| k == "BCC") {
            let kept: Vec<(String, FieldValue)> = props
                .headers
                .iter()
                .filter(|(k, _)| k != "BCC")
                .cloned()
                .collect();
            raw = props.with_headers(&kept);
        }
        if props.short_str(props::REPLY_TO) == Some(DIRECT_REPLY_QUEUE.as_bytes()) {
            let Some((_, key)) = &ch.reply else {
                return Err(AmqpError::precondition(
                    "fast reply consumer does not exist",
                ));
            };
            raw = Props::parse(raw)
                .map(|p| p.with_short_str(props::REPLY_TO, key.as_bytes()))
                .map_err(|e| {
                    AmqpError::connection(SYNTAX_ERROR, format!("content properties: {e}"))
                })?;
        }
        let priority = props.priority().unwrap_or(0);
        let persistent = props.delivery_mode() == Some(2);
        let msg = Message {
            exchange: a.exchange,
            routing_key: a.routing_key,
            properties: raw,
            deaths: props::deaths_from_headers(&props.headers),
            headers: props.headers,
            body: a.body.freeze(),
            priority,
            ttl,
            persistent,
            published_ms: now_ms(),
        };
        let seq = if ch.confirm {
            let s = ch.next_seq;
            ch.next_seq += 1;
            ch.outstanding.insert(s, None);
            Some(s)
        } else {
            None
        };
        if let Some(t) = ch.tx.as_mut() {
            t.publishes.push((msg, a.mandatory));
            return Ok(());
        }
        if is_direct_reply(&msg) {
            self.reply_directly(ch.id, msg, a.mandatory);
            if let Some(seq) = seq {
                self.confirm_now(ch, seq, true);
            }
            return Ok(());
        }
        self.held.push(Held {
            channel: ch.id,
            generation: ch.generation,
            seq,
            mandatory: a.mandatory,
            msg,
        });
        Ok(())
    }

    /// Routes the held publishes, each queue with one write for all the
    /// messages it takes, then answers each on its channel: a basic.return
    /// if mandatory and unroutable, its confirm once durable, a nack if a
    /// queue refused it (reject-publish). A channel closed meanwhile hears
    /// nothing more, but what it published is routed, as RabbitMQ routes
    /// what it received before the close.
    async fn publish_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        let mut answers = Vec::with_capacity(held.len());
        let mut messages = Vec::with_capacity(held.len());
        for h in held {
            let returned = Returned::of(&h.msg, h.mandatory);
            answers.push((h.channel, h.generation, h.seq, returned));
            messages.push(h.msg);
        }
        let results = self.shared.messaging.publish_all(&self.vhost, messages);
        // The publishes of a read to one queue share its append: their
        // confirms wait together, one future for a run of them.
        let mut waiting: Vec<ConfirmWait> = Vec::new();
        for ((channel, generation, seq, returned), result) in answers.into_iter().zip(results) {
            let Some(mut ch) = self.channels.remove(&channel) else {
                continue;
            };
            let answered = if ch.generation == generation && !ch.closing {
                self.on_published(&mut ch, seq, returned, result)
            } else {
                Ok(None)
            };
            let mut connection_error = None;
            match answered {
                Ok(Some((seq, pending))) => {
                    match waiting.iter_mut().rev().find(|w| w.channel == channel) {
                        Some(w) if w.generation == generation && w.pending.same_waits(&pending) => {
                            w.seqs.push(seq);
                        }
                        _ => waiting.push(ConfirmWait {
                            channel,
                            generation,
                            seqs: vec![seq],
                            pending,
                        }),
                    }
                }
                Ok(None) => {}
                Err(e) if e.scope == Scope::Channel => {
                    self.close_channel(&mut ch, &e.at(BASIC_PUBLISH.0, BASIC_PUBLISH.1));
                }
                Err(e) => connection_error = Some(e.at(BASIC_PUBLISH.0, BASIC_PUBLISH.1)),
            }
            self.channels.insert(channel, ch);
            if let Some(e) = connection_error {
                self.on_error(e).await;
            }
        }
        for w in waiting {
            self.confirms.push(Box::pin(async move {
                let ok = w.pending.durable().await.is_ok();
                ConfirmDone {
                    channel: w.channel,
                    generation: w.generation,
                    seqs: w.seqs,
                    ok,
                }
            }));
        }
    }

    /// Answers one routed publish (see `publish_held`); returns its
    /// confirm's sequence number and what it waits for if it must wait.
    fn on_published(
        &mut self,
        ch: &mut Channel,
        seq: Option<u64>,
        returned: Option<Returned>,
        result: Result<Published, MessagingError>,
    ) -> Result<Option<(u64, PendingDurability)>, AmqpError> {
        match result {
            Ok(published) => {
                if published.routed == 0
                    && let Some(r) = returned
                {
                    self.basic_return(ch.id, &r);
                }
                match seq {
                    Some(seq) if published.pending.is_empty() => {
                        self.confirm_now(ch, seq, true);
                        Ok(None)
                    }
                    Some(seq) => Ok(Some((seq, published.pending))),
                    None => Ok(None),
                }
            }
            // x-overflow reject-publish: the publisher learns by a nack.
            Err(MessagingError::QueueFull(_)) => {
                if let Some(seq) = seq {
                    self.confirm_now(ch, seq, false);
                }
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn confirm_now(&mut self, ch: &mut Channel, seq: u64, ok: bool) {
        ch.outstanding.insert(seq, Some(ok));
        self.send_confirms(ch);
    }

    /// Sends the confirms that are known, in order, batching consecutive
    /// acks with `multiple`.
    fn send_confirms(&mut self, ch: &mut Channel) {
        let mut acked_up_to: Option<u64> = None;
        let mut acked_count = 0u64;
        while let Some((&seq, &state)) = ch.outstanding.iter().next() {
            match state {
                None => break,
                Some(true) => {
                    ch.outstanding.remove(&seq);
                    acked_up_to = Some(seq);
                    acked_count += 1;
                }
                Some(false) => {
                    if let Some(up_to) = acked_up_to.take() {
                        frame::put_confirm(&mut self.out, ch.id, true, up_to, acked_count > 1);
                        acked_count = 0;
                    }
                    ch.outstanding.remove(&seq);
                    frame::put_confirm(&mut self.out, ch.id, false, seq, false);
                }
            }
        }
        if let Some(up_to) = acked_up_to {
            frame::put_confirm(&mut self.out, ch.id, true, up_to, acked_count > 1);
        }
    }

    fn on_confirm(&mut self, c: ConfirmDone) {
        let Some(mut ch) = self.channels.remove(&c.channel) else {
            return;
        };
        if ch.generation == c.generation && !ch.closing {
            let mut known = false;
            for seq in c.seqs {
                if let Some(state) = ch.outstanding.get_mut(&seq) {
                    *state = Some(c.ok);
                    known = true;
                }
            }
            if known {
                self.send_confirms(&mut ch);
            }
        }
        self.channels.insert(c.channel, ch);
    }

    fn on_consumer_event(&mut self, ev: ConsumerEvent) {
        match ev {
            ConsumerEvent::Deliveries {
                consumer,
                queue,
                deliveries,
                channel_credit,
                bytes: _encoded_before_release,
            } => {
                let credited = channel_credit.is_some();
                let target = self
                    .consumer_index
                    .get(&consumer)
                    .cloned()
                    .filter(|(channel, _)| self.channels.contains_key(channel));
                let Some((channel, tag)) = target else {
                    // The consumer went away while these were on their way:
                    // back to the queue (no-ack deliveries are settled).
                    if let Some(c) = channel_credit {
                        c.release(deliveries.len() as u32);
                        for d in &deliveries {
                            let _ = queue.reject(d.id, true);
                        }
                    }
                    return;
                };
                let Some(mut ch) = self.channels.remove(&channel) else {
                    return;
                };
                let (no_ack, stream) = match ch.consumers.get(&tag) {
                    Some(c) => (c.no_ack, c.stream),
                    None => (!credited, false),
                };
                for delivery in deliveries {
                    let dtag = ch.next_tag;
                    ch.next_tag += 1;
                    frame::put_deliver(
                        &mut self.out,
                        channel,
                        &tag,
                        dtag,
                        delivery.redelivered,
                        &delivery.message.exchange,
                        &delivery.message.routing_key,
                    );
                    // Stream queues add x-stream-offset as the last header; the
                    // properties get it too (as RabbitMQ's stream deliveries do).
                    let engine_offset = match delivery.message.headers.last() {
                        Some((k, FieldValue::Int(n))) if k == "x-stream-offset" && *n >= 0 => {
                            Some(*n as u64)
                        }
                        _ => None,
                    };
                    let offset = engine_offset.or(stream.then_some(delivery.id));
                    let props = delivery_properties(&delivery, offset);
                    frame::put_content(
                        &mut self.out,
                        channel,
                        &props,
                        &delivery.message.body,
                        self.frame_max,
                    );
                    if !no_ack {
                        ch.unacked.insert(
                            dtag,
                            Unacked {
                                queue: queue.clone(),
                                id: delivery.id,
                                consumer: Some(consumer),
                                credited,
                            },
                        );
                    }
                }
                self.channels.insert(channel, ch);
            }
            ConsumerEvent::Ended {
                consumer,
                channel_credit,
            } => {
                if let Some(c) = channel_credit {
                    c.release(1);
                }
                let Some((channel, tag)) = self.consumer_index.remove(&consumer) else {
                    return;
                };
                let Some(mut ch) = self.channels.remove(&channel) else {
                    return;
                };
                if ch.consumers.remove(&tag).is_some() && self.caps.cancel_notify && !ch.closing {
                    // The queue went away (deleted): tell the client, as
                    // RabbitMQ does for consumer_cancel_notify clients.
                    self.send_method(
                        channel,
                        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                            consumer_tag: ss(&tag),
                            nowait: true,
                        })),
                    );
                }
                self.channels.insert(channel, ch);
            }
        }
    }

    fn on_direct_reply(&mut self, r: DirectReply) {
        let Some(mut ch) = self.channels.remove(&r.channel) else {
            return;
        };
        if ch.generation == r.generation
            && !ch.closing
            && let Some((tag, key)) = &ch.reply
            && *key == r.routing_key
        {
            let dtag = ch.next_tag;
            ch.next_tag += 1;
            let tag = tag.clone();
            frame::put_deliver(
                &mut self.out,
                r.channel,
                &tag,
                dtag,
                false,
                "",
                &r.routing_key,
            );
            frame::put_content(
                &mut self.out,
                r.channel,
                &r.properties,
                &r.body,
                self.frame_max,
            );
        }
        self.channels.insert(r.channel, ch);
    }
}

fn command_invalid() -> AmqpError {
    AmqpError::connection(COMMAND_INVALID, "method not valid from a client")
}

fn mark_gone(ch: &mut Channel) {
    ch.closing = true;
    ch.gone = true;
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn exchange_kind(kind: &str, args: &[(String, FieldValue)]) -> Result<ExchangeKind, AmqpError> {
    Ok(match kind {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        "x-delayed-message" => {
            let inner = table::lookup(args, "x-delayed-type").and_then(table::as_str);
            ExchangeKind::Delayed(match inner.as_deref() {
                Some("direct") => DelayedRouting::Direct,
                Some("fanout") => DelayedRouting::Fanout,
                Some("topic") => DelayedRouting::Topic,
                Some("headers") => DelayedRouting::Headers,
                _ => {
                    return Err(AmqpError::precondition(
                        "Invalid argument, 'x-delayed-type' must be an existing exchange type",
                    ));
                }
            })
        }
        other => {
            return Err(AmqpError::connection(
                COMMAND_INVALID,
                format!("unknown exchange type '{other}'"),
            ));
        }
    })
}

fn stream_offset(v: &FieldValue) -> Result<StreamOffset, AmqpError> {
    Ok(match v {
        FieldValue::Str(s) => match &s[..] {
            b"first" => StreamOffset::First,
            b"last" => StreamOffset::Last,
            b"next" => StreamOffset::Next,
            other => {
                return Err(AmqpError::precondition(format!(
                    "Invalid value for x-stream-offset: '{}'",
                    String::from_utf8_lossy(other)
                )));
            }
        },
        FieldValue::Int(n) if *n >= 0 => StreamOffset::Offset(*n as u64),
        FieldValue::Timestamp(s) => StreamOffset::Timestamp((*s as i64).saturating_mul(1000)),
        other => {
            return Err(AmqpError::precondition(format!(
                "Invalid value for x-stream-offset: {other:?}"
            )));
        }
    })
}

/// The properties a delivery goes out with: the publisher's bytes, unless
/// the message was dead-lettered (x-death rendered in) or comes from a
/// stream (x-stream-offset added), as RabbitMQ does.
fn delivery_properties(d: &Delivery, stream_offset: Option<u64>) -> Bytes {
    let m = &d.message;
    if m.deaths.is_empty() && stream_offset.is_none() {
        return m.properties.clone();
    }
    let Ok(p) = Props::parse(m.properties.clone()) else {
        return m.properties.clone();
    };
    let mut headers = if m.deaths.is_empty() {
        p.headers.clone()
    } else {
        props::headers_with_deaths(&p.headers, &m.deaths)
    };
    if let Some(o) = stream_offset {
        headers.retain(|(k, _)| k != "x-stream-offset");
        headers.push(("x-stream-offset".into(), FieldValue::Int(o as i64)));
    }
    let with_headers = p.with_headers(&headers);
    // RabbitMQ drops the per-message TTL when it dead-letters a message (it
    // lives on as x-death's original-expiration).
    let expired_ttl = m
        .deaths
        .first()
        .and_then(|d| d.original_expiration.as_deref());
    if let (Some(ttl), Some(current)) = (expired_ttl, p.short_str(props::EXPIRATION))
        && ttl.as_bytes() == current
        && let Ok(p2) = Props::parse(with_headers.clone())
    {
        return p2.with_field(props::EXPIRATION, None);
    }
    with_headers
}

/// One consumer: takes prefetch credit, waits for the queue's next
/// deliveries (as many at once as are ready and the credit allows, up to
/// `DELIVERY_BATCH_MAX`), hands them to the connection task. Ends when the
/// engine ends the consumer (cancel, queue deleted) or the connection goes
/// away.
async fn consumer_loop(
    mut consumer: ferry_core::messaging::Consumer,
    id: u64,
    queue: Arc<Queue>,
    limits: Option<(Arc<Credit>, Arc<Credit>)>,
    tx: DeliveryQueue,
    mut stop: watch::Receiver<bool>,
    no_ack: bool,
) {
    loop {
        let mut channel_credit = None;
        let mut max = DELIVERY_BATCH_UNLIMITED_MAX;
        if let Some((own, channel)) = &limits {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                _ = own.acquire() => {}
            }
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                _ = channel.acquire() => {}
            }
            // More room, if there is some now. Not from a channel-wide
            // (global) prefetch: credit held while waiting for messages
            // would keep the channel's other consumers from theirs.
            let extra = if channel.is_unlimited() {
                let most = if own.is_unlimited() {
                    DELIVERY_BATCH_UNLIMITED_MAX
                } else {
                    DELIVERY_BATCH_MAX
                };
                own.try_acquire_up_to(most as u32 - 1)
            } else {
                0
            };
            channel.try_acquire_up_to(extra);
            max = 1 + extra as usize;
            channel_credit = Some(channel.clone());
        }
        let deliveries = consumer.next_batch(max).await;
        if let Some((own, channel)) = &limits {
            let unused = max.saturating_sub(deliveries.len().max(1)) as u32;
            own.release(unused);
            channel.release(unused);
        }
        if deliveries.is_empty() {
            let _ = tx
                .tx
                .send(ConsumerEvent::Ended {
                    consumer: id,
                    channel_credit,
                })
                .await;
            break;
        }
        // Waits while the connection task has too many bytes to encode (a
        // client that does not read); the semaphore is never closed, and
        // whatever the connection task leaves unhandled when it ends is
        // dropped with its queue, which releases the bytes.
        let share = deliveries
            .iter()
            .map(|d| d.message.body.len())
            .sum::<usize>()
            .clamp(1, DELIVERY_QUEUE_BYTES_MAX) as u32;
        let Ok(bytes) = tx.bytes.clone().acquire_many_owned(share).await else {
            break;
        };
        let ev = ConsumerEvent::Deliveries {
            consumer: id,
            queue: queue.clone(),
            deliveries,
            channel_credit,
            bytes,
        };
        if let Err(mpsc::error::SendError(ev)) = tx.tx.send(ev).await {
            // The connection is gone: put them back.
            if let ConsumerEvent::Deliveries { deliveries, .. } = ev
                && !no_ack
            {
                for d in deliveries {
                    let _ = queue.reject(d.id, true);
                }
            }
            break;
        }
    }
}
