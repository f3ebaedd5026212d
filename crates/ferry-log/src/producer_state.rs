//! Idempotent producers' state in one log (Kafka's `ProducerStateManager`,
//! KIP-98 with the KIP-360 changes): for every producer id, its epoch and the
//! last few batches it appended. That is enough to recognise a retried batch
//! (a duplicate: acknowledged again with its original offsets, not written
//! twice) and to refuse a batch from a fenced epoch or with a gap in its
//! sequence numbers.
//!
//! The rules, checked batch by batch under the log's lock, are Kafka 3.7's:
//! - a producer the log has no state for is accepted whatever its sequence
//!   (since Kafka 2.5, KIP-360: the state may have been lost with the data to
//!   retention, and librdkafka treats UNKNOWN_PRODUCER_ID on a retried batch
//!   as fatal, so refusing would only turn a harmless case into a failure);
//! - an epoch older than the producer's current one is fenced;
//! - a newer epoch must start at sequence 0, and resets the producer's state;
//! - in the same epoch, a batch whose first and last sequence equal one of the
//!   last [`BATCHES_KEPT`] batches is a duplicate; otherwise its first
//!   sequence must follow the last one (wrapping to 0 after `i32::MAX`).
//!
//! The state is a function of the batches in the log, in order, so it can be
//! rebuilt by replaying batch headers. Snapshots (`<20-digit offset>.snapshot`,
//! the state of every producer as of that offset, CRC-32C protected) spare
//! most of that replay: the log writes one when it seals a segment and when it
//! closes, and opening loads the newest valid one and replays only what
//! follows it.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io;
use std::path::Path;

use crate::LogError;
use crate::batch::BatchHeader;

/// Batches remembered per producer: a client has at most 5 requests in
/// flight per partition with idempotence on, so only those can be retried.
pub(crate) const BATCHES_KEPT: usize = 5;
/// A producer whose batches are all gone from the log (retention) is
/// forgotten once its last batch is this old, as Kafka forgets producers
/// after `transactional.id.expiration.ms` (7 days by default).
pub(crate) const PRODUCER_EXPIRATION_MS: i64 = 7 * 24 * 60 * 60 * 1000;

const SNAPSHOT_SUFFIX: &str = ".snapshot";
const SNAPSHOT_TEMP_SUFFIX: &str = ".snapshot.tmp";
const FILE_NAME_DIGITS: usize = 20;
const SNAPSHOT_MAGIC: &[u8; 4] = b"FPSS";
const SNAPSHOT_VERSION: u16 = 1;
/// magic, version, CRC, offset, producer count.
const SNAPSHOT_HEADER_BYTES: usize = 4 + 2 + 4 + 8 + 4;
/// Where the bytes covered by the CRC start (after magic, version and CRC).
const SNAPSHOT_CRC_START: usize = 10;
/// producer id, epoch, batch count.
const ENTRY_HEADER_BYTES: usize = 8 + 2 + 1;
/// first and last sequence, base and last offset, max timestamp.
const BATCH_BYTES: usize = 4 + 4 + 8 + 8 + 8;

/// One batch a producer appended, as far as duplicate detection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
}

/// A producer's epoch and its last batches (oldest first, never empty, at
/// most [`BATCHES_KEPT`]), all of that epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<ProducerBatch>,
}

impl ProducerEntry {
    fn last(&self) -> &ProducerBatch {
        self.batches
            .back()
            .expect("a producer entry always holds a batch")
    }
}

/// The producer fields of a batch header, for a batch that has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

impl Stamp {
    /// `None` for a batch without a producer id (not idempotent) or without
    /// a sequence number (refused at validation; ignored when replaying).
    pub fn new(
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        last_offset_delta: i32,
    ) -> Option<Stamp> {
        if producer_id < 0 || base_sequence < 0 {
            return None;
        }
        Some(Stamp {
            producer_id,
            epoch,
            first_seq: base_sequence,
            last_seq: increment_sequence(base_sequence, last_offset_delta),
        })
    }

    pub fn of(header: &BatchHeader) -> Option<Stamp> {
        Stamp::new(
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
            header.last_offset_delta,
        )
    }
}

/// `sequence + increment`, wrapping to 0 after `i32::MAX` as Kafka's
/// `DefaultRecordBatch.incrementSequence` does.
pub(crate) fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    i64::from(next_seq) == i64::from(last_seq) + 1 || (next_seq == 0 && last_seq == i32::MAX)
}

