//! Settings for `ferry serve`: built-in defaults, overridden by `ferry.toml`,
//! overridden by `FERRY_*` environment variables and flags (clap reads both;
//! a flag wins over its variable).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use ferry_core::access::{AccessControl, UserSpec};
use ferry_core::alarm::{MemoryLimit, ResourceLimits, parse_bytes};
use ferry_core::group::GroupConfig;
use serde::Deserialize;

use crate::http_listener::HttpLimits;

pub const DEFAULT_DATA_DIR: &str = "./ferry-data";
pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";
pub const DEFAULT_AMQP_LISTEN: &str = "127.0.0.1:5672";
pub const DEFAULT_SQS_LISTEN: &str = "127.0.0.1:9324";
/// Loopback only: the admin API's mutating endpoints have no authentication yet.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_SQS_REGION: &str = "us-east-1";
pub const DEFAULT_SQS_ACCOUNT_ID: &str = "000000000000";
/// Kafka's `fetch.max.bytes` default (55 MiB).
const DEFAULT_KAFKA_FETCH_BYTES_MAX: usize = 55 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `ferry serve` flags. Each one can also be set by the environment variable
/// named beside it, or in the TOML file given with `--config`.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML file with settings (see docs/configuration.md).
    #[arg(long, env = "FERRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where topics and the catalog are stored [default: ./ferry-data].
    #[arg(long, env = "FERRY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the Kafka listener binds, HOST:PORT [default: 127.0.0.1:9092]. Port 0 picks a free port.
    #[arg(long, env = "FERRY_KAFKA_LISTEN", value_name = "HOST:PORT")]
    pub kafka_listen: Option<String>,
    /// Address Kafka clients are told to connect to, HOST:PORT [default: the listen address].
    #[arg(long, env = "FERRY_KAFKA_ADVERTISED", value_name = "HOST:PORT")]
    pub kafka_advertised: Option<String>,
    /// Create topics that clients produce to or ask about [default: true].
    #[arg(long, env = "FERRY_AUTO_CREATE_TOPICS", value_name = "BOOL")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of a topic created without a count [default: 1].
    #[arg(long, env = "FERRY_DEFAULT_PARTITIONS", value_name = "N")]
    pub default_partitions: Option<u32>,
    /// Address the AMQP 0-9-1 listener binds, HOST:PORT [default: 127.0.0.1:5672]. Port 0 picks a free port.
    #[arg(long, env = "FERRY_AMQP_LISTEN", value_name = "HOST:PORT")]
    pub amqp_listen: Option<String>,
    /// Address the SQS HTTP listener binds, HOST:PORT [default: 127.0.0.1:9324]. Port 0 picks a free port.
    #[arg(long, env = "FERRY_SQS_LISTEN", value_name = "HOST:PORT")]
    pub sqs_listen: Option<String>,
    /// HOST:PORT put into SQS queue URLs [default: the Host header of each request].
    #[arg(long, env = "FERRY_SQS_ADVERTISED", value_name = "HOST:PORT")]
    pub sqs_advertised: Option<String>,
    /// Region in SQS queue ARNs [default: us-east-1].
    #[arg(long, env = "FERRY_SQS_REGION", value_name = "REGION")]
    pub sqs_region: Option<String>,
    /// Account id in SQS queue URLs and ARNs [default: 000000000000].
    #[arg(long, env = "FERRY_SQS_ACCOUNT_ID", value_name = "ID")]
    pub sqs_account_id: Option<String>,
    /// Address the admin HTTP listener (JSON API, /metrics) binds, HOST:PORT [default: 127.0.0.1:8080]. Port 0 picks a free port. It has no authentication yet: keep it on loopback.
    #[arg(long, env = "FERRY_HTTP_LISTEN", value_name = "HOST:PORT")]
    pub http_listen: Option<String>,
    /// Broker-wide topic config default, KEY=VALUE (e.g. fsync.policy=never); repeatable.
    #[arg(
        long = "topic-default",
        env = "FERRY_TOPIC_DEFAULTS",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub topic_defaults: Vec<String>,
    /// Largest Kafka request accepted, in bytes [default: 104857600].
    #[arg(long, env = "FERRY_KAFKA_REQUEST_BYTES_MAX", value_name = "BYTES")]
    pub kafka_request_bytes_max: Option<usize>,
    /// Open Kafka connections; more are closed as they are accepted [default: 10000].
    #[arg(long, env = "FERRY_KAFKA_CONNECTIONS_MAX", value_name = "N")]
    pub kafka_connections_max: Option<usize>,
    /// Close a Kafka connection that sends nothing for this long, in ms [default: 600000].
    #[arg(long, env = "FERRY_KAFKA_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub kafka_idle_timeout_ms: Option<u64>,
    /// Close a Kafka connection whose started request is not complete after this long, in ms [default: 30000].
    #[arg(long, env = "FERRY_KAFKA_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub kafka_request_timeout_ms: Option<u64>,
    /// Most record bytes in one Fetch response, whatever the client asks, in bytes [default: 57671680].
    #[arg(long, env = "FERRY_KAFKA_FETCH_BYTES_MAX", value_name = "BYTES")]
    pub kafka_fetch_bytes_max: Option<usize>,
    /// Bytes of Kafka requests read from all connections and not yet answered (mostly produce data waiting for its append and fsync); past it no connection is read until some are answered [default: 268435456].
    #[arg(
        long,
        env = "FERRY_KAFKA_QUEUED_REQUEST_BYTES_MAX",
        value_name = "BYTES"
    )]
    pub kafka_queued_request_bytes_max: Option<usize>,
    /// Open AMQP connections; more are closed as they are accepted [default: 10000].
    #[arg(long, env = "FERRY_AMQP_CONNECTIONS_MAX", value_name = "N")]
    pub amqp_connections_max: Option<usize>,
    /// Most channels per AMQP connection, as proposed in connection.tune [default: 2047].
    #[arg(long, env = "FERRY_AMQP_CHANNEL_MAX", value_name = "N")]
    pub amqp_channel_max: Option<u16>,
    /// Largest AMQP frame, as proposed in connection.tune, in bytes [default: 131072].
    #[arg(long, env = "FERRY_AMQP_FRAME_MAX", value_name = "BYTES")]
    pub amqp_frame_max: Option<u32>,
    /// Largest AMQP message body, in bytes [default: 134217728].
    #[arg(long, env = "FERRY_AMQP_MESSAGE_BYTES_MAX", value_name = "BYTES")]
    pub amqp_message_bytes_max: Option<u64>,
    /// AMQP heartbeat proposed to clients, in seconds; 0 proposes none [default: 60].
    #[arg(long, env = "FERRY_AMQP_HEARTBEAT_S", value_name = "SECONDS")]
    pub amqp_heartbeat_s: Option<u16>,
    /// Time from an AMQP connection's accept to connection.open, in ms [default: 10000].
    #[arg(long, env = "FERRY_AMQP_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
    pub amqp_handshake_timeout_ms: Option<u64>,
    /// Time the rest of an AMQP frame may take once its first byte arrived, in ms [default: 30000].
    #[arg(long, env = "FERRY_AMQP_FRAME_TIMEOUT_MS", value_name = "MS")]
    pub amqp_frame_timeout_ms: Option<u64>,
    /// Unacknowledged deliveries of an AMQP consumer with prefetch 0 [default: 65535].
    #[arg(long, env = "FERRY_AMQP_CONSUMER_UNACKED_MAX", value_name = "N")]
    pub amqp_consumer_unacked_max: Option<u32>,
    /// Consumers on one AMQP channel; one more gets connection.close 530 [default: 1024].
    #[arg(long, env = "FERRY_AMQP_CONSUMERS_PER_CHANNEL_MAX", value_name = "N")]
    pub amqp_consumers_per_channel_max: Option<usize>,
    /// Open SQS connections; more get a 503 and are closed [default: 1000].
    #[arg(long, env = "FERRY_SQS_CONNECTIONS_MAX", value_name = "N")]
    pub sqs_connections_max: Option<usize>,
    /// Largest SQS request body, in bytes [default: 4194304].
    #[arg(long, env = "FERRY_SQS_REQUEST_BYTES_MAX", value_name = "BYTES")]
    pub sqs_request_bytes_max: Option<usize>,
    /// Time an SQS connection has to send a request's headers, and the longest idle keep-alive, in ms [default: 60000].
    #[arg(long, env = "FERRY_SQS_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub sqs_idle_timeout_ms: Option<u64>,
    /// Time an SQS request's body has to arrive after its headers, in ms [default: 30000].
    #[arg(long, env = "FERRY_SQS_BODY_TIMEOUT_MS", value_name = "MS")]
    pub sqs_body_timeout_ms: Option<u64>,
    /// Open admin HTTP connections; more get a 503 and are closed [default: 100].
    #[arg(long, env = "FERRY_HTTP_CONNECTIONS_MAX", value_name = "N")]
    pub http_connections_max: Option<usize>,
    /// Time an admin HTTP connection has to send a request's headers, and the longest idle keep-alive, in ms [default: 60000].
    #[arg(long, env = "FERRY_HTTP_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub http_idle_timeout_ms: Option<u64>,
    /// Time an admin HTTP request's body has to arrive after its headers, in ms [default: 30000].
    #[arg(long, env = "FERRY_HTTP_BODY_TIMEOUT_MS", value_name = "MS")]
    pub http_body_timeout_ms: Option<u64>,
    /// Partitions of all topics together; creating more fails with INVALID_PARTITIONS [default: 10000].
    #[arg(long, env = "FERRY_PARTITIONS_MAX", value_name = "N")]
    pub partitions_max: Option<usize>,
    /// Queues (AMQP and SQS) per vhost; declaring more fails (AMQP 406, SQS OverLimit) [default: 10000].
    #[arg(long, env = "FERRY_QUEUES_PER_VHOST_MAX", value_name = "N")]
    pub queues_per_vhost_max: Option<usize>,
    /// Exchanges per vhost, the predeclared amq.* ones included; declaring more fails (AMQP 406) [default: 10000].
    #[arg(long, env = "FERRY_EXCHANGES_PER_VHOST_MAX", value_name = "N")]
    pub exchanges_per_vhost_max: Option<usize>,
    /// Bindings per vhost, of all exchanges together; binding more fails (AMQP 406) [default: 100000].
    #[arg(long, env = "FERRY_BINDINGS_PER_VHOST_MAX", value_name = "N")]
    pub bindings_per_vhost_max: Option<usize>,
    /// How often retention deletes old segments, in ms [default: 60000].
    #[arg(long, env = "FERRY_RETENTION_CHECK_INTERVAL_MS", value_name = "MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// How long an empty group's first rebalance waits for more members, in ms [default: 3000].
    #[arg(
        long,
        env = "FERRY_GROUP_INITIAL_REBALANCE_DELAY_MS",
        value_name = "MS"
    )]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Shortest consumer session timeout accepted, in ms [default: 6000].
    #[arg(long, env = "FERRY_GROUP_MIN_SESSION_TIMEOUT_MS", value_name = "MS")]
    pub group_min_session_timeout_ms: Option<u64>,
    /// Longest consumer session timeout accepted, in ms [default: 1800000].
    #[arg(long, env = "FERRY_GROUP_MAX_SESSION_TIMEOUT_MS", value_name = "MS")]
    pub group_max_session_timeout_ms: Option<u64>,
    /// How long committed offsets of a group without members are kept, in minutes [default: 10080].
    #[arg(long, env = "FERRY_OFFSETS_RETENTION_MINUTES", value_name = "MINUTES")]
    pub offsets_retention_minutes: Option<u64>,
    /// Log output: human or json [default: human].
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Raise the disk alarm (publishers blocked) when the data directory's filesystem has fewer free bytes; units like 1GB or 512MiB work [default: 50000000].
    #[arg(long, env = "FERRY_DISK_FREE_LIMIT", value_name = "BYTES")]
    pub disk_free_limit: Option<String>,
    /// Raise the memory alarm (publishers blocked) above this resident memory: bytes (1073741824, 1GiB) or a fraction of RAM (0.4) [default: 0.4].
    #[arg(
        long,
        env = "FERRY_MEMORY_HIGH_WATERMARK",
        value_name = "BYTES|FRACTION"
    )]
    pub memory_high_watermark: Option<String>,
}

