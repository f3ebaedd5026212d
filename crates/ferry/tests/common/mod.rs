//! Test harness: runs the real `ferry` binary on free loopback ports and talks
//! to it over real sockets with a minimal blocking Kafka client built on the
//! `kafka-protocol` crate's client codecs.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `ferry serve`. Killed (SIGKILL) on drop if still running.
pub struct Server {
    child: Child,
    pub kafka: SocketAddr,
    pub data_dir: PathBuf,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server on `data_dir` with the Kafka listener on `listen`
    /// (`127.0.0.1:0` for a free port), plus extra flags.
    pub fn start_at(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
        Self::try_start_at(data_dir, listen, extra)
            .unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_at(data_dir, "127.0.0.1:0", extra)
    }

    /// Like `start_at`, but returns the server's output if it exits or never
    /// reports its listener.
    pub fn try_start_at(data_dir: &Path, listen: &str, extra: &[&str]) -> Result<Server, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--kafka-listen")
            .arg(listen)
            .args(extra)
            .env("FERRY_LOG", "info")
            // Free ports for AMQP, SQS and HTTP too; a test's own flags win.
            .env("FERRY_AMQP_LISTEN", "127.0.0.1:0")
            .env("FERRY_SQS_LISTEN", "127.0.0.1:0")
            .env("FERRY_HTTP_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("kafka listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                return Ok(Server {
                    child,
                    kafka: strip_ansi(&addr).parse().expect("listen address"),
                    data_dir: data_dir.to_path_buf(),
                    log,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!("exited with {status}:\n{}", log.lock().unwrap()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "no listener after {START_TIMEOUT:?}:\n{}",
                    log.lock().unwrap()
                ));
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY-free: libc::kill is a plain syscall wrapper.
        unsafe_kill(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to 15 s) for `needle` in the log: another thread reads the
    /// server's stderr, so a line can lag behind what the test just saw.
    pub fn wait_for_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log_text().contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no '{needle}' in the log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.kafka)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
    }
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, sig: i32) {
    // SAFETY: sending a signal to our own child process by pid.
    unsafe {
        libc::kill(pid, sig);
    }
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A blocking Kafka client speaking one request at a time.
pub struct Client {
    pub stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::try_connect(addr).expect("connect")
    }

    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            correlation_id: 0,
        })
    }

    /// Sends a request and decodes its response.
    pub fn call<R: Request>(&mut self, req: &R, version: i16) -> R::Response {
        self.try_call(req, version).expect("kafka call")
    }

    pub fn try_call<R: Request>(&mut self, req: &R, version: i16) -> std::io::Result<R::Response> {
        self.correlation_id += 1;
        let api_key = ApiKey::try_from(R::KEY).expect("api key");
        self.stream
            .write_all(&request_frame(req, version, self.correlation_id))?;
        let mut frame = self.read_frame()?;
        let response_header_version = if api_key == ApiKey::ApiVersions {
            0
        } else {
            <R::Response as HeaderVersion>::header_version(version)
        };
        let rh = ResponseHeader::decode(&mut frame, response_header_version).map_err(invalid)?;
        assert_eq!(rh.correlation_id, self.correlation_id, "correlation id");
        R::Response::decode(&mut frame, version).map_err(invalid)
    }

    pub fn send_frame(&mut self, body: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend_from_slice(&(body.len() as i32).to_be_bytes());
        out.extend_from_slice(body);
        self.stream.write_all(&out)
    }

    pub fn read_frame(&mut self) -> std::io::Result<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let mut buf = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// True if the server closed the connection (reads EOF or reset) within 5 s.
    pub fn is_closed_by_server(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// A whole request frame, size prefix included, as `Client` sends it.
pub fn request_frame<R: Request>(req: &R, version: i16, correlation_id: i32) -> Vec<u8> {
    let api_key = ApiKey::try_from(R::KEY).expect("api key");
    let mut header = RequestHeader::default();
    header.request_api_key = R::KEY;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("ferry-tests"));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, api_key.request_header_version(version))
        .expect("encode header");
    req.encode(&mut body, version).expect("encode request");
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// Milliseconds since the epoch. Tests use current timestamps: records from
/// years ago are past the default 7-day retention and would be deleted.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A record for `encode_batch`.
pub fn record(key: Option<&str>, value: &str, timestamp: i64) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Default::default(),
    }
}

