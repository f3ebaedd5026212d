//! `/api/vhosts`, `/api/exchanges`, `/api/queues`, `/api/bindings`: the
//! routed-messaging model (AMQP and SQS queues alike), queue purge and
//! delete, and a browse of a queue's messages that delivers nothing.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::Response;
use ferry_core::messaging::{
    Arguments, ExchangeSpec, FieldValue, Messaging, Queue, QueueDetails, QueueType,
};
use serde_json::{Map, Value, json};

use crate::request::{bytes_json, int_param, json_object, opt_int, query};
use crate::{Admin, ApiError, Result, ok};

/// Most messages one redrive moves.
pub const REDRIVE_MESSAGES_MAX: i64 = 100_000;

/// Most messages one queue browse returns.
pub const PEEK_MESSAGES_MAX: i64 = 1000;
const PEEK_MESSAGES_DEFAULT: i64 = 20;

/// A field value as JSON; byte strings that are not UTF-8 become base64.
fn field_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::Int(i) => json!(i),
        FieldValue::Float(f) => json!(f),
        FieldValue::Str(b) | FieldValue::Other(b) => bytes_json(Some(b)).0,
        FieldValue::Table(t) => arguments_json(t),
        FieldValue::Array(a) => Value::Array(a.iter().map(field_json).collect()),
        FieldValue::Timestamp(t) => json!(t),
        FieldValue::Void => Value::Null,
    }
}

pub fn arguments_json(args: &Arguments) -> Value {
    let map: Map<String, Value> = args
        .iter()
        .map(|(k, v)| (k.clone(), field_json(v)))
        .collect();
    Value::Object(map)
}

pub fn queue_type_name(t: QueueType) -> &'static str {
    match t {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
        QueueType::Stream => "stream",
    }
}

fn exchange_json(vhost: &str, x: &ExchangeSpec) -> Value {
    json!({
        "vhost": vhost,
        "name": x.name,
        "type": ferry_core::messaging::exchange_type_name(x.kind),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": arguments_json(&x.arguments),
    })
}

pub fn queue_json(d: &QueueDetails) -> Value {
    json!({
        "vhost": d.vhost,
        "name": d.name,
        "type": queue_type_name(d.queue_type),
        "durable": d.durable,
        "auto_delete": d.auto_delete,
        "exclusive": d.exclusive_owner.is_some(),
        "arguments": arguments_json(&d.arguments),
        "ready": d.counts.ready,
        "in_flight": d.counts.in_flight,
        "delayed": d.counts.delayed,
        "messages": d.unsettled,
        "consumers": d.consumers,
        "disk_bytes": d.disk_bytes,
        "dead_letter_exchange": d.dead_letter_exchange,
        "dead_letter_routing_key": d.dead_letter_routing_key,
    })
}

fn vhost_or_404(m: &Messaging, vhost: &str) -> Result<()> {
    if m.vhost_exists(vhost) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "vhost '{vhost}' does not exist"
        )))
    }
}

/// Any queue of the vhost, exclusive ones included (an operator sees all).
fn queue_or_404(m: &Messaging, vhost: &str, name: &str) -> Result<Arc<Queue>> {
    vhost_or_404(m, vhost)?;
    m.queues(vhost)
        .into_iter()
        .find(|q| q.name() == name)
        .ok_or_else(|| ApiError::not_found(format!("no queue '{name}' in vhost '{vhost}'")))
}

pub async fn vhosts(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let m = admin.broker.messaging();
    let vhosts: Vec<Value> = m
        .vhosts()
        .into_iter()
        .map(|v| {
            let queues = m.queues(&v);
            json!({
                "name": v,
                "queues": queues.len(),
                "messages": queues.iter().map(|q| q.unsettled()).sum::<u64>(),
            })
        })
        .collect();
    ok(json!({ "vhosts": vhosts }))
}

pub async fn exchanges(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let m = admin.broker.messaging();
    let mut out = Vec::new();
    for v in m.vhosts() {
        let (exchanges, _) = m.list(&v);
        out.extend(exchanges.iter().map(|x| exchange_json(&v, x)));
    }
    ok(json!({ "exchanges": out }))
}

