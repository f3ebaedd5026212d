//! What SQS keeps beside the engine's queues, under `<data dir>/sqs/`:
//! - `queues.json`: every SQS queue's attributes, tags, permissions and
//!   timestamps, rewritten whole (temp file, fsync, rename, fsync of the
//!   directory) on each change — queue changes are rare, messages never
//!   touch it;
//! - `dedup.log`: FIFO deduplication entries, one JSON line each, fsynced
//!   before SendMessage answers (concurrent sends share an fsync), so that
//!   deduplication holds across a crash within its 5-minute window;
//!   compacted on open.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Permission {
    pub accounts: Vec<String>,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueMeta {
    pub name: String,
    /// Generated at creation: receipt handles name it, so a handle from a
    /// deleted queue of the same name is refused.
    pub incarnation: String,
    pub fifo: bool,
    pub created_s: i64,
    pub modified_s: i64,
    /// Settable attributes, every one present (defaults filled in).
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub permissions: BTreeMap<String, Permission>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    queues: Vec<QueueMeta>,
}

/// One FIFO deduplication entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DedupEntry {
    /// The queue's incarnation.
    pub q: String,
    /// Scope and id (`<group>\n<id>` or `\n<id>`).
    pub k: String,
    pub id: String,
    pub seq: String,
    /// Expiry, milliseconds since the epoch.
    pub exp: i64,
}

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    write: Mutex<()>,
    dedup: Mutex<DedupFile>,
    /// Group commit of `dedup.log`: the number of appends an fsync has
    /// covered. Held during the fsync, so appends that arrive meanwhile wait
    /// and then find themselves covered by the next one (or this one).
    dedup_synced: Mutex<u64>,
    /// The same file, for fsyncs made without holding `dedup`.
    dedup_sync: File,
}

#[derive(Debug)]
struct DedupFile {
    file: File,
    /// Appends written so far.
    appends: u64,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Store {
    /// Opens (creating) the directory; returns the queues and the dedup
    /// entries that have not expired at `now_ms`.
    pub fn open(
        dir: &Path,
        now_ms: i64,
    ) -> std::io::Result<(Store, Vec<QueueMeta>, Vec<DedupEntry>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("queues.json");
        let queues = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: StoreFile = serde_json::from_slice(&bytes).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                file.queues
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let dedup_path = dir.join("dedup.log");
        let mut live = Vec::new();
        if let Ok(f) = File::open(&dedup_path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                // A torn last line (crash mid-write) is skipped: its send
                // was never acknowledged.
                if let Ok(e) = serde_json::from_str::<DedupEntry>(&line)
                    && e.exp > now_ms
                {
                    live.push(e);
                }
            }
        }
        // Compact: only live entries survive.
        let tmp = dir.join("dedup.log.tmp");
        {
            let mut f = File::create(&tmp)?;
            for e in &live {
                let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
                line.push(b'\n');
                f.write_all(&line)?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &dedup_path)?;
        sync_dir(dir)?;
        let dedup = OpenOptions::new().append(true).open(&dedup_path)?;
        let dedup_sync = dedup.try_clone()?;
        Ok((
            Store {
                dir: dir.to_path_buf(),
                write: Mutex::new(()),
                dedup: Mutex::new(DedupFile {
                    file: dedup,
                    appends: 0,
                }),
                dedup_synced: Mutex::new(0),
                dedup_sync,
            },
            queues,
            live,
        ))
    }

    /// Writes every queue's metadata durably. Blocking (fsyncs).
    pub fn save(&self, queues: Vec<QueueMeta>) -> std::io::Result<()> {
        let _g = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let file = StoreFile { version: 1, queues };
        let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        let tmp = self.dir.join("queues.json.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join("queues.json"))?;
        sync_dir(&self.dir)
    }

    /// Appends deduplication entries and returns once an fsync covers them.
    /// Blocking (call it off the async runtime). Concurrent callers share
    /// fsyncs: one fsync covers every append written before it started.
    pub fn append_dedup(&self, entries: &[DedupEntry]) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in entries {
            buf.extend(serde_json::to_vec(e).map_err(std::io::Error::other)?);
            buf.push(b'\n');
        }
        let mine = {
            let mut f = self.dedup.lock().unwrap_or_else(|e| e.into_inner());
            f.file.write_all(&buf)?;
            f.appends += 1;
            f.appends
        };
        let mut synced = self.dedup_synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= mine {
            return Ok(());
        }
        // Everything written up to now is covered by this fsync.
        let upto = self.dedup.lock().unwrap_or_else(|e| e.into_inner()).appends;
        self.dedup_sync.sync_data()?;
        *synced = upto;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn concurrent_dedup_appends_all_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, live) = Store::open(dir.path(), 0).unwrap();
        assert!(live.is_empty());
        let store = std::sync::Arc::new(store);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let e = DedupEntry {
                            q: "inc".into(),
                            k: format!("\n{t}-{i}"),
                            id: format!("{t}-{i}"),
                            seq: String::new(),
                            exp: 1_000,
                        };
                        store.append_dedup(&[e]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(store);
        let (_, _, live) = Store::open(dir.path(), 500).unwrap();
        assert_eq!(live.len(), 400);
        // Expired entries are dropped by the compaction on open.
        let (_, _, live) = Store::open(dir.path(), 1_000).unwrap();
        assert!(live.is_empty());
    }
}
