//! The catalog journal: every change to the set of topics (create, delete,
//! add partitions, set configs) is an event appended to `catalog.journal` and
//! fsynced before it takes effect. On start the events are replayed in order.
//! Keeping the catalog as a state machine fed by a journal is what lets it
//! become a Raft state machine when replication comes.
//!
//! Each line is `<crc32c of the JSON, 8 hex digits> <JSON event>\n`. A torn or
//! corrupt last line (a crash mid-append) is dropped; a bad line followed by
//! good ones is an error that stops the broker rather than losing topics.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::CoreError;
use crate::messaging::value::StoredValue;

const JOURNAL_FILE: &str = "catalog.journal";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum CatalogEvent {
    TopicCreated {
        name: String,
        id: Uuid,
        partitions: u32,
        configs: BTreeMap<String, String>,
    },
    TopicDeleted {
        name: String,
    },
    PartitionsAdded {
        name: String,
        total: u32,
    },
    TopicConfigsSet {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// A durable exchange (routed messaging). `store` names the directory of
    /// a delayed-message exchange's store under `queues/`.
    ExchangeDeclared {
        vhost: String,
        name: String,
        kind: String,
        auto_delete: bool,
        internal: bool,
        arguments: Vec<(String, StoredValue)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        store: Option<String>,
    },
    /// Also removes every binding from or to the exchange.
    ExchangeDeleted {
        vhost: String,
        name: String,
    },
    /// A durable queue; `id` names its directory under `queues/`. `topic`
    /// is the topic a stream queue created for itself (deleted with it).
    QueueDeclared {
        vhost: String,
        name: String,
        id: String,
        auto_delete: bool,
        arguments: Vec<(String, StoredValue)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
    },
    /// Also removes every binding to the queue.
    QueueDeleted {
        vhost: String,
        name: String,
    },
    /// A binding between durable ends; `to_queue` says whether the
    /// destination is a queue or an exchange.
    BindingAdded(BindingRecord),
    BindingRemoved(BindingRecord),
}

/// A durable exchange as the catalog records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ExchangeRecord {
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Vec<(String, StoredValue)>,
    pub store: Option<String>,
}

/// A durable queue as the catalog records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct QueueRecord {
    pub id: String,
    pub auto_delete: bool,
    pub arguments: Vec<(String, StoredValue)>,
    pub topic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BindingRecord {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub to_queue: bool,
    pub key: String,
    pub arguments: Vec<(String, StoredValue)>,
}

/// The routed-messaging part of the catalog, keyed by (vhost, name).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MessagingRecords {
    pub exchanges: BTreeMap<(String, String), ExchangeRecord>,
    pub queues: BTreeMap<(String, String), QueueRecord>,
    /// In the order they were made.
    pub bindings: Vec<BindingRecord>,
}

impl MessagingRecords {
    fn apply(&mut self, event: &CatalogEvent) {
        match event {
            CatalogEvent::ExchangeDeclared {
                vhost,
                name,
                kind,
                auto_delete,
                internal,
                arguments,
                store,
            } => {
                self.exchanges.insert(
                    (vhost.clone(), name.clone()),
                    ExchangeRecord {
                        kind: kind.clone(),
                        auto_delete: *auto_delete,
                        internal: *internal,
                        arguments: arguments.clone(),
                        store: store.clone(),
                    },
                );
            }
            CatalogEvent::ExchangeDeleted { vhost, name } => {
                self.exchanges.remove(&(vhost.clone(), name.clone()));
                self.bindings.retain(|b| {
                    !(b.vhost == *vhost
                        && (b.source == *name || (!b.to_queue && b.destination == *name)))
                });
            }
            CatalogEvent::QueueDeclared {
                vhost,
                name,
                id,
                auto_delete,
                arguments,
                topic,
            } => {
                self.queues.insert(
                    (vhost.clone(), name.clone()),
                    QueueRecord {
                        id: id.clone(),
                        auto_delete: *auto_delete,
                        arguments: arguments.clone(),
                        topic: topic.clone(),
                    },
                );
            }
            CatalogEvent::QueueDeleted { vhost, name } => {
                self.queues.remove(&(vhost.clone(), name.clone()));
                self.bindings
                    .retain(|b| !(b.vhost == *vhost && b.to_queue && b.destination == *name));
            }
            CatalogEvent::BindingAdded(b) if !self.bindings.contains(b) => {
                self.bindings.push(b.clone());
            }
            CatalogEvent::BindingRemoved(b) => self.bindings.retain(|x| x != b),
            _ => {}
        }
    }