/// The TOML file's shape. Unknown keys are errors, so a typo is reported
/// instead of silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    kafka: FileKafka,
    #[serde(default)]
    amqp: FileAmqp,
    #[serde(default)]
    sqs: FileSqs,
    #[serde(default)]
    http: FileHttp,
    #[serde(default)]
    topics: FileTopics,
    #[serde(default)]
    topic_defaults: BTreeMap<String, toml::Value>,
    #[serde(default)]
    groups: FileGroups,
    disk_free_limit: Option<toml::Value>,
    memory_high_watermark: Option<toml::Value>,
    queues_per_vhost_max: Option<usize>,
    exchanges_per_vhost_max: Option<usize>,
    bindings_per_vhost_max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGroups {
    initial_rebalance_delay_ms: Option<u64>,
    min_session_timeout_ms: Option<u64>,
    max_session_timeout_ms: Option<u64>,
    offsets_retention_minutes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKafka {
    listen: Option<String>,
    advertised: Option<String>,
    request_bytes_max: Option<usize>,
    connections_max: Option<usize>,
    idle_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    fetch_bytes_max: Option<usize>,
    queued_request_bytes_max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAmqp {
    listen: Option<String>,
    /// Vhosts to create at start (`/` is always there).
    vhosts: Option<Vec<String>>,
    /// Replace the default guest user when given.
    users: Option<Vec<UserSpec>>,
    /// Users allowed to connect from loopback addresses only.
    loopback_users: Option<Vec<String>>,
    connections_max: Option<usize>,
    channel_max: Option<u16>,
    frame_max: Option<u32>,
    message_bytes_max: Option<u64>,
    heartbeat_s: Option<u16>,
    handshake_timeout_ms: Option<u64>,
    frame_timeout_ms: Option<u64>,
    consumer_unacked_max: Option<u32>,
    consumers_per_channel_max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSqs {
    listen: Option<String>,
    advertised: Option<String>,
    region: Option<String>,
    account_id: Option<String>,
    connections_max: Option<usize>,
    request_bytes_max: Option<usize>,
    idle_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    listen: Option<String>,
    connections_max: Option<usize>,
    idle_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    /// Admin users and their passwords (`[http.admins] alice = "..."`):
    /// read from the file only, never from flags or the environment, where
    /// other processes could read them.
    admins: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTopics {
    auto_create: Option<bool>,
    default_partitions: Option<u32>,
    retention_check_interval_ms: Option<u64>,
    partitions_max: Option<usize>,
}

/// Every setting resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub kafka_listen: String,
    pub kafka_advertised: Option<String>,
    pub kafka_request_bytes_max: usize,
    pub kafka_connections_max: usize,
    pub kafka_idle_timeout: Duration,
    pub kafka_request_timeout: Duration,
    pub kafka_fetch_bytes_max: usize,
    pub kafka_queued_request_bytes_max: usize,
    pub amqp_listen: String,
    pub amqp_connections_max: usize,
    pub amqp_channel_max: u16,
    pub amqp_frame_max: u32,
    pub amqp_message_bytes_max: u64,
    pub amqp_heartbeat_s: u16,
    pub amqp_handshake_timeout: Duration,
    pub amqp_frame_timeout: Duration,
    pub amqp_consumer_unacked_max: u32,
    pub amqp_consumers_per_channel_max: usize,
    pub sqs_listen: String,
    pub sqs_advertised: Option<String>,
    pub sqs_region: String,
    pub sqs_account_id: String,
    pub sqs_request_bytes_max: usize,
    pub sqs_limits: HttpLimits,
    pub http_listen: String,
    pub http_limits: HttpLimits,
    /// Users allowed to change things through the admin API (none: the
    /// API is open, and the listener should stay on loopback).
    pub http_admins: BTreeMap<String, String>,
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    pub retention_check_interval_ms: u64,
    pub partitions_max: usize,
    pub queues_per_vhost_max: usize,
    pub exchanges_per_vhost_max: usize,
    pub bindings_per_vhost_max: usize,
    pub topic_defaults: BTreeMap<String, String>,
    pub groups: GroupConfig,
    pub log_format: LogFormat,
    /// Vhosts the AMQP front end offers (created at start).
    pub amqp_vhosts: Vec<String>,
    /// AMQP users and their vhost permissions.
    pub amqp_access: Arc<AccessControl>,
    /// Disk and memory alarms.
    pub resource_limits: ResourceLimits,
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn toml_scalar(key: &str, v: &toml::Value) -> anyhow::Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => {
            bail!("topic_defaults.\"{key}\" must be a string, integer or boolean, not {other}")
        }
    })
}

impl Settings {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut topic_defaults = BTreeMap::new();
        for (k, v) in &file.topic_defaults {
            topic_defaults.insert(k.clone(), toml_scalar(k, v)?);
        }
        for pair in &args.topic_defaults {
            let Some((k, v)) = pair.split_once('=') else {
                bail!("--topic-default takes KEY=VALUE, got '{pair}'");
            };
            topic_defaults.insert(k.trim().to_string(), v.trim().to_string());
        }
        let request_bytes_max = args
            .kafka_request_bytes_max
            .or(file.kafka.request_bytes_max)
            .unwrap_or(100 * 1024 * 1024);
        if request_bytes_max > i32::MAX as usize {
            bail!(
                "kafka request_bytes_max must be at most {} (Kafka sizes are 32-bit)",
                i32::MAX
            );
        }
        let kafka_fetch_bytes_max = pick(
            args.kafka_fetch_bytes_max,
            file.kafka.fetch_bytes_max,
            DEFAULT_KAFKA_FETCH_BYTES_MAX,
        );
        if !(1..=i32::MAX as usize).contains(&kafka_fetch_bytes_max) {
            bail!(
                "kafka fetch_bytes_max must be 1 to {} (Kafka sizes are 32-bit)",
                i32::MAX
            );
        }
        let amqp_frame_max = pick(args.amqp_frame_max, file.amqp.frame_max, 131_072);
        if amqp_frame_max < ferry_amqp::FRAME_MIN_SIZE {
            bail!(
                "amqp frame_max must be at least {} (AMQP 0-9-1's frame-min-size)",
                ferry_amqp::FRAME_MIN_SIZE
            );
        }
        let amqp_channel_max = pick(args.amqp_channel_max, file.amqp.channel_max, 2047);
        if amqp_channel_max == 0 {
            bail!("amqp channel_max must be at least 1");
        }
        let resource_limits = resource_limits(args, &file)?;
        let amqp_vhosts = amqp_vhosts(&file.amqp)?;
        let amqp_access = Arc::new(amqp_access(&file.amqp)?);
        Ok(Settings {
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            kafka_listen: args
                .kafka_listen
                .clone()
                .or(file.kafka.listen)
                .unwrap_or_else(|| DEFAULT_KAFKA_LISTEN.to_string()),
            kafka_advertised: args.kafka_advertised.clone().or(file.kafka.advertised),
            kafka_request_bytes_max: request_bytes_max,
            kafka_connections_max: connections_max(
                "kafka",
                args.kafka_connections_max,
                file.kafka.connections_max,
                10_000,
            )?,
            kafka_idle_timeout: timeout(
                "kafka idle_timeout_ms",
                args.kafka_idle_timeout_ms,
                file.kafka.idle_timeout_ms,
                600_000,
            )?,
            kafka_request_timeout: timeout(
                "kafka request_timeout_ms",
                args.kafka_request_timeout_ms,
                file.kafka.request_timeout_ms,
                30_000,
            )?,
            kafka_fetch_bytes_max,
            kafka_queued_request_bytes_max: pick(
                args.kafka_queued_request_bytes_max,
                file.kafka.queued_request_bytes_max,
                256 << 20,
            ),
            amqp_connections_max: connections_max(
                "amqp",
                args.amqp_connections_max,
                file.amqp.connections_max,
                10_000,
            )?,
            amqp_channel_max,
            amqp_frame_max,
            amqp_message_bytes_max: pick(
                args.amqp_message_bytes_max,
                file.amqp.message_bytes_max,
                128 * 1024 * 1024,
            ),
            amqp_heartbeat_s: pick(args.amqp_heartbeat_s, file.amqp.heartbeat_s, 60),
            amqp_handshake_timeout: timeout(
                "amqp handshake_timeout_ms",
                args.amqp_handshake_timeout_ms,
                file.amqp.handshake_timeout_ms,
                10_000,
            )?,
            amqp_frame_timeout: timeout(
                "amqp frame_timeout_ms",
                args.amqp_frame_timeout_ms,
                file.amqp.frame_timeout_ms,
                30_000,
            )?,
            amqp_consumer_unacked_max: pick(
                args.amqp_consumer_unacked_max,
                file.amqp.consumer_unacked_max,
                u32::from(u16::MAX),
            ),
            amqp_consumers_per_channel_max: pick(
                args.amqp_consumers_per_channel_max,
                file.amqp.consumers_per_channel_max,
                1024,
            ),
            amqp_listen: args
                .amqp_listen
                .clone()
                .or(file.amqp.listen)
                .unwrap_or_else(|| DEFAULT_AMQP_LISTEN.to_string()),
            sqs_listen: args
                .sqs_listen
                .clone()
                .or(file.sqs.listen)
                .unwrap_or_else(|| DEFAULT_SQS_LISTEN.to_string()),
            sqs_advertised: args.sqs_advertised.clone().or(file.sqs.advertised),
            sqs_region: args
                .sqs_region
                .clone()
                .or(file.sqs.region)
                .unwrap_or_else(|| DEFAULT_SQS_REGION.to_string()),
            sqs_account_id: args
                .sqs_account_id
                .clone()
                .or(file.sqs.account_id)
                .unwrap_or_else(|| DEFAULT_SQS_ACCOUNT_ID.to_string()),
            sqs_request_bytes_max: pick(
                args.sqs_request_bytes_max,
                file.sqs.request_bytes_max,
                4 * 1024 * 1024,
            ),
            sqs_limits: HttpLimits {
                connections_max: connections_max(
                    "sqs",
                    args.sqs_connections_max,
                    file.sqs.connections_max,
                    1000,
                )?,
                idle_timeout: timeout(
                    "sqs idle_timeout_ms",
                    args.sqs_idle_timeout_ms,
                    file.sqs.idle_timeout_ms,
                    60_000,
                )?,
                body_timeout: timeout(
                    "sqs body_timeout_ms",
                    args.sqs_body_timeout_ms,
                    file.sqs.body_timeout_ms,
                    30_000,
                )?,
            },
            http_listen: args
                .http_listen
                .clone()
                .or(file.http.listen)
                .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.to_string()),
            http_limits: HttpLimits {
                connections_max: connections_max(
                    "http",
                    args.http_connections_max,
                    file.http.connections_max,
                    100,
                )?,
                idle_timeout: timeout(
                    "http idle_timeout_ms",
                    args.http_idle_timeout_ms,
                    file.http.idle_timeout_ms,
                    60_000,
                )?,
                body_timeout: timeout(
                    "http body_timeout_ms",
                    args.http_body_timeout_ms,
                    file.http.body_timeout_ms,
                    30_000,
                )?,
            },
            http_admins: file.http.admins.unwrap_or_default(),
            auto_create_topics: args
                .auto_create_topics
                .or(file.topics.auto_create)
                .unwrap_or(true),
            default_partitions: args
                .default_partitions
                .or(file.topics.default_partitions)
                .unwrap_or(1),
            retention_check_interval_ms: args
                .retention_check_interval_ms
                .or(file.topics.retention_check_interval_ms)
                .unwrap_or(60_000),
            partitions_max: pick(args.partitions_max, file.topics.partitions_max, 10_000),
            queues_per_vhost_max: pick(
                args.queues_per_vhost_max,
                file.queues_per_vhost_max,
                10_000,
            ),
            exchanges_per_vhost_max: pick(
                args.exchanges_per_vhost_max,
                file.exchanges_per_vhost_max,
                10_000,
            ),
            bindings_per_vhost_max: pick(
                args.bindings_per_vhost_max,
                file.bindings_per_vhost_max,
                100_000,
            ),
            topic_defaults,
            groups: group_config(args, &file.groups)?,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            resource_limits,
            amqp_vhosts,
            amqp_access,
        })
    }
}

