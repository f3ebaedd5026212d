//! The subset of RabbitMQ's management HTTP API that monitoring tools read
//! (`/api/overview`, `/api/queues`, `/api/exchanges`, `/api/connections`,
//! with RabbitMQ's field names and bare JSON arrays), served under
//! `/rabbitmq`, so a tool pointed at `http://HOST:PORT/rabbitmq` as its
//! management URL finds them. Ferry's own API keeps the unprefixed paths.
//!
//! Only AMQP connections are listed there: that is what a RabbitMQ tool
//! expects to find (a user and vhost on each); `/api/connections` has all.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde_json::{Value, json};

use crate::connections::millis_since_epoch;
use crate::messaging::{arguments_json, queue_type_name};
use crate::{Admin, Result, ok};

/// What RabbitMQ's overview calls the node: one broker, one node.
fn node_name(admin: &Admin) -> String {
    format!("ferry@{}", admin.broker.cluster_id())
}

pub async fn overview(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let m = admin.broker.messaging();
    let mut exchanges = 0;
    let mut queues = 0;
    let (mut ready, mut unacked, mut total, mut consumers) = (0u64, 0u64, 0u64, 0u64);
    for v in m.vhosts() {
        exchanges += m.list(&v).0.len();
        for q in m.queues(&v) {
            let d = q.details();
            queues += 1;
            ready += d.counts.ready;
            unacked += d.counts.in_flight;
            total += d.unsettled;
            consumers += u64::from(d.consumers);
        }
    }
    let (in_rate, out_rate) = admin.rates.current();
    let (in_total, out_total) = admin.broker.metrics().record_totals();
    let node = node_name(&admin);
    let listeners: Vec<Value> = admin
        .config
        .listeners
        .iter()
        .map(|l| {
            json!({
                "node": node,
                "protocol": l.protocol,
                "ip_address": l.address.ip().to_string(),
                "port": l.address.port(),
            })
        })
        .collect();
    ok(json!({
        "management_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Ferry",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rabbitmq_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": node,
        "node": node,
        "listeners": listeners,
        "object_totals": {
            "exchanges": exchanges,
            "queues": queues,
            "consumers": consumers,
        },
        "queue_totals": {
            "messages": total,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        // Kafka records in and out: what Ferry counts today.
        "message_stats": {
            "publish": in_total,
            "publish_details": {"rate": in_rate},
            "deliver_get": out_total,
            "deliver_get_details": {"rate": out_rate},
        },
    }))
}

pub async fn queues(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let m = admin.broker.messaging();
    let node = node_name(&admin);
    let out: Vec<Value> = m
        .vhosts()
        .iter()
        .flat_map(|v| m.queues(v))
        .map(|q| {
            let d = q.details();
            json!({
                "name": d.name,
                "vhost": d.vhost,
                "type": queue_type_name(d.queue_type),
                "durable": d.durable,
                "auto_delete": d.auto_delete,
                "exclusive": d.exclusive_owner.is_some(),
                "arguments": arguments_json(&d.arguments),
                "node": node,
                "state": "running",
                "messages": d.unsettled,
                "messages_ready": d.counts.ready,
                "messages_unacknowledged": d.counts.in_flight,
                "consumers": d.consumers,
            })
        })
        .collect();
    ok(Value::Array(out))
}

pub async fn exchanges(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let m = admin.broker.messaging();
    let mut out = Vec::new();
    for v in m.vhosts() {
        for x in m.list(&v).0 {
            out.push(json!({
                "name": x.name,
                "vhost": v,
                "type": ferry_core::messaging::exchange_type_name(x.kind),
                "durable": x.durable,
                "auto_delete": x.auto_delete,
                "internal": x.internal,
                "arguments": arguments_json(&x.arguments),
            }));
        }
    }
    ok(Value::Array(out))
}

pub async fn connections(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let node = node_name(&admin);
    let out: Vec<Value> = admin
        .broker
        .metrics()
        .connections()
        .list()
        .iter()
        .filter(|c| c.protocol == "amqp")
        .map(|c| {
            let identity = c.identity();
            let traffic = c.traffic();
            json!({
                // RabbitMQ names a connection by its two ends.
                "name": format!("{} -> {}", c.peer, c.local),
                "node": node,
                "type": "network",
                "protocol": "AMQP 0-9-1",
                "state": "running",
                "user": identity.user.unwrap_or_default(),
                "vhost": identity.vhost.unwrap_or_default(),
                "client_properties": {"connection_name": identity.client},
                "host": c.local.ip().to_string(),
                "port": c.local.port(),
                "peer_host": c.peer.ip().to_string(),
                "peer_port": c.peer.port(),
                "connected_at": millis_since_epoch(c.connected_at),
                "channels": c.channels().len(),
                "recv_oct": traffic.bytes_in,
                "send_oct": traffic.bytes_out,
                "recv_cnt": traffic.requests_in,
                "send_cnt": traffic.requests_out,
            })
        })
        .collect();
    ok(Value::Array(out))
}
