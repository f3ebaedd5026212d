//! `GET /api/overview`: what this broker is, what it holds and what it uses.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use ferry_core::alarm;
use serde_json::json;

use crate::{Admin, Result, ok};

pub async fn get(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let broker = &admin.broker;
    let listeners: Vec<_> = admin
        .config
        .listeners
        .iter()
        .map(|l| json!({"protocol": l.protocol, "address": l.address.to_string()}))
        .collect();
    let topics = broker.topics();
    let logs: Vec<_> = topics
        .iter()
        .flat_map(|t| t.partitions())
        .map(|(_, log)| log)
        .collect();
    let messaging = broker.messaging();
    let queues: Vec<_> = messaging
        .vhosts()
        .iter()
        .flat_map(|v| messaging.queues(v))
        .collect();
    let topic_bytes: u64 = logs.iter().map(|l| l.size_bytes()).sum();
    let queue_bytes: u64 = queues.iter().map(|q| q.disk_bytes()).sum();
    let data_dir = broker.config().data_dir.clone();
    let disk_free = alarm::disk_free(&data_dir).ok();
    let alarms = *broker.alarms().borrow();
    let (in_per_second, out_per_second) = admin.rates.current();
    let (in_total, out_total) = broker.metrics().record_totals();
    ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "cluster_id": broker.cluster_id(),
        "uptime_ms": admin.started.elapsed().as_millis() as u64,
        "listeners": listeners,
        "counts": {
            "topics": topics.len(),
            "partitions": logs.len(),
            "records": logs.iter().map(|l| (l.high_watermark() - l.log_start_offset()).max(0)).sum::<i64>(),
            "groups": broker.groups().list_groups().len(),
            "vhosts": messaging.vhosts().len(),
            "queues": queues.len(),
            "queue_messages": queues.iter().map(|q| q.unsettled()).sum::<u64>(),
        },
        "message_rates": {
            "in_per_second": in_per_second,
            "out_per_second": out_per_second,
            "in_total": in_total,
            "out_total": out_total,
        },
        "connections": broker.metrics().connections().count(),
        "disk": {
            "data_dir": data_dir.display().to_string(),
            "topic_bytes": topic_bytes,
            "queue_bytes": queue_bytes,
            "free_bytes": disk_free,
            "free_limit_bytes": broker.config().resource_limits.disk_free_limit,
            "alarm": alarms.disk,
        },
        "memory": {
            "rss_bytes": alarm::process_rss(),
            "total_bytes": alarm::total_memory(),
            "alarm": alarms.memory,
        },
    }))
}
