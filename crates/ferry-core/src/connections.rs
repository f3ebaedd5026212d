//! The client connections open now on every listener (Kafka, AMQP, SQS),
//! for operators: who is connected, from where, as whom, how much traffic
//! each has carried, an AMQP connection's channels — and a way to close one.
//!
//! Each front end registers a connection when it accepts it and holds the
//! returned [`Registration`] for as long as it serves it; dropping the
//! registration removes the connection. The traffic counters are plain
//! atomics the front end adds to as it reads and writes, so keeping them
//! costs a few uncontended additions per request. Closing is a request: the
//! admin API calls [`Connection::close`], and the front end, which waits on
//! [`Connection::close_requested`] beside its socket, ends the connection
//! the way its protocol does (AMQP: connection.close with 320
//! CONNECTION_FORCED; Kafka and SQS: the socket is closed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

/// The protocols whose connections are registered.
pub const PROTOCOLS: [&str; 3] = ["kafka", "amqp", "sqs"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

/// Every open client connection of a broker.
#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    gauge: Family<ProtocolLabels, Gauge>,
    opened: Family<ProtocolLabels, Counter>,
}

/// One open connection. The fixed facts are public fields; what is learnt
/// later (user, vhost, client name, channels) and the counters have methods.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    /// `kafka`, `amqp` or `sqs`.
    pub protocol: &'static str,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's address the client connected to.
    pub local: SocketAddr,
    pub connected_at: SystemTime,
    identity: Mutex<Identity>,
    channels: Mutex<BTreeMap<u16, Channel>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    requests_in: AtomicU64,
    requests_out: AtomicU64,
    close_reason: Mutex<Option<String>>,
    close: Notify,
}

/// Who a connection is, once its protocol has said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub user: Option<String>,
    pub vhost: Option<String>,
    /// The client's own name for itself: Kafka's client id, AMQP's
    /// `connection_name` (else `product`) client property.
    pub client: Option<String>,
}

/// An AMQP channel as operators see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Channel {
    pub id: u16,
    /// basic.qos prefetch count (0: no limit).
    pub prefetch: u32,
    pub consumers: usize,
    /// In confirm mode (confirm.select).
    pub confirm: bool,
    /// In a transaction (tx.select).
    pub transactional: bool,
}

/// Traffic a connection carried. What a "request" is depends on the
/// protocol: Kafka requests and responses, AMQP frames, SQS HTTP requests
/// and responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub requests_in: u64,
    pub requests_out: u64,
}

/// A connection's place in the registry, held by the task serving it.
#[derive(Debug)]
pub struct Registration {
    connection: Arc<Connection>,
    registry: Arc<Connections>,
}

impl Connections {
    /// Registers a connection of `protocol` just accepted from `peer` on
    /// `local`; it is listed until the registration is dropped.
    pub fn register(
        self: &Arc<Self>,
        protocol: &'static str,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Registration {
        // Ids start at 1 and are never reused while the broker runs.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let connection = Arc::new(Connection {
            id,
            protocol,
            peer,
            local,
            connected_at: SystemTime::now(),
            identity: Mutex::default(),
            channels: Mutex::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            requests_in: AtomicU64::new(0),
            requests_out: AtomicU64::new(0),
            close_reason: Mutex::new(None),
            close: Notify::new(),
        });
        lock(&self.open).insert(id, connection.clone());
        let labels = ProtocolLabels { protocol };
        self.opened.get_or_create(&labels).inc();
        self.gauge.get_or_create(&labels).inc();
        Registration {
            connection,
            registry: self.clone(),
        }
    }

    /// Every open connection, oldest first.
    pub fn list(&self) -> Vec<Arc<Connection>> {
        lock(&self.open).values().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<Connection>> {
        lock(&self.open).get(&id).cloned()
    }

    /// Open connections of every protocol.
    pub fn count(&self) -> usize {
        lock(&self.open).len()
    }

    /// Adds `ferry_connections` and `ferry_connections_opened_total` to a
    /// scrape's registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        // Every protocol appears, at 0 before its first connection, so a
        // dashboard shows a line rather than "no data".
        for protocol in PROTOCOLS {
            let labels = ProtocolLabels { protocol };
            drop(self.gauge.get_or_create(&labels));
            drop(self.opened.get_or_create(&labels));
        }
        registry.register(
            "ferry_connections",
            "Client connections open now, by protocol",
            self.gauge.clone(),
        );
        registry.register(
            "ferry_connections_opened",
            "Client connections accepted, by protocol",
            self.opened.clone(),
        );
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let c = &self.connection;
        lock(&self.registry.open).remove(&c.id);
        let labels = ProtocolLabels {
            protocol: c.protocol,
        };
        self.registry.gauge.get_or_create(&labels).dec();
    }
}

