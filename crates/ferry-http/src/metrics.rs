//! `GET /metrics`: the broker's counters (`ferry_core::metrics`, bumped by
//! the front ends) and gauges read from the broker's state at scrape time
//! (offsets, sizes, group lag, queue depths, disk, memory), in the
//! OpenMetrics text format, which Prometheus reads.
//!
//! Also the HTTP listener's own request counting, and the message rates of
//! the overview (sampled from the counters).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use ferry_core::alarm;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{Admin, ApiError, Result};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupPartitionLabels {
    group: String,
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    vhost: String,
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueStateLabels {
    vhost: String,
    queue: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

fn gauge_family<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64, AtomicI64>::default();
    g.set(value);
    registry.register(name, help, g);
}

type AtomicI64 = std::sync::atomic::AtomicI64;

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Every metric, as text. Reads the broker's state: call it off the async
/// threads if that state is large.
pub fn render(admin: &Admin) -> std::result::Result<String, std::fmt::Error> {
    let broker = &admin.broker;
    let mut registry = Registry::default();
    broker.metrics().register(&mut registry);

    let start = gauge_family::<PartitionLabels>(
        &mut registry,
        "ferry_partition_log_start_offset",
        "First offset still stored in a topic partition",
    );
    let hw = gauge_family::<PartitionLabels>(
        &mut registry,
        "ferry_partition_high_watermark",
        "Offset after the last record consumers can read in a topic partition",
    );
    let end = gauge_family::<PartitionLabels>(
        &mut registry,
        "ferry_partition_log_end_offset",
        "Offset the next record appended to a topic partition gets",
    );
    let size = gauge_family::<PartitionLabels>(
        &mut registry,
        "ferry_partition_size_bytes",
        "Bytes of a topic partition's segments on disk",
    );
    for topic in broker.topics() {
        for (partition, log) in topic.partitions() {
            let labels = PartitionLabels {
                topic: topic.name.clone(),
                partition,
            };
            start.get_or_create(&labels).set(log.log_start_offset());
            hw.get_or_create(&labels).set(log.high_watermark());
            end.get_or_create(&labels).set(log.log_end_offset());
            size.get_or_create(&labels).set(clamp_i64(log.size_bytes()));
        }
    }

    let lag = gauge_family::<GroupPartitionLabels>(
        &mut registry,
        "ferry_group_lag",
        "Records between a consumer group's committed offset and the high watermark",
    );
    let members = gauge_family::<GroupLabels>(
        &mut registry,
        "ferry_group_members",
        "Members of a consumer group",
    );
    let groups = broker.groups();
    for g in groups.list_groups() {
        members
            .get_or_create(&GroupLabels {
                group: g.group_id.clone(),
            })
            .set(clamp_i64(groups.describe(&g.group_id).members.len() as u64));
        for ((topic, partition), committed) in groups.fetch_offsets(&g.group_id, None) {
            let (Some(c), Ok(log)) = (committed, broker.partition(&topic, partition)) else {
                continue;
            };
            lag.get_or_create(&GroupPartitionLabels {
                group: g.group_id.clone(),
                topic,
                partition,
            })
            .set((log.high_watermark() - c.offset).max(0));
        }
    }

    let depth = gauge_family::<QueueStateLabels>(
        &mut registry,
        "ferry_queue_messages",
        "Messages a queue holds, by state (ready, in_flight, delayed)",
    );
    let consumers = gauge_family::<QueueLabels>(
        &mut registry,
        "ferry_queue_consumers",
        "Consumers of a queue",
    );
    let queue_bytes = gauge_family::<QueueLabels>(
        &mut registry,
        "ferry_queue_disk_bytes",
        "Bytes of a queue's log on disk",
    );
    // Counters kept by each queue, encoded as they stand: a queue deleted
    // and declared again starts from 0, as a restarted process would.
    let totals = [
        (
            "ferry_queue_acked",
            "Deliveries acknowledged (AMQP ack, SQS DeleteMessage)",
        ),
        (
            "ferry_queue_redelivered",
            "Deliveries of messages delivered before",
        ),
        (
            "ferry_queue_dead_lettered",
            "Messages handed to the dead-letter exchange",
        ),
    ]
    .map(|(name, help)| {
        let family = Family::<QueueLabels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    });
    let messaging = broker.messaging();
    for vhost in messaging.vhosts() {
        for q in messaging.queues(&vhost) {
            let d = q.details();
            for (state, n) in [
                ("ready", d.counts.ready),
                ("in_flight", d.counts.in_flight),
                ("delayed", d.counts.delayed),
            ] {
                depth
                    .get_or_create(&QueueStateLabels {
                        vhost: vhost.clone(),
                        queue: d.name.clone(),
                        state,
                    })
                    .set(clamp_i64(n));
            }
            let labels = QueueLabels {
                vhost: vhost.clone(),
                queue: d.name.clone(),
            };
            consumers.get_or_create(&labels).set(i64::from(d.consumers));
            let t = q.totals();
            for (family, n) in totals.iter().zip([t.acked, t.redelivered, t.dead_lettered]) {
                family.get_or_create(&labels).inc_by(n);
            }
            queue_bytes
                .get_or_create(&labels)
                .set(clamp_i64(d.disk_bytes));
        }
    }

    let data_dir = &broker.config().data_dir;
    if let Ok(free) = alarm::disk_free(data_dir) {
        gauge(
            &mut registry,
            "ferry_disk_free_bytes",
            "Free bytes on the data directory's filesystem",
            clamp_i64(free),
        );
    }
    if let Some(rss) = alarm::process_rss() {
        gauge(
            &mut registry,
            "ferry_process_resident_memory_bytes",
            "Resident memory of the broker process",
            clamp_i64(rss),
        );
    }
    gauge(
        &mut registry,
        "ferry_uptime_seconds",
        "Seconds since the broker started",
        clamp_i64(admin.started.elapsed().as_secs()),
    );
    let alarms = *broker.alarms().borrow();
    let alarm_family = gauge_family::<ResourceLabels>(
        &mut registry,
        "ferry_alarm",
        "1 while a resource alarm blocks publishers (disk, memory)",
    );
    alarm_family
        .get_or_create(&ResourceLabels { resource: "disk" })
        .set(i64::from(alarms.disk));
    alarm_family
        .get_or_create(&ResourceLabels { resource: "memory" })
        .set(i64::from(alarms.memory));

    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

pub async fn get(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let text = tokio::task::spawn_blocking(move || render(&admin))
        .await
        .map_err(crate::error::join_error)?
        .map_err(|e| ApiError::internal(format!("cannot encode the metrics: {e}")))?;
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    Ok(response)
}

/// The name an HTTP request is counted under: its route's first two path
/// segments when they are one of ours, so a client cannot make up label
/// values (`/api/topics/x` counts as `/api/topics`).
fn route_name(path: &str) -> &'static str {
    const ROUTES: [&str; 11] = [
        "/api/overview",
        "/api/openapi.json",
        "/api/topics",
        "/api/groups",
        "/api/vhosts",
        "/api/exchanges",
        "/api/queues",
        "/api/bindings",
        "/metrics",
        "/rabbitmq/api",
        "/",
    ];
    ROUTES
        .into_iter()
        .find(|r| {
            path == *r
                || (r.len() > 1
                    && path.starts_with(r)
                    && path.as_bytes().get(r.len()) == Some(&b'/'))
        })
        .unwrap_or("other")
}

