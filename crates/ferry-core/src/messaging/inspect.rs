//! Read-only views of the messaging model for operators (the admin HTTP
//! API): vhosts, every queue with its settings and counts, bindings, and a
//! browse of a queue's messages that changes no delivery state.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::queue::HeldState;
use super::routing::Dest;
use super::{
    Arguments, ExchangeKind, Message, Messaging, MessagingError, Queue, QueueCounts, QueueType,
};

/// An exchange kind's name as RabbitMQ shows it (`x-delayed-message` for
/// every delayed kind; its routing is the `x-delayed-type` argument).
pub fn exchange_type_name(kind: ExchangeKind) -> &'static str {
    super::args::kind_name(kind)
}

/// A queue's settings and counts, for listings.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDetails {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<super::ConnectionId>,
    pub queue_type: QueueType,
    pub arguments: Arguments,
    pub counts: QueueCounts,
    pub consumers: u32,
    /// Ready, delayed and unacknowledged messages.
    pub unsettled: u64,
    pub disk_bytes: u64,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
}

/// One binding: `source` exchange → `destination` queue or exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingInfo {
    pub source: String,
    pub destination: String,
    /// `"queue"` or `"exchange"`, as RabbitMQ names them.
    pub destination_type: &'static str,
    pub routing_key: String,
    pub arguments: Arguments,
}

/// Where a browsed message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeekState {
    Ready,
    InFlight,
    Delayed,
}

impl PeekState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeekState::Ready => "ready",
            PeekState::InFlight => "in_flight",
            PeekState::Delayed => "delayed",
        }
    }
}

/// A message seen by [`Queue::peek`].
#[derive(Debug, Clone, PartialEq)]
pub struct PeekedMessage {
    /// The queue's id for it (its offset in the queue's log).
    pub id: u64,
    pub state: PeekState,
    /// Deliveries so far (0 if never delivered).
    pub delivery_count: u32,
    pub message: Message,
}

impl Messaging {
    /// Every vhost, sorted.
    pub fn vhosts(&self) -> Vec<String> {
        self.shared.vhost_names()
    }

    /// Every queue of a vhost, exclusive ones included, sorted by name.
    pub fn queues(&self, vhost: &str) -> Vec<Arc<Queue>> {
        self.shared.queues_of(vhost)
    }

    /// Every binding of a vhost, sorted by source exchange.
    pub fn bindings(&self, vhost: &str) -> Vec<BindingInfo> {
        self.shared
            .bindings_of(vhost)
            .into_iter()
            .map(|(source, b)| {
                let (destination, destination_type) = match b.dest {
                    Dest::Queue(q) => (q, "queue"),
                    Dest::Exchange(x) => (x, "exchange"),
                };
                BindingInfo {
                    source,
                    destination,
                    destination_type,
                    routing_key: b.key,
                    arguments: b.args,
                }
            })
            .collect()
    }
}

/// Counters of a queue since the broker started (`Queue::totals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueTotals {
    /// Deliveries acknowledged (AMQP ack, SQS DeleteMessage).
    pub acked: u64,
    /// Deliveries of messages delivered before.
    pub redelivered: u64,
    /// Messages handed to the dead-letter exchange.
    pub dead_lettered: u64,
}

impl Queue {
    pub fn vhost(&self) -> &str {
        &self.inner.cfg.vhost
    }

    /// What the queue did with its messages since the broker started.
    pub fn totals(&self) -> QueueTotals {
        let t = &self.inner.totals;
        QueueTotals {
            acked: t.acked.load(Ordering::Relaxed),
            redelivered: t.redelivered.load(Ordering::Relaxed),
            dead_lettered: t.dead_lettered.load(Ordering::Relaxed),
        }
    }

    /// Settings and counts.
    pub fn details(&self) -> QueueDetails {
        let cfg = &self.inner.cfg;
        QueueDetails {
            name: cfg.name.clone(),
            vhost: cfg.vhost.clone(),
            durable: cfg.durable,
            auto_delete: cfg.auto_delete,
            exclusive_owner: cfg.exclusive_owner,
            queue_type: cfg.args.queue_type(),
            arguments: cfg.arguments.clone(),
            counts: self.counts(),
            consumers: self.info().consumer_count,
            unsettled: self.unsettled(),
            disk_bytes: self.disk_bytes(),
            dead_letter_exchange: cfg.args.dead_letter_exchange.clone(),
            dead_letter_routing_key: cfg.args.dead_letter_routing_key.clone(),
        }
    }

