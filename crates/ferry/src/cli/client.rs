//! A small async Kafka client on the `kafka-protocol` codecs: framing,
//! correlation ids, ApiVersions negotiation, timeouts, and routing to the
//! partition leader or group coordinator named by Metadata/FindCoordinator.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, FindCoordinatorRequest, ListOffsetsRequest,
    MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::{CliError, Result, is_retriable};

/// Largest response accepted (Kafka's fetch.max.bytes is 50 MiB by default).
const RESPONSE_BYTES_MAX: usize = 256 << 20;
/// ListOffsets timestamps with special meanings.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

/// Connection settings shared by every connection of one command.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bootstrap addresses, HOST:PORT.
    pub brokers: Vec<String>,
    pub timeout: Duration,
    pub client_id: String,
}

/// The highest version of each API the code here is written for. Versions
/// above these change a request's meaning (e.g. Fetch v13 and Produce v13
/// name topics by id), so a newer broker is spoken to at these versions.
fn cap(key: ApiKey) -> i16 {
    match key {
        ApiKey::Produce => 12,
        ApiKey::Fetch => 12,
        ApiKey::ListOffsets => 10,
        ApiKey::Metadata => 12,
        ApiKey::CreateTopics => 7,
        ApiKey::DeleteTopics => 6,
        ApiKey::DescribeConfigs => 4,
        ApiKey::IncrementalAlterConfigs => 1,
        ApiKey::FindCoordinator => 4,
        ApiKey::JoinGroup => 9,
        ApiKey::SyncGroup => 5,
        ApiKey::Heartbeat => 4,
        ApiKey::LeaveGroup => 5,
        ApiKey::OffsetCommit => 9,
        ApiKey::OffsetFetch => 9,
        ApiKey::ListGroups => 5,
        ApiKey::DescribeGroups => 5,
        ApiKey::DeleteGroups => 2,
        ApiKey::ApiVersions => 3,
        _ => 0,
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset by the broker".into(),
        std::io::ErrorKind::UnexpectedEof => "the broker closed the connection".into(),
        _ => e.to_string(),
    }
}

/// `host` alone means Kafka's default port.
pub fn normalize_addr(addr: &str) -> String {
    let addr = addr.trim();
    if addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        addr.to_string()
    } else {
        format!("{addr}:9092")
    }
}

async fn open(addr: &str, timeout: Duration) -> Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(CliError::unreachable(format!(
            "cannot reach broker at {addr}: no answer within {} ms",
            timeout.as_millis()
        ))),
        Ok(Err(e)) => Err(CliError::unreachable(format!(
            "cannot reach broker at {addr}: {}",
            io_reason(&e)
        ))),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// One connection to one broker, speaking one request at a time.
#[derive(Debug)]
pub struct Conn {
    pub addr: String,
    /// `None` after an I/O error or a cancelled call: the next call reconnects,
    /// so a late response can never be read as the answer to another request.
    stream: Option<TcpStream>,
    correlation_id: i32,
    /// API key → (min, max) version the broker advertised.
    versions: HashMap<i16, (i16, i16)>,
    timeout: Duration,
    client_id: StrBytes,
}

impl Conn {
    /// Connects and negotiates versions with ApiVersions.
    pub async fn connect(addr: &str, opts: &Options) -> Result<Conn> {
        let stream = open(addr, opts.timeout).await?;
        let mut conn = Conn {
            addr: addr.to_string(),
            stream: Some(stream),
            correlation_id: 0,
            versions: HashMap::new(),
            timeout: opts.timeout,
            client_id: StrBytes::from_string(opts.client_id.clone()),
        };
        conn.negotiate().await?;
        Ok(conn)
    }

