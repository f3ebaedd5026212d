//! The broker: owns the data directory, the catalog and every partition's log.
//!
//! Layout of the data directory:
//!
//! ```text
//! .lock                      held (flock) while a broker runs on this directory
//! meta.json                  cluster id
//! catalog.journal            topics, partitions and configs (see catalog.rs)
//! producer_ids               reserved block of producer ids (see producer_ids.rs)
//! topics/<name>/<partition>/ one ferry-log Log per partition
//! queues/<id>/               one routed-messaging queue: log/ and state.journal
//! trash/                     deleted topics and queues, removed in the background
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use ferry_log::{Clock, Log, LogError, SystemClock};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::CoreError;
use crate::alarm::{Alarms, ResourceAlarms, ResourceLimits};
use crate::catalog::{Catalog, CatalogEvent, TopicRecord};
use crate::group::{GroupConfig, GroupCoordinator};
use crate::messaging::{Messaging, MessagingConfig};
use crate::metrics::Metrics;
use crate::names::{collision_key, validate_topic_name};
use crate::producer_ids::ProducerIds;
use crate::topic_config::{self, ConfigEntry, ConfigOp};

/// No topic may have more partitions than this: each is a directory and an
/// open file, and a request for two billion must fail cleanly.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;

/// How often the maintenance loop looks for logs due an interval fsync.
const FLUSH_TICK_MS: u64 = 20;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    /// Kafka's `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// Kafka's `num.partitions`: partitions of an auto-created topic, or of a
    /// CreateTopics request that leaves the count to the broker.
    pub default_partitions: u32,
    /// Broker-wide values for topic configs (`retention.ms`, `fsync.policy`, ...).
    pub topic_defaults: BTreeMap<String, String>,
    /// Kafka's `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// Consumer-group coordinator settings.
    pub groups: GroupConfig,
    /// Segment size of routed-messaging queue logs: drained queues give disk
    /// back in units of this.
    pub queue_segment_bytes: u64,
    /// Disk and memory limits of the resource alarms (`alarm.rs`).
    pub resource_limits: ResourceLimits,
    /// Partitions of all topics together. Each holds open files, so
    /// without a limit a client creating topics (auto-creation on Metadata
    /// included) could use up the broker's file descriptors.
    pub partitions_max: usize,
    /// Queues (AMQP and SQS) per vhost, RabbitMQ's vhost `max-queues`; the
    /// same reason.
    pub queues_per_vhost_max: usize,
    /// Exchanges per vhost, and bindings per vhost; each holds memory.
    pub exchanges_per_vhost_max: usize,
    pub bindings_per_vhost_max: usize,
}

impl BrokerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        BrokerConfig {
            data_dir: data_dir.into(),
            auto_create_topics: true,
            default_partitions: 1,
            topic_defaults: BTreeMap::new(),
            retention_check_interval_ms: 60_000,
            groups: GroupConfig::default(),
            queue_segment_bytes: MessagingConfig::default().queue_segment_bytes,
            resource_limits: ResourceLimits::default(),
            partitions_max: 10_000,
            queues_per_vhost_max: MessagingConfig::default().queues_per_vhost_max,
            exchanges_per_vhost_max: MessagingConfig::default().exchanges_per_vhost_max,
            bindings_per_vhost_max: MessagingConfig::default().bindings_per_vhost_max,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    cluster_id: String,
}

/// One partition of a topic.
#[derive(Debug, Clone)]
enum Partition {
    Online(Arc<Log>),
    /// Its log could not be opened when the broker started (a damaged
    /// sealed segment, a disk error), so it is held offline with the
    /// damaged files left as they are, as Kafka holds the partitions of a
    /// failed log directory; the error says why. Only a restart brings it
    /// back.
    Offline(Arc<str>),
}

/// A topic and its partitions' logs.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    configs: RwLock<BTreeMap<String, String>>,
    partitions: RwLock<Vec<Partition>>,
}

impl Topic {
    fn new(name: &str, record: &TopicRecord, partitions: Vec<Partition>) -> Topic {
        Topic {
            name: name.to_string(),
            id: record.id,
            configs: RwLock::new(record.configs.clone()),
            partitions: RwLock::new(partitions),
        }
    }

