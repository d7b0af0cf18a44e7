//! Quiescence of idle groups over the in-memory transport: idle groups stop their timers on
//! every replica, any use wakes them, a quiet group still fails over when its leader crashes
//! or is cut off, and a follower cut off from a live quiet leader cannot unseat it.

mod common;

use common::{CLIENT_ATTEMPTS_MAX, TestCluster, WAIT, wait_for};
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::kv::KvCommand;
use nodedb_cluster_raft::{Applied, ProposeError};
use std::time::Duration;

const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const GROUPS: [GroupId; 4] = [GroupId(1), GroupId(2), GroupId(3), GroupId(4)];

async fn quiet_cluster(seed: u64) -> TestCluster {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cluster = TestCluster::new(3, seed).await;
    for group in GROUPS {
        cluster.create_group(group, &VOTERS).await;
        cluster.wait_leader(group).await;
        cluster.put(group, "k", "v1").await;
    }
    for group in GROUPS {
        wait_quiet(&cluster, group, &VOTERS).await;
    }
    cluster
}

/// Waits until every replica of `group` on `nodes` reports itself quiesced.
async fn wait_quiet(cluster: &TestCluster, group: GroupId, nodes: &[NodeId]) {
    wait_for(&format!("{group} quiet on {nodes:?}"), WAIT, || {
        cluster.quiesced(nodes, &[group]).then_some(())
    })
    .await;
}

/// Waits until a quiet leader's quorum lease has lapsed (it lasts one longest election
/// timeout).
async fn let_the_lease_lapse(cluster: &TestCluster) {
    let lease = Duration::from_millis(cluster.timings.election_timeout_ms_max);
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
}

/// Puts `value` under key `k` of `group` with one proposal on `node`, never retried.
async fn put_once(
    cluster: &TestCluster,
    node: NodeId,
    group: GroupId,
    value: &str,
) -> Result<Applied, ProposeError> {
    let put = KvCommand::Put {
        key: b"k".to_vec(),
        value: value.as_bytes().to_vec(),
    };
    cluster.nodes[&node]
        .multi
        .propose(group, put.encode())
        .await
}

