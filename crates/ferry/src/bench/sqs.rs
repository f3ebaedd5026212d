//! `ferry bench sqs`: an SQS load generator for any endpoint that speaks the
//! AWS JSON 1.0 protocol (`X-Amz-Target: AmazonSQS.<Action>`): Ferry,
//! ElasticMQ and the like. Plain HTTP only, no SigV4 (a well-formed but
//! unsigned `Authorization` header goes with every request).
//!
//! Every producer and consumer owns one HTTP/1.1 keep-alive connection and
//! has one request in flight on it at a time: `--producers` and
//! `--consumers` are the concurrency. Producers send with SendMessageBatch,
//! consumers receive with ReceiveMessage (MaxNumberOfMessages = --batch,
//! WaitTimeSeconds = --wait-time) and delete what they received with
//! DeleteMessageBatch before their next receive.
//!
//! Every message body starts with 48 characters: the run's id, the message's
//! sequence number and the wall-clock time in nanoseconds taken just before
//! its request was sent, as 16 hex digits each; the rest is filler up to
//! `--size`. A consumer's latency sample is its receive time minus that
//! timestamp.
//!
//! `--long-poll` measures the wake-up of a waiting receive instead: per
//! queue, one receiver waits with WaitTimeSeconds=20 (--wait-time) on an
//! empty queue, and after --long-poll-gap one SendMessage goes in on another
//! connection; the sample is the time from just before the send to the
//! receive's answer. Then the message is deleted and the next sample starts.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::report::{BrokerUsage, LatencySummary, Phase, Summary, phase_line};
use super::stats::{
    self, Counter, Latency, ProcSample, Rate, RunClock, now_ns, parse_duration, parse_rate,
    thousands,
};

const HEADER: usize = 48;
const DEFAULT_COUNT: u64 = 100_000;
const DEFAULT_SAMPLES: u64 = 1_000;

#[derive(Debug, Args)]
pub struct SqsArgs {
    /// The SQS endpoint (http://HOST:PORT; no TLS).
    #[arg(
        long,
        env = "FERRY_BENCH_SQS_ENDPOINT",
        default_value = "http://127.0.0.1:9324"
    )]
    endpoint: String,
    /// Number of queues.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    queues: u32,
    /// Queue names are PREFIX-0, PREFIX-1, ... (with --fifo: PREFIX-0.fifo, ...).
    #[arg(long, default_value = "ferry-bench", value_name = "PREFIX")]
    queue_prefix: String,
    /// Sending connections in total (each with one request in flight).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    producers: u32,
    /// Receiving connections per queue (each receives, then deletes, then
    /// receives again).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    consumers: u32,
    /// Message body size in bytes (at least 48: run id, sequence number,
    /// send timestamp).
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    size: usize,
    /// Messages to send in total [default: 100000; with --long-poll: 1000
    /// samples per queue].
    #[arg(long, conflicts_with = "duration", value_name = "N")]
    count: Option<u64>,
    /// Send for this long instead of a count (e.g. 30s); the consumers then
    /// receive and delete what was sent.
    #[arg(long, value_parser = parse_duration, value_name = "TIME")]
    duration: Option<Duration>,
    /// Sending rate in msgs/s over all producers, or "max". Paced per batch:
    /// a batch goes when its last message is due.
    #[arg(long, default_value = "max", value_parser = parse_rate, value_name = "R|max")]
    rate: Rate,
    /// FIFO queues; each message gets one of --groups MessageGroupIds (in
    /// turn) and a unique MessageDeduplicationId.
    #[arg(long)]
    fifo: bool,
    /// With --fifo: MessageGroupIds per queue. A group with a message in
    /// flight delivers nothing more, so receives need many groups to be
    /// served in parallel.
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    groups: u32,
    /// Messages per SendMessageBatch, MaxNumberOfMessages per ReceiveMessage,
    /// entries per DeleteMessageBatch (1 to 10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10))]
    batch: u32,
    /// ReceiveMessage WaitTimeSeconds [default: 1; with --long-poll: 20].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(0..=20))]
    wait_time: Option<u32>,
    /// ReceiveMessage VisibilityTimeout, seconds.
    #[arg(long, default_value_t = 30, value_name = "S")]
    visibility_timeout: u32,
    /// Measure long-poll wake-up latency (see `--help`) instead of throughput.
    #[arg(long)]
    long_poll: bool,
    /// With --long-poll: how long the receive waits before the send.
    #[arg(long, default_value = "10ms", value_parser = parse_duration, value_name = "TIME")]
    long_poll_gap: Duration,
    /// Keep messages already in the queues (by default they are purged
    /// first; either way messages of other runs are deleted and not counted).
    #[arg(long)]
    no_purge: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Draw throughput over time and the latency distribution (of the
    /// wake-ups with --long-poll) into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Report this process's CPU seconds and RSS over the run (the broker's
    /// pid).
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// Give up when nothing was sent, received or deleted for this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "TIME")]
    idle_timeout: Duration,
}

// ---------------------------------------------------------------------------
// The client: one keep-alive HTTP/1.1 connection, AWS JSON 1.0.

