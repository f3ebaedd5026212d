//! Metadata and DescribeCluster: this single broker leads every partition.

use ferry_core::{CoreError, Topic};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::connection::Ctx;
use crate::errors::{kafka_error, message};

/// Kafka's ACL operation bits (AclOperation codes) that every client may
/// perform until authorization exists: READ 3, WRITE 4, CREATE 5, DELETE 6,
/// ALTER 7, DESCRIBE 8, DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11.
const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11.
const CLUSTER_OPERATIONS: i32 = (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11);
/// Metadata v4 added `allow_auto_topic_creation`; before it, creation was implied.
const AUTO_CREATE_FIELD_SINCE_VERSION: i16 = 4;

fn describe_topic(ctx: &Ctx, topic: &Topic, include_ops: bool) -> MetadataResponseTopic {
    let node = BrokerId(ctx.config.node_id);
    let mut t = MetadataResponseTopic::default();
    t.name = Some(TopicName(StrBytes::from_string(topic.name.clone())));
    t.topic_id = topic.id;
    if include_ops {
        t.topic_authorized_operations = TOPIC_OPERATIONS;
    }
    t.partitions = (0..topic.partition_count() as i32)
        .map(|index| {
            let partition = MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_epoch(0)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node]);
            match topic.partition(index) {
                Ok(_) => partition.with_leader_id(node),
                // What Kafka's metadata says of a partition whose only
                // replica sits in a failed log directory: no leader, the
                // replica offline. Clients hold its records and retry.
                Err(_) => partition
                    .with_error_code(ResponseError::LeaderNotAvailable.code())
                    .with_leader_id(BrokerId(-1))
                    .with_offline_replicas(vec![node]),
            }
        })
        .collect();
    t
}

fn topic_error(
    name: Option<TopicName>,
    id: uuid::Uuid,
    code: ResponseError,
) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = name;
    t.topic_id = id;
    t.error_code = code.code();
    t
}

pub(crate) async fn handle(ctx: &Ctx, req: MetadataRequest, version: i16) -> MetadataResponse {
    let mut response = MetadataResponse::default();
    response.brokers = vec![
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(ctx.config.node_id))
            .with_host(StrBytes::from_string(ctx.config.advertised_host.clone()))
            .with_port(i32::from(ctx.config.advertised_port)),
    ];
    response.cluster_id = Some(StrBytes::from_string(ctx.broker.cluster_id().to_string()));
    response.controller_id = BrokerId(ctx.config.node_id);
    if req.include_cluster_authorized_operations {
        response.cluster_authorized_operations = CLUSTER_OPERATIONS;
    }
    let include_ops = req.include_topic_authorized_operations;
    let allow_create = version < AUTO_CREATE_FIELD_SINCE_VERSION || req.allow_auto_topic_creation;

    // v0 asks for every topic with an empty list; later versions with null.
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    response.topics = match requested {
        None => ctx
            .broker
            .topics()
            .iter()
            .map(|t| describe_topic(ctx, t, include_ops))
            .collect(),
        Some(requested) => requested
            .into_iter()
            .map(|r| match r.name {
                None => match ctx.broker.topic_by_id(r.topic_id) {
                    Some(t) => describe_topic(ctx, &t, include_ops),
                    None => topic_error(None, r.topic_id, ResponseError::UnknownTopicId),
                },
                Some(name) => {
                    let found = if allow_create {
                        ctx.broker.topic_or_auto_create(&name.0)
                    } else {
                        ctx.broker
                            .topic(&name.0)
                            .ok_or_else(|| CoreError::UnknownTopic(name.0.to_string()))
                    };
                    match found {
                        Ok(t) => describe_topic(ctx, &t, include_ops),
                        Err(e) => topic_error(Some(name), uuid::Uuid::nil(), kafka_error(&e)),
                    }
                }
            })
            .collect(),
    };
    response
}

pub(crate) async fn describe_cluster(
    ctx: &Ctx,
    req: DescribeClusterRequest,
    _version: i16,
) -> DescribeClusterResponse {
    let mut response = DescribeClusterResponse::default();
    // Endpoint type 1 is "brokers"; 2 ("controllers") has no separate
    // listener here.
    if req.endpoint_type > 1 {
        response.error_code = ResponseError::UnsupportedEndpointType.code();
        response.error_message = message(&"only broker endpoints are available");
        return response;
    }
    response.cluster_id = StrBytes::from_string(ctx.broker.cluster_id().to_string());
    response.controller_id = BrokerId(ctx.config.node_id);
    response.brokers = vec![
        DescribeClusterBroker::default()
            .with_broker_id(BrokerId(ctx.config.node_id))
            .with_host(StrBytes::from_string(ctx.config.advertised_host.clone()))
            .with_port(i32::from(ctx.config.advertised_port)),
    ];
    if req.include_cluster_authorized_operations {
        response.cluster_authorized_operations = CLUSTER_OPERATIONS;
    }
    response
}
