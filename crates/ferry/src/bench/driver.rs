//! The run loop shared by the load generators that speak a plain
//! request/response protocol over one TCP connection per client
//! (`ferry bench nats`, `ferry bench redis`): producers keep up to a window
//! of unacknowledged messages in flight, consumers fetch, record latency
//! and acknowledge in batches, and the end is the same summary as every
//! `ferry bench` run.
//!
//! A protocol supplies a [`Transport`] that opens producer and consumer
//! connections; everything else (pacing, counting, the idle timeout, the
//! progress line, the summary) lives here once.
//!
//! Message bodies carry the same 24-byte header as `ferry bench amqp`: the
//! run's id, the message's sequence number and the wall-clock send time in
//! nanoseconds (big-endian u64s).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use clap::Args;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::plot;
use super::report::{BrokerUsage, LatencySummary, Phase, Summary};
use super::stats::{self, Latency, ProcSample, RunClock, now_ns, thousands};

pub const HEADER: usize = 24;

/// One producer connection.
pub trait Producer: Send + 'static {
    /// Adds one message for queue `queue` (an index into the plan's queues;
    /// with --fanout always 0, and the transport reaches every queue) to the
    /// connection's output buffer; nothing is written yet.
    fn send(&mut self, queue: usize, body: &[u8]);
    /// Writes the buffered messages.
    fn flush(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// Waits until at least one acknowledgement arrives and returns how many
    /// did. Cancel-safe: a partly read answer stays buffered.
    fn acks(&mut self) -> impl Future<Output = Result<u64>> + Send;
}

/// One consumer connection.
pub trait Consumer: Send + 'static {
    /// Acknowledges the messages of the previous call and puts the next
    /// ones' bodies in `out`; may return none after waiting about a second
    /// (so that the run can end).
    fn next(&mut self, out: &mut Vec<Bytes>) -> impl Future<Output = Result<()>> + Send;
    /// Acknowledges the messages of the last `next` without fetching more.
    fn finish(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// A protocol's connections to one broker.
pub trait Transport: Send + Sync + 'static {
    type P: Producer;
    type C: Consumer;
    /// The protocol's name in the summary ("nats", "redis").
    fn protocol(&self) -> &'static str;
    /// Creates the queues, emptied unless `keep`; returns how many
    /// messages they hold.
    fn prepare(&self, keep: bool) -> impl Future<Output = Result<u64>> + Send;
    fn producer(&self, id: usize) -> impl Future<Output = Result<Self::P>> + Send;
    /// Consumer `id` of queue `queue` (with --fanout: of subscriber `queue`).
    fn consumer(&self, queue: usize, id: u32) -> impl Future<Output = Result<Self::C>> + Send;
    /// The settings of the run for the summary's `config`.
    fn config(&self) -> serde_json::Value;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Both,
    PublishOnly,
    ConsumeOnly,
}

