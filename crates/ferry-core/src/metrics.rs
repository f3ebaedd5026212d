//! Counters the front ends bump as traffic passes (records and bytes in and
//! out per partition, requests and their latency per protocol, open
//! connections), for `/metrics` and the admin API's message rates.
//!
//! Gauges that can be read from the broker's state when asked (offsets,
//! sizes, lag, queue depths, disk, memory) are not kept here: the HTTP front
//! end reads them at scrape time, so they can never drift from the truth.
//!
//! Nothing here knows a wire format; the `prometheus-client` types only hold
//! the numbers and encode them.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::connections::Connections;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    /// Borrowed where the name is a constant (AMQP methods): no allocation
    /// per request on the hot path.
    request: Cow<'static, str>,
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Request latency buckets: 50 µs to about 13 s, ×4 apart.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
}

/// The request counters of one connection. `Metrics::request` finds its
/// counter and histogram by hashing the labels under the families' lock;
/// an AMQP connection answers a method per message, of a handful of kinds,
/// so it keeps the handles of the kinds it has seen (the same shared
/// series: a scrape sees no difference).
#[derive(Debug)]
pub struct RequestMeter {
    protocol: &'static str,
    requests: Family<RequestLabels, Counter>,
    request_seconds: HistogramFamily,
    seen: Vec<(&'static str, Counter, Histogram)>,
}

impl RequestMeter {
    /// One request named `request` answered after `elapsed`.
    pub fn record(&mut self, request: &'static str, elapsed: Duration) {
        let at = match self.seen.iter().position(|(name, ..)| *name == request) {
            Some(at) => at,
            None => {
                let labels = RequestLabels {
                    protocol: self.protocol,
                    request: Cow::Borrowed(request),
                };
                let counter = self.requests.get_or_create(&labels).clone();
                let histogram = self.request_seconds.get_or_create(&labels).clone();
                self.seen.push((request, counter, histogram));
                self.seen.len() - 1
            }
        };
        let (_, counter, histogram) = &self.seen[at];
        counter.inc();
        histogram.observe(elapsed.as_secs_f64());
    }
}

/// Traffic counters of one broker.
#[derive(Debug)]
pub struct Metrics {
    records_in: Family<PartitionLabels, Counter>,
    bytes_in: Family<PartitionLabels, Counter>,
    records_out: Family<PartitionLabels, Counter>,
    bytes_out: Family<PartitionLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_seconds: HistogramFamily,
    /// The open connections: every front end reaches `Metrics`, so the
    /// registry lives here.
    connections: Arc<Connections>,
    /// Group-commit fsyncs of every log (`ferry_log::sync_observer`).
    fsync_seconds: Histogram,
    fsync_records: Histogram,
    /// Sums over every partition, for message rates without walking the
    /// families.
    records_in_total: AtomicU64,
    records_out_total: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            records_in: Family::default(),
            bytes_in: Family::default(),
            records_out: Family::default(),
            bytes_out: Family::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            connections: Arc::default(),
            fsync_seconds: latency_histogram(),
            // 1 to about 1 million records per fsync, ×4 apart.
            fsync_records: Histogram::new(exponential_buckets(1.0, 4.0, 11)),
            records_in_total: AtomicU64::new(0),
            records_out_total: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    fn partition(topic: &str, partition: i32) -> PartitionLabels {
        PartitionLabels {
            topic: topic.to_string(),
            partition,
        }
    }

    /// Records appended to a topic partition by a client.
    pub fn records_in(&self, topic: &str, partition: i32, records: u64, bytes: u64) {
        let labels = Self::partition(topic, partition);
        self.records_in.get_or_create(&labels).inc_by(records);
        self.bytes_in.get_or_create(&labels).inc_by(bytes);
        self.records_in_total.fetch_add(records, Ordering::Relaxed);
    }