/// What an append does, decided before anything is written.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// Every batch was appended before: nothing is written and the append is
    /// answered with the original offsets.
    Duplicate { base_offset: i64, last_offset: i64 },
    /// Write the batches, then [`ProducerStates::commit`] these entries.
    Append(Vec<(i64, ProducerEntry)>),
}

enum Verdict {
    Append,
    Duplicate(ProducerBatch),
}

/// Every producer's state in one log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    #[cfg(test)]
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Checks the batches of one append, in order, each against the state
    /// left by the ones before it; `base_offset` is the offset the first
    /// batch would get. Changes nothing.
    pub fn prepare(&self, headers: &[BatchHeader], base_offset: i64) -> Result<Prepared, LogError> {
        // Entries touched by this append, as they would be after it. Appends
        // hold one batch (Kafka's rule for Produce v3+) or a few, so a list
        // searched linearly is enough.
        let mut touched: Vec<(i64, Option<ProducerEntry>)> = Vec::new();
        let mut duplicate: Option<(i64, i64)> = None;
        let mut new_batches = 0usize;
        let mut next_offset = base_offset;
        for header in headers {
            let batch_base = next_offset;
            let batch_last = batch_base + i64::from(header.last_offset_delta);
            next_offset = batch_last + 1;
            let Some(stamp) = Stamp::of(header) else {
                new_batches += 1;
                continue;
            };
            let slot = match touched.iter().position(|(id, _)| *id == stamp.producer_id) {
                Some(i) => i,
                None => {
                    touched.push((
                        stamp.producer_id,
                        self.producers.get(&stamp.producer_id).cloned(),
                    ));
                    touched.len() - 1
                }
            };
            let entry = &mut touched[slot].1;
            match check(entry.as_ref(), &stamp)? {
                Verdict::Duplicate(original) => {
                    duplicate = Some(match duplicate {
                        None => (original.base_offset, original.last_offset),
                        Some((base, last)) => (
                            base.min(original.base_offset),
                            last.max(original.last_offset),
                        ),
                    });
                }
                Verdict::Append => {
                    new_batches += 1;
                    record(
                        entry,
                        &stamp,
                        ProducerBatch {
                            first_seq: stamp.first_seq,
                            last_seq: stamp.last_seq,
                            base_offset: batch_base,
                            last_offset: batch_last,
                            max_timestamp: header.max_timestamp,
                        },
                    );
                }
            }
        }
        match duplicate {
            Some((base_offset, last_offset)) if new_batches == 0 => Ok(Prepared::Duplicate {
                base_offset,
                last_offset,
            }),
            Some(_) => Err(LogError::OutOfOrderSequence {
                producer_id: headers
                    .iter()
                    .find_map(Stamp::of)
                    .map_or(-1, |s| s.producer_id),
                reason: "the append mixes batches already in the log with new ones".to_string(),
            }),
            None => Ok(Prepared::Append(
                touched
                    .into_iter()
                    .filter_map(|(id, entry)| entry.map(|e| (id, e)))
                    .collect(),
            )),
        }
    }

    /// Makes the entries of a prepared append current, once it is written.
    pub fn commit(&mut self, entries: Vec<(i64, ProducerEntry)>) {
        self.producers.extend(entries);
    }

    /// Replays one batch read back from the log (no checks: it passed them
    /// when it was appended).
    pub fn replay(&mut self, stamp: &Stamp, batch: ProducerBatch) {
        let mut entry = self.producers.remove(&stamp.producer_id);
        record(&mut entry, stamp, batch);
        if let Some(entry) = entry {
            self.producers.insert(stamp.producer_id, entry);
        }
    }

    /// Forgets the batches at or after `offset` (they were discarded from
    /// the log), and the producers left with none. A producer forgotten so
    /// is unknown, hence accepted whatever its sequence: the batches it will
    /// retry are exactly the discarded ones.
    pub fn truncate_from(&mut self, offset: i64) {
        self.producers.retain(|_, entry| {
            while entry
                .batches
                .back()
                .is_some_and(|b| b.base_offset >= offset)
            {
                entry.batches.pop_back();
            }
            !entry.batches.is_empty()
        });
    }

    /// Forgets producers whose batches are all before `log_start_offset`
    /// (deleted) and whose last batch is older than the expiration window.
    /// Returns how many were forgotten.
    pub fn expire(&mut self, log_start_offset: i64, now_ms: i64) -> usize {
        let before = self.producers.len();
        let horizon = now_ms.saturating_sub(PRODUCER_EXPIRATION_MS);
        self.producers.retain(|_, entry| {
            let newest = entry
                .batches
                .iter()
                .map(|b| b.max_timestamp)
                .max()
                .unwrap_or(i64::MIN);
            entry.last().last_offset >= log_start_offset || newest >= horizon
        });
        before - self.producers.len()
    }

    /// The snapshot file's bytes for the state as of `offset`.
    pub fn encode(&self, offset: i64) -> Vec<u8> {
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(
            SNAPSHOT_HEADER_BYTES
                + self.producers.len() * (ENTRY_HEADER_BYTES + BATCHES_KEPT * BATCH_BYTES),
        );
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            let entry = &self.producers[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.push(entry.batches.len() as u8);
            for b in &entry.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
                out.extend_from_slice(&b.max_timestamp.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out[SNAPSHOT_CRC_START..]);
        out[6..10].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a snapshot that must describe the state as of `offset`; the
    /// error says why it cannot be used.
    pub fn decode(bytes: &[u8], offset: i64) -> Result<ProducerStates, String> {
        if bytes.len() < SNAPSHOT_HEADER_BYTES {
            return Err(format!(
                "{} bytes are too few for a snapshot header",
                bytes.len()
            ));
        }
        if &bytes[0..4] != SNAPSHOT_MAGIC {
            return Err("not a producer state snapshot (bad magic)".to_string());
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if version != SNAPSHOT_VERSION {
            return Err(format!("snapshot version {version} is not supported"));
        }
        let stored = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
        let computed = crc32c::crc32c(&bytes[SNAPSHOT_CRC_START..]);
        if stored != computed {
            return Err(format!(
                "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ));
        }
        let mut r = Reader {
            bytes,
            at: SNAPSHOT_CRC_START,
        };
        let stated_offset = r.i64()?;
        if stated_offset != offset {
            return Err(format!(
                "holds the state at offset {stated_offset}, not {offset} as its name says"
            ));
        }
        let count = r.u32()? as usize;
        if count > (bytes.len() - SNAPSHOT_HEADER_BYTES) / (ENTRY_HEADER_BYTES + BATCH_BYTES) {
            return Err(format!(
                "{count} producers cannot fit in {} bytes",
                bytes.len()
            ));
        }
        let mut producers = HashMap::with_capacity(count);
        for _ in 0..count {
            let id = r.i64()?;
            let epoch = r.i16()?;
            let n = usize::from(r.u8()?);
            if id < 0 || n == 0 || n > BATCHES_KEPT {
                return Err(format!("producer {id} has {n} batches"));
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                let b = ProducerBatch {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    base_offset: r.i64()?,
                    last_offset: r.i64()?,
                    max_timestamp: r.i64()?,
                };
                let after_previous = batches
                    .back()
                    .is_none_or(|p: &ProducerBatch| p.last_offset < b.base_offset);
                if b.base_offset > b.last_offset || b.last_offset >= offset || !after_previous {
                    return Err(format!(
                        "producer {id} has a batch at offsets {}..={} that does not fit",
                        b.base_offset, b.last_offset
                    ));
                }
                batches.push_back(b);
            }
            if producers
                .insert(id, ProducerEntry { epoch, batches })
                .is_some()
            {
                return Err(format!("producer {id} appears twice"));
            }
        }
        if r.at != bytes.len() {
            return Err(format!(
                "{} bytes follow the last producer",
                bytes.len() - r.at
            ));
        }
        Ok(ProducerStates { producers })
    }
}

/// Checks one batch against its producer's entry (`None`: unknown producer).
fn check(entry: Option<&ProducerEntry>, stamp: &Stamp) -> Result<Verdict, LogError> {
    let Some(entry) = entry else {
        return Ok(Verdict::Append);
    };
    if stamp.epoch < entry.epoch {
        return Err(LogError::InvalidProducerEpoch {
            producer_id: stamp.producer_id,
            epoch: stamp.epoch,
            current_epoch: entry.epoch,
        });
    }
    if stamp.epoch > entry.epoch {
        if stamp.first_seq != 0 {
            return Err(LogError::OutOfOrderSequence {
                producer_id: stamp.producer_id,
                reason: format!(
                    "the first batch of epoch {} has sequence {}, not 0 (current epoch {})",
                    stamp.epoch, stamp.first_seq, entry.epoch
                ),
            });
        }
        return Ok(Verdict::Append);
    }
    if let Some(original) = entry
        .batches
        .iter()
        .find(|b| b.first_seq == stamp.first_seq && b.last_seq == stamp.last_seq)
    {
        return Ok(Verdict::Duplicate(*original));
    }
    let last_seq = entry.last().last_seq;
    if !in_sequence(last_seq, stamp.first_seq) {
        return Err(LogError::OutOfOrderSequence {
            producer_id: stamp.producer_id,
            reason: format!(
                "sequence {} in epoch {} does not follow the last appended sequence {last_seq}",
                stamp.first_seq, stamp.epoch
            ),
        });
    }
    Ok(Verdict::Append)
}

/// Adds a batch to a producer's entry: a new epoch starts the entry afresh;
/// only the last [`BATCHES_KEPT`] batches are kept.
fn record(entry: &mut Option<ProducerEntry>, stamp: &Stamp, batch: ProducerBatch) {
    match entry {
        Some(e) if e.epoch == stamp.epoch => {
            e.batches.push_back(batch);
            if e.batches.len() > BATCHES_KEPT {
                e.batches.pop_front();
            }
        }
        _ => {
            *entry = Some(ProducerEntry {
                epoch: stamp.epoch,
                batches: VecDeque::from([batch]),
            });
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.at + N;
        if end > self.bytes.len() {
            return Err(format!("snapshot truncated at byte {}", self.at));
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.bytes[self.at..end]);
        self.at = end;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take()?))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.take()?))
    }
}

pub(crate) fn snapshot_file_name(offset: i64) -> String {
    format!(
        "{offset:0width$}{SNAPSHOT_SUFFIX}",
        width = FILE_NAME_DIGITS
    )
}

/// The offset named by a snapshot file name, or `None` for any other file.
pub(crate) fn parse_snapshot_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    if digits.len() != FILE_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok()
}

