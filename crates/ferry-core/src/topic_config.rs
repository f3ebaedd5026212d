//! Topic configs: the names Kafka users know (`retention.ms`, ...), their
//! defaults, validation, and the mapping onto a [`LogConfig`].
//!
//! A value comes from, in order: the topic's own override, the broker's
//! `[topic_defaults]`, or the built-in default below.

use std::collections::BTreeMap;

use ferry_log::{FsyncPolicy, LogConfig};

use crate::CoreError;

/// Where a config's effective value came from (Kafka's `ConfigSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic itself.
    TopicOverride,
    /// Set in the broker's `[topic_defaults]`.
    BrokerDefault,
    /// Ferry's built-in default.
    Default,
}

/// The value type, as Kafka's DescribeConfigs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Int,
    Long,
    String,
    List,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: &'static str,
    pub value: String,
    pub source: ConfigSource,
    pub config_type: ConfigType,
    pub doc: &'static str,
}

/// One change from AlterConfigs / IncrementalAlterConfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    Set(String, String),
    Delete(String),
    /// Add an item to a list-valued config.
    Append(String, String),
    /// Remove an item from a list-valued config.
    Subtract(String, String),
}

struct ConfigDef {
    name: &'static str,
    default: &'static str,
    config_type: ConfigType,
    /// Inclusive bounds for numbers; allowed values for strings and lists.
    rule: Rule,
    doc: &'static str,
}

enum Rule {
    AtLeast(i64),
    /// Only these values; each with why the others are refused.
    OneOf(&'static [&'static str], &'static str),
}

const DAY_MS: &str = "604800000";

const DEFS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        default: "delete",
        config_type: ConfigType::List,
        rule: Rule::OneOf(&["delete"], "log compaction is not supported yet"),
        doc: "How old segments are cleaned: 'delete' removes them past retention.",
    },
    ConfigDef {
        name: "compression.type",
        default: "producer",
        config_type: ConfigType::String,
        rule: Rule::OneOf(
            &["producer"],
            "Ferry stores batches as the producer compressed them; set compression on the producer",
        ),
        doc: "Batches are stored with the producer's compression.",
    },
    ConfigDef {
        name: "fsync.policy",
        default: "always",
        config_type: ConfigType::String,
        rule: Rule::OneOf(
            &["always", "interval", "never"],
            "use always, interval or never",
        ),
        doc: "always: acknowledge a batch only after an fsync covers it (group commit); interval: fsync every fsync.interval.ms; never: leave it to the OS.",
    },
    ConfigDef {
        name: "fsync.interval.ms",
        default: "1000",
        config_type: ConfigType::Long,
        rule: Rule::AtLeast(1),
        doc: "With fsync.policy=interval, the longest time between two fsyncs.",
    },
    ConfigDef {
        name: "index.interval.bytes",
        default: "4096",
        config_type: ConfigType::Int,
        rule: Rule::AtLeast(0),
        doc: "Bytes of log between two entries of the sparse offset index.",
    },
    ConfigDef {
        name: "max.message.bytes",
        default: "1048588",
        config_type: ConfigType::Int,
        rule: Rule::AtLeast(0),
        doc: "The largest record batch accepted, in bytes.",
    },
    ConfigDef {
        name: "message.timestamp.type",
        default: "CreateTime",
        config_type: ConfigType::String,
        rule: Rule::OneOf(&["CreateTime"], "LogAppendTime is not supported yet"),
        doc: "Records keep the timestamp their producer gave them.",
    },
    ConfigDef {
        name: "min.insync.replicas",
        default: "1",
        config_type: ConfigType::Int,
        rule: Rule::OneOf(&["1"], "Ferry runs a single replica"),
        doc: "Replicas that must acknowledge an acks=all write.",
    },
    ConfigDef {
        name: "retention.bytes",
        default: "-1",
        config_type: ConfigType::Long,
        rule: Rule::AtLeast(-1),
        doc: "Delete the oldest segments while a partition is larger than this; -1 for no limit.",
    },
    ConfigDef {
        name: "retention.ms",
        default: DAY_MS,
        config_type: ConfigType::Long,
        rule: Rule::AtLeast(-1),
        doc: "Delete segments whose newest record is older than this; -1 to keep forever.",
    },
    ConfigDef {
        name: "segment.bytes",
        default: "1073741824",
        config_type: ConfigType::Int,
        rule: Rule::AtLeast(14),
        doc: "Roll to a new segment file at this size.",
    },
    ConfigDef {
        name: "segment.ms",
        default: DAY_MS,
        config_type: ConfigType::Long,
        rule: Rule::AtLeast(1),
        doc: "Roll to a new segment file once the active one is this old.",
    },
];

