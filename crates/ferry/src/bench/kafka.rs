//! `ferry bench kafka`: any Kafka-protocol broker (Ferry, Kafka, Redpanda)
//! with the CLI's client (`cli::client`) for the setup and pipelined
//! Produce and Fetch on the `driver` run loop. One topic with a partition
//! per queue; producers send RecordBatch v2 (uncompressed, built by
//! `ferry_log::records`) with acks=all or 1, one Produce request per flush
//! holding a batch for each partition with records waiting, and keep up to
//! `--window` records unacknowledged; each partition has one consumer that
//! fetches from the earliest offset. Partitions must all be led by the
//! bootstrap broker (a single-node cluster).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, Bytes, BytesMut};
use clap::Args;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest, FetchResponse,
    ProduceRequest, ProduceResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use serde_json::{Value, json};

use super::driver::{self, Consumer, Plan, Producer, Transport};
use super::wire::Wire;
use crate::cli::client::{self, Client, EARLIEST, LATEST, Options};
use crate::cli::error::{CliError, error_name};

/// Produce v9 and Fetch v12: the newest versions that name topics (v13
/// names them by id), spoken by Kafka 2.8 and later and by Ferry.
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
/// Response header v1 (flexible) for both.
const RESPONSE_HEADER_VERSION: i16 = 1;
const FRAME_BYTES_MAX: usize = 256 << 20;

#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// The broker, HOST:PORT (the flag and variable of the `ferry` CLI
    /// commands; one broker).
    #[arg(
        long,
        short = 'b',
        env = "FERRY_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    /// acks of every Produce request: all (-1) or 1.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    acks: i16,
    /// Bytes fetched per partition per Fetch request.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    fetch_bytes: i32,
    #[command(flatten)]
    plan: Plan,
}

fn parse_acks(s: &str) -> Result<i16, String> {
    match s {
        "all" | "-1" => Ok(-1),
        "1" => Ok(1),
        _ => Err(format!(
            "'{s}': acks is all or 1 (acks=0 has no answers to pace a window by)"
        )),
    }
}

pub async fn run(args: KafkaArgs) -> Result<bool> {
    if args.plan.fanout {
        bail!(
            "--fanout is not a Kafka workload here: every consumer group reads every record; run one ferry bench kafka --consume-only per group"
        );
    }
    let topic = format!("{}-{}", args.plan.queue_prefix, args.plan.queues);
    let transport = Kafka {
        addr: client::normalize_addr(&args.brokers),
        topic,
        partitions: args.plan.queues as usize,
        acks: args.acks,
        fetch_bytes: args.fetch_bytes,
        start: Mutex::new(Vec::new()),
    };
    driver::run(transport, &args.plan).await
}

struct Kafka {
    addr: String,
    /// PREFIX-N: the topic's name says its partition count, so a run with
    /// another count never reuses it.
    topic: String,
    partitions: usize,
    acks: i16,
    fetch_bytes: i32,
    /// Each partition's earliest offset when the run started: where its
    /// consumer begins.
    start: Mutex<Vec<i64>>,
}

fn cli(e: CliError) -> anyhow::Error {
    anyhow!("{e}")
}

impl Kafka {
    fn options(&self) -> Options {
        Options {
            brokers: vec![self.addr.clone()],
            timeout: Duration::from_secs(30),
            client_id: "ferry-bench".into(),
        }
    }
}

impl Transport for Kafka {
    type P = KafkaProducer;
    type C = KafkaConsumer;