    async fn negotiate(&mut self) -> Result<()> {
        let mut req = ApiVersionsRequest::default();
        req.client_software_name = StrBytes::from_static_str("ferry-cli");
        req.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let version = cap(ApiKey::ApiVersions);
        let body = self.raw_call(&req, version, self.timeout).await?;
        // A broker that does not know v3 answers in v0 with UNSUPPORTED_VERSION
        // and its key list (KIP-511); both start with the error code.
        let response = match ApiVersionsResponse::decode(&mut body.clone(), version) {
            Ok(r) if r.error_code == 0 => r,
            _ => ApiVersionsResponse::decode(&mut body.clone(), 0).map_err(|e| {
                CliError::local(format!(
                    "{} answered ApiVersions with something this CLI cannot read ({e}); is it a Kafka broker?",
                    self.addr
                ))
            })?,
        };
        if response.error_code != 0 && response.api_keys.is_empty() {
            return Err(CliError::refused(
                format!("negotiate API versions with {}", self.addr),
                response.error_code,
                None,
            ));
        }
        self.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The version to send `R` at: the highest both sides support.
    pub fn version<R: Request>(&self) -> Result<i16> {
        let key = ApiKey::try_from(R::KEY)
            .map_err(|_| CliError::local(format!("unknown API key {}", R::KEY)))?;
        let ours = (R::VERSIONS.min, R::VERSIONS.max.min(cap(key)));
        let Some(&(min, max)) = self.versions.get(&R::KEY) else {
            return Err(CliError::refused_state(
                format!("the broker at {} does not implement {key:?}", self.addr),
                "upgrade the broker, or use a command that does not need this API",
            ));
        };
        let v = ours.1.min(max);
        if v < ours.0.max(min) {
            return Err(CliError::refused_state(
                format!(
                    "the broker at {} speaks {key:?} v{min}-{max}, this CLI v{}-{}",
                    self.addr, ours.0, ours.1
                ),
                "use a CLI and broker with a version in common",
            ));
        }
        Ok(v)
    }

    pub async fn call<R: Request>(&mut self, req: &R) -> Result<R::Response> {
        let timeout = self.timeout;
        self.call_with_timeout(req, timeout).await
    }

    /// A call that may legitimately take longer than the request timeout
    /// (JoinGroup waits for the rebalance).
    pub async fn call_with_timeout<R: Request>(
        &mut self,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Response> {
        let version = self.version::<R>()?;
        self.call_version(req, version, timeout).await
    }

    pub async fn call_version<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response> {
        let mut body = self.raw_call(req, version, timeout).await?;
        R::Response::decode(&mut body, version).map_err(|e| {
            CliError::local(format!(
                "cannot read the {:?} v{version} response from {}: {e}",
                ApiKey::try_from(R::KEY).ok(),
                self.addr
            ))
        })
    }

    /// Sends a request that gets no response (Produce with acks=0).
    pub async fn send_only<R: Request>(&mut self, req: &R) -> Result<()> {
        let version = self.version::<R>()?;
        let (frame, _) = self.encode(req, version)?;
        let mut stream = self.take_stream().await?;
        let addr = self.addr.clone();
        tokio::time::timeout(self.timeout, stream.write_all(&frame))
            .await
            .map_err(|_| timed_out(&addr, self.timeout))?
            .map_err(|e| lost(&addr, &e))?;
        self.stream = Some(stream);
        Ok(())
    }

    async fn take_stream(&mut self) -> Result<TcpStream> {
        match self.stream.take() {
            Some(s) => Ok(s),
            None => open(&self.addr, self.timeout).await,
        }
    }

    fn encode<R: Request>(&mut self, req: &R, version: i16) -> Result<(BytesMut, ApiKey)> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let mut frame = BytesMut::with_capacity(256);
        let api_key = encode_request(
            &mut frame,
            req,
            version,
            self.correlation_id,
            &self.client_id,
        )?;
        Ok((frame, api_key))
    }

    /// Sends one request and returns the response body after its header.
    async fn raw_call<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<Bytes> {
        let (frame, api_key) = self.encode(req, version)?;
        let correlation_id = self.correlation_id;
        let mut stream = self.take_stream().await?;
        let addr = self.addr.clone();
        let exchange = async {
            stream.write_all(&frame).await?;
            let mut size = [0u8; 4];
            stream.read_exact(&mut size).await?;
            let size = i32::from_be_bytes(size);
            if size < 0 || size as usize > RESPONSE_BYTES_MAX {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("response of {size} bytes"),
                ));
            }
            let mut body = vec![0u8; size as usize];
            stream.read_exact(&mut body).await?;
            Ok(Bytes::from(body))
        };
        let mut body = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(timed_out(&addr, timeout)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(CliError::unreachable(format!(
                    "the broker at {addr} closed the connection instead of answering {api_key:?} v{version}"
                )));
            }
            Ok(Err(e)) => return Err(lost(&addr, &e)),
            Ok(Ok(body)) => body,
        };
        let header_version = if api_key == ApiKey::ApiVersions {
            0
        } else {
            <R::Response as HeaderVersion>::header_version(version)
        };
        let header = ResponseHeader::decode(&mut body, header_version).map_err(|e| {
            CliError::local(format!("cannot read a response header from {addr}: {e}"))
        })?;
        if header.correlation_id != correlation_id {
            return Err(CliError::local(format!(
                "{addr} answered request {correlation_id} with response {}",
                header.correlation_id
            )));
        }
        self.stream = Some(stream);
        Ok(body)
    }
}

