//! One segment of a log: a `<20-digit base offset>.log` file of whole record
//! batches, the in-memory state needed to append to it (size, next offset,
//! largest timestamp, sparse indexes), and the scans that load, verify,
//! rebuild and recover it when a log is opened.
//!
//! This module knows nothing of locks, readers or durability policies; the log
//! decides when to call what. Bad bytes on disk end in an error or a
//! truncation report, never in a panic.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::LogError;
use crate::batch::{self, BatchHeader, HEADER_BYTES, LOG_OVERHEAD_BYTES};
use crate::index::{OFFSET_ENTRY_BYTES, OffsetIndex, TIME_ENTRY_BYTES, TimeIndex};

/// Digits of the base offset in a segment file name: enough for any
/// non-negative i64, zero-padded so that names sort like offsets.
const FILE_NAME_DIGITS: usize = 20;
/// Bytes read at once when scanning a segment sequentially, and the largest
/// batch whose CRC is checked from one buffer (larger ones are streamed).
const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Bytes of a batch header a reader needs to walk from batch to batch:
/// baseOffset (0..8), batchLength (8..12) and lastOffsetDelta (23..27).
pub(crate) const WALK_HEADER_BYTES: usize = 27;
/// Entries of a loaded offset index whose batch header is read back from the
/// log to check that they point at real batch starts. Checking every entry
/// would read the whole segment, which the index exists to avoid.
const INDEX_ENTRIES_VERIFIED_MAX: usize = 16;
const MAGIC_V2: i8 = 2;
/// Where the bytes covered by a batch's CRC start (after baseOffset,
/// batchLength, partitionLeaderEpoch, magic and the CRC itself).
const CRC_START_BYTES: u64 = 21;
/// `batchLength` of a batch holding no records: the smallest valid value.
const BATCH_LENGTH_MIN: i32 = (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;

pub(crate) fn log_file_name(base_offset: i64) -> String {
    format!("{base_offset:0width$}.log", width = FILE_NAME_DIGITS)
}

/// The base offset named by a segment file name, or `None` for any other file.
pub(crate) fn parse_log_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != FILE_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok()
}

/// Whether `name` is a temporary index file left by a crash mid-write.
pub(crate) fn is_stale_index_temp(name: &str) -> bool {
    let Some(stem) = name
        .strip_suffix(".index.tmp")
        .or_else(|| name.strip_suffix(".timeindex.tmp"))
    else {
        return false;
    };
    stem.len() == FILE_NAME_DIGITS && stem.bytes().all(|b| b.is_ascii_digit())
}

/// Fsyncs a directory, making the creation, renaming or removal of the files
/// in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Where one stored batch is and what it holds, as far as the log cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchMeta {
    pub position: u64,
    pub len: u64,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    /// The producer fields of the header (-1 when the batch has none), for
    /// rebuilding the idempotent producers' state.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// A snapshot of a segment's append state at a batch boundary: how far the
/// log has been written, made durable, or made visible. Restoring a mark
/// (after a failed fsync) puts the segment back exactly as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub segment_base: i64,
    /// The first offset after the mark.
    pub next_offset: i64,
    /// Bytes of the segment before the mark.
    pub size: u64,
    /// Largest timestamp in the segment before the mark, with the relative
    /// offset of the batch holding it.
    pub max_timestamp: Option<(i64, u32)>,
    pub bytes_since_index_entry: u64,
}

impl Mark {
    /// Whether `self` lies further along the log than `other`.
    pub fn is_after(&self, other: &Mark) -> bool {
        (self.next_offset, self.segment_base, self.size)
            > (other.next_offset, other.segment_base, other.size)
    }
}

/// How much of an existing segment file to trust when opening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// A sealed segment: fsynced when it was rolled. Its index files are used
    /// if they check out, else rebuilt from the batch headers.
    Sealed,
    /// The last segment after a clean shutdown: like `Sealed`, but if its
    /// indexes do not check out it is verified like `ActiveRecover`.
    ActiveTrusted,
    /// The last segment after a crash: every batch is verified, CRC included,
    /// and the file is cut at the first invalid or torn byte.
    ActiveRecover,
}

