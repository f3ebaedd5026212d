//! `/api/topics`: list, describe, create, delete, alter configs, and the
//! message browser (`/api/topics/{name}/partitions/{p}/records`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use ferry_core::{Broker, ConfigOp, ConfigSource, Topic};
use serde_json::{Value, json};

use crate::error::join_error;
use crate::request::{bytes_json, config_map, int_param, json_object, opt_int, opt_str, query};
use crate::{Admin, ApiError, Result, json_response, ok};

/// Most records one browse returns.
pub const BROWSE_RECORDS_MAX: i64 = 1000;
/// Records one browse returns unless `limit` says otherwise.
const BROWSE_RECORDS_DEFAULT: i64 = 20;

fn topic_or_404(broker: &Broker, name: &str) -> Result<Arc<Topic>> {
    broker
        .topic(name)
        .ok_or_else(|| ApiError::not_found(format!("topic '{name}' does not exist")))
}

/// Per-partition offsets and sizes; a partition held offline (its log could
/// not be opened at start) is listed with why, and no offsets.
pub fn partitions_json(topic: &Topic) -> Vec<Value> {
    let mut out: Vec<(i32, Value)> = topic
        .partitions()
        .iter()
        .map(|(i, log)| {
            let v = json!({
                "partition": i,
                "online": true,
                "log_start_offset": log.log_start_offset(),
                "high_watermark": log.high_watermark(),
                "log_end_offset": log.log_end_offset(),
                "size_bytes": log.size_bytes(),
            });
            (*i, v)
        })
        .collect();
    for (i, reason) in topic.offline_partitions() {
        let v = json!({
            "partition": i,
            "online": false,
            "log_start_offset": null,
            "high_watermark": null,
            "log_end_offset": null,
            "size_bytes": null,
            "error": &*reason,
        });
        out.push((i, v));
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, v)| v).collect()
}

fn summary(topic: &Topic) -> Value {
    let logs = topic.partitions();
    let records: i64 = logs
        .iter()
        .map(|(_, l)| (l.high_watermark() - l.log_start_offset()).max(0))
        .sum();
    json!({
        "name": topic.name,
        "id": topic.id.to_string(),
        "partition_count": topic.partition_count(),
        "records": records,
        "size_bytes": logs.iter().map(|(_, l)| l.size_bytes()).sum::<u64>(),
    })
}

fn source_name(s: ConfigSource) -> &'static str {
    match s {
        ConfigSource::TopicOverride => "topic",
        ConfigSource::BrokerDefault => "broker_default",
        ConfigSource::Default => "default",
    }
}

fn detail(broker: &Broker, topic: &Topic) -> Result<Value> {
    let configs: Vec<Value> = broker
        .describe_topic_configs(&topic.name)?
        .into_iter()
        .map(|c| json!({"name": c.name, "value": c.value, "source": source_name(c.source)}))
        .collect();
    let mut out = summary(topic);
    out["partitions"] = Value::Array(partitions_json(topic));
    out["configs"] = Value::Array(configs);
    Ok(out)
}

pub async fn list(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let topics: Vec<Value> = admin.broker.topics().iter().map(|t| summary(t)).collect();
    ok(json!({ "topics": topics }))
}

