//! Consumer-group membership (the classic protocol a Kafka consumer speaks):
//! JoinGroup with MEMBER_ID_REQUIRED, range assignment when leader,
//! SyncGroup, heartbeats on a timer, OffsetCommit, LeaveGroup. Also the
//! offset reads and writes `ferry group` uses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::{
    ConsumerProtocolAssignment, TopicPartition,
};
use kafka_protocol::messages::consumer_protocol_subscription::ConsumerProtocolSubscription;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest,
    OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::client::{Client, Conn, Options, str_bytes, topic_name};
use super::error::{CliError, Result};

pub const PROTOCOL_TYPE: &str = "consumer";
pub const RANGE: &str = "range";
/// Consumer-protocol versions this client writes.
const SUBSCRIPTION_VERSION: i16 = 0;
const ASSIGNMENT_VERSION: i16 = 0;

pub fn group_id(g: &str) -> GroupId {
    GroupId(str_bytes(g))
}

/// (topic, partition) → offset.
pub type Offsets = BTreeMap<(String, i32), i64>;

pub use ferry_kafka::consumer_protocol::decode_assignment;

fn decode_subscription(bytes: &Bytes) -> Vec<String> {
    let mut buf = bytes.clone();
    if buf.len() < 2 {
        return Vec::new();
    }
    let version = buf.get_i16().clamp(0, 3);
    ConsumerProtocolSubscription::decode(&mut buf, version)
        .map(|s| s.topics.into_iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

fn encode_versioned(version: i16, body: &impl Encodable) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    body.encode(&mut buf, version)
        .map_err(|e| CliError::local(format!("cannot encode consumer protocol data: {e}")))?;
    Ok(buf.freeze())
}

/// Kafka's range assignor: per topic, members sorted by id take
/// consecutive runs of partitions, the first ones one more if uneven.
pub fn range_assign(
    subscriptions: &BTreeMap<String, Vec<String>>,
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = subscriptions
        .keys()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for (topic, &count) in partition_counts {
        let members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() || count <= 0 {
            continue;
        }
        let n = members.len() as i32;
        let (per, extra) = (count / n, count % n);
        for (i, m) in members.into_iter().enumerate() {
            let i = i as i32;
            let start = i * per + i.min(extra);
            let len = per + i32::from(i < extra);
            if len > 0 {
                out.entry(m.clone())
                    .or_default()
                    .insert(topic.clone(), (start..start + len).collect());
            }
        }
    }
    out
}

/// Committed offsets of `group` (`topics` None: every partition it has
/// committed). Partitions without a commit are left out.
pub async fn fetch_committed(
    conn: &mut Conn,
    group: &str,
    topics: Option<&[(String, Vec<i32>)]>,
) -> Result<Offsets> {
    let version = conn.version::<OffsetFetchRequest>()?;
    let mut req = OffsetFetchRequest::default();
    if version >= 8 {
        req.groups = vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(group_id(group))
                .with_topics(topics.map(|ts| {
                    ts.iter()
                        .map(|(t, ps)| {
                            OffsetFetchRequestTopics::default()
                                .with_name(topic_name(t))
                                .with_partition_indexes(ps.clone())
                        })
                        .collect()
                })),
        ];
    } else {
        req.group_id = group_id(group);
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(topic_name(t))
                        .with_partition_indexes(ps.clone())
                })
                .collect()
        });
    }
    let timeout = conn.timeout();
    let resp = conn.call_version(&req, version, timeout).await?;
    let mut out = Offsets::new();
    let what = || format!("read the committed offsets of group {group:?}");
    let check = |code: i16| -> Result<()> {
        if code != 0 {
            return Err(CliError::refused(what(), code, None));
        }
        Ok(())
    };
    if version >= 8 {
        for g in resp.groups {
            check(g.error_code)?;
            for t in g.topics {
                for p in t.partitions {
                    check(p.error_code)?;
                    if p.committed_offset >= 0 {
                        out.insert(
                            (t.name.0.to_string(), p.partition_index),
                            p.committed_offset,
                        );
                    }
                }
            }
        }
    } else {
        check(resp.error_code)?;
        for t in resp.topics {
            for p in t.partitions {
                check(p.error_code)?;
                if p.committed_offset >= 0 {
                    out.insert(
                        (t.name.0.to_string(), p.partition_index),
                        p.committed_offset,
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Commits offsets; returns each partition's error code.
pub async fn commit_offsets(
    conn: &mut Conn,
    group: &str,
    generation: i32,
    member_id: &str,
    offsets: &Offsets,
) -> Result<Vec<((String, i32), i16)>> {
    let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((t, p), o) in offsets {
        topics.entry(t).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*o)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(str_bytes(""))),
        );
    }
    let mut req = OffsetCommitRequest::default();
    req.group_id = group_id(group);
    req.generation_id_or_member_epoch = generation;
    req.member_id = str_bytes(member_id);
    req.retention_time_ms = -1;
    req.topics = topics
        .into_iter()
        .map(|(t, ps)| {
            OffsetCommitRequestTopic::default()
                .with_name(topic_name(t))
                .with_partitions(ps)
        })
        .collect();
    let resp = conn.call(&req).await?;
    Ok(resp
        .topics
        .into_iter()
        .flat_map(|t| {
            let name = t.name.0.to_string();
            t.partitions
                .into_iter()
                .map(move |p| ((name.clone(), p.partition_index), p.error_code))
        })
        .collect())
}

/// What the heartbeat task needs to know, shared with it.
#[derive(Debug, Default)]
struct Shared {
    /// (generation, member id) while the member is in a stable generation.
    current: Mutex<Option<(i32, String)>>,
    /// Set when the coordinator says a rebalance started (or forgot us).
    rejoin: AtomicBool,
    /// The coordinator's address, for reconnecting.
    coordinator: Mutex<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One member of a consumer group.
#[derive(Debug)]
pub struct Member {
    pub group: String,
    topics: Vec<String>,
    conn: Conn,
    pub member_id: String,
    pub generation: i32,
    pub assignment: BTreeMap<String, Vec<i32>>,
    shared: Arc<Shared>,
    heartbeat: tokio::task::JoinHandle<()>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
}

impl Member {
    pub async fn new(
        client: &mut Client,
        group: &str,
        topics: Vec<String>,
        session_timeout: Duration,
    ) -> Result<Member> {
        let coordinator = client.coordinator(group).await?;
        let conn = client.dedicated(coordinator).await?;
        let hb_conn = client.dedicated(coordinator).await?;
        let shared = Arc::new(Shared::default());
        *lock(&shared.coordinator) = conn.addr.clone();
        let interval = session_timeout / 3;
        let heartbeat = tokio::spawn(heartbeat_loop(
            hb_conn,
            client.opts.clone(),
            group.to_string(),
            shared.clone(),
            interval,
        ));
        Ok(Member {
            group: group.to_string(),
            topics,
            conn,
            member_id: String::new(),
            generation: -1,
            assignment: BTreeMap::new(),
            shared,
            heartbeat,
            session_timeout,
            rebalance_timeout: Duration::from_secs(30),
        })
    }

    pub fn needs_rejoin(&self) -> bool {
        self.shared.rejoin.load(Ordering::SeqCst)
    }

    async fn find_coordinator(&mut self, client: &mut Client) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let node = client.coordinator(&self.group).await?;
        self.conn = client.dedicated(node).await?;
        *lock(&self.shared.coordinator) = self.conn.addr.clone();
        Ok(())
    }

    /// Joins (or rejoins) the group and waits for this member's assignment.
    pub async fn join(&mut self, client: &mut Client) -> Result<()> {
        *lock(&self.shared.current) = None;
        self.shared.rejoin.store(false, Ordering::SeqCst);
        self.assignment.clear();
        let subscription = ConsumerProtocolSubscription::default()
            .with_topics(self.topics.iter().map(|t| str_bytes(t)).collect());
        let metadata = encode_versioned(SUBSCRIPTION_VERSION, &subscription)?;
        let what = format!("join group {:?}", self.group);
        for _ in 0..100 {
            let mut req = JoinGroupRequest::default();
            req.group_id = group_id(&self.group);
            req.session_timeout_ms = self.session_timeout.as_millis() as i32;
            req.rebalance_timeout_ms = self.rebalance_timeout.as_millis() as i32;
            req.member_id = str_bytes(&self.member_id);
            req.protocol_type = str_bytes(PROTOCOL_TYPE);
            req.protocols = vec![
                JoinGroupRequestProtocol::default()
                    .with_name(str_bytes(RANGE))
                    .with_metadata(metadata.clone()),
            ];
            // The coordinator holds JoinGroup until the rebalance completes.
            let wait = self.rebalance_timeout + self.session_timeout + client.opts.timeout;
            let resp = self.conn.call_with_timeout(&req, wait).await?;
            match resp.error_code {
                0 => {}
                // KIP-394: the first join gets an id to rejoin with.
                79 => {
                    self.member_id = resp.member_id.to_string();
                    continue;
                }
                25 => {
                    self.member_id.clear();
                    continue;
                }
                27 => continue,
                14..=16 => {
                    self.find_coordinator(client).await?;
                    continue;
                }
                code => return Err(CliError::refused(&what, code, None)),
            }
            self.member_id = resp.member_id.to_string();
            self.generation = resp.generation_id;
            let assignments = if resp.leader == resp.member_id {
                self.assign(client, &resp.members).await?
            } else {
                Vec::new()
            };
            let mut sync = SyncGroupRequest::default();
            sync.group_id = group_id(&self.group);
            sync.generation_id = self.generation;
            sync.member_id = str_bytes(&self.member_id);
            sync.protocol_type = Some(str_bytes(PROTOCOL_TYPE));
            sync.protocol_name = Some(
                resp.protocol_name
                    .clone()
                    .unwrap_or_else(|| str_bytes(RANGE)),
            );
            sync.assignments = assignments;
            let wait = self.rebalance_timeout + client.opts.timeout;
            let synced = self.conn.call_with_timeout(&sync, wait).await?;
            match synced.error_code {
                0 => {}
                22 | 27 => continue,
                25 => {
                    self.member_id.clear();
                    continue;
                }
                14..=16 => {
                    self.find_coordinator(client).await?;
                    continue;
                }
                code => return Err(CliError::refused(&what, code, None)),
            }
            self.assignment = decode_assignment(&synced.assignment);
            *lock(&self.shared.current) = Some((self.generation, self.member_id.clone()));
            return Ok(());
        }
        Err(CliError::refused_state(
            format!("could not join group {:?}: it kept rebalancing", self.group),
            "other members may be joining and leaving; try again",
        ))
    }

    /// The leader's job: range-assign every member's subscription.
    async fn assign(
        &self,
        client: &mut Client,
        members: &[JoinGroupResponseMember],
    ) -> Result<Vec<SyncGroupRequestAssignment>> {
        let subscriptions: BTreeMap<String, Vec<String>> = members
            .iter()
            .map(|m| (m.member_id.to_string(), decode_subscription(&m.metadata)))
            .collect();
        let topics: BTreeSet<String> = subscriptions.values().flatten().cloned().collect();
        let topics: Vec<String> = topics.into_iter().collect();
        let meta = client.metadata(Some(&topics), false).await?;
        let counts: BTreeMap<String, i32> = meta
            .topics
            .iter()
            .filter(|t| t.error_code == 0)
            .filter_map(|t| {
                t.name
                    .as_ref()
                    .map(|n| (n.0.to_string(), t.partitions.len() as i32))
            })
            .collect();
        let plan = range_assign(&subscriptions, &counts);
        let mut out = Vec::new();
        for (member, topics) in plan {
            let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        TopicPartition::default()
                            .with_topic(topic_name(&t))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
            out.push(
                SyncGroupRequestAssignment::default()
                    .with_member_id(str_bytes(&member))
                    .with_assignment(encode_versioned(ASSIGNMENT_VERSION, &assignment)?),
            );
        }
        Ok(out)
    }

    /// Commits offsets in this member's generation. A rebalance that
    /// started meanwhile is not an error: the member rejoins, and the
    /// records since the last commit may be delivered again.
    pub async fn commit(&mut self, offsets: &Offsets) -> Result<bool> {
        if offsets.is_empty() {
            return Ok(true);
        }
        let results = commit_offsets(
            &mut self.conn,
            &self.group,
            self.generation,
            &self.member_id,
            offsets,
        )
        .await?;
        for ((t, p), code) in results {
            match code {
                0 => {}
                22 | 25 | 27 => {
                    self.shared.rejoin.store(true, Ordering::SeqCst);
                    return Ok(false);
                }
                code => {
                    return Err(CliError::refused(
                        format!("commit the offset of {t}/{p} for group {:?}", self.group),
                        code,
                        None,
                    ));
                }
            }
        }
        Ok(true)
    }

    pub async fn committed(&mut self, topics: &[(String, Vec<i32>)]) -> Result<Offsets> {
        fetch_committed(&mut self.conn, &self.group, Some(topics)).await
    }

    /// Leaves the group so the others rebalance at once.
    pub async fn leave(mut self) -> Result<()> {
        self.heartbeat.abort();
        *lock(&self.shared.current) = None;
        if self.member_id.is_empty() {
            return Ok(());
        }
        let version = self.conn.version::<LeaveGroupRequest>()?;
        let mut req = LeaveGroupRequest::default();
        req.group_id = group_id(&self.group);
        if version >= 3 {
            req.members = vec![
                MemberIdentity::default()
                    .with_member_id(str_bytes(&self.member_id))
                    .with_reason(Some(str_bytes("the consumer is closing"))),
            ];
        } else {
            req.member_id = str_bytes(&self.member_id);
        }
        let timeout = Duration::from_secs(5);
        let resp = self.conn.call_version(&req, version, timeout).await?;
        let code = resp
            .members
            .first()
            .map_or(resp.error_code, |m| m.error_code)
            .max(resp.error_code);
        // An unknown member has already been removed (session expired).
        if code != 0 && code != 25 {
            return Err(CliError::refused(
                format!("leave group {:?}", self.group),
                code,
                None,
            ));
        }
        Ok(())
    }
}

async fn heartbeat_loop(
    mut conn: Conn,
    opts: Options,
    group: String,
    shared: Arc<Shared>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some((generation, member_id)) = lock(&shared.current).clone() else {
            continue;
        };
        let addr = lock(&shared.coordinator).clone();
        if conn.addr != addr {
            match Conn::connect(&addr, &opts).await {
                Ok(c) => conn = c,
                Err(_) => continue,
            }
        }
        let mut req = HeartbeatRequest::default();
        req.group_id = group_id(&group);
        req.generation_id = generation;
        req.member_id = str_bytes(&member_id);
        let code = match conn.call(&req).await {
            Ok(r) => r.error_code,
            // The next tick reconnects.
            Err(_) => continue,
        };
        let still_current = lock(&shared.current).as_ref() == Some(&(generation, member_id));
        if code != 0 && still_current {
            shared.rejoin.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignment_is_kafkas() {
        let subs: BTreeMap<String, Vec<String>> = [
            ("a".to_string(), vec!["t".to_string(), "u".to_string()]),
            ("b".to_string(), vec!["t".to_string()]),
        ]
        .into_iter()
        .collect();
        let counts: BTreeMap<String, i32> = [("t".to_string(), 3), ("u".to_string(), 2)]
            .into_iter()
            .collect();
        let plan = range_assign(&subs, &counts);
        assert_eq!(plan["a"]["t"], vec![0, 1]);
        assert_eq!(plan["a"]["u"], vec![0, 1]);
        assert_eq!(plan["b"]["t"], vec![2]);
        assert!(!plan["b"].contains_key("u"));
    }

    #[test]
    fn assignments_round_trip() {
        let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default()
                .with_topic(topic_name("t"))
                .with_partitions(vec![2, 0]),
        ]);
        let bytes = encode_versioned(0, &a).unwrap_or_default();
        assert_eq!(decode_assignment(&bytes)["t"], vec![0, 2]);
        assert!(decode_assignment(&Bytes::new()).is_empty());
    }
}
