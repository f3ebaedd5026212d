//! `ferry produce TOPIC`: stdin lines become records.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Args;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde_json::json;
use tokio::sync::mpsc;

use super::client::{Client, TopicInfo, topic_name};
use super::error::{CliError, Result, is_retriable};
use super::output::{Out, Table, key_value};
use super::time::now_ms;
use super::{Acks, ClientArgs, CompressionArg};

/// Most records and bytes sent in one request.
const BATCH_RECORDS_MAX: usize = 10_000;
const BATCH_BYTES_MAX: usize = 1 << 20;
/// Tries of one batch when the broker answers with a retriable error.
const ATTEMPTS: u32 = 5;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The topic to write to (created first if the broker auto-creates topics).
    #[arg(value_name = "TOPIC")]
    pub topic: String,
    /// Split each line at the first SEP into key and value; lines without
    /// SEP become records without a key.
    #[arg(short = 'k', long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Header KEY=VALUE added to every record; repeatable.
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Write every record to partition N [default: by key, with Kafka's
    /// murmur2 hash as Java clients do; records without a key round-robin].
    #[arg(short = 'p', long, value_name = "N")]
    pub partition: Option<i32>,
    /// When the broker acknowledges a batch: all (durable on every in-sync
    /// replica), 1 (the leader has it) or 0 (no answer, offsets unknown).
    #[arg(long, value_enum, default_value = "all")]
    pub acks: Acks,
    /// Compress batches with this codec.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
}

/// Kafka's murmur2 (the Java client's default partitioner hash).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: i32 = 0x5bd1_e995;
    let seed = 0x9747_b28c_u32 as i32;
    let mut h: i32 = seed ^ data.len() as i32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= ((k as u32) >> 24) as i32;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() == 3 {
        h ^= i32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= i32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= i32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(M);
    h ^= ((h as u32) >> 15) as i32;
    h
}

fn compression(c: CompressionArg) -> Compression {
    match c {
        CompressionArg::None => Compression::None,
        CompressionArg::Gzip => Compression::Gzip,
        CompressionArg::Snappy => Compression::Snappy,
        CompressionArg::Lz4 => Compression::Lz4,
        CompressionArg::Zstd => Compression::Zstd,
    }
}

/// Reads stdin on a thread (stdin is blocking) and hands lines over.
fn spawn_stdin_reader() -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(4096);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(line)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    rx
}

#[derive(Debug, Default)]
struct PartitionStats {
    records: u64,
    first: Option<i64>,
    last: Option<i64>,
}

struct Producer {
    client: Client,
    topic: TopicInfo,
    acks: i16,
    compression: Compression,
    json: bool,
    out: Out,
    stats: BTreeMap<i32, PartitionStats>,
}

pub async fn run(args: ProduceArgs) -> Result<()> {
    let mut headers = Vec::new();
    for h in &args.headers {
        headers.push(key_value(h, "--header")?);
    }
    if args.key_separator.as_deref() == Some("") {
        return Err(CliError::local("--key-separator must not be empty"));
    }
    let mut client = Client::connect(&args.client.options()).await?;
    let topic = client.topic(&args.topic, true).await?;
    if let Some(p) = args.partition
        && topic.leader(p).is_none()
    {
        return Err(CliError::refused(
            format!("produce to {}/{p}", args.topic),
            3,
            Some(&format!(
                "topic {:?} has partitions 0-{}",
                args.topic,
                topic.partitions.len().saturating_sub(1)
            )),
        )
        .with_hint("pick an existing partition, or leave out --partition"));
    }
    let mut producer = Producer {
        client,
        topic,
        acks: match args.acks {
            Acks::All => -1,
            Acks::Leader => 1,
            Acks::None => 0,
        },
        compression: compression(args.compression),
        json: args.client.json,
        out: Out::new(),
        stats: BTreeMap::new(),
    };
    let result = producer.pump(&args, &headers).await;
    producer.summary();
    result
}

