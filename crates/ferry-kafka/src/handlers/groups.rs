//! Consumer groups over the Kafka protocol: FindCoordinator, JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, ListGroups,
//! DescribeGroups, DeleteGroups and OffsetDelete, translated to the
//! coordinator in `ferry_core::group`. This broker coordinates every group.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::group::{GroupError, GroupState, JoinRequest, SyncRequest, TopicPartition};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::consumer_protocol_subscription::ConsumerProtocolSubscription;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::connection::Ctx;
use crate::errors::{group_error, message};

/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
/// FindCoordinator v4 batched the keys.
const BATCHED_KEYS_SINCE_VERSION: i16 = 4;
/// JoinGroup v1 added the rebalance timeout; before, the session timeout served.
const REBALANCE_TIMEOUT_SINCE_VERSION: i16 = 1;
/// JoinGroup v4 made new members rejoin with an id the coordinator gives (KIP-394).
const MEMBER_ID_REQUIRED_SINCE_VERSION: i16 = 4;
/// LeaveGroup v3 batched the members (KIP-345).
const BATCHED_LEAVE_SINCE_VERSION: i16 = 3;
/// OffsetFetch v8 batched the groups.
const BATCHED_GROUPS_SINCE_VERSION: i16 = 8;
/// OffsetFetch v5 added the committed leader epoch.
const FETCH_LEADER_EPOCH_SINCE_VERSION: i16 = 5;
/// DescribeGroups v3 added authorized operations.
const AUTHORIZED_OPERATIONS_SINCE_VERSION: i16 = 3;
/// Kafka's ACL bits a group grants everyone until authorization exists:
/// READ 3, DELETE 6, DESCRIBE 8.
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn opt_str(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.to_string())
}

pub(crate) async fn find_coordinator(
    ctx: &Ctx,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let node = BrokerId(ctx.config.node_id);
    let host = str_bytes(ctx.config.advertised_host.clone());
    let port = i32::from(ctx.config.advertised_port);
    // Transactions have no coordinator yet.
    let error = (req.key_type != KEY_TYPE_GROUP).then_some((
        ResponseError::CoordinatorNotAvailable,
        "transactions are not supported yet",
    ));
    let mut response = FindCoordinatorResponse::default();
    if version >= BATCHED_KEYS_SINCE_VERSION {
        response.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key);
                match error {
                    Some((code, why)) => c
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(code.code())
                        .with_error_message(message(&why)),
                    None => c.with_node_id(node).with_host(host.clone()).with_port(port),
                }
            })
            .collect();
    } else {
        match error {
            Some((code, why)) => {
                response.error_code = code.code();
                response.error_message = message(&why);
                response.node_id = BrokerId(-1);
                response.port = -1;
            }
            None => {
                response.node_id = node;
                response.host = host;
                response.port = port;
            }
        }
    }
    response
}

pub(crate) async fn join_group(
    ctx: &Ctx,
    req: JoinGroupRequest,
    version: i16,
    client_id: String,
) -> JoinGroupResponse {
    let session_ms = req.session_timeout_ms.max(0) as u64;
    let rebalance_ms = if version >= REBALANCE_TIMEOUT_SINCE_VERSION {
        req.rebalance_timeout_ms.max(0) as u64
    } else {
        session_ms
    };
    let join = JoinRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        group_instance_id: opt_str(&req.group_instance_id),
        client_id,
        client_host: format!("/{}", ctx.peer.ip()),
        session_timeout: Duration::from_millis(session_ms),
        rebalance_timeout: Duration::from_millis(rebalance_ms),
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= MEMBER_ID_REQUIRED_SINCE_VERSION,
    };
    let mut response = JoinGroupResponse::default();
    match ctx.broker.groups().join(join).await {
        Ok(joined) => {
            response.generation_id = joined.generation_id;
            response.protocol_type = joined.protocol_type.map(str_bytes);
            response.protocol_name = Some(str_bytes(joined.protocol_name.unwrap_or_default()));
            response.leader = str_bytes(joined.leader_id);
            response.member_id = str_bytes(joined.member_id);
            response.members = joined
                .members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_group_instance_id(m.group_instance_id.map(str_bytes))
                        .with_metadata(m.metadata)
                })
                .collect();
        }
        Err(e) => {
            if let GroupError::MemberIdRequired(id) = &e {
                response.member_id = str_bytes(id.clone());
            }
            response.error_code = group_error(&e).code();
        }
    }
    response
}

