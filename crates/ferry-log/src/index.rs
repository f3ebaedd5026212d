//! The two sparse indexes of a segment, in memory, and their file format.
//!
//! - The offset index maps the offset of a batch (relative to the segment's
//!   base offset) to the byte position where that batch starts; one entry per
//!   `index_interval_bytes` of log. File: 8-byte entries, `u32` relative
//!   offset then `u32` position, big-endian.
//! - The time index maps the largest timestamp seen so far in the segment to
//!   the relative offset of the batch that holds it; an entry is added at an
//!   index point only when that maximum has grown, so timestamps strictly
//!   increase. File: 12-byte entries, `i64` timestamp then `u32` relative
//!   offset, big-endian.
//!
//! Indexes are kept whole in memory, and the files are only a cache written
//! when a segment is sealed and at shutdown: a lookup never touches the disk.
//! This module does no I/O and must not depend on the segment or log modules;
//! checking an index against the log file it describes is the segment's job.

/// Size of one offset index entry on disk.
pub(crate) const OFFSET_ENTRY_BYTES: usize = 8;
/// Size of one time index entry on disk.
pub(crate) const TIME_ENTRY_BYTES: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// Sparse map from relative offset to byte position, sorted on both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    pub fn entries(&self) -> &[OffsetEntry] {
        &self.entries
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    /// Adds an entry. Entries must grow on both fields: a lookup binary-searches
    /// on the offset and trusts the position order.
    pub fn push(&mut self, relative_offset: u32, position: u32) {
        if let Some(last) = self.entries.last() {
            assert!(
                relative_offset > last.relative_offset && position > last.position,
                "offset index entries must grow: {last:?} then ({relative_offset}, {position})"
            );
        }
        self.entries.push(OffsetEntry {
            relative_offset,
            position,
        });
    }

    /// The last indexed batch starting at or before `relative_offset`, or
    /// the segment's first batch (offset 0 at position 0) if none is: the
    /// batch holding that offset starts there or later, so a reader walks
    /// forward from it. The entry's offset is returned with its position
    /// because a reader checks each batch's stored base offset against the
    /// offset it expects there.
    pub fn lookup(&self, relative_offset: u32) -> OffsetEntry {
        let after = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        match after {
            0 => OffsetEntry {
                relative_offset: 0,
                position: 0,
            },
            n => self.entries[n - 1],
        }
    }

    /// Forgets the entries of batches at or past `position` (the log file is
    /// being cut there).
    pub fn truncate_at_position(&mut self, position: u64) {
        let keep = self
            .entries
            .partition_point(|e| u64::from(e.position) < position);
        self.entries.truncate(keep);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    /// Decodes an index file, checking what can be checked without the log:
    /// whole entries, both fields strictly increasing, and every position
    /// leaving room for a batch header inside a log of `log_len_bytes`.
    pub fn decode(bytes: &[u8], log_len_bytes: u64, header_bytes: u64) -> Result<Self, String> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_BYTES) {
            return Err(format!(
                "{} bytes is not a whole number of {OFFSET_ENTRY_BYTES}-byte entries",
                bytes.len()
            ));
        }
        let mut index = OffsetIndex::default();
        for chunk in bytes.chunks_exact(OFFSET_ENTRY_BYTES) {
            let relative_offset = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let position = u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            if let Some(last) = index.last()
                && (relative_offset <= last.relative_offset || position <= last.position)
            {
                return Err(format!(
                    "entry ({relative_offset}, {position}) does not follow ({}, {})",
                    last.relative_offset, last.position
                ));
            }
            if u64::from(position) + header_bytes > log_len_bytes {
                return Err(format!(
                    "entry ({relative_offset}, {position}) points past the end of a {log_len_bytes}-byte log"
                ));
            }
            index.entries.push(OffsetEntry {
                relative_offset,
                position,
            });
        }
        Ok(index)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