pub async fn exchange(
    State(admin): State<Arc<Admin>>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response> {
    let m = admin.broker.messaging();
    vhost_or_404(m, &vhost)?;
    let (exchanges, _) = m.list(&vhost);
    let x = exchanges
        .iter()
        .find(|x| x.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no exchange '{name}' in vhost '{vhost}'")))?;
    let mut out = exchange_json(&vhost, x);
    out["bindings"] = Value::Array(
        m.bindings(&vhost)
            .iter()
            .filter(|b| b.source == name)
            .map(|b| binding_json(&vhost, b))
            .collect(),
    );
    ok(out)
}

pub async fn queues(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let m = admin.broker.messaging();
    let out: Vec<Value> = m
        .vhosts()
        .iter()
        .flat_map(|v| m.queues(v))
        .map(|q| queue_json(&q.details()))
        .collect();
    ok(json!({ "queues": out }))
}

pub async fn queue(
    State(admin): State<Arc<Admin>>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response> {
    let m = admin.broker.messaging();
    let q = queue_or_404(m, &vhost, &name)?;
    let mut out = queue_json(&q.details());
    out["bindings"] = Value::Array(
        m.bindings(&vhost)
            .iter()
            .filter(|b| b.destination_type == "queue" && b.destination == name)
            .map(|b| binding_json(&vhost, b))
            .collect(),
    );
    ok(out)
}

pub async fn purge(
    State(admin): State<Arc<Admin>>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response> {
    let q = queue_or_404(admin.broker.messaging(), &vhost, &name)?;
    let purged = tokio::task::spawn_blocking(move || q.purge())
        .await
        .map_err(crate::error::join_error)??;
    ok(json!({ "purged": purged }))
}

pub async fn delete_queue(
    State(admin): State<Arc<Admin>>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response> {
    let m = admin.broker.messaging().clone();
    let q = queue_or_404(&m, &vhost, &name)?;
    // An exclusive queue is deleted as its own connection would delete it.
    let connection = q.details().exclusive_owner.unwrap_or(0);
    let deleted = tokio::task::spawn_blocking(move || {
        m.delete_queue(&vhost, &name, false, false, connection)
    })
    .await
    .map_err(crate::error::join_error)??;
    ok(json!({ "deleted_messages": deleted }))
}

/// `GET /api/queues/{vhost}/{name}/messages?from=&limit=`: the messages the
/// queue holds, oldest first, with their state; nothing is delivered.
pub async fn peek(
    State(admin): State<Arc<Admin>>,
    Path((vhost, name)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response> {
    let q = queue_or_404(admin.broker.messaging(), &vhost, &name)?;
    let params = query(&uri);
    let limit = int_param(
        &params,
        "limit",
        PEEK_MESSAGES_DEFAULT,
        1,
        PEEK_MESSAGES_MAX,
    )?;
    let from = int_param(&params, "from", 0, 0, i64::MAX)?;
    let peeked = tokio::task::spawn_blocking(move || q.peek(from as u64, limit as usize))
        .await
        .map_err(crate::error::join_error)??;
    let messages: Vec<Value> = peeked
        .iter()
        .map(|p| {
            let m = &p.message;
            let (body, body_encoding) = bytes_json(Some(&m.body));
            let headers: Map<String, Value> = m
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), field_json(v)))
                .collect();
            let deaths: Vec<Value> = m
                .deaths
                .iter()
                .map(|d| {
                    json!({
                        "queue": d.queue,
                        "reason": format!("{:?}", d.reason).to_lowercase(),
                        "count": d.count,
                        "exchange": d.exchange,
                        "routing_keys": d.routing_keys,
                    })
                })
                .collect();
            json!({
                "id": p.id,
                "state": p.state.as_str(),
                "delivery_count": p.delivery_count,
                "exchange": m.exchange,
                "routing_key": m.routing_key,
                "published_ms": m.published_ms,
                "persistent": m.persistent,
                "priority": m.priority,
                "headers": headers,
                "deaths": deaths,
                "body": body,
                "body_encoding": body_encoding,
            })
        })
        .collect();
    let next = peeked.last().map_or(from as u64, |p| p.id + 1);
    ok(json!({"vhost": vhost, "queue": name, "messages": messages, "next_from": next}))
}

fn binding_json(vhost: &str, b: &ferry_core::messaging::BindingInfo) -> Value {
    json!({
        "vhost": vhost,
        "source": b.source,
        "destination": b.destination,
        "destination_type": b.destination_type,
        "routing_key": b.routing_key,
        "arguments": arguments_json(&b.arguments),
    })
}

pub async fn bindings(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let m = admin.broker.messaging();
    let out: Vec<Value> = m
        .vhosts()
        .iter()
        .flat_map(|v| {
            m.bindings(v)
                .into_iter()
                .map(move |b| binding_json(v, &b))
                .collect::<Vec<_>>()
        })
        .collect();
    ok(json!({ "bindings": out }))
}

/// `POST /api/queues/{vhost}/{name}/redrive` `{"limit"?}`: moves
/// dead-lettered messages back to the queue they died in (the newest entry
/// of their dead-letter history), through the default exchange, oldest
/// first. Each is acknowledged in the dead-letter queue only once its copy
/// is stored in the source queue, durably when the source is durable (as a
/// publisher confirm waits), so a crash in between duplicates, never loses.
/// Stops at the first message with no dead-letter history or whose source
/// queue is gone, and leaves it where it is (returned to the queue, which
/// counts as a delivery), saying why.
pub async fn redrive(
    State(admin): State<Arc<Admin>>,
    Path((vhost, name)): Path<(String, String)>,
    body: bytes::Bytes,
) -> Result<Response> {
    let body = json_object(&body)?;
    let limit = opt_int(&body, "limit", 1, REDRIVE_MESSAGES_MAX)?.unwrap_or(REDRIVE_MESSAGES_MAX);
    let m = admin.broker.messaging();
    let q = queue_or_404(m, &vhost, &name)?;
    let mut moved: i64 = 0;
    let mut stopped = None;
    while moved < limit {
        let Some(d) = q.get(false)? else { break };
        let Some(source) = d.message.deaths.first().map(|death| death.queue.clone()) else {
            q.reject(d.id, true)?;
            stopped = Some(format!(
                "message {} has no dead-letter history: nowhere to send it back",
                d.id
            ));
            break;
        };
        let mut message = d.message.clone();
        message.exchange = String::new();
        message.routing_key = source.clone();
        let published = match m.publish(&vhost, message) {
            Ok(p) => p,
            Err(e) => {
                q.reject(d.id, true)?;
                return Err(e.into());
            }
        };
        if published.routed == 0 {
            q.reject(d.id, true)?;
            stopped = Some(format!(
                "message {} died in queue '{source}', which no longer exists",
                d.id
            ));
            break;
        }
        if let Err(e) = published.pending.durable().await {
            q.reject(d.id, true)?;
            return Err(e.into());
        }
        q.ack(d.id)?;
        moved += 1;
    }
    if moved > 0 {
        tracing::info!(vhost = %vhost, queue = %name, moved, "redrove dead-lettered messages through the admin API");
    }
    ok(json!({ "moved": moved, "stopped": stopped }))
}
