//! Errors of the broker model. Each front end maps every variant to its
//! protocol's code in one function.

use ferry_log::LogError;
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error)]
pub enum CoreError {
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("no topic has id {0}")]
    UnknownTopicId(Uuid),
    #[error("topic '{topic}' has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    /// The partition's log could not be opened when the broker started; it
    /// stays offline until a restart opens it (`reason` is the open error).
    #[error(
        "partition {partition} of topic '{topic}' is offline: its log could not be opened when the broker started ({reason})"
    )]
    PartitionOffline {
        topic: String,
        partition: i32,
        reason: String,
    },
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("invalid value for config '{name}': {reason}")]
    InvalidConfig { name: String, reason: String },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("catalog {path}: {source}")]
    Catalog {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "data directory {0} is in use by another ferry process (lock held on its .lock file); stop it or pass a different --data-dir"
    )]
    DataDirLocked(std::path::PathBuf),
    #[error("producer id file {path}: {source}")]
    ProducerIds {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
