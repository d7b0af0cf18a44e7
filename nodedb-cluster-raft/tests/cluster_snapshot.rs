//! A multi-megabyte snapshot streamed in many chunks to a follower that was down while the
//! leader compacted its log; the follower then survives its own restart from that snapshot.

mod common;

use common::{TestCluster, WAIT, wait_for};
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::RaftTimings;

const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const VALUE_BYTES: usize = 64 * 1024;
const WRITES: u64 = 48;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_snapshot_streams_in_chunks_and_survives_a_restart() {
    let timings = RaftTimings {
        snapshot_logs_since_last: 16,
        logs_to_keep_after_snapshot: 2,
        ..RaftTimings::for_tests()
    };
    let mut cluster = TestCluster::with_timings(3, 41, timings).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let leader = cluster.wait_leader(group).await;
    let lagging = VOTERS
        .iter()
        .copied()
        .find(|node| *node != leader)
        .expect("a follower");
    cluster.crash_node(lagging).await;

    let value = "v".repeat(VALUE_BYTES);
    for i in 0..WRITES {
        cluster.put(group, &format!("big-{i}"), &value).await;
    }
    let leader = cluster.wait_leader(group).await;
    wait_for("the leader to purge past the follower", WAIT, || {
        let purged = cluster.status(leader, group)?.purged_index?;
        (purged.0 > 10).then_some(())
    })
    .await;

    cluster.restart_node(lagging).await;
    let hash = cluster.wait_converged(group).await;
    let snapshots = cluster
        .data_dir(lagging)
        .join("groups")
        .join("1")
        .join("snapshots");
    let size: u64 = std::fs::read_dir(&snapshots)
        .expect("snapshot dir")
        .flatten()
        .filter(|entry| {
            entry
                .path()
                .extension()
                .is_some_and(|extension| extension == "snap")
        })
        .map(|entry| entry.metadata().expect("metadata").len())
        .sum();
    assert!(
        size > 2 * 1024 * 1024,
        "snapshot of {size} bytes spans several stream chunks"
    );

    cluster.crash_node(lagging).await;
    cluster.restart_node(lagging).await;
    assert_eq!(cluster.wait_converged(group).await, hash);
    let last = format!("big-{}", WRITES - 1);
    assert_eq!(
        cluster
            .local_get(lagging, group, &last)
            .await
            .map(|v| v.len()),
        Some(VALUE_BYTES)
    );
    cluster.shutdown().await;
}

/// Few entries, each large: the bytes they carry, not their count (far below the entry bound
/// here), have the log snapshotted and purged on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_large_entries_is_compacted_by_its_bytes() {
    let timings = RaftTimings {
        snapshot_logs_since_last: 10_000,
        snapshot_log_bytes_since_last: 256 * 1024,
        logs_to_keep_after_snapshot: 2,
        ..RaftTimings::for_tests()
    };
    let mut cluster = TestCluster::with_timings(3, 42, timings).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    cluster.wait_leader(group).await;

    let value = "v".repeat(VALUE_BYTES);
    let writes = 24;
    for i in 0..writes {
        cluster.put(group, &format!("big-{i}"), &value).await;
    }
    for node in VOTERS {
        let purged = wait_for("every replica to purge its log", WAIT, || {
            cluster.status(node, group)?.purged_index
        })
        .await;
        let snapshot = cluster.status(node, group).and_then(|s| s.snapshot_index);
        assert!(
            snapshot.is_some_and(|snapshot| snapshot.0 >= 4),
            "{node}: snapshot at {snapshot:?} after {writes} entries of {VALUE_BYTES} B, purged through {purged:?}"
        );
    }
    cluster.wait_converged(group).await;
    cluster.shutdown().await;
}

/// openraft keeps a count of entries behind a snapshot; large entries are kept only up to
/// `log_bytes_to_keep_after_snapshot`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_behind_a_snapshot_keeps_at_most_its_bytes() {
    let kept_entries = 2;
    let timings = RaftTimings {
        snapshot_logs_since_last: 10_000,
        snapshot_log_bytes_since_last: 256 * 1024,
        logs_to_keep_after_snapshot: 1000,
        log_bytes_to_keep_after_snapshot: kept_entries * VALUE_BYTES as u64,
        ..RaftTimings::for_tests()
    };
    let mut cluster = TestCluster::with_timings(3, 43, timings).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    cluster.wait_leader(group).await;

    let value = "v".repeat(VALUE_BYTES);
    for i in 0..24 {
        cluster.put(group, &format!("big-{i}"), &value).await;
    }
    for node in VOTERS {
        // Each entry carries a little more than a value: at most `kept_entries - 1` whole
        // entries (and the snapshot's own) stay behind the snapshot.
        let (purged, snapshot) = wait_for(
            "every replica to purge down to its kept bytes",
            WAIT,
            || {
                let status = cluster.status(node, group)?;
                let (purged, snapshot) = (status.purged_index?.0, status.snapshot_index?.0);
                (snapshot >= 4 && snapshot - purged < kept_entries).then_some((purged, snapshot))
            },
        )
        .await;
        assert!(
            purged > 0,
            "{node}: purged through {purged}, snapshot at {snapshot}"
        );
    }
    cluster.wait_converged(group).await;
    cluster.shutdown().await;
}