/// Appends one request, framed (length, header, body), to `out`.
pub fn encode_request<R: Request>(
    out: &mut BytesMut,
    req: &R,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
) -> Result<ApiKey> {
    let api_key = ApiKey::try_from(R::KEY)
        .map_err(|_| CliError::local(format!("unknown API key {}", R::KEY)))?;
    let mut header = RequestHeader::default();
    header.request_api_key = R::KEY;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(client_id.clone());
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    header
        .encode(out, api_key.request_header_version(version))
        .and_then(|()| req.encode(out, version))
        .map_err(|e| CliError::local(format!("cannot encode {api_key:?} v{version}: {e}")))?;
    let len = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(api_key)
}

fn timed_out(addr: &str, timeout: Duration) -> CliError {
    CliError::unreachable(format!(
        "the broker at {addr} did not answer within {} ms",
        timeout.as_millis()
    ))
    .with_hint("the broker may be overloaded or stuck; raise --timeout-ms, or check its log")
}

fn lost(addr: &str, e: &std::io::Error) -> CliError {
    CliError::unreachable(format!(
        "lost the connection to the broker at {addr}: {}",
        io_reason(e)
    ))
}

/// One topic's metadata.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub name: String,
    pub id: String,
    pub internal: bool,
    pub partitions: Vec<PartitionInfo>,
}

#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub partition: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl TopicInfo {
    pub fn leader(&self, partition: i32) -> Option<i32> {
        self.partitions
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| p.leader)
    }
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A client of a cluster: a bootstrap connection plus one per broker it
/// needed to talk to.
#[derive(Debug)]
pub struct Client {
    pub opts: Options,
    boot: Conn,
    nodes: HashMap<i32, String>,
    conns: HashMap<i32, Conn>,
    controller: Option<i32>,
}

