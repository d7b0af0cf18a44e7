//! A vShard handed over between two groups after the source's fence: every replica of the
//! target takes it from the source's replica on its own node, or from the source's leader
//! when its node has none, checks it against the source's digest and serves it; nothing of it
//! travels through the target's log. A replica that replays the step after a restart takes it
//! again; once every replica of the target has a snapshot past the step and has purged its
//! log through it, the source may drop the vShard and the target still restarts whole.

mod common;

use bytes::Bytes;
use common::{TestCluster, on_leader, wait_for};
use futures::future::BoxFuture;
use nodedb_cluster_core::{GroupId, MigrationId, NodeId, VShardId, keys_in_vshard, vshard_for_key};
use nodedb_cluster_raft::kv::KvCommand;
use nodedb_cluster_raft::{
    FencedExport, FencedVShards, LogIndex, MultiRaft, StepOutcome, VShardClaim, VShardStep,
};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

const M1: MigrationId = MigrationId(1);
const SOURCE: GroupId = GroupId(1);
const TARGET: GroupId = GroupId(2);
const KEYS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vshard_is_handed_over_on_each_node_and_survives_restarts_and_the_drop() {
    let mut cluster = TestCluster::new(3, 71).await;
    let nodes = [NodeId(1), NodeId(2), NodeId(3)];
    cluster.create_group(SOURCE, &nodes).await;
    cluster.create_group(TARGET, &nodes).await;
    let (moving, keys) = fill(&cluster).await;

    let handed = hand_over(&cluster, moving).await;
    assert!(handed.applied);
    assert_eq!(handed.claim, VShardClaim::Handed(M1));
    // Taken again (a retry, another driver): nothing changes.
    let again = hand_over(&cluster, moving).await;
    assert!(again.applied);
    assert_eq!(again.claim, VShardClaim::Handed(M1));
    cluster.wait_converged(TARGET).await;
    assert_every_replica_holds(&cluster, &nodes, &keys).await;

    // A replica restarted before its snapshot replays the step and takes the vShard again.
    cluster.crash_node(NodeId(3)).await;
    cluster.restart_node(NodeId(3)).await;
    cluster.wait_converged(TARGET).await;
    assert_every_replica_holds(&cluster, &nodes, &keys).await;

    make_durable(&cluster, &nodes, again.index).await;
    drop_in_source(&cluster, moving).await;
    cluster.wait_converged(SOURCE).await;
    for node in nodes {
        assert_eq!(cluster.local_get(node, SOURCE, &keys[0]).await, None);
    }
    // With the source's copy gone, a restarted replica rebuilds the vShard from its snapshot.
    for node in nodes {
        cluster.crash_node(node).await;
        cluster.restart_node(node).await;
    }
    cluster.wait_converged(TARGET).await;
    assert_every_replica_holds(&cluster, &nodes, &keys).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_source_on_its_node_reads_it_from_the_source_leader() {
    let mut cluster = TestCluster::new(4, 72).await;
    let leaders = Arc::new(LiveLeaders(Arc::clone(&cluster.live)));
    for node in cluster.nodes.values() {
        node.multi.set_fenced_vshards(leaders.clone());
    }
    cluster
        .create_group(SOURCE, &[NodeId(1), NodeId(2), NodeId(3)])
        .await;
    let target_nodes = [NodeId(2), NodeId(3), NodeId(4)];
    cluster.create_group(TARGET, &target_nodes).await;
    let (moving, keys) = fill(&cluster).await;
    let handed = hand_over(&cluster, moving).await;
    assert_eq!(handed.claim, VShardClaim::Handed(M1));
    cluster.wait_converged(TARGET).await;
    assert_every_replica_holds(&cluster, &target_nodes, &keys).await;
    cluster.shutdown().await;
}

/// Writes [`KEYS`] keys of one vShard into the source, and one key of another vShard, then
/// fences the vShard in the source; the vShard and its keys.
async fn fill(cluster: &TestCluster) -> (VShardId, Vec<String>) {
    let moving = vshard_for_key(b"handed-0");
    let keys: Vec<String> = keys_in_vshard("handed-", moving).take(KEYS).collect();
    for key in &keys {
        let command = KvCommand::Put {
            key: key.as_bytes().to_vec(),
            value: format!("value of {key}").into_bytes(),
        }
        .encode();
        on_leader(cluster, SOURCE, |multi| {
            let command = command.clone();
            async move { multi.propose_vshard(SOURCE, moving, command).await }
        })
        .await
        .expect("write to the source");
    }
    cluster.put(SOURCE, "elsewhere", "stays").await;
    let fence = step(cluster, SOURCE, moving, VShardStep::Fence).await;
    assert!(fence.applied);
    (moving, keys)
}

/// The handover step in the target, with the source's digest at its fence.
async fn hand_over(cluster: &TestCluster, moving: VShardId) -> StepOutcome {
    let standing = on_leader(cluster, SOURCE, |multi| async move {
        multi.vshard_digest(SOURCE, moving).await
    })
    .await
    .expect("digest");
    assert_eq!(standing.claim, VShardClaim::Fenced(M1));
    let digest = standing.digest.expect("the kv engine keeps digests");
    assert!(digest.bytes > 0);
    let handover = VShardStep::Handover {
        from: SOURCE,
        fence_index: standing.applied.0,
        digest,
    };
    step(cluster, TARGET, moving, handover).await
}

async fn drop_in_source(cluster: &TestCluster, moving: VShardId) {
    assert!(
        step(cluster, SOURCE, moving, VShardStep::Drop)
            .await
            .applied
    );
}

async fn step(
    cluster: &TestCluster,
    group: GroupId,
    vshard: VShardId,
    step: VShardStep,
) -> StepOutcome {
    on_leader(cluster, group, |multi| async move {
        multi
            .migration_step(group, vshard, M1, step, Vec::new())
            .await
    })
    .await
    .expect("migration step")
}

/// Asks every replica of the target until none needs its log through `through`.
async fn make_durable(cluster: &TestCluster, nodes: &[NodeId], through: LogIndex) {
    for node in nodes {
        let multi = cluster.nodes[node].multi.clone();
        let mut durable = false;
        for _ in 0..500 {
            durable = multi
                .make_durable_through(TARGET, through)
                .await
                .expect("durability check");
            if durable {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(durable, "{node}'s replica never stopped needing its log");
        let status = multi.status(TARGET).expect("status");
        assert!(status.snapshot_index >= Some(through));
        assert!(status.purged_index >= Some(through));
    }
}

async fn assert_every_replica_holds(cluster: &TestCluster, nodes: &[NodeId], keys: &[String]) {
    for node in nodes {
        wait_for(
            &format!("{node} to serve the handed-over keys"),
            Duration::from_secs(10),
            || {
                cluster.status(*node, TARGET)?;
                Some(())
            },
        )
        .await;
        for key in keys {
            let value = cluster.local_get(*node, TARGET, key).await;
            assert_eq!(value, Some(format!("value of {key}")), "{key} on {node}");
        }
        assert_eq!(cluster.local_get(*node, TARGET, "elsewhere").await, None);
    }
}

/// Reads a vShard from whichever live node leads its group, as a node's group client would.
struct LiveLeaders(Arc<RwLock<BTreeMap<NodeId, MultiRaft>>>);

impl FencedVShards for LiveLeaders {
    fn export(
        &self,
        group: GroupId,
        vshard: VShardId,
    ) -> BoxFuture<'static, Result<FencedExport, String>> {
        let nodes: Vec<MultiRaft> = self.0.read().expect("live").values().cloned().collect();
        Box::pin(async move {
            let leader = nodes
                .into_iter()
                .find(|multi| multi.is_leader(group))
                .ok_or(format!("no live leader of {group}"))?;
            let export = leader
                .export_vshard(group, vshard)
                .await
                .map_err(|error| error.to_string())?;
            Ok(FencedExport {
                applied: export.applied,
                serving: export.serving,
                parts: export.parts.into_iter().map(Bytes::from).collect(),
            })
        })
    }
}