fn def(name: &str) -> Result<&'static ConfigDef, CoreError> {
    DEFS.iter()
        .find(|d| d.name == name)
        .ok_or_else(|| CoreError::InvalidConfig {
            name: name.to_string(),
            reason: "unknown topic config".to_string(),
        })
}

/// Checks that `name` is a known topic config and `value` is valid for it.
pub fn validate(name: &str, value: &str) -> Result<(), CoreError> {
    let d = def(name)?;
    let invalid = |reason: String| {
        Err(CoreError::InvalidConfig {
            name: name.to_string(),
            reason,
        })
    };
    match (&d.rule, d.config_type) {
        (Rule::AtLeast(min), ConfigType::Int | ConfigType::Long) => {
            let parsed = if d.config_type == ConfigType::Int {
                value.trim().parse::<i32>().map(i64::from).ok()
            } else {
                value.trim().parse::<i64>().ok()
            };
            match parsed {
                Some(v) if v >= *min => Ok(()),
                Some(v) => invalid(format!("{v} is below the minimum {min}")),
                None => invalid(format!("'{value}' is not a whole number")),
            }
        }
        (Rule::OneOf(allowed, why), ConfigType::List) => {
            match value
                .split(',')
                .map(str::trim)
                .find(|v| !v.is_empty() && !allowed.contains(v))
            {
                Some(v) => invalid(format!("'{v}' is not supported: {why}")),
                None => Ok(()),
            }
        }
        (Rule::OneOf(allowed, why), _) => {
            if allowed.contains(&value.trim()) {
                Ok(())
            } else {
                invalid(format!("'{value}' is not supported: {why}"))
            }
        }
        (Rule::AtLeast(_), _) => invalid("no rule".to_string()),
    }
}

/// Validates a whole map of overrides (topic or broker defaults).
pub fn validate_all(configs: &BTreeMap<String, String>) -> Result<(), CoreError> {
    configs.iter().try_for_each(|(k, v)| validate(k, v))
}

/// Applies incremental changes to a topic's overrides, validating the result.
pub fn apply_ops(
    current: &BTreeMap<String, String>,
    ops: &[ConfigOp],
) -> Result<BTreeMap<String, String>, CoreError> {
    let mut next = current.clone();
    for op in ops {
        match op {
            ConfigOp::Set(name, value) => {
                validate(name, value)?;
                next.insert(name.clone(), value.trim().to_string());
            }
            ConfigOp::Delete(name) => {
                def(name)?;
                next.remove(name);
            }
            ConfigOp::Append(name, item) | ConfigOp::Subtract(name, item) => {
                let d = def(name)?;
                if d.config_type != ConfigType::List {
                    return Err(CoreError::InvalidConfig {
                        name: name.clone(),
                        reason: "APPEND and SUBTRACT apply only to list configs".to_string(),
                    });
                }
                let value = next.get(name).map(String::as_str).unwrap_or(d.default);
                let mut items: Vec<&str> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                if matches!(op, ConfigOp::Append(..)) {
                    if !items.contains(&item.as_str()) {
                        items.push(item);
                    }
                } else {
                    items.retain(|i| i != item);
                }
                let joined = items.join(",");
                validate(name, &joined)?;
                next.insert(name.clone(), joined);
            }
        }
    }
    Ok(next)
}