fn awake_anywhere(cluster: &TestCluster, group: GroupId) -> bool {
    VOTERS
        .iter()
        .any(|node| cluster.status(*node, group).is_some_and(|s| !s.quiesced))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_go_quiet_and_send_only_probes() {
    let cluster = quiet_cluster(31).await;
    let terms: Vec<u64> = GROUPS
        .iter()
        .map(|group| cluster.status(NodeId(1), *group).expect("status").term)
        .collect();
    let before = cluster.network.stats().sent;
    let quiet_for = Duration::from_secs(2);
    tokio::time::sleep(quiet_for).await;
    let sent = cluster.network.stats().sent - before;
    // Awake, 4 groups send 2 heartbeats per 50 ms each: 320 in 2 s. Quiet, each follower
    // probes each leader node once per 50 ms: at most 2 x 3 x 40 = 240, usually far fewer
    // (two leader nodes at most are probed by a node that leads the other groups).
    let heartbeats_awake = GROUPS.len() as u64 * 2 * 40;
    println!("{sent} messages in {quiet_for:?} of quiet");
    assert!(
        sent < heartbeats_awake,
        "{sent} messages in {quiet_for:?} of quiet (awake: {heartbeats_awake} heartbeats)"
    );
    for (group, term) in GROUPS.iter().zip(terms) {
        for node in VOTERS {
            let status = cluster.status(node, *group).expect("status");
            assert!(status.quiesced, "{group} woke on {node}: {status:?}");
            assert_eq!(status.term, term, "{group} held an election while quiet");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_or_a_read_wakes_a_quiet_group_without_an_election() {
    let cluster = quiet_cluster(32).await;
    let group = GROUPS[0];
    let leader = cluster.wait_leader(group).await;
    let term = cluster.status(leader, group).expect("status").term;

    // Asked once, on the leader, after the quiet leader's quorum lease lapsed (it lasts one
    // maximal election timeout): the write waits for the lease to be renewed instead of
    // being refused as "not the leader".
    let_the_lease_lapse(&cluster).await;
    put_once(&cluster, leader, group, "v2")
        .await
        .expect("a write to the quiet leader");
    assert!(
        awake_anywhere(&cluster, group),
        "a write leaves the group awake"
    );
    wait_quiet(&cluster, group, &VOTERS).await;
    assert_eq!(cluster.get(group, "k").await.as_deref(), Some("v2"));
    wait_quiet(&cluster, group, &VOTERS).await;

    assert_eq!(cluster.status(leader, group).expect("status").term, term);
    for node in VOTERS {
        assert_eq!(
            cluster.local_get(node, group, "k").await.as_deref(),
            Some("v2")
        );
    }
    // The other groups never woke up.
    for other in &GROUPS[1..] {
        for node in VOTERS {
            assert!(cluster.status(node, *other).expect("status").quiesced);
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_group_elects_a_new_leader_when_its_leader_crashes() {
    let mut cluster = quiet_cluster(33).await;
    let group = GROUPS[0];
    let old_leader = cluster.wait_leader(group).await;
    let survivors: Vec<NodeId> = VOTERS
        .iter()
        .copied()
        .filter(|node| *node != old_leader)
        .collect();

    cluster.crash_node(old_leader).await;
    let new_leader = cluster.wait_leader_among(group, &survivors).await;
    assert_ne!(new_leader, old_leader);
    assert_eq!(cluster.get(group, "k").await.as_deref(), Some("v1"));
    cluster.put(group, "k", "v2").await;

    cluster.restart_node(old_leader).await;
    cluster.wait_converged(group).await;
    wait_quiet(&cluster, group, &VOTERS).await;
    assert_eq!(
        cluster.local_get(old_leader, group, "k").await.as_deref(),
        Some("v2")
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_group_cut_off_from_its_leader_elects_another() {
    let cluster = quiet_cluster(34).await;
    let group = GROUPS[1];
    let old_leader = cluster.wait_leader(group).await;
    let majority: Vec<NodeId> = VOTERS
        .iter()
        .copied()
        .filter(|node| *node != old_leader)
        .collect();

    cluster.network.partition(&[old_leader], &majority);
    let command = nodedb_cluster_raft::kv::KvCommand::Put {
        key: b"k".to_vec(),
        value: b"majority".to_vec(),
    }
    .encode();
    // Both followers wake when the leader falls silent; their first elections may split.
    let mut committed = false;
    for _ in 0..CLIENT_ATTEMPTS_MAX {
        let new_leader = cluster.wait_leader_among(group, &majority).await;
        assert_ne!(new_leader, old_leader);
        let proposed = cluster.nodes[&new_leader]
            .multi
            .propose(group, command.clone())
            .await;
        if proposed.is_ok() {
            committed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(committed, "the majority commits");

    cluster.network.heal();
    assert_eq!(cluster.get(group, "k").await.as_deref(), Some("majority"));
    cluster.wait_converged(group).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_does_not_unseat_the_leaders_of_quiet_groups() {
    let mut cluster = quiet_cluster(35).await;
    let follower = NodeId(3);
    let before: Vec<(NodeId, u64)> = GROUPS
        .iter()
        .map(|group| {
            let status = cluster.status(NodeId(1), *group).expect("status");
            (status.leader.expect("a leader"), status.term)
        })
        .collect();
    // Node 3 must follow somewhere for the test to say anything.
    assert!(before.iter().any(|(leader, _)| *leader != follower));

    cluster.crash_node(follower).await;
    cluster.restart_node(follower).await;
    for group in GROUPS {
        wait_quiet(&cluster, group, &VOTERS).await;
    }
    for (group, (leader, term)) in GROUPS.iter().zip(before) {
        if leader == follower {
            continue;
        }
        let status = cluster.status(leader, *group).expect("status");
        assert_eq!(
            (status.leader, status.term),
            (Some(leader), term),
            "{group}: the restart of {follower} caused an election"
        );
    }
    cluster.shutdown().await;
}

/// A follower cut off from its quiet leader (and only from it) wakes and campaigns; the other
/// follower, which still reaches the leader, must not help it unseat a leader that is alive:
/// its lease would have renewed had the group been awake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_a_live_quiet_leader_cannot_unseat_it() {
    let cluster = quiet_cluster(36).await;
    let group = GROUPS[2];
    let leader = cluster.wait_leader(group).await;
    let term = cluster.status(leader, group).expect("status").term;
    let followers: Vec<NodeId> = VOTERS
        .iter()
        .copied()
        .filter(|node| *node != leader)
        .collect();
    let cut_off = followers[0];

    cluster.network.partition(&[cut_off], &[leader]);
    // Long enough for the cut-off follower to find its leader silent, wake and campaign
    // several times (test timings: elections within 150-300 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = cluster.status(leader, group).expect("status");
    assert_eq!(
        (status.leader, status.term),
        (Some(leader), term),
        "{cut_off}, cut off from the live leader {leader} only, unseated it"
    );
    let other = cluster.status(followers[1], group).expect("status");
    assert_eq!(
        other.leader,
        Some(leader),
        "the other follower left the leader"
    );

    cluster.network.heal();
    cluster.wait_converged(group).await;
    cluster.shutdown().await;
}

/// A leader that is its group's only voter needs no heartbeat round to write after a quiet
/// spell (it is its own quorum): the write goes through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_single_voter_group_takes_a_write_at_once() {
    let mut cluster = TestCluster::new(1, 37).await;
    let group = GROUPS[0];
    let only = [NodeId(1)];
    cluster.create_group(group, &only).await;
    cluster.put(group, "k", "v1").await;
    wait_quiet(&cluster, group, &only).await;
    put_once(&cluster, NodeId(1), group, "v2")
        .await
        .expect("a write to the quiet single voter");
    assert_eq!(cluster.get(group, "k").await.as_deref(), Some("v2"));
    cluster.shutdown().await;
}

/// A quiet leader cut off from every follower cannot renew its lease: a write to it fails as
/// "not the leader" (definitely not written), not as a timeout of unknown outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_quiet_leader_cut_off_fails_definitely() {
    let cluster = quiet_cluster(38).await;
    let group = GROUPS[1];
    let leader = cluster.wait_leader(group).await;
    let_the_lease_lapse(&cluster).await;
    cluster.network.isolate(leader);
    let refused = put_once(&cluster, leader, group, "cut off").await;
    assert!(
        matches!(refused, Err(ProposeError::NotLeader { .. })),
        "{refused:?}"
    );
    cluster.network.heal();
    assert_eq!(cluster.get(group, "k").await.as_deref(), Some("v1"));
    cluster.shutdown().await;
}