/// Where requests go: the socket address and the Host header.
#[derive(Debug, Clone)]
struct Endpoint {
    addr: String,
    host: HeaderValue,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint> {
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("--endpoint {url}: not a URL"))?;
        match uri.scheme_str() {
            Some("http") | None => {}
            Some(s) => bail!("--endpoint {url}: scheme {s} is not supported (plain http only)"),
        }
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("--endpoint {url}: no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Endpoint {
            addr: authority.clone(),
            host: HeaderValue::from_str(&authority)?,
        })
    }
}

/// An error the service answered with (`__type` and message).
#[derive(Debug)]
struct ServiceError {
    status: u16,
    code: String,
    message: String,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ServiceError {}

fn is_code(e: &anyhow::Error, code: &str) -> bool {
    e.downcast_ref::<ServiceError>()
        .is_some_and(|s| s.code.ends_with(code))
}

/// A dummy SigV4 header: well-formed, so that endpoints which parse it (for
/// the access key or region) accept it; not a signature.
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=ferrybench/20250101/us-east-1/sqs/aws4_request, \
SignedHeaders=content-type;host;x-amz-date;x-amz-target, \
Signature=0000000000000000000000000000000000000000000000000000000000000000";

struct Client {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    async fn connect(endpoint: &Endpoint) -> Result<Client> {
        let mut c = Client {
            endpoint: endpoint.clone(),
            sender: None,
        };
        c.open().await?;
        Ok(c)
    }