/// A flag, else the file's value, else the default.
fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

fn connections_max(
    listener: &str,
    flag: Option<usize>,
    file: Option<usize>,
    default: usize,
) -> anyhow::Result<usize> {
    let max = pick(flag, file, default);
    if max == 0 {
        bail!("{listener} connections_max must be at least 1");
    }
    Ok(max)
}

fn timeout(
    name: &str,
    flag: Option<u64>,
    file: Option<u64>,
    default_ms: u64,
) -> anyhow::Result<Duration> {
    let ms = pick(flag, file, default_ms);
    if ms == 0 {
        bail!("{name} must be at least 1 ms");
    }
    Ok(Duration::from_millis(ms))
}

fn amqp_vhosts(file: &FileAmqp) -> anyhow::Result<Vec<String>> {
    let vhosts = file.vhosts.clone().unwrap_or_else(|| vec!["/".to_string()]);
    for v in &vhosts {
        if v.is_empty() || v.len() > 255 {
            bail!("[amqp] vhosts: '{v}' must be 1 to 255 bytes long");
        }
    }
    Ok(vhosts)
}

/// `[[amqp.users]]`, or RabbitMQ's default guest user when none are given.
fn amqp_access(file: &FileAmqp) -> anyhow::Result<AccessControl> {
    let users = file
        .users
        .clone()
        .unwrap_or_else(|| vec![UserSpec::guest()]);
    let vhosts = amqp_vhosts(file)?;
    for u in &users {
        for v in u.permissions.keys() {
            // "/" always exists in the engine.
            if v != "/" && !vhosts.contains(v) {
                bail!(
                    "[[amqp.users]] '{}' has permissions on vhost '{v}', which [amqp] vhosts does not list",
                    u.name
                );
            }
        }
    }
    let loopback = file
        .loopback_users
        .clone()
        .unwrap_or_else(|| vec!["guest".to_string()]);
    AccessControl::new(users, loopback).context("[[amqp.users]]")
}

