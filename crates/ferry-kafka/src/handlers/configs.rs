//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics, and
//! a read-only view of the broker's own settings.

use std::collections::BTreeMap;

use ferry_core::ConfigOp;
use ferry_core::topic_config::ConfigType;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, alter_configs_response,
    incremental_alter_configs_response,
};
use kafka_protocol::protocol::StrBytes;

use crate::connection::Ctx;
use crate::errors::{kafka_error, message};
use crate::handlers::admin::config_source_code;

/// Kafka's ConfigResource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Kafka's AlterConfigOp types.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

fn type_code(t: ConfigType) -> i8 {
    // Kafka's ConfigType: STRING 2, INT 3, LONG 5, LIST 7.
    match t {
        ConfigType::String => 2,
        ConfigType::Int => 3,
        ConfigType::Long => 5,
        ConfigType::List => 7,
    }
}

fn entry(
    name: &str,
    value: String,
    source: i8,
    read_only: bool,
    config_type: i8,
    doc: Option<&str>,
) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(name.to_string()))
        .with_value(Some(StrBytes::from_string(value)))
        .with_read_only(read_only)
        .with_config_source(source)
        .with_config_type(config_type)
        .with_documentation(doc.map(|d| StrBytes::from_string(d.to_string())))
}

/// The broker's settings, which are static: they come from ferry.toml, the
/// environment or flags.
fn broker_entries(ctx: &Ctx, with_docs: bool) -> Vec<DescribeConfigsResourceResult> {
    let c = ctx.broker.config();
    let doc = |d: &'static str| with_docs.then_some(d);
    vec![
        entry(
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
            4,
            true,
            1,
            doc("Create a topic when a client produces to it or asks for its metadata."),
        ),
        entry(
            "broker.id",
            ctx.config.node_id.to_string(),
            4,
            true,
            3,
            doc("This broker's id."),
        ),
        entry(
            "log.retention.check.interval.ms",
            c.retention_check_interval_ms.to_string(),
            4,
            true,
            5,
            doc("How often retention runs."),
        ),
        entry(
            "num.partitions",
            c.default_partitions.to_string(),
            4,
            true,
            3,
            doc("Partitions of an auto-created topic."),
        ),
        entry(
            "socket.request.max.bytes",
            ctx.config.request_bytes_max.to_string(),
            4,
            true,
            3,
            doc("The largest request accepted."),
        ),
    ]
}

pub(crate) async fn describe(
    ctx: &Ctx,
    req: DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    let with_docs = req.include_documentation;
    for resource in req.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        let wanted = |name: &str| {
            resource
                .configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
        };
        match resource.resource_type {
            RESOURCE_TOPIC => match ctx.broker.describe_topic_configs(&resource.resource_name) {
                Ok(entries) => {
                    result.configs = entries
                        .into_iter()
                        .filter(|e| wanted(e.name))
                        .map(|e| {
                            entry(
                                e.name,
                                e.value,
                                config_source_code(e.source),
                                false,
                                type_code(e.config_type),
                                with_docs.then_some(e.doc),
                            )
                        })
                        .collect();
                }
                Err(e) => {
                    result.error_code = kafka_error(&e).code();
                    result.error_message = message(&e);
                }
            },
            RESOURCE_BROKER => {
                result.configs = broker_entries(ctx, with_docs)
                    .into_iter()
                    .filter(|e| wanted(&e.name))
                    .collect();
            }
            other => {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message =
                    message(&format!("config resource type {other} is not supported"));
            }
        }
        response.results.push(result);
    }
    response
}

/// Why a resource's configs cannot change, if they cannot.
fn alterable(resource_type: i8) -> Result<(), (ResponseError, String)> {
    match resource_type {
        RESOURCE_TOPIC => Ok(()),
        RESOURCE_BROKER => Err((
            ResponseError::InvalidRequest,
            "broker configs are static: set them in ferry.toml, FERRY_* variables or flags".into(),
        )),
        other => Err((
            ResponseError::InvalidRequest,
            format!("config resource type {other} is not supported"),
        )),
    }
}

pub(crate) async fn alter(
    ctx: &Ctx,
    req: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let mut response = AlterConfigsResponse::default();
    for resource in req.resources {
        let configs: BTreeMap<String, String> = resource
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        let outcome = alterable(resource.resource_type).and_then(|()| {
            ctx.broker
                .replace_topic_configs(&resource.resource_name, &configs, req.validate_only)
                .map_err(|e| (kafka_error(&e), e.to_string()))
        });
        let mut r = alter_configs_response::AlterConfigsResourceResponse::default();
        r.resource_type = resource.resource_type;
        r.resource_name = resource.resource_name;
        if let Err((code, text)) = outcome {
            r.error_code = code.code();
            r.error_message = message(&text);
        }
        response.responses.push(r);
    }
    response
}

pub(crate) async fn incremental_alter(
    ctx: &Ctx,
    req: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let mut response = IncrementalAlterConfigsResponse::default();
    for resource in req.resources {
        let ops: Result<Vec<ConfigOp>, (ResponseError, String)> = resource
            .configs
            .iter()
            .map(|c| {
                let name = c.name.to_string();
                let value = c.value.as_ref().map(|v| v.to_string());
                match (c.config_operation, value) {
                    (OP_DELETE, _) => Ok(ConfigOp::Delete(name)),
                    (OP_SET, Some(v)) => Ok(ConfigOp::Set(name, v)),
                    (OP_APPEND, Some(v)) => Ok(ConfigOp::Append(name, v)),
                    (OP_SUBTRACT, Some(v)) => Ok(ConfigOp::Subtract(name, v)),
                    (OP_SET | OP_APPEND | OP_SUBTRACT, None) => Err((
                        ResponseError::InvalidRequest,
                        format!("config '{name}' needs a value for this operation"),
                    )),
                    (op, _) => Err((
                        ResponseError::InvalidRequest,
                        format!("unknown config operation {op}"),
                    )),
                }
            })
            .collect();
        let outcome = alterable(resource.resource_type).and(ops).and_then(|ops| {
            ctx.broker
                .alter_topic_configs(&resource.resource_name, &ops, req.validate_only)
                .map_err(|e| (kafka_error(&e), e.to_string()))
        });
        let mut r = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
        r.resource_type = resource.resource_type;
        r.resource_name = resource.resource_name;
        if let Err((code, text)) = outcome {
            r.error_code = code.code();
            r.error_message = message(&text);
        }
        response.responses.push(r);
    }
    response
}
