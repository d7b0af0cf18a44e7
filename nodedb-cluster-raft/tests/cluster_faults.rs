//! Faults over the in-memory transport: leader crash, minority partition, a lagging follower
//! that needs a snapshot, a restart of every node from its files, a leader killed with log
//! writes in flight, a read without a barrier that a crash must not undo, and a leader
//! restarted at once after losing an entry its followers committed, and a leader killed with
//! a snapshot past the end of its durable log.

mod common;

use common::{TestCluster, WAIT, wait_for};
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::kv::{KvCommand, KvStateMachine};
use nodedb_cluster_raft::log_db::LogDbError;
use nodedb_cluster_raft::{ProposeError, RaftTimings, Role};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_elects_a_new_leader_that_keeps_acknowledged_writes() {
    let mut cluster = TestCluster::new(3, 11).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let old_leader = cluster.wait_leader(group).await;
    cluster.put(group, "before", "crash").await;
    let old_term = cluster.status(old_leader, group).expect("status").term;

    cluster.crash_node(old_leader).await;
    let survivors: Vec<NodeId> = VOTERS
        .iter()
        .copied()
        .filter(|node| *node != old_leader)
        .collect();
    let new_leader = cluster.wait_leader_among(group, &survivors).await;
    assert_ne!(new_leader, old_leader);
    assert!(cluster.status(new_leader, group).expect("status").term > old_term);
    assert_eq!(cluster.get(group, "before").await.as_deref(), Some("crash"));
    cluster.put(group, "after", "crash").await;

    cluster.restart_node(old_leader).await;
    cluster.wait_converged(group).await;
    assert_eq!(
        cluster
            .local_get(old_leader, group, "after")
            .await
            .as_deref(),
        Some("crash")
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_commit_while_the_majority_does() {
    let mut cluster = TestCluster::new(3, 12).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let old_leader = cluster.wait_leader(group).await;
    cluster.put(group, "k", "before").await;

    let majority: Vec<NodeId> = VOTERS
        .iter()
        .copied()
        .filter(|node| *node != old_leader)
        .collect();
    cluster.network.partition(&[old_leader], &majority);

    let command = KvCommand::Put {
        key: b"k".to_vec(),
        value: b"minority".to_vec(),
    }
    .encode();
    let isolated = cluster.nodes[&old_leader]
        .multi
        .propose(group, command)
        .await;
    assert!(
        matches!(
            isolated,
            Err(ProposeError::Timeout { .. }) | Err(ProposeError::NotLeader { .. })
        ),
        "a proposal on the isolated side must not succeed: {isolated:?}"
    );
    let barrier = cluster.nodes[&old_leader].multi.read_barrier(group).await;
    assert!(
        barrier.is_err(),
        "an isolated leader cannot confirm a read: {barrier:?}"
    );

    let new_leader = cluster.wait_leader_among(group, &majority).await;
    let command = KvCommand::Put {
        key: b"k".to_vec(),
        value: b"majority".to_vec(),
    }
    .encode();
    cluster.nodes[&new_leader]
        .multi
        .propose(group, command)
        .await
        .expect("majority commits");

    cluster.network.heal();
    cluster.wait_leader(group).await;
    assert_eq!(cluster.get(group, "k").await.as_deref(), Some("majority"));
    cluster.wait_converged(group).await;
    // The outcome of the isolated proposal was unknown to its client; Raft resolved it: the
    // entry was never committed, so no replica has it.
    for node in VOTERS {
        assert_eq!(
            cluster.local_get(node, group, "k").await.as_deref(),
            Some("majority")
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_by_snapshot() {
    let mut cluster = TestCluster::new(3, 13).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let leader = cluster.wait_leader(group).await;
    let lagging = VOTERS
        .iter()
        .copied()
        .find(|node| *node != leader)
        .expect("a follower");
    cluster.crash_node(lagging).await;

    let writes = cluster.timings.snapshot_logs_since_last * 2 + 50;
    for i in 0..writes {
        cluster
            .put(group, &format!("key-{i}"), &format!("value-{i}"))
            .await;
    }
    let leader = cluster.wait_leader(group).await;
    let purged = wait_for("the leader to compact its log", WAIT, || {
        let status = cluster.status(leader, group)?;
        status.purged_index.filter(|purged| purged.0 > 0)
    })
    .await;
    assert!(purged.0 > cluster.timings.logs_to_keep_after_snapshot);

    cluster.restart_node(lagging).await;
    let hash = cluster.wait_converged(group).await;
    let status = cluster.status(lagging, group).expect("status");
    assert!(
        status.snapshot_index.is_some(),
        "the follower restarted behind the purge point must have installed a snapshot"
    );
    assert_eq!(
        cluster.nodes[&lagging]
            .multi
            .state_hash(group)
            .expect("hash"),
        hash
    );
    let last = writes - 1;
    let expected = format!("value-{last}");
    assert_eq!(
        cluster
            .local_get(lagging, group, &format!("key-{last}"))
            .await,
        Some(expected)
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_recovers_data_and_votes_without_reinitializing() {
    let mut cluster = TestCluster::new(3, 14).await;
    let groups = [GroupId(0), GroupId(1)];
    for group in groups {
        cluster.create_group(group, &VOTERS).await;
    }
    // Enough writes that each group builds a snapshot: restart = snapshot + log replay.
    let writes = cluster.timings.snapshot_logs_since_last * 2 + 30;
    for i in 0..writes {
        cluster
            .put(groups[i as usize % 2], &format!("key-{i}"), &format!("{i}"))
            .await;
    }
    let mut terms = BTreeMap::new();
    let mut hashes = BTreeMap::new();
    for group in groups {
        hashes.insert(group, cluster.wait_converged(group).await);
        for node in VOTERS {
            terms.insert(
                (node, group),
                cluster.status(node, group).expect("status").term,
            );
        }
    }

    for group in groups {
        wait_for("every replica to build a snapshot", WAIT, || {
            VOTERS
                .iter()
                .all(|node| {
                    cluster
                        .status(*node, group)
                        .is_some_and(|s| s.snapshot_index.is_some())
                })
                .then_some(())
        })
        .await;
    }
    for node in VOTERS {
        cluster.crash_node(node).await;
    }
    for node in VOTERS {
        cluster.restart_node(node).await;
    }
    // Asking to create with members again must not re-initialize a group that has state.
    let members: BTreeMap<NodeId, String> = VOTERS
        .iter()
        .map(|node| (*node, common::address(*node)))
        .collect();
    let again = cluster.nodes[&NodeId(1)]
        .multi
        .create_group(groups[0], Box::new(KvStateMachine::new()), Some(members))
        .await;
    assert!(
        again.is_err(),
        "the group is already hosted after the restart"
    );

    for group in groups {
        cluster.wait_leader(group).await;
        for node in VOTERS {
            let term = cluster.status(node, group).expect("status").term;
            assert!(
                term >= terms[&(node, group)],
                "term went back on {node} in {group}"
            );
        }
        assert_eq!(cluster.wait_converged(group).await, hashes[&group]);
    }
    for i in (0..writes).step_by(37) {
        let group = groups[i as usize % 2];
        assert_eq!(
            cluster.get(group, &format!("key-{i}")).await,
            Some(format!("{i}"))
        );
    }
    cluster.put(groups[1], "after-restart", "yes").await;
    let leader = cluster.wait_leader(groups[1]).await;
    assert_eq!(
        cluster.status(leader, groups[1]).expect("status").role,
        Role::Leader
    );
    cluster.shutdown().await;
}

/// Writers keep putting while the leader is killed with log writes queued (a few of them
/// written, the rest lost) and restarted: every acknowledged put is still there, and the
/// restarted replica converges with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_batch_loses_no_acknowledged_write() {
    const WRITERS: u64 = 8;
    const PUTS_PER_WRITER_MAX: u64 = 400;
    const SURVIVORS: usize = 2;
    let mut cluster = TestCluster::new(3, 15).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let victim = cluster.wait_leader(group).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let live = Arc::clone(&cluster.live);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..PUTS_PER_WRITER_MAX {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("w{writer}-{i}");
                let nodes = live.read().expect("live").clone();
                let put = KvCommand::Put {
                    key: key.clone().into_bytes(),
                    value: b"v".to_vec(),
                };
                if common::propose_any(&nodes, group, put).await.is_ok() {
                    acknowledged.push(key);
                }
            }
            acknowledged
        }));
    }
    wait_for("writes to flow", WAIT, || {
        let applied = cluster.status(victim, group)?.applied_index?;
        (applied.0 > 50).then_some(())
    })
    .await;
    cluster.kill_node(victim, SURVIVORS).await;
    cluster.wait_leader(group).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cluster.restart_node(victim).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    assert!(!acknowledged.is_empty());
    cluster.wait_converged(group).await;
    for key in &acknowledged {
        assert_eq!(
            cluster.local_get(victim, group, key).await.as_deref(),
            Some("v"),
            "acknowledged {key} missing on the restarted replica"
        );
    }
    println!(
        "{} acknowledged puts, all on the restarted replica",
        acknowledged.len()
    );
    cluster.shutdown().await;
}

/// A data group's committed id reaches the disk lazily; a read without a barrier must still
/// never be undone by a crash: the replica restarted alone (no leader to catch up from) answers
/// at least what it answered before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_without_barrier_is_not_undone_by_a_crash() {
    let mut cluster = TestCluster::new(3, 17).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let leader = cluster.wait_leader(group).await;
    let follower = VOTERS
        .into_iter()
        .find(|node| *node != leader)
        .expect("a follower");
    for round in 0..5 {
        let value = format!("v{round}");
        cluster.put(group, "k", &value).await;
        let started = std::time::Instant::now();
        while cluster.local_get(follower, group, "k").await.as_deref() != Some(value.as_str()) {
            assert!(
                started.elapsed() < WAIT,
                "round {round}: the follower never applied"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Every queued log write of every node is lost, as under kill -9.
        for node in VOTERS {
            cluster.crash_node(node).await;
        }
        cluster.restart_node(follower).await;
        assert_eq!(
            cluster.local_get(follower, group, "k").await.as_deref(),
            Some(value.as_str()),
            "round {round}: the restarted follower went back"
        );
        for node in VOTERS.into_iter().filter(|node| *node != follower) {
            cluster.restart_node(node).await;
        }
        cluster.wait_leader(group).await;
    }
    cluster.shutdown().await;
}

/// A leader's entry commits on its followers' acknowledgements even while its own append still
/// waits in its log's queue. Killed then and restarted before anyone campaigns, the leader must
/// not go on in its old term: its log lacks that committed entry, and its next entry would take
/// the same term and index, which the followers would take for the entry they hold (two
/// replicas applying different commands at one position).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_at_once_does_not_reuse_the_position_of_an_entry_it_lost() {
    // Long elections: the followers must not campaign while the leader is down.
    let timings = RaftTimings {
        election_timeout_ms_min: 3_000,
        election_timeout_ms_max: 4_000,
        quiesce_after_ms: 0,
        ..RaftTimings::for_tests()
    };
    let mut cluster = TestCluster::with_timings(3, 26, timings).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let leader = cluster.wait_leader(group).await;
    cluster.put(group, "before", "1").await;
    cluster.wait_converged(group).await;
    let follower = *VOTERS
        .iter()
        .find(|node| **node != leader)
        .expect("a follower");
    let committed_before = cluster
        .status(follower, group)
        .expect("status")
        .commit_index;

    // Hold the leader's log writer: what the leader appends from now on waits in its queue,
    // while the followers write it.
    let held = HeldWriter::hold(&cluster, leader).await;
    let leader_multi = cluster.nodes[&leader].multi.clone();
    let lost = tokio::spawn(async move {
        let put = KvCommand::Put {
            key: b"lost".to_vec(),
            value: b"2".to_vec(),
        };
        leader_multi.propose(group, put.encode()).await
    });
    wait_for("the followers to commit the entry", WAIT, || {
        let committed = cluster.status(follower, group)?.commit_index;
        (committed > committed_before).then_some(())
    })
    .await;

    // Kill the leader (its queued writes are lost) and restart it at once.
    held.kill(&mut cluster, leader).await;
    // The followers committed the entry: the leader may have applied and acknowledged it
    // before the kill (a data group applies before its own append is durable) or not.
    let _acknowledged_or_not = lost.await.expect("proposal task");
    cluster.restart_node(leader).await;
    // The restarted leader is a follower now: the group waits for an election.
    cluster.wait_leader(group).await;
    cluster.put(group, "after", "3").await;
    cluster.wait_converged(group).await;
    assert_eq!(cluster.get(group, "lost").await.as_deref(), Some("2"));
    assert_eq!(cluster.get(group, "after").await.as_deref(), Some("3"));
    for node in VOTERS {
        assert_eq!(
            cluster.local_get(node, group, "lost").await.as_deref(),
            Some("2"),
            "the committed entry is missing on {node}"
        );
    }
    cluster.shutdown().await;
}

/// A data group applies what its followers committed before its own append of it is durable,
/// and may build a snapshot of it. Killed then, the replica restarts with a snapshot past the
/// end of its durable log: it must take the snapshot as the start of its log and catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_with_a_snapshot_past_its_durable_log_restarts_from_the_snapshot() {
    let timings = RaftTimings {
        quiesce_after_ms: 0,
        snapshot_logs_since_last: 100,
        // No purge behind the snapshot: a purge seen after the restart is then openraft's
        // cleanup of the log that ends before the snapshot.
        logs_to_keep_after_snapshot: 1000,
        ..RaftTimings::for_tests()
    };
    let mut cluster = TestCluster::with_timings(3, 27, timings).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let leader = cluster.wait_leader(group).await;
    cluster.put(group, "before", "1").await;
    let durable_last = cluster
        .status(leader, group)
        .expect("status")
        .last_log_index
        .expect("a log");

    // Hold the leader's log writer: from now on the leader's appends wait in its queue, and
    // the kill loses them.
    let held = HeldWriter::hold(&cluster, leader).await;
    let writes = cluster.timings.snapshot_logs_since_last + 20;
    let leader_multi = cluster.nodes[&leader].multi.clone();
    for i in 0..writes {
        let put = KvCommand::Put {
            key: format!("key-{i}").into_bytes(),
            value: format!("value-{i}").into_bytes(),
        };
        leader_multi
            .propose(group, put.encode())
            .await
            .unwrap_or_else(|error| {
                panic!("put {i}: {error:?}, {:?}", cluster.status(leader, group))
            });
    }
    let snapshot = wait_for("the leader to snapshot what it applied", WAIT, || {
        let status = cluster.status(leader, group)?;
        status
            .snapshot_index
            .filter(|index| index.0 > durable_last.0)
    })
    .await;

    held.kill(&mut cluster, leader).await;
    cluster.restart_node(leader).await;
    wait_for(
        "the restarted replica to start from its snapshot",
        WAIT,
        || {
            let status = cluster.status(leader, group)?;
            // Its log lost everything after `durable_last`: it starts past the snapshot's end,
            // purged through it (no purge behind a snapshot happens otherwise here).
            (status.snapshot_index >= Some(snapshot)
                && status.applied_index >= Some(snapshot)
                && status.purged_index >= Some(snapshot))
            .then_some(())
        },
    )
    .await;
    cluster.wait_leader(group).await;
    cluster.put(group, "after", "2").await;
    cluster.wait_converged(group).await;
    for i in [0, writes - 1] {
        assert_eq!(
            cluster.local_get(leader, group, &format!("key-{i}")).await,
            Some(format!("value-{i}")),
            "key-{i} on the restarted replica"
        );
    }
    assert_eq!(
        cluster.local_get(leader, group, "after").await.as_deref(),
        Some("2")
    );
    cluster.shutdown().await;
}

/// A node's log writer held inside the completion callback of a scratch group's write, with
/// the scratch group's removal queued behind it: the node's later log writes wait in its queue.
struct HeldWriter {
    release: std::sync::mpsc::Sender<()>,
    scratch_removed: tokio::task::JoinHandle<Result<(), LogDbError>>,
}

impl HeldWriter {
    async fn hold(cluster: &TestCluster, node: NodeId) -> HeldWriter {
        let scratch = GroupId(99);
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let log = cluster.nodes[&node].log.clone();
        log.append(
            scratch,
            vec![(1, b"hold".to_vec())],
            Box::new(move |_| {
                let _ = held_tx.send(());
                let _ = release_rx.recv_timeout(WAIT);
            }),
        );
        held_rx.recv_timeout(WAIT).expect("the writer is held");
        let scratch_removed = tokio::spawn(async move { log.remove_group(scratch).await });
        // Let the removal reach the queue before anything else does.
        tokio::time::sleep(Duration::from_millis(50)).await;
        HeldWriter {
            release,
            scratch_removed,
        }
    }

    /// Kills `node` as kill -9 would: of its queued writes only the scratch group's removal
    /// survives. The writer is released meanwhile, so that the kill can finish.
    async fn kill(self, cluster: &mut TestCluster, node: NodeId) {
        let release = self.release;
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let _ = release.send(());
        });
        cluster.kill_node(node, 1).await;
        releaser.join().expect("release thread");
        self.scratch_removed
            .await
            .expect("scratch removal task")
            .expect("the scratch group is removed");
    }
}
