//! The consumer-group coordinator: membership (Kafka's classic JoinGroup /
//! SyncGroup protocol, with static members and KIP-394 member ids) and
//! durable committed offsets.
//!
//! Protocol metadata and assignments are opaque bytes here; the front end
//! encodes and decodes them. Each group has its own lock; clients waiting for
//! a rebalance hold a oneshot receiver, and one timer task (see
//! [`GroupCoordinator::run_timers`]) expires sessions and ends rebalances
//! that waited long enough.

mod offsets;
pub mod reset;
mod state;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_log::Clock;
use thiserror::Error;

pub use offsets::{Committed, TopicPartition};
pub use state::GroupState;

use offsets::OffsetStore;
use state::{Group, JoinOutcome, SyncOutcome};

use crate::CoreError;

/// How often timers run: session expiry is detected at most this late.
const TIMER_TICK_MS: u64 = 100;
/// How often offset retention and journal compaction run.
const RETENTION_TICK_MS: u64 = 60_000;
/// Kafka's `offset.metadata.max.bytes`.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Longest group id accepted; ids are map keys, not paths, but still bounded.
const GROUP_ID_BYTES_MAX: usize = 1024;

/// Coordinator settings, named after Kafka's broker configs.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group.initial.rebalance.delay.ms`
    pub initial_rebalance_delay: Duration,
    /// `group.min.session.timeout.ms`
    pub session_timeout_min: Duration,
    /// `group.max.session.timeout.ms`
    pub session_timeout_max: Duration,
    /// `offsets.retention.minutes`, as a duration.
    pub offsets_retention: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay: Duration::from_millis(3000),
            session_timeout_min: Duration::from_millis(6000),
            session_timeout_max: Duration::from_millis(1_800_000),
            offsets_retention: Duration::from_secs(7 * 24 * 60 * 60),
        }
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum GroupError {
    #[error("the group coordinator is not available")]
    CoordinatorNotAvailable,
    #[error("the member id is not known to the group")]
    UnknownMemberId,
    #[error("the generation id is not the group's current one")]
    IllegalGeneration,
    #[error("the group is rebalancing; rejoin")]
    RebalanceInProgress,
    #[error("another member now holds this group.instance.id")]
    FencedInstanceId,
    #[error("rejoin with the member id {0}")]
    MemberIdRequired(String),
    #[error("the protocol type or protocols do not match the group's")]
    InconsistentGroupProtocol,
    #[error("the group id is empty or too long")]
    InvalidGroupId,
    #[error("session timeout {requested_ms} ms is outside [{min_ms}, {max_ms}] ms")]
    InvalidSessionTimeout {
        requested_ms: u128,
        min_ms: u128,
        max_ms: u128,
    },
    #[error("the group does not exist")]
    GroupIdNotFound,
    #[error("the group still has members")]
    NonEmptyGroup,
    #[error("the group's members are subscribed to this topic")]
    GroupSubscribedToTopic,
    #[error("offset metadata is longer than {OFFSET_METADATA_BYTES_MAX} bytes")]
    OffsetMetadataTooLarge,
    #[error("could not store offsets: {0}")]
    Storage(String),
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// (name, metadata) in order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// The client understands MEMBER_ID_REQUIRED (JoinGroup v4+).
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinResponse {
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader_id: String,
    pub member_id: String,
    /// Everyone's metadata for the chosen protocol, for the leader only.
    pub members: Vec<JoinedMember>,
}

#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub generation_id: i32,
    /// Checked against the group's when given (SyncGroup v5+).
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// (member id, assignment); only the leader sends these.
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncResponse {
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Metadata for the group's chosen protocol.
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol_name: String,
    pub generation_id: i32,
    pub members: Vec<MemberDescription>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub struct GroupCoordinator {
    config: GroupConfig,
    groups: Mutex<HashMap<String, Arc<Mutex<Group>>>>,
    offsets: OffsetStore,
    clock: Arc<dyn Clock>,
}

impl GroupCoordinator {
    /// Loads committed offsets from `dir`; every group with offsets starts
    /// out Empty. Blocking.
    pub(crate) fn open(
        dir: &Path,
        config: GroupConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CoreError> {
        let offsets = OffsetStore::open(dir)?;
        let groups = offsets
            .groups()
            .into_iter()
            .map(|id| {
                let protocol_type = offsets.protocol_type(&id);
                let group = Arc::new(Mutex::new(Group::new(&id, protocol_type)));
                (id, group)
            })
            .collect();
        Ok(GroupCoordinator {
            config,
            groups: Mutex::new(groups),
            offsets,
            clock,
        })
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    fn group(&self, id: &str) -> Option<Arc<Mutex<Group>>> {
        lock(&self.groups).get(id).cloned()
    }

    fn group_or_create(&self, id: &str) -> Arc<Mutex<Group>> {
        lock(&self.groups)
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Group::new(id, None))))
            .clone()
    }

    fn check_group_id(id: &str) -> Result<(), GroupError> {
        if id.is_empty() || id.len() > GROUP_ID_BYTES_MAX {
            return Err(GroupError::InvalidGroupId);
        }
        Ok(())
    }

    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse, GroupError> {
        Self::check_group_id(&req.group_id)?;
        let (min, max) = (
            self.config.session_timeout_min,
            self.config.session_timeout_max,
        );
        if req.session_timeout < min || req.session_timeout > max {
            return Err(GroupError::InvalidSessionTimeout {
                requested_ms: req.session_timeout.as_millis(),
                min_ms: min.as_millis(),
                max_ms: max.as_millis(),
            });
        }
        let group = if req.member_id.is_empty() {
            self.group_or_create(&req.group_id)
        } else {
            self.group(&req.group_id)
                .ok_or(GroupError::UnknownMemberId)?
        };
        let outcome = lock(&group).join(&req, &self.config, Instant::now());
        // An emptied group that outlives a restart (through its offsets) is
        // still reported with its protocol type. This writes only when the
        // type changes, so only a group's first join waits for it.
        if let Err(e) = self
            .offsets
            .set_protocol_type(&req.group_id, &req.protocol_type)
            .await
        {
            tracing::warn!(group = %req.group_id, error = %e, "could not record the group's protocol type");
        }
        match outcome {
            JoinOutcome::Now(result) => result,
            // The timer task ends every rebalance by its deadline, so the
            // sender is always used or dropped.
            JoinOutcome::Wait(rx) => rx.await.unwrap_or(Err(GroupError::RebalanceInProgress)),
        }
    }

    pub async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, GroupError> {
        Self::check_group_id(&req.group_id)?;
        let group = self
            .group(&req.group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        let outcome = lock(&group).sync(req, Instant::now());
        match outcome {
            SyncOutcome::Now(result) => result,
            SyncOutcome::Wait(rx) => rx.await.unwrap_or(Err(GroupError::RebalanceInProgress)),
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        Self::check_group_id(group_id)?;
        let group = self.group(group_id).ok_or(GroupError::UnknownMemberId)?;
        let mut g = lock(&group);
        let now = Instant::now();
        // Expire lapsed sessions first rather than waiting for the timer: a
        // survivor's heartbeat that arrives just after a dead member's
        // session ran out then learns of the rebalance now, not one
        // heartbeat interval later (docs/benchmarks.md, failover).
        g.tick(now);
        g.heartbeat(member_id, group_instance_id, generation_id, now)
    }

    /// Removes members (member id, and group.instance.id for static members);
    /// one result per member.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        Self::check_group_id(group_id)?;
        let group = self.group(group_id).ok_or(GroupError::UnknownMemberId)?;
        let mut g = lock(&group);
        Ok(g.leave(members, Instant::now()))
    }

    /// Validates a commit against the group's membership (Kafka's rules) and
    /// makes it durable. `generation_id < 0` with an empty member id is a
    /// commit from outside any generation (a consumer using `assign()`, or an
    /// admin resetting offsets), allowed only while the group has no members.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        offsets: Vec<(TopicPartition, i64, i32, Option<String>)>,
    ) -> Result<(), GroupError> {
        Self::check_group_id(group_id)?;
        if offsets.iter().any(|(_, _, _, m)| {
            m.as_ref()
                .is_some_and(|m| m.len() > OFFSET_METADATA_BYTES_MAX)
        }) {
            return Err(GroupError::OffsetMetadataTooLarge);
        }
        let group = if generation_id < 0 && member_id.is_empty() {
            self.group_or_create(group_id)
        } else {
            self.group(group_id).ok_or(GroupError::UnknownMemberId)?
        };
        {
            let g = lock(&group);
            match g.state {
                GroupState::Dead => return Err(GroupError::CoordinatorNotAvailable),
                GroupState::Empty if generation_id < 0 => {}
                _ => {
                    if let Some(instance) = group_instance_id
                        && g.static_members
                            .get(instance)
                            .is_some_and(|m| m != member_id)
                    {
                        return Err(GroupError::FencedInstanceId);
                    }
                    if !g.members.contains_key(member_id) {
                        return Err(GroupError::UnknownMemberId);
                    }
                    if generation_id != g.generation_id {
                        return Err(GroupError::IllegalGeneration);
                    }
                    if g.state == GroupState::CompletingRebalance {
                        return Err(GroupError::RebalanceInProgress);
                    }
                }
            }
        }
        let now_ms = self.clock.now_ms();
        let entries = offsets
            .into_iter()
            .map(|(tp, offset, leader_epoch, metadata)| {
                (
                    tp,
                    Committed {
                        offset,
                        leader_epoch,
                        metadata,
                        commit_ms: now_ms,
                    },
                )
            })
            .collect();
        self.offsets
            .commit(group_id, entries)
            .await
            .map_err(|e| GroupError::Storage(e.to_string()))
    }

    /// Committed offsets of a group: of the given partitions (`None` for
    /// every partition with a commit). Partitions without one get `None`.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Vec<(TopicPartition, Option<Committed>)> {
        match partitions {
            None => self
                .offsets
                .all(group_id)
                .into_iter()
                .map(|(tp, c)| (tp, Some(c)))
                .collect(),
            Some(list) => list
                .into_iter()
                .map(|tp| {
                    let c = self.offsets.get(group_id, &tp);
                    (tp, c)
                })
                .collect(),
        }
    }

    /// Every group, sorted by id.
    pub fn list_groups(&self) -> Vec<GroupListing> {
        let groups: Vec<Arc<Mutex<Group>>> = lock(&self.groups).values().cloned().collect();
        let mut out: Vec<GroupListing> = groups
            .iter()
            .map(|g| {
                let g = lock(g);
                GroupListing {
                    group_id: g.id.clone(),
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    state: g.state,
                }
            })
            .filter(|l| l.state != GroupState::Dead)
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// A group's state and members; an unknown group is reported `Dead`, as
    /// Kafka does.
    pub fn describe(&self, group_id: &str) -> GroupDescription {
        let Some(group) = self.group(group_id) else {
            return GroupDescription {
                group_id: group_id.to_string(),
                state: GroupState::Dead,
                protocol_type: String::new(),
                protocol_name: String::new(),
                generation_id: -1,
                members: Vec::new(),
            };
        };
        let g = lock(&group);
        let protocol = g.protocol_name.clone().unwrap_or_default();
        GroupDescription {
            group_id: g.id.clone(),
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol_name: protocol.clone(),
            generation_id: g.generation_id,
            members: g
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Deletes an empty group and its offsets.
    pub async fn delete_group(&self, group_id: &str) -> Result<(), GroupError> {
        let group = self.group(group_id).ok_or(GroupError::GroupIdNotFound)?;
        {
            let mut g = lock(&group);
            match g.state {
                GroupState::Dead => return Err(GroupError::GroupIdNotFound),
                GroupState::Empty => g.state = GroupState::Dead,
                _ => return Err(GroupError::NonEmptyGroup),
            }
        }
        lock(&self.groups).remove(group_id);
        let partitions = self
            .offsets
            .all(group_id)
            .into_iter()
            .map(|(tp, _)| tp)
            .collect();
        self.offsets
            .delete(group_id, partitions)
            .await
            .map_err(|e| GroupError::Storage(e.to_string()))?;
        tracing::info!(group = group_id, "deleted group");
        Ok(())
    }

    /// Deletes committed offsets of some partitions (Kafka's OffsetDelete).
    /// The caller checks that no member is subscribed to their topics.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<TopicPartition>,
    ) -> Result<(), GroupError> {
        if self.group(group_id).is_none() {
            return Err(GroupError::GroupIdNotFound);
        }
        self.offsets
            .delete(group_id, partitions)
            .await
            .map_err(|e| GroupError::Storage(e.to_string()))
    }

    fn all_groups(&self) -> Vec<Arc<Mutex<Group>>> {
        lock(&self.groups).values().cloned().collect()
    }

    /// Expires sessions and ends rebalances whose time is up.
    pub(crate) fn tick(&self, now: Instant) {
        for group in self.all_groups() {
            lock(&group).tick(now);
        }
    }

    /// Session expiry, rebalance deadlines, and offset retention, until the
    /// task is dropped. Run it with `tokio::spawn`.
    pub async fn run_timers(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(TIMER_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_retention = Instant::now();
        loop {
            tick.tick().await;
            let now = Instant::now();
            self.tick(now);
            if now.duration_since(last_retention) >= Duration::from_millis(RETENTION_TICK_MS) {
                last_retention = now;
                self.expire_offsets().await;
                let this = self.clone();
                let compacted =
                    tokio::task::spawn_blocking(move || this.offsets.compact_if_needed()).await;
                if let Ok(Err(e)) = compacted {
                    tracing::warn!(error = %e, "could not compact the offsets journal");
                }
            }
        }
    }

    /// Kafka's `offsets.retention.minutes`: offsets of a group without
    /// members expire once older than the retention; a group left with
    /// neither members nor offsets disappears.
    async fn expire_offsets(&self) {
        let cutoff = self.clock.now_ms() - self.config.offsets_retention.as_millis() as i64;
        for group in self.all_groups() {
            let (id, empty) = {
                let g = lock(&group);
                (g.id.clone(), g.state == GroupState::Empty)
            };
            if !empty {
                continue;
            }
            let expired = self.offsets.older_than(&id, cutoff);
            if !expired.is_empty() {
                tracing::info!(group = %id, partitions = expired.len(), "committed offsets expired (offsets.retention)");
                if let Err(e) = self.offsets.delete(&id, expired).await {
                    tracing::warn!(group = %id, error = %e, "could not expire offsets");
                    continue;
                }
            }
            if self.offsets.all(&id).is_empty() {
                let mut groups = lock(&self.groups);
                let still_empty = groups.get(&id).is_some_and(|g| {
                    let g = lock(g);
                    g.is_empty() && g.state == GroupState::Empty
                });
                if still_empty {
                    groups.remove(&id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