impl Registration {
    /// The registered connection, to hand to what outlives a borrow of the
    /// registration (an HTTP service per connection).
    pub fn connection(&self) -> Arc<Connection> {
        self.connection.clone()
    }
}

impl std::ops::Deref for Registration {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl Connection {
    /// Bytes and requests received from the client.
    pub fn received(&self, bytes: u64, requests: u64) {
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        self.requests_in.fetch_add(requests, Ordering::Relaxed);
    }

    /// Bytes and requests (responses, frames) sent to the client.
    pub fn sent(&self, bytes: u64, requests: u64) {
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        self.requests_out.fetch_add(requests, Ordering::Relaxed);
    }

    pub fn traffic(&self) -> Traffic {
        Traffic {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            requests_in: self.requests_in.load(Ordering::Relaxed),
            requests_out: self.requests_out.load(Ordering::Relaxed),
        }
    }

    pub fn identity(&self) -> Identity {
        lock(&self.identity).clone()
    }

    /// Changes what is known of who the connection is.
    pub fn update_identity(&self, f: impl FnOnce(&mut Identity)) {
        f(&mut lock(&self.identity));
    }

    /// Whether the client's name is known yet (Kafka sends it with every
    /// request; it is recorded once).
    pub fn has_client(&self) -> bool {
        lock(&self.identity).client.is_some()
    }

    /// An AMQP channel opened or changed.
    pub fn set_channel(&self, channel: Channel) {
        lock(&self.channels).insert(channel.id, channel);
    }

    /// An AMQP channel closed.
    pub fn remove_channel(&self, id: u16) {
        lock(&self.channels).remove(&id);
    }

    /// Open AMQP channels, by id.
    pub fn channels(&self) -> Vec<Channel> {
        lock(&self.channels).values().cloned().collect()
    }

    /// Asks the front end serving this connection to close it, saying
    /// `reason` where its protocol can.
    pub fn close(&self, reason: String) {
        *lock(&self.close_reason) = Some(reason);
        // notify_one keeps the wake-up if the front end is not waiting at
        // this instant (it is handling a request).
        self.close.notify_one();
    }

    /// Resolves, with the reason, once [`Connection::close`] was called.
    pub async fn close_requested(&self) -> String {
        loop {
            self.close.notified().await;
            if let Some(reason) = lock(&self.close_reason).clone() {
                return reason;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn registered_until_dropped_with_counters_and_gauges() {
        let registry = Arc::new(Connections::default());
        let a = registry.register("kafka", addr(40000), addr(9092));
        let b = registry.register("amqp", addr(40001), addr(5672));
        assert_ne!(a.id, b.id);
        a.received(100, 2);
        a.sent(40, 1);
        assert_eq!(
            registry.get(a.id).unwrap().traffic(),
            Traffic {
                bytes_in: 100,
                bytes_out: 40,
                requests_in: 2,
                requests_out: 1
            }
        );
        b.set_channel(Channel {
            id: 1,
            prefetch: 10,
            ..Channel::default()
        });
        assert_eq!(registry.get(b.id).unwrap().channels().len(), 1);
        b.remove_channel(1);
        assert!(b.channels().is_empty());
        assert_eq!(registry.count(), 2);
        drop(a);
        assert_eq!(registry.count(), 1);
        assert_eq!(registry.list()[0].protocol, "amqp");

        let mut scrape = Registry::default();
        registry.register_metrics(&mut scrape);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &scrape).unwrap();
        assert!(
            text.contains(r#"ferry_connections{protocol="kafka"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_connections{protocol="amqp"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_connections{protocol="sqs"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"ferry_connections_opened_total{protocol="kafka"} 1"#));
    }

    #[tokio::test]
    async fn a_close_asked_before_anyone_waits_is_not_lost() {
        let registry = Arc::new(Connections::default());
        let c = registry.register("sqs", addr(40002), addr(9324));
        registry.get(c.id).unwrap().close("maintenance".into());
        assert_eq!(c.close_requested().await, "maintenance");
    }
}
