//! Three nodes over the in-memory transport: elect, propose, read back; one group and several.

mod common;

use common::TestCluster;
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::kv::KvStateMachine;
use nodedb_cluster_raft::log_db::LogDb;
use nodedb_cluster_raft::{GroupError, MembershipError, MultiRaft, ProposeError};
use nodedb_cluster_transport::Transport;
use std::collections::BTreeMap;
use std::sync::Arc;

const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

/// A group initialized on one member with all three, the others opened empty: replicas that
/// are the first of their group on their node vote from an empty log, as Raft says (only a
/// replica created again after a removal waits until its log reaches the removed one's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_initialized_on_one_member_elects_with_the_others_empty() {
    let cluster = TestCluster::new(3, 2).await;
    let group = GroupId(1);
    let members: BTreeMap<NodeId, String> = VOTERS
        .iter()
        .map(|node| (*node, common::address(*node)))
        .collect();
    for node in VOTERS {
        let initial = (node == NodeId(1)).then(|| members.clone());
        cluster.nodes[&node]
            .multi
            .create_group(group, Box::new(KvStateMachine::new()), initial)
            .await
            .expect("create group");
    }
    assert_eq!(cluster.wait_leader(group).await, NodeId(1));
    cluster.put(group, "alpha", "1").await;
    cluster.wait_converged(group).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_elects_commits_and_reads_back() {
    let mut cluster = TestCluster::new(3, 1).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let leader = cluster.wait_leader(group).await;
    assert!(VOTERS.contains(&leader));

    let first = cluster.put(group, "alpha", "1").await;
    let second = cluster.put(group, "beta", "2").await;
    assert!(second.index > first.index);
    assert_eq!(cluster.get(group, "alpha").await.as_deref(), Some("1"));
    assert_eq!(cluster.get(group, "beta").await.as_deref(), Some("2"));
    assert_eq!(cluster.get(group, "gamma").await, None);

    cluster.wait_converged(group).await;
    for node in VOTERS {
        assert_eq!(
            cluster.local_get(node, group, "beta").await.as_deref(),
            Some("2")
        );
        let status = cluster.status(node, group).expect("status");
        assert_eq!(status.voters, VOTERS.to_vec());
        assert_eq!(status.leader, Some(leader));
    }
    let leader_status = cluster.status(leader, group).expect("leader status");
    assert_eq!(leader_status.followers.len(), 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_groups_are_independent() {
    let mut cluster = TestCluster::new(3, 2).await;
    let groups: Vec<GroupId> = (0..4).map(GroupId).collect();
    for group in &groups {
        cluster.create_group(*group, &VOTERS).await;
    }
    for group in &groups {
        cluster.wait_leader(*group).await;
        cluster
            .put(*group, "shared-key", &format!("value-of-{}", group.0))
            .await;
    }
    for group in &groups {
        let expected = format!("value-of-{}", group.0);
        assert_eq!(cluster.get(*group, "shared-key").await, Some(expected));
    }
    assert_eq!(cluster.nodes[&NodeId(2)].multi.groups(), groups);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_is_observed_by_every_node() {
    let mut cluster = TestCluster::new(3, 3).await;
    let group = GroupId(5);
    let mut changes = cluster.nodes[&NodeId(3)].multi.leader_changes();
    cluster.create_group(group, &VOTERS).await;
    let leader = cluster.wait_leader(group).await;
    let target = VOTERS
        .iter()
        .copied()
        .find(|node| *node != leader)
        .expect("a follower");

    let follower = &cluster.nodes[&target].multi;
    let refused = follower.transfer_leader(group, target).await;
    assert!(
        matches!(refused, Err(MembershipError::NotLeader { leader_hint: Some(hint), .. }) if hint == leader),
        "only the leader can hand over: {refused:?}"
    );
    cluster.nodes[&leader]
        .multi
        .transfer_leader(group, target)
        .await
        .expect("transfer");
    common::wait_for("leadership to move to the target", common::WAIT, || {
        let status = cluster.status(target, group)?;
        (status.role == nodedb_cluster_raft::Role::Leader).then_some(())
    })
    .await;
    assert_eq!(cluster.wait_leader(group).await, target);

    // Node 3 saw the first leader and then the new one, in order, through its watch.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while seen.last() != Some(&Some(target)) {
        let change = tokio::time::timeout_at(deadline, changes.recv())
            .await
            .expect("leader change in time")
            .expect("channel open");
        assert_eq!(change.group, group);
        seen.push(change.leader);
    }
    assert!(seen.contains(&Some(leader)), "saw {seen:?}");
    cluster.put(group, "after-transfer", "1").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_groups_are_typed_errors() {
    let cluster = TestCluster::new(1, 4).await;
    let multi = &cluster.nodes[&NodeId(1)].multi;
    let missing = GroupId(42);
    assert!(matches!(
        multi.propose(missing, vec![1]).await,
        Err(ProposeError::UnknownGroup { group }) if group == missing
    ));
    assert!(matches!(
        multi.read_barrier(missing).await,
        Err(ProposeError::UnknownGroup { .. })
    ));
    assert!(matches!(
        multi.promote(missing, NodeId(2)).await,
        Err(MembershipError::UnknownGroup { .. })
    ));
    assert!(multi.status(missing).is_none());
    assert!(matches!(
        multi.remove_group(missing).await,
        Err(GroupError::UnknownGroup { .. })
    ));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_group_after_a_restart_does_not_initialize_again() {
    let mut cluster = TestCluster::new(3, 5).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    cluster.put(group, "k", "v").await;
    let leader = cluster.wait_leader(group).await;
    let term = cluster.status(leader, group).expect("status").term;

    // Restart node 1 by hand, without the harness reopening its groups, and ask it to create
    // the group with a different member list: it must start from its stored state instead.
    cluster.crash_node(NodeId(1)).await;
    cluster.network.restart(NodeId(1));
    let dir = cluster.data_dir(NodeId(1));
    let log = LogDb::open(&dir.join("raft-log.redb")).expect("log");
    let transport = cluster.network.register(NodeId(1)).expect("register");
    let multi = MultiRaft::new(
        NodeId(1),
        transport.clone() as Arc<dyn Transport>,
        log.clone(),
        dir,
        cluster.timings,
    )
    .expect("multi-raft");
    transport.set_handler(multi.handler());
    assert_eq!(multi.stored_groups().expect("stored"), vec![group]);
    let only_me = BTreeMap::from([(NodeId(1), common::address(NodeId(1)))]);
    multi
        .create_group(group, Box::new(KvStateMachine::new()), Some(only_me))
        .await
        .expect("create on a restarted node");
    let status = common::wait_for("node 1 to rejoin", common::WAIT, || {
        let status = multi.status(group)?;
        (status.leader.is_some() && status.applied_index.is_some()).then_some(status)
    })
    .await;
    assert_eq!(
        status.voters,
        VOTERS.to_vec(),
        "membership is the stored one"
    );
    assert!(status.term >= term);
    multi.shutdown().await;
    log.shutdown();
    cluster.shutdown().await;
}