pub async fn get(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Result<Response> {
    let topic = topic_or_404(&admin.broker, &name)?;
    ok(detail(&admin.broker, &topic)?)
}

/// `POST /api/topics` `{"name", "partitions"?, "configs"?}`.
pub async fn create(State(admin): State<Arc<Admin>>, body: Bytes) -> Result<Response> {
    let body = json_object(&body)?;
    let name = opt_str(&body, "name")?
        .ok_or_else(|| ApiError::bad_request("'name' is required"))?
        .to_string();
    // The broker checks the upper bound and says what it is.
    let partitions = opt_int(&body, "partitions", 1, i64::from(u32::MAX))?.map(|n| n as u32);
    let configs = config_map(&body, "configs")?;
    let broker = admin.broker.clone();
    let topic = tokio::task::spawn_blocking(move || {
        broker.create_topic(&name, partitions, &configs, false)
    })
    .await
    .map_err(join_error)??;
    Ok(json_response(
        StatusCode::CREATED,
        &detail(&admin.broker, &topic)?,
    ))
}

pub async fn delete(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Result<Response> {
    let broker = admin.broker.clone();
    tokio::task::spawn_blocking(move || broker.delete_topic(&name))
        .await
        .map_err(join_error)??;
    Ok(no_content())
}

/// `PATCH /api/topics/{name}/configs` `{"set": {...}, "delete": [...]}`.
pub async fn alter_configs(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let body = json_object(&body)?;
    let mut ops: Vec<ConfigOp> = config_map(&body, "set")?
        .into_iter()
        .map(|(k, v)| ConfigOp::Set(k, v))
        .collect();
    match body.get("delete") {
        None | Some(Value::Null) => {}
        Some(Value::Array(names)) => {
            for n in names {
                let Some(n) = n.as_str() else {
                    return Err(ApiError::bad_request(
                        "'delete' must be a list of config names",
                    ));
                };
                ops.push(ConfigOp::Delete(n.to_string()));
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "'delete' must be a list of config names",
            ));
        }
    }
    if ops.is_empty() {
        return Err(ApiError::bad_request(
            "nothing to change: give 'set' and/or 'delete'",
        ));
    }
    let broker = admin.broker.clone();
    let target = name.clone();
    tokio::task::spawn_blocking(move || broker.alter_topic_configs(&target, &ops, false))
        .await
        .map_err(join_error)??;
    let topic = topic_or_404(&admin.broker, &name)?;
    ok(detail(&admin.broker, &topic)?)
}

/// `GET /api/topics/{name}/partitions/{p}/records?offset=&limit=`: records
/// from `offset` (default: the log start; negative: that many before the
/// high watermark), at most `limit`.
pub async fn records(
    State(admin): State<Arc<Admin>>,
    Path((name, partition)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response> {
    let partition: i32 = partition.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "partition must be a whole number, not '{partition}'"
        ))
    })?;
    let log = admin.broker.partition(&name, partition)?;
    let q = query(&uri);
    let limit = int_param(&q, "limit", BROWSE_RECORDS_DEFAULT, 1, BROWSE_RECORDS_MAX)?;
    let start = log.log_start_offset();
    let offset = match int_param(&q, "offset", start, i64::MIN + 1, i64::MAX)? {
        n if n < 0 => (log.high_watermark() + n).max(start),
        n => n,
    };
    let broker = admin.broker.clone();
    let topic = name.clone();
    let records = tokio::task::spawn_blocking(move || {
        broker.read_records(&topic, partition, offset, limit as usize)
    })
    .await
    .map_err(join_error)??;
    let next = records.last().map_or(offset.max(start), |r| r.offset + 1);
    let records: Vec<Value> = records
        .iter()
        .map(|r| {
            let (key, key_encoding) = bytes_json(r.key.as_deref());
            let (value, value_encoding) = bytes_json(r.value.as_deref());
            let headers: Vec<Value> = r
                .headers
                .iter()
                .map(|(k, v)| {
                    let (v, encoding) = bytes_json(v.as_deref());
                    json!({"key": String::from_utf8_lossy(k), "value": v, "value_encoding": encoding})
                })
                .collect();
            json!({
                "offset": r.offset,
                "timestamp_ms": r.timestamp,
                "key": key,
                "key_encoding": key_encoding,
                "value": value,
                "value_encoding": value_encoding,
                "headers": headers,
            })
        })
        .collect();
    ok(json!({
        "topic": name,
        "partition": partition,
        "records": records,
        "next_offset": next,
        "high_watermark": log.high_watermark(),
    }))
}

pub(crate) fn no_content() -> Response {
    let mut r = Response::new(axum::body::Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}
