//! Ferry's AMQP 0-9-1 front end, in RabbitMQ's dialect: the wire protocol
//! over TCP, translated into `ferry_core::messaging` calls. Codecs come from
//! the `amq-protocol` crate; this crate holds connection state only
//! (negotiation, authentication, channels, content assembly, consumers'
//! prefetch, publisher confirms, transactions, direct reply-to).
//!
//! It must never hold messages beyond one in assembly per channel and what a
//! consumer's prefetch allows, and never reach into `ferry-log`.

mod auth;
mod connection;
mod content;
mod credit;
mod errors;
mod frame;
#[doc(hidden)]
pub mod fuzz;
mod props;
mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_core::access::AccessControl;
use ferry_core::alarm::ResourceAlarms;
use ferry_core::connection_limit::ConnectionLimit;
use ferry_core::messaging::Messaging;
use ferry_core::metrics::Metrics;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// AMQP 0-9-1's frame-min-size: no peer may propose a smaller frame_max.
pub use frame::FRAME_MIN_SIZE;

/// Settings of the AMQP listener (RabbitMQ's defaults where it has them).
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Largest frame the server accepts and proposes (RabbitMQ: 131072).
    pub frame_max: u32,
    /// Most channels per connection (RabbitMQ: 2047).
    pub channel_max: u16,
    /// Heartbeat interval proposed to clients, in seconds (RabbitMQ: 60).
    pub heartbeat_s: u16,
    /// Largest message body accepted, checked against the content header
    /// before any of the body is read (RabbitMQ's `max_message_size`,
    /// whose default was 128 MiB until 4.0).
    pub message_bytes_max: u64,
    /// How long a client has from connecting to connection.open (RabbitMQ's
    /// `handshake_timeout`: 10 s).
    pub handshake_timeout: Duration,
    /// How long the rest of a frame may take once its first byte arrived;
    /// past it the connection is closed. Heartbeats (if the client agreed to
    /// them) notice a silent client between frames; this notices one that
    /// stops in the middle of a frame, heartbeats or not.
    pub frame_timeout: Duration,
    /// Open connections on the listener; a connection accepted past this is
    /// closed before anything is read from it (RabbitMQ's `connection_max`,
    /// unlimited there by default).
    pub connections_max: usize,
    /// Unacknowledged deliveries one consumer may hold when its prefetch is
    /// 0 ("unlimited"); a prefetch a client sets is at most 65535 anyway.
    /// Past it the consumer gets nothing more until it acks, so a consumer
    /// that never acks cannot pull a whole queue's delivery state into
    /// memory.
    pub consumer_unacked_max: u32,
    /// Consumers one channel may hold, direct reply-to included (RabbitMQ's
    /// `consumer_max_per_channel`, unlimited there by default): each runs a
    /// task, so a client consuming in a loop would grow them without bound.
    pub consumers_per_channel_max: usize,
    /// Users, their passwords and vhost permissions (RabbitMQ's default:
    /// guest/guest on `/`, from loopback only).
    pub access: Arc<AccessControl>,
    /// The broker's traffic counters and connection registry
    /// (`Broker::metrics`), where connections are listed and counted.
    pub metrics: Arc<Metrics>,
}

/// RabbitMQ's default frame_max.
const FRAME_MAX_DEFAULT: u32 = 131_072;
/// RabbitMQ's `max_message_size` default until 4.0.
const MESSAGE_BYTES_MAX_DEFAULT: u64 = 128 * 1024 * 1024;

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            frame_max: FRAME_MAX_DEFAULT,
            channel_max: 2047,
            heartbeat_s: 60,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            connections_max: 10_000,
            consumer_unacked_max: u32::from(u16::MAX),
            consumers_per_channel_max: 1024,
            access: Arc::new(AccessControl::default()),
            metrics: Arc::default(),
        }
    }
}

/// A message sent through direct reply-to to the channel that consumes
/// `amq.rabbitmq.reply-to`.
#[derive(Debug)]
pub(crate) struct DirectReply {
    pub channel: u16,
    pub generation: u64,
    pub routing_key: String,
    pub properties: Bytes,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub(crate) struct ReplyTarget {
    pub tx: mpsc::Sender<DirectReply>,
    pub channel: u16,
    pub generation: u64,
}

/// State shared by every AMQP connection of the process.
#[derive(Debug)]
pub(crate) struct Shared {
    pub messaging: Arc<Messaging>,
    pub config: AmqpConfig,
    /// Reply addresses (`amq.rabbitmq.reply-to.<id>`) of channels consuming
    /// direct reply-to.
    pub replies: Mutex<HashMap<String, ReplyTarget>>,
    /// The broker's resource alarms: while one is on, connections that
    /// publish are blocked.
    pub alarm: watch::Receiver<ResourceAlarms>,
    next_connection: AtomicU64,
}

impl Shared {
    pub fn replies(&self) -> std::sync::MutexGuard<'_, HashMap<String, ReplyTarget>> {
        self.replies.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

/// Accepts AMQP clients on `listener` until the returned future is dropped.
pub async fn serve(listener: TcpListener, messaging: Arc<Messaging>, config: AmqpConfig) {
    // No alarm source: a sender that is never written keeps every
    // connection unblocked.
    let (_alarm_tx, alarm) = watch::channel(ResourceAlarms::default());
    serve_with_alarm(listener, messaging, config, alarm).await
}

/// Like `serve`, following the broker's resource alarms
/// (`Broker::alarms`), as RabbitMQ does: while an alarm is on, a connection
/// that publishes is blocked — the server stops reading from it (consumers
/// on other connections keep draining) and, if the client announced the
/// `connection.blocked` capability, sends connection.blocked with the
/// reason (`low on disk`, `low on memory`); connection.unblocked follows
/// when every alarm has cleared.
pub async fn serve_with_alarm(
    listener: TcpListener,
    messaging: Arc<Messaging>,
    config: AmqpConfig,
    alarm: watch::Receiver<ResourceAlarms>,
) {
    let limit = ConnectionLimit::new("amqp", config.connections_max);
    let shared = Arc::new(Shared {
        messaging,
        config,
        replies: Mutex::new(HashMap::new()),
        alarm,
        next_connection: AtomicU64::new(1),
    });
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let Some(slot) = limit.admit() else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    connection::run(socket, peer, shared).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning.
                tracing::warn!(error = %e, "amqp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
