//! One consumer group's membership state machine (Kafka's classic group
//! protocol): Empty → PreparingRebalance → CompletingRebalance → Stable, and
//! back to PreparingRebalance whenever membership or subscriptions change.
//!
//! Everything here is synchronous and runs under the group's lock; waiting
//! clients hold oneshot receivers that the transitions complete. Time comes
//! in as `now` so that tests can drive it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{
    GroupConfig, GroupError, JoinRequest, JoinResponse, JoinedMember, SyncRequest, SyncResponse,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The names Kafka's DescribeGroups and ListGroups use.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// (protocol name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub join_waiter: Option<oneshot::Sender<Result<JoinResponse, GroupError>>>,
    pub sync_waiter: Option<oneshot::Sender<Result<SyncResponse, GroupError>>>,
    pub last_heartbeat: Instant,
    /// Join order, so the longest-standing member leads.
    pub joined_seq: u64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn fail_waiters(&mut self, error: GroupError) {
        if let Some(w) = self.join_waiter.take() {
            let _ = w.send(Err(error.clone()));
        }
        if let Some(w) = self.sync_waiter.take() {
            let _ = w.send(Err(error));
        }
    }
}

/// What a join call gets back from the state machine.
#[derive(Debug)]
pub(crate) enum JoinOutcome {
    /// Answer right away.
    Now(Result<JoinResponse, GroupError>),
    /// Answer when the rebalance completes.
    Wait(oneshot::Receiver<Result<JoinResponse, GroupError>>),
}

#[derive(Debug)]
pub(crate) enum SyncOutcome {
    Now(Result<SyncResponse, GroupError>),
    Wait(oneshot::Receiver<Result<SyncResponse, GroupError>>),
}

#[derive(Debug)]
pub(crate) struct Group {
    pub id: String,
    pub state: GroupState,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub generation_id: i32,
    pub leader_id: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// group.instance.id → member id, for static membership.
    pub static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, awaiting the rejoin,
    /// with when they expire.
    pub pending_members: HashMap<String, Instant>,
    /// When the current rebalance stops waiting for members to rejoin.
    rebalance_deadline: Option<Instant>,
    /// An empty group's first rebalance waits this long for more members
    /// (Kafka's group.initial.rebalance.delay.ms), so that consumers started
    /// together share one rebalance.
    initial_delay_until: Option<Instant>,
    next_seq: u64,
}