/// The load, from the command line: the same flags for every protocol the
/// driver runs.
#[derive(Debug, Clone, Args)]
pub struct Plan {
    /// Number of queues (streams).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub queues: u32,
    /// Queue (stream) names are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "ferry-bench", value_name = "PREFIX")]
    pub queue_prefix: String,
    /// Publishing connections in total [default: one per queue].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    producers: Option<u32>,
    /// Consuming connections per queue.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    consumers: u32,
    /// Message body size in bytes (at least 24: run id, sequence number,
    /// send timestamp).
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    size: usize,
    /// Messages to publish in total [default: 100000; with --consume-only:
    /// as many as the queues hold when it starts].
    #[arg(long, conflicts_with = "duration", value_name = "N")]
    count: Option<u64>,
    /// Publish for this long instead of a count (e.g. 30s, 2m); the
    /// consumers then drain what was published.
    #[arg(long, value_parser = stats::parse_duration, value_name = "TIME")]
    duration: Option<Duration>,
    /// Publishing rate in msgs/s over all producers, or "max".
    #[arg(long, default_value = "max", value_parser = stats::parse_rate, value_name = "R|max")]
    rate: stats::Rate,
    /// Unacknowledged messages per producer.
    #[arg(long, default_value_t = 500, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,
    /// Fan-out: every queue gets a copy of every message (one stream with a
    /// consumer, or a consumer group, per queue); producers publish once.
    #[arg(long, conflicts_with_all = ["publish_only", "consume_only"])]
    pub fanout: bool,
    /// Messages fetched per request by each consumer.
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub prefetch: u32,
    /// Only publish (e.g. to build a backlog); wait for the acks, then stop.
    #[arg(long, conflicts_with = "consume_only")]
    publish_only: bool,
    /// Only consume: drain what the queues hold (or --count messages).
    #[arg(long)]
    consume_only: bool,
    /// Keep messages already in the queues (by default they are removed
    /// before publishing starts).
    #[arg(long)]
    no_purge: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Draw throughput over time and the latency distribution into this
    /// SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Report this process's CPU seconds and RSS over the run (the broker's
    /// pid).
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// Give up when nothing was published, acknowledged or consumed for
    /// this long.
    #[arg(long, default_value = "60s", value_parser = stats::parse_duration, value_name = "TIME")]
    idle_timeout: Duration,
}

impl Plan {
    /// The queue names.
    pub fn names(&self) -> Vec<String> {
        (0..self.queues)
            .map(|i| format!("{}-{i}", self.queue_prefix))
            .collect()
    }

    fn mode(&self) -> Mode {
        match (self.publish_only, self.consume_only) {
            (true, _) => Mode::PublishOnly,
            (_, true) => Mode::ConsumeOnly,
            _ => Mode::Both,
        }
    }
}

const DEFAULT_COUNT: u64 = 100_000;

#[derive(Debug, Default)]
struct Shared {
    sent: AtomicU64,
    acked: AtomicU64,
    consumed: AtomicU64,
    foreign: AtomicU64,
    target: AtomicU64,
    last_ack_ns: AtomicU64,
    last_consume_ns: AtomicU64,
}

impl Shared {
    fn activity(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
            + self.acked.load(Ordering::Relaxed)
            + self.consumed.load(Ordering::Relaxed)
            + self.foreign.load(Ordering::Relaxed)
    }
}

