//! `/api/groups`: consumer groups with their members, assignments,
//! committed offsets and lag; offset resets (the rule is
//! `ferry_core::group::reset`, shared with the CLI) and deletion.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use ferry_core::Broker;
use ferry_core::group::reset::{ResetTarget, reset_offset};
use ferry_core::group::{GroupDescription, GroupState, TopicPartition};
use ferry_kafka::consumer_protocol::decode_assignment;
use serde_json::{Value, json};

use crate::request::{json_object, opt_bool, opt_int, opt_str};
use crate::topics::no_content;
use crate::{Admin, ApiError, Result, ok};

pub async fn list(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let coordinator = admin.broker.groups();
    let groups: Vec<Value> = coordinator
        .list_groups()
        .into_iter()
        .map(|g| {
            let d = coordinator.describe(&g.group_id);
            json!({
                "group_id": g.group_id,
                "state": g.state.as_str(),
                "protocol_type": g.protocol_type,
                "members": d.members.len(),
                "lag": total_lag(&admin.broker, &g.group_id),
            })
        })
        .collect();
    ok(json!({ "groups": groups }))
}

/// The end offset consumers read up to (the high watermark), if the
/// partition still exists.
fn end_offset(broker: &Broker, topic: &str, partition: i32) -> Option<i64> {
    broker
        .partition(topic, partition)
        .ok()
        .map(|l| l.high_watermark())
}

/// Sum of the lag of every partition with a committed offset.
pub fn total_lag(broker: &Broker, group: &str) -> i64 {
    broker
        .groups()
        .fetch_offsets(group, None)
        .into_iter()
        .filter_map(|((t, p), c)| Some((end_offset(broker, &t, p)? - c?.offset).max(0)))
        .sum()
}

fn describe_or_404(broker: &Broker, group: &str) -> Result<GroupDescription> {
    let d = broker.groups().describe(group);
    if d.state == GroupState::Dead && broker.groups().fetch_offsets(group, None).is_empty() {
        return Err(ApiError::not_found(format!(
            "group '{group}' does not exist"
        )));
    }
    Ok(d)
}

pub async fn get(State(admin): State<Arc<Admin>>, Path(group): Path<String>) -> Result<Response> {
    let broker = &admin.broker;
    let d = describe_or_404(broker, &group)?;
    let consumer = d.protocol_type == "consumer" || d.protocol_type.is_empty();
    let mut owners: BTreeMap<TopicPartition, String> = BTreeMap::new();
    let members: Vec<Value> = d
        .members
        .iter()
        .map(|m| {
            let assignment = if consumer {
                decode_assignment(&m.assignment)
            } else {
                BTreeMap::new()
            };
            for (t, ps) in &assignment {
                for p in ps {
                    owners.insert((t.clone(), *p), m.member_id.clone());
                }
            }
            json!({
                "member_id": m.member_id,
                "group_instance_id": m.group_instance_id,
                "client_id": m.client_id,
                "client_host": m.client_host,
                "assignment": assignment,
            })
        })
        .collect();
    let committed: BTreeMap<TopicPartition, i64> = broker
        .groups()
        .fetch_offsets(&group, None)
        .into_iter()
        .filter_map(|(tp, c)| Some((tp, c?.offset)))
        .collect();
    let partitions: BTreeSet<&TopicPartition> = committed.keys().chain(owners.keys()).collect();
    let mut total = 0;
    let offsets: Vec<Value> = partitions
        .into_iter()
        .map(|tp| {
            let end = end_offset(broker, &tp.0, tp.1);
            let current = committed.get(tp).copied();
            let lag = match (end, current) {
                (Some(e), Some(c)) => Some((e - c).max(0)),
                _ => None,
            };
            total += lag.unwrap_or(0);
            json!({
                "topic": tp.0,
                "partition": tp.1,
                "committed_offset": current,
                "log_end_offset": end,
                "lag": lag,
                "member_id": owners.get(tp),
            })
        })
        .collect();
    ok(json!({
        "group_id": d.group_id,
        "state": d.state.as_str(),
        "protocol_type": d.protocol_type,
        "protocol": d.protocol_name,
        "generation_id": d.generation_id,
        "members": members,
        "offsets": offsets,
        "lag": total,
    }))
}