    /// Up to `max` messages the queue holds, from id `from` on, in the order
    /// they were stored, without delivering them: nothing about them changes.
    pub fn peek(&self, from: u64, max: usize) -> Result<Vec<PeekedMessage>, MessagingError> {
        Ok(self
            .inner
            .peek(from, max)?
            .into_iter()
            .map(|(id, message, state, delivery_count)| PeekedMessage {
                id,
                state: match state {
                    HeldState::Ready => PeekState::Ready,
                    HeldState::InFlight => PeekState::InFlight,
                    HeldState::Delayed => PeekState::Delayed,
                },
                delivery_count,
                message,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;

    use super::*;
    use crate::messaging::{ExchangeSpec, QueueSpec};
    use crate::{Broker, BrokerConfig};

    fn message(body: &str) -> Message {
        Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Bytes::new(),
            headers: vec![],
            body: Bytes::from(body.to_string()),
            priority: 0,
            ttl: None,
            persistent: true,
            published_ms: 0,
            deaths: vec![],
        }
    }

    #[test]
    fn peek_shows_states_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig::new(dir.path())).unwrap();
        let m = broker.messaging();
        let spec = QueueSpec {
            name: "q".into(),
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: vec![],
        };
        m.declare_queue("/", spec, false, 1).unwrap();
        for b in ["a", "b", "c", "d"] {
            m.publish("/", message(b)).unwrap();
        }
        let q = m.queue("/", "q", 1).unwrap();
        let first = q.get(false).unwrap().unwrap();
        let second = q.get(false).unwrap().unwrap();
        q.ack(second.id).unwrap();
        let before = q.counts();

        let seen = q.peek(0, 10).unwrap();
        let bodies: Vec<&[u8]> = seen.iter().map(|p| p.message.body.as_ref()).collect();
        assert_eq!(bodies, [b"a".as_ref(), b"c", b"d"]);
        assert_eq!(seen[0].state, PeekState::InFlight);
        assert_eq!(seen[0].id, first.id);
        assert_eq!(seen[0].delivery_count, 1);
        assert_eq!(seen[1].state, PeekState::Ready);
        assert_eq!(q.counts(), before);
        // Paging: from past the first, at most one.
        let page = q.peek(seen[0].id + 1, 1).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].message.body.as_ref(), b"c");
        // The next delivery is still the first ready message.
        assert_eq!(q.get(true).unwrap().unwrap().message.body.as_ref(), b"c");
        broker.shutdown();
    }

    #[test]
    fn listings_name_vhosts_queues_and_bindings() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig::new(dir.path())).unwrap();
        let m = broker.messaging();
        m.add_vhost("other");
        let x = ExchangeSpec {
            name: "x".into(),
            kind: ExchangeKind::Topic,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: vec![],
        };
        m.declare_exchange("/", x, false).unwrap();
        for name in ["b", "a"] {
            let spec = QueueSpec {
                name: name.into(),
                durable: false,
                exclusive_owner: Some(7),
                auto_delete: false,
                arguments: vec![],
            };
            m.declare_queue("/", spec, false, 7).unwrap();
        }
        m.bind_queue("/", "a", "x", "k.*", vec![], 7).unwrap();
        assert_eq!(m.vhosts(), ["/", "other"]);
        let names: Vec<String> = m.queues("/").iter().map(|q| q.name().to_string()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(m.queues("other").len(), 0);
        assert_eq!(m.queues("/")[0].details().exclusive_owner, Some(7));
        let b: Vec<_> = m
            .bindings("/")
            .into_iter()
            .filter(|b| b.source == "x")
            .collect();
        assert_eq!(b.len(), 1);
        assert_eq!(
            (b[0].destination.as_str(), b[0].destination_type),
            ("a", "queue")
        );
        assert_eq!(b[0].routing_key, "k.*");
        assert_eq!(exchange_type_name(ExchangeKind::Topic), "topic");
    }
}
