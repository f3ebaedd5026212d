//! The delivery-state journal of a durable queue (`state.journal` beside its
//! log): what was settled and how often what is unsettled was delivered.
//! Append-only fixed-size records, rewritten compacted when it has grown well
//! past the state it describes.
//!
//! Record (21 bytes, little-endian): `tag u8 | a u64 | b u64 | crc32c u32`
//! of the 17 bytes before it. Tags: 1 settled `a`; 2 settled `[a, b)`;
//! 3 `a` delivered for the `b`-th time; 4 queue flags `a`; 5 `a` in flight
//! with a visibility deadline at `b` (milliseconds since the epoch; 0: no
//! longer), so that a restart keeps an SQS message hidden until its deadline
//! instead of handing it out again at once. Replay stops at the first record
//! that fails its CRC (a torn tail) and cuts the file there.
//!
//! Writes go to the page cache as each operation completes (a killed process
//! loses nothing); fsyncs happen on the messaging timer and at close, so a
//! power loss may bring back a message settled in the last moments, flagged
//! redelivered — never lose one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use super::sets::RangeSet;

pub(crate) const JOURNAL_FILE: &str = "state.journal";
const RECORD_BYTES: usize = 21;
const TAG_SETTLED: u8 = 1;
const TAG_SETTLED_RANGE: u8 = 2;
const TAG_DELIVERED: u8 = 3;
const TAG_FLAGS: u8 = 4;
const TAG_HIDDEN: u8 = 5;
/// Below this size the journal is never compacted. A compaction holds the
/// queue's lock through two fsyncs (file, directory), which stalls the
/// queue for milliseconds; a busy queue journals ~42 bytes per message, so
/// at 1 MiB that happened every few seconds at 10,000 msgs/s. At 32 MiB it
/// is about every 800,000 messages, and replaying the journal on open stays
/// short (1.6 million fixed-size records).
const COMPACT_BYTES_MIN: u64 = 32 << 20;

/// Queue flag: some message may carry a per-message TTL, a delay or a
/// priority, so opening the queue must scan its log to index them.
pub(crate) const FLAG_INDEXED: u64 = 1;

/// The state a journal describes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct JournalState {
    pub settled: RangeSet,
    pub delivered: FxHashMap<u64, u32>,
    pub flags: u64,
    /// Visibility deadlines (ms since the epoch) of unsettled offsets.
    pub hidden: HashMap<u64, i64>,
}

#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    bytes: u64,
    pending: Vec<u8>,
    unsynced: bool,
}

fn record(tag: u8, a: u64, b: u64) -> [u8; RECORD_BYTES] {
    let mut r = [0u8; RECORD_BYTES];
    r[0] = tag;
    r[1..9].copy_from_slice(&a.to_le_bytes());
    r[9..17].copy_from_slice(&b.to_le_bytes());
    let crc = crc32c::crc32c(&r[..17]);
    r[17..21].copy_from_slice(&crc.to_le_bytes());
    r
}

