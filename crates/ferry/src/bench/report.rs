//! The summary of a `ferry bench` run: printed for people, or as one JSON
//! document with `--json`. Field names are stable: scripts read them.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::stats::{ProcSample, thousands};

#[derive(Debug, Serialize)]
pub struct Summary {
    /// "amqp", "sqs" (later "kafka").
    pub protocol: &'static str,
    /// The settings of the run, as used (defaults filled in).
    pub config: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumed: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerUsage>,
    /// True when every message the run meant to move was moved.
    pub complete: bool,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    /// Messages published (acknowledged by the broker when confirms are on)
    /// or consumed.
    pub messages: u64,
    pub bytes: u64,
    /// From the start of the phase to its last message (for consumption in
    /// a run that also publishes: from the first publish, i.e. end to end).
    pub seconds: f64,
    pub msgs_per_s: f64,
    /// Payload bytes, 10^6 per MB.
    pub mb_per_s: f64,
    /// Publishing: messages handed to the broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    /// Publishing with confirms: acks and nacks received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nacked: Option<u64>,
    /// Consuming: deliveries flagged redelivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<u64>,
    /// Consuming: messages not published by this run (left in the queue by
    /// an earlier one); acknowledged, not counted in `messages`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign: Option<u64>,
}

impl Phase {
    pub fn new(messages: u64, size: usize, seconds: f64) -> Phase {
        let bytes = messages * size as u64;
        let secs = seconds.max(1e-9);
        Phase {
            messages,
            bytes,
            seconds,
            msgs_per_s: messages as f64 / secs,
            mb_per_s: bytes as f64 / secs / 1e6,
            sent: None,
            confirmed: None,
            nacked: None,
            redelivered: None,
            foreign: None,
        }
    }
}

/// End-to-end latency in milliseconds: from the send timestamp in the body
/// (taken just before publishing) to the delivery reaching the consumer.
#[derive(Debug, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn from(h: &Histogram<u64>) -> Option<LatencySummary> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            samples: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }
}

/// The broker process (`--broker-pid`) over the run.
#[derive(Debug, Serialize)]
pub struct BrokerUsage {
    pub pid: u32,
    /// utime + stime between the start of the run and its end.
    pub cpu_s: f64,
    /// cpu_s per million messages moved (the larger of published and consumed).
    pub cpu_s_per_million: f64,
    /// VmRSS at the start and at the end of the run, VmHWM at the end, MB (10^6).
    pub rss_mb_start: f64,
    pub rss_mb_end: f64,
    pub peak_rss_mb: f64,
}

impl BrokerUsage {
    pub fn between(pid: u32, start: ProcSample, end: ProcSample, messages: u64) -> BrokerUsage {
        let cpu = (end.cpu_s - start.cpu_s).max(0.0);
        BrokerUsage {
            pid,
            cpu_s: cpu,
            cpu_s_per_million: if messages > 0 {
                cpu * 1e6 / messages as f64
            } else {
                0.0
            },
            rss_mb_start: start.rss_bytes as f64 / 1e6,
            rss_mb_end: end.rss_bytes as f64 / 1e6,
            peak_rss_mb: end.hwm_bytes as f64 / 1e6,
        }
    }
}

impl Summary {
    pub fn print(&self, json: bool) {
        self.print_with(json, serde_json::Map::new(), &[]);
    }

    /// Like `print`, with a protocol's own sections: `extra` joins the JSON
    /// object's top level, `lines` are printed after the common ones (before
    /// the errors).
    pub fn print_with(
        &self,
        json: bool,
        extra: serde_json::Map<String, serde_json::Value>,
        lines: &[String],
    ) {
        if json {
            let encoded = serde_json::to_value(self).and_then(|mut v| {
                if let serde_json::Value::Object(m) = &mut v {
                    m.extend(extra);
                }
                serde_json::to_string_pretty(&v)
            });
            match encoded {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("ferry bench: cannot encode the summary: {e}"),
            }
            return;
        }
        if let Some(p) = &self.published {
            let mut extra = Vec::new();
            if let Some(s) = p.sent {
                extra.push(format!("sent {}", thousands(s)));
            }
            if let Some(c) = p.confirmed {
                extra.push(format!("confirmed {}", thousands(c)));
            }
            if let Some(n) = p.nacked {
                extra.push(format!("nacked {}", thousands(n)));
            }
            println!("published: {}{}", phase_line(p), paren(&extra));
        }
        if let Some(c) = &self.consumed {
            let mut extra = Vec::new();
            if let Some(r) = c.redelivered {
                extra.push(format!("redelivered {}", thousands(r)));
            }
            if let Some(f) = c.foreign.filter(|f| *f > 0) {
                extra.push(format!("from earlier runs {}", thousands(f)));
            }
            println!("consumed:  {}{}", phase_line(c), paren(&extra));
        }
        if let Some(l) = &self.latency {
            println!(
                "latency:   p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (mean {:.3} ms, {} messages)",
                l.p50_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                l.mean_ms,
                thousands(l.samples)
            );
        }
        if let Some(b) = &self.broker {
            println!(
                "broker:    pid {}, {:.2} CPU s ({:.2} per million messages), RSS {:.1} MB at start, {:.1} MB at end, peak {:.1} MB",
                b.pid, b.cpu_s, b.cpu_s_per_million, b.rss_mb_start, b.rss_mb_end, b.peak_rss_mb
            );
        }
        for l in lines {
            println!("{l}");
        }
        for e in &self.errors {
            println!("error:     {e}");
        }
        if !self.complete {
            println!("INCOMPLETE: not every message was moved (see above)");
        }
    }
}

pub fn phase_line(p: &Phase) -> String {
    format!(
        "{} msgs in {:.2} s = {} msgs/s, {:.2} MB/s",
        thousands(p.messages),
        p.seconds,
        thousands(p.msgs_per_s.round() as u64),
        p.mb_per_s
    )
}

fn paren(extra: &[String]) -> String {
    if extra.is_empty() {
        String::new()
    } else {
        format!(" ({})", extra.join(", "))
    }
}