pub(crate) async fn sync_group(
    ctx: &Ctx,
    req: SyncGroupRequest,
    _version: i16,
) -> SyncGroupResponse {
    let assignments = req
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let result = ctx
        .broker
        .groups()
        .sync(SyncRequest {
            group_id: req.group_id.0.to_string(),
            member_id: req.member_id.to_string(),
            group_instance_id: opt_str(&req.group_instance_id),
            generation_id: req.generation_id,
            protocol_type: opt_str(&req.protocol_type),
            protocol_name: opt_str(&req.protocol_name),
            assignments,
        })
        .await;
    let mut response = SyncGroupResponse::default();
    match result {
        Ok(synced) => {
            response.protocol_type = synced.protocol_type.map(str_bytes);
            response.protocol_name = synced.protocol_name.map(str_bytes);
            response.assignment = synced.assignment;
        }
        Err(e) => response.error_code = group_error(&e).code(),
    }
    response
}

pub(crate) async fn heartbeat(
    ctx: &Ctx,
    req: HeartbeatRequest,
    _version: i16,
) -> HeartbeatResponse {
    let result = ctx.broker.groups().heartbeat(
        &req.group_id.0,
        &req.member_id,
        opt_str(&req.group_instance_id).as_deref(),
        req.generation_id,
    );
    let mut response = HeartbeatResponse::default();
    if let Err(e) = result {
        response.error_code = group_error(&e).code();
    }
    response
}

pub(crate) async fn leave_group(
    ctx: &Ctx,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let batched = version >= BATCHED_LEAVE_SINCE_VERSION;
    let members: Vec<(String, Option<String>)> = if batched {
        req.members
            .iter()
            .map(|m| (m.member_id.to_string(), opt_str(&m.group_instance_id)))
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let mut response = LeaveGroupResponse::default();
    match ctx.broker.groups().leave(&req.group_id.0, &members) {
        Err(e) => response.error_code = group_error(&e).code(),
        Ok(results) if batched => {
            response.members = members
                .into_iter()
                .zip(results)
                .map(|((id, instance), r)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(id))
                        .with_group_instance_id(instance.map(str_bytes))
                        .with_error_code(r.err().map_or(0, |e| group_error(&e).code()))
                })
                .collect();
        }
        Ok(results) => {
            if let Some(Err(e)) = results.into_iter().next() {
                response.error_code = group_error(&e).code();
            }
        }
    }
    response
}

