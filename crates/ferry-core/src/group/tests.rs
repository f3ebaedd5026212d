use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_log::SystemClock;

use super::*;

fn coordinator(dir: &Path) -> Arc<GroupCoordinator> {
    let config = GroupConfig {
        initial_rebalance_delay: Duration::ZERO,
        ..GroupConfig::default()
    };
    Arc::new(GroupCoordinator::open(dir, config, Arc::new(SystemClock)).unwrap())
}

fn join_req(member_id: &str, instance: Option<&str>) -> JoinRequest {
    JoinRequest {
        group_id: "g".into(),
        member_id: member_id.into(),
        group_instance_id: instance.map(str::to_string),
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(30),
        protocol_type: "consumer".into(),
        protocols: vec![
            ("range".into(), Bytes::from_static(b"r")),
            ("roundrobin".into(), Bytes::from_static(b"rr")),
        ],
        require_known_member_id: true,
    }
}

/// Joins with the MEMBER_ID_REQUIRED round trip; returns the pending join.
async fn first_join(
    c: &Arc<GroupCoordinator>,
) -> (
    String,
    tokio::task::JoinHandle<Result<JoinResponse, GroupError>>,
) {
    let id = match c.join(join_req("", None)).await {
        Err(GroupError::MemberIdRequired(id)) => id,
        other => panic!("expected MEMBER_ID_REQUIRED, got {other:?}"),
    };
    let c2 = c.clone();
    let req = join_req(&id, None);
    (id, tokio::spawn(async move { c2.join(req).await }))
}

async fn sync(
    c: &GroupCoordinator,
    member: &str,
    generation: i32,
    assign: Vec<(String, Bytes)>,
) -> Result<SyncResponse, GroupError> {
    c.sync(SyncRequest {
        group_id: "g".into(),
        member_id: member.into(),
        group_instance_id: None,
        generation_id: generation,
        protocol_type: Some("consumer".into()),
        protocol_name: None,
        assignments: assign,
    })
    .await
}

#[tokio::test]
async fn one_member_joins_leads_and_gets_its_assignment() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (id, join) = first_join(&c).await;
    let resp = join.await.unwrap().unwrap();
    assert_eq!(resp.generation_id, 1);
    assert_eq!(resp.leader_id, id);
    assert_eq!(resp.protocol_name.as_deref(), Some("range"));
    assert_eq!(resp.members.len(), 1);
    assert_eq!(resp.members[0].metadata, Bytes::from_static(b"r"));
    let s = sync(&c, &id, 1, vec![(id.clone(), Bytes::from_static(b"p0,p1"))])
        .await
        .unwrap();
    assert_eq!(s.assignment, Bytes::from_static(b"p0,p1"));
    assert_eq!(c.describe("g").state, GroupState::Stable);
    c.heartbeat("g", &id, None, 1).unwrap();
    assert_eq!(
        c.heartbeat("g", &id, None, 0),
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(
        c.heartbeat("g", "nobody", None, 1),
        Err(GroupError::UnknownMemberId)
    );
}

#[tokio::test]
async fn a_second_member_triggers_a_rebalance_that_includes_both() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (a, join_a) = first_join(&c).await;
    join_a.await.unwrap().unwrap();
    sync(&c, &a, 1, vec![(a.clone(), Bytes::from_static(b"all"))])
        .await
        .unwrap();

    let (b, join_b) = first_join(&c).await;
    tokio::task::yield_now().await;
    // The first member learns of the rebalance from its heartbeat and rejoins.
    assert_eq!(
        c.heartbeat("g", &a, None, 1),
        Err(GroupError::RebalanceInProgress)
    );
    let rejoin_a = c.join(join_req(&a, None)).await.unwrap();
    let resp_b = join_b.await.unwrap().unwrap();
    assert_eq!(rejoin_a.generation_id, 2);
    assert_eq!(resp_b.generation_id, 2);
    assert_eq!(
        rejoin_a.leader_id, a,
        "the longest-standing member keeps leading"
    );
    assert_eq!(rejoin_a.members.len(), 2);
    assert!(
        resp_b.members.is_empty(),
        "only the leader sees the members"
    );

    // The follower's SyncGroup waits for the leader's assignment.
    let c2 = c.clone();
    let b2 = b.clone();
    let follower = tokio::spawn(async move { sync(&c2, &b2, 2, vec![]).await });
    tokio::task::yield_now().await;
    let leader = sync(
        &c,
        &a,
        2,
        vec![
            (a.clone(), Bytes::from_static(b"p0")),
            (b.clone(), Bytes::from_static(b"p1")),
        ],
    )
    .await
    .unwrap();
    assert_eq!(leader.assignment, Bytes::from_static(b"p0"));
    assert_eq!(
        follower.await.unwrap().unwrap().assignment,
        Bytes::from_static(b"p1")
    );
}