/// Whether `name` is a temporary snapshot left by a crash mid-write.
pub(crate) fn is_stale_snapshot_temp(name: &str) -> bool {
    name.strip_suffix(SNAPSHOT_TEMP_SUFFIX)
        .is_some_and(|d| d.len() == FILE_NAME_DIGITS && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Writes the snapshot of `states` as of `offset` through a fsynced
/// temporary file renamed into place. The caller fsyncs the directory.
pub(crate) fn write_snapshot(dir: &Path, offset: i64, states: &ProducerStates) -> io::Result<()> {
    crate::segment::write_replacing(
        &dir.join(snapshot_file_name(offset)),
        &states.encode(offset),
    )
}

/// Reads the snapshot at `offset`; the error says why it cannot be used.
pub(crate) fn read_snapshot(dir: &Path, offset: i64) -> Result<ProducerStates, String> {
    let path = dir.join(snapshot_file_name(offset));
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    ProducerStates::decode(&bytes, offset)
}

/// Deletes the snapshot at `offset`, logging rather than failing: a snapshot
/// left behind is only ignored or used later.
pub(crate) fn delete_snapshot(dir: &Path, offset: i64) {
    let path = dir.join(snapshot_file_name(offset));
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not delete a producer state snapshot")
        }
    }
}

