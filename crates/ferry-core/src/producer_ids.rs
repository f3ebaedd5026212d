//! Producer ids for idempotent producers (Kafka's InitProducerId): never the
//! same id twice on one data directory, even across crashes.
//!
//! A partition's log remembers each producer id's sequence numbers, so an id
//! handed out again would make the new producer's first batch look out of
//! order (or, worse, like a duplicate) wherever the old one wrote. Ids are
//! therefore reserved in blocks of [`BLOCK_SIZE`]: before the first id of a
//! block is handed out, the block's end is made durable in the
//! `producer_ids` file (a temporary file, fsynced, renamed over it, then the
//! directory fsynced). After any restart allocation resumes at the recorded
//! end, skipping at most the unused rest of one block; a disk write happens
//! once per block, not per producer.
//!
//! File format (16 bytes, big-endian): magic `FPID`, the reserved end (i64,
//! the first id not yet reserved), CRC-32C of the preceding 12 bytes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::CoreError;

/// Ids reserved per durable write.
pub(crate) const BLOCK_SIZE: i64 = 1000;
const FILE_NAME: &str = "producer_ids";
const TEMP_FILE_NAME: &str = "producer_ids.tmp";
const MAGIC: &[u8; 4] = b"FPID";
const FILE_BYTES: usize = 16;

#[derive(Debug)]
struct Allocator {
    /// The next id to hand out.
    next: i64,
    /// The first id not covered by the durable reservation.
    reserved_end: i64,
}

#[derive(Debug)]
pub(crate) struct ProducerIds {
    dir: PathBuf,
    state: Mutex<Allocator>,
}

fn error(path: &Path, source: io::Error) -> CoreError {
    CoreError::ProducerIds {
        path: path.to_path_buf(),
        source,
    }
}

fn encode(reserved_end: i64) -> [u8; FILE_BYTES] {
    let mut out = [0u8; FILE_BYTES];
    out[0..4].copy_from_slice(MAGIC);
    out[4..12].copy_from_slice(&reserved_end.to_be_bytes());
    let crc = crc32c::crc32c(&out[..12]);
    out[12..16].copy_from_slice(&crc.to_be_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<i64, String> {
    if bytes.len() != FILE_BYTES {
        return Err(format!(
            "{} bytes where {FILE_BYTES} were expected",
            bytes.len()
        ));
    }
    if &bytes[0..4] != MAGIC {
        return Err("bad magic".to_string());
    }
    let stored = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let computed = crc32c::crc32c(&bytes[..12]);
    if stored != computed {
        return Err(format!(
            "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    let mut end = [0u8; 8];
    end.copy_from_slice(&bytes[4..12]);
    let end = i64::from_be_bytes(end);
    if end < 0 {
        return Err(format!("negative reserved end {end}"));
    }
    Ok(end)
}

impl ProducerIds {
    /// Loads the reservation of the data directory `dir` (whose lock the
    /// caller holds). A missing file means no id was ever handed out; a
    /// damaged one is an error, since the ids already used cannot be known.
    pub fn open(dir: &Path) -> Result<ProducerIds, CoreError> {
        let path = dir.join(FILE_NAME);
        let reserved_end = match fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|why| {
                error(
                    &path,
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "damaged ({why}); the producer ids already handed out cannot be known, \
                             and reusing one would corrupt idempotent producers' state"
                        ),
                    ),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(error(&path, e)),
        };
        Ok(ProducerIds {
            dir: dir.to_path_buf(),
            state: Mutex::new(Allocator {
                next: reserved_end,
                reserved_end,
            }),
        })
    }

    /// A producer id never handed out before. Blocking: the first id of each
    /// block waits for the reservation's fsyncs.
    pub fn allocate(&self) -> Result<i64, CoreError> {
        // A panic under this lock leaves the allocator as it was before the
        // call (it is updated only after the write succeeds).
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.next >= state.reserved_end {
            let end = state.reserved_end.checked_add(BLOCK_SIZE).ok_or_else(|| {
                error(
                    &self.dir.join(FILE_NAME),
                    io::Error::other("producer ids exhausted"),
                )
            })?;
            self.persist(end)?;
            state.reserved_end = end;
        }
        let id = state.next;
        state.next += 1;
        Ok(id)
    }

    fn persist(&self, reserved_end: i64) -> Result<(), CoreError> {
        let path = self.dir.join(FILE_NAME);
        let tmp = self.dir.join(TEMP_FILE_NAME);
        let write = || -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&encode(reserved_end))?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| error(&path, e))?;
        tracing::debug!(reserved_end, "reserved a block of producer ids");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_reopens_and_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = ProducerIds::open(dir.path()).expect("open");
        let first: Vec<i64> = (0..BLOCK_SIZE + 5)
            .map(|_| ids.allocate().expect("id"))
            .collect();
        assert_eq!(first[0], 0);
        assert_eq!(*first.last().expect("id"), BLOCK_SIZE + 4);
        drop(ids);
        // A restart (clean or not: nothing is written at shutdown) resumes
        // after the reserved block.
        let ids = ProducerIds::open(dir.path()).expect("open");
        assert_eq!(ids.allocate().expect("id"), 2 * BLOCK_SIZE);
        drop(ids);
        let ids = ProducerIds::open(dir.path()).expect("open");
        assert_eq!(ids.allocate().expect("id"), 3 * BLOCK_SIZE);
    }

    #[test]
    fn a_damaged_file_refuses_to_guess() {
        let dir = tempfile::tempdir().expect("tempdir");
        ProducerIds::open(dir.path())
            .expect("open")
            .allocate()
            .expect("id");
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).expect("read");
        bytes[6] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let err = ProducerIds::open(dir.path()).expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err}");
        fs::write(&path, &bytes[..10]).expect("write");
        assert!(ProducerIds::open(dir.path()).is_err());
    }

    #[test]
    fn a_stale_temp_file_is_harmless() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(TEMP_FILE_NAME), b"junk").expect("write");
        let ids = ProducerIds::open(dir.path()).expect("open");
        assert_eq!(ids.allocate().expect("id"), 0);
        assert!(!dir.path().join(TEMP_FILE_NAME).exists());
    }

    #[test]
    fn the_file_round_trips() {
        assert_eq!(decode(&encode(12_345)), Ok(12_345));
        assert!(decode(&encode(-1)).is_err());
    }
}