    fn protocol(&self) -> &'static str {
        "kafka"
    }

    fn config(&self) -> Value {
        json!({
            "broker": self.addr, "topic": self.topic, "acks": self.acks,
            "fetch_bytes": self.fetch_bytes, "compression": "none",
        })
    }

    async fn prepare(&self, keep: bool) -> Result<u64> {
        let mut c = Client::connect(&self.options()).await.map_err(cli)?;
        let name = client::topic_name(&self.topic);
        if !keep {
            let mut req = DeleteTopicsRequest::default();
            req.timeout_ms = 30_000;
            req.topics = vec![DeleteTopicState::default().with_name(Some(name.clone()))];
            let conn = c.controller().await.map_err(cli)?;
            let resp = conn.call(&req).await.map_err(cli)?;
            for r in resp.responses {
                // 3: UNKNOWN_TOPIC_OR_PARTITION, there was none.
                if r.error_code != 0 && r.error_code != 3 {
                    bail!("deleting {}: {}", self.topic, error_name(r.error_code));
                }
            }
        }
        let mut req = CreateTopicsRequest::default();
        req.timeout_ms = 30_000;
        let mut t = CreatableTopic::default();
        t.name = name;
        t.num_partitions = self.partitions as i32;
        t.replication_factor = 1;
        req.topics = vec![t];
        // A broker that deletes in the background answers TOPIC_ALREADY_EXISTS
        // (36) for a while.
        for attempt in 0.. {
            let resp = c
                .controller()
                .await
                .map_err(cli)?
                .call(&req)
                .await
                .map_err(cli)?;
            match resp.topics.first().map_or(0, |t| t.error_code) {
                0 => break,
                36 if keep => break,
                36 if attempt < 100 => tokio::time::sleep(Duration::from_millis(100)).await,
                code => bail!("creating {}: {}", self.topic, error_name(code)),
            }
        }
        let info = c.topic(&self.topic, false).await.map_err(cli)?;
        if info.partitions.len() != self.partitions {
            bail!(
                "{} has {} partitions, not {}",
                self.topic,
                info.partitions.len(),
                self.partitions
            );
        }
        let boot = c.metadata(Some(&[]), false).await.map_err(cli)?;
        if boot.brokers.len() > 1 {
            bail!(
                "ferry bench kafka speaks to one broker; this cluster has {}",
                boot.brokers.len()
            );
        }
        let all: Vec<i32> = (0..self.partitions as i32).collect();
        let earliest = c
            .list_offsets(
                &info,
                &all.iter().map(|&p| (p, EARLIEST)).collect::<Vec<_>>(),
            )
            .await
            .map_err(cli)?;
        let latest = c
            .list_offsets(&info, &all.iter().map(|&p| (p, LATEST)).collect::<Vec<_>>())
            .await
            .map_err(cli)?;
        let start: Vec<i64> = all
            .iter()
            .map(|p| earliest.get(p).map_or(0, |o| o.0))
            .collect();
        let backlog = all
            .iter()
            .map(|p| {
                let end = latest.get(p).map_or(0, |o| o.0);
                (end - start[*p as usize]).max(0) as u64
            })
            .sum();
        *self.start.lock().unwrap_or_else(|e| e.into_inner()) = start;
        Ok(backlog)
    }

    async fn producer(&self, _id: usize) -> Result<KafkaProducer> {
        Ok(KafkaProducer {
            wire: Wire::connect(&self.addr).await?,
            topic: client::topic_name(&self.topic),
            acks: self.acks,
            waiting: vec![Vec::new(); self.partitions],
            inflight: VecDeque::new(),
            correlation_id: 0,
            client_id: StrBytes::from_static_str("ferry-bench"),
            frame: BytesMut::new(),
        })
    }

    async fn consumer(&self, queue: usize, id: u32) -> Result<KafkaConsumer> {
        if id > 0 {
            bail!("ferry bench kafka reads each partition with one consumer (--consumers 1)");
        }
        let offset = self
            .start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .copied()
            .unwrap_or(0);
        Ok(KafkaConsumer {
            wire: Wire::connect(&self.addr).await?,
            topic: client::topic_name(&self.topic),
            partition: queue as i32,
            offset,
            fetch_bytes: self.fetch_bytes,
            correlation_id: 0,
            client_id: StrBytes::from_static_str("ferry-bench"),
        })
    }
}