/// Runs `plan` over `transport`; prints the summary and returns whether
/// every message was moved.
pub async fn run<T: Transport>(transport: T, plan: &Plan) -> Result<bool> {
    if plan.size < HEADER {
        bail!("--size must be at least {HEADER} bytes (run id, sequence, timestamp)");
    }
    let transport = Arc::new(transport);
    let mode = plan.mode();
    let publishing = mode != Mode::ConsumeOnly;
    let consuming = mode != Mode::PublishOnly;
    let queues = plan.queues as usize;
    // With --fanout a message is consumed once per queue, and there is one
    // producer unless told otherwise.
    let copies = if plan.fanout { plan.queues as u64 } else { 1 };
    let producer_count = match (plan.producers, plan.fanout) {
        (Some(p), _) => p as usize,
        (None, true) => 1,
        (None, false) => queues,
    };
    let backlog = transport.prepare(plan.no_purge || !publishing).await?;
    let count = match (plan.count, plan.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) if !publishing => Some(backlog),
        (None, None) => Some(DEFAULT_COUNT),
    };
    let run_id = now_ns() ^ (u64::from(std::process::id()) << 32);
    let shared = Arc::new(Shared::default());
    shared.target.store(
        count.map_or(u64::MAX, |c| c.saturating_mul(copies)),
        Ordering::Relaxed,
    );
    let clock = Arc::new(RunClock::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut consumers: JoinSet<Result<()>> = JoinSet::new();
    let mut latencies = Vec::new();

    if consuming {
        for q in 0..queues {
            for c in 0..plan.consumers {
                let conn = transport.consumer(q, c).await?;
                let latency = Arc::new(Latency::default());
                latencies.push(latency.clone());
                consumers.spawn(consume(
                    conn,
                    ConsumerCtx {
                        shared: shared.clone(),
                        clock: clock.clone(),
                        latency,
                        stop: stop_rx.clone(),
                        run_id: publishing.then_some(run_id),
                    },
                ));
            }
        }
    }
    let broker_start = plan.broker_pid.and_then(ProcSample::read);
    if plan.broker_pid.is_some() && broker_start.is_none() {
        eprintln!("ferry bench: cannot read /proc of --broker-pid; no broker figures");
    }

    let mut producers: JoinSet<Result<()>> = JoinSet::new();
    let start_ns = clock.elapsed_ns();
    if publishing {
        let mut conns = Vec::with_capacity(producer_count);
        for p in 0..producer_count {
            conns.push(transport.producer(p).await?);
        }
        for (p, conn) in conns.into_iter().enumerate() {
            let n = producer_count as u64;
            let mine: Vec<usize> = if plan.fanout {
                vec![0]
            } else if producer_count >= queues {
                vec![p % queues]
            } else {
                (p..queues).step_by(producer_count).collect()
            };
            producers.spawn(publish(
                conn,
                ProducerCtx {
                    shared: shared.clone(),
                    clock: clock.clone(),
                    queues: mine,
                    count: count.map(|c| c / n + u64::from((p as u64) < c % n)),
                    duration: plan.duration,
                    rate: plan.rate.0.map(|r| r / n as f64),
                    window: plan.window as usize,
                    size: plan.size,
                    run_id,
                    producer: p as u64,
                    stop: stop_rx.clone(),
                },
            ));
        }
    }
    let progress = {
        let mut counters: Vec<stats::Counter> = Vec::new();
        if publishing {
            let s = shared.clone();
            counters.push(("acked", Box::new(move || s.acked.load(Ordering::Relaxed))));
        }
        if consuming {
            let s = shared.clone();
            counters.push((
                "consumed",
                Box::new(move || s.consumed.load(Ordering::Relaxed)),
            ));
        }
        tokio::spawn(stats::progress_line(
            counters,
            latencies.clone(),
            !plan.quiet,
            stop_rx.clone(),
        ))
    };

    let mut errors = Vec::new();
    let mut last_activity = (0u64, Instant::now());
    let consume_deadline = plan
        .duration
        .filter(|_| !publishing)
        .map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            joined = producers.join_next(), if !producers.is_empty() => {
                if let Some(e) = failure(joined) {
                    errors.push(format!("producer: {e}"));
                    break;
                }
                if producers.is_empty() {
                    // Everything the broker took is to be consumed.
                    let took = shared.acked.load(Ordering::Relaxed);
                    shared.target.store(took * copies, Ordering::Relaxed);
                    if !consuming {
                        break;
                    }
                }
            }
            joined = consumers.join_next(), if !consumers.is_empty() => {
                if let Some(e) = failure(joined) {
                    errors.push(format!("consumer: {e}"));
                    break;
                }
            }
            _ = tick.tick() => {
                let consumed = shared.consumed.load(Ordering::Relaxed);
                if consuming && producers.is_empty()
                    && consumed >= shared.target.load(Ordering::Relaxed)
                {
                    break;
                }
                if consume_deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let activity = shared.activity();
                if activity != last_activity.0 {
                    last_activity = (activity, Instant::now());
                } else if last_activity.1.elapsed() >= plan.idle_timeout {
                    errors.push(format!(
                        "nothing moved for {:?}: sent {}, acknowledged {}, consumed {}",
                        plan.idle_timeout,
                        thousands(shared.sent.load(Ordering::Relaxed)),
                        thousands(shared.acked.load(Ordering::Relaxed)),
                        thousands(consumed),
                    ));
                    break;
                }
            }
        }
    }
    let end_ns = clock.elapsed_ns();
    let broker_end = plan.broker_pid.and_then(ProcSample::read);
    let _ = stop_tx.send(true);
    // Consumers acknowledge what they hold and return within a wait.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while consumers.join_next().await.is_some() {}
        while producers.join_next().await.is_some() {}
    })
    .await;

    let timeline = progress.await.unwrap_or_default();
    let histogram = stats::merged(latencies.iter().map(|l| l.as_ref()));
    if let Some(path) = &plan.plot {
        let title = format!("ferry bench {}", transport.protocol());
        plot::write_svg(path, &title, &timeline, &histogram)?;
    }

    let sent = shared.sent.load(Ordering::Relaxed);
    let acked = shared.acked.load(Ordering::Relaxed);
    let consumed = shared.consumed.load(Ordering::Relaxed);
    let secs = |to: u64| to.saturating_sub(start_ns).max(1) as f64 / 1e9;
    let published = publishing.then(|| {
        let mut p = Phase::new(
            acked,
            plan.size,
            secs(shared.last_ack_ns.load(Ordering::Relaxed)),
        );
        p.sent = Some(sent);
        p.confirmed = Some(acked);
        p
    });
    let consumed_phase = consuming.then(|| {
        let mut p = Phase::new(
            consumed,
            plan.size,
            secs(shared.last_consume_ns.load(Ordering::Relaxed)),
        );
        p.foreign = Some(shared.foreign.load(Ordering::Relaxed));
        p
    });
    let target = shared.target.load(Ordering::Relaxed);
    if consuming && consume_deadline.is_none() && target != u64::MAX && consumed < target {
        errors.push(format!(
            "consumed {} of {} messages",
            thousands(consumed),
            thousands(target)
        ));
    }
    if let (true, Some(n)) = (publishing, plan.count)
        && acked < n
    {
        errors.push(format!(
            "published {} of {} messages",
            thousands(acked),
            thousands(n)
        ));
    }
    let broker = match (plan.broker_pid, broker_start, broker_end) {
        (Some(pid), Some(s), Some(e)) => Some(BrokerUsage::between(pid, s, e, consumed.max(acked))),
        _ => None,
    };
    let mut config = transport.config();
    if let serde_json::Value::Object(m) = &mut config {
        m.extend(
            json!({
                "queues": plan.queues,
                "queue_prefix": plan.queue_prefix,
                "producers": if publishing { producer_count } else { 0 },
                "consumers_per_queue": if consuming { plan.consumers } else { 0 },
                "size": plan.size,
                "count": count,
                "duration_s": plan.duration.map(|d| d.as_secs_f64()),
                "rate": plan.rate.0,
                "window": plan.window,
                "prefetch": plan.prefetch,
                "fanout": plan.fanout,
                "mode": match mode {
                    Mode::Both => "publish-and-consume",
                    Mode::PublishOnly => "publish-only",
                    Mode::ConsumeOnly => "consume-only",
                },
                "backlog_at_start": backlog,
                "run_s": (end_ns - start_ns) as f64 / 1e9,
                "plot": plan.plot,
            })
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    let summary = Summary {
        protocol: transport.protocol(),
        config,
        published,
        consumed: consumed_phase,
        latency: LatencySummary::from(&histogram),
        broker,
        complete: errors.is_empty(),
        errors,
    };
    summary.print(plan.json);
    Ok(summary.complete)
}

/// The error of a finished task, if it failed.
fn failure(joined: Option<Result<Result<()>, tokio::task::JoinError>>) -> Option<String> {
    match joined {
        Some(Ok(Err(e))) => Some(format!("{e:#}")),
        Some(Err(e)) => Some(e.to_string()),
        _ => None,
    }
}

struct ProducerCtx {
    shared: Arc<Shared>,
    clock: Arc<RunClock>,
    queues: Vec<usize>,
    count: Option<u64>,
    duration: Option<Duration>,
    rate: Option<f64>,
    window: usize,
    size: usize,
    run_id: u64,
    producer: u64,
    stop: watch::Receiver<bool>,
}

/// Keeps up to `window` messages unacknowledged: sends what the window and
/// the pace allow, writes them in one go, then waits for acknowledgements
/// (or the next message's time, when paced).
async fn publish<P: Producer>(mut conn: P, ctx: ProducerCtx) -> Result<()> {
    let start = Instant::now();
    let deadline = ctx.duration.map(|d| start + d);
    let mut body = vec![b'x'; ctx.size];
    body[0..8].copy_from_slice(&ctx.run_id.to_be_bytes());
    let (mut n, mut inflight) = (0u64, 0usize);
    let mut finished = false;
    loop {
        let mut due = None;
        let mut queued = 0;
        while !finished && inflight < ctx.window {
            if ctx.count.is_some_and(|c| n >= c)
                || deadline.is_some_and(|d| Instant::now() >= d)
                || *ctx.stop.borrow()
            {
                finished = true;
                break;
            }
            if let Some(rate) = ctx.rate {
                let at = start + Duration::from_secs_f64(n as f64 / rate);
                if at > Instant::now() {
                    due = Some(at);
                    break;
                }
            }
            body[8..16].copy_from_slice(&((ctx.producer << 40) | n).to_be_bytes());
            body[16..24].copy_from_slice(&now_ns().to_be_bytes());
            conn.send(ctx.queues[(n % ctx.queues.len() as u64) as usize], &body);
            n += 1;
            inflight += 1;
            queued += 1;
        }
        if queued > 0 {
            conn.flush().await?;
            ctx.shared.sent.fetch_add(queued, Ordering::Relaxed);
        }
        if inflight == 0 {
            match (finished, due) {
                (true, _) => return Ok(()),
                (false, Some(at)) => tokio::time::sleep_until(at.into()).await,
                (false, None) => {}
            }
            continue;
        }
        let acked = match due {
            Some(at) => tokio::select! {
                a = conn.acks() => a?,
                _ = tokio::time::sleep_until(at.into()) => 0,
            },
            None => conn.acks().await?,
        };
        if acked > 0 {
            inflight = inflight.saturating_sub(acked as usize);
            ctx.shared.acked.fetch_add(acked, Ordering::Relaxed);
            stats::store_max(&ctx.shared.last_ack_ns, ctx.clock.elapsed_ns());
        }
    }
}

struct ConsumerCtx {
    shared: Arc<Shared>,
    clock: Arc<RunClock>,
    latency: Arc<Latency>,
    stop: watch::Receiver<bool>,
    /// Messages of other runs are acknowledged but not counted; None
    /// (consume-only) counts every message.
    run_id: Option<u64>,
}

async fn consume<C: Consumer>(mut conn: C, ctx: ConsumerCtx) -> Result<()> {
    let mut batch = Vec::new();
    loop {
        batch.clear();
        conn.next(&mut batch).await?;
        let now = now_ns();
        let mut ours = 0;
        for body in &batch {
            let mine = body.len() >= HEADER
                && ctx
                    .run_id
                    .is_none_or(|id| body[0..8] == id.to_be_bytes()[..]);
            if mine {
                let sent = u64::from_be_bytes(body[16..24].try_into().unwrap_or_default());
                ctx.latency.record_ns(now.saturating_sub(sent));
                ours += 1;
            }
        }
        if ours > 0 {
            ctx.shared.consumed.fetch_add(ours, Ordering::Relaxed);
            stats::store_max(&ctx.shared.last_consume_ns, ctx.clock.elapsed_ns());
        }
        let foreign = batch.len() as u64 - ours;
        if foreign > 0 {
            ctx.shared.foreign.fetch_add(foreign, Ordering::Relaxed);
        }
        if *ctx.stop.borrow() {
            return conn.finish().await;
        }
    }
}