    /// The partition's log, or the error a client should see: the
    /// partition does not exist, or it is offline.
    pub fn partition(&self, index: i32) -> Result<Arc<Log>, CoreError> {
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| read_lock(&self.partitions).get(i).cloned());
        match slot {
            Some(Partition::Online(log)) => Ok(log),
            Some(Partition::Offline(reason)) => Err(CoreError::PartitionOffline {
                topic: self.name.clone(),
                partition: index,
                reason: reason.to_string(),
            }),
            None => Err(CoreError::UnknownPartition {
                topic: self.name.clone(),
                partition: index,
            }),
        }
    }

    /// The logs of the partitions that are online, with their indexes.
    pub fn partitions(&self) -> Vec<(i32, Arc<Log>)> {
        read_lock(&self.partitions)
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                // At most PARTITIONS_PER_TOPIC_MAX partitions.
                Partition::Online(log) => Some((i as i32, log.clone())),
                Partition::Offline(_) => None,
            })
            .collect()
    }

    /// The partitions held offline, with their indexes and why.
    pub fn offline_partitions(&self) -> Vec<(i32, Arc<str>)> {
        read_lock(&self.partitions)
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Partition::Online(_) => None,
                // At most PARTITIONS_PER_TOPIC_MAX partitions.
                Partition::Offline(reason) => Some((i as i32, reason.clone())),
            })
            .collect()
    }

    /// Whether partition `index` exists, online or not.
    pub fn has_partition(&self, index: i32) -> bool {
        usize::try_from(index).is_ok_and(|i| i < self.partition_count())
    }

    pub fn partition_count(&self) -> usize {
        read_lock(&self.partitions).len()
    }

    /// The topic's own config overrides.
    pub fn configs(&self) -> BTreeMap<String, String> {
        read_lock(&self.configs).clone()
    }
}

// A poisoned lock means a thread panicked while holding it; the maps behind
// these locks are updated in single assignments, so the data is still whole.
fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}
fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    cluster_id: String,
    clock: Arc<dyn Clock>,
    /// Serializes catalog changes; held across validation, disk work and the
    /// journal append so that two creates of one name cannot both succeed.
    /// Shared with the messaging engine, whose durable exchanges, queues and
    /// bindings are catalog events too.
    catalog: Arc<Mutex<Catalog>>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    groups: Arc<GroupCoordinator>,
    producer_ids: ProducerIds,
    messaging: Arc<Messaging>,
    /// Disk and memory alarms, for every front end to follow.
    alarms: Arc<Alarms>,
    /// Traffic counters the front ends bump (`/metrics`, message rates).
    metrics: Arc<Metrics>,
    /// Holds the directory's flock for the broker's lifetime.
    _lock_file: File,
}

fn io_error(path: &Path, source: std::io::Error) -> CoreError {
    CoreError::Catalog {
        path: path.to_path_buf(),
        source,
    }
}

