//! `ferry consume TOPIC`: read records, alone or as a consumer-group member.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{BrokerId, FetchRequest};
use kafka_protocol::records::{Record, RecordBatchDecoder};
use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::ClientArgs;
use super::client::{Client, Conn, EARLIEST, LATEST, TopicInfo, topic_name};
use super::error::{CliError, Result, is_retriable};
use super::member::{Member, Offsets};
use super::output::{Out, lossy};
use super::time::{format_rfc3339, now_ms, parse_time};

/// How long one fetch waits for new records.
const FETCH_WAIT_MS: i32 = 500;
const FETCH_BYTES_MAX: i32 = 50 << 20;
const PARTITION_FETCH_BYTES_MAX: i32 = 1 << 20;

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The topic to read.
    #[arg(value_name = "TOPIC")]
    pub topic: String,
    /// Consume as a member of this consumer group: share the partitions with
    /// its other members and continue from (and commit) its offsets.
    #[arg(short = 'g', long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Where to start: beginning, end, OFFSET or TIME (see below)
    /// [default: beginning; with --group only for partitions without a
    /// committed offset].
    #[arg(short = 'o', long, value_name = "FROM", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// Stop after N records.
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
    /// Read only partition N (repeatable, or comma-separated); not with --group.
    #[arg(
        short = 'p',
        long = "partition",
        value_name = "N",
        value_delimiter = ',',
        conflicts_with = "group"
    )]
    pub partitions: Vec<i32>,
    /// Print each record with FORMAT (placeholders below) instead of its value.
    #[arg(short = 'f', long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Stop at the end of every partition instead of waiting for new records.
    #[arg(short = 'e', long)]
    pub exit_at_end: bool,
    /// With --group: commit the offsets of printed records this often, in ms
    /// (and always when stopping).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub commit_interval_ms: u64,
    /// With --group: how long the group waits for a silent member before
    /// removing it, in ms (heartbeats go every third of it).
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub session_timeout_ms: u64,
}

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    End,
    Offset(i64),
    /// Epoch milliseconds.
    Time(i64),
}

const START_FORMS: &str =
    "beginning, end, an offset, or a time (2026-11-28T10:00:00Z, -10m, @1700000000000)";

pub fn parse_start(s: &str, flag: &str) -> Result<Start> {
    match s {
        "beginning" | "earliest" | "start" | "oldest" => return Ok(Start::Beginning),
        "end" | "latest" | "newest" => return Ok(Start::End),
        _ => {}
    }
    if let Ok(n) = s.parse::<i64>() {
        if n >= 0 {
            return Ok(Start::Offset(n));
        }
        return Err(CliError::local(format!(
            "{flag} {s}: offsets are not negative; for a time before now add a unit, e.g. {s}m"
        )));
    }
    match parse_time(s, now_ms()) {
        Some(Ok(t)) => Ok(Start::Time(t)),
        Some(Err(e)) => Err(CliError::local(format!("{flag} {e}"))),
        None => Err(CliError::local(format!(
            "{flag} {s:?}: expected {START_FORMS}"
        ))),
    }
}

/// Offsets to start at for `partitions` of `topic`.
pub async fn resolve_start(
    client: &mut Client,
    topic: &TopicInfo,
    partitions: &[i32],
    start: Start,
) -> Result<BTreeMap<i32, i64>> {
    let ask = |ts: i64| partitions.iter().map(|&p| (p, ts)).collect::<Vec<_>>();
    let latest = client.list_offsets(topic, &ask(LATEST)).await?;
    let end = |p: i32| latest.get(&p).map_or(0, |o| o.0);
    Ok(match start {
        Start::Beginning => client
            .list_offsets(topic, &ask(EARLIEST))
            .await?
            .into_iter()
            .map(|(p, (o, _))| (p, o))
            .collect(),
        Start::End => latest.iter().map(|(&p, &(o, _))| (p, o)).collect(),
        Start::Offset(n) => {
            let earliest = client.list_offsets(topic, &ask(EARLIEST)).await?;
            partitions
                .iter()
                .map(|&p| {
                    let lo = earliest.get(&p).map_or(0, |o| o.0);
                    let clamped = n.clamp(lo, end(p).max(lo));
                    if clamped != n {
                        eprintln!(
                            "ferry: note: {}/{p} holds offsets {lo} to {}; starting at {clamped}",
                            topic.name,
                            end(p) - 1
                        );
                    }
                    (p, clamped)
                })
                .collect()
        }
        Start::Time(t) => client
            .list_offsets(topic, &ask(t))
            .await?
            .into_iter()
            // No record at or after the time: start at the end.
            .map(|(p, (o, _))| (p, if o < 0 { end(p) } else { o }))
            .collect(),
    })
}