fn u64_at(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl Journal {
    /// Opens (creating) the journal in `dir` and replays it.
    pub fn open(dir: &Path) -> io::Result<(Journal, JournalState)> {
        let path = dir.join(JOURNAL_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut state = JournalState::default();
        let mut good = 0usize;
        for r in bytes.chunks_exact(RECORD_BYTES) {
            let crc = u32::from_le_bytes([r[17], r[18], r[19], r[20]]);
            if crc32c::crc32c(&r[..17]) != crc {
                break;
            }
            let (a, b) = (u64_at(&r[1..9]), u64_at(&r[9..17]));
            match r[0] {
                TAG_SETTLED => {
                    state.settled.insert(a);
                    state.delivered.remove(&a);
                    state.hidden.remove(&a);
                }
                TAG_SETTLED_RANGE => {
                    state.settled.insert_range(a, b);
                    if !state.delivered.is_empty() {
                        state.delivered.retain(|o, _| *o < a || *o >= b);
                    }
                    if !state.hidden.is_empty() {
                        state.hidden.retain(|o, _| *o < a || *o >= b);
                    }
                }
                TAG_DELIVERED => {
                    if !state.settled.contains(a) {
                        state
                            .delivered
                            .insert(a, u32::try_from(b).unwrap_or(u32::MAX));
                    }
                }
                TAG_FLAGS => state.flags = a,
                TAG_HIDDEN => {
                    let until = i64::try_from(b).unwrap_or(i64::MAX);
                    if until == 0 || state.settled.contains(a) {
                        state.hidden.remove(&a);
                    } else {
                        state.hidden.insert(a, until);
                    }
                }
                _ => break,
            }
            good += RECORD_BYTES;
        }
        if good < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                kept_bytes = good,
                dropped_bytes = bytes.len() - good,
                "cut a torn tail off a queue's state journal"
            );
            file.set_len(good as u64)?;
            file.sync_data()?;
        }
        Ok((
            Journal {
                dir: dir.to_path_buf(),
                path,
                file,
                bytes: good as u64,
                pending: Vec::new(),
                unsynced: false,
            },
            state,
        ))
    }

    pub fn settled(&mut self, offset: u64) {
        self.pending
            .extend_from_slice(&record(TAG_SETTLED, offset, 0));
    }

    pub fn settled_range(&mut self, start: u64, end: u64) {
        if start < end {
            self.pending
                .extend_from_slice(&record(TAG_SETTLED_RANGE, start, end));
        }
    }

    pub fn delivered(&mut self, offset: u64, count: u32) {
        self.pending
            .extend_from_slice(&record(TAG_DELIVERED, offset, u64::from(count)));
    }

    /// `offset` is in flight until `until_ms` (0: it no longer is).
    pub fn hidden(&mut self, offset: u64, until_ms: i64) {
        self.pending.extend_from_slice(&record(
            TAG_HIDDEN,
            offset,
            u64::try_from(until_ms).unwrap_or(0),
        ));
    }

    pub fn flags(&mut self, flags: u64) {
        self.pending.extend_from_slice(&record(TAG_FLAGS, flags, 0));
    }

    /// Writes what the last operation recorded (to the page cache).
    pub fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.pending);
        self.bytes += self.pending.len() as u64;
        self.pending.clear();
        self.unsynced = true;
        result
    }

    /// Writes what is pending and, if anything is unsynced, hands back a
    /// handle to fsync it with, so that the fsync can run without the
    /// queue's lock (it may take milliseconds on a busy disk). Call
    /// `sync_failed` if that fsync fails.
    pub fn begin_sync(&mut self) -> io::Result<Option<File>> {
        self.write_pending()?;
        if !self.unsynced {
            return Ok(None);
        }
        let file = self.file.try_clone()?;
        self.unsynced = false;
        Ok(Some(file))
    }

    /// The fsync begun by `begin_sync` failed: it is owed again.
    pub fn sync_failed(&mut self) {
        self.unsynced = true;
    }

    /// Fsyncs what was written, if anything was.
    pub fn sync(&mut self) -> io::Result<()> {
        self.write_pending()?;
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Whether the journal has grown well past a state this size.
    pub fn wants_compaction(&self, state_records: usize) -> bool {
        let live = (state_records * RECORD_BYTES) as u64;
        self.bytes >= COMPACT_BYTES_MIN && self.bytes > 4 * live
    }

    /// Replaces the journal with one describing `state` (the settled ranges
    /// given, the delivery counts, the visibility deadlines, the flags):
    /// temp file, fsync, rename, directory fsync.
    pub fn rewrite(
        &mut self,
        settled: impl Iterator<Item = (u64, u64)>,
        delivered: impl Iterator<Item = (u64, u32)>,
        hidden: impl Iterator<Item = (u64, i64)>,
        flags: u64,
    ) -> io::Result<()> {
        let mut out = Vec::new();
        out.extend_from_slice(&record(TAG_FLAGS, flags, 0));
        for (s, e) in settled {
            out.extend_from_slice(&record(TAG_SETTLED_RANGE, s, e));
        }
        for (o, c) in delivered {
            out.extend_from_slice(&record(TAG_DELIVERED, o, u64::from(c)));
        }
        for (o, until) in hidden {
            out.extend_from_slice(&record(TAG_HIDDEN, o, u64::try_from(until).unwrap_or(0)));
        }
        let tmp = self.dir.join(format!("{JOURNAL_FILE}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.bytes = out.len() as u64;
        self.pending.clear();
        self.unsynced = false;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, s) = Journal::open(dir.path()).unwrap();
        assert_eq!(s, JournalState::default());
        j.flags(FLAG_INDEXED);
        j.delivered(3, 1);
        j.delivered(5, 2);
        j.hidden(5, 1_700_000_000_000);
        j.hidden(3, 1_700_000_000_000);
        j.delivered(6, 1);
        j.hidden(6, 1_700_000_000_000);
        j.hidden(6, 0);
        j.settled(3);
        j.settled_range(7, 10);
        j.write_pending().unwrap();
        drop(j);
        let path = dir.path().join(JOURNAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        let (mut j, s) = Journal::open(dir.path()).unwrap();
        assert_eq!(s.flags, FLAG_INDEXED);
        assert!(s.settled.contains(3) && s.settled.contains(8) && !s.settled.contains(5));
        assert_eq!(s.delivered.get(&5), Some(&2));
        assert_eq!(s.delivered.get(&3), None);
        assert_eq!(s.hidden.get(&5), Some(&1_700_000_000_000));
        assert_eq!(s.hidden.get(&3), None);
        assert_eq!(s.hidden.get(&6), None);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() % RECORD_BYTES as u64,
            0
        );
        j.rewrite(
            s.settled.ranges(),
            s.delivered.clone().into_iter(),
            s.hidden.clone().into_iter(),
            s.flags,
        )
        .unwrap();
        drop(j);
        let (_, again) = Journal::open(dir.path()).unwrap();
        assert_eq!(again, s);
    }
}
