//! `ferry topic create|list|describe|delete|alter-config`.

use clap::{Args, Subcommand};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest,
};
use serde_json::{Value, json};

use super::ClientArgs;
use super::client::{Client, EARLIEST, LATEST, str_bytes, topic_name};
use super::error::{CliError, Result, error_name};
use super::output::{Table, key_value, print, print_json};

/// Kafka's ConfigResource type for topics.
const RESOURCE_TOPIC: i8 = 2;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

#[derive(Debug, Args)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct TopicArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: TopicAction,
}

#[derive(Debug, Subcommand)]
pub enum TopicAction {
    /// Create one or more topics.
    #[command(after_help = "Examples:\n  \
ferry topic create orders -p 3 -c retention.ms=86400000\n  \
ferry topic create logs metrics --partitions 6")]
    Create {
        /// Names of the topics to create.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Partitions per topic [default: the broker's default].
        #[arg(short = 'p', long, value_name = "N")]
        partitions: Option<i32>,
        /// Replicas per partition [default: the broker's default].
        #[arg(short = 'r', long, value_name = "N")]
        replication_factor: Option<i16>,
        /// Topic config KEY=VALUE (e.g. retention.ms=86400000); repeatable.
        #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Let the broker check the request without creating anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// List topics with their partition and replica counts.
    List,
    /// Show a topic's partitions (leader, log start offset, high watermark)
    /// and its configs with where each value comes from.
    Describe {
        /// The topic.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Delete topics and all their records.
    Delete {
        /// Names of the topics to delete.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Set or remove topic configs (removed keys go back to the default).
    #[command(after_help = "Example:\n  \
ferry topic alter-config orders --set retention.ms=3600000 --delete cleanup.policy")]
    AlterConfig {
        /// The topic.
        #[arg(value_name = "NAME")]
        name: String,
        /// Set KEY to VALUE; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Remove KEY's override, so the default applies again; repeatable.
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
        /// Let the broker check the change without applying it.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(args: TopicArgs) -> Result<()> {
    let json = args.client.json;
    // Flags are checked before connecting: a usage error is exit 1 even
    // when no broker is up.
    if let TopicAction::Create { configs, .. } = &args.action {
        for c in configs {
            key_value(c, "--config")?;
        }
    }
    if let TopicAction::AlterConfig { set, delete, .. } = &args.action {
        if set.is_empty() && delete.is_empty() {
            return Err(CliError::local(
                "alter-config needs at least one --set KEY=VALUE or --delete KEY",
            ));
        }
        for s in set {
            key_value(s, "--set")?;
        }
    }
    let mut client = Client::connect(&args.client.options()).await?;
    match args.action {
        TopicAction::Create {
            names,
            partitions,
            replication_factor,
            configs,
            dry_run,
        } => {
            create(
                &mut client,
                json,
                names,
                partitions,
                replication_factor,
                configs,
                dry_run,
            )
            .await
        }
        TopicAction::List => list(&mut client, json).await,
        TopicAction::Describe { name } => describe(&mut client, json, &name).await,
        TopicAction::Delete { names } => delete_topics(&mut client, json, names).await,
        TopicAction::AlterConfig {
            name,
            set,
            delete,
            dry_run,
        } => alter_config(&mut client, json, &name, set, delete, dry_run).await,
    }
}

/// Prints every error but the last and returns the last (or Ok).
pub fn report(mut errors: Vec<CliError>) -> Result<()> {
    let last = errors.pop();
    for e in errors {
        eprintln!("{e}");
    }
    last.map_or(Ok(()), Err)
}

pub fn error_json(code: i16, message: Option<&str>) -> Value {
    if code == 0 {
        return Value::Null;
    }
    json!({"code": code, "name": error_name(code), "message": message})
}

async fn create(
    client: &mut Client,
    json: bool,
    names: Vec<String>,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: Vec<String>,
    dry_run: bool,
) -> Result<()> {
    let mut pairs = Vec::new();
    for c in &configs {
        pairs.push(key_value(c, "--config")?);
    }
    let mut req = CreateTopicsRequest::default();
    req.timeout_ms = client.opts.timeout.as_millis() as i32;
    req.validate_only = dry_run;
    req.topics = names
        .iter()
        .map(|n| {
            let mut t = CreatableTopic::default();
            t.name = topic_name(n);
            t.num_partitions = partitions.unwrap_or(-1);
            t.replication_factor = replication_factor.unwrap_or(-1);
            t.configs = pairs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(str_bytes(k))
                        .with_value(Some(str_bytes(v)))
                })
                .collect();
            t
        })
        .collect();
    let resp = client.controller().await?.call(&req).await?;
    let mut table = Table::new(&["TOPIC", "PARTITIONS", "REPLICATION-FACTOR", "STATUS"]);
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for t in &resp.topics {
        let name = t.name.0.to_string();
        // Before v5 the response has no counts: echo what was asked.
        let parts = if t.num_partitions > 0 {
            t.num_partitions
        } else {
            partitions.unwrap_or(-1)
        };
        let rf = if t.replication_factor > 0 {
            t.replication_factor
        } else {
            replication_factor.unwrap_or(-1)
        };
        let shown = |n: i64| {
            if n > 0 {
                n.to_string()
            } else {
                "default".to_string()
            }
        };
        rows.push(json!({
            "name": name,
            "partitions": (parts > 0).then_some(parts),
            "replication_factor": (rf > 0).then_some(rf),
            "created": t.error_code == 0 && !dry_run,
            "error": error_json(t.error_code, t.error_message.as_deref()),
        }));
        if t.error_code == 0 {
            table.row([
                name,
                shown(parts.into()),
                shown(rf.into()),
                if dry_run {
                    "valid (dry run)"
                } else {
                    "created"
                }
                .to_string(),
            ]);
        } else {
            let mut err = CliError::refused(
                format!("create topic {name:?}"),
                t.error_code,
                t.error_message.as_deref(),
            );
            if t.error_code == 36 {
                err = err.with_hint(format!(
                    "`ferry topic describe {name}` shows it; to recreate it, delete it first with `ferry topic delete {name}`"
                ));
            }
            errors.push(err);
        }
    }
    if json {
        print_json(&Value::Array(rows));
    } else if !table.is_empty() {
        print(&table.render());
    }
    report(errors)
}

async fn list(client: &mut Client, json: bool) -> Result<()> {
    let resp = client.metadata(None, false).await?;
    let mut topics: Vec<_> = resp
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| (n.0.to_string(), t)))
        .collect();
    topics.sort_by(|a, b| a.0.cmp(&b.0));
    if json {
        let rows: Vec<Value> = topics
            .iter()
            .map(|(name, t)| {
                json!({
                    "name": name,
                    "id": t.topic_id.to_string(),
                    "partitions": t.partitions.len(),
                    "replicas": t.partitions.iter().map(|p| p.replica_nodes.len()).max().unwrap_or(0),
                    "internal": t.is_internal,
                })
            })
            .collect();
        print_json(&Value::Array(rows));
        return Ok(());
    }
    let mut table = Table::new(&["NAME", "PARTITIONS", "REPLICAS"]);
    for (name, t) in &topics {
        table.row([
            name.clone(),
            t.partitions.len().to_string(),
            t.partitions
                .iter()
                .map(|p| p.replica_nodes.len())
                .max()
                .unwrap_or(0)
                .to_string(),
        ]);
    }
    print(&table.render());
    Ok(())
}