/// Encodes records as one RecordBatch v2, as a producer would.
pub fn encode_batch(records: &[Record], compression: Compression) -> Bytes {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            offset: i as i64,
            ..r.clone()
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode batch");
    buf.freeze()
}

/// Decodes fetched batches into records, checking every batch's CRC-32C.
pub fn decode_batches(mut bytes: Bytes) -> Vec<Record> {
    let mut out = Vec::new();
    while bytes.len() >= 61 {
        let len = i32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize + 12;
        if len > bytes.len() {
            break; // a partial trailing batch, as Kafka may send
        }
        let batch = bytes.split_to(len);
        let crc = u32::from_be_bytes(batch[17..21].try_into().unwrap());
        assert_eq!(
            crc32c::crc32c(&batch[21..]),
            crc,
            "fetched batch has a bad CRC"
        );
        let mut b = batch.clone();
        out.extend(
            RecordBatchDecoder::decode(&mut b)
                .expect("decode batch")
                .records,
        );
    }
    out
}

pub mod api {
    //! Short constructors for the requests the tests send.
    use super::*;
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::*;

    pub fn topic_name(name: &str) -> TopicName {
        TopicName(StrBytes::from_string(name.to_string()))
    }

    pub fn create_topic(
        client: &mut Client,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> i16 {
        let mut t = CreatableTopic::default();
        t.name = topic_name(name);
        t.num_partitions = partitions;
        t.replication_factor = 1;
        t.configs = configs
            .iter()
            .map(|(k, v)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string(k.to_string()))
                    .with_value(Some(StrBytes::from_string(v.to_string())))
            })
            .collect();
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 5000;
        client.call(&req, 7).topics[0].error_code
    }

    pub fn produce_request(
        topic: &str,
        partition: i32,
        records: Bytes,
        acks: i16,
    ) -> ProduceRequest {
        let mut p = PartitionProduceData::default();
        p.index = partition;
        p.records = Some(records);
        let mut t = TopicProduceData::default();
        t.name = topic_name(topic);
        t.partition_data = vec![p];
        let mut req = ProduceRequest::default();
        req.acks = acks;
        req.timeout_ms = 30_000;
        req.topic_data = vec![t];
        req
    }

    /// Produces one batch with acks=all; returns (error code, base offset).
    pub fn produce(client: &mut Client, topic: &str, partition: i32, records: Bytes) -> (i16, i64) {
        let resp = client.call(&produce_request(topic, partition, records, -1), 9);
        let p = &resp.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }

    pub fn try_produce(
        client: &mut Client,
        topic: &str,
        partition: i32,
        records: Bytes,
    ) -> std::io::Result<(i16, i64)> {
        let resp = client.try_call(&produce_request(topic, partition, records, -1), 9)?;
        let p = &resp.responses[0].partition_responses[0];
        Ok((p.error_code, p.base_offset))
    }

    /// One Fetch of one partition; returns (error code, high watermark, records bytes).
    pub fn fetch(
        client: &mut Client,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> (i16, i64, Bytes) {
        let req = fetch_request(topic, partition, offset, max_bytes, max_wait_ms);
        let resp = client.call(&req, 12);
        let d = &resp.responses[0].partitions[0];
        (
            d.error_code,
            d.high_watermark,
            d.records.clone().unwrap_or_default(),
        )
    }

    /// A Fetch (v12) of one partition, from `offset`, up to `max_bytes`.
    pub fn fetch_request(
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> FetchRequest {
        let mut p = FetchPartition::default();
        p.partition = partition;
        p.fetch_offset = offset;
        p.partition_max_bytes = max_bytes;
        let mut t = FetchTopic::default();
        t.topic = topic_name(topic);
        t.partitions = vec![p];
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(-1);
        req.max_wait_ms = max_wait_ms;
        req.min_bytes = 1;
        req.max_bytes = max_bytes;
        req.session_epoch = -1;
        req.topics = vec![t];
        req
    }

    /// Reads a whole partition from `from` to its high watermark.
    pub fn read_all(client: &mut Client, topic: &str, partition: i32, from: i64) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        let mut offset = from;
        loop {
            let (err, hw, bytes) = fetch(client, topic, partition, offset, 1 << 20, 0);
            assert_eq!(err, 0, "fetch error at offset {offset}");
            let records = decode_batches(bytes);
            out.extend(records.into_iter().filter(|r| r.offset >= offset));
            match out.last() {
                Some(last) if last.offset + 1 < hw => offset = last.offset + 1,
                _ => return out,
            }
        }
    }

    pub fn metadata(client: &mut Client, topics: Option<&[&str]>) -> MetadataResponse {
        let mut req = MetadataRequest::default();
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                .collect()
        });
        req.allow_auto_topic_creation = false;
        client.call(&req, 12)
    }
}