/// What recovery cut off the end of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub truncated_at: u64,
    pub bytes_discarded: u64,
    pub reason: String,
    /// Where the discarded bytes were copied, when valid batches followed the
    /// damage (so it was not a torn tail).
    pub corrupt_copy: Option<PathBuf>,
}

/// Where a walk over batches stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WalkEnd {
    /// Every byte up to the end belonged to a valid batch.
    Clean,
    /// The batch at `position` is missing, torn or fails a check.
    Invalid { position: u64, reason: String },
}

/// The fields a reader needs to step over a batch. `base_offset` is as
/// stored: the CRC does not cover it, so a reader compares it with the
/// offset it expects there before trusting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalkHeader {
    pub base_offset: i64,
    pub last_offset_delta: i32,
    pub len: u64,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: i64,
    pub path: PathBuf,
    /// Shared with readers, who keep reading it without the log's lock and
    /// even after retention has unlinked it.
    pub file: Arc<File>,
    /// Bytes written (the position of the next batch).
    pub size: u64,
    /// The offset the next batch will get.
    pub next_offset: i64,
    max_timestamp: Option<(i64, u32)>,
    bytes_since_index_entry: u64,
    /// Clock time of the first append since this segment was created or the
    /// log opened; the segment's age for `segment.ms` counts from here.
    pub first_append_ms: Option<i64>,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Whether the index files on disk describe the segment as it is now.
    pub index_files_current: bool,
}

impl Segment {
    fn empty(base_offset: i64, path: PathBuf, file: File) -> Segment {
        Segment {
            base_offset,
            path,
            file: Arc::new(file),
            size: 0,
            next_offset: base_offset,
            max_timestamp: None,
            bytes_since_index_entry: 0,
            first_append_ms: None,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            index_files_current: false,
        }
    }