impl Group {
    pub fn new(id: &str, protocol_type: Option<String>) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            protocol_type,
            protocol_name: None,
            generation_id: 0,
            leader_id: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            rebalance_deadline: None,
            initial_delay_until: None,
            next_seq: 0,
        }
    }

    fn new_member_id(client_id: &str) -> String {
        format!("{client_id}-{}", uuid::Uuid::new_v4())
    }

    fn supports(&self, req: &JoinRequest) -> bool {
        if self.members.is_empty() {
            return !req.protocol_type.is_empty() && !req.protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(req.protocol_type.as_str()) {
            return false;
        }
        // Some protocol every current member supports must be offered.
        req.protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> Option<String> {
        let mut candidates: Vec<&str> = match self.members.values().next() {
            Some(first) => first.protocols.iter().map(|(n, _)| n.as_str()).collect(),
            None => return None,
        };
        candidates.retain(|name| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        });
        let mut votes: Vec<(&str, usize)> = candidates.iter().map(|c| (*c, 0)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n.as_str()))
                && let Some(v) = votes.iter_mut().find(|(c, _)| c == name)
            {
                v.1 += 1;
            }
        }
        // The first of the most-voted, in the first member's preference order.
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes
            .into_iter()
            .find(|(_, n)| *n == best)
            .map(|(c, _)| c.to_string())
    }

    fn current_join_response(&self, member_id: &str) -> JoinResponse {
        let is_leader = self.leader_id.as_deref() == Some(member_id);
        let protocol = self.protocol_name.clone().unwrap_or_default();
        JoinResponse {
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader_id: self.leader_id.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| JoinedMember {
                        member_id: m.member_id.clone(),
                        group_instance_id: m.group_instance_id.clone(),
                        metadata: m.metadata_for(&protocol),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn add_member(&mut self, member_id: String, req: &JoinRequest, now: Instant) -> &mut Member {
        self.next_seq += 1;
        let member = Member {
            member_id: member_id.clone(),
            group_instance_id: req.group_instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout: req.session_timeout,
            rebalance_timeout: req.rebalance_timeout,
            protocols: req.protocols.clone(),
            assignment: Bytes::new(),
            join_waiter: None,
            sync_waiter: None,
            last_heartbeat: now,
            joined_seq: self.next_seq,
        };
        if let Some(instance) = &req.group_instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        if self.members.is_empty() {
            // The first member of an empty group sets its protocol type.
            self.protocol_type = Some(req.protocol_type.clone());
        }
        self.members.entry(member_id).or_insert(member)
    }

    fn wait_for_join(&mut self, member_id: &str) -> JoinOutcome {
        let (tx, rx) = oneshot::channel();
        if let Some(m) = self.members.get_mut(member_id)
            && let Some(old) = m.join_waiter.replace(tx)
        {
            // A client that re-sent JoinGroup has given up on the old call.
            let _ = old.send(Err(GroupError::RebalanceInProgress));
        }
        JoinOutcome::Wait(rx)
    }

    fn update_member(&mut self, member_id: &str, req: &JoinRequest, now: Instant) -> bool {
        let Some(m) = self.members.get_mut(member_id) else {
            return false;
        };
        let changed = m.protocols != req.protocols;
        m.protocols = req.protocols.clone();
        m.session_timeout = req.session_timeout;
        m.rebalance_timeout = req.rebalance_timeout;
        m.client_id = req.client_id.clone();
        m.client_host = req.client_host.clone();
        m.last_heartbeat = now;
        changed
    }

    /// Handles a JoinGroup. `now` drives the timers; `config` gives the
    /// initial rebalance delay.
    pub fn join(&mut self, req: &JoinRequest, config: &GroupConfig, now: Instant) -> JoinOutcome {
        if self.state == GroupState::Dead {
            return JoinOutcome::Now(Err(GroupError::CoordinatorNotAvailable));
        }
        if !self.supports(req) {
            return JoinOutcome::Now(Err(GroupError::InconsistentGroupProtocol));
        }
        if req.member_id.is_empty() {
            return self.join_new(req, config, now);
        }
        if self.pending_members.remove(&req.member_id).is_some() {
            return self.admit(req.member_id.clone(), req, config, now);
        }
        if let Err(e) = self.check_member(&req.member_id, req.group_instance_id.as_deref()) {
            return JoinOutcome::Now(Err(e));
        }
        let changed = self.update_member(&req.member_id, req, now);
        let is_leader = self.leader_id.as_deref() == Some(req.member_id.as_str());
        match self.state {
            GroupState::PreparingRebalance => {
                let outcome = self.wait_for_join(&req.member_id);
                self.maybe_complete_join(now);
                outcome
            }
            GroupState::CompletingRebalance | GroupState::Stable if !changed && !is_leader => {
                // A follower rejoining with the same subscription learns the
                // current generation without disturbing the others.
                JoinOutcome::Now(Ok(self.current_join_response(&req.member_id)))
            }
            _ => {
                self.prepare_rebalance(now);
                let outcome = self.wait_for_join(&req.member_id);
                self.maybe_complete_join(now);
                outcome
            }
        }
    }

    fn join_new(&mut self, req: &JoinRequest, config: &GroupConfig, now: Instant) -> JoinOutcome {
        let new_id = Self::new_member_id(&req.client_id);
        if let Some(instance) = &req.group_instance_id {
            if let Some(old_id) = self.static_members.get(instance).cloned() {
                // A static member restarted: it takes over its old place and
                // the old member id is fenced.
                let Some(mut old) = self.members.remove(&old_id) else {
                    self.static_members.remove(instance);
                    return self.join_new(req, config, now);
                };
                old.fail_waiters(GroupError::FencedInstanceId);
                let was_leader = self.leader_id.as_deref() == Some(old_id.as_str());
                let changed = old.protocols != req.protocols;
                let assignment = old.assignment.clone();
                let member = self.add_member(new_id.clone(), req, now);
                member.assignment = assignment;
                if was_leader {
                    self.leader_id = Some(new_id.clone());
                }
                if self.state == GroupState::Stable && !changed && !was_leader {
                    return JoinOutcome::Now(Ok(self.current_join_response(&new_id)));
                }
                self.prepare_rebalance(now);
                let outcome = self.wait_for_join(&new_id);
                self.maybe_complete_join(now);
                return outcome;
            }
        } else if req.require_known_member_id {
            // KIP-394: hand out the id first, so that a client that times out
            // mid-join and retries does not leave a ghost member behind.
            self.pending_members
                .insert(new_id.clone(), now + req.session_timeout);
            return JoinOutcome::Now(Err(GroupError::MemberIdRequired(new_id)));
        }
        self.admit(new_id, req, config, now)
    }

    /// Adds a new member and starts (or joins) a rebalance for it.
    fn admit(
        &mut self,
        member_id: String,
        req: &JoinRequest,
        config: &GroupConfig,
        now: Instant,
    ) -> JoinOutcome {
        let was_empty = self.members.is_empty() && self.state == GroupState::Empty;
        self.add_member(member_id.clone(), req, now);
        if was_empty {
            self.initial_delay_until = Some(now + config.initial_rebalance_delay);
        } else if let Some(until) = self.initial_delay_until {
            // Each newcomer during the initial delay extends it, but never
            // past the rebalance deadline.
            let cap = self.rebalance_deadline.unwrap_or(until);
            self.initial_delay_until = Some((now + config.initial_rebalance_delay).min(cap));
        }
        self.prepare_rebalance(now);
        let outcome = self.wait_for_join(&member_id);
        self.maybe_complete_join(now);
        outcome
    }

    /// Checks that `member_id` belongs to the group and, for a static member,
    /// that it has not been replaced by a newer instance.
    fn check_member(&self, member_id: &str, instance: Option<&str>) -> Result<(), GroupError> {
        if let Some(instance) = instance {
            match self.static_members.get(instance) {
                Some(current) if current != member_id => return Err(GroupError::FencedInstanceId),
                _ => {}
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        Ok(())
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(Err(GroupError::RebalanceInProgress));
                }
            }
        }
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        if self.state != GroupState::PreparingRebalance {
            self.state = GroupState::PreparingRebalance;
            self.rebalance_deadline = Some(now + longest);
            tracing::info!(group = %self.id, generation = self.generation_id, members = self.members.len(), "preparing rebalance");
        }
    }

    fn all_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// Completes the join phase if everyone has rejoined (and any initial
    /// delay is over).
    pub fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if self.initial_delay_until.is_some_and(|until| now < until) {
            return;
        }
        if self.all_joined() {
            self.complete_join(now);
        }
    }

    /// Ends the join phase: members that did not rejoin are dropped, the
    /// generation advances, a protocol is chosen and every waiting member is
    /// answered (the leader with everyone's metadata).
    fn complete_join(&mut self, now: Instant) {
        self.initial_delay_until = None;
        self.rebalance_deadline = None;
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in gone {
            tracing::info!(group = %self.id, member = %id, "member did not rejoin in time; removed");
            self.remove_member(&id, GroupError::UnknownMemberId);
        }
        self.generation_id += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            // Kafka keeps the protocol type of an emptied group, so tools
            // still see it was a consumer group.
            self.leader_id = None;
            return;
        }
        self.protocol_name = self.select_protocol();
        if !self
            .leader_id
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader_id = self
                .members
                .values()
                .min_by_key(|m| m.joined_seq)
                .map(|m| m.member_id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        tracing::info!(
            group = %self.id,
            generation = self.generation_id,
            protocol = self.protocol_name.as_deref().unwrap_or(""),
            members = self.members.len(),
            "rebalance: join phase complete"
        );
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let response = self.current_join_response(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.last_heartbeat = now;
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(Ok(response));
                }
            }
        }
    }

    fn remove_member(&mut self, member_id: &str, error: GroupError) {
        if let Some(mut m) = self.members.remove(member_id) {
            m.fail_waiters(error);
            if let Some(instance) = &m.group_instance_id
                && self.static_members.get(instance).map(String::as_str) == Some(member_id)
            {
                self.static_members.remove(instance);
            }
        }
        if self.leader_id.as_deref() == Some(member_id) {
            self.leader_id = None;
        }
    }

    pub fn sync(&mut self, req: SyncRequest, now: Instant) -> SyncOutcome {
        let SyncRequest {
            member_id,
            group_instance_id,
            generation_id,
            protocol_type,
            protocol_name,
            assignments,
            ..
        } = req;
        let member_id = member_id.as_str();
        let instance = group_instance_id.as_deref();
        let protocol_type = protocol_type.as_deref();
        let protocol_name = protocol_name.as_deref();
        if self.state == GroupState::Dead {
            return SyncOutcome::Now(Err(GroupError::CoordinatorNotAvailable));
        }
        if let Err(e) = self.check_member(member_id, instance) {
            return SyncOutcome::Now(Err(e));
        }
        if generation_id != self.generation_id {
            return SyncOutcome::Now(Err(GroupError::IllegalGeneration));
        }
        if protocol_type.is_some_and(|p| Some(p) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|p| Some(p) != self.protocol_name.as_deref())
        {
            return SyncOutcome::Now(Err(GroupError::InconsistentGroupProtocol));
        }
        match self.state {
            GroupState::Empty => SyncOutcome::Now(Err(GroupError::UnknownMemberId)),
            GroupState::PreparingRebalance => {
                SyncOutcome::Now(Err(GroupError::RebalanceInProgress))
            }
            GroupState::Stable => {
                let m = &self.members[member_id];
                SyncOutcome::Now(Ok(self.sync_response(m.assignment.clone())))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.sync_waiter = Some(tx);
                    m.last_heartbeat = now;
                }
                if self.leader_id.as_deref() == Some(member_id) {
                    let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = assignments.remove(&m.member_id).unwrap_or_default();
                    }
                    self.state = GroupState::Stable;
                    tracing::info!(group = %self.id, generation = self.generation_id, "rebalance complete: group stable");
                    let response_parts: Vec<(String, Bytes)> = self
                        .members
                        .values()
                        .map(|m| (m.member_id.clone(), m.assignment.clone()))
                        .collect();
                    for (id, assignment) in response_parts {
                        let response = self.sync_response(assignment);
                        if let Some(w) =
                            self.members.get_mut(&id).and_then(|m| m.sync_waiter.take())
                        {
                            let _ = w.send(Ok(response));
                        }
                    }
                }
                SyncOutcome::Wait(rx)
            }
            GroupState::Dead => SyncOutcome::Now(Err(GroupError::CoordinatorNotAvailable)),
        }
    }

    fn sync_response(&self, assignment: Bytes) -> SyncResponse {
        SyncResponse {
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
        now: Instant,
    ) -> Result<(), GroupError> {
        match self.state {
            GroupState::Dead => return Err(GroupError::CoordinatorNotAvailable),
            GroupState::Empty => return Err(GroupError::UnknownMemberId),
            _ => {}
        }
        self.check_member(member_id, instance)?;
        if generation_id != self.generation_id {
            return Err(GroupError::IllegalGeneration);
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat = now;
        }
        match self.state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// Removes members that asked to leave; the group rebalances without them.
    pub fn leave(
        &mut self,
        members: &[(String, Option<String>)],
        now: Instant,
    ) -> Vec<Result<(), GroupError>> {
        let mut results = Vec::with_capacity(members.len());
        let mut removed = false;
        for (member_id, instance) in members {
            // A static member may leave by instance id alone (KIP-345).
            let id = match (member_id.is_empty(), instance) {
                (true, Some(i)) => match self.static_members.get(i) {
                    Some(id) => id.clone(),
                    None => {
                        results.push(Err(GroupError::UnknownMemberId));
                        continue;
                    }
                },
                _ => member_id.clone(),
            };
            match self.check_member(&id, instance.as_deref()) {
                Ok(()) => {
                    tracing::info!(group = %self.id, member = %id, "member left the group");
                    self.remove_member(&id, GroupError::UnknownMemberId);
                    removed = true;
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if removed {
            self.membership_changed(now);
        }
        results
    }

    fn membership_changed(&mut self, now: Instant) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
        if self.members.is_empty() && self.state == GroupState::PreparingRebalance {
            self.complete_join(now);
        }
    }

    /// Timer work, called periodically: expire members whose session lapsed,
    /// pending member ids never used, and rebalances that waited too long.
    pub fn tick(&mut self, now: Instant) {
        self.pending_members.retain(|_, expires| *expires > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                // A member waiting in JoinGroup is alive until the rebalance
                // deadline, however long that is.
                m.join_waiter.is_none() && now.duration_since(m.last_heartbeat) > m.session_timeout
            })
            .map(|m| m.member_id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "member session expired; removing it");
            self.remove_member(id, GroupError::UnknownMemberId);
        }
        if !expired.is_empty() {
            self.membership_changed(now);
        }
        if self.state == GroupState::PreparingRebalance {
            let delay_over = self.initial_delay_until.is_none_or(|until| now >= until);
            let deadline_passed = self.rebalance_deadline.is_some_and(|d| now >= d);
            if delay_over && (deadline_passed || self.all_joined()) {
                self.complete_join(now);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}
