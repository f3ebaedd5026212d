//! Resource alarms, as RabbitMQ raises them: a disk alarm while the data
//! directory's filesystem has less free space than `disk_free_limit`, a
//! memory alarm while the process's resident memory is above
//! `memory_high_watermark`.
//!
//! The broker holds the state in a `tokio::sync::watch` channel
//! ([`Alarms::subscribe`]) that every front end can follow: the AMQP front
//! end blocks publishing connections (connection.blocked) while any alarm is
//! on; Kafka holds produce requests and SQS holds sends the same way,
//! refusing them with their protocol's error if the alarm outlasts the hold
//! ([`wait_until_clear`]). The monitor
//! ([`run_monitor`]) looks once a second and logs each alarm when it is
//! raised and when it clears, naming the setting to change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

/// RabbitMQ's default `disk_free_limit`: 50 MB.
pub const DEFAULT_DISK_FREE_LIMIT: u64 = 50_000_000;
/// RabbitMQ's default `vm_memory_high_watermark.relative`.
pub const DEFAULT_MEMORY_HIGH_WATERMARK: f64 = 0.4;
/// How often the monitor looks.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Which alarms are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceAlarms {
    pub memory: bool,
    pub disk: bool,
}

impl ResourceAlarms {
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The reason RabbitMQ sends with connection.blocked: `low on memory`,
    /// `low on disk`, or `low on memory & disk`; None when no alarm is on.
    pub fn blocked_reason(self) -> Option<&'static str> {
        match (self.memory, self.disk) {
            (true, true) => Some("low on memory & disk"),
            (true, false) => Some("low on memory"),
            (false, true) => Some("low on disk"),
            (false, false) => None,
        }
    }
}

/// `memory_high_watermark`: bytes, or a fraction of the memory available to
/// the process (RabbitMQ's `vm_memory_high_watermark.relative`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryLimit {
    Absolute(u64),
    Relative(f64),
}

impl Default for MemoryLimit {
    fn default() -> Self {
        MemoryLimit::Relative(DEFAULT_MEMORY_HIGH_WATERMARK)
    }
}

impl MemoryLimit {
    /// `0.4` (a fraction, at most 1), `1073741824`, or with a unit: `512MB`,
    /// `1GiB` (see [`parse_bytes`]).
    pub fn parse(s: &str) -> Result<MemoryLimit, String> {
        let t = s.trim();
        if t.contains('.') && !t.chars().any(|c| c.is_ascii_alphabetic()) {
            let f: f64 = t
                .parse()
                .map_err(|_| format!("'{s}' is not a fraction or a byte count"))?;
            if !(0.0..=1.0).contains(&f) {
                return Err(format!(
                    "'{s}': a fraction of memory must be between 0 and 1"
                ));
            }
            return Ok(MemoryLimit::Relative(f));
        }
        parse_bytes(t).map(MemoryLimit::Absolute)
    }

    /// The limit in bytes, given the memory available to the process.
    pub fn bytes(self, total_memory: u64) -> u64 {
        match self {
            MemoryLimit::Absolute(b) => b,
            MemoryLimit::Relative(f) => (total_memory as f64 * f) as u64,
        }
    }
}

/// A byte count: digits, optionally followed by a unit as RabbitMQ accepts
/// them — `k`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB` (powers of 1024) or
/// `kB`/`KB`, `MB`, `GB`, `TB` (powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!("'{s}' is not a byte count"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a byte count"))?;
    let multiplier: u64 = match unit.trim() {
        "" => 1,
        "k" | "K" | "KiB" | "kiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "'{s}': unknown unit '{other}' (k, M, G, T, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
            ));
        }
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// The limits the monitor enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourceLimits {
    /// Free bytes the data directory's filesystem must keep.
    pub disk_free_limit: u64,
    pub memory_high_watermark: MemoryLimit,
    pub check_interval: Duration,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            disk_free_limit: DEFAULT_DISK_FREE_LIMIT,
            memory_high_watermark: MemoryLimit::default(),
            check_interval: DEFAULT_CHECK_INTERVAL,
        }
    }
}