    /// Creates the file of a new, empty segment. The caller fsyncs the
    /// directory. Refuses to reuse an existing file: it could hold data.
    pub fn create(dir: &Path, base_offset: i64) -> Result<Segment, LogError> {
        let path = dir.join(log_file_name(base_offset));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        Ok(Segment::empty(base_offset, path, file))
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub fn max_timestamp(&self) -> Option<i64> {
        self.max_timestamp.map(|(ts, _)| ts)
    }

    pub fn index_path(&self) -> PathBuf {
        self.path.with_extension("index")
    }

    pub fn time_index_path(&self) -> PathBuf {
        self.path.with_extension("timeindex")
    }

    /// The offset relative to this segment's base, saturated: the roll rules
    /// keep real offsets within `u32`, and a saturated value still sorts last.
    pub fn relative(&self, offset: i64) -> u32 {
        u32::try_from(offset.saturating_sub(self.base_offset).max(0)).unwrap_or(u32::MAX)
    }

    /// Where a walk to the batch holding `offset` starts: the position and
    /// offset of the last indexed batch at or before it, or of the
    /// segment's first batch (also for an offset below the segment).
    pub fn walk_start(&self, offset: i64) -> (u64, i64) {
        let entry = self.offset_index.lookup(self.relative(offset));
        (
            u64::from(entry.position),
            self.base_offset + i64::from(entry.relative_offset),
        )
    }

    pub fn mark(&self) -> Mark {
        Mark {
            segment_base: self.base_offset,
            next_offset: self.next_offset,
            size: self.size,
            max_timestamp: self.max_timestamp,
            bytes_since_index_entry: self.bytes_since_index_entry,
        }
    }

    /// Forgets everything appended after `mark` (the file is cut separately).
    pub fn restore(&mut self, mark: &Mark) {
        assert_eq!(
            mark.segment_base, self.base_offset,
            "mark of another segment"
        );
        assert!(mark.size <= self.size, "a mark is never past the end");
        self.size = mark.size;
        self.next_offset = mark.next_offset;
        self.max_timestamp = mark.max_timestamp;
        self.bytes_since_index_entry = mark.bytes_since_index_entry;
        self.offset_index.truncate_at_position(mark.size);
        self.time_index
            .truncate_at_offset(u64::from(self.relative(mark.next_offset)));
        if self.size == 0 {
            self.first_append_ms = None;
        }
        self.index_files_current = false;
    }

    /// Accounts for a batch just written at the end of the segment: moves the
    /// end, tracks the largest timestamp and adds index entries, as Kafka
    /// does, at the first batch after each `index_interval_bytes` of log.
    pub fn record_batch(&mut self, meta: &BatchMeta, index_interval_bytes: u32) {
        assert_eq!(
            meta.position, self.size,
            "batches are only appended at the end"
        );
        assert!(
            meta.base_offset >= self.next_offset && meta.last_offset >= meta.base_offset,
            "offsets only grow"
        );
        let relative = self.relative(meta.base_offset);
        if self
            .max_timestamp
            .is_none_or(|(ts, _)| meta.max_timestamp > ts)
        {
            self.max_timestamp = Some((meta.max_timestamp, relative));
        }
        if meta.position > 0 && self.bytes_since_index_entry >= u64::from(index_interval_bytes) {
            // A batch past u32 positions cannot be indexed; lookups then start
            // from an earlier entry, which is slower but still right.
            let after_last = self
                .offset_index
                .last()
                .is_none_or(|e| relative > e.relative_offset);
            if let Ok(position) = u32::try_from(meta.position)
                && after_last
            {
                self.offset_index.push(relative, position);
                if let Some((ts, at)) = self.max_timestamp {
                    self.time_index.maybe_push(ts, at);
                }
            }
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += meta.len;
        self.size = meta.position + meta.len;
        self.next_offset = meta.last_offset + 1;
        self.index_files_current = false;
    }

    /// Writes both index files (each through a fsynced temporary file renamed
    /// into place, so a crash leaves the old file or the new one, never half
    /// of one). The caller fsyncs the directory.
    pub fn write_index_files(&mut self) -> io::Result<()> {
        // A last time index entry for the segment's largest timestamp, as
        // Kafka writes when a segment becomes inactive: it makes the file's
        // last entry the segment's maximum, which reopening relies on.
        if let Some((ts, at)) = self.max_timestamp {
            self.time_index.maybe_push(ts, at);
        }
        write_replacing(&self.index_path(), &self.offset_index.encode())?;
        write_replacing(&self.time_index_path(), &self.time_index.encode())?;
        self.index_files_current = true;
        Ok(())
    }

    /// Deletes the segment's files. Readers holding the `Arc<File>` keep
    /// reading the unlinked file.
    pub fn delete_files(&self) -> io::Result<()> {
        fs::remove_file(&self.path)?;
        for path in [self.index_path(), self.time_index_path()] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete index file");
                }
            }
        }
        Ok(())
    }

    /// Opens an existing segment file, loading or rebuilding its indexes and,
    /// for the last segment after a crash, cutting off a damaged tail.
    pub fn open_existing(
        path: &Path,
        base_offset: i64,
        mode: OpenMode,
        index_interval_bytes: u32,
        now_ms: i64,
    ) -> Result<(Segment, Option<Recovery>), LogError> {
        let io_err = |e| LogError::io(path, e);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io_err)
        };
        let file = open()?;
        let len = file.metadata().map_err(io_err)?.len();
        let mut segment = Segment::empty(base_offset, path.to_path_buf(), file);

        if mode != OpenMode::ActiveRecover {
            match segment
                .load_indexes(len, index_interval_bytes)
                .map_err(io_err)?
            {
                Ok(()) => {
                    segment.index_files_current = true;
                    segment.first_append_ms = (!segment.is_empty()).then_some(now_ms);
                    return Ok((segment, None));
                }
                Err(why) if mode == OpenMode::Sealed => {
                    tracing::warn!(
                        segment = %path.display(),
                        reason = %why,
                        "index files unusable; rebuilding them from the batch headers"
                    );
                    segment = Segment::empty(base_offset, path.to_path_buf(), open()?);
                    segment.rebuild(len, index_interval_bytes)?;
                    segment.first_append_ms = (!segment.is_empty()).then_some(now_ms);
                    // Saved now so that the next open is fast; failing to is
                    // harmless because they would be rebuilt again.
                    if let Err(e) = segment.write_index_files() {
                        tracing::warn!(segment = %path.display(), error = %e, "could not save rebuilt index files");
                    }
                    tracing::info!(
                        segment = %path.display(),
                        index_entries = segment.offset_index.entries().len(),
                        time_index_entries = segment.time_index.entries().len(),
                        "rebuilt index files"
                    );
                    return Ok((segment, None));
                }
                Err(why) => {
                    tracing::warn!(
                        segment = %path.display(),
                        reason = %why,
                        "indexes of the last segment unusable despite a clean shutdown; verifying it"
                    );
                    segment = Segment::empty(base_offset, path.to_path_buf(), open()?);
                }
            }
        }
        let recovery = segment.recover(len, index_interval_bytes)?;
        segment.first_append_ms = (!segment.is_empty()).then_some(now_ms);
        Ok((segment, recovery))
    }

    /// Loads both index files and checks them against the log as far as is
    /// cheap: structure, a sample of entries read back, and a walk over the
    /// batches after the last entry (which also finds where the segment
    /// ends). The outer error is an I/O failure on the log file; the inner one
    /// says why the indexes cannot be used.
    fn load_indexes(
        &mut self,
        len: u64,
        index_interval_bytes: u32,
    ) -> io::Result<Result<(), String>> {
        // An index has at most one entry per batch, and a batch is at least a
        // header long: anything larger is not an index of this file.
        let entries_max = len / HEADER_BYTES as u64 + 1;
        let offset_bytes =
            match read_index_file(&self.index_path(), entries_max * OFFSET_ENTRY_BYTES as u64) {
                Ok(bytes) => bytes,
                Err(why) => return Ok(Err(why)),
            };
        let offset_index = match OffsetIndex::decode(&offset_bytes, len, HEADER_BYTES as u64) {
            Ok(ix) => ix,
            Err(why) => return Ok(Err(format!("offset index: {why}"))),
        };
        let entries = offset_index.entries();
        let step = entries.len().div_ceil(INDEX_ENTRIES_VERIFIED_MAX).max(1);
        let sampled = entries.iter().step_by(step).chain(entries.last());
        for entry in sampled {
            let mut head = [0u8; WALK_HEADER_BYTES];
            self.file
                .read_exact_at(&mut head, u64::from(entry.position))?;
            let expected = self.base_offset + i64::from(entry.relative_offset);
            if be_i64(&head) != expected {
                return Ok(Err(format!(
                    "offset index entry for offset {expected} points at position {} where batch {} starts",
                    entry.position,
                    be_i64(&head)
                )));
            }
        }

        let time_bytes = match read_index_file(
            &self.time_index_path(),
            (entries_max + 1) * TIME_ENTRY_BYTES as u64,
        ) {
            Ok(bytes) => bytes,
            Err(why) => return Ok(Err(why)),
        };
        let time_index = match TimeIndex::decode(&time_bytes) {
            Ok(ix) => ix,
            Err(why) => return Ok(Err(format!("time index: {why}"))),
        };

        // Replay the batches from the last index point on. The time index's
        // last entry holds the largest timestamp before that point (it is
        // written when the segment is sealed or closed).
        let (start, first_offset) = offset_index.last().map_or((0, self.base_offset), |e| {
            (
                u64::from(e.position),
                self.base_offset + i64::from(e.relative_offset),
            )
        });
        self.max_timestamp = time_index.last().map(|e| (e.timestamp, e.relative_offset));
        self.offset_index = offset_index;
        self.time_index = time_index;
        self.size = start;
        self.next_offset = first_offset;
        self.bytes_since_index_entry = 0;
        let file = Arc::clone(&self.file);
        // A batch before the time index's last entry with a larger timestamp
        // contradicts the index (its last entry is the maximum so far).
        let time_last = self.time_index.last();
        let mut contradiction = None;
        let end = walk_batches(
            &file,
            start,
            len,
            first_offset,
            self.base_offset,
            false,
            |meta| {
                if contradiction.is_some() {
                    return;
                }
                if let Some(last) = time_last
                    && self.relative(meta.base_offset) < last.relative_offset
                    && meta.max_timestamp > last.timestamp
                {
                    contradiction = Some(meta.position);
                    return;
                }
                self.record_batch(meta, index_interval_bytes)
            },
        )?;
        if let Some(position) = contradiction {
            return Ok(Err(format!(
                "the batch at position {position} has a timestamp above the time index's maximum"
            )));
        }
        if let WalkEnd::Invalid { position, reason } = end {
            return Ok(Err(format!(
                "batch at position {position} after the last index entry: {reason}"
            )));
        }
        if let Some(last) = self.time_index.last()
            && self.base_offset + i64::from(last.relative_offset) >= self.next_offset
        {
            return Ok(Err(format!(
                "time index points at offset {} but the segment ends before {}",
                self.base_offset + i64::from(last.relative_offset),
                self.next_offset
            )));
        }
        Ok(Ok(()))
    }

    /// Rebuilds the indexes of a sealed segment from its batch headers. A
    /// sealed segment was fsynced before the next one was created, so a batch
    /// that does not parse or fit is damage to report, not a torn write to cut.
    fn rebuild(&mut self, len: u64, index_interval_bytes: u32) -> Result<(), LogError> {
        let file = Arc::clone(&self.file);
        let end = walk_batches(
            &file,
            0,
            len,
            self.base_offset,
            self.base_offset,
            false,
            |meta| self.record_batch(meta, index_interval_bytes),
        )
        .map_err(|e| LogError::io(&self.path, e))?;
        match end {
            WalkEnd::Clean => Ok(()),
            WalkEnd::Invalid { position, reason } => Err(LogError::CorruptSegment {
                path: self.path.clone(),
                position,
                reason,
            }),
        }
    }

    /// Verifies every batch of the last segment, CRC included, and cuts the
    /// file at the first one that is torn or invalid.
    fn recover(
        &mut self,
        len: u64,
        index_interval_bytes: u32,
    ) -> Result<Option<Recovery>, LogError> {
        let file = Arc::clone(&self.file);
        let end = walk_batches(
            &file,
            0,
            len,
            self.base_offset,
            self.base_offset,
            true,
            |meta| self.record_batch(meta, index_interval_bytes),
        )
        .map_err(|e| LogError::io(&self.path, e))?;
        let WalkEnd::Invalid { position, reason } = end else {
            return Ok(None);
        };
        let bytes_discarded = len - position;
        // A torn write only ever damages the end of the file. If a valid batch
        // follows the damage, bytes were lost in the middle (so more than the
        // one bad batch is being discarded): keep a copy for an operator.
        let later = find_valid_batch_after(&file, position + 1, len, self.next_offset)
            .map_err(|e| LogError::io(&self.path, e))?;
        let corrupt_copy = match later {
            None => None,
            Some(valid_at) => {
                let mut name = self.path.as_os_str().to_owned();
                name.push(format!(".corrupt-{position}"));
                let copy = PathBuf::from(name);
                copy_range(&file, position, len, &copy).map_err(|e| LogError::io(&copy, e))?;
                tracing::warn!(
                    segment = %self.path.display(),
                    position,
                    valid_batch_at = valid_at,
                    copy = %copy.display(),
                    "segment is corrupt in the middle: valid batches follow the damage; \
                     the discarded bytes were copied for inspection"
                );
                Some(copy)
            }
        };
        file.set_len(position)
            .map_err(|e| LogError::io(&self.path, e))?;
        file.sync_all().map_err(|e| LogError::io(&self.path, e))?;
        tracing::warn!(
            segment = %self.path.display(),
            position,
            bytes_discarded,
            reason = %reason,
            next_offset = self.next_offset,
            "truncated the last segment at its first invalid byte"
        );
        Ok(Some(Recovery {
            truncated_at: position,
            bytes_discarded,
            reason,
            corrupt_copy,
        }))
    }
}

