//! Membership changes while a client keeps writing: add a learner, promote it, remove a voter
//! (possibly the leader), then check that every acknowledged write is on every member.

mod common;

use common::{TestCluster, WAIT, propose_any, wait_for};
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::kv::{KvCommand, KvResponse, KvStateMachine};
use nodedb_cluster_raft::{MembershipError, MultiRaft, RaftTimings, Role};
use std::collections::BTreeMap;
use std::future::Future;

const WRITES: u64 = 120;
/// Attempts of one membership step that is retried on NotLeader or InProgress.
const CHANGE_ATTEMPTS_MAX: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_while_writing_lose_nothing() {
    let mut cluster = TestCluster::new(4, 21).await;
    let group = GroupId(1);
    let voters = [NodeId(1), NodeId(2), NodeId(3)];
    cluster.create_group(group, &voters).await;
    cluster.wait_leader(group).await;
    // The new node hosts an empty replica that learns the membership from the leader.
    cluster.nodes[&NodeId(4)]
        .multi
        .open_group(
            group,
            Box::new(nodedb_cluster_raft::kv::KvStateMachine::new()),
        )
        .await
        .expect("open on the new node");

    let handles = cluster.handles();
    let writer = tokio::spawn(write_keys(handles.clone(), group));

    on_leader(&handles, group, |multi| async move {
        multi
            .add_learner(group, NodeId(4), common::address(NodeId(4)))
            .await
    })
    .await;
    wait_for("the learner to catch up", WAIT, || {
        let leader = handles.values().find_map(|multi| {
            let status = multi.status(group)?;
            (status.leader == Some(status.node)).then_some(status)
        })?;
        let learner = leader
            .followers
            .iter()
            .find(|progress| progress.node == NodeId(4))?;
        (learner.lag < 5).then_some(())
    })
    .await;
    promote_then_remove(&handles, group, NodeId(4), NodeId(1)).await;

    let acknowledged = writer.await.expect("writer task");
    assert_eq!(
        acknowledged.len() as u64,
        WRITES,
        "every write was eventually acknowledged"
    );

    let members = [NodeId(2), NodeId(3), NodeId(4)];
    let leader = cluster.wait_leader_among(group, &members).await;
    let status = cluster.status(leader, group).expect("status");
    assert_eq!(status.voters, members.to_vec());
    assert!(status.learners.is_empty());
    assert!(!status.joint);

    let old_replica = &cluster.nodes[&NodeId(1)].multi;
    let term_before = old_replica.status(group).expect("old replica").term;
    old_replica
        .remove_group(group)
        .await
        .expect("remove the old replica");
    assert!(old_replica.status(group).is_none());
    // A replica created on the node again starts from the vote of the removed one, so that it
    // takes nothing from leaders of terms that node already voted past, and never leads.
    old_replica
        .open_group(group, Box::new(KvStateMachine::new()))
        .await
        .expect("create the replica again");
    wait_for(
        "the replica created again to take its predecessor's term",
        WAIT,
        || {
            let status = old_replica.status(group)?;
            (status.term >= term_before && status.leader != Some(NodeId(1))).then_some(())
        },
    )
    .await;
    old_replica
        .remove_group(group)
        .await
        .expect("remove it again");
    cluster.wait_converged(group).await;
    for key in acknowledged.keys().step_by(7) {
        for node in members {
            assert_eq!(
                cluster.local_get(node, group, key).await.as_deref(),
                Some("ok")
            );
        }
    }
    cluster.shutdown().await;
}

/// Writes `WRITES` keys one after the other; returns the acknowledged ones.
async fn write_keys(nodes: BTreeMap<NodeId, MultiRaft>, group: GroupId) -> BTreeMap<String, u64> {
    let mut acknowledged = BTreeMap::new();
    for i in 0..WRITES {
        let key = format!("w-{i:04}");
        let command = KvCommand::Put {
            key: key.clone().into_bytes(),
            value: b"ok".to_vec(),
        };
        // A timeout (outcome unknown) is retried: puts are idempotent.
        for _ in 0..10 {
            if let Ok((applied, response)) = propose_any(&nodes, group, command.clone()).await {
                assert_eq!(response, KvResponse::Written);
                acknowledged.insert(key.clone(), applied.index.0);
                break;
            }
        }
    }
    acknowledged
}

/// Test timings with quiescence off: the replicas in these tests must campaign when their
/// election timers run out, which a quiet replica never does.
fn never_quiet() -> RaftTimings {
    RaftTimings {
        quiesce_after_ms: 0,
        ..RaftTimings::for_tests()
    }
}

/// Makes the learner `promoted` a voter of `group`, then removes `removed` from it.
async fn promote_then_remove(
    nodes: &BTreeMap<NodeId, MultiRaft>,
    group: GroupId,
    promoted: NodeId,
    removed: NodeId,
) {
    on_leader(nodes, group, |multi| async move {
        multi.promote(group, promoted).await
    })
    .await;
    on_leader(nodes, group, |multi| async move {
        multi.remove_replica(group, removed).await
    })
    .await;
}