/// The alarm state of one broker.
#[derive(Debug)]
pub struct Alarms {
    tx: watch::Sender<ResourceAlarms>,
}

impl Default for Alarms {
    fn default() -> Self {
        Alarms {
            tx: watch::Sender::new(ResourceAlarms::default()),
        }
    }
}

impl Alarms {
    /// Follows the alarm state: `borrow()` for now, `changed()` to wait.
    pub fn subscribe(&self) -> watch::Receiver<ResourceAlarms> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> ResourceAlarms {
        *self.tx.borrow()
    }

    /// Sets the disk alarm; returns whether it changed.
    pub fn set_disk(&self, on: bool) -> bool {
        self.tx
            .send_if_modified(|a| std::mem::replace(&mut a.disk, on) != on)
    }

    /// Sets the memory alarm; returns whether it changed.
    pub fn set_memory(&self, on: bool) -> bool {
        self.tx
            .send_if_modified(|a| std::mem::replace(&mut a.memory, on) != on)
    }
}

/// Waits until no alarm is on, for at most `max` (forever with `None`).
/// Whether they cleared: producers that the front ends hold during an
/// alarm go on if so, and are refused with the protocol's own error if not.
pub async fn wait_until_clear(
    alarms: &mut watch::Receiver<ResourceAlarms>,
    max: Option<Duration>,
) -> bool {
    let clear = async {
        // Err: the monitor is gone, so nothing will change any more.
        let _ = alarms.wait_for(|a| !a.any()).await;
    };
    match max {
        Some(max) => {
            let _ = tokio::time::timeout(max, clear).await;
        }
        None => clear.await,
    }
    !alarms.borrow().any()
}

/// Free bytes for unprivileged users on the filesystem holding `path`
/// (statvfs's `f_bavail * f_frsize`, what `df` reports as available).
pub fn disk_free(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The process's resident set size, from `/proc/self/status` (VmRSS).
pub fn process_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")
}

/// Memory available to the process: the machine's (`/proc/meminfo`
/// MemTotal), or its cgroup's limit when that is lower (containers).
pub fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = kib_field(&meminfo, "MemTotal:")?;
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    .min();
    Some(match cgroup {
        Some(limit) if limit < total => limit,
        _ => total,
    })
}