/// Reads an index file of at most `len_max` bytes; the error says why it
/// cannot be used (missing, too large, unreadable).
fn read_index_file(path: &Path, len_max: u64) -> Result<Vec<u8>, String> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("{} is missing", path.display()));
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if len > len_max {
        return Err(format!(
            "{} has {len} bytes, more than the {len_max} an index of this segment can have",
            path.display()
        ));
    }
    fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Replaces `path` with `bytes` through a fsynced temporary file.
pub(crate) fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    let tmp = PathBuf::from(name);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// Copies bytes `[start, end)` of `file` to a new file at `dest`, fsynced.
fn copy_range(file: &File, start: u64, end: u64, dest: &Path) -> io::Result<()> {
    let mut out = File::create(dest)?;
    let mut buf = vec![0u8; SCAN_CHUNK_BYTES];
    let mut pos = start;
    while pos < end {
        let n =
            usize::try_from(end - pos).map_or(SCAN_CHUNK_BYTES, |left| left.min(SCAN_CHUNK_BYTES));
        file.read_exact_at(&mut buf[..n], pos)?;
        out.write_all(&buf[..n])?;
        pos += n as u64;
    }
    out.sync_all()
}

/// CRC-32C of bytes `[start, end)` of `file`, read in chunks so that a large
/// batch needs no buffer of its size.
fn crc_of_range(file: &File, start: u64, end: u64, scratch: &mut Vec<u8>) -> io::Result<u32> {
    let mut crc = 0u32;
    let mut pos = start;
    while pos < end {
        let n =
            usize::try_from(end - pos).map_or(SCAN_CHUNK_BYTES, |left| left.min(SCAN_CHUNK_BYTES));
        scratch.resize(n, 0);
        file.read_exact_at(&mut scratch[..n], pos)?;
        crc = crc32c::crc32c_append(crc, &scratch[..n]);
        pos += n as u64;
    }
    Ok(crc)
}