pub mod idempotent {
    //! Idempotent producers: InitProducerId and batches that carry a producer
    //! id, epoch and sequence numbers.
    use super::*;
    use kafka_protocol::messages::{InitProducerIdRequest, ProducerId, TransactionalId};

    /// InitProducerId at `version`, optionally transactional and (v3+) with
    /// the producer's current id and epoch; returns (error code, id, epoch).
    pub fn init_producer_id_with(
        client: &mut Client,
        version: i16,
        transactional_id: Option<&str>,
        current: Option<(i64, i16)>,
    ) -> (i16, i64, i16) {
        let mut req = InitProducerIdRequest::default()
            .with_transactional_id(
                transactional_id.map(|t| TransactionalId(StrBytes::from_string(t.to_string()))),
            )
            .with_transaction_timeout_ms(60_000);
        if let Some((id, epoch)) = current {
            req = req
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch);
        }
        let resp = client.call(&req, version);
        (resp.error_code, resp.producer_id.0, resp.producer_epoch)
    }

    /// A new idempotent producer id (InitProducerId v4, as Kafka 3.7
    /// clients send it); panics on an error.
    pub fn init_producer_id(client: &mut Client) -> (i64, i16) {
        let (err, id, epoch) = init_producer_id_with(client, 4, None, None);
        assert_eq!(err, 0, "InitProducerId failed");
        (id, epoch)
    }

    /// One batch of `values` from producer `id` at `epoch`, its first record
    /// numbered `sequence`, as an idempotent producer frames it.
    pub fn batch(id: i64, epoch: i16, sequence: i32, values: &[String]) -> Bytes {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                producer_id: id,
                producer_epoch: epoch,
                sequence: sequence.wrapping_add(i as i32),
                ..record(None, v, now_ms())
            })
            .collect();
        encode_batch(&records, Compression::None)
    }
}

pub mod amqp;
pub mod sqs;
pub mod tmpfs;

impl Server {
    /// The AMQP listener's address, from the `amqp listening on` log line.
    pub fn amqp(&self) -> SocketAddr {
        self.listener("amqp")
    }

    /// The SQS listener's address, from the `sqs listening on` log line.
    pub fn sqs(&self) -> SocketAddr {
        self.listener("sqs")
    }

    /// The admin HTTP listener's address, from the `http listening on` log line.
    pub fn http(&self) -> SocketAddr {
        self.listener("http")
    }

    /// A listener's address, from its `<protocol> listening on` log line.
    fn listener(&self, protocol: &str) -> SocketAddr {
        let needle = format!("{protocol} listening on ");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log_text();
            if let Some(addr) = log.lines().find_map(|l| l.split(&needle).nth(1)) {
                return strip_ansi(addr.trim())
                    .parse()
                    .unwrap_or_else(|e| panic!("{protocol} listen address: {e}"));
            }
            assert!(
                Instant::now() < deadline,
                "no '{needle}' line in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
