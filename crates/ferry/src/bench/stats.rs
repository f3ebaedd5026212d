//! What every `ferry bench` load generator measures: counters, end-to-end
//! latency in HDR histograms, the once-a-second progress line, and the
//! broker's CPU time and memory when its pid is given.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Wall-clock nanoseconds since the Unix epoch: the send timestamp carried in
/// message bodies, comparable across processes on one machine (a backlog
/// published by one `ferry bench` run and drained by another).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Latencies in microseconds, 1 µs to 1 hour, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    #[allow(clippy::unwrap_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

/// End-to-end latency: the whole run, and the interval since the last
/// progress line. One per consumer, so consumers do not contend.
#[derive(Debug)]
pub struct Latency {
    inner: Mutex<(Histogram<u64>, Histogram<u64>)>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            inner: Mutex::new((new_histogram(), new_histogram())),
        }
    }
}

impl Latency {
    pub fn record_ns(&self, ns: u64) {
        let us = (ns / 1_000).clamp(1, 3_600_000_000);
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        h.0.saturating_record(us);
        h.1.saturating_record(us);
    }

    /// Adds the interval histogram to `into` and clears it.
    pub fn take_interval(&self, into: &mut Histogram<u64>) {
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = into.add(&h.1);
        h.1.reset();
    }

    pub fn add_total(&self, into: &mut Histogram<u64>) {
        let h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = into.add(&h.0);
    }
}

pub fn merged<'a>(all: impl IntoIterator<Item = &'a Latency>) -> Histogram<u64> {
    let mut h = new_histogram();
    for l in all {
        l.add_total(&mut h);
    }
    h
}

pub fn interval<'a>(all: impl IntoIterator<Item = &'a Latency>) -> Histogram<u64> {
    let mut h = new_histogram();
    for l in all {
        l.take_interval(&mut h);
    }
    h
}

/// A monotonic clock of the run: nanoseconds since its start, storable in an
/// atomic.
#[derive(Debug)]
pub struct RunClock {
    start: Instant,
}

impl RunClock {
    pub fn new() -> Self {
        RunClock {
            start: Instant::now(),
        }
    }

    pub fn elapsed_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Records the latest of several moments (e.g. the last delivery).
pub fn store_max(cell: &AtomicU64, value: u64) {
    cell.fetch_max(value, Ordering::Relaxed);
}

/// CPU time and memory of a process, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    pub rss_bytes: u64,
    pub hwm_bytes: u64,
}

impl ProcSample {
    /// Reads /proc/PID/stat and /proc/PID/status. CPU times there are in
    /// clock ticks; USER_HZ is 100 on every Linux platform Ferry builds for.
    pub fn read(pid: u32) -> Option<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Some(ProcSample {
            cpu_s: (utime + stime) as f64 / 100.0,
            rss_bytes: kb("VmRSS:"),
            hwm_bytes: kb("VmHWM:"),
        })
    }
}

/// `--rate`: msgs/s (`Some`) or "max" (`None`). A type of its own because
/// clap reads an `Option` field as "the flag may be absent".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub Option<f64>);

pub fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate(None));
    }
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate(Some(r))),
        _ => Err(format!(
            "'{s}' is not a rate: a positive number of msgs/s, or max"
        )),
    }
}

/// A counter read by the progress line: its name and how to read it.
pub type Counter = (&'static str, Box<dyn Fn() -> u64 + Send + Sync>);

/// What the progress loop saw each second, for `--plot`: each counter's
/// rate.
#[derive(Debug, Default)]
pub struct Timeline {
    pub names: Vec<&'static str>,
    pub samples: Vec<Sample>,
}

#[derive(Debug)]
pub struct Sample {
    /// Seconds since the progress loop started.
    pub t_s: f64,
    /// msgs/s over the second, one per counter.
    pub rates: Vec<f64>,
}

/// Once a second until `stop`: each counter's rate over the last second and
/// its total, then the latency of that second (from the interval
/// histograms of `latencies`), as a progress line on stderr when `print`.
/// Returns every second's figures.
pub async fn progress_line(
    counters: Vec<Counter>,
    latencies: Vec<std::sync::Arc<Latency>>,
    print: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Timeline {
    let start = Instant::now();
    let mut timeline = Timeline {
        names: counters.iter().map(|(name, _)| *name).collect(),
        samples: Vec::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last: Vec<u64> = counters.iter().map(|(_, read)| read()).collect();
    let mut last_t = Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => return timeline,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
        last_t = now;
        let t_s = start.elapsed().as_secs_f64();
        let mut line = format!("{t_s:>5.0}s");
        let mut rates = Vec::with_capacity(counters.len());
        for ((name, read), prev) in counters.iter().zip(last.iter_mut()) {
            let v = read();
            let rate = v.saturating_sub(*prev) as f64 / dt;
            rates.push(rate);
            line.push_str(&format!(
                "  {name} {:>9}/s (total {})",
                thousands(rate.round() as u64),
                thousands(v)
            ));
            *prev = v;
        }
        let h = interval(latencies.iter().map(|l| l.as_ref()));
        if !h.is_empty() {
            line.push_str(&format!(
                "  latency p50 {:.2} p99 {:.2} max {:.2} ms",
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            ));
        }
        timeline.samples.push(Sample { t_s, rates });
        if print {
            eprintln!("{line}");
        }
    }
}

/// "30s", "1.5m", "500ms", "2h" or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{s}' is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("max"), Ok(Rate(None)));
        assert_eq!(parse_rate("10000"), Ok(Rate(Some(10_000.0))));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(10_000_000), "10,000,000");
    }

    #[test]
    fn latency_percentiles() {
        let l = Latency::default();
        for ms in 1..=100u64 {
            l.record_ns(ms * 1_000_000);
        }
        let h = merged([&l]);
        assert_eq!(h.len(), 100);
        let p50 = h.value_at_quantile(0.5);
        assert!((49_900..=50_100).contains(&p50), "{p50}");
        let mut i = interval([&l]);
        assert_eq!(i.len(), 100);
        i.reset();
        assert_eq!(interval([&l]).len(), 0);
    }

    #[test]
    fn own_process_sample() {
        let s = ProcSample::read(std::process::id()).expect("own /proc");
        assert!(s.rss_bytes > 0 && s.hwm_bytes >= s.rss_bytes);
    }
}