/// A window over a file for sequential scans: one read per chunk rather than
/// one per batch header.
struct ChunkReader<'a> {
    file: &'a File,
    end: u64,
    buf: Vec<u8>,
    start: u64,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a File, end: u64) -> Self {
        ChunkReader {
            file,
            end,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Bytes `[pos, pos + len)`; the caller checks that they lie before `end`.
    fn get(&mut self, pos: u64, len: usize) -> io::Result<&[u8]> {
        let held = pos >= self.start && pos + len as u64 <= self.start + self.buf.len() as u64;
        if !held {
            let want = usize::try_from(self.end - pos)
                .map_or(SCAN_CHUNK_BYTES, |left| left.min(SCAN_CHUNK_BYTES))
                .max(len);
            self.buf.resize(want, 0);
            if let Err(e) = self.file.read_exact_at(&mut self.buf, pos) {
                self.buf.clear();
                return Err(e);
            }
            self.start = pos;
        }
        let from = (pos - self.start) as usize;
        Ok(&self.buf[from..from + len])
    }
}

/// Walks the batches in `[start, end)` of `file`, the first of which must
/// have base offset `first_offset`, calling `on_batch` for each one that is
/// whole and passes the checks: a parseable v2 header, a length inside the
/// range, offsets following on from the previous batch, a record count that
/// matches `lastOffsetDelta`, offsets within `u32` of `segment_base`, and (if
/// `verify_crc`) the CRC. Stops at the first batch that fails.
pub(crate) fn walk_batches(
    file: &File,
    start: u64,
    end: u64,
    first_offset: i64,
    segment_base: i64,
    verify_crc: bool,
    mut on_batch: impl FnMut(&BatchMeta),
) -> io::Result<WalkEnd> {
    let mut reader = ChunkReader::new(file, end);
    let mut scratch = Vec::new();
    let mut pos = start;
    let mut expected = first_offset;
    while pos < end {
        let invalid = |reason: String| {
            Ok(WalkEnd::Invalid {
                position: pos,
                reason,
            })
        };
        let left = end - pos;
        if left < HEADER_BYTES as u64 {
            return invalid(format!(
                "{left} bytes at the end are too few for a batch header"
            ));
        }
        let header = match BatchHeader::parse(reader.get(pos, HEADER_BYTES)?) {
            Ok(h) => h,
            Err(e) => return invalid(e.to_string()),
        };
        if header.magic != MAGIC_V2 {
            return invalid(format!("magic {} is not a v2 batch", header.magic));
        }
        let len = header.total_len() as u64;
        if len > left {
            return invalid(format!(
                "batch of {len} bytes runs past the end ({left} bytes left)"
            ));
        }
        if header.base_offset != expected {
            return invalid(format!(
                "batch has base offset {} where {expected} was expected",
                header.base_offset
            ));
        }
        if header.last_offset_delta < 0
            || i64::from(header.records_count) != i64::from(header.last_offset_delta) + 1
        {
            return invalid(format!(
                "batch claims {} records with lastOffsetDelta {}",
                header.records_count, header.last_offset_delta
            ));
        }
        if header.last_offset() - segment_base > i64::from(u32::MAX) {
            return invalid(format!(
                "offset {} is too far from the segment base {segment_base}",
                header.last_offset()
            ));
        }
        if verify_crc {
            let checked = if len as usize <= SCAN_CHUNK_BYTES {
                batch::check_crc(&header, reader.get(pos, len as usize)?).map_err(|e| e.to_string())
            } else {
                let crc_start = pos + CRC_START_BYTES;
                let computed = crc_of_range(file, crc_start, pos + len, &mut scratch)?;
                if computed == header.crc {
                    Ok(())
                } else {
                    Err(format!(
                        "record batch CRC mismatch: stored {:#010x}, computed {computed:#010x}",
                        header.crc
                    ))
                }
            };
            if let Err(reason) = checked {
                return invalid(reason);
            }
        }
        on_batch(&BatchMeta {
            position: pos,
            len,
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
        });
        expected = header.last_offset() + 1;
        pos += len;
    }
    Ok(WalkEnd::Clean)
}

/// Looks for a whole, CRC-valid batch with base offset at least
/// `min_base_offset` starting anywhere in `[from, end)`, byte by byte: after
/// damage the length fields cannot be trusted to find the next batch. Only
/// positions with the v2 magic byte and a plausible header get their CRC
/// checked, so the scan costs little more than reading the bytes.
fn find_valid_batch_after(
    file: &File,
    from: u64,
    end: u64,
    min_base_offset: i64,
) -> io::Result<Option<u64>> {
    let header_bytes = HEADER_BYTES as u64;
    let mut window = Vec::new();
    let mut scratch = Vec::new();
    let mut window_start = from;
    while window_start + header_bytes <= end {
        let window_len = usize::try_from(end - window_start)
            .map_or(SCAN_CHUNK_BYTES + HEADER_BYTES, |left| {
                left.min(SCAN_CHUNK_BYTES + HEADER_BYTES)
            });
        window.resize(window_len, 0);
        file.read_exact_at(&mut window, window_start)?;
        let candidates = (window_len - HEADER_BYTES + 1).min(SCAN_CHUNK_BYTES);
        for i in 0..candidates {
            if window[i + 16] as i8 != MAGIC_V2 {
                continue;
            }
            let Ok(header) = BatchHeader::parse(&window[i..i + HEADER_BYTES]) else {
                continue;
            };
            let at = window_start + i as u64;
            if header.base_offset < min_base_offset
                || header.last_offset_delta < 0
                || header.total_len() as u64 > end - at
            {
                continue;
            }
            let crc_start = at + CRC_START_BYTES;
            if crc_of_range(
                file,
                crc_start,
                at + header.total_len() as u64,
                &mut scratch,
            )? == header.crc
            {
                return Ok(Some(at));
            }
        }
        window_start += candidates as u64;
    }
    Ok(None)
}

/// Reads the start of the batch at `pos` of a segment, which must lie before
/// `end` (the readable end, always a batch boundary).
pub(crate) fn peek_batch(
    file: &File,
    path: &Path,
    pos: u64,
    end: u64,
) -> Result<WalkHeader, LogError> {
    let corrupt = |reason: String| LogError::CorruptSegment {
        path: path.to_path_buf(),
        position: pos,
        reason,
    };
    if end - pos < HEADER_BYTES as u64 {
        return Err(corrupt(format!(
            "{} bytes before the readable end are too few for a batch",
            end - pos
        )));
    }
    let mut head = [0u8; WALK_HEADER_BYTES];
    file.read_exact_at(&mut head, pos)
        .map_err(|e| LogError::io(path, e))?;
    parse_walk_header(&head, path, pos, end)
}

/// Parses the start of a batch (`head`: its first `WALK_HEADER_BYTES`
/// bytes, read from `pos` of a segment whose readable end is `end`).
pub(crate) fn parse_walk_header(
    head: &[u8],
    path: &Path,
    pos: u64,
    end: u64,
) -> Result<WalkHeader, LogError> {
    let corrupt = |reason: String| LogError::CorruptSegment {
        path: path.to_path_buf(),
        position: pos,
        reason,
    };
    if end - pos < HEADER_BYTES as u64 || head.len() < WALK_HEADER_BYTES {
        return Err(corrupt(format!(
            "{} bytes before the readable end are too few for a batch",
            end - pos
        )));
    }
    let base_offset = be_i64(&head[0..8]);
    let batch_length = be_i32(&head[8..12]);
    let last_offset_delta = be_i32(&head[23..27]);
    if batch_length < BATCH_LENGTH_MIN || last_offset_delta < 0 {
        return Err(corrupt(format!(
            "batch length {batch_length} / lastOffsetDelta {last_offset_delta} are invalid"
        )));
    }
    let len = batch_length as u64 + LOG_OVERHEAD_BYTES as u64;
    if len > end - pos {
        return Err(corrupt(format!(
            "batch of {len} bytes runs past the readable end ({} bytes left)",
            end - pos
        )));
    }
    Ok(WalkHeader {
        base_offset,
        last_offset_delta,
        len,
    })
}

/// Reads and parses the full header of the batch at `pos` (before `end`).
pub(crate) fn read_header(
    file: &File,
    path: &Path,
    pos: u64,
    end: u64,
) -> Result<BatchHeader, LogError> {
    let corrupt = |reason: String| LogError::CorruptSegment {
        path: path.to_path_buf(),
        position: pos,
        reason,
    };
    if end - pos < HEADER_BYTES as u64 {
        return Err(corrupt(format!(
            "{} bytes before the readable end are too few for a batch",
            end - pos
        )));
    }
    let mut head = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut head, pos)
        .map_err(|e| LogError::io(path, e))?;
    let header = BatchHeader::parse(&head).map_err(|e| corrupt(e.to_string()))?;
    if header.total_len() as u64 > end - pos {
        return Err(corrupt(format!(
            "batch of {} bytes runs past the readable end ({} bytes left)",
            header.total_len(),
            end - pos
        )));
    }
    Ok(header)
}