/// Kafka's names for DescribeConfigs' config_source.
fn source_name(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

fn join_ids(ids: &[i32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

async fn describe(client: &mut Client, json: bool, name: &str) -> Result<()> {
    let topic = client.topic(name, false).await?;
    let mut req = DescribeConfigsRequest::default();
    req.resources = vec![
        DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(str_bytes(name))
            .with_configuration_keys(None),
    ];
    let resp = client.any().call(&req).await?;
    let mut configs = Vec::new();
    for r in resp.results {
        if r.error_code != 0 {
            return Err(CliError::refused(
                format!("describe the configs of topic {name:?}"),
                r.error_code,
                r.error_message.as_deref(),
            ));
        }
        for c in r.configs {
            configs.push((
                c.name.to_string(),
                c.value.map(|v| v.to_string()),
                c.config_source,
                c.read_only,
                c.is_sensitive,
            ));
        }
    }
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    let all: Vec<i32> = topic.partitions.iter().map(|p| p.partition).collect();
    let wanted = |ts: i64| all.iter().map(|&p| (p, ts)).collect::<Vec<_>>();
    let starts = client.list_offsets(&topic, &wanted(EARLIEST)).await?;
    let ends = client.list_offsets(&topic, &wanted(LATEST)).await?;
    let offset =
        |m: &std::collections::BTreeMap<i32, (i64, i64)>, p: i32| m.get(&p).map_or(-1, |o| o.0);
    let replicas = topic
        .partitions
        .iter()
        .map(|p| p.replicas.len())
        .max()
        .unwrap_or(0);

    if json {
        print_json(&json!({
            "name": topic.name,
            "id": topic.id,
            "internal": topic.internal,
            "partitions": topic.partitions.iter().map(|p| json!({
                "partition": p.partition,
                "leader": p.leader,
                "replicas": p.replicas,
                "isr": p.isr,
                "log_start_offset": offset(&starts, p.partition),
                "high_watermark": offset(&ends, p.partition),
            })).collect::<Vec<_>>(),
            "configs": configs.iter().map(|(k, v, source, read_only, sensitive)| json!({
                "name": k,
                "value": v,
                "source": source_name(*source),
                "read_only": read_only,
                "sensitive": sensitive,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let mut summary = Table::plain();
    summary.row(["NAME", name]);
    summary.row(["PARTITIONS", &topic.partitions.len().to_string()]);
    summary.row(["REPLICAS", &replicas.to_string()]);
    let mut config_table = Table::new(&["KEY", "VALUE", "SOURCE"]);
    for (k, v, source, _, sensitive) in &configs {
        let value = match v {
            Some(v) => v.clone(),
            None if *sensitive => "(sensitive)".into(),
            None => "-".into(),
        };
        config_table.row([k.clone(), value, source_name(*source).to_string()]);
    }
    let mut parts = Table::new(&[
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "IN-SYNC",
        "LOG-START-OFFSET",
        "HIGH-WATERMARK",
    ]);
    for p in &topic.partitions {
        parts.row([
            p.partition.to_string(),
            p.leader.to_string(),
            join_ids(&p.replicas),
            join_ids(&p.isr),
            offset(&starts, p.partition).to_string(),
            offset(&ends, p.partition).to_string(),
        ]);
    }
    print(&format!(
        "{}\nPARTITIONS\n{}\nCONFIGS\n{}",
        summary.render(),
        parts.render(),
        config_table.render()
    ));
    Ok(())
}

async fn delete_topics(client: &mut Client, json: bool, names: Vec<String>) -> Result<()> {
    let mut req = DeleteTopicsRequest::default();
    req.timeout_ms = client.opts.timeout.as_millis() as i32;
    let conn = client.controller().await?;
    let version = conn.version::<DeleteTopicsRequest>()?;
    if version >= 6 {
        req.topics = names
            .iter()
            .map(|n| DeleteTopicState::default().with_name(Some(topic_name(n))))
            .collect();
    } else {
        req.topic_names = names.iter().map(|n| topic_name(n)).collect();
    }
    let timeout = client.opts.timeout;
    let resp = client
        .controller()
        .await?
        .call_version(&req, version, timeout)
        .await?;
    let mut table = Table::new(&["TOPIC", "STATUS"]);
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for r in resp.responses {
        let name = r.name.map(|n| n.0.to_string()).unwrap_or_default();
        rows.push(json!({
            "name": name,
            "deleted": r.error_code == 0,
            "error": error_json(r.error_code, r.error_message.as_deref()),
        }));
        if r.error_code == 0 {
            table.row([name, "deleted".into()]);
        } else {
            errors.push(CliError::refused(
                format!("delete topic {name:?}"),
                r.error_code,
                r.error_message.as_deref(),
            ));
        }
    }
    if json {
        print_json(&Value::Array(rows));
    } else if !table.is_empty() {
        print(&table.render());
    }
    report(errors)
}

async fn alter_config(
    client: &mut Client,
    json: bool,
    name: &str,
    set: Vec<String>,
    delete: Vec<String>,
    dry_run: bool,
) -> Result<()> {
    let mut ops = Vec::new();
    for s in &set {
        let (k, v) = key_value(s, "--set")?;
        ops.push((k, OP_SET, Some(v)));
    }
    for k in &delete {
        ops.push((k.clone(), OP_DELETE, None));
    }
    let mut req = IncrementalAlterConfigsRequest::default();
    req.validate_only = dry_run;
    let mut resource = AlterConfigsResource::default();
    resource.resource_type = RESOURCE_TOPIC;
    resource.resource_name = str_bytes(name);
    resource.configs = ops
        .iter()
        .map(|(k, op, v)| {
            AlterableConfig::default()
                .with_name(str_bytes(k))
                .with_config_operation(*op)
                .with_value(v.as_deref().map(str_bytes))
        })
        .collect();
    req.resources = vec![resource];
    let resp = client.controller().await?.call(&req).await?;
    for r in &resp.responses {
        if r.error_code != 0 {
            let mut err = CliError::refused(
                format!("alter the configs of topic {name:?}"),
                r.error_code,
                r.error_message.as_deref(),
            );
            if r.error_code == 3 {
                err = err.with_hint("`ferry topic list` shows the topics that exist");
            }
            return Err(err);
        }
    }
    if json {
        print_json(&json!({
            "name": name,
            "dry_run": dry_run,
            "set": ops.iter().filter(|o| o.1 == OP_SET).map(|(k, _, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "deleted": delete,
        }));
        return Ok(());
    }
    let mut table = Table::new(&["KEY", "CHANGE", "VALUE"]);
    for (k, op, v) in &ops {
        let change = match (*op, dry_run) {
            (OP_SET, false) => "set",
            (OP_SET, true) => "would set",
            (_, false) => "deleted",
            (_, true) => "would delete",
        };
        table.row([k.clone(), change.to_string(), v.clone().unwrap_or_default()]);
    }
    print(&table.render());
    Ok(())
}