pub(crate) async fn offset_commit(
    ctx: &Ctx,
    req: OffsetCommitRequest,
    _version: i16,
) -> OffsetCommitResponse {
    // Partitions that do not exist are refused one by one; the rest are
    // committed together.
    let mut valid = Vec::new();
    let mut codes: Vec<Vec<Option<i16>>> = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let topic = ctx.broker.topic(&t.name.0);
        let mut topic_codes = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            // An offline partition still exists: Kafka commits its offsets.
            let exists = topic
                .as_ref()
                .is_some_and(|t| t.has_partition(p.partition_index));
            if exists {
                valid.push((
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                    p.committed_leader_epoch,
                    opt_str(&p.committed_metadata),
                ));
                topic_codes.push(None);
            } else {
                topic_codes.push(Some(ResponseError::UnknownTopicOrPartition.code()));
            }
        }
        codes.push(topic_codes);
    }
    let result = if valid.is_empty() {
        Ok(())
    } else {
        ctx.broker
            .groups()
            .commit_offsets(
                &req.group_id.0,
                req.generation_id_or_member_epoch,
                &req.member_id,
                opt_str(&req.group_instance_id).as_deref(),
                valid,
            )
            .await
    };
    let group_code = result.err().map_or(0, |e| {
        tracing::debug!(group = %req.group_id.0, error = %e, "offset commit refused");
        group_error(&e).code()
    });
    let mut response = OffsetCommitResponse::default();
    response.topics = req
        .topics
        .into_iter()
        .zip(codes)
        .map(|(t, topic_codes)| {
            let mut topic = OffsetCommitResponseTopic::default();
            topic.partitions = t
                .partitions
                .iter()
                .zip(topic_codes)
                .map(|(p, code)| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code.unwrap_or(group_code))
                })
                .collect();
            topic.name = t.name;
            topic.topic_id = t.topic_id;
            topic
        })
        .collect();
    response
}

/// One group's committed offsets, as (topic, [(partition, offset, leader epoch, metadata)]).
type FetchedTopics = Vec<(String, Vec<(i32, i64, i32, String)>)>;

/// Looks up a group's committed offsets; `topics` None means all of them.
fn fetch_group(ctx: &Ctx, group: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> FetchedTopics {
    let wanted: Option<Vec<TopicPartition>> = topics.map(|ts| {
        ts.into_iter()
            .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
            .collect()
    });
    let mut out: FetchedTopics = Vec::new();
    for ((topic, partition), committed) in ctx.broker.groups().fetch_offsets(group, wanted) {
        let entry = match committed {
            Some(c) => (
                partition,
                c.offset,
                c.leader_epoch,
                c.metadata.unwrap_or_default(),
            ),
            // Kafka's answer for "nothing committed": offset -1, no metadata.
            None => (partition, -1, -1, String::new()),
        };
        match out.last_mut() {
            Some((t, parts)) if *t == topic => parts.push(entry),
            _ => out.push((topic, vec![entry])),
        }
    }
    out
}

pub(crate) async fn offset_fetch(
    ctx: &Ctx,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let with_epoch = version >= FETCH_LEADER_EPOCH_SINCE_VERSION;
    let epoch = |e: i32| if with_epoch { e } else { -1 };
    let mut response = OffsetFetchResponse::default();
    if version >= BATCHED_GROUPS_SINCE_VERSION {
        response.groups = req
            .groups
            .into_iter()
            .map(|g| {
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                let mut group = OffsetFetchResponseGroup::default();
                group.topics = fetch_group(ctx, &g.group_id.0, topics)
                    .into_iter()
                    .map(|(name, parts)| {
                        let mut t = OffsetFetchResponseTopics::default();
                        t.name = TopicName(str_bytes(name));
                        t.partitions = parts
                            .into_iter()
                            .map(|(p, offset, e, meta)| {
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(epoch(e))
                                    .with_metadata(Some(str_bytes(meta)))
                            })
                            .collect();
                        t
                    })
                    .collect();
                group.group_id = g.group_id;
                group
            })
            .collect();
    } else {
        let topics = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        response.topics = fetch_group(ctx, &req.group_id.0, topics)
            .into_iter()
            .map(|(name, parts)| {
                let mut t = OffsetFetchResponseTopic::default();
                t.name = TopicName(str_bytes(name));
                t.partitions = parts
                    .into_iter()
                    .map(|(p, offset, e, meta)| {
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(epoch(e))
                            .with_metadata(Some(str_bytes(meta)))
                    })
                    .collect();
                t
            })
            .collect();
    }
    response
}

pub(crate) async fn list_groups(
    ctx: &Ctx,
    req: ListGroupsRequest,
    _version: i16,
) -> ListGroupsResponse {
    let states: HashSet<String> = req
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let types: HashSet<String> = req
        .types_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let mut response = ListGroupsResponse::default();
    response.groups = ctx
        .broker
        .groups()
        .list_groups()
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.as_str().to_ascii_lowercase()))
        // Every group here speaks the classic protocol.
        .filter(|_| types.is_empty() || types.contains("classic"))
        .map(|g| {
            let mut listed = ListedGroup::default();
            listed.group_id = GroupId(str_bytes(g.group_id));
            listed.protocol_type = str_bytes(g.protocol_type);
            listed.group_state = str_bytes(g.state.as_str());
            listed.group_type = str_bytes("classic");
            listed
        })
        .collect();
    response
}

