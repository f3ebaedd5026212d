//! `ferry bench amqp`: an AMQP 0-9-1 load generator on the lapin client, for
//! Ferry and RabbitMQ alike.
//!
//! Every message body starts with a 24-byte header: the run's id, the
//! message's sequence number, and the wall-clock time in nanoseconds taken
//! just before `basic.publish` (big-endian u64s); the rest is filler up to
//! `--size`. A consumer's latency sample is its receive time minus that
//! timestamp.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::report::{BrokerUsage, LatencySummary, Phase, Summary};
use super::stats::{
    self, Latency, ProcSample, Rate, RunClock, now_ns, parse_duration, parse_rate, thousands,
};

const HEADER: usize = 24;
const DEFAULT_COUNT: u64 = 100_000;

#[derive(Debug, Args)]
pub struct AmqpArgs {
    /// Broker to connect to (amqp://USER:PASS@HOST:PORT/VHOST, vhost
    /// URL-encoded: %2f is "/").
    #[arg(
        long,
        env = "FERRY_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    url: String,
    /// Number of queues.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    queues: u32,
    /// Queue names are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "ferry-bench", value_name = "PREFIX")]
    queue_prefix: String,
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
    /// Publish for this long instead of a count (e.g. 30s, 2m); the consumers
    /// then drain what was published.
    #[arg(long, value_parser = parse_duration, value_name = "TIME")]
    duration: Option<Duration>,
    /// Publishing rate in msgs/s over all producers, or "max". Paced: message
    /// k of a producer is sent k/rate seconds after it starts, or at once when
    /// it is behind.
    #[arg(long, default_value = "max", value_parser = parse_rate, value_name = "R|max")]
    rate: Rate,
    /// Publisher confirms with at most WINDOW unconfirmed messages per
    /// producer (--confirm alone: 500).
    #[arg(long, num_args = 0..=1, default_missing_value = "500", value_name = "WINDOW",
          value_parser = clap::value_parser!(u32).range(1..))]
    confirm: Option<u32>,
    /// Persistent messages (delivery_mode 2).
    #[arg(long)]
    persistent: bool,
    /// basic.qos prefetch count per consumer (0: unlimited).
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
    /// Acknowledge each delivery with basic.ack (otherwise consume with no-ack).
    #[arg(long)]
    manual_ack: bool,
    /// With --manual-ack: one basic.ack with multiple=true every N deliveries.
    #[arg(long, default_value_t = 1, requires = "manual_ack", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    multi_ack: u32,
    /// Fan-out: the queues are bound to one fanout exchange, PREFIX-fanout,
    /// and producers publish to it, so every queue gets every message
    /// (one producer unless --producers).
    #[arg(long, conflicts_with_all = ["publish_only", "consume_only"])]
    fanout: bool,
    /// Only publish (e.g. to build a backlog); wait for the confirms, then stop.
    #[arg(long, conflicts_with = "consume_only")]
    publish_only: bool,
    /// Only consume: drain what the queues hold (or --count messages).
    #[arg(long)]
    consume_only: bool,
    /// Keep messages already in the queues (by default they are purged
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
    /// pid; for RabbitMQ, that of beam.smp).
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// Give up when nothing was published, confirmed or consumed for this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "TIME")]
    idle_timeout: Duration,
}

/// Counters shared by producers, consumers, the progress line and the end.
#[derive(Debug, Default)]
struct Shared {
    sent: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
    redelivered: AtomicU64,
    foreign: AtomicU64,
    /// Consumers are done once `consumed` reaches this.
    target: AtomicU64,
    /// Run-clock nanoseconds of the last confirm / delivery.
    last_confirm_ns: AtomicU64,
    last_consume_ns: AtomicU64,
    producers_done: AtomicBool,
}