/// Takes one response (its body after the header) off the front of `input`.
fn take_response(input: &mut BytesMut, correlation_id: i32) -> Result<Option<Bytes>> {
    if input.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([input[0], input[1], input[2], input[3]]);
    if len < 0 || len as usize > FRAME_BYTES_MAX {
        bail!("a response of {len} bytes");
    }
    if input.len() < 4 + len as usize {
        return Ok(None);
    }
    input.advance(4);
    let mut body = input.split_to(len as usize).freeze();
    let header =
        ResponseHeader::decode(&mut body, RESPONSE_HEADER_VERSION).context("response header")?;
    if header.correlation_id != correlation_id {
        bail!(
            "the broker answered request {correlation_id} with response {}",
            header.correlation_id
        );
    }
    Ok(Some(body))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct KafkaProducer {
    wire: Wire,
    topic: TopicName,
    acks: i16,
    /// Record values waiting for the next flush, per partition.
    waiting: Vec<Vec<Vec<u8>>>,
    /// (correlation id, records) of the requests not answered yet, in order.
    inflight: VecDeque<(i32, u64)>,
    correlation_id: i32,
    client_id: StrBytes,
    frame: BytesMut,
}

impl Producer for KafkaProducer {
    fn send(&mut self, queue: usize, body: &[u8]) {
        self.waiting[queue].push(body.to_vec());
    }

    async fn flush(&mut self) -> Result<()> {
        let mut req = ProduceRequest::default();
        req.acks = self.acks;
        req.timeout_ms = 30_000;
        let mut topic = TopicProduceData::default();
        topic.name = self.topic.clone();
        let mut records = 0;
        let timestamp = now_ms();
        for (partition, values) in self.waiting.iter_mut().enumerate() {
            if values.is_empty() {
                continue;
            }
            let parts: Vec<ferry_log::records::RecordParts<'_>> = values
                .iter()
                .map(|v| ferry_log::records::RecordParts {
                    key: None,
                    value: Some(v),
                    headers: &[],
                })
                .collect();
            let batch = ferry_log::records::build_batch(timestamp, &parts);
            records += values.len() as u64;
            values.clear();
            topic.partition_data.push(
                PartitionProduceData::default()
                    .with_index(partition as i32)
                    .with_records(Some(Bytes::from(batch))),
            );
        }
        if records > 0 {
            req.topic_data = vec![topic];
            self.correlation_id = self.correlation_id.wrapping_add(1);
            self.frame.clear();
            client::encode_request(
                &mut self.frame,
                &req,
                PRODUCE_VERSION,
                self.correlation_id,
                &self.client_id,
            )
            .map_err(cli)?;
            self.wire.out.extend_from_slice(&self.frame);
            self.inflight.push_back((self.correlation_id, records));
        }
        self.wire.flush().await
    }

    async fn acks(&mut self) -> Result<u64> {
        loop {
            let mut acked = 0;
            while let Some(&(id, records)) = self.inflight.front() {
                let Some(mut body) = take_response(&mut self.wire.input, id)? else {
                    break;
                };
                self.inflight.pop_front();
                let resp = ProduceResponse::decode(&mut body, PRODUCE_VERSION)
                    .context("Produce response")?;
                for t in &resp.responses {
                    for p in &t.partition_responses {
                        if p.error_code != 0 {
                            bail!(
                                "produce to partition {}: {}{}",
                                p.index,
                                error_name(p.error_code),
                                p.error_message
                                    .as_ref()
                                    .map(|m| format!(" ({})", m.as_str()))
                                    .unwrap_or_default()
                            );
                        }
                    }
                }
                acked += records;
            }
            if acked > 0 {
                return Ok(acked);
            }
            self.wire.fill().await?;
        }
    }
}

struct KafkaConsumer {
    wire: Wire,
    topic: TopicName,
    partition: i32,
    /// The next offset to read.
    offset: i64,
    fetch_bytes: i32,
    correlation_id: i32,
    client_id: StrBytes,
}

impl Consumer for KafkaConsumer {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> Result<()> {
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(-1);
        req.max_wait_ms = 500;
        req.min_bytes = 1;
        req.max_bytes = self.fetch_bytes;
        req.session_epoch = -1;
        req.topics = vec![
            FetchTopic::default()
                .with_topic(self.topic.clone())
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(self.partition)
                        .with_current_leader_epoch(-1)
                        .with_fetch_offset(self.offset)
                        .with_last_fetched_epoch(-1)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(self.fetch_bytes),
                ]),
        ];
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let mut frame = BytesMut::new();
        client::encode_request(
            &mut frame,
            &req,
            FETCH_VERSION,
            self.correlation_id,
            &self.client_id,
        )
        .map_err(cli)?;
        self.wire.out.extend_from_slice(&frame);
        self.wire.flush().await?;
        let mut body = loop {
            if let Some(b) = take_response(&mut self.wire.input, self.correlation_id)? {
                break b;
            }
            self.wire.fill().await?;
        };
        let resp = FetchResponse::decode(&mut body, FETCH_VERSION).context("Fetch response")?;
        if resp.error_code != 0 {
            bail!("fetch: {}", error_name(resp.error_code));
        }
        for t in resp.responses {
            for p in t.partitions {
                if p.error_code != 0 {
                    bail!(
                        "fetch partition {}: {}",
                        p.partition_index,
                        error_name(p.error_code)
                    );
                }
                let Some(records) = p.records else { continue };
                for (_, last, batch) in ferry_log::records::split_batches(records)
                    .map_err(|e| anyhow!("fetched batches: {e}"))?
                {
                    let decoded = ferry_log::records::decode_batch(batch)
                        .map_err(|e| anyhow!("fetched batch: {e}"))?;
                    // A batch may begin before the offset asked for.
                    out.extend(
                        decoded
                            .into_iter()
                            .filter(|r| r.offset >= self.offset)
                            .filter_map(|r| r.value),
                    );
                    self.offset = self.offset.max(last + 1);
                }
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_values() {
        assert_eq!(parse_acks("all"), Ok(-1));
        assert_eq!(parse_acks("1"), Ok(1));
        assert!(parse_acks("0").is_err());
    }

    #[test]
    fn responses_are_framed_and_matched() {
        // Length 6: correlation id 7, an empty tag buffer, one body byte.
        let mut b = BytesMut::from(&[0, 0, 0, 6, 0, 0, 0, 7, 0, 42, 0, 0][..]);
        let body = take_response(&mut b, 7).unwrap().unwrap();
        assert_eq!(&body[..], &[42]);
        assert_eq!(&b[..], &[0, 0]);
        assert!(take_response(&mut b, 8).unwrap().is_none());
        let mut wrong = BytesMut::from(&[0, 0, 0, 5, 0, 0, 0, 9, 0][..]);
        assert!(take_response(&mut wrong, 7).is_err());
        let mut huge = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(take_response(&mut huge, 1).is_err());
    }
}