fn resource_limits(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<ResourceLimits> {
    let mut limits = ResourceLimits::default();
    if let Some(flag) = &args.disk_free_limit {
        limits.disk_free_limit =
            parse_bytes(flag).map_err(|e| anyhow::anyhow!("--disk-free-limit: {e}"))?;
    } else if let Some(v) = &file.disk_free_limit {
        limits.disk_free_limit = match v {
            toml::Value::Integer(i) if *i >= 0 => *i as u64,
            toml::Value::String(s) => {
                parse_bytes(s).map_err(|e| anyhow::anyhow!("disk_free_limit: {e}"))?
            }
            other => {
                bail!("disk_free_limit must be a byte count (50000000 or \"50MB\"), not {other}")
            }
        };
    }
    if let Some(flag) = &args.memory_high_watermark {
        limits.memory_high_watermark = MemoryLimit::parse(flag)
            .map_err(|e| anyhow::anyhow!("--memory-high-watermark: {e}"))?;
    } else if let Some(v) = &file.memory_high_watermark {
        limits.memory_high_watermark = match v {
            toml::Value::Integer(i) if *i >= 0 => MemoryLimit::Absolute(*i as u64),
            toml::Value::Float(f) if (0.0..=1.0).contains(f) => MemoryLimit::Relative(*f),
            toml::Value::String(s) => {
                MemoryLimit::parse(s).map_err(|e| anyhow::anyhow!("memory_high_watermark: {e}"))?
            }
            other => bail!(
                "memory_high_watermark must be bytes (1073741824, \"1GiB\") or a fraction of RAM (0.4), not {other}"
            ),
        };
    }
    Ok(limits)
}

fn group_config(args: &ServeArgs, file: &FileGroups) -> anyhow::Result<GroupConfig> {
    let defaults = GroupConfig::default();
    let ms = |flag: Option<u64>, file: Option<u64>, default: Duration| {
        flag.or(file).map(Duration::from_millis).unwrap_or(default)
    };
    let config = GroupConfig {
        initial_rebalance_delay: ms(
            args.group_initial_rebalance_delay_ms,
            file.initial_rebalance_delay_ms,
            defaults.initial_rebalance_delay,
        ),
        session_timeout_min: ms(
            args.group_min_session_timeout_ms,
            file.min_session_timeout_ms,
            defaults.session_timeout_min,
        ),
        session_timeout_max: ms(
            args.group_max_session_timeout_ms,
            file.max_session_timeout_ms,
            defaults.session_timeout_max,
        ),
        offsets_retention: args
            .offsets_retention_minutes
            .or(file.offsets_retention_minutes)
            .map(|m| Duration::from_secs(m * 60))
            .unwrap_or(defaults.offsets_retention),
    };
    if config.session_timeout_min > config.session_timeout_max {
        bail!(
            "--group-min-session-timeout-ms ({} ms) is above --group-max-session-timeout-ms ({} ms)",
            config.session_timeout_min.as_millis(),
            config.session_timeout_max.as_millis()
        );
    }
    Ok(config)
}

/// Splits `HOST:PORT` (IPv6 hosts in brackets).
pub fn split_host_port(addr: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("'{addr}' is not HOST:PORT"))?;
    let port = port
        .parse::<u16>()
        .with_context(|| format!("'{port}' in '{addr}' is not a port number"))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(
            &path,
            r#"
data_dir = "/from/file"
[kafka]
listen = "0.0.0.0:1111"
[amqp]
listen = "0.0.0.0:5673"
[topics]
default_partitions = 3
[topic_defaults]
"retention.ms" = 1000
"fsync.policy" = "never"
"#,
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            kafka_listen: Some("127.0.0.1:2222".into()),
            topic_defaults: vec!["retention.ms=5".into()],
            ..ServeArgs::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from/file"));
        assert_eq!(s.kafka_listen, "127.0.0.1:2222");
        assert_eq!(s.amqp_listen, "0.0.0.0:5673");
        let default = Settings::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(default.amqp_listen, DEFAULT_AMQP_LISTEN);
        assert_eq!(s.default_partitions, 3);
        assert!(s.auto_create_topics);
        assert_eq!(s.topic_defaults["retention.ms"], "5");
        assert_eq!(s.topic_defaults["fsync.policy"], "never");
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "[kafka]\nlisten_addr = \"x\"\n").unwrap();
        let err = Settings::resolve(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("listen_addr"), "{err:#}");
    }

    #[test]
    fn users_vhosts_and_alarms_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(
            &path,
            r#"
disk_free_limit = "1GB"
memory_high_watermark = 0.5
[amqp]
vhosts = ["/", "orders"]
loopback_users = []
[[amqp.users]]
name = "app"
password = "pw"
tags = ["impersonator"]
permissions."orders" = { configure = "^orders\\.", write = ".*", read = ".*" }
[[amqp.users]]
name = "admin"
password_hash = "y4xPTRVfzXg68sz9ALqeQzARam3CwnGo53xS752cDV5+Utzh"
[amqp.users.permissions."/"]
configure = ".*"
write = ".*"
read = ".*"
"#,
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.amqp_vhosts, ["/", "orders"]);
        assert_eq!(s.resource_limits.disk_free_limit, 1_000_000_000);
        assert_eq!(
            s.resource_limits.memory_high_watermark,
            MemoryLimit::Relative(0.5)
        );
        let remote: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let a = &s.amqp_access;
        assert!(a.authenticate("app", "pw", remote).is_ok());
        assert!(a.authenticate("admin", "1", remote).is_ok());
        assert!(a.authenticate("guest", "guest", remote).is_err());
        assert!(a.check_vhost_access("app", "orders").is_ok());
        assert!(a.check_vhost_access("app", "/").is_err());
        // Flags win over the file.
        let s = Settings::resolve(&ServeArgs {
            disk_free_limit: Some("123".into()),
            memory_high_watermark: Some("2GiB".into()),
            ..args
        })
        .unwrap();
        assert_eq!(s.resource_limits.disk_free_limit, 123);
        assert_eq!(
            s.resource_limits.memory_high_watermark,
            MemoryLimit::Absolute(2 << 30)
        );
        // Defaults: guest on "/", RabbitMQ's limits.
        let d = Settings::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(d.amqp_vhosts, ["/"]);
        assert_eq!(d.resource_limits, ResourceLimits::default());
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert!(d.amqp_access.authenticate("guest", "guest", local).is_ok());
        assert!(
            d.amqp_access
                .authenticate("guest", "guest", remote)
                .is_err()
        );
    }

    #[test]
    fn bad_users_and_limits_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        let err = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let e = Settings::resolve(&ServeArgs {
                config: Some(path.clone()),
                ..ServeArgs::default()
            })
            .unwrap_err();
            format!("{e:#}")
        };
        let e = err(
            "[[amqp.users]]\nname = \"u\"\npassword = \"p\"\npermissions.other = { configure = \"\", write = \"\", read = \"\" }\n",
        );
        assert!(e.contains("vhost 'other'"), "{e}");
        let e = err("[[amqp.users]]\nname = \"u\"\n");
        assert!(e.contains("password"), "{e}");
        let e = err("[[amqp.users]]\nname = \"u\"\npassword = \"p\"\npasword = \"typo\"\n");
        assert!(e.contains("pasword"), "{e}");
        let e = err("memory_high_watermark = 1.5\n");
        assert!(e.contains("memory_high_watermark"), "{e}");
        let e = err("disk_free_limit = \"lots\"\n");
        assert!(e.contains("disk_free_limit"), "{e}");
        let e = Settings::resolve(&ServeArgs {
            disk_free_limit: Some("5 parsecs".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("--disk-free-limit"), "{e:#}");
    }

    #[test]
    fn sqs_settings_from_flags_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(
            &path,
            "[sqs]\nlisten = \"0.0.0.0:9999\"\nregion = \"eu-west-1\"\naccount_id = \"123456789012\"\n",
        )
        .unwrap();
        let s = Settings::resolve(&ServeArgs {
            config: Some(path),
            sqs_advertised: Some("sqs.example:80".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(s.sqs_listen, "0.0.0.0:9999");
        assert_eq!(s.sqs_region, "eu-west-1");
        assert_eq!(s.sqs_account_id, "123456789012");
        assert_eq!(s.sqs_advertised.as_deref(), Some("sqs.example:80"));
        let d = Settings::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(d.sqs_listen, DEFAULT_SQS_LISTEN);
        assert_eq!(d.sqs_account_id, DEFAULT_SQS_ACCOUNT_ID);
        assert_eq!(d.sqs_advertised, None);
    }

    #[test]
    fn http_listen_from_flag_file_and_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "[http]\nlisten = \"127.0.0.1:9999\"\n").unwrap();
        let from_file = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        assert_eq!(
            Settings::resolve(&from_file).unwrap().http_listen,
            "127.0.0.1:9999"
        );
        let flag = ServeArgs {
            http_listen: Some("127.0.0.1:0".into()),
            ..from_file
        };
        assert_eq!(Settings::resolve(&flag).unwrap().http_listen, "127.0.0.1:0");
        let d = Settings::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(d.http_listen, DEFAULT_HTTP_LISTEN);
    }

    #[test]
    fn listener_limits_from_flags_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(
            &path,
            "queues_per_vhost_max = 7\nexchanges_per_vhost_max = 8\nbindings_per_vhost_max = 12\n[topics]\npartitions_max = 9\n\
             [kafka]\nconnections_max = 50\nidle_timeout_ms = 1000\n\
             [amqp]\nchannel_max = 16\nframe_max = 8192\nconsumer_unacked_max = 10\nconsumers_per_channel_max = 3\n\
             [sqs]\nbody_timeout_ms = 500\n[http]\nconnections_max = 5\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            kafka_connections_max: Some(60),
            ..ServeArgs::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.kafka_connections_max, 60);
        assert_eq!(s.kafka_idle_timeout, Duration::from_secs(1));
        assert_eq!(s.kafka_request_timeout, Duration::from_secs(30));
        assert_eq!((s.amqp_channel_max, s.amqp_frame_max), (16, 8192));
        assert_eq!(s.amqp_consumer_unacked_max, 10);
        assert_eq!(s.amqp_consumers_per_channel_max, 3);
        assert_eq!(s.sqs_limits.body_timeout, Duration::from_millis(500));
        assert_eq!(s.sqs_limits.connections_max, 1000);
        assert_eq!(s.http_limits.connections_max, 5);
        assert_eq!((s.partitions_max, s.queues_per_vhost_max), (9, 7));
        assert_eq!(
            (s.exchanges_per_vhost_max, s.bindings_per_vhost_max),
            (8, 12)
        );
        let d = Settings::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(d.amqp_connections_max, 10_000);
        assert_eq!(d.kafka_fetch_bytes_max, 55 << 20);
        assert_eq!(d.kafka_queued_request_bytes_max, 256 << 20);
        assert_eq!(d.amqp_consumer_unacked_max, 65535);
        assert_eq!(d.amqp_consumers_per_channel_max, 1024);
        assert_eq!((d.partitions_max, d.queues_per_vhost_max), (10_000, 10_000));
        assert_eq!(
            (d.exchanges_per_vhost_max, d.bindings_per_vhost_max),
            (10_000, 100_000)
        );

        let err = |args: ServeArgs| format!("{:#}", Settings::resolve(&args).unwrap_err());
        let e = err(ServeArgs {
            amqp_frame_max: Some(100),
            ..ServeArgs::default()
        });
        assert!(e.contains("frame_max"), "{e}");
        let e = err(ServeArgs {
            sqs_connections_max: Some(0),
            ..ServeArgs::default()
        });
        assert!(e.contains("sqs connections_max"), "{e}");
        let e = err(ServeArgs {
            http_idle_timeout_ms: Some(0),
            ..ServeArgs::default()
        });
        assert!(e.contains("http idle_timeout_ms"), "{e}");
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("127.0.0.1:9092").unwrap(),
            ("127.0.0.1".into(), 9092)
        );
        assert_eq!(split_host_port("[::1]:9092").unwrap(), ("::1".into(), 9092));
        assert!(split_host_port("nohost").is_err());
        assert!(split_host_port("h:99999").is_err());
    }
}