/// One piece of a `--format`.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Date,
    Headers,
    KeyLen,
    ValueLen,
}

fn parse_format(format: &str) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut text = Vec::new();
    let mut chars = format.chars();
    let flush = |text: &mut Vec<u8>, pieces: &mut Vec<Piece>| {
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(text)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let piece = match chars.next() {
                    Some('t') => Piece::Topic,
                    Some('p') => Piece::Partition,
                    Some('o') => Piece::Offset,
                    Some('k') => Piece::Key,
                    Some('v' | 's') => Piece::Value,
                    Some('T') => Piece::Timestamp,
                    Some('d') => Piece::Date,
                    Some('h') => Piece::Headers,
                    Some('K') => Piece::KeyLen,
                    Some('S') => Piece::ValueLen,
                    Some('%') => {
                        text.push(b'%');
                        continue;
                    }
                    other => {
                        return Err(CliError::local(format!(
                            "--format: unknown placeholder %{}; use %t %p %o %k %v %T %d %h %K %S or %%",
                            other.map(String::from).unwrap_or_default()
                        )));
                    }
                };
                flush(&mut text, &mut pieces);
                pieces.push(piece);
            }
            '\\' => match chars.next() {
                Some('n') => text.push(b'\n'),
                Some('t') => text.push(b'\t'),
                Some('r') => text.push(b'\r'),
                Some('\\') => text.push(b'\\'),
                Some(other) => {
                    text.push(b'\\');
                    text.extend_from_slice(other.to_string().as_bytes());
                }
                None => text.push(b'\\'),
            },
            c => text.extend_from_slice(c.to_string().as_bytes()),
        }
    }
    if text.last() != Some(&b'\n') {
        text.push(b'\n');
    }
    flush(&mut text, &mut pieces);
    Ok(pieces)
}

fn headers_text(r: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (k, v)) in r.headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(k.as_bytes());
        if let Some(v) = v {
            out.push(b'=');
            out.extend_from_slice(v);
        }
    }
    out
}

fn render(pieces: &[Piece], topic: &str, partition: i32, r: &Record, out: &mut Vec<u8>) {
    let empty = Bytes::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.extend_from_slice(t),
            Piece::Topic => out.extend_from_slice(topic.as_bytes()),
            Piece::Partition => out.extend_from_slice(partition.to_string().as_bytes()),
            Piece::Offset => out.extend_from_slice(r.offset.to_string().as_bytes()),
            Piece::Key => out.extend_from_slice(r.key.as_ref().unwrap_or(&empty)),
            Piece::Value => out.extend_from_slice(r.value.as_ref().unwrap_or(&empty)),
            Piece::Timestamp => out.extend_from_slice(r.timestamp.to_string().as_bytes()),
            Piece::Date => out.extend_from_slice(format_rfc3339(r.timestamp).as_bytes()),
            Piece::Headers => out.extend_from_slice(&headers_text(r)),
            Piece::KeyLen => {
                let n = r.key.as_ref().map_or(-1, |k| k.len() as i64);
                out.extend_from_slice(n.to_string().as_bytes());
            }
            Piece::ValueLen => {
                let n = r.value.as_ref().map_or(-1, |v| v.len() as i64);
                out.extend_from_slice(n.to_string().as_bytes());
            }
        }
    }
}

fn record_json(topic: &str, partition: i32, r: &Record) -> Value {
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.as_ref().map(|v| lossy(v)))))
        .collect();
    json!({
        "topic": topic,
        "partition": partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": r.key.as_ref().map(|k| lossy(k)),
        "value": r.value.as_ref().map(|v| lossy(v)),
        "headers": headers,
    })
}