impl Producer {
    async fn pump(&mut self, args: &ProduceArgs, headers: &[(String, String)]) -> Result<()> {
        let mut lines = spawn_stdin_reader();
        let mut round_robin = 0usize;
        while let Some(first) = lines.recv().await {
            let mut batch = vec![first];
            let mut bytes = 0;
            while batch.len() < BATCH_RECORDS_MAX && bytes < BATCH_BYTES_MAX {
                match lines.try_recv() {
                    Ok(line) => {
                        if let Ok(l) = &line {
                            bytes += l.len();
                        }
                        batch.push(line);
                    }
                    Err(_) => break,
                }
            }
            let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
            // (partition, index in its batch) of each line, in stdin order.
            let mut order = Vec::with_capacity(batch.len());
            let timestamp = now_ms();
            let count = self.topic.partitions.len().max(1);
            for line in batch {
                let line = line.map_err(|e| CliError::local(format!("cannot read stdin: {e}")))?;
                let (key, value) = split(&line, args.key_separator.as_deref());
                let partition = match (args.partition, &key) {
                    (Some(p), _) => p,
                    (None, Some(k)) => {
                        self.topic.partitions[(murmur2(k) & 0x7fff_ffff) as usize % count].partition
                    }
                    (None, None) => {
                        round_robin = round_robin.wrapping_add(1);
                        self.topic.partitions[(round_robin - 1) % count].partition
                    }
                };
                let records = by_partition.entry(partition).or_default();
                let mut record = Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: records.len() as i64,
                    sequence: -1,
                    timestamp,
                    key,
                    value: Some(value),
                    headers: Default::default(),
                };
                for (k, v) in headers {
                    record.headers.insert(
                        StrBytes::from_string(k.clone()),
                        Some(Bytes::copy_from_slice(v.as_bytes())),
                    );
                }
                order.push((partition, records.len() as i64));
                records.push(record);
            }
            let bases = self.send(by_partition).await?;
            if self.json && self.acks != 0 {
                let mut text = String::new();
                for (p, i) in order {
                    if let Some(base) = bases.get(&p) {
                        let line =
                            json!({"topic": self.topic.name, "partition": p, "offset": base + i});
                        text.push_str(&line.to_string());
                        text.push('\n');
                    }
                }
                // A closed stdout does not stop producing.
                let _ = self
                    .out
                    .write(text.as_bytes())
                    .and_then(|()| self.out.flush());
            }
        }
        Ok(())
    }

    /// Sends one batch per partition; returns each partition's base offset.
    async fn send(
        &mut self,
        by_partition: BTreeMap<i32, Vec<Record>>,
    ) -> Result<BTreeMap<i32, i64>> {
        let mut bases = BTreeMap::new();
        let mut pending: BTreeMap<i32, (Bytes, usize)> = BTreeMap::new();
        for (p, records) in by_partition {
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &records,
                &RecordEncodeOptions {
                    version: 2,
                    compression: self.compression,
                },
            )
            .map_err(|e| CliError::local(format!("cannot encode a record batch: {e}")))?;
            pending.insert(p, (buf.freeze(), records.len()));
        }
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
            for &p in pending.keys() {
                let leader = self.topic.leader(p).unwrap_or(-1);
                by_leader.entry(leader).or_default().push(p);
            }
            let mut retry = false;
            for (leader, partitions) in by_leader {
                let mut t = TopicProduceData::default();
                t.name = topic_name(&self.topic.name);
                t.partition_data = partitions
                    .iter()
                    .map(|p| {
                        let mut d = PartitionProduceData::default();
                        d.index = *p;
                        d.records = pending.get(p).map(|b| b.0.clone());
                        d
                    })
                    .collect();
                let mut req = ProduceRequest::default();
                req.acks = self.acks;
                req.timeout_ms = self.client.opts.timeout.as_millis() as i32;
                req.topic_data = vec![t];
                let conn = self.client.node(leader).await?;
                if self.acks == 0 {
                    conn.send_only(&req).await?;
                    for p in partitions {
                        if let Some((_, n)) = pending.remove(&p) {
                            self.stats.entry(p).or_default().records += n as u64;
                        }
                    }
                    continue;
                }
                let resp = conn.call(&req).await?;
                for tr in resp.responses {
                    for pr in tr.partition_responses {
                        let p = pr.index;
                        if pr.error_code == 0 {
                            if let Some((_, n)) = pending.remove(&p) {
                                self.acked(p, pr.base_offset, n);
                                bases.insert(p, pr.base_offset);
                            }
                        } else if is_retriable(pr.error_code) && attempt < ATTEMPTS {
                            retry = true;
                        } else {
                            return Err(CliError::refused(
                                format!("produce to {}/{p}", self.topic.name),
                                pr.error_code,
                                pr.error_message.as_deref(),
                            ));
                        }
                    }
                }
            }
            if retry {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                self.topic = self.client.topic(&self.topic.name, false).await?;
            }
        }
        Ok(bases)
    }

    fn acked(&mut self, partition: i32, base: i64, n: usize) {
        let s = self.stats.entry(partition).or_default();
        s.records += n as u64;
        let last = base + n as i64 - 1;
        s.first = Some(s.first.map_or(base, |f| f.min(base)));
        s.last = Some(s.last.map_or(last, |l| l.max(last)));
    }

    /// What was written, on stderr.
    fn summary(&self) {
        let total: u64 = self.stats.values().map(|s| s.records).sum();
        let plural = if total == 1 { "record" } else { "records" };
        if self.acks == 0 {
            eprintln!(
                "sent {total} {plural} to {} with acks=0: the broker does not confirm them, so their offsets are unknown",
                self.topic.name
            );
        } else {
            eprintln!("produced {total} {plural} to {}", self.topic.name);
        }
        if total == 0 {
            return;
        }
        let mut table = if self.acks == 0 {
            Table::new(&["PARTITION", "RECORDS"])
        } else {
            Table::new(&["PARTITION", "RECORDS", "FIRST-OFFSET", "LAST-OFFSET"])
        };
        for (p, s) in &self.stats {
            let mut row = vec![p.to_string(), s.records.to_string()];
            if self.acks != 0 {
                row.push(s.first.map_or("-".into(), |o| o.to_string()));
                row.push(s.last.map_or("-".into(), |o| o.to_string()));
            }
            table.row(row);
        }
        eprint!("{}", table.render());
    }
}