/// Sparse map from "largest timestamp so far" to the batch holding it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    pub fn entries(&self) -> &[TimeEntry] {
        &self.entries
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// Adds an entry if `timestamp` is larger than every indexed one; a
    /// maximum that has not grown adds nothing a lookup could use.
    pub fn maybe_push(&mut self, timestamp: i64, relative_offset: u32) {
        if let Some(last) = self.entries.last() {
            if timestamp <= last.timestamp {
                return;
            }
            assert!(
                relative_offset >= last.relative_offset,
                "a larger maximum timestamp cannot come from an earlier batch"
            );
        }
        self.entries.push(TimeEntry {
            timestamp,
            relative_offset,
        });
    }

    /// The relative offset of a batch such that every batch up to and
    /// including it holds only timestamps below `timestamp`: a search for the
    /// first record at or after `timestamp` can start there. `None` means
    /// start at the beginning of the segment.
    pub fn lookup(&self, timestamp: i64) -> Option<u32> {
        let below = self.entries.partition_point(|e| e.timestamp < timestamp);
        match below {
            0 => None,
            n => Some(self.entries[n - 1].relative_offset),
        }
    }

    /// Forgets the entries pointing at batches from `relative_offset` on.
    pub fn truncate_at_offset(&mut self, relative_offset: u64) {
        let keep = self
            .entries
            .partition_point(|e| u64::from(e.relative_offset) < relative_offset);
        self.entries.truncate(keep);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.timestamp.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        out
    }

    /// Decodes a time index file: whole entries, timestamps strictly
    /// increasing, offsets never decreasing. Whether the offsets exist in the
    /// segment is checked by the caller, who knows where the segment ends.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if !bytes.len().is_multiple_of(TIME_ENTRY_BYTES) {
            return Err(format!(
                "{} bytes is not a whole number of {TIME_ENTRY_BYTES}-byte entries",
                bytes.len()
            ));
        }
        let mut index = TimeIndex::default();
        for chunk in bytes.chunks_exact(TIME_ENTRY_BYTES) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&chunk[..8]);
            let timestamp = i64::from_be_bytes(ts);
            let relative_offset = u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
            if let Some(last) = index.last()
                && (timestamp <= last.timestamp || relative_offset < last.relative_offset)
            {
                return Err(format!(
                    "entry ({timestamp}, {relative_offset}) does not follow ({}, {})",
                    last.timestamp, last.relative_offset
                ));
            }
            index.entries.push(TimeEntry {
                timestamp,
                relative_offset,
            });
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_the_entry_at_or_before() {
        let mut ix = OffsetIndex::default();
        let entry = |relative_offset, position| OffsetEntry {
            relative_offset,
            position,
        };
        assert_eq!(ix.lookup(5), entry(0, 0));
        ix.push(10, 100);
        ix.push(20, 250);
        assert_eq!(ix.lookup(0), entry(0, 0));
        assert_eq!(ix.lookup(9), entry(0, 0));
        assert_eq!(ix.lookup(10), entry(10, 100));
        assert_eq!(ix.lookup(19), entry(10, 100));
        assert_eq!(ix.lookup(20), entry(20, 250));
        assert_eq!(ix.lookup(u32::MAX), entry(20, 250));
    }

    #[test]
    fn offset_index_round_trips_and_truncates() {
        let mut ix = OffsetIndex::default();
        ix.push(3, 70);
        ix.push(9, 300);
        ix.push(12, 512);
        let bytes = ix.encode();
        assert_eq!(bytes.len(), 3 * OFFSET_ENTRY_BYTES);
        assert_eq!(OffsetIndex::decode(&bytes, 1000, 61), Ok(ix.clone()));
        ix.truncate_at_position(300);
        assert_eq!(ix.entries().len(), 1);
    }

    #[test]
    fn offset_index_decode_rejects_bad_files() {
        let mut ix = OffsetIndex::default();
        ix.push(3, 70);
        ix.push(9, 300);
        let bytes = ix.encode();
        assert!(OffsetIndex::decode(&bytes[..bytes.len() - 1], 1000, 61).is_err());
        assert!(
            OffsetIndex::decode(&bytes, 340, 61).is_err(),
            "past the end"
        );
        let mut swapped = bytes[8..].to_vec();
        swapped.extend_from_slice(&bytes[..8]);
        assert!(
            OffsetIndex::decode(&swapped, 1000, 61).is_err(),
            "not monotonic"
        );
        assert!(
            OffsetIndex::decode(&[0u8; 16], 1000, 61).is_err(),
            "zero-filled"
        );
    }

    #[test]
    fn time_index_keeps_only_growing_maxima() {
        let mut ix = TimeIndex::default();
        assert_eq!(ix.lookup(5), None);
        ix.maybe_push(100, 0);
        ix.maybe_push(100, 4);
        ix.maybe_push(90, 6);
        ix.maybe_push(200, 8);
        assert_eq!(ix.entries().len(), 2);
        assert_eq!(ix.lookup(100), None);
        assert_eq!(ix.lookup(101), Some(0));
        assert_eq!(ix.lookup(201), Some(8));
        let bytes = ix.encode();
        assert_eq!(TimeIndex::decode(&bytes), Ok(ix.clone()));
        assert!(TimeIndex::decode(&bytes[..13]).is_err());
        ix.truncate_at_offset(8);
        assert_eq!(ix.entries().len(), 1);
    }
}