    /// Records sent to a client reading a topic partition.
    pub fn records_out(&self, topic: &str, partition: i32, records: u64, bytes: u64) {
        let labels = Self::partition(topic, partition);
        self.records_out.get_or_create(&labels).inc_by(records);
        self.bytes_out.get_or_create(&labels).inc_by(bytes);
        self.records_out_total.fetch_add(records, Ordering::Relaxed);
    }

    /// One request of `protocol` (e.g. the Kafka API name) answered after
    /// `elapsed`.
    pub fn request(
        &self,
        protocol: &'static str,
        request: impl Into<Cow<'static, str>>,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            protocol,
            request: request.into(),
        };
        self.requests.get_or_create(&labels).inc();
        self.request_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// A meter for one connection's requests of `protocol` whose names are
    /// constants: it keeps the handles it has looked up.
    pub fn request_meter(&self, protocol: &'static str) -> RequestMeter {
        RequestMeter {
            protocol,
            requests: self.requests.clone(),
            request_seconds: self.request_seconds.clone(),
            seen: Vec::new(),
        }
    }

    /// A group-commit fsync took `elapsed` and made `records` durable.
    pub fn fsync(&self, elapsed: Duration, records: u64) {
        self.fsync_seconds.observe(elapsed.as_secs_f64());
        self.fsync_records.observe(records as f64);
    }

    /// The registry of open client connections.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Records in and out since the broker started, over every partition.
    pub fn record_totals(&self) -> (u64, u64) {
        (
            self.records_in_total.load(Ordering::Relaxed),
            self.records_out_total.load(Ordering::Relaxed),
        )
    }

    /// Adds every counter to `registry` (a scrape's registry: the families
    /// are shared, so their values are the live ones).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ferry_partition_records_in",
            "Records appended to a topic partition by clients",
            self.records_in.clone(),
        );
        registry.register(
            "ferry_partition_bytes_in",
            "Bytes of record batches appended to a topic partition by clients",
            self.bytes_in.clone(),
        );
        registry.register(
            "ferry_partition_records_out",
            "Records sent to clients reading a topic partition",
            self.records_out.clone(),
        );
        registry.register(
            "ferry_partition_bytes_out",
            "Bytes of record batches sent to clients reading a topic partition",
            self.bytes_out.clone(),
        );
        registry.register(
            "ferry_requests",
            "Requests answered, by protocol and request type",
            self.requests.clone(),
        );
        registry.register(
            "ferry_request_duration_seconds",
            "Time from a request's arrival to its answer, by protocol and request type",
            self.request_seconds.clone(),
        );
        self.connections.register_metrics(registry);
        registry.register(
            "ferry_fsync_duration_seconds",
            "Time of each group-commit fsync (topics under fsync.policy=always, persistent messages of durable queues)",
            self.fsync_seconds.clone(),
        );
        registry.register(
            "ferry_fsync_records",
            "Records made durable by each group-commit fsync: the appends that shared it",
            self.fsync_records.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn counters_add_up_and_encode() {
        let m = Metrics::default();
        m.records_in("orders", 0, 10, 500);
        m.records_in("orders", 0, 5, 200);
        m.records_out("orders", 0, 3, 100);
        m.request("kafka", "Produce", Duration::from_millis(2));
        let mut meter = m.request_meter("amqp");
        meter.record("basic.publish", Duration::from_millis(1));
        meter.record("basic.publish", Duration::from_millis(1));
        m.request("amqp", "basic.publish", Duration::from_millis(1));
        assert_eq!(m.record_totals(), (15, 3));
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"ferry_partition_records_in_total{topic="orders",partition="0"} 15"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_partition_bytes_in_total{topic="orders",partition="0"} 700"#)
        );
        assert!(text.contains(r#"ferry_requests_total{protocol="kafka",request="Produce"} 1"#));
        // A meter's counts land in the same series as `request`'s.
        assert!(
            text.contains(r#"ferry_requests_total{protocol="amqp",request="basic.publish"} 3"#),
            "{text}"
        );
        assert!(text.contains(
            r#"ferry_request_duration_seconds_count{protocol="amqp",request="basic.publish"} 3"#
        ));
    }
}