    fn events(&self) -> Vec<CatalogEvent> {
        let mut out = Vec::new();
        for ((vhost, name), x) in &self.exchanges {
            out.push(CatalogEvent::ExchangeDeclared {
                vhost: vhost.clone(),
                name: name.clone(),
                kind: x.kind.clone(),
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
                store: x.store.clone(),
            });
        }
        for ((vhost, name), q) in &self.queues {
            out.push(CatalogEvent::QueueDeclared {
                vhost: vhost.clone(),
                name: name.clone(),
                id: q.id.clone(),
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
                topic: q.topic.clone(),
            });
        }
        out.extend(
            self.bindings
                .iter()
                .cloned()
                .map(CatalogEvent::BindingAdded),
        );
        out
    }
}

/// A topic as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicRecord {
    pub id: Uuid,
    pub partitions: u32,
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug)]
pub(crate) struct Catalog {
    path: PathBuf,
    file: File,
}

fn catalog_error(path: &Path, source: std::io::Error) -> CoreError {
    CoreError::Catalog {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, line: usize, why: &str) -> CoreError {
    catalog_error(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("line {line} is corrupt ({why}) and later lines are intact; refusing to guess"),
        ),
    )
}

fn encode(event: &CatalogEvent) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(event)?;
    Ok(format!("{:08x} {json}\n", crc32c::crc32c(json.as_bytes())))
}

fn decode(line: &str) -> Option<CatalogEvent> {
    let (crc, json) = line.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    (crc32c::crc32c(json.as_bytes()) == crc)
        .then(|| serde_json::from_str(json).ok())
        .flatten()
}

/// Applies one event to the topic map. Events are validated before they are
/// journaled, so replay only checks what could disagree with the map.
pub(crate) fn apply(topics: &mut BTreeMap<String, TopicRecord>, event: &CatalogEvent) {
    match event {
        CatalogEvent::TopicCreated {
            name,
            id,
            partitions,
            configs,
        } => {
            topics.insert(
                name.clone(),
                TopicRecord {
                    id: *id,
                    partitions: *partitions,
                    configs: configs.clone(),
                },
            );
        }
        CatalogEvent::TopicDeleted { name } => {
            topics.remove(name);
        }
        CatalogEvent::PartitionsAdded { name, total } => {
            if let Some(t) = topics.get_mut(name) {
                t.partitions = t.partitions.max(*total);
            }
        }
        CatalogEvent::TopicConfigsSet { name, configs } => {
            if let Some(t) = topics.get_mut(name) {
                t.configs = configs.clone();
            }
        }
        _ => {}
    }
}

