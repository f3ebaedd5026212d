//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions.

use std::collections::{BTreeMap, HashSet};

use ferry_core::{ConfigSource, CoreError};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::connection::Ctx;
use crate::errors::{kafka_error, message};

/// Kafka's DescribeConfigs/CreateTopics `config_source` codes.
pub(crate) fn config_source_code(source: ConfigSource) -> i8 {
    match source {
        ConfigSource::TopicOverride => 1,
        ConfigSource::BrokerDefault => 4,
        ConfigSource::Default => 5,
    }
}

fn duplicate_names<'a>(names: impl Iterator<Item = &'a str>) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut dups = HashSet::new();
    for n in names {
        if !seen.insert(n) {
            dups.insert(n.to_string());
        }
    }
    dups
}

/// A Kafka error code with the message that explains it.
type Refusal = (ResponseError, String);

fn refusal(e: CoreError) -> Refusal {
    (kafka_error(&e), e.to_string())
}

/// Checks a CreateTopics entry against what one broker can do and returns the
/// partition count to create (`None`: the broker default).
fn partitions_for(ctx: &Ctx, t: &CreatableTopic) -> Result<Option<u32>, Refusal> {
    if !t.assignments.is_empty() {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err((
                ResponseError::InvalidRequest,
                "give either replica assignments or a partition count and replication factor, not both".into(),
            ));
        }
        let node = ctx.config.node_id;
        if t.assignments
            .iter()
            .any(|a| a.broker_ids.iter().any(|b| b.0 != node) || a.broker_ids.len() != 1)
        {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                format!(
                    "this cluster has one broker (id {node}); every partition must be assigned to it alone"
                ),
            ));
        }
        return Ok(Some(t.assignments.len() as u32));
    }
    if t.replication_factor != -1 && t.replication_factor != 1 {
        return Err(refusal(CoreError::InvalidReplicationFactor(format!(
            "replication factor {} is larger than the number of available brokers (1)",
            t.replication_factor
        ))));
    }
    match t.num_partitions {
        -1 => Ok(None),
        n if n >= 1 => Ok(Some(n as u32)),
        n => Err(refusal(CoreError::InvalidPartitions(format!(
            "number of partitions must be at least 1, not {n}"
        )))),
    }
}

pub(crate) async fn create_topics(
    ctx: &Ctx,
    req: CreateTopicsRequest,
    _version: i16,
) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    let dups = duplicate_names(req.topics.iter().map(|t| t.name.0.as_str()));
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut result = CreatableTopicResult::default();
        result.name = t.name.clone();
        if dups.contains(&name) {
            result.error_code = ResponseError::InvalidRequest.code();
            result.error_message = message(&format!(
                "topic '{name}' appears more than once in the request"
            ));
            response.topics.push(result);
            continue;
        }
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        let created = partitions_for(ctx, &t).and_then(|partitions| {
            let count = partitions.unwrap_or(ctx.broker.config().default_partitions);
            ctx.broker
                .create_topic(&name, partitions, &configs, req.validate_only)
                .map(|topic| (topic, count))
                .map_err(refusal)
        });
        match created {
            Ok((topic, count)) => {
                result.topic_id = topic.id;
                result.num_partitions = count as i32;
                result.replication_factor = 1;
                let described = ferry_core::topic_config::describe(
                    &ctx.broker.config().topic_defaults,
                    &configs,
                );
                result.configs = Some(
                    described
                        .into_iter()
                        .map(|e| {
                            CreatableTopicConfigs::default()
                                .with_name(StrBytes::from_static_str(e.name))
                                .with_value(Some(StrBytes::from_string(e.value)))
                                .with_config_source(config_source_code(e.source))
                        })
                        .collect(),
                );
            }
            Err((code, text)) => {
                result.error_code = code.code();
                result.error_message = message(&text);
            }
        }
        response.topics.push(result);
    }
    response
}

pub(crate) async fn delete_topics(
    ctx: &Ctx,
    req: DeleteTopicsRequest,
    _version: i16,
) -> DeleteTopicsResponse {
    // v6 names topics by name or id; earlier versions by name only.
    let mut targets: Vec<(Option<TopicName>, uuid::Uuid)> = req
        .topic_names
        .into_iter()
        .map(|n| (Some(n), uuid::Uuid::nil()))
        .collect();
    targets.extend(req.topics.into_iter().map(|t| (t.name, t.topic_id)));
    let mut response = DeleteTopicsResponse::default();
    for (name, id) in targets {
        let mut result = DeletableTopicResult::default();
        let resolved = match &name {
            Some(n) => ctx
                .broker
                .topic(&n.0)
                .ok_or_else(|| CoreError::UnknownTopic(n.0.to_string())),
            None => ctx
                .broker
                .topic_by_id(id)
                .ok_or(CoreError::UnknownTopicId(id)),
        };
        result.name = name;
        result.topic_id = id;
        match resolved.and_then(|t| {
            ctx.broker.delete_topic(&t.name)?;
            Ok(t)
        }) {
            Ok(t) => {
                result.name = Some(TopicName(StrBytes::from_string(t.name.clone())));
                result.topic_id = t.id;
            }
            Err(e) => {
                result.error_code = kafka_error(&e).code();
                result.error_message = message(&e);
            }
        }
        response.responses.push(result);
    }
    response
}

pub(crate) async fn create_partitions(
    ctx: &Ctx,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut response = CreatePartitionsResponse::default();
    let dups = duplicate_names(req.topics.iter().map(|t| t.name.0.as_str()));
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut result = CreatePartitionsTopicResult::default();
        result.name = t.name.clone();
        let outcome = if dups.contains(&name) {
            Err((
                ResponseError::InvalidRequest,
                format!("topic '{name}' appears more than once in the request"),
            ))
        } else if t.count < 1 {
            Err((
                ResponseError::InvalidPartitions,
                format!("number of partitions must be at least 1, not {}", t.count),
            ))
        } else {
            ctx.broker
                .create_partitions(&name, t.count as u32, req.validate_only)
                .map_err(|e| (kafka_error(&e), e.to_string()))
        };
        if let Err((code, text)) = outcome {
            result.error_code = code.code();
            result.error_message = message(&text);
        }
        response.results.push(result);
    }
    response
}