/// Every config with its effective value and source, sorted by name.
pub fn describe(
    broker_defaults: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> Vec<ConfigEntry> {
    DEFS.iter()
        .map(|d| {
            let (value, source) = if let Some(v) = overrides.get(d.name) {
                (v.clone(), ConfigSource::TopicOverride)
            } else if let Some(v) = broker_defaults.get(d.name) {
                (v.clone(), ConfigSource::BrokerDefault)
            } else {
                (d.default.to_string(), ConfigSource::Default)
            };
            ConfigEntry {
                name: d.name,
                value,
                source,
                config_type: d.config_type,
                doc: d.doc,
            }
        })
        .collect()
}

/// The storage settings that follow from the effective configs. Values are
/// validated on the way in, so parsing cannot fail here; a default stands in
/// if it somehow does.
pub fn log_config(
    broker_defaults: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> LogConfig {
    let entries = describe(broker_defaults, overrides);
    let get = |name: &str| -> &str {
        entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.value.as_str())
            .unwrap_or("")
    };
    let num = |name: &str| -> i64 {
        get(name)
            .trim()
            .parse::<i64>()
            .or_else(|_| def(name).map(|d| d.default.parse::<i64>().unwrap_or(0)))
            .unwrap_or(0)
    };
    let non_negative = |v: i64| (v >= 0).then_some(v);
    let fsync = match get("fsync.policy") {
        "interval" => FsyncPolicy::Interval {
            interval_ms: num("fsync.interval.ms").max(1) as u64,
        },
        "never" => FsyncPolicy::Never,
        _ => FsyncPolicy::Always,
    };
    LogConfig {
        segment_bytes: num("segment.bytes").max(14) as u64,
        segment_ms: num("segment.ms").max(1),
        retention_ms: non_negative(num("retention.ms")),
        retention_bytes: non_negative(num("retention.bytes")).map(|v| v as u64),
        max_batch_bytes: num("max.message.bytes").clamp(0, i64::from(u32::MAX)) as u32,
        index_interval_bytes: num("index.interval.bytes").clamp(0, i64::from(u32::MAX)) as u32,
        fsync,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_kafka() {
        let c = log_config(&BTreeMap::new(), &BTreeMap::new());
        assert_eq!(c, LogConfig::default());
    }

    #[test]
    fn overrides_beat_broker_defaults_beat_builtins() {
        let broker = map(&[("retention.ms", "1000"), ("segment.bytes", "2048")]);
        let topic = map(&[("retention.ms", "5")]);
        let c = log_config(&broker, &topic);
        assert_eq!(c.retention_ms, Some(5));
        assert_eq!(c.segment_bytes, 2048);
        let d = describe(&broker, &topic);
        let source = |n: &str| d.iter().find(|e| e.name == n).unwrap().source;
        assert_eq!(source("retention.ms"), ConfigSource::TopicOverride);
        assert_eq!(source("segment.bytes"), ConfigSource::BrokerDefault);
        assert_eq!(source("segment.ms"), ConfigSource::Default);
    }

    #[test]
    fn minus_one_means_unlimited() {
        let c = log_config(
            &BTreeMap::new(),
            &map(&[("retention.ms", "-1"), ("retention.bytes", "-1")]),
        );
        assert_eq!((c.retention_ms, c.retention_bytes), (None, None));
    }

    #[test]
    fn fsync_policies() {
        let c = log_config(
            &BTreeMap::new(),
            &map(&[("fsync.policy", "interval"), ("fsync.interval.ms", "20")]),
        );
        assert_eq!(c.fsync, FsyncPolicy::Interval { interval_ms: 20 });
        let c = log_config(&BTreeMap::new(), &map(&[("fsync.policy", "never")]));
        assert_eq!(c.fsync, FsyncPolicy::Never);
    }

    #[test]
    fn invalid_values_are_refused_with_the_name() {
        for (k, v) in [
            ("retention.ms", "soon"),
            ("retention.ms", "-2"),
            ("segment.bytes", "99999999999"),
            ("cleanup.policy", "compact"),
            ("fsync.policy", "sometimes"),
            ("no.such.config", "1"),
        ] {
            match validate(k, v) {
                Err(CoreError::InvalidConfig { name, .. }) => assert_eq!(name, k),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
    }

    #[test]
    fn incremental_ops() {
        let cur = map(&[("retention.ms", "10")]);
        let next = apply_ops(
            &cur,
            &[
                ConfigOp::Delete("retention.ms".into()),
                ConfigOp::Set("segment.ms".into(), "100".into()),
                ConfigOp::Append("cleanup.policy".into(), "delete".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            next,
            map(&[("cleanup.policy", "delete"), ("segment.ms", "100")])
        );
        assert!(apply_ops(&cur, &[ConfigOp::Append("retention.ms".into(), "1".into())]).is_err());
        let removed = apply_ops(
            &next,
            &[ConfigOp::Subtract("cleanup.policy".into(), "delete".into())],
        )
        .unwrap();
        assert_eq!(removed.get("cleanup.policy").map(String::as_str), Some(""));
    }
}