/// Middleware: counts every request of the HTTP listener and its latency.
pub async fn count_requests(
    State(admin): State<Arc<Admin>>,
    request: Request,
    next: Next,
) -> Response {
    let name = format!("{} {}", request.method(), route_name(request.uri().path()));
    let started = Instant::now();
    let response = next.run(request).await;
    admin
        .broker
        .metrics()
        .request("http", name, started.elapsed());
    response
}

/// Message rates for the overview: records in and out per second over the
/// last sampling interval.
#[derive(Debug, Default)]
pub struct Rates {
    last: Mutex<Option<(Instant, u64, u64)>>,
    per_second: Mutex<(f64, f64)>,
}

/// How often the rates are sampled.
pub const RATE_INTERVAL: Duration = Duration::from_secs(5);

impl Rates {
    /// Takes a sample of the totals and updates the rates.
    pub fn sample(&self, totals: (u64, u64), now: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, i, o)) = *last {
            let dt = now.duration_since(at).as_secs_f64();
            if dt > 0.0 {
                *self.per_second.lock().unwrap_or_else(|e| e.into_inner()) = (
                    totals.0.saturating_sub(i) as f64 / dt,
                    totals.1.saturating_sub(o) as f64 / dt,
                );
            }
        }
        *last = Some((now, totals.0, totals.1));
    }

    /// (in, out) per second.
    pub fn current(&self) -> (f64, f64) {
        *self.per_second.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Samples the rates until the task is dropped.
pub async fn run_rates(admin: Arc<Admin>) {
    let mut tick = tokio::time::interval(RATE_INTERVAL);
    loop {
        tick.tick().await;
        admin
            .rates
            .sample(admin.broker.metrics().record_totals(), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_named_without_client_strings() {
        assert_eq!(route_name("/api/topics"), "/api/topics");
        assert_eq!(
            route_name("/api/topics/orders/partitions/0/records"),
            "/api/topics"
        );
        assert_eq!(route_name("/api/topicsX"), "other");
        assert_eq!(route_name("/metrics"), "/metrics");
        assert_eq!(route_name("/whatever/else"), "other");
        assert_eq!(route_name("/"), "/");
    }

    #[test]
    fn rates_are_deltas_over_time() {
        let r = Rates::default();
        let t = Instant::now();
        r.sample((100, 0), t);
        assert_eq!(r.current(), (0.0, 0.0));
        r.sample((1100, 50), t + Duration::from_secs(5));
        assert_eq!(r.current(), (200.0, 10.0));
    }
}