pub async fn run(args: AmqpArgs) -> Result<bool> {
    if args.size < HEADER {
        bail!("--size must be at least {HEADER} bytes (run id, sequence, timestamp)");
    }
    if args.manual_ack && args.prefetch > 0 && args.multi_ack > u32::from(args.prefetch) {
        bail!("--multi-ack must not exceed --prefetch, or the consumers stall");
    }
    let queues: Vec<String> = (0..args.queues)
        .map(|i| format!("{}-{i}", args.queue_prefix))
        .collect();
    let publishing = !args.consume_only;
    let consuming = !args.publish_only;
    // With --fanout a message is consumed once per queue.
    let copies = if args.fanout {
        u64::from(args.queues)
    } else {
        1
    };
    let producers = match (args.producers, args.fanout) {
        (Some(p), _) => p as usize,
        (None, true) => 1,
        (None, false) => args.queues as usize,
    };
    let exchange = if args.fanout {
        format!("{}-fanout", args.queue_prefix)
    } else {
        String::new()
    };
    let run_id = now_ns() ^ (u64::from(std::process::id()) << 32);

    // Declare (and purge) the queues, or read their depth for --consume-only.
    let setup = connect(&args.url, "ferry-bench-setup").await?;
    let ch = setup.create_channel().await.context("channel.open")?;
    let mut backlog = 0u64;
    if args.fanout {
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("exchange.declare {exchange}"))?;
    }
    for q in &queues {
        let declared = ch
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("queue.declare {q}"))?;
        if args.fanout {
            ch.queue_bind(
                q.as_str().into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("queue.bind {q} to {exchange}"))?;
        }
        if publishing && !args.no_purge {
            ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())
                .await
                .with_context(|| format!("queue.purge {q}"))?;
        } else {
            backlog += u64::from(declared.message_count());
        }
    }
    let _ = ch.close(200, "OK".into()).await;

    let count = match (args.count, args.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) if args.consume_only => Some(backlog),
        (None, None) => Some(DEFAULT_COUNT),
    };
    let shared = Arc::new(Shared::default());
    shared.target.store(
        count.map_or(u64::MAX, |c| c.saturating_mul(copies)),
        Ordering::Relaxed,
    );

    let clock = Arc::new(RunClock::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    let mut latencies: Vec<Arc<Latency>> = Vec::new();

    // Consumers first, all subscribed before the first publish.
    let consume_start_ns = clock.elapsed_ns();
    let mut connections: Vec<Connection> = Vec::new();
    if consuming {
        for (qi, q) in queues.iter().enumerate() {
            for ci in 0..args.consumers {
                let conn = connect(&args.url, &format!("ferry-bench-consumer-{qi}-{ci}")).await?;
                let channel = conn.create_channel().await.context("channel.open")?;
                channel
                    .basic_qos(args.prefetch, BasicQosOptions { global: false })
                    .await
                    .context("basic.qos")?;
                let consumer = channel
                    .basic_consume(
                        q.as_str().into(),
                        format!("ferry-bench-{qi}-{ci}").as_str().into(),
                        BasicConsumeOptions {
                            no_ack: !args.manual_ack,
                            ..BasicConsumeOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .with_context(|| format!("basic.consume {q}"))?;
                let latency = Arc::new(Latency::default());
                latencies.push(latency.clone());
                let ctx = ConsumerCtx {
                    shared: shared.clone(),
                    clock: clock.clone(),
                    latency,
                    stop: stop_rx.clone(),
                    done: done_tx.clone(),
                    manual_ack: args.manual_ack,
                    multi_ack: args.multi_ack,
                    run_id: if args.consume_only {
                        None
                    } else {
                        Some(run_id)
                    },
                };
                tasks.spawn(consume(consumer, channel.clone(), ctx));
                connections.push(conn);
            }
        }
    }

    let broker_start = args.broker_pid.and_then(ProcSample::read);
    if args.broker_pid.is_some() && broker_start.is_none() {
        eprintln!("ferry bench: cannot read /proc of --broker-pid; no broker figures");
    }

    // Producers: connect all, then start them together.
    let mut producer_tasks: JoinSet<Result<()>> = JoinSet::new();
    if publishing {
        let (go_tx, go_rx) = watch::channel(false);
        for p in 0..producers {
            let conn = connect(&args.url, &format!("ferry-bench-producer-{p}")).await?;
            let channel = conn.create_channel().await.context("channel.open")?;
            if args.confirm.is_some() {
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .context("confirm.select")?;
            }
            // Routing keys on the default exchange (the queue names), or
            // the fanout exchange's one.
            let mine: Vec<String> = if args.fanout {
                vec![String::new()]
            } else if producers >= queues.len() {
                vec![queues[p % queues.len()].clone()]
            } else {
                queues.iter().skip(p).step_by(producers).cloned().collect()
            };
            let my_count =
                count.map(|n| n / producers as u64 + u64::from((p as u64) < n % producers as u64));
            let ctx = ProducerCtx {
                shared: shared.clone(),
                clock: clock.clone(),
                exchange: exchange.clone(),
                queues: mine,
                count: my_count,
                duration: args.duration,
                rate: args.rate.0.map(|r| r / producers as f64),
                window: args.confirm.map(|w| w as usize),
                persistent: args.persistent,
                size: args.size,
                run_id,
                producer: p as u64,
                go: go_rx.clone(),
                stop: stop_rx.clone(),
            };
            producer_tasks.spawn(publish(channel, ctx));
            connections.push(conn);
        }
        let _ = go_tx.send(true);
    }
    // The run's clock starts now: publishing (or, for --consume-only, when
    // the first consumer subscribed).
    let start_ns = if publishing {
        clock.elapsed_ns()
    } else {
        consume_start_ns
    };
    let progress = {
        let read = |f: fn(&Shared) -> &AtomicU64| {
            let s = shared.clone();
            Box::new(move || f(&s).load(Ordering::Relaxed)) as Box<dyn Fn() -> u64 + Send + Sync>
        };
        let mut counters: Vec<stats::Counter> = Vec::new();
        if publishing {
            counters.push(("published", read(|s| &s.sent)));
            if args.confirm.is_some() {
                counters.push(("confirmed", read(|s| &s.confirmed)));
            }
        }
        if consuming {
            counters.push(("consumed", read(|s| &s.consumed)));
        }
        tokio::spawn(stats::progress_line(
            counters,
            latencies.clone(),
            !args.quiet,
            stop_rx.clone(),
        ))
    };

    let mut errors: Vec<String> = Vec::new();
    let mut publish_end_ns = None;
    let mut last_activity = (0u64, Instant::now());
    let consume_deadline = args
        .duration
        .filter(|_| args.consume_only)
        .map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            joined = producer_tasks.join_next(), if !producer_tasks.is_empty() => {
                match joined {
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => errors.push(format!("producer: {e:#}")),
                    Some(Err(e)) => errors.push(format!("producer task: {e}")),
                    None => {}
                }
                if producer_tasks.is_empty() {
                    publish_end_ns = Some(clock.elapsed_ns());
                    shared.producers_done.store(true, Ordering::Relaxed);
                    // Everything the broker took is to be consumed.
                    let took = shared.sent.load(Ordering::Relaxed)
                        - shared.nacked.load(Ordering::Relaxed);
                    if count.is_none() || args.count.is_some_and(|n| n > took) {
                        shared.target.store(took * copies, Ordering::Relaxed);
                    }
                    if !errors.is_empty() || !consuming {
                        break;
                    }
                    if shared.consumed.load(Ordering::Relaxed)
                        >= shared.target.load(Ordering::Relaxed)
                    {
                        break;
                    }
                }
            }
            joined = tasks.join_next(), if !tasks.is_empty() => {
                match joined {
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => { errors.push(format!("consumer: {e:#}")); break; }
                    Some(Err(e)) => { errors.push(format!("consumer task: {e}")); break; }
                    None => {}
                }
            }
            _ = done_rx.changed() => {
                if !publishing || producer_tasks.is_empty() {
                    break;
                }
            }
            _ = tick.tick() => {
                if consuming
                    && (!publishing || producer_tasks.is_empty())
                    && shared.consumed.load(Ordering::Relaxed) >= shared.target.load(Ordering::Relaxed)
                {
                    break;
                }
                if consume_deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let activity = shared.sent.load(Ordering::Relaxed)
                    + shared.confirmed.load(Ordering::Relaxed)
                    + shared.consumed.load(Ordering::Relaxed)
                    + shared.foreign.load(Ordering::Relaxed);
                if activity != last_activity.0 {
                    last_activity = (activity, Instant::now());
                } else if last_activity.1.elapsed() >= args.idle_timeout {
                    errors.push(format!(
                        "nothing moved for {:?}: sent {}, confirmed {}, consumed {} of {}",
                        args.idle_timeout,
                        shared.sent.load(Ordering::Relaxed),
                        shared.confirmed.load(Ordering::Relaxed),
                        shared.consumed.load(Ordering::Relaxed),
                        match shared.target.load(Ordering::Relaxed) {
                            u64::MAX => "?".to_string(),
                            t => t.to_string(),
                        },
                    ));
                    break;
                }
            }
        }
    }
    let end_ns = clock.elapsed_ns();
    let _ = stop_tx.send(true);
    let broker_end = args.broker_pid.and_then(ProcSample::read);
    // Let the consumers send their last acks before the connections close.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                errors.push(format!("consumer: {e:#}"));
            }
        }
        while let Some(r) = producer_tasks.join_next().await {
            if let Ok(Err(e)) = r {
                errors.push(format!("producer: {e:#}"));
            }
        }
    })
    .await;
    for c in &connections {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.close(200, "OK".into())).await;
    }
    let _ = setup.close(200, "OK".into()).await;

    let sent = shared.sent.load(Ordering::Relaxed);
    let confirmed = shared.confirmed.load(Ordering::Relaxed);
    let nacked = shared.nacked.load(Ordering::Relaxed);
    let consumed = shared.consumed.load(Ordering::Relaxed);
    let secs = |to: u64| to.saturating_sub(start_ns) as f64 / 1e9;

    let published = publishing.then(|| {
        let messages = if args.confirm.is_some() {
            confirmed
        } else {
            sent
        };
        let last = if args.confirm.is_some() {
            shared.last_confirm_ns.load(Ordering::Relaxed)
        } else {
            publish_end_ns.unwrap_or(end_ns)
        };
        let mut p = Phase::new(messages, args.size, secs(last.max(start_ns)));
        p.sent = Some(sent);
        if args.confirm.is_some() {
            p.confirmed = Some(confirmed);
            p.nacked = Some(nacked);
        }
        p
    });
    let consumed_phase = consuming.then(|| {
        let last = shared.last_consume_ns.load(Ordering::Relaxed);
        let mut p = Phase::new(consumed, args.size, secs(last.max(start_ns)));
        p.redelivered = Some(shared.redelivered.load(Ordering::Relaxed));
        p.foreign = Some(shared.foreign.load(Ordering::Relaxed));
        p
    });
    let timeline = progress.await.unwrap_or_default();
    let histogram = stats::merged(latencies.iter().map(|l| l.as_ref()));
    if let Some(path) = &args.plot {
        super::plot::write_svg(path, "ferry bench amqp", &timeline, &histogram)?;
    }
    let latency = LatencySummary::from(&histogram);

    if publishing && args.confirm.is_some() && confirmed + nacked < sent && errors.is_empty() {
        errors.push(format!(
            "{} of {} messages were never confirmed",
            sent - confirmed - nacked,
            sent
        ));
    }
    if nacked > 0 {
        errors.push(format!("the broker nacked {nacked} messages"));
    }
    let target = shared.target.load(Ordering::Relaxed);
    if consuming && consume_deadline.is_none() && target != u64::MAX && consumed < target {
        errors.push(format!(
            "consumed {} of {} messages",
            thousands(consumed),
            thousands(target)
        ));
    }
    if publishing && let Some(n) = args.count {
        let got = if args.confirm.is_some() {
            confirmed
        } else {
            sent
        };
        if got < n {
            errors.push(format!(
                "published {} of {} messages",
                thousands(got),
                thousands(n)
            ));
        }
    }

    let moved = consumed.max(if args.confirm.is_some() {
        confirmed
    } else {
        sent
    });
    let broker = match (args.broker_pid, broker_start, broker_end) {
        (Some(pid), Some(s), Some(e)) => Some(BrokerUsage::between(pid, s, e, moved)),
        _ => None,
    };
    let summary = Summary {
        protocol: "amqp",
        config: json!({
            "url": redact(&args.url),
            "queues": args.queues,
            "queue_prefix": args.queue_prefix,
            "producers": if publishing { producers } else { 0 },
            "consumers_per_queue": if consuming { args.consumers } else { 0 },
            "size": args.size,
            "count": count,
            "duration_s": args.duration.map(|d| d.as_secs_f64()),
            "rate": args.rate.0,
            "confirm_window": args.confirm,
            "persistent": args.persistent,
            "prefetch": args.prefetch,
            "manual_ack": args.manual_ack,
            "fanout": args.fanout,
            "multi_ack": args.multi_ack,
            "mode": if args.publish_only { "publish-only" }
                    else if args.consume_only { "consume-only" }
                    else { "publish-and-consume" },
            "backlog_at_start": backlog,
        }),
        published,
        consumed: consumed_phase,
        latency,
        broker,
        complete: errors.is_empty(),
        errors,
    };
    summary.print(args.json);
    Ok(summary.complete)
}