impl Catalog {
    /// Replays the journal in `dir` and rewrites it compacted (one
    /// `TopicCreated` per live topic), so it never grows without bound.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path) -> Result<(Catalog, BTreeMap<String, TopicRecord>), CoreError> {
        Self::open_all(dir).map(|(c, t, _)| (c, t))
    }

    /// Like `open`, with the routed-messaging records too (compacted to one
    /// declare per live exchange and queue and one event per binding).
    pub(crate) fn open_all(
        dir: &Path,
    ) -> Result<(Catalog, BTreeMap<String, TopicRecord>, MessagingRecords), CoreError> {
        let path = dir.join(JOURNAL_FILE);
        let mut topics = BTreeMap::new();
        let mut messaging = MessagingRecords::default();
        match File::open(&path) {
            Ok(file) => {
                let mut pending_bad: Option<(usize, &str)> = None;
                for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
                    let line = line.map_err(|e| catalog_error(&path, e))?;
                    if let Some((bad, why)) = pending_bad {
                        return Err(corrupt(&path, bad + 1, why));
                    }
                    match std::str::from_utf8(&line).ok().and_then(decode) {
                        Some(event) => {
                            apply(&mut topics, &event);
                            messaging.apply(&event);
                        }
                        None => pending_bad = Some((n, "checksum or JSON")),
                    }
                }
                if let Some((bad, _)) = pending_bad {
                    tracing::warn!(
                        path = %path.display(),
                        line = bad + 1,
                        "dropped a torn last line of the catalog journal (crash during a change that was never acknowledged)"
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(catalog_error(&path, e)),
        }
        let file = Self::rewrite(dir, &path, &topics, &messaging)?;
        Ok((Catalog { path, file }, topics, messaging))
    }

    fn rewrite(
        dir: &Path,
        path: &Path,
        topics: &BTreeMap<String, TopicRecord>,
        messaging: &MessagingRecords,
    ) -> Result<File, CoreError> {
        let tmp = dir.join(format!("{JOURNAL_FILE}.tmp"));
        let mut out = String::new();
        for (name, t) in topics {
            let event = CatalogEvent::TopicCreated {
                name: name.clone(),
                id: t.id,
                partitions: t.partitions,
                configs: t.configs.clone(),
            };
            out.push_str(&encode(&event).map_err(|e| catalog_error(path, e.into()))?);
        }
        for event in messaging.events() {
            out.push_str(&encode(&event).map_err(|e| catalog_error(path, e.into()))?);
        }
        let io = |e| catalog_error(path, e);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(out.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        OpenOptions::new().append(true).open(path).map_err(io)
    }

    /// Appends an event and fsyncs it; only then may the caller act on it.
    pub(crate) fn append(&mut self, event: &CatalogEvent) -> Result<(), CoreError> {
        let line = encode(event).map_err(|e| catalog_error(&self.path, e.into()))?;
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| catalog_error(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(name: &str) -> CatalogEvent {
        CatalogEvent::TopicCreated {
            name: name.into(),
            id: Uuid::new_v4(),
            partitions: 2,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn events_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, topics) = Catalog::open(dir.path()).unwrap();
        assert!(topics.is_empty());
        c.append(&created("a")).unwrap();
        c.append(&created("b")).unwrap();
        c.append(&CatalogEvent::PartitionsAdded {
            name: "a".into(),
            total: 5,
        })
        .unwrap();
        c.append(&CatalogEvent::TopicDeleted { name: "b".into() })
            .unwrap();
        drop(c);
        let (_, topics) = Catalog::open(dir.path()).unwrap();
        assert_eq!(topics.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(topics["a"].partitions, 5);
    }

    #[test]
    fn messaging_events_survive_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _, m) = Catalog::open_all(dir.path()).unwrap();
        assert_eq!(m, MessagingRecords::default());
        let binding = |dest: &str| BindingRecord {
            vhost: "/".into(),
            source: "x".into(),
            destination: dest.into(),
            to_queue: true,
            key: "k".into(),
            arguments: vec![("a".into(), StoredValue::Int(1))],
        };
        for e in [
            CatalogEvent::ExchangeDeclared {
                vhost: "/".into(),
                name: "x".into(),
                kind: "topic".into(),
                auto_delete: false,
                internal: false,
                arguments: vec![],
                store: None,
            },
            CatalogEvent::QueueDeclared {
                vhost: "/".into(),
                name: "q1".into(),
                id: "id1".into(),
                auto_delete: false,
                arguments: vec![("x-max-length".into(), StoredValue::Int(5))],
                topic: None,
            },
            CatalogEvent::QueueDeclared {
                vhost: "/".into(),
                name: "q2".into(),
                id: "id2".into(),
                auto_delete: true,
                arguments: vec![],
                topic: Some("q2".into()),
            },
            CatalogEvent::BindingAdded(binding("q1")),
            CatalogEvent::BindingAdded(binding("q2")),
            CatalogEvent::QueueDeleted {
                vhost: "/".into(),
                name: "q2".into(),
            },
        ] {
            c.append(&e).unwrap();
        }
        drop(c);
        let (_, _, m) = Catalog::open_all(dir.path()).unwrap();
        let (_, _, again) = Catalog::open_all(dir.path()).unwrap();
        assert_eq!(m, again);
        assert_eq!(m.exchanges.len(), 1);
        assert_eq!(
            m.queues.keys().collect::<Vec<_>>(),
            vec![&("/".to_string(), "q1".to_string())]
        );
        assert_eq!(m.bindings, vec![binding("q1")]);
    }

    #[test]
    fn torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _) = Catalog::open(dir.path()).unwrap();
        c.append(&created("a")).unwrap();
        c.append(&created("b")).unwrap();
        drop(c);
        let path = dir.path().join(JOURNAL_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let (_, topics) = Catalog::open(dir.path()).unwrap();
        assert_eq!(topics.keys().collect::<Vec<_>>(), vec!["a"]);
    }

    #[test]
    fn corruption_before_good_lines_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _) = Catalog::open(dir.path()).unwrap();
        c.append(&created("a")).unwrap();
        c.append(&created("b")).unwrap();
        drop(c);
        let path = dir.path().join(JOURNAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Catalog::open(dir.path()),
            Err(CoreError::Catalog { .. })
        ));
    }
}