#[tokio::test]
async fn a_silent_member_is_expired_after_its_session_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (a, join_a) = first_join(&c).await;
    join_a.await.unwrap().unwrap();
    sync(&c, &a, 1, vec![]).await.unwrap();
    c.tick(Instant::now() + Duration::from_secs(5));
    assert_eq!(
        c.describe("g").members.len(),
        1,
        "expired before its session timeout"
    );
    c.tick(Instant::now() + Duration::from_secs(11));
    let d = c.describe("g");
    assert_eq!(d.state, GroupState::Empty);
    assert!(d.members.is_empty());
    assert_eq!(
        c.heartbeat("g", &a, None, 1),
        Err(GroupError::UnknownMemberId)
    );
}

#[tokio::test]
async fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (a, join_a) = first_join(&c).await;
    join_a.await.unwrap().unwrap();
    sync(&c, &a, 1, vec![]).await.unwrap();
    let (b, join_b) = first_join(&c).await;
    tokio::task::yield_now().await;
    // `a` never rejoins; at the rebalance timeout the join completes without it.
    c.tick(Instant::now() + Duration::from_secs(31));
    let resp = join_b.await.unwrap().unwrap();
    assert_eq!(resp.leader_id, b);
    assert_eq!(resp.members.len(), 1);
}

#[tokio::test]
async fn leaving_rebalances_and_the_last_one_out_empties_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (a, join_a) = first_join(&c).await;
    join_a.await.unwrap().unwrap();
    sync(&c, &a, 1, vec![]).await.unwrap();
    let results = c
        .leave("g", &[(a.clone(), None), ("ghost".into(), None)])
        .unwrap();
    assert_eq!(results, vec![Ok(()), Err(GroupError::UnknownMemberId)]);
    assert_eq!(c.describe("g").state, GroupState::Empty);
}

#[tokio::test]
async fn a_restarted_static_member_fences_its_old_id() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let first = c.join(join_req("", Some("instance-1"))).await.unwrap();
    sync(
        &c,
        &first.member_id,
        1,
        vec![(first.member_id.clone(), Bytes::from_static(b"x"))],
    )
    .await
    .unwrap();
    let c2 = c.clone();
    let again = tokio::spawn(async move { c2.join(join_req("", Some("instance-1"))).await });
    let second = again.await.unwrap().unwrap();
    assert_ne!(second.member_id, first.member_id);
    assert_eq!(
        c.heartbeat(
            "g",
            &first.member_id,
            Some("instance-1"),
            second.generation_id
        ),
        Err(GroupError::FencedInstanceId)
    );
    assert_eq!(c.describe("g").members.len(), 1);
}

#[tokio::test]
async fn commits_follow_kafkas_rules_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let tp = ("t".to_string(), 0);
    // Outside any generation, on an empty group: allowed (assign() consumers, admin resets).
    c.commit_offsets(
        "simple",
        -1,
        "",
        None,
        vec![(tp.clone(), 42, -1, Some("meta".into()))],
    )
    .await
    .unwrap();
    let (a, join_a) = first_join(&c).await;
    join_a.await.unwrap().unwrap();
    sync(&c, &a, 1, vec![]).await.unwrap();
    assert_eq!(
        c.commit_offsets("g", -1, "", None, vec![(tp.clone(), 1, -1, None)])
            .await,
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        c.commit_offsets("g", 7, &a, None, vec![(tp.clone(), 1, -1, None)])
            .await,
        Err(GroupError::IllegalGeneration)
    );
    c.commit_offsets("g", 1, &a, None, vec![(tp.clone(), 10, 0, None)])
        .await
        .unwrap();
    assert_eq!(
        c.commit_offsets(
            "g",
            1,
            &a,
            None,
            vec![(tp.clone(), 1, 0, Some("x".repeat(5000)))]
        )
        .await,
        Err(GroupError::OffsetMetadataTooLarge)
    );
    drop(c);
    let c = coordinator(dir.path());
    let fetched = c.fetch_offsets("simple", Some(vec![tp.clone(), ("t".into(), 9)]));
    assert_eq!(
        fetched[0]
            .1
            .as_ref()
            .map(|c| (c.offset, c.metadata.clone())),
        Some((42, Some("meta".into())))
    );
    assert_eq!(fetched[1].1, None);
    assert_eq!(
        c.fetch_offsets("g", None)[0].1.as_ref().map(|c| c.offset),
        Some(10)
    );
    let listed: Vec<_> = c
        .list_groups()
        .into_iter()
        .map(|l| (l.group_id, l.state))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("g".into(), GroupState::Empty),
            ("simple".into(), GroupState::Empty)
        ]
    );
}