    async fn open(&mut self) -> Result<()> {
        let stream = tokio::net::TcpStream::connect(&self.endpoint.addr)
            .await
            .with_context(|| format!("connecting to {}", self.endpoint.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// One request. A connection the server closed while idle is reopened
    /// before sending; a request that fails once sent is not retried (a
    /// send may have been stored).
    async fn call<T: DeserializeOwned>(
        &mut self,
        action: &str,
        body: &impl Serialize,
    ) -> Result<T> {
        let body = Bytes::from(serde_json::to_vec(body)?);
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.open().await?;
        }
        let Some(sender) = self.sender.as_mut() else {
            bail!("no connection");
        };
        if sender.ready().await.is_err() {
            self.open().await?;
        }
        let Some(sender) = self.sender.as_mut() else {
            bail!("no connection");
        };
        let req = hyper::Request::post("/")
            .header(HOST, self.endpoint.host.clone())
            .header(CONTENT_TYPE, "application/x-amz-json-1.0")
            .header("x-amz-target", format!("AmazonSQS.{action}"))
            .header("x-amz-date", "20250101T000000Z")
            .header(AUTHORIZATION, AUTH)
            .body(Full::new(body))?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("{action}: request"))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("{action}: response body"))?
            .to_bytes();
        if !status.is_success() {
            #[derive(Deserialize)]
            struct Err {
                #[serde(rename = "__type", default)]
                code: String,
                #[serde(alias = "Message", default)]
                message: String,
            }
            let e: Err = serde_json::from_slice(&bytes).unwrap_or(Err {
                code: String::new(),
                message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            });
            return Err(ServiceError {
                status: status.as_u16(),
                code: e.code,
                message: e.message,
            })
            .with_context(|| action.to_string());
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{action}: response is not JSON"))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SendEntry<'a> {
    id: &'a str,
    message_body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_group_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_deduplication_id: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct BatchIn<'a, E> {
    queue_url: &'a str,
    entries: &'a [E],
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BatchOut {
    #[serde(default)]
    successful: Vec<Entry>,
    #[serde(default)]
    failed: Vec<Failure>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Failure {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveIn<'a> {
    queue_url: &'a str,
    max_number_of_messages: u32,
    wait_time_seconds: u32,
    visibility_timeout: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveOut {
    #[serde(default)]
    messages: Vec<Received>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Received {
    receipt_handle: String,
    body: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteEntry<'a> {
    id: &'a str,
    receipt_handle: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QueueUrlOut {
    queue_url: String,
}

const IDS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Creates the queue (or finds it when it exists with other attributes) and
/// returns its URL.
async fn create_queue(client: &mut Client, name: &str, fifo: bool) -> Result<String> {
    let attributes = if fifo {
        json!({ "FifoQueue": "true" })
    } else {
        json!({})
    };
    let created: Result<QueueUrlOut> = client
        .call(
            "CreateQueue",
            &json!({ "QueueName": name, "Attributes": attributes }),
        )
        .await;
    match created {
        Ok(q) => Ok(q.queue_url),
        Err(e) if is_code(&e, "QueueNameExists") || is_code(&e, "QueueAlreadyExists") => {
            let q: QueueUrlOut = client
                .call("GetQueueUrl", &json!({ "QueueName": name }))
                .await?;
            Ok(q.queue_url)
        }
        Err(e) => Err(e.context(format!("creating queue {name}"))),
    }
}

// ---------------------------------------------------------------------------
// Message bodies.

fn body(size: usize, run_id: u64, seq: u64, ts_ns: u64) -> String {
    let mut b = format!("{run_id:016x}{seq:016x}{ts_ns:016x}");
    b.extend(std::iter::repeat_n('x', size.saturating_sub(HEADER)));
    b
}

/// The run id and send timestamp of a body this tool wrote.
fn parse_body(b: &str) -> Option<(u64, u64)> {
    let run = u64::from_str_radix(b.get(0..16)?, 16).ok()?;
    let ts = u64::from_str_radix(b.get(32..48)?, 16).ok()?;
    Some((run, ts))
}

// ---------------------------------------------------------------------------
// Shared state.

#[derive(Debug, Default)]
struct Shared {
    sent: AtomicU64,
    send_failed: AtomicU64,
    received: AtomicU64,
    foreign: AtomicU64,
    deleted: AtomicU64,
    delete_failed: AtomicU64,
    empty_receives: AtomicU64,
    /// Consumers are done once `deleted` reaches this.
    target: AtomicU64,
    last_send_ns: AtomicU64,
    last_receive_ns: AtomicU64,
    last_delete_ns: AtomicU64,
    /// The first few batch-entry failures, for the summary.
    failures: Mutex<Vec<String>>,
}

impl Shared {
    fn failure(&self, what: &str, f: &Failure) {
        let mut v = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < 5 {
            v.push(format!("{what}: {} {}", f.code, f.message));
        }
    }
}

/// Request round trips per action.
#[derive(Debug, Default)]
struct Requests {
    send: Latency,
    send_n: AtomicU64,
    receive: Latency,
    receive_n: AtomicU64,
    delete: Latency,
    delete_n: AtomicU64,
}

impl Requests {
    fn summary(&self, sent: u64, received: u64, deleted: u64) -> Value {
        let one = |l: &Latency, n: &AtomicU64, msgs: u64| {
            let n = n.load(Ordering::Relaxed);
            json!({
                "requests": n,
                "messages_per_request": if n > 0 { msgs as f64 / n as f64 } else { 0.0 },
                "round_trip": LatencySummary::from(&stats::merged([l])),
            })
        };
        json!({
            "send": one(&self.send, &self.send_n, sent),
            "receive": one(&self.receive, &self.receive_n, received),
            "delete": one(&self.delete, &self.delete_n, deleted),
        })
    }
}

fn round_trip_line(name: &str, v: &Value) -> Option<String> {
    let rt = v.get("round_trip").filter(|r| !r.is_null())?;
    Some(format!(
        "{name:<10} {} requests, {:.2} msgs each, round trip p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        thousands(v["requests"].as_u64().unwrap_or(0)),
        v["messages_per_request"].as_f64().unwrap_or(0.0),
        rt["p50_ms"].as_f64().unwrap_or(0.0),
        rt["p99_ms"].as_f64().unwrap_or(0.0),
        rt["max_ms"].as_f64().unwrap_or(0.0),
    ))
}

// ---------------------------------------------------------------------------
// The run.

pub async fn run(args: SqsArgs) -> Result<bool> {
    if args.size < HEADER {
        bail!("--size must be at least {HEADER} bytes (run id, sequence, timestamp)");
    }
    let endpoint = Endpoint::parse(&args.endpoint)?;
    let names: Vec<String> = (0..args.queues)
        .map(|i| {
            if args.fifo {
                format!("{}-{i}.fifo", args.queue_prefix)
            } else {
                format!("{}-{i}", args.queue_prefix)
            }
        })
        .collect();
    let mut setup = Client::connect(&endpoint).await?;
    let mut urls = Vec::with_capacity(names.len());
    let mut warnings = Vec::new();
    for name in &names {
        let url = create_queue(&mut setup, name, args.fifo).await?;
        if !args.no_purge {
            let purged: Result<IgnoredAny> =
                setup.call("PurgeQueue", &json!({ "QueueUrl": url })).await;
            match purged {
                Ok(_) => {}
                // SQS allows one purge a minute; what is left is deleted
                // by the consumers as messages of another run.
                Err(e) if is_code(&e, "PurgeQueueInProgress") => {
                    warnings.push(format!("{name}: purged less than 60 s ago; not purged"));
                }
                Err(e) => return Err(e.context(format!("purging {name}"))),
            }
        }
        urls.push(url);
    }
    for w in &warnings {
        eprintln!("ferry bench: {w}");
    }
    if args.long_poll {
        long_poll(&args, &endpoint, &urls).await
    } else {
        throughput(&args, &endpoint, &urls).await
    }
}

fn base_config(args: &SqsArgs, urls: &[String]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("endpoint".into(), json!(args.endpoint));
    m.insert("queues".into(), json!(args.queues));
    m.insert("queue_urls".into(), json!(urls));
    m.insert("fifo".into(), json!(args.fifo));
    m.insert("size".into(), json!(args.size));
    m.insert("batch".into(), json!(args.batch));
    m.insert(
        "visibility_timeout_s".into(),
        json!(args.visibility_timeout),
    );
    m.insert("purged".into(), json!(!args.no_purge));
    m
}

async fn throughput(args: &SqsArgs, endpoint: &Endpoint, urls: &[String]) -> Result<bool> {
    let count = match (args.count, args.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_COUNT),
    };
    let wait_time = args.wait_time.unwrap_or(1);
    let producers = args.producers as usize;
    let run_id = now_ns() ^ (u64::from(std::process::id()) << 32);
    let shared = Arc::new(Shared::default());
    shared
        .target
        .store(count.unwrap_or(u64::MAX), Ordering::Relaxed);
    let requests = Arc::new(Requests::default());
    let clock = Arc::new(RunClock::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let mut consumers: JoinSet<Result<()>> = JoinSet::new();
    let mut latencies: Vec<Arc<Latency>> = Vec::new();

    // Connect everyone first, then start together.
    let (go_tx, go_rx) = watch::channel(false);
    for url in urls {
        for _ in 0..args.consumers {
            let latency = Arc::new(Latency::default());
            latencies.push(latency.clone());
            let ctx = ConsumerCtx {
                client: Client::connect(endpoint).await?,
                url: url.clone(),
                shared: shared.clone(),
                requests: requests.clone(),
                clock: clock.clone(),
                latency,
                batch: args.batch,
                wait_time,
                visibility: args.visibility_timeout,
                run_id,
                go: go_rx.clone(),
                stop: stop_rx.clone(),
                done: done_tx.clone(),
            };
            consumers.spawn(consume(ctx));
        }
    }
    let mut producer_tasks: JoinSet<Result<()>> = JoinSet::new();
    for p in 0..producers {
        let mine: Vec<(usize, String)> = if producers >= urls.len() {
            vec![(p % urls.len(), urls[p % urls.len()].clone())]
        } else {
            urls.iter()
                .enumerate()
                .skip(p)
                .step_by(producers)
                .map(|(i, u)| (i, u.clone()))
                .collect()
        };
        let ctx = ProducerCtx {
            client: Client::connect(endpoint).await?,
            queues: mine,
            shared: shared.clone(),
            requests: requests.clone(),
            clock: clock.clone(),
            count: count
                .map(|n| n / producers as u64 + u64::from((p as u64) < n % producers as u64)),
            duration: args.duration,
            rate: args.rate.0.map(|r| r / producers as f64),
            batch: args.batch as usize,
            size: args.size,
            fifo: args.fifo.then_some(args.groups),
            run_id,
            producer: p as u64,
            go: go_rx.clone(),
            stop: stop_rx.clone(),
        };
        producer_tasks.spawn(produce(ctx));
    }

    let broker_start = args.broker_pid.and_then(ProcSample::read);
    if args.broker_pid.is_some() && broker_start.is_none() {
        eprintln!("ferry bench: cannot read /proc of --broker-pid; no broker figures");
    }
    let start_ns = clock.elapsed_ns();
    let _ = go_tx.send(true);
    let progress = {
        let read = |f: fn(&Shared) -> &AtomicU64| {
            let s = shared.clone();
            Box::new(move || f(&s).load(Ordering::Relaxed)) as Box<dyn Fn() -> u64 + Send + Sync>
        };
        let counters: Vec<Counter> = vec![
            ("sent", read(|s| &s.sent)),
            ("received", read(|s| &s.received)),
            ("deleted", read(|s| &s.deleted)),
        ];
        tokio::spawn(stats::progress_line(
            counters,
            latencies.clone(),
            !args.quiet,
            stop_rx.clone(),
        ))
    };

    let mut errors: Vec<String> = Vec::new();
    let mut last_activity = (0u64, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let deleted_all =
        |s: &Shared| s.deleted.load(Ordering::Relaxed) >= s.target.load(Ordering::Relaxed);
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
                    // Everything the service took is to be received and deleted.
                    shared.target.store(shared.sent.load(Ordering::Relaxed), Ordering::Relaxed);
                    if !errors.is_empty() || deleted_all(&shared) {
                        break;
                    }
                }
            }
            joined = consumers.join_next(), if !consumers.is_empty() => {
                match joined {
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => { errors.push(format!("consumer: {e:#}")); break; }
                    Some(Err(e)) => { errors.push(format!("consumer task: {e}")); break; }
                    None => {}
                }
            }
            _ = done_rx.changed() => {
                if producer_tasks.is_empty() {
                    break;
                }
            }
            _ = tick.tick() => {
                if producer_tasks.is_empty() && deleted_all(&shared) {
                    break;
                }
                let activity = shared.sent.load(Ordering::Relaxed)
                    + shared.received.load(Ordering::Relaxed)
                    + shared.foreign.load(Ordering::Relaxed)
                    + shared.deleted.load(Ordering::Relaxed);
                if activity != last_activity.0 {
                    last_activity = (activity, Instant::now());
                } else if last_activity.1.elapsed() >= args.idle_timeout {
                    errors.push(format!(
                        "nothing moved for {:?}: sent {}, received {}, deleted {}",
                        args.idle_timeout,
                        shared.sent.load(Ordering::Relaxed),
                        shared.received.load(Ordering::Relaxed),
                        shared.deleted.load(Ordering::Relaxed),
                    ));
                    break;
                }
            }
        }
    }
    let end_ns = clock.elapsed_ns();
    let _ = stop_tx.send(true);
    let broker_end = args.broker_pid.and_then(ProcSample::read);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(r) = producer_tasks.join_next().await {
            if let Ok(Err(e)) = r {
                errors.push(format!("producer: {e:#}"));
            }
        }
        while let Some(r) = consumers.join_next().await {
            if let Ok(Err(e)) = r {
                errors.push(format!("consumer: {e:#}"));
            }
        }
    })
    .await;

    let sent = shared.sent.load(Ordering::Relaxed);
    let send_failed = shared.send_failed.load(Ordering::Relaxed);
    let received = shared.received.load(Ordering::Relaxed);
    let deleted = shared.deleted.load(Ordering::Relaxed);
    let delete_failed = shared.delete_failed.load(Ordering::Relaxed);
    let foreign = shared.foreign.load(Ordering::Relaxed);
    let secs = |last: &AtomicU64| {
        let to = last.load(Ordering::Relaxed).max(start_ns);
        to.saturating_sub(start_ns) as f64 / 1e9
    };
    let mut published = Phase::new(sent, args.size, secs(&shared.last_send_ns));
    published.sent = Some(sent + send_failed);
    let mut consumed = Phase::new(received, args.size, secs(&shared.last_receive_ns));
    consumed.foreign = Some(foreign);
    let deleted_phase = Phase::new(deleted, args.size, secs(&shared.last_delete_ns));
    let histogram = stats::merged(latencies.iter().map(|l| l.as_ref()));
    plot(args, "ferry bench sqs", progress, &histogram).await?;
    let latency = LatencySummary::from(&histogram);

    errors.extend(
        shared
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..),
    );
    if send_failed > 0 {
        errors.push(format!("{send_failed} batch entries were not sent"));
    }
    if delete_failed > 0 {
        errors.push(format!("{delete_failed} deletes failed"));
    }
    if let Some(n) = count
        && sent < n
    {
        errors.push(format!(
            "sent {} of {} messages",
            thousands(sent),
            thousands(n)
        ));
    }
    if deleted < sent {
        errors.push(format!(
            "deleted {} of {} messages sent",
            thousands(deleted),
            thousands(sent)
        ));
    }
    let broker = match (args.broker_pid, broker_start, broker_end) {
        (Some(pid), Some(s), Some(e)) => Some(BrokerUsage::between(pid, s, e, sent.max(deleted))),
        _ => None,
    };
    let mut config = base_config(args, urls);
    config.insert("mode".into(), json!("throughput"));
    config.insert("producers".into(), json!(producers));
    config.insert("consumers_per_queue".into(), json!(args.consumers));
    config.insert("count".into(), json!(count));
    config.insert(
        "duration_s".into(),
        json!(args.duration.map(|d| d.as_secs_f64())),
    );
    config.insert("rate".into(), json!(args.rate.0));
    config.insert("groups".into(), json!(args.fifo.then_some(args.groups)));
    config.insert("wait_time_s".into(), json!(wait_time));

    let reqs = requests.summary(sent + send_failed, received + foreign, deleted);
    let mut extra = serde_json::Map::new();
    extra.insert("deleted".into(), serde_json::to_value(&deleted_phase)?);
    extra.insert(
        "empty_receives".into(),
        json!(shared.empty_receives.load(Ordering::Relaxed)),
    );
    extra.insert(
        "seconds".into(),
        json!(end_ns.saturating_sub(start_ns) as f64 / 1e9),
    );
    extra.insert("requests".into(), reqs.clone());
    let mut lines = vec![format!(
        "deleted:   {} (received and not deleted: {}; empty receives: {})",
        phase_line(&deleted_phase),
        thousands(received.saturating_sub(deleted)),
        thousands(shared.empty_receives.load(Ordering::Relaxed)),
    )];
    for (label, key) in [
        ("send:", "send"),
        ("receive:", "receive"),
        ("delete:", "delete"),
    ] {
        lines.extend(round_trip_line(label, &reqs[key]));
    }
    let summary = Summary {
        protocol: "sqs",
        config: Value::Object(config),
        published: Some(published),
        consumed: Some(consumed),
        latency,
        broker,
        complete: errors.is_empty(),
        errors,
    };
    summary.print_with(args.json, extra, &lines);
    Ok(summary.complete)
}

struct ProducerCtx {
    client: Client,
    /// (queue index, URL)
    queues: Vec<(usize, String)>,
    shared: Arc<Shared>,
    requests: Arc<Requests>,
    clock: Arc<RunClock>,
    count: Option<u64>,
    duration: Option<Duration>,
    /// msgs/s for this producer.
    rate: Option<f64>,
    batch: usize,
    size: usize,
    /// FIFO: the number of message groups per queue.
    fifo: Option<u32>,
    run_id: u64,
    producer: u64,
    go: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

async fn produce(mut ctx: ProducerCtx) -> Result<()> {
    let _ = ctx.go.wait_for(|go| *go).await;
    let start = Instant::now();
    let deadline = ctx.duration.map(|d| start + d);
    let mut n: u64 = 0;
    let mut round: usize = 0;
    loop {
        if *ctx.stop.borrow() || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        let k = match ctx.count {
            Some(c) if n >= c => return Ok(()),
            Some(c) => (c - n).min(ctx.batch as u64) as usize,
            None => ctx.batch,
        };
        if let Some(rate) = ctx.rate {
            let at = start + Duration::from_secs_f64((n + k as u64 - 1) as f64 / rate);
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = ctx.stop.changed() => return Ok(()),
            }
        }
        let (_, url) = &ctx.queues[round % ctx.queues.len()];
        round += 1;
        let ts = now_ns();
        let bodies: Vec<String> = (0..k as u64)
            .map(|i| body(ctx.size, ctx.run_id, (ctx.producer << 40) | (n + i), ts))
            .collect();
        let fifo_ids: Vec<(String, String)> = match ctx.fifo {
            Some(groups) => (0..k as u64)
                .map(|i| {
                    // Producers interleave over the groups, so each group's
                    // messages come from several producers.
                    let g = (n + i + ctx.producer) % u64::from(groups);
                    (
                        format!("g{g}"),
                        format!("{:x}-{}-{}", ctx.run_id, ctx.producer, n + i),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        let entries: Vec<SendEntry> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| SendEntry {
                id: IDS[i],
                message_body: b,
                message_group_id: fifo_ids.get(i).map(|f| f.0.as_str()),
                message_deduplication_id: fifo_ids.get(i).map(|f| f.1.as_str()),
            })
            .collect();
        let req = BatchIn {
            queue_url: url,
            entries: &entries,
        };
        let t0 = Instant::now();
        let out: BatchOut = tokio::select! {
            r = ctx.client.call("SendMessageBatch", &req) => r?,
            _ = ctx.stop.changed() => return Ok(()),
        };
        ctx.requests.send.record_ns(t0.elapsed().as_nanos() as u64);
        ctx.requests.send_n.fetch_add(1, Ordering::Relaxed);
        ctx.shared
            .sent
            .fetch_add(out.successful.len() as u64, Ordering::Relaxed);
        if !out.failed.is_empty() {
            ctx.shared
                .send_failed
                .fetch_add(out.failed.len() as u64, Ordering::Relaxed);
            ctx.shared.failure("SendMessageBatch", &out.failed[0]);
        }
        stats::store_max(&ctx.shared.last_send_ns, ctx.clock.elapsed_ns());
        n += k as u64;
    }
}

struct ConsumerCtx {
    client: Client,
    url: String,
    shared: Arc<Shared>,
    requests: Arc<Requests>,
    clock: Arc<RunClock>,
    latency: Arc<Latency>,
    batch: u32,
    wait_time: u32,
    visibility: u32,
    run_id: u64,
    go: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    done: Arc<watch::Sender<bool>>,
}

async fn consume(mut ctx: ConsumerCtx) -> Result<()> {
    let _ = ctx.go.wait_for(|go| *go).await;
    let receive = ReceiveIn {
        queue_url: &ctx.url,
        max_number_of_messages: ctx.batch,
        wait_time_seconds: ctx.wait_time,
        visibility_timeout: ctx.visibility,
    };
    loop {
        if *ctx.stop.borrow() {
            return Ok(());
        }
        let t0 = Instant::now();
        let out: ReceiveOut = tokio::select! {
            r = ctx.client.call("ReceiveMessage", &receive) => r?,
            _ = ctx.stop.changed() => return Ok(()),
        };
        let now = now_ns();
        ctx.requests.receive_n.fetch_add(1, Ordering::Relaxed);
        if out.messages.is_empty() {
            ctx.shared.empty_receives.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        ctx.requests
            .receive
            .record_ns(t0.elapsed().as_nanos() as u64);
        let mut ours = [false; 10];
        let mut n_ours = 0u64;
        for (i, m) in out.messages.iter().enumerate() {
            match parse_body(&m.body) {
                Some((run, ts)) if run == ctx.run_id => {
                    ctx.latency.record_ns(now.saturating_sub(ts));
                    if let Some(o) = ours.get_mut(i) {
                        *o = true;
                    }
                    n_ours += 1;
                }
                _ => {
                    ctx.shared.foreign.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if n_ours > 0 {
            ctx.shared.received.fetch_add(n_ours, Ordering::Relaxed);
            stats::store_max(&ctx.shared.last_receive_ns, ctx.clock.elapsed_ns());
        }
        let entries: Vec<DeleteEntry> = out
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| DeleteEntry {
                id: IDS[i % IDS.len()],
                receipt_handle: &m.receipt_handle,
            })
            .collect();
        let t0 = Instant::now();
        // Not abandoned on stop: the run ends when the last delete is answered.
        let del: BatchOut = ctx
            .client
            .call(
                "DeleteMessageBatch",
                &BatchIn {
                    queue_url: &ctx.url,
                    entries: &entries,
                },
            )
            .await?;
        ctx.requests
            .delete
            .record_ns(t0.elapsed().as_nanos() as u64);
        ctx.requests.delete_n.fetch_add(1, Ordering::Relaxed);
        let deleted_ours = del
            .successful
            .iter()
            .filter(|e| {
                e.id.parse::<usize>()
                    .ok()
                    .and_then(|i| ours.get(i))
                    .copied()
                    .unwrap_or(false)
            })
            .count() as u64;
        if !del.failed.is_empty() {
            ctx.shared
                .delete_failed
                .fetch_add(del.failed.len() as u64, Ordering::Relaxed);
            ctx.shared.failure("DeleteMessageBatch", &del.failed[0]);
        }
        if deleted_ours > 0 {
            let total = ctx
                .shared
                .deleted
                .fetch_add(deleted_ours, Ordering::Relaxed)
                + deleted_ours;
            stats::store_max(&ctx.shared.last_delete_ns, ctx.clock.elapsed_ns());
            if total >= ctx.shared.target.load(Ordering::Relaxed) {
                let _ = ctx.done.send(true);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Long-poll wake-up latency.

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SendOne<'a> {
    queue_url: &'a str,
    message_body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_group_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_deduplication_id: Option<&'a str>,
}

#[derive(Default)]
struct PollStats {
    wake: Arc<Latency>,
    send: Latency,
    /// Receives that answered before the send did.
    before_send_answer: AtomicU64,
    samples: AtomicU64,
    foreign: AtomicU64,
    timeouts: AtomicU64,
}

async fn long_poll(args: &SqsArgs, endpoint: &Endpoint, urls: &[String]) -> Result<bool> {
    let samples = match (args.count, args.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_SAMPLES),
    };
    let wait_time = args.wait_time.unwrap_or(20);
    if wait_time == 0 {
        bail!("--long-poll needs --wait-time of at least 1 s");
    }
    let run_id = now_ns() ^ (u64::from(std::process::id()) << 32);
    let stats_ = Arc::new(PollStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let broker_start = args.broker_pid.and_then(ProcSample::read);
    let progress = {
        let s = stats_.clone();
        let counters: Vec<Counter> = vec![(
            "samples",
            Box::new(move || s.samples.load(Ordering::Relaxed)),
        )];
        tokio::spawn(stats::progress_line(
            counters,
            vec![stats_.wake.clone()],
            !args.quiet,
            stop_rx.clone(),
        ))
    };
    let start = Instant::now();
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    for (qi, url) in urls.iter().enumerate() {
        let receiver = Client::connect(endpoint).await?;
        let sender = Client::connect(endpoint).await?;
        let ctx = PollCtx {
            receiver,
            sender,
            url: url.clone(),
            stats: stats_.clone(),
            stop: stop.clone(),
            samples: samples
                .map(|n| n / urls.len() as u64 + u64::from((qi as u64) < n % urls.len() as u64)),
            deadline: args.duration.map(|d| start + d),
            wait_time,
            gap: args.long_poll_gap,
            visibility: args.visibility_timeout,
            size: args.size,
            fifo: args.fifo,
            run_id,
        };
        tasks.spawn(poll_pairs(ctx));
    }
    let mut errors = Vec::new();
    let idle = args
        .idle_timeout
        .max(Duration::from_secs(u64::from(wait_time) + 5));
    let mut last = (0u64, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !tasks.is_empty() {
        tokio::select! {
            r = tasks.join_next() => match r {
                Some(Ok(Ok(()))) | None => {}
                Some(Ok(Err(e))) => { errors.push(format!("{e:#}")); break; }
                Some(Err(e)) => { errors.push(format!("task: {e}")); break; }
            },
            _ = tick.tick() => {
                let n = stats_.samples.load(Ordering::Relaxed);
                if n != last.0 {
                    last = (n, Instant::now());
                } else if last.1.elapsed() >= idle {
                    errors.push(format!("no sample for {idle:?} ({n} so far)"));
                    break;
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    tasks.abort_all();
    let broker_end = args.broker_pid.and_then(ProcSample::read);
    let n = stats_.samples.load(Ordering::Relaxed);
    if let Some(want) = samples
        && n < want
        && errors.is_empty()
    {
        errors.push(format!("{n} of {want} samples"));
    }
    let wake_histogram = stats::merged([stats_.wake.as_ref()]);
    plot(
        args,
        "ferry bench sqs --long-poll",
        progress,
        &wake_histogram,
    )
    .await?;
    let wake = LatencySummary::from(&wake_histogram);
    let send = LatencySummary::from(&stats::merged([&stats_.send]));
    let before = stats_.before_send_answer.load(Ordering::Relaxed);
    let mut config = base_config(args, urls);
    config.insert("mode".into(), json!("long-poll"));
    config.insert("samples".into(), json!(samples));
    config.insert(
        "duration_s".into(),
        json!(args.duration.map(|d| d.as_secs_f64())),
    );
    config.insert("wait_time_s".into(), json!(wait_time));
    config.insert(
        "gap_ms".into(),
        json!(args.long_poll_gap.as_secs_f64() * 1000.0),
    );
    let mut extra = serde_json::Map::new();
    extra.insert(
        "long_poll".into(),
        json!({
            "samples": n,
            "seconds": seconds,
            "wake": wake,
            "send_round_trip": send,
            "woke_before_send_answered": before,
            "foreign": stats_.foreign.load(Ordering::Relaxed),
            "empty_receives": stats_.timeouts.load(Ordering::Relaxed),
        }),
    );
    let mut lines = Vec::new();
    if let Some(w) = &wake {
        lines.push(format!(
            "wake-up:   p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (min {:.3}, mean {:.3} ms, {} samples) from just before SendMessage to the waiting ReceiveMessage's answer",
            w.p50_ms, w.p90_ms, w.p99_ms, w.p999_ms, w.max_ms, w.min_ms, w.mean_ms, thousands(w.samples)
        ));
    }
    if let Some(s) = &send {
        lines.push(format!(
            "send:      round trip p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; the receive answered first in {} of {} samples",
            s.p50_ms, s.p99_ms, s.max_ms, thousands(before), thousands(n)
        ));
    }
    let broker = match (args.broker_pid, broker_start, broker_end) {
        (Some(pid), Some(s), Some(e)) => Some(BrokerUsage::between(pid, s, e, n)),
        _ => None,
    };
    let summary = Summary {
        protocol: "sqs",
        config: Value::Object(config),
        published: None,
        consumed: None,
        latency: None,
        broker,
        complete: errors.is_empty(),
        errors,
    };
    summary.print_with(args.json, extra, &lines);
    Ok(summary.complete)
}

struct PollCtx {
    receiver: Client,
    sender: Client,
    url: String,
    stats: Arc<PollStats>,
    stop: Arc<AtomicBool>,
    samples: Option<u64>,
    deadline: Option<Instant>,
    wait_time: u32,
    gap: Duration,
    visibility: u32,
    size: usize,
    fifo: bool,
    run_id: u64,
}

/// One receiver and one sender on one queue, one sample at a time. The
/// receive runs in its own task, so that its answer is timed when it arrives
/// and not when this task next looks.
async fn poll_pairs(mut ctx: PollCtx) -> Result<()> {
    let mut i: u64 = 0;
    let mut receiver = Some(ctx.receiver);
    while ctx.samples.is_none_or(|n| i < n)
        && ctx.deadline.is_none_or(|d| Instant::now() < d)
        && !ctx.stop.load(Ordering::Relaxed)
    {
        let Some(mut rc) = receiver.take() else {
            bail!("receiver lost");
        };
        let url = ctx.url.clone();
        let (wait, vis) = (ctx.wait_time, ctx.visibility);
        let waiting = tokio::spawn(async move {
            let r: Result<ReceiveOut> = rc
                .call(
                    "ReceiveMessage",
                    &ReceiveIn {
                        queue_url: &url,
                        max_number_of_messages: 1,
                        wait_time_seconds: wait,
                        visibility_timeout: vis,
                    },
                )
                .await;
            (r, now_ns(), rc)
        });
        tokio::time::sleep(ctx.gap).await;
        let dedup = format!("{:x}-lp-{i}", ctx.run_id);
        let ts = now_ns();
        let b = body(ctx.size, ctx.run_id, i, ts);
        let _: IgnoredAny = ctx
            .sender
            .call(
                "SendMessage",
                &SendOne {
                    queue_url: &ctx.url,
                    message_body: &b,
                    message_group_id: ctx.fifo.then_some("g"),
                    message_deduplication_id: ctx.fifo.then_some(dedup.as_str()),
                },
            )
            .await?;
        let sent_ns = now_ns();
        ctx.stats.send.record_ns(sent_ns.saturating_sub(ts));
        let (out, got_ns, rc) = waiting.await.context("receiver task")?;
        receiver = Some(rc);
        let mut out = out?;
        let Some(m) = out.messages.pop() else {
            // Nothing within WaitTimeSeconds: the send was not seen.
            ctx.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            bail!("a ReceiveMessage waiting {wait}s returned nothing although a message was sent");
        };
        let rc = receiver.as_mut().context("receiver")?;
        let _: IgnoredAny = rc
            .call(
                "DeleteMessage",
                &json!({ "QueueUrl": ctx.url, "ReceiptHandle": m.receipt_handle }),
            )
            .await?;
        match parse_body(&m.body) {
            Some((run, t)) if run == ctx.run_id && t == ts => {
                ctx.stats.wake.record_ns(got_ns.saturating_sub(ts));
                if got_ns < sent_ns {
                    ctx.stats.before_send_answer.fetch_add(1, Ordering::Relaxed);
                }
                ctx.stats.samples.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            _ => {
                // Left over from another run, or the previous sample's
                // message come back: drain the queue and measure again.
                ctx.stats.foreign.fetch_add(1, Ordering::Relaxed);
                loop {
                    let more: ReceiveOut = rc
                        .call(
                            "ReceiveMessage",
                            &ReceiveIn {
                                queue_url: &ctx.url,
                                max_number_of_messages: 10,
                                wait_time_seconds: 0,
                                visibility_timeout: ctx.visibility,
                            },
                        )
                        .await?;
                    if more.messages.is_empty() {
                        break;
                    }
                    for m in more.messages {
                        let _: IgnoredAny = rc
                            .call(
                                "DeleteMessage",
                                &json!({ "QueueUrl": ctx.url, "ReceiptHandle": m.receipt_handle }),
                            )
                            .await?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// With --plot: waits for the progress loop (stopped by now) and draws the
/// run.
async fn plot(
    args: &SqsArgs,
    title: &str,
    progress: tokio::task::JoinHandle<stats::Timeline>,
    latency: &hdrhistogram::Histogram<u64>,
) -> Result<()> {
    let timeline = progress.await.unwrap_or_default();
    match &args.plot {
        Some(path) => super::plot::write_svg(path, title, &timeline, latency),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_run_and_timestamp() {
        let b = body(100, 0xdead_beef, 7, 1_700_000_000_123_456_789);
        assert_eq!(b.len(), 100);
        assert_eq!(
            parse_body(&b),
            Some((0xdead_beef, 1_700_000_000_123_456_789))
        );
        assert_eq!(body(48, 1, 2, 3).len(), 48);
        assert_eq!(parse_body("not ours"), None);
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:9324").unwrap();
        assert_eq!(e.addr, "127.0.0.1:9324");
        assert_eq!(
            Endpoint::parse("http://localhost").unwrap().addr,
            "localhost:80"
        );
        assert!(Endpoint::parse("https://sqs.us-east-1.amazonaws.com").is_err());
    }
}