/// `Name:   1234 kB` → bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Watches disk space under `data_dir` and the process's memory until the
/// task is dropped, raising and clearing alarms in `alarms`. Run it with
/// `tokio::spawn`.
pub async fn run_monitor(
    alarms: std::sync::Arc<Alarms>,
    data_dir: PathBuf,
    limits: ResourceLimits,
) {
    let total = total_memory();
    let memory_limit = match (limits.memory_high_watermark, total) {
        (MemoryLimit::Absolute(b), _) => Some(b),
        (relative, Some(total)) => Some(relative.bytes(total)),
        (MemoryLimit::Relative(_), None) => {
            tracing::warn!(
                "cannot tell how much memory this machine has (/proc/meminfo); the memory alarm is off \
                 (set --memory-high-watermark in bytes to enable it)"
            );
            None
        }
    };
    tracing::info!(
        disk_free_limit = limits.disk_free_limit,
        memory_high_watermark = memory_limit,
        total_memory = total,
        "resource alarms: disk below disk_free_limit free bytes, memory above memory_high_watermark bytes"
    );
    let mut tick = tokio::time::interval(limits.check_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut disk_error_logged = false;
    loop {
        tick.tick().await;
        // statvfs can block on a sick filesystem: off the async threads.
        let dir = data_dir.clone();
        let free = tokio::task::spawn_blocking(move || disk_free(&dir)).await;
        match free {
            Ok(Ok(free)) => {
                disk_error_logged = false;
                check_disk(&alarms, free, limits.disk_free_limit);
            }
            Ok(Err(e)) if !disk_error_logged => {
                disk_error_logged = true;
                tracing::warn!(data_dir = %data_dir.display(), error = %e, "cannot read free disk space; the disk alarm keeps its state");
            }
            _ => {}
        }
        if let (Some(limit), Some(rss)) = (memory_limit, process_rss()) {
            check_memory(&alarms, rss, limit);
        }
    }
}

fn check_disk(alarms: &Alarms, free: u64, limit: u64) {
    let low = free < limit;
    if alarms.set_disk(low) {
        if low {
            tracing::warn!(
                free_bytes = free,
                disk_free_limit = limit,
                "disk alarm raised: {free} bytes free on the data directory's filesystem, below \
                 disk_free_limit ({limit}); publishers are blocked until space is freed \
                 (or lower --disk-free-limit)"
            );
        } else {
            tracing::info!(
                free_bytes = free,
                disk_free_limit = limit,
                "disk alarm cleared: {free} bytes free, disk_free_limit is {limit}"
            );
        }
    }
}

fn check_memory(alarms: &Alarms, rss: u64, limit: u64) {
    let high = rss > limit;
    if alarms.set_memory(high) {
        if high {
            tracing::warn!(
                rss_bytes = rss,
                memory_high_watermark = limit,
                "memory alarm raised: resident memory {rss} bytes is above memory_high_watermark \
                 ({limit}); publishers are blocked until it drops (or raise --memory-high-watermark)"
            );
        } else {
            tracing::info!(
                rss_bytes = rss,
                memory_high_watermark = limit,
                "memory alarm cleared: resident memory {rss} bytes, memory_high_watermark is {limit}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reasons_as_rabbitmq_sends_them() {
        let a = |memory, disk| ResourceAlarms { memory, disk };
        assert_eq!(a(false, false).blocked_reason(), None);
        assert_eq!(a(false, true).blocked_reason(), Some("low on disk"));
        assert_eq!(a(true, false).blocked_reason(), Some("low on memory"));
        assert_eq!(a(true, true).blocked_reason(), Some("low on memory & disk"));
        assert!(!a(false, false).any());
    }

    #[test]
    fn byte_counts_and_fractions() {
        assert_eq!(parse_bytes("50000000"), Ok(50_000_000));
        assert_eq!(parse_bytes("50MB"), Ok(50_000_000));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("2k"), Ok(2048));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("99999999999999999999").is_err());
        assert!(parse_bytes("20000000TB").is_err());
        assert_eq!(MemoryLimit::parse("0.4"), Ok(MemoryLimit::Relative(0.4)));
        assert_eq!(
            MemoryLimit::parse("1073741824"),
            Ok(MemoryLimit::Absolute(1 << 30))
        );
        assert_eq!(
            MemoryLimit::parse("2GB"),
            Ok(MemoryLimit::Absolute(2_000_000_000))
        );
        assert!(MemoryLimit::parse("1.5").is_err());
        assert!(MemoryLimit::parse("-0.1").is_err());
        assert_eq!(MemoryLimit::Relative(0.5).bytes(1000), 500);
    }

    #[test]
    fn alarms_change_once() {
        let alarms = Alarms::default();
        let rx = alarms.subscribe();
        check_disk(&alarms, 10, 100);
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            alarms.current(),
            ResourceAlarms {
                memory: false,
                disk: true
            }
        );
        assert!(!alarms.set_disk(true));
        check_memory(&alarms, 200, 100);
        assert_eq!(
            alarms.current().blocked_reason(),
            Some("low on memory & disk")
        );
        check_disk(&alarms, 100, 100);
        check_memory(&alarms, 100, 100);
        assert!(!alarms.current().any());
    }

    #[test]
    fn this_machine_reports_its_resources() {
        let dir = tempfile::tempdir().unwrap();
        assert!(disk_free(dir.path()).unwrap() > 0);
        assert!(disk_free(&dir.path().join("missing")).is_err());
        assert!(process_rss().unwrap() > 0);
        assert!(total_memory().unwrap() > process_rss().unwrap());
    }
}