/// SIGINT and SIGTERM, registered before anything else so Ctrl-C always
/// ends in a clean commit and LeaveGroup.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        let install =
            |kind| signal(kind).map_err(|e| CliError::local(format!("cannot handle signals: {e}")));
        Ok(Signals {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

struct Consumer {
    client: Client,
    topic: TopicInfo,
    start: Start,
    /// Next offset to read, per partition read.
    positions: BTreeMap<i32, i64>,
    /// Partitions read to their end (with --exit-at-end).
    done: BTreeSet<i32>,
    /// One fetch connection per leader, so leaders are fetched concurrently.
    conns: BTreeMap<i32, Conn>,
    out: Out,
    pieces: Vec<Piece>,
    json: bool,
    printed: u64,
    count: Option<u64>,
    exit_at_end: bool,
    finished: bool,
    member: Option<Member>,
    joined: bool,
    /// What the group has committed, as far as this member knows.
    committed: Offsets,
    last_commit: Instant,
    commit_interval: Duration,
}

pub async fn run(args: ConsumeArgs) -> Result<()> {
    if args.format.is_some() && args.client.json {
        return Err(CliError::local(
            "--format and --json both say how to print records; pick one",
        ));
    }
    let start = match &args.from {
        Some(s) => parse_start(s, "--from")?,
        None => Start::Beginning,
    };
    let pieces = parse_format(args.format.as_deref().unwrap_or("%v\\n"))?;
    let mut signals = Signals::new()?;
    let mut client = Client::connect(&args.client.options()).await?;
    let topic = client.topic(&args.topic, false).await?;
    for &p in &args.partitions {
        if topic.leader(p).is_none() {
            return Err(CliError::refused(
                format!("consume {}/{p}", args.topic),
                3,
                Some(&format!(
                    "topic {:?} has partitions 0-{}",
                    args.topic,
                    topic.partitions.len().saturating_sub(1)
                )),
            )
            .with_hint("pick an existing partition, or leave out --partition"));
        }
    }
    let member = match &args.group {
        Some(g) => Some(
            Member::new(
                &mut client,
                g,
                vec![args.topic.clone()],
                Duration::from_millis(args.session_timeout_ms),
            )
            .await?,
        ),
        None => None,
    };
    let mut c = Consumer {
        client,
        topic,
        start,
        positions: BTreeMap::new(),
        done: BTreeSet::new(),
        conns: BTreeMap::new(),
        out: Out::new(),
        pieces,
        json: args.client.json,
        printed: 0,
        count: args.count,
        exit_at_end: args.exit_at_end,
        finished: args.count == Some(0),
        member,
        joined: false,
        committed: Offsets::new(),
        last_commit: Instant::now(),
        commit_interval: Duration::from_millis(args.commit_interval_ms),
    };
    if c.member.is_none() && !c.finished {
        let partitions: Vec<i32> = if args.partitions.is_empty() {
            c.topic.partitions.iter().map(|p| p.partition).collect()
        } else {
            args.partitions.clone()
        };
        c.positions = resolve_start(&mut c.client, &c.topic, &partitions, start).await?;
        c.mark_ends().await?;
    }
    let result = loop {
        if c.finished {
            break Ok(());
        }
        tokio::select! {
            _ = signals.recv() => break Ok(()),
            r = c.step() => if let Err(e) = r { break Err(e) },
        }
    };
    let _ = c.out.flush();
    let closed = c.close().await;
    result.and(closed)
}

impl Consumer {
    /// With --exit-at-end, notes the partitions already at their end.
    async fn mark_ends(&mut self) -> Result<()> {
        if !self.exit_at_end || self.positions.is_empty() {
            return Ok(());
        }
        let ask: Vec<(i32, i64)> = self.positions.keys().map(|&p| (p, LATEST)).collect();
        let ends = self.client.list_offsets(&self.topic, &ask).await?;
        for (p, pos) in &self.positions {
            if ends.get(p).is_some_and(|&(end, _)| *pos >= end) {
                self.done.insert(*p);
            }
        }
        Ok(())
    }

    async fn step(&mut self) -> Result<()> {
        if let Some(mut member) = self.member.take() {
            let r = self.group_step(&mut member).await;
            self.member = Some(member);
            r?;
        }
        let active: Vec<i32> = self
            .positions
            .keys()
            .filter(|p| !self.done.contains(p))
            .copied()
            .collect();
        if active.is_empty() {
            if self.exit_at_end {
                self.finished = true;
            } else {
                // Nothing assigned: wait for a rebalance to give us work.
                tokio::time::sleep(Duration::from_millis(FETCH_WAIT_MS as u64)).await;
            }
            return Ok(());
        }
        self.fetch(&active).await
    }

    async fn group_step(&mut self, member: &mut Member) -> Result<()> {
        if self.joined && !member.needs_rejoin() {
            if self.last_commit.elapsed() >= self.commit_interval {
                self.commit(member).await?;
            }
            return Ok(());
        }
        if self.joined {
            self.commit(member).await?;
        }
        member.join(&mut self.client).await?;
        self.joined = true;
        self.topic = self.client.topic(&self.topic.name, false).await?;
        let mine = member
            .assignment
            .get(&self.topic.name)
            .cloned()
            .unwrap_or_default();
        self.positions.clear();
        self.done.clear();
        self.conns.clear();
        self.committed = if mine.is_empty() {
            Offsets::new()
        } else {
            member
                .committed(&[(self.topic.name.clone(), mine.clone())])
                .await?
        };
        let fresh: Vec<i32> = mine
            .iter()
            .filter(|&&p| !self.committed.contains_key(&(self.topic.name.clone(), p)))
            .copied()
            .collect();
        let mut positions = if fresh.is_empty() {
            BTreeMap::new()
        } else {
            resolve_start(&mut self.client, &self.topic, &fresh, self.start).await?
        };
        for ((_, p), o) in &self.committed {
            positions.insert(*p, *o);
        }
        self.positions = positions;
        self.mark_ends().await
    }

    /// Commits the positions that moved since the last commit.
    async fn commit(&mut self, member: &mut Member) -> Result<()> {
        self.last_commit = Instant::now();
        let changed: Offsets = self
            .positions
            .iter()
            .map(|(&p, &o)| ((self.topic.name.clone(), p), o))
            .filter(|(k, o)| self.committed.get(k) != Some(o))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        if member.commit(&changed).await? {
            self.committed.extend(changed);
        } else {
            eprintln!(
                "ferry: warning: group {:?} rebalanced before offsets could be committed; \
                 records since the last commit may be delivered again",
                member.group
            );
        }
        Ok(())
    }

    async fn fetch(&mut self, active: &[i32]) -> Result<()> {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &p in active {
            let leader = self.topic.leader(p).unwrap_or(-1);
            by_leader.entry(leader).or_default().push(p);
        }
        let mut requests: BTreeMap<i32, FetchRequest> = BTreeMap::new();
        for (&leader, parts) in &by_leader {
            if !self.conns.contains_key(&leader) {
                let conn = self.client.dedicated(leader).await?;
                self.conns.insert(leader, conn);
            }
            let mut t = FetchTopic::default();
            t.topic = topic_name(&self.topic.name);
            t.partitions = parts
                .iter()
                .map(|&p| {
                    let mut fp = FetchPartition::default();
                    fp.partition = p;
                    fp.fetch_offset = self.positions.get(&p).copied().unwrap_or(0);
                    fp.partition_max_bytes = PARTITION_FETCH_BYTES_MAX;
                    fp.current_leader_epoch = -1;
                    fp.last_fetched_epoch = -1;
                    fp.log_start_offset = -1;
                    fp
                })
                .collect();
            let mut req = FetchRequest::default();
            req.replica_id = BrokerId(-1);
            req.max_wait_ms = FETCH_WAIT_MS;
            req.min_bytes = 1;
            req.max_bytes = FETCH_BYTES_MAX;
            req.session_epoch = -1;
            req.topics = vec![t];
            requests.insert(leader, req);
        }
        let calls = self
            .conns
            .iter_mut()
            .filter_map(|(leader, conn)| {
                requests
                    .get(leader)
                    .map(|req| async move { conn.call(req).await })
            })
            .collect::<Vec<_>>();
        let responses = futures_util::future::join_all(calls).await;
        let mut refresh = false;
        for resp in responses {
            let resp = resp?;
            if resp.error_code != 0 {
                return Err(CliError::refused(
                    format!("fetch from {}", self.topic.name),
                    resp.error_code,
                    None,
                ));
            }
            for t in resp.responses {
                for pd in t.partitions {
                    if self.finished {
                        break;
                    }
                    refresh |= self.partition_data(pd).await?;
                }
            }
        }
        if self.out.flush().is_err() {
            self.finished = true;
        }
        if refresh {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.topic = self.client.topic(&self.topic.name, false).await?;
            self.conns.clear();
        }
        Ok(())
    }

    /// Prints one partition's records; true if metadata should be refreshed.
    async fn partition_data(&mut self, pd: PartitionData) -> Result<bool> {
        let p = pd.partition_index;
        let Some(&start) = self.positions.get(&p) else {
            return Ok(false);
        };
        match pd.error_code {
            0 => {}
            1 => {
                let ask = [(p, EARLIEST)];
                let lo = self.client.list_offsets(&self.topic, &ask).await?;
                let ask = [(p, LATEST)];
                let hi = self.client.list_offsets(&self.topic, &ask).await?;
                let (lo, hi) = (lo.get(&p).map_or(0, |o| o.0), hi.get(&p).map_or(0, |o| o.0));
                let next = if start < lo { lo } else { hi };
                eprintln!(
                    "ferry: warning: offset {start} of {}/{p} is out of range ({lo} to {hi}); continuing at {next}",
                    self.topic.name
                );
                self.positions.insert(p, next);
                return Ok(false);
            }
            code if is_retriable(code) => return Ok(true),
            code => {
                return Err(CliError::refused(
                    format!("fetch {}/{p}", self.topic.name),
                    code,
                    None,
                ));
            }
        }
        let mut pos = start;
        let mut text = Vec::new();
        let mut bytes = pd.records.unwrap_or_default();
        'batches: while bytes.len() >= 12 {
            let len = i32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize + 12;
            if len > bytes.len() {
                break; // a partial batch at the end, as Kafka may send
            }
            let mut batch = bytes.split_to(len);
            let base = i64::from_be_bytes([
                batch[0], batch[1], batch[2], batch[3], batch[4], batch[5], batch[6], batch[7],
            ]);
            let next = if batch.len() >= 27 && batch[16] == 2 {
                let delta = i32::from_be_bytes([batch[23], batch[24], batch[25], batch[26]]);
                Some(base + i64::from(delta) + 1)
            } else {
                None
            };
            let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| {
                CliError::local(format!(
                    "cannot decode the record batch at offset {base} of {}/{p}: {e}",
                    self.topic.name
                ))
            })?;
            for r in &set.records {
                if r.offset < pos || r.control {
                    continue;
                }
                if self.count.is_some_and(|n| self.printed >= n) {
                    self.finished = true;
                    break 'batches;
                }
                if self.json {
                    text.extend_from_slice(
                        record_json(&self.topic.name, p, r).to_string().as_bytes(),
                    );
                    text.push(b'\n');
                } else {
                    render(&self.pieces, &self.topic.name, p, r, &mut text);
                }
                self.printed += 1;
                pos = r.offset + 1;
            }
            if let Some(next) = next {
                pos = pos.max(next);
            } else if let Some(last) = set.records.last() {
                pos = pos.max(last.offset + 1);
            }
        }
        self.positions.insert(p, pos);
        if self.count.is_some_and(|n| self.printed >= n) {
            self.finished = true;
        }
        if self.exit_at_end && pos >= pd.high_watermark {
            self.done.insert(p);
        }
        if self.out.write(&text).is_err() {
            self.finished = true;
        }
        Ok(false)
    }

    /// Commits and leaves the group, if in one.
    async fn close(mut self) -> Result<()> {
        let Some(mut member) = self.member.take() else {
            return Ok(());
        };
        let committed = if self.joined {
            self.commit(&mut member).await
        } else {
            Ok(())
        };
        let left = member.leave().await;
        committed.and(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!(
            parse_format("%k=%v").unwrap_or_default(),
            vec![
                Piece::Key,
                Piece::Text(b"=".to_vec()),
                Piece::Value,
                Piece::Text(b"\n".to_vec())
            ]
        );
        assert_eq!(
            parse_format("%%%s\\n").unwrap_or_default(),
            vec![
                Piece::Text(b"%".to_vec()),
                Piece::Value,
                Piece::Text(b"\n".to_vec())
            ]
        );
        assert!(parse_format("%x").is_err());
    }

    #[test]
    fn starts_parse() {
        assert_eq!(
            parse_start("beginning", "--from").ok(),
            Some(Start::Beginning)
        );
        assert_eq!(parse_start("end", "--from").ok(), Some(Start::End));
        assert_eq!(parse_start("42", "--from").ok(), Some(Start::Offset(42)));
        assert_eq!(parse_start("@5", "--from").ok(), Some(Start::Time(5)));
        assert!(parse_start("-3", "--from").is_err());
        assert!(parse_start("soon", "--from").is_err());
    }
}