fn reset_target(to: &str, value: Option<i64>) -> Result<ResetTarget> {
    let need = |what: &str| {
        value.ok_or_else(|| ApiError::bad_request(format!("'to': '{to}' needs 'value' ({what})")))
    };
    Ok(match to {
        "earliest" => ResetTarget::Earliest,
        "latest" => ResetTarget::Latest,
        "offset" => ResetTarget::Offset(need("the offset")?),
        "timestamp" => ResetTarget::Timestamp(need("milliseconds since the epoch")?),
        "shift" => ResetTarget::Shift(need("how many records to move, negative for back")?),
        other => {
            return Err(ApiError::bad_request(format!(
                "'to' must be earliest, latest, offset, timestamp or shift, not '{other}'"
            )));
        }
    })
}

/// `POST /api/groups/{id}/reset-offsets`
/// `{"topic", "partitions"?, "to", "value"?, "dry_run"?}`: moves the
/// group's committed offsets on a topic's partitions (all by default); only
/// while the group has no members, as Kafka requires.
pub async fn reset_offsets(
    State(admin): State<Arc<Admin>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let body = json_object(&body)?;
    let topic_name = opt_str(&body, "topic")?
        .ok_or_else(|| ApiError::bad_request("'topic' is required"))?
        .to_string();
    let to = opt_str(&body, "to")?.ok_or_else(|| ApiError::bad_request("'to' is required"))?;
    let target = reset_target(to, opt_int(&body, "value", i64::MIN, i64::MAX)?)?;
    let dry_run = opt_bool(&body, "dry_run")?.unwrap_or(false);
    let broker = admin.broker.clone();
    let topic = broker
        .topic(&topic_name)
        .ok_or_else(|| ApiError::not_found(format!("topic '{topic_name}' does not exist")))?;
    let count = topic.partition_count() as i32;
    let partitions: Vec<i32> = match body.get("partitions") {
        None | Some(Value::Null) => (0..count).collect(),
        Some(Value::Array(list)) => {
            let mut ps = Vec::new();
            for p in list {
                match p.as_i64() {
                    Some(p) if (0..i64::from(count)).contains(&p) => ps.push(p as i32),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "'partitions' must list partitions of '{topic_name}' (0 to {})",
                            count - 1
                        )));
                    }
                }
            }
            ps
        }
        Some(_) => return Err(ApiError::bad_request("'partitions' must be a list")),
    };
    let d = broker.groups().describe(&group);
    if !d.members.is_empty() && !dry_run {
        return Err(ApiError::conflict(format!(
            "group '{group}' has {} active member(s) (state {}); offsets can only be reset while it has none",
            d.members.len(),
            d.state.as_str()
        )));
    }
    let mut plan = Vec::new();
    for p in partitions {
        let log = broker.partition(&topic_name, p)?;
        let tp = (topic_name.clone(), p);
        let current = broker
            .groups()
            .fetch_offsets(&group, Some(vec![tp.clone()]))
            .into_iter()
            .next()
            .and_then(|(_, c)| c)
            .map(|c| c.offset);
        let at_time = match target {
            ResetTarget::Timestamp(ms) => {
                let log = log.clone();
                tokio::task::spawn_blocking(move || log.offset_for_timestamp(ms))
                    .await
                    .map_err(crate::error::join_error)?
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .map(|t| t.offset)
            }
            _ => None,
        };
        let new = reset_offset(
            target,
            log.log_start_offset(),
            log.high_watermark(),
            current,
            at_time,
        );
        plan.push((tp, current, new));
    }
    if !dry_run {
        let offsets = plan
            .iter()
            .map(|(tp, _, new)| (tp.clone(), *new, -1, None))
            .collect();
        broker
            .groups()
            .commit_offsets(&group, -1, "", None, offsets)
            .await?;
        tracing::info!(group = %group, topic = %topic_name, "offsets reset through the admin API");
    }
    let partitions: Vec<Value> = plan
        .iter()
        .map(|((t, p), current, new)| {
            json!({"topic": t, "partition": p, "previous_offset": current, "new_offset": new})
        })
        .collect();
    ok(json!({"group_id": group, "dry_run": dry_run, "partitions": partitions}))
}

pub async fn delete(
    State(admin): State<Arc<Admin>>,
    Path(group): Path<String>,
) -> Result<Response> {
    admin.broker.groups().delete_group(&group).await?;
    Ok(no_content())
}