/// Runs one membership step on whichever node leads `group`, retrying while leadership moves
/// or a previous change is still committing.
async fn on_leader<F, Fut>(nodes: &BTreeMap<NodeId, MultiRaft>, group: GroupId, step: F)
where
    F: Fn(MultiRaft) -> Fut,
    Fut: Future<Output = Result<(), MembershipError>>,
{
    let mut last = None;
    for _ in 0..CHANGE_ATTEMPTS_MAX {
        let leader = nodes.values().find(|multi| {
            multi
                .status(group)
                .is_some_and(|status| status.leader == Some(status.node))
        });
        if let Some(leader) = leader {
            match step(leader.clone()).await {
                Ok(()) => return,
                Err(
                    error
                    @ (MembershipError::NotLeader { .. } | MembershipError::InProgress { .. }),
                ) => {
                    last = Some(error);
                }
                Err(error) => panic!("membership change failed: {error}"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("membership change did not go through: {last:?}");
}

/// A replica removed from a node and created there again has an empty log. A member that was
/// cut off while the node was removed still holds the old configuration, which counts the
/// node as a voter: the empty replica must not help it to a quorum, or it would lead with a
/// stale log and overwrite what the current members committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_created_again_does_not_elect_a_member_that_missed_its_removal() {
    let mut cluster = TestCluster::with_timings(4, 23, never_quiet()).await;
    let group = GroupId(1);
    cluster
        .create_group(group, &[NodeId(1), NodeId(2), NodeId(3)])
        .await;
    let handles = cluster.handles();
    if cluster.wait_leader(group).await != NodeId(2) {
        on_leader(&handles, group, |multi| async move {
            multi.transfer_leader(group, NodeId(2)).await
        })
        .await;
    }
    cluster
        .wait_leader_among(group, &[NodeId(1), NodeId(2), NodeId(3)])
        .await;
    cluster.put(group, "before", "1").await;
    cluster.wait_converged(group).await;

    // Node 3 misses everything from here on: node 4 joins, node 1 is removed.
    cluster.network.isolate(NodeId(3));
    cluster.nodes[&NodeId(4)]
        .multi
        .open_group(group, Box::new(KvStateMachine::new()))
        .await
        .expect("open on the new node");
    on_leader(&handles, group, |multi| async move {
        multi
            .add_learner(group, NodeId(4), common::address(NodeId(4)))
            .await
    })
    .await;
    promote_then_remove(&handles, group, NodeId(4), NodeId(1)).await;
    cluster.put(group, "after", "2").await;
    let node_1 = &cluster.nodes[&NodeId(1)].multi;
    node_1
        .remove_group(group)
        .await
        .expect("remove node 1's replica");
    node_1
        .open_group(group, Box::new(KvStateMachine::new()))
        .await
        .expect("create node 1's replica again");

    // Node 3 now reaches only node 1: together they are a majority of node 3's old view.
    cluster.network.heal();
    cluster
        .network
        .partition(&[NodeId(1), NodeId(3)], &[NodeId(2), NodeId(4)]);
    let node_3 = cluster.nodes[&NodeId(3)].multi.clone();
    let stale_write = KvCommand::Put {
        key: b"stale".to_vec(),
        value: b"3".to_vec(),
    }
    .encode();
    // Many election timeouts: node 3 campaigns again and again.
    for _ in 0..30 {
        let role = node_3.status(group).expect("node 3's replica").role;
        assert_ne!(role, Role::Leader, "node 3 was elected with a stale log");
        if let Ok(applied) = node_3.propose(group, stale_write.clone()).await {
            panic!(
                "node 3 committed a write at {:?} with a stale log",
                applied.index
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    cluster.network.heal();
    let members = [NodeId(2), NodeId(3), NodeId(4)];
    cluster.wait_leader_among(group, &members).await;
    assert_eq!(cluster.get(group, "before").await.as_deref(), Some("1"));
    assert_eq!(cluster.get(group, "after").await.as_deref(), Some("2"));
    assert_eq!(cluster.get(group, "stale").await, None);
    cluster.shutdown().await;
}

/// The node that created a group is its only voter in the group's first configuration. A
/// replica created on it again after a removal replays the log from the start; holding just
/// that first configuration it is a quorum of one, and it must not elect itself leader of a
/// phantom group (which took acknowledged writes in a real cluster). The replica here is
/// given the group's first two entries, as a leader's first batch would, and nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_created_again_does_not_lead_an_old_configuration_alone() {
    let mut cluster = TestCluster::with_timings(3, 24, never_quiet()).await;
    let group = GroupId(1);
    let voters = [NodeId(1), NodeId(2), NodeId(3)];
    cluster.create_group(group, &voters).await;
    let handles = cluster.handles();
    on_leader(&handles, group, |multi| async move {
        multi.transfer_leader(group, NodeId(2)).await
    })
    .await;
    cluster
        .wait_leader_among(group, &[NodeId(2), NodeId(3)])
        .await;
    cluster.put(group, "k", "1").await;
    on_leader(&handles, group, |multi| async move {
        multi.remove_replica(group, NodeId(1)).await
    })
    .await;
    let node_1 = &cluster.nodes[&NodeId(1)];
    node_1
        .multi
        .remove_group(group)
        .await
        .expect("remove node 1's replica");
    let first_entries = cluster.nodes[&NodeId(2)]
        .log
        .entries(group, 0..2)
        .expect("the group's first entries");
    node_1
        .log
        .append_durable(group, first_entries)
        .await
        .expect("give them to node 1");
    node_1
        .multi
        .open_group(group, Box::new(KvStateMachine::new()))
        .await
        .expect("create node 1's replica again");

    let write = KvCommand::Put {
        key: b"phantom".to_vec(),
        value: b"1".to_vec(),
    }
    .encode();
    // Many ticks and election timeouts: a quorum of one elects itself at the first tick.
    for _ in 0..10 {
        let status = node_1.multi.status(group).expect("node 1's replica");
        assert_ne!(
            status.role,
            Role::Leader,
            "node 1 leads the group's first configuration alone"
        );
        if let Ok(applied) = node_1.multi.propose(group, write.clone()).await {
            panic!("node 1 committed a write at {:?} alone", applied.index);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.get(group, "k").await.as_deref(), Some("1"));
    cluster.shutdown().await;
}