#[tokio::test]
async fn only_empty_groups_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (a, join_a) = first_join(&c).await;
    join_a.await.unwrap().unwrap();
    assert_eq!(c.delete_group("g").await, Err(GroupError::NonEmptyGroup));
    assert_eq!(
        c.delete_group("nope").await,
        Err(GroupError::GroupIdNotFound)
    );
    c.leave("g", &[(a, None)]).unwrap();
    c.delete_group("g").await.unwrap();
    assert_eq!(c.describe("g").state, GroupState::Dead);
}

#[tokio::test]
async fn mismatched_protocols_and_bad_timeouts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (_, join_a) = first_join(&c).await;
    join_a.await.unwrap().unwrap();
    let mut other = join_req("", None);
    other.protocols = vec![("cooperative-sticky".into(), Bytes::new())];
    assert_eq!(
        c.join(other).await,
        Err(GroupError::InconsistentGroupProtocol)
    );
    let mut short = join_req("", None);
    short.group_id = "h".into();
    short.session_timeout = Duration::from_millis(10);
    assert!(matches!(
        c.join(short).await,
        Err(GroupError::InvalidSessionTimeout { .. })
    ));
}

#[tokio::test]
async fn an_emptied_group_keeps_its_protocol_type_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (a, join_a) = first_join(&c).await;
    join_a.await.unwrap().unwrap();
    sync(&c, &a, 1, vec![]).await.unwrap();
    c.commit_offsets("g", 1, &a, None, vec![(("t".into(), 0), 3, -1, None)])
        .await
        .unwrap();
    c.leave("g", &[(a, None)]).unwrap();
    assert_eq!(c.describe("g").protocol_type, "consumer");
    drop(c);
    let c = coordinator(dir.path());
    let d = c.describe("g");
    assert_eq!(
        (d.state, d.protocol_type.as_str()),
        (GroupState::Empty, "consumer")
    );
    assert_eq!(c.list_groups()[0].protocol_type, "consumer");
}

#[tokio::test]
async fn a_heartbeat_after_a_peer_session_lapsed_reports_the_rebalance_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (a, join_a) = first_join(&c).await;
    join_a.await.unwrap().unwrap();
    sync(&c, &a, 1, vec![]).await.unwrap();
    let (b, join_b) = first_join(&c).await;
    tokio::task::yield_now().await;
    c.join(join_req(&a, None)).await.unwrap();
    join_b.await.unwrap().unwrap();
    let c2 = c.clone();
    let b2 = b.clone();
    let follower = tokio::spawn(async move { sync(&c2, &b2, 2, vec![]).await });
    tokio::task::yield_now().await;
    sync(&c, &a, 2, vec![]).await.unwrap();
    follower.await.unwrap().unwrap();
    // `b` dies silently; `a` keeps heartbeating. No timer tick runs here:
    // the heartbeat itself must notice that b's 10 s session has lapsed.
    {
        let group = c.group("g").unwrap();
        let mut g = lock(&group);
        let past = Instant::now() - Duration::from_secs(11);
        g.members.get_mut(&b).unwrap().last_heartbeat = past;
    }
    assert_eq!(
        c.heartbeat("g", &a, None, 2),
        Err(GroupError::RebalanceInProgress)
    );
}