fn split(line: &[u8], separator: Option<&str>) -> (Option<Bytes>, Bytes) {
    if let Some(sep) = separator.map(str::as_bytes)
        && let Some(i) = line.windows(sep.len()).position(|w| w == sep)
    {
        return (
            Some(Bytes::copy_from_slice(&line[..i])),
            Bytes::copy_from_slice(&line[i + sep.len()..]),
        );
    }
    (None, Bytes::copy_from_slice(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from librdkafka's rd_murmur2 tests (Java-compatible).
        assert_eq!(murmur2(b"kafka") as u32, 0xd067_cf64);
        assert_eq!(murmur2(b"1234") as u32, 0x9fc9_7b14);
        assert_eq!(murmur2(b"234") as u32, 0xe7c0_09ca);
        assert_eq!(murmur2(b"34") as u32, 0x8739_30da);
        assert_eq!(murmur2(b"4") as u32, 0x5a4b_5ca1);
    }

    #[test]
    fn splits_at_the_first_separator() {
        let (k, v) = split(b"a:b:c", Some(":"));
        assert_eq!(k.as_deref(), Some(&b"a"[..]));
        assert_eq!(&v[..], b"b:c");
        let (k, v) = split(b"abc", Some("::"));
        assert_eq!(k, None);
        assert_eq!(&v[..], b"abc");
    }
}