pub(crate) async fn describe_groups(
    ctx: &Ctx,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    response.groups = req
        .groups
        .into_iter()
        .map(|id| {
            let d = ctx.broker.groups().describe(&id.0);
            let mut g = DescribedGroup::default();
            g.group_id = id;
            g.group_state = str_bytes(d.state.as_str());
            g.protocol_type = str_bytes(d.protocol_type);
            g.protocol_data = str_bytes(d.protocol_name);
            if req.include_authorized_operations && version >= AUTHORIZED_OPERATIONS_SINCE_VERSION {
                g.authorized_operations = GROUP_OPERATIONS;
            }
            g.members = d
                .members
                .into_iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_group_instance_id(m.group_instance_id.map(str_bytes))
                        .with_client_id(str_bytes(m.client_id))
                        .with_client_host(str_bytes(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment)
                })
                .collect();
            g
        })
        .collect();
    response
}

pub(crate) async fn delete_groups(
    ctx: &Ctx,
    req: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let mut response = DeleteGroupsResponse::default();
    for id in req.groups_names {
        let code = match ctx.broker.groups().delete_group(&id.0).await {
            Ok(()) => 0,
            Err(e) => group_error(&e).code(),
        };
        response.results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code),
        );
    }
    response
}

/// Topics the group's current members subscribe to, read from their
/// consumer-protocol metadata (version prefix, then the subscription).
fn subscribed_topics(ctx: &Ctx, group: &str) -> HashSet<String> {
    let d = ctx.broker.groups().describe(group);
    if d.protocol_type != "consumer" || d.state == GroupState::Empty {
        return HashSet::new();
    }
    let mut topics = HashSet::new();
    for m in d.members {
        let mut buf: Bytes = m.metadata.clone();
        if buf.len() < 2 {
            continue;
        }
        let version = i16::from_be_bytes([buf[0], buf[1]]);
        let _ = buf.split_to(2);
        let version = version.clamp(0, 3);
        if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut buf, version) {
            topics.extend(sub.topics.into_iter().map(|t| t.to_string()));
        }
    }
    topics
}

pub(crate) async fn offset_delete(
    ctx: &Ctx,
    req: OffsetDeleteRequest,
    _version: i16,
) -> OffsetDeleteResponse {
    let mut response = OffsetDeleteResponse::default();
    let group = req.group_id.0.to_string();
    if ctx.broker.groups().describe(&group).state == GroupState::Dead {
        response.error_code = group_error(&GroupError::GroupIdNotFound).code();
        return response;
    }
    let subscribed = subscribed_topics(ctx, &group);
    let mut deletable = Vec::new();
    for t in &req.topics {
        let topic = t.name.0.to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let code = if subscribed.contains(&topic) {
                group_error(&GroupError::GroupSubscribedToTopic).code()
            } else {
                deletable.push((topic.clone(), p.partition_index));
                0
            };
            partitions.push(
                OffsetDeleteResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(code),
            );
        }
        let mut rt = OffsetDeleteResponseTopic::default();
        rt.name = t.name.clone();
        rt.partitions = partitions;
        response.topics.push(rt);
    }
    if let Err(e) = ctx.broker.groups().delete_offsets(&group, deletable).await {
        response.error_code = group_error(&e).code();
    }
    response
}