impl Client {
    /// Connects to the first bootstrap broker that answers.
    pub async fn connect(opts: &Options) -> Result<Client> {
        let mut last = None;
        for addr in &opts.brokers {
            match Conn::connect(addr, opts).await {
                Ok(boot) => {
                    return Ok(Client {
                        opts: opts.clone(),
                        boot,
                        nodes: HashMap::new(),
                        conns: HashMap::new(),
                        controller: None,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| CliError::local("--brokers names no broker")))
    }

    /// The bootstrap connection: for requests any broker answers.
    pub fn any(&mut self) -> &mut Conn {
        &mut self.boot
    }

    /// The connection to broker `node`, opened on first use.
    pub async fn node(&mut self, node: i32) -> Result<&mut Conn> {
        if !self.conns.contains_key(&node) {
            let conn = self.dedicated(node).await?;
            self.conns.insert(node, conn);
        }
        self.conns
            .get_mut(&node)
            .ok_or_else(|| CliError::local("connection vanished"))
    }

    /// A new connection to broker `node` that the caller owns (for work
    /// that runs beside other requests: heartbeats, fetches).
    pub async fn dedicated(&mut self, node: i32) -> Result<Conn> {
        if !self.nodes.contains_key(&node) {
            self.metadata(Some(&[]), false).await?;
        }
        let addr = self.nodes.get(&node).cloned().ok_or_else(|| {
            CliError::local(format!(
                "broker {node} is not in the cluster metadata of {}",
                self.boot.addr
            ))
        })?;
        Conn::connect(&addr, &self.opts).await
    }

    /// The controller (where topic administration goes), or any broker.
    pub async fn controller(&mut self) -> Result<&mut Conn> {
        if self.controller.is_none() {
            self.metadata(Some(&[]), false).await?;
        }
        match self.controller {
            Some(id) if id >= 0 && self.nodes.contains_key(&id) => self.node(id).await,
            _ => Ok(&mut self.boot),
        }
    }

    /// Metadata for `topics` (`None`: all of them); remembers the brokers.
    pub async fn metadata(
        &mut self,
        topics: Option<&[String]>,
        auto_create: bool,
    ) -> Result<MetadataResponse> {
        let mut req = MetadataRequest::default();
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                .collect()
        });
        req.allow_auto_topic_creation = auto_create;
        let resp = self.boot.call(&req).await?;
        for b in &resp.brokers {
            self.nodes
                .insert(b.node_id.0, format!("{}:{}", b.host.as_str(), b.port));
        }
        self.controller = Some(resp.controller_id.0);
        Ok(resp)
    }

    /// One topic's partitions and leaders. A missing topic is a refusal
    /// that says how to create it.
    pub async fn topic(&mut self, name: &str, auto_create: bool) -> Result<TopicInfo> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self
                .metadata(Some(&[name.to_string()]), auto_create)
                .await?;
            let topic = resp
                .topics
                .into_iter()
                .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name));
            let Some(t) = topic else {
                return Err(CliError::refused(
                    format!("find topic {name:?}"),
                    3,
                    Some("the broker's metadata does not list it"),
                ));
            };
            let pending = t.error_code == 5
                || t.partitions
                    .iter()
                    .any(|p| p.error_code == 5 || p.leader_id.0 < 0);
            if (pending || (t.error_code != 0 && is_retriable(t.error_code) && t.error_code != 3))
                && attempt < 20
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if t.error_code != 0 {
                let mut err = CliError::refused(format!("use topic {name:?}"), t.error_code, None);
                if t.error_code == 3 {
                    err = err.with_hint(format!(
                        "create it with `ferry topic create {name}` (`ferry topic list` shows the topics that exist)"
                    ));
                }
                return Err(err);
            }
            let mut partitions: Vec<PartitionInfo> = t
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            return Ok(TopicInfo {
                name: name.to_string(),
                id: t.topic_id.to_string(),
                internal: t.is_internal,
                partitions,
            });
        }
    }

    /// ListOffsets for some partitions of a topic, each with its own
    /// timestamp (LATEST, EARLIEST or epoch ms), sent to each leader.
    /// Returns partition → (offset, timestamp); offset -1 means no record
    /// at or after that time.
    pub async fn list_offsets(
        &mut self,
        topic: &TopicInfo,
        wanted: &[(i32, i64)],
    ) -> Result<BTreeMap<i32, (i64, i64)>> {
        let mut by_leader: BTreeMap<i32, Vec<(i32, i64)>> = BTreeMap::new();
        for &(p, ts) in wanted {
            let leader = topic.leader(p).ok_or_else(|| {
                CliError::refused(
                    format!("list offsets of {}/{p}", topic.name),
                    3,
                    Some(&format!(
                        "topic {:?} has {} partitions",
                        topic.name,
                        topic.partitions.len()
                    )),
                )
            })?;
            by_leader.entry(leader).or_default().push((p, ts));
        }
        let mut out = BTreeMap::new();
        for (leader, parts) in by_leader {
            let mut t = ListOffsetsTopic::default();
            t.name = topic_name(&topic.name);
            t.partitions = parts
                .iter()
                .map(|&(p, ts)| {
                    ListOffsetsPartition::default()
                        .with_partition_index(p)
                        .with_current_leader_epoch(-1)
                        .with_timestamp(ts)
                })
                .collect();
            let mut req = ListOffsetsRequest::default();
            req.replica_id = BrokerId(-1);
            req.topics = vec![t];
            req.timeout_ms = self.opts.timeout.as_millis() as i32;
            let resp = self.node(leader).await?.call(&req).await?;
            for t in resp.topics {
                for p in t.partitions {
                    if p.error_code != 0 {
                        return Err(CliError::refused(
                            format!("list offsets of {}/{}", topic.name, p.partition_index),
                            p.error_code,
                            None,
                        ));
                    }
                    out.insert(p.partition_index, (p.offset, p.timestamp));
                }
            }
        }
        Ok(out)
    }

    /// The broker coordinating `group`.
    pub async fn coordinator(&mut self, group: &str) -> Result<i32> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = FindCoordinatorRequest::default();
            req.key_type = 0;
            let version = self.boot.version::<FindCoordinatorRequest>()?;
            if version >= 4 {
                req.coordinator_keys = vec![str_bytes(group)];
            } else {
                req.key = str_bytes(group);
            }
            let timeout = self.opts.timeout;
            let resp = self.boot.call_version(&req, version, timeout).await?;
            let (code, message, node, host, port) = match resp.coordinators.into_iter().next() {
                Some(c) if version >= 4 => {
                    (c.error_code, c.error_message, c.node_id, c.host, c.port)
                }
                _ => (
                    resp.error_code,
                    resp.error_message,
                    resp.node_id,
                    resp.host,
                    resp.port,
                ),
            };
            if code == 0 {
                self.nodes
                    .insert(node.0, format!("{}:{}", host.as_str(), port));
                return Ok(node.0);
            }
            if is_retriable(code) && attempt < 25 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            return Err(CliError::refused(
                format!("find the coordinator of group {group:?}"),
                code,
                message.as_deref(),
            ));
        }
    }
}