async fn connect(url: &str, name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))
}

/// The URL without its password, for messages and the summary.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &cred[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

struct ProducerCtx {
    shared: Arc<Shared>,
    clock: Arc<RunClock>,
    /// "" (the default exchange) or the fanout exchange.
    exchange: String,
    /// Routing keys, used in turn.
    queues: Vec<String>,
    count: Option<u64>,
    duration: Option<Duration>,
    /// msgs/s for this producer.
    rate: Option<f64>,
    window: Option<usize>,
    persistent: bool,
    size: usize,
    run_id: u64,
    producer: u64,
    go: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

/// Publishes without waiting for each frame to be written: up to WINDOW
/// publishes (with confirms: unconfirmed messages) are in flight at once, so
/// lapin's I/O thread writes them in batches instead of one wake-up and one
/// write per message. Without --confirm the same bound applies to messages
/// handed to lapin but not yet written.
async fn publish(channel: Channel, mut ctx: ProducerCtx) -> Result<()> {
    let _ = ctx.go.wait_for(|go| *go).await;
    let props = BasicProperties::default().with_delivery_mode(if ctx.persistent { 2 } else { 1 });
    let routing: Vec<lapin::types::ShortString> =
        ctx.queues.iter().map(|q| q.as_str().into()).collect();
    let window = ctx.window.unwrap_or(UNCONFIRMED_PIPELINE);
    let start = Instant::now();
    let deadline = ctx.duration.map(|d| start + d);
    let mut inflight = FuturesUnordered::new();
    let mut n: u64 = 0;
    let mut finished = false;
    loop {
        let mut due = None;
        while !finished && inflight.len() < window {
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
            let mut body = vec![b'x'; ctx.size];
            body[0..8].copy_from_slice(&ctx.run_id.to_be_bytes());
            body[8..16].copy_from_slice(&((ctx.producer << 40) | n).to_be_bytes());
            body[16..24].copy_from_slice(&now_ns().to_be_bytes());
            let channel = &channel;
            let queue = routing[(n % routing.len() as u64) as usize].clone();
            let props = props.clone();
            let exchange = &ctx.exchange;
            inflight.push(async move {
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        queue,
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await
                    .context("basic.publish")?;
                confirm.await.context("publisher confirm")
            });
            ctx.shared.sent.fetch_add(1, Ordering::Relaxed);
            n += 1;
        }
        if finished && inflight.is_empty() {
            return Ok(());
        }
        tokio::select! {
            r = inflight.next(), if !inflight.is_empty() => {
                if let Some(r) = r {
                    settle(&ctx, r?, ctx.window.is_none());
                }
            }
            _ = sleep_until_opt(due) => {}
        }
    }
}

/// Without --confirm: how many publishes may be handed to lapin and not yet
/// written.
const UNCONFIRMED_PIPELINE: usize = 500;

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn settle(ctx: &ProducerCtx, c: Confirmation, unconfirmed: bool) {
    if unconfirmed {
        return;
    }
    match c {
        Confirmation::Ack(_) | Confirmation::NotRequested => {
            ctx.shared.confirmed.fetch_add(1, Ordering::Relaxed)
        }
        Confirmation::Nack(_) => ctx.shared.nacked.fetch_add(1, Ordering::Relaxed),
    };
    stats::store_max(&ctx.shared.last_confirm_ns, ctx.clock.elapsed_ns());
}

struct ConsumerCtx {
    shared: Arc<Shared>,
    clock: Arc<RunClock>,
    latency: Arc<Latency>,
    stop: watch::Receiver<bool>,
    done: Arc<watch::Sender<bool>>,
    manual_ack: bool,
    multi_ack: u32,
    /// Messages of other runs are acknowledged but not counted; None
    /// (--consume-only) counts every message.
    run_id: Option<u64>,
}

/// Acknowledgements are not awaited by the consumer: each basic.ack goes to
/// an ack task, as the delivery tag on the consumer's channel
/// (`Channel::basic_ack`, which writes the frame at once, rather than
/// lapin's `Acker`, which goes through an internal RPC task and a spawned
/// task per ack). Single acks are sent without waiting for the ones before
/// them to be written (as RabbitMQ's Java client and PerfTest do: an ack has
/// no reply), so lapin writes a burst of them at once. A multiple=true ack
/// waits for every ack before it, then goes out alone: it must not overtake
/// the one before it, or the broker sees an already-acknowledged tag and
/// closes the channel.
async fn consume(
    mut consumer: lapin::Consumer,
    channel: Channel,
    mut ctx: ConsumerCtx,
) -> Result<()> {
    async fn ack(channel: &Channel, tag: u64, multiple: bool) -> lapin::Result<()> {
        channel.basic_ack(tag, BasicAckOptions { multiple }).await
    }
    let mut unacked: u32 = 0;
    let mut last: Option<u64> = None;
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, bool)>();
    let mut acker_task = tokio::spawn(async move {
        let channel = &channel;
        let mut sending = FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                Some(r) = sending.next(), if !sending.is_empty() => {
                    let r: lapin::Result<()> = r;
                    r.context("basic.ack")?;
                }
                next = ack_rx.recv() => match next {
                    Some((tag, false)) => sending.push(ack(channel, tag, false)),
                    Some((tag, true)) => {
                        while let Some(r) = sending.next().await {
                            r.context("basic.ack")?;
                        }
                        ack(channel, tag, true).await.context("basic.ack")?;
                    }
                    None => break,
                },
            }
        }
        while let Some(r) = sending.next().await {
            r.context("basic.ack")?;
        }
        Ok::<(), anyhow::Error>(())
    });
    loop {
        let delivery = tokio::select! {
            biased;
            _ = ctx.stop.changed() => break,
            r = &mut acker_task => return r.context("ack task")?,
            d = consumer.next() => d,
        };
        let Some(delivery) = delivery else { break };
        let delivery = delivery.map_err(|e| anyhow!("delivery: {e}"))?;
        let now = now_ns();
        let data = &delivery.data;
        let ours = data.len() >= HEADER
            && ctx
                .run_id
                .is_none_or(|id| data[0..8] == id.to_be_bytes()[..]);
        if ours {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&data[16..24]);
            ctx.latency
                .record_ns(now.saturating_sub(u64::from_be_bytes(ts)));
            if delivery.redelivered {
                ctx.shared.redelivered.fetch_add(1, Ordering::Relaxed);
            }
        }
        if ctx.manual_ack {
            unacked += 1;
            if unacked >= ctx.multi_ack {
                // The task ends only on an error, which the select above reports.
                let _ = ack_tx.send((delivery.delivery_tag, ctx.multi_ack > 1));
                unacked = 0;
                last = None;
            } else {
                last = Some(delivery.delivery_tag);
            }
        }
        if ours {
            let consumed = ctx.shared.consumed.fetch_add(1, Ordering::Relaxed) + 1;
            stats::store_max(&ctx.shared.last_consume_ns, ctx.clock.elapsed_ns());
            if consumed >= ctx.shared.target.load(Ordering::Relaxed) {
                let _ = ctx.done.send(true);
            }
        } else {
            ctx.shared.foreign.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(tag) = last {
        let _ = ack_tx.send((tag, true));
    }
    drop(ack_tx);
    acker_task.await.context("ack task")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
