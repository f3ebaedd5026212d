//! Committed consumer-group offsets, kept in memory and made durable in
//! `offsets.journal` before a commit is acknowledged.
//!
//! The journal has one CRC-checked JSON event per line, like the catalog.
//! Appends share fsyncs (group commit): a commit waits only for an fsync that
//! covers its line, and one fsync covers every line written before it began.
//! The journal is rewritten compacted on start and whenever it holds many
//! more lines than live offsets.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::CoreError;

const JOURNAL_FILE: &str = "offsets.journal";
/// Rewrite the journal once it holds this many lines more than live offsets.
const JOURNAL_GARBAGE_LINES_MAX: u64 = 100_000;

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    /// Wall-clock time of the commit, for offset retention.
    pub commit_ms: i64,
}

/// (topic, partition)
pub type TopicPartition = (String, i32);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Commit {
        group: String,
        topic: String,
        partition: i32,
        #[serde(flatten)]
        committed: Committed,
    },
    Delete {
        group: String,
        topic: String,
        partition: i32,
    },
    /// The group's protocol type ("consumer", ...), kept so that an empty
    /// group is still reported as what it was after a restart.
    ProtocolType {
        group: String,
        protocol_type: String,
    },
}

/// Committed offsets and protocol types, by group.
#[derive(Debug, Default)]
struct Offsets {
    committed: BTreeMap<String, BTreeMap<TopicPartition, Committed>>,
    protocol_types: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Writer {
    file: File,
    /// Lines written so far (sequence numbers for group commit).
    written: u64,
    /// Lines in the file, live or not, since the last rewrite.
    lines: u64,
}

#[derive(Debug)]
pub(crate) struct OffsetStore {
    dir: PathBuf,
    path: PathBuf,
    offsets: Mutex<Offsets>,
    writer: Arc<Mutex<Writer>>,
    synced: Arc<AtomicU64>,
    sync_turn: tokio::sync::Mutex<()>,
}

fn io_error(path: &Path, source: std::io::Error) -> CoreError {
    CoreError::Catalog {
        path: path.to_path_buf(),
        source,
    }
}

fn encode(event: &Event) -> String {
    // Serializing these plain structs cannot fail.
    let json = serde_json::to_string(event).unwrap_or_default();
    format!("{:08x} {json}\n", crc32c::crc32c(json.as_bytes()))
}

fn decode(line: &[u8]) -> Option<Event> {
    let line = std::str::from_utf8(line).ok()?;
    let (crc, json) = line.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    (crc32c::crc32c(json.as_bytes()) == crc)
        .then(|| serde_json::from_str(json).ok())
        .flatten()
}

fn apply(offsets: &mut Offsets, event: Event) {
    match event {
        Event::Commit {
            group,
            topic,
            partition,
            committed,
        } => {
            offsets
                .committed
                .entry(group)
                .or_default()
                .insert((topic, partition), committed);
        }
        Event::Delete {
            group,
            topic,
            partition,
        } => {
            if let Some(g) = offsets.committed.get_mut(&group) {
                g.remove(&(topic, partition));
                if g.is_empty() {
                    offsets.committed.remove(&group);
                    // A group with nothing committed is gone; so is its type.
                    offsets.protocol_types.remove(&group);
                }
            }
        }
        Event::ProtocolType {
            group,
            protocol_type,
        } => {
            offsets.protocol_types.insert(group, protocol_type);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl OffsetStore {
    /// Replays the journal (dropping a torn last line) and rewrites it compacted.
    pub(crate) fn open(dir: &Path) -> Result<OffsetStore, CoreError> {
        let path = dir.join(JOURNAL_FILE);
        let mut offsets = Offsets::default();
        match File::open(&path) {
            Ok(file) => {
                let mut bad_line: Option<usize> = None;
                for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
                    let line = line.map_err(|e| io_error(&path, e))?;
                    if let Some(bad) = bad_line {
                        return Err(io_error(
                            &path,
                            std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                format!("line {} is corrupt and later lines are intact", bad + 1),
                            ),
                        ));
                    }
                    match decode(&line) {
                        Some(event) => apply(&mut offsets, event),
                        None => bad_line = Some(n),
                    }
                }
                if bad_line.is_some() {
                    tracing::warn!(path = %path.display(), "dropped a torn last line of the offsets journal (a commit that was never acknowledged)");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path, e)),
        }
        let writer = Self::rewrite(dir, &path, &offsets)?;
        let written = writer.written;
        Ok(OffsetStore {
            dir: dir.to_path_buf(),
            path,
            offsets: Mutex::new(offsets),
            writer: Arc::new(Mutex::new(writer)),
            synced: Arc::new(AtomicU64::new(written)),
            sync_turn: tokio::sync::Mutex::new(()),
        })
    }

    /// Writes the live offsets to a new journal and swaps it in atomically.
    fn rewrite(dir: &Path, path: &Path, offsets: &Offsets) -> Result<Writer, CoreError> {
        let tmp = dir.join(format!("{JOURNAL_FILE}.tmp"));
        let io = |e| io_error(path, e);
        let mut out = String::new();
        let mut lines = 0;
        for (group, protocol_type) in &offsets.protocol_types {
            out.push_str(&encode(&Event::ProtocolType {
                group: group.clone(),
                protocol_type: protocol_type.clone(),
            }));
            lines += 1;
        }
        for (group, partitions) in &offsets.committed {
            for ((topic, partition), committed) in partitions {
                out.push_str(&encode(&Event::Commit {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    committed: committed.clone(),
                }));
                lines += 1;
            }
        }
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(out.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(Writer {
            file,
            written: 0,
            lines,
        })
    }

    /// Journals the events, applies them, and returns once an fsync covers them.
    async fn persist(&self, events: Vec<Event>) -> Result<(), CoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let text: String = events.iter().map(encode).collect();
        let seq = {
            let mut w = lock(&self.writer);
            w.file
                .write_all(text.as_bytes())
                .map_err(|e| io_error(&self.path, e))?;
            w.written += 1;
            w.lines += events.len() as u64;
            let mut offsets = lock(&self.offsets);
            for event in events {
                apply(&mut offsets, event);
            }
            w.written
        };
        if self.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let _turn = self.sync_turn.lock().await;
        if self.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let (file, target) = {
            let w = lock(&self.writer);
            (
                w.file.try_clone().map_err(|e| io_error(&self.path, e))?,
                w.written,
            )
        };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| io_error(&path, std::io::Error::other(e.to_string())))?
            .map_err(|e| io_error(&path, e))?;
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    pub(crate) async fn commit(
        &self,
        group: &str,
        offsets: Vec<(TopicPartition, Committed)>,
    ) -> Result<(), CoreError> {
        let events = offsets
            .into_iter()
            .map(|((topic, partition), committed)| Event::Commit {
                group: group.to_string(),
                topic,
                partition,
                committed,
            })
            .collect();
        self.persist(events).await
    }

    pub(crate) async fn delete(
        &self,
        group: &str,
        partitions: Vec<TopicPartition>,
    ) -> Result<(), CoreError> {
        let events = partitions
            .into_iter()
            .map(|(topic, partition)| Event::Delete {
                group: group.to_string(),
                topic,
                partition,
            })
            .collect();
        self.persist(events).await
    }

    /// Records a group's protocol type if it changed.
    pub(crate) async fn set_protocol_type(
        &self,
        group: &str,
        protocol_type: &str,
    ) -> Result<(), CoreError> {
        let known = lock(&self.offsets).protocol_types.get(group).cloned();
        if known.as_deref() == Some(protocol_type) {
            return Ok(());
        }
        self.persist(vec![Event::ProtocolType {
            group: group.to_string(),
            protocol_type: protocol_type.to_string(),
        }])
        .await
    }

    pub(crate) fn protocol_type(&self, group: &str) -> Option<String> {
        lock(&self.offsets).protocol_types.get(group).cloned()
    }

    pub(crate) fn get(&self, group: &str, tp: &TopicPartition) -> Option<Committed> {
        lock(&self.offsets)
            .committed
            .get(group)
            .and_then(|g| g.get(tp).cloned())
    }

    /// Every committed offset of a group, sorted by topic and partition.
    pub(crate) fn all(&self, group: &str) -> Vec<(TopicPartition, Committed)> {
        lock(&self.offsets)
            .committed
            .get(group)
            .map(|g| g.iter().map(|(tp, c)| (tp.clone(), c.clone())).collect())
            .unwrap_or_default()
    }

    /// Groups that have committed offsets.
    pub(crate) fn groups(&self) -> Vec<String> {
        lock(&self.offsets).committed.keys().cloned().collect()
    }

    /// Offsets of `group` committed before `cutoff_ms`.
    pub(crate) fn older_than(&self, group: &str, cutoff_ms: i64) -> Vec<TopicPartition> {
        lock(&self.offsets)
            .committed
            .get(group)
            .map(|g| {
                g.iter()
                    .filter(|(_, c)| c.commit_ms < cutoff_ms)
                    .map(|(tp, _)| tp.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Rewrites the journal if it has grown far past the live offsets.
    /// Blocking; commits wait on the writer lock meanwhile.
    pub(crate) fn compact_if_needed(&self) -> Result<(), CoreError> {
        let mut w = lock(&self.writer);
        let offsets = lock(&self.offsets);
        let live: u64 = offsets
            .committed
            .values()
            .map(|g| g.len() as u64)
            .sum::<u64>()
            + offsets.protocol_types.len() as u64;
        if w.lines < live + JOURNAL_GARBAGE_LINES_MAX {
            return Ok(());
        }
        // Everything written so far is in `offsets`, so the rewrite covers it;
        // the rewrite's fsync makes it all durable.
        let written = w.written;
        let fresh = Self::rewrite(&self.dir, &self.path, &offsets)?;
        w.file = fresh.file;
        w.lines = fresh.lines;
        self.synced.fetch_max(written, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(offset: i64) -> Committed {
        Committed {
            offset,
            leader_epoch: -1,
            metadata: Some("m".into()),
            commit_ms: 1000,
        }
    }

    #[tokio::test]
    async fn commits_survive_reopen_and_deletes_stick() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path()).unwrap();
        store
            .commit("g", vec![(("t".into(), 0), c(5)), (("t".into(), 1), c(7))])
            .await
            .unwrap();
        store
            .commit("g", vec![(("t".into(), 0), c(6))])
            .await
            .unwrap();
        store
            .commit("h", vec![(("u".into(), 0), c(1))])
            .await
            .unwrap();
        store.delete("h", vec![("u".into(), 0)]).await.unwrap();
        drop(store);
        let store = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(store.get("g", &("t".into(), 0)), Some(c(6)));
        assert_eq!(store.get("g", &("t".into(), 1)), Some(c(7)));
        assert_eq!(store.groups(), vec!["g".to_string()]);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path()).unwrap();
        store
            .commit("g", vec![(("t".into(), 0), c(1))])
            .await
            .unwrap();
        store
            .commit("g", vec![(("t".into(), 0), c(2))])
            .await
            .unwrap();
        drop(store);
        let path = dir.path().join(JOURNAL_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let store = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(store.get("g", &("t".into(), 0)), Some(c(1)));
    }

    #[tokio::test]
    async fn concurrent_commits_share_fsyncs_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OffsetStore::open(dir.path()).unwrap());
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move {
                    s.commit("g", vec![(("t".into(), i), c(i64::from(i)))])
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        drop(store);
        let store = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(store.all("g").len(), 50);
    }
}
