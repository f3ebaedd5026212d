//! Consumer-group APIs before the group coordinator exists: they are not
//! advertised in ApiVersions, but a client that sends one anyway gets a
//! well-formed answer with COORDINATOR_NOT_AVAILABLE (or, for listings, the
//! truth: there are no groups) instead of a dropped connection.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::{
    ApiKey, BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message};

use crate::connection::Ctx;
use crate::errors::message;
use crate::handlers::{Outcome, encode_response};

const NOT_YET: ResponseError = ResponseError::CoordinatorNotAvailable;
const WHY: &str = "consumer groups are not available on this broker yet";
/// FindCoordinator v4 batched the keys.
const BATCHED_KEYS_SINCE_VERSION: i16 = 4;
/// OffsetFetch v8 batched the groups.
const BATCHED_GROUPS_SINCE_VERSION: i16 = 8;
/// DescribeGroups v6 added a per-group error message.
const DESCRIBE_ERROR_MESSAGE_SINCE_VERSION: i16 = 6;

fn in_range<M: Message>(version: i16) -> bool {
    (M::VERSIONS.min..=M::VERSIONS.max).contains(&version)
}

/// Whether `api_key` at `version` is a group API answered here with an error.
pub(crate) fn answers_with_error(api_key: ApiKey, version: i16) -> bool {
    match api_key {
        ApiKey::FindCoordinator => in_range::<FindCoordinatorRequest>(version),
        ApiKey::JoinGroup => in_range::<JoinGroupRequest>(version),
        ApiKey::SyncGroup => in_range::<SyncGroupRequest>(version),
        ApiKey::Heartbeat => in_range::<HeartbeatRequest>(version),
        ApiKey::LeaveGroup => in_range::<LeaveGroupRequest>(version),
        ApiKey::OffsetCommit => in_range::<OffsetCommitRequest>(version),
        ApiKey::OffsetFetch => in_range::<OffsetFetchRequest>(version),
        ApiKey::ListGroups => in_range::<ListGroupsRequest>(version),
        ApiKey::DescribeGroups => in_range::<DescribeGroupsRequest>(version),
        ApiKey::DeleteGroups => in_range::<DeleteGroupsRequest>(version),
        _ => false,
    }
}

pub(crate) async fn find_coordinator(
    _ctx: &Ctx,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse::default();
    if version >= BATCHED_KEYS_SINCE_VERSION {
        response.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(NOT_YET.code())
                    .with_error_message(message(&WHY))
            })
            .collect();
    } else {
        response.error_code = NOT_YET.code();
        response.error_message = message(&WHY);
        response.node_id = BrokerId(-1);
        response.port = -1;
    }
    response
}

fn respond<R: Encodable>(api_key: ApiKey, version: i16, correlation_id: i32, body: &R) -> Outcome {
    encode_response(
        api_key,
        version,
        api_key.response_header_version(version),
        correlation_id,
        body,
    )
}

fn decode<R: Decodable>(api_key: ApiKey, version: i16, body: &mut Bytes) -> Result<R, Outcome> {
    R::decode(body, version)
        .map_err(|e| Outcome::Close(format!("malformed {api_key:?} v{version} request: {e}")))
}

/// Answers every other group API; anything else that is not supported
/// closes the connection, as Kafka does for versions it does not know.
pub(crate) fn unsupported(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &mut Bytes,
) -> Outcome {
    let outcome = match api_key {
        ApiKey::JoinGroup => decode::<JoinGroupRequest>(api_key, version, body).map(|_| {
            let mut r = JoinGroupResponse::default();
            r.error_code = NOT_YET.code();
            respond(api_key, version, correlation_id, &r)
        }),
        ApiKey::SyncGroup => decode::<SyncGroupRequest>(api_key, version, body).map(|_| {
            let mut r = SyncGroupResponse::default();
            r.error_code = NOT_YET.code();
            respond(api_key, version, correlation_id, &r)
        }),
        ApiKey::Heartbeat => decode::<HeartbeatRequest>(api_key, version, body).map(|_| {
            let mut r = HeartbeatResponse::default();
            r.error_code = NOT_YET.code();
            respond(api_key, version, correlation_id, &r)
        }),
        ApiKey::LeaveGroup => decode::<LeaveGroupRequest>(api_key, version, body).map(|_| {
            let mut r = LeaveGroupResponse::default();
            r.error_code = NOT_YET.code();
            respond(api_key, version, correlation_id, &r)
        }),
        ApiKey::ListGroups => decode::<ListGroupsRequest>(api_key, version, body).map(|_| {
            respond(
                api_key,
                version,
                correlation_id,
                &ListGroupsResponse::default(),
            )
        }),
        ApiKey::DescribeGroups => {
            decode::<DescribeGroupsRequest>(api_key, version, body).map(|req| {
                let mut r = DescribeGroupsResponse::default();
                r.groups = req
                    .groups
                    .into_iter()
                    .map(|g| {
                        let mut d = DescribedGroup::default();
                        d.group_id = g;
                        d.error_code = NOT_YET.code();
                        if version >= DESCRIBE_ERROR_MESSAGE_SINCE_VERSION {
                            d.error_message = message(&WHY);
                        }
                        d
                    })
                    .collect();
                respond(api_key, version, correlation_id, &r)
            })
        }
        ApiKey::DeleteGroups => decode::<DeleteGroupsRequest>(api_key, version, body).map(|req| {
            let mut r = DeleteGroupsResponse::default();
            r.results = req
                .groups_names
                .into_iter()
                .map(|g| {
                    DeletableGroupResult::default()
                        .with_group_id(g)
                        .with_error_code(NOT_YET.code())
                })
                .collect();
            respond(api_key, version, correlation_id, &r)
        }),
        ApiKey::OffsetCommit => decode::<OffsetCommitRequest>(api_key, version, body).map(|req| {
            let mut r = OffsetCommitResponse::default();
            r.topics = req
                .topics
                .into_iter()
                .map(|t| {
                    let mut topic = OffsetCommitResponseTopic::default();
                    topic.name = t.name;
                    topic.topic_id = t.topic_id;
                    topic.partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(NOT_YET.code())
                        })
                        .collect();
                    topic
                })
                .collect();
            respond(api_key, version, correlation_id, &r)
        }),
        ApiKey::OffsetFetch => decode::<OffsetFetchRequest>(api_key, version, body).map(|req| {
            let mut r = OffsetFetchResponse::default();
            if version >= BATCHED_GROUPS_SINCE_VERSION {
                r.groups = req
                    .groups
                    .into_iter()
                    .map(|g| {
                        OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id)
                            .with_error_code(NOT_YET.code())
                    })
                    .collect();
            } else {
                r.error_code = NOT_YET.code();
            }
            respond(api_key, version, correlation_id, &r)
        }),
        other => Err(Outcome::Close(format!(
            "{other:?} v{version} is not supported (see ApiVersions)"
        ))),
    };
    outcome.unwrap_or_else(|closed| closed)
}