impl Broker {
    /// Locks the data directory, replays the catalog and opens (recovering)
    /// every partition's log. Blocking.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>, CoreError> {
        topic_config::validate_all(&config.topic_defaults)?;
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let lock_path = dir.join(".lock");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(CoreError::DataDirLocked(dir.clone()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&lock_path, e)),
        }
        let cluster_id = Self::load_or_create_meta(dir)?;
        for sub in ["topics", "trash"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| io_error(dir, e))?;
        }
        let (catalog, records, messaging_records) = Catalog::open_all(dir)?;
        let catalog = Arc::new(Mutex::new(catalog));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let groups = Arc::new(GroupCoordinator::open(
            dir,
            config.groups.clone(),
            clock.clone(),
        )?);
        let producer_ids = ProducerIds::open(dir)?;
        let messaging_config = MessagingConfig {
            fsync: topic_config::log_config(&config.topic_defaults, &BTreeMap::new()).fsync,
            queue_segment_bytes: config.queue_segment_bytes,
            queues_per_vhost_max: config.queues_per_vhost_max,
            exchanges_per_vhost_max: config.exchanges_per_vhost_max,
            bindings_per_vhost_max: config.bindings_per_vhost_max,
            ..MessagingConfig::default()
        };
        let queues_dir = dir.join("queues");
        let queues_error = move |e: crate::messaging::MessagingError| {
            io_error(&queues_dir, std::io::Error::other(e.to_string()))
        };
        let messaging = Messaging::open(
            dir.clone(),
            messaging_config,
            catalog.clone(),
            clock.clone(),
        )
        .map_err(&queues_error)?;
        let broker = Broker {
            config,
            cluster_id,
            clock,
            catalog,
            topics: RwLock::new(BTreeMap::new()),
            groups,
            producer_ids,
            messaging: Arc::new(messaging),
            alarms: Arc::new(Alarms::default()),
            metrics: Arc::new(Metrics::default()),
            _lock_file: lock_file,
        };
        for (name, record) in records {
            let topic = broker.reopen_topic(&name, &record)?;
            write_lock(&broker.topics).insert(name, Arc::new(topic));
        }
        broker.sweep_orphans()?;
        broker.empty_trash();
        let broker = Arc::new(broker);
        // Queues come after topics: a stream queue is a topic's log.
        broker
            .messaging
            .attach(Arc::downgrade(&broker), messaging_records)
            .map_err(&queues_error)?;
        Ok(broker)
    }

    fn load_or_create_meta(dir: &Path) -> Result<String, CoreError> {
        let path = dir.join("meta.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Meta>(&bytes)
                .map(|m| m.cluster_id)
                .map_err(|e| io_error(&path, e.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Kafka cluster ids are a UUID in URL-safe base64 without padding (22 chars).
                let cluster_id = base64_url(Uuid::new_v4().as_bytes());
                let json = serde_json::to_vec(&Meta {
                    cluster_id: cluster_id.clone(),
                })
                .map_err(|e| io_error(&path, e.into()))?;
                let tmp = dir.join("meta.json.tmp");
                std::fs::write(&tmp, json)
                    .and_then(|()| File::open(&tmp)?.sync_all())
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .and_then(|()| File::open(dir)?.sync_all())
                    .map_err(|e| io_error(&path, e))?;
                Ok(cluster_id)
            }
            Err(e) => Err(io_error(&path, e)),
        }
    }

    fn topic_dir(&self, name: &str) -> PathBuf {
        // `name` has passed validate_topic_name: no separators, not `.`/`..`.
        self.config.data_dir.join("topics").join(name)
    }

    fn open_partition(
        &self,
        name: &str,
        index: u32,
        configs: &BTreeMap<String, String>,
    ) -> Result<Log, LogError> {
        let dir = self.topic_dir(name).join(index.to_string());
        let log_config = topic_config::log_config(&self.config.topic_defaults, configs);
        Log::open(&dir, log_config, self.clock.clone())
    }

    /// Opens the logs of a new topic (or of one being validated): any
    /// failure fails the creation.
    fn open_topic(&self, name: &str, record: &TopicRecord) -> Result<Topic, CoreError> {
        validate_topic_name(name)?;
        let partitions = (0..record.partitions)
            .map(|p| {
                self.open_partition(name, p, &record.configs)
                    .map(|log| Partition::Online(Arc::new(log)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Topic::new(name, record, partitions))
    }

    /// Opens the logs of a topic the catalog holds, at start. A partition
    /// whose log cannot be opened is held offline rather than failing the
    /// broker's start: one damaged segment must not take every other topic
    /// and queue down with it. Its files are left for the operator, whom
    /// the error log line tells what can be done.
    fn reopen_topic(&self, name: &str, record: &TopicRecord) -> Result<Topic, CoreError> {
        validate_topic_name(name)?;
        let partitions = (0..record.partitions)
            .map(|p| match self.open_partition(name, p, &record.configs) {
                Ok(log) => Partition::Online(Arc::new(log)),
                Err(e) => {
                    report_offline_partition(name, p, &e);
                    Partition::Offline(e.to_string().into())
                }
            })
            .collect();
        Ok(Topic::new(name, record, partitions))
    }

    /// Topic directories the catalog does not know (left by a crash between
    /// creating a topic's logs and journaling it, or mid-delete) go to the trash.
    fn sweep_orphans(&self) -> Result<(), CoreError> {
        let topics_dir = self.config.data_dir.join("topics");
        let entries = std::fs::read_dir(&topics_dir).map_err(|e| io_error(&topics_dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !read_lock(&self.topics).contains_key(&name) {
                tracing::warn!(dir = %entry.path().display(), "topic directory not in the catalog; moving it to the trash");
                self.move_to_trash(&entry.path(), &name)?;
            }
        }
        Ok(())
    }

    fn move_to_trash(&self, dir: &Path, name: &str) -> Result<(), CoreError> {
        let target = self
            .config
            .data_dir
            .join("trash")
            .join(format!("{name}.{}", Uuid::new_v4().simple()));
        std::fs::rename(dir, &target).map_err(|e| io_error(dir, e))
    }

    /// Removes deleted topics' files on a background thread.
    fn empty_trash(&self) {
        let trash = self.config.data_dir.join("trash");
        std::thread::spawn(move || {
            let Ok(entries) = std::fs::read_dir(&trash) else {
                return;
            };
            for entry in entries.flatten() {
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "could not remove deleted topic files");
                }
            }
        });
    }

    /// The consumer-group coordinator; run its timers with
    /// `tokio::spawn(broker.groups().clone().run_timers())`.
    pub fn groups(&self) -> &Arc<GroupCoordinator> {
        &self.groups
    }

    /// The routed-messaging model (vhosts, exchanges, bindings, queues).
    pub fn messaging(&self) -> &Arc<Messaging> {
        &self.messaging
    }

    /// The resource alarms: `borrow()` for the current state, `changed()`
    /// to wait for the next change. Raised and cleared by
    /// `run_resource_monitor`.
    pub fn alarms(&self) -> tokio::sync::watch::Receiver<ResourceAlarms> {
        self.alarms.subscribe()
    }

    /// Watches free disk space under the data directory and the process's
    /// memory until the task is dropped (once a second by default), raising
    /// and clearing the alarms. Run it with `tokio::spawn`.
    pub async fn run_resource_monitor(self: Arc<Self>) {
        crate::alarm::run_monitor(
            self.alarms.clone(),
            self.config.data_dir.clone(),
            self.config.resource_limits,
        )
        .await
    }

    /// Traffic counters: front ends count what passes through them here.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        read_lock(&self.topics).get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        read_lock(&self.topics)
            .values()
            .find(|t| t.id == id)
            .cloned()
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        read_lock(&self.topics).values().cloned().collect()
    }

    /// A partition's log, or the error a client should see.
    pub fn partition(&self, topic: &str, partition: i32) -> Result<Arc<Log>, CoreError> {
        self.topic(topic)
            .ok_or_else(|| CoreError::UnknownTopic(topic.to_string()))?
            .partition(partition)
    }

    /// Returns the topic, creating it with the default partition count if
    /// auto-creation is enabled (Kafka's `auto.create.topics.enable`).
    pub fn topic_or_auto_create(&self, name: &str) -> Result<Arc<Topic>, CoreError> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        if !self.config.auto_create_topics {
            validate_topic_name(name)?;
            return Err(CoreError::UnknownTopic(name.to_string()));
        }
        match self.create_topic(name, None, &BTreeMap::new(), false) {
            Ok(t) => Ok(t),
            Err(CoreError::TopicExists(_)) => self
                .topic(name)
                .ok_or_else(|| CoreError::UnknownTopic(name.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Creates a topic. With `validate_only`, checks everything and changes
    /// nothing (the returned topic then has no partitions open).
    pub fn create_topic(
        &self,
        name: &str,
        partitions: Option<u32>,
        configs: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, CoreError> {
        validate_topic_name(name)?;
        let mut catalog = lock(&self.catalog);
        {
            let topics = read_lock(&self.topics);
            if topics.contains_key(name) {
                return Err(CoreError::TopicExists(name.to_string()));
            }
            let key = collision_key(name);
            if let Some(other) = topics.keys().find(|t| collision_key(t) == key) {
                return Err(CoreError::InvalidTopicName {
                    name: name.to_string(),
                    reason: format!(
                        "it collides with existing topic '{other}' ('.' and '_' are treated alike)"
                    ),
                });
            }
        }
        let partitions = partitions.unwrap_or(self.config.default_partitions);
        if partitions == 0 || partitions > PARTITIONS_PER_TOPIC_MAX {
            return Err(CoreError::InvalidPartitions(format!(
                "number of partitions must be between 1 and {PARTITIONS_PER_TOPIC_MAX}, not {partitions}"
            )));
        }
        self.check_partitions_room(partitions)?;
        topic_config::validate_all(configs)?;
        let record = TopicRecord {
            id: Uuid::new_v4(),
            partitions,
            configs: configs.clone(),
        };
        if validate_only {
            return Ok(Arc::new(Topic::new(name, &record, Vec::new())));
        }
        // Logs first, journal second: a crash in between leaves a directory the
        // catalog does not know, which the next start moves to the trash.
        let topic = Arc::new(self.open_topic(name, &record)?);
        catalog.append(&CatalogEvent::TopicCreated {
            name: name.to_string(),
            id: record.id,
            partitions,
            configs: record.configs,
        })?;
        write_lock(&self.topics).insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    pub fn delete_topic(&self, name: &str) -> Result<(), CoreError> {
        let mut catalog = lock(&self.catalog);
        if self.topic(name).is_none() {
            return Err(CoreError::UnknownTopic(name.to_string()));
        }
        catalog.append(&CatalogEvent::TopicDeleted {
            name: name.to_string(),
        })?;
        write_lock(&self.topics).remove(name);
        // Requests still holding a partition keep reading unlinked files.
        self.move_to_trash(&self.topic_dir(name), name)?;
        self.empty_trash();
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Whether `adding` more partitions stay within `partitions_max`.
    fn check_partitions_room(&self, adding: u32) -> Result<(), CoreError> {
        let open: usize = read_lock(&self.topics)
            .values()
            .map(|t| t.partition_count())
            .sum();
        let max = self.config.partitions_max;
        if open + adding as usize > max {
            return Err(CoreError::InvalidPartitions(format!(
                "the broker has {open} partitions and a limit of {max} (partitions_max); {adding} more do not fit"
            )));
        }
        Ok(())
    }

    /// Grows a topic to `total` partitions (Kafka's CreatePartitions).
    pub fn create_partitions(
        &self,
        name: &str,
        total: u32,
        validate_only: bool,
    ) -> Result<(), CoreError> {
        let mut catalog = lock(&self.catalog);
        let topic = self
            .topic(name)
            .ok_or_else(|| CoreError::UnknownTopic(name.to_string()))?;
        let current = topic.partition_count() as u32;
        if total <= current {
            return Err(CoreError::InvalidPartitions(format!(
                "topic currently has {current} partitions, which is higher than or equal to the requested {total}"
            )));
        }
        if total > PARTITIONS_PER_TOPIC_MAX {
            return Err(CoreError::InvalidPartitions(format!(
                "number of partitions must be at most {PARTITIONS_PER_TOPIC_MAX}, not {total}"
            )));
        }
        self.check_partitions_room(total - current)?;
        if validate_only {
            return Ok(());
        }
        let configs = topic.configs();
        let new_logs = (current..total)
            .map(|p| {
                self.open_partition(name, p, &configs)
                    .map(|log| Partition::Online(Arc::new(log)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        catalog.append(&CatalogEvent::PartitionsAdded {
            name: name.to_string(),
            total,
        })?;
        write_lock(&topic.partitions).extend(new_logs);
        tracing::info!(topic = name, partitions = total, "added partitions");
        Ok(())
    }

    /// Applies config changes to a topic (IncrementalAlterConfigs).
    pub fn alter_topic_configs(
        &self,
        name: &str,
        ops: &[ConfigOp],
        validate_only: bool,
    ) -> Result<(), CoreError> {
        let topic = self
            .topic(name)
            .ok_or_else(|| CoreError::UnknownTopic(name.to_string()))?;
        let next = topic_config::apply_ops(&topic.configs(), ops)?;
        self.set_topic_configs(&topic, next, validate_only)
    }

    /// Replaces a topic's whole set of overrides (legacy AlterConfigs).
    pub fn replace_topic_configs(
        &self,
        name: &str,
        configs: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), CoreError> {
        let topic = self
            .topic(name)
            .ok_or_else(|| CoreError::UnknownTopic(name.to_string()))?;
        topic_config::validate_all(configs)?;
        self.set_topic_configs(&topic, configs.clone(), validate_only)
    }

    fn set_topic_configs(
        &self,
        topic: &Topic,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), CoreError> {
        if validate_only {
            return Ok(());
        }
        let mut catalog = lock(&self.catalog);
        catalog.append(&CatalogEvent::TopicConfigsSet {
            name: topic.name.clone(),
            configs: configs.clone(),
        })?;
        let log_config = topic_config::log_config(&self.config.topic_defaults, &configs);
        // An offline partition gets the new configs when it is opened again.
        for (_, log) in topic.partitions() {
            log.set_config(log_config.clone());
        }
        *write_lock(&topic.configs) = configs;
        tracing::info!(topic = %topic.name, "changed topic configs");
        Ok(())
    }

    pub fn describe_topic_configs(&self, name: &str) -> Result<Vec<ConfigEntry>, CoreError> {
        let topic = self
            .topic(name)
            .ok_or_else(|| CoreError::UnknownTopic(name.to_string()))?;
        Ok(topic_config::describe(
            &self.config.topic_defaults,
            &topic.configs(),
        ))
    }

    /// The logs of every online partition.
    fn all_logs(&self) -> Vec<(String, i32, Arc<Log>)> {
        self.topics()
            .into_iter()
            .flat_map(|t| {
                t.partitions()
                    .into_iter()
                    .map(move |(i, l)| (t.name.clone(), i, l))
            })
            .collect()
    }

    /// Background work until the task is dropped: interval fsyncs and
    /// retention. Run it with `tokio::spawn`.
    pub async fn run_maintenance(self: Arc<Self>) {
        self.messaging.start_timers();
        let mut flush_tick = tokio::time::interval(Duration::from_millis(FLUSH_TICK_MS));
        let mut retention_tick = tokio::time::interval(Duration::from_millis(
            self.config.retention_check_interval_ms.max(1),
        ));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retention_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retention = tokio::select! {
                _ = flush_tick.tick() => false,
                _ = retention_tick.tick() => true,
            };
            let broker = self.clone();
            let work = tokio::task::spawn_blocking(move || {
                for (topic, partition, log) in broker.all_logs() {
                    if retention {
                        match log.apply_retention() {
                            Ok(o) if o.segments_deleted > 0 => tracing::info!(
                                topic,
                                partition,
                                segments = o.segments_deleted,
                                bytes = o.bytes_deleted,
                                log_start_offset = o.log_start_offset,
                                "retention deleted segments"
                            ),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(topic, partition, error = %e, "retention failed")
                            }
                        }
                    } else if let Err(e) = log.flush_if_due() {
                        tracing::warn!(topic, partition, error = %e, "interval fsync failed");
                    }
                }
            });
            if let Err(e) = work.await {
                tracing::error!(error = %e, "maintenance task panicked");
            }
        }
    }

    /// A producer id never handed out before on this data directory, for an
    /// idempotent producer (Kafka's InitProducerId). Blocking: once per block
    /// of ids it fsyncs the reservation.
    pub fn allocate_producer_id(&self) -> Result<i64, CoreError> {
        self.producer_ids.allocate()
    }

    /// Flushes every log and writes its indexes, so the next start is fast.
    /// Blocking.
    pub fn shutdown(&self) {
        self.messaging.shutdown();
        for (topic, partition, log) in self.all_logs() {
            if let Err(e) = log.close() {
                tracing::warn!(topic, partition, error = %e, "could not close log cleanly");
            }
        }
    }
}

/// The error log line of a partition held offline at start: what is wrong,
/// where, and what an operator can do about it.
fn report_offline_partition(topic: &str, partition: u32, error: &LogError) {
    match error {
        LogError::CorruptSegment {
            path,
            position,
            reason,
        } => tracing::error!(
            topic,
            partition,
            file = %path.display(),
            position,
            reason = %reason,
            "partition held offline: a sealed segment of its log is damaged at this byte \
             position, so the log cannot be opened; the partition's requests are refused \
             (Kafka: KAFKA_STORAGE_ERROR) and its files are left as they are. To bring it \
             back: stop the broker, keep a copy of the file, then either cut the file at \
             that position (`truncate -s POSITION FILE`: the segment's records from there \
             on are lost) or move it and its .index and .timeindex files out of the \
             directory (all of the segment's records are lost), and start the broker again"
        ),
        other => tracing::error!(
            topic,
            partition,
            error = %other,
            "partition held offline: its log cannot be opened; the partition's requests \
             are refused (Kafka: KAFKA_STORAGE_ERROR) and its files are left as they are. \
             To bring it back, fix what the error names and start the broker again"
        ),
    }
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let id = base64_url(Uuid::new_v4().as_bytes());
        assert_eq!(id.len(), 22);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(base64_url(b"Man"), "TWFu");
    }
}