/// The offsets of the snapshot files in `dir`, sorted.
pub(crate) fn list_snapshots(dir: &Path) -> io::Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(offset) = entry
            .file_name()
            .to_str()
            .and_then(parse_snapshot_file_name)
        {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> Stamp {
        Stamp::new(producer_id, epoch, first_seq, count - 1).expect("idempotent")
    }

    fn batch(s: &Stamp, base_offset: i64, count: i64) -> ProducerBatch {
        ProducerBatch {
            first_seq: s.first_seq,
            last_seq: s.last_seq,
            base_offset,
            last_offset: base_offset + count - 1,
            max_timestamp: 1_000 + base_offset,
        }
    }

    #[test]
    fn sequences_wrap_to_zero_after_i32_max() {
        assert_eq!(increment_sequence(5, 3), 8);
        assert_eq!(increment_sequence(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 4), 2);
        assert!(in_sequence(i32::MAX, 0));
        assert!(in_sequence(7, 8));
        assert!(!in_sequence(7, 9));
        assert!(!in_sequence(i32::MAX, i32::MIN));
        // Sequences MAX-1, MAX, 0, 1.
        let s = stamp(1, 0, i32::MAX - 1, 4);
        assert_eq!((s.first_seq, s.last_seq), (i32::MAX - 1, 1));
    }

    #[test]
    fn unknown_producers_start_anywhere_known_ones_must_follow_on() {
        let mut states = ProducerStates::default();
        let first = stamp(7, 0, 42, 3);
        assert!(matches!(check(None, &first), Ok(Verdict::Append)));
        states.replay(&first, batch(&first, 0, 3));
        let entry = states.get(7).cloned();
        assert!(matches!(
            check(entry.as_ref(), &stamp(7, 0, 45, 1)),
            Ok(Verdict::Append)
        ));
        assert!(matches!(
            check(entry.as_ref(), &stamp(7, 0, 46, 1)),
            Err(LogError::OutOfOrderSequence { .. })
        ));
        assert!(matches!(
            check(entry.as_ref(), &stamp(7, 0, 42, 3)),
            Ok(Verdict::Duplicate(b)) if b.base_offset == 0
        ));
        // Same first sequence, different last: not the same batch.
        assert!(matches!(
            check(entry.as_ref(), &stamp(7, 0, 42, 2)),
            Err(LogError::OutOfOrderSequence { .. })
        ));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for i in 0..7 {
            let s = stamp(3, 1, i * 10, 10);
            states.replay(&s, batch(&s, i64::from(i) * 10, 10));
        }
        let entry = states.get(3).expect("entry");
        assert_eq!(entry.batches.len(), BATCHES_KEPT);
        assert_eq!(entry.batches[0].first_seq, 20);
        assert!(matches!(
            check(Some(entry), &stamp(3, 1, 20, 10)),
            Ok(Verdict::Duplicate(_))
        ));
        assert!(matches!(
            check(Some(entry), &stamp(3, 1, 10, 10)),
            Err(LogError::OutOfOrderSequence { .. })
        ));
    }

    #[test]
    fn truncation_forgets_discarded_batches_and_emptied_producers() {
        let mut states = ProducerStates::default();
        let a = stamp(1, 0, 0, 5);
        states.replay(&a, batch(&a, 0, 5));
        let b = stamp(2, 0, 0, 5);
        states.replay(&b, batch(&b, 5, 5));
        let a2 = stamp(1, 0, 5, 5);
        states.replay(&a2, batch(&a2, 10, 5));
        states.truncate_from(5);
        assert_eq!(states.len(), 1);
        assert_eq!(states.get(1).expect("kept").batches.len(), 1);
        assert!(states.get(2).is_none());
    }

    #[test]
    fn expiry_needs_both_deleted_data_and_age() {
        let mut states = ProducerStates::default();
        let old = stamp(1, 0, 0, 1);
        states.replay(&old, batch(&old, 0, 1));
        let kept = stamp(2, 0, 0, 1);
        states.replay(&kept, batch(&kept, 100, 1));
        let now = 1_000 + PRODUCER_EXPIRATION_MS + 50;
        // Producer 2's batch is old too, but still in the log.
        assert_eq!(states.expire(10, now), 1);
        assert!(states.get(1).is_none());
        assert!(states.get(2).is_some());
        // Recent enough: kept although its data is gone.
        assert_eq!(states.expire(1_000, 1_100), 0);
    }

    #[test]
    fn snapshots_round_trip_and_reject_damage() {
        let mut states = ProducerStates::default();
        for id in [9i64, 2, 5] {
            for i in 0..(id as i32) {
                let s = stamp(id, 3, i * 2, 2);
                states.replay(&s, batch(&s, id * 100 + i64::from(i) * 2, 2));
            }
        }
        let bytes = states.encode(2_000);
        assert_eq!(ProducerStates::decode(&bytes, 2_000), Ok(states.clone()));
        assert!(ProducerStates::decode(&bytes, 2_001).is_err());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                ProducerStates::decode(&bad, 2_000).is_err(),
                "flip at byte {i}"
            );
        }
        for len in 0..bytes.len() {
            assert!(ProducerStates::decode(&bytes[..len], 2_000).is_err());
        }
        let empty = ProducerStates::default();
        assert_eq!(ProducerStates::decode(&empty.encode(0), 0), Ok(empty));
    }

    #[test]
    fn snapshot_names() {
        assert_eq!(
            snapshot_file_name(42),
            "00000000000000000042.snapshot".to_string()
        );
        assert_eq!(
            parse_snapshot_file_name("00000000000000000042.snapshot"),
            Some(42)
        );
        assert_eq!(parse_snapshot_file_name("42.snapshot"), None);
        assert!(is_stale_snapshot_temp("00000000000000000042.snapshot.tmp"));
        assert!(!is_stale_snapshot_temp("00000000000000000042.snapshot"));
    }
}
