//! Client connections of every protocol (`/api/connections`), read from
//! the broker's registry (`ferry_core::connections`), and closing one.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use ferry_core::connections::{Channel, Connection};
use serde_json::{Value, json};

use crate::topics::no_content;
use crate::{Admin, ApiError, Result, ok};

/// Why a connection was closed when the operator gives no `X-Reason`
/// (RabbitMQ's management API takes the same header).
const DEFAULT_REASON: &str = "Closed via the admin API";
/// Longest reason passed on: AMQP's reply text is a short string (255
/// bytes, `CONNECTION_FORCED - ` included).
const REASON_BYTES_MAX: usize = 200;

pub(crate) fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn summary(c: &Connection) -> Value {
    let identity = c.identity();
    let traffic = c.traffic();
    json!({
        "id": c.id,
        "protocol": c.protocol,
        "client_address": c.peer.to_string(),
        "listener_address": c.local.to_string(),
        "user": identity.user,
        "vhost": identity.vhost,
        "client": identity.client,
        "connected_at": millis_since_epoch(c.connected_at),
        "bytes_in": traffic.bytes_in,
        "bytes_out": traffic.bytes_out,
        "requests_in": traffic.requests_in,
        "requests_out": traffic.requests_out,
        "channels": c.channels().len(),
    })
}

fn channel_json(ch: &Channel) -> Value {
    json!({
        "id": ch.id,
        "prefetch": ch.prefetch,
        "consumers": ch.consumers,
        "confirm": ch.confirm,
        "transactional": ch.transactional,
    })
}

fn connection_or_404(admin: &Admin, id: &str) -> Result<Arc<Connection>> {
    id.parse::<u64>()
        .ok()
        .and_then(|id| admin.broker.metrics().connections().get(id))
        .ok_or_else(|| ApiError::not_found(format!("no open connection '{id}'")))
}

pub async fn list(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let all: Vec<Value> = admin
        .broker
        .metrics()
        .connections()
        .list()
        .iter()
        .map(|c| summary(c))
        .collect();
    ok(json!({ "connections": all }))
}

pub async fn get(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Result<Response> {
    let c = connection_or_404(&admin, &id)?;
    let mut body = summary(&c);
    body["channel_details"] = c.channels().iter().map(channel_json).collect();
    ok(body)
}

/// Asks the front end to close the connection; it is gone from the list
/// once the front end has closed it (at once for Kafka and SQS, after
/// close-ok or a short wait for AMQP).
pub async fn close(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let c = connection_or_404(&admin, &id)?;
    let mut reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .filter(|r| !r.is_empty())
        .unwrap_or(DEFAULT_REASON)
        .to_string();
    if reason.len() > REASON_BYTES_MAX {
        let mut cut = REASON_BYTES_MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    tracing::info!(connection = c.id, protocol = c.protocol, peer = %c.peer, %reason, "closing a connection on an operator's request");
    c.close(reason);
    Ok(no_content())
}
