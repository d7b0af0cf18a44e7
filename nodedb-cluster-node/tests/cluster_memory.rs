//! Whole nodes in one process over the in-memory network: bootstrap, join, restart, failure
//! detection and return (damped), the KV store served through any node, and vShard moves.

mod memory_cluster;

use memory_cluster::{NUM_GROUPS, config, eventually, start, start_three};
use nodedb_cluster_core::{GroupId, NodeId, NodeState, VShardId, keys_in_vshard, vshard_for_key};
use nodedb_cluster_node::cluster::{Cluster, ClusterConfig};
use nodedb_cluster_node::engine::EngineFactory;
use nodedb_cluster_node::node_service::NodeService;
use nodedb_cluster_node::service::{ClusterService, ReadConsistency, ServiceError};
use nodedb_cluster_raft::kv::{KvAnswer, KvQuery};
use nodedb_cluster_raft::state_machine::{VecChunks, read_all_chunks};
use nodedb_cluster_raft::{
    Committed, ReadConsistency as RaftReadConsistency, SnapshotChunks, StateMachine,
    StateMachineError,
};
use nodedb_cluster_transport::MemoryNetwork;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_bootstraps_serves_and_restarts() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(11);
    let cluster = start(&network, config(1, &[], data.path())).await;
    assert!(cluster.is_member());
    let service = NodeService::new(cluster.clone());
    assert!(service.is_ready());
    let receipt = service.kv_put("k1".into(), b"v1".to_vec()).await.unwrap();
    assert!(receipt.index > 0);
    let view = service.cluster().await.unwrap();
    assert_eq!(view.groups.len(), NUM_GROUPS as usize + 1);
    assert_eq!(view.nodes.len(), 1);
    let cluster_id = view.cluster_id.clone();

    cluster.shutdown().await;
    network.crash(NodeId(1));
    network.restart(NodeId(1));
    let cluster = start(&network, config(1, &[], data.path())).await;
    let service = NodeService::new(cluster.clone());
    eventually("the restarted node to serve the old value", || {
        let service = service.clone();
        async move {
            service
                .kv_get("k1".into(), ReadConsistency::Linearizable)
                .await
                == Ok(Some(b"v1".to_vec()))
        }
    })
    .await;
    assert_eq!(
        service.cluster().await.unwrap().cluster_id,
        cluster_id,
        "never re-bootstrapped"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_together_form_one_cluster() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(12);
    // Started in another order than start_three: the lowest id must still be the one that
    // bootstraps.
    let seeds = [1, 2, 3];
    let (first, second, third) = tokio::join!(
        start(&network, config(3, &seeds, data.path())),
        start(&network, config(1, &seeds, data.path())),
        start(&network, config(2, &seeds, data.path())),
    );
    let nodes = [first, second, third];
    for cluster in &nodes {
        assert!(cluster.is_member(), "{} is a member", cluster.node());
    }
    let ids: Vec<String> = nodes
        .iter()
        .map(|cluster| {
            cluster
                .metadata()
                .borrow()
                .state
                .cluster_id()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one cluster: {ids:?}");

    for (round, cluster) in nodes.iter().enumerate() {
        let service = NodeService::new(cluster.clone());
        let key = format!("key-{round}");
        service
            .kv_put(key.clone(), vec![round as u8])
            .await
            .unwrap();
        for reader in &nodes {
            let reader = NodeService::new(reader.clone());
            let value = reader
                .kv_get(key.clone(), ReadConsistency::Linearizable)
                .await
                .unwrap();
            assert_eq!(
                value,
                Some(vec![round as u8]),
                "{key} read through every node"
            );
        }
    }
    for cluster in &nodes {
        cluster.shutdown().await;
    }
}

/// True when every group of `cluster`'s metadata has `voters` voters, none of them `absent`.
fn fully_replicated(cluster: &Cluster, voters: usize, absent: Option<NodeId>) -> bool {
    let metadata = cluster.metadata();
    let applied = metadata.borrow();
    let Some(routing) = applied.state.routing() else {
        return false;
    };
    routing.groups().all(|(_, members)| {
        members.voters.len() == voters
            && members
                .learners
                .iter()
                .chain(&members.voters)
                .all(|node| Some(*node) != absent)
    })
}

fn node_state(cluster: &Cluster, node: u64) -> Option<NodeState> {
    let metadata = cluster.metadata();
    let applied = metadata.borrow();
    applied
        .state
        .topology()
        .get(NodeId(node))
        .map(|info| info.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_reach_the_replication_factor_on_every_group() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(13);
    let nodes = start_three(&network, data.path()).await;
    eventually("every group to have three voters", || async {
        fully_replicated(&nodes[0], 3, None)
    })
    .await;
    eventually("every node to be active", || async {
        (1..=3).all(|node| node_state(&nodes[0], node) == Some(NodeState::Active))
    })
    .await;
    eventually("every replica to see three voters", || async {
        nodes.iter().all(|cluster| {
            cluster.raft().groups().len() == NUM_GROUPS as usize + 1
                && cluster.raft().groups().iter().all(|group| {
                    cluster
                        .raft()
                        .status(*group)
                        .is_some_and(|status| status.voters.len() == 3)
                })
        })
    })
    .await;
    for cluster in &nodes {
        cluster.shutdown().await;
    }
}

fn metadata_leader(cluster: &Cluster) -> Option<NodeId> {
    cluster
        .raft()
        .status(nodedb_cluster_core::METADATA_GROUP)
        .and_then(|status| status.leader)
}

/// `key` as `cluster`'s own replica of `group` holds it, without asking any other node.
async fn local_value(cluster: &Cluster, group: GroupId, key: &str) -> Option<Vec<u8>> {
    let query = KvQuery::Get {
        key: key.as_bytes().to_vec(),
    };
    let answer = cluster
        .raft()
        .query(group, &query.encode(), RaftReadConsistency::Local)
        .await
        .ok()?;
    match KvAnswer::decode(&answer)? {
        KvAnswer::Value(value) => value,
        KvAnswer::Len(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_then_back_from_its_data_dir_active_and_caught_up() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(20);
    let [first, second, third] = start_three(&network, data.path()).await;
    let fourth = start(&network, config(4, &[1, 2, 3], data.path())).await;
    let nodes = [first, second, third, fourth];
    eventually("full replication on four nodes", || async {
        fully_replicated(&nodes[0], 3, None)
            && (1..=4).all(|node| node_state(&nodes[0], node) == Some(NodeState::Active))
    })
    .await;
    let leader = metadata_leader(&nodes[0]).expect("a metadata leader");
    let victim = nodes
        .iter()
        .find(|cluster| cluster.node() != leader)
        .unwrap()
        .node();
    let survivor = nodes
        .iter()
        .find(|cluster| cluster.node() == leader)
        .unwrap()
        .clone();
    nodes[victim.0 as usize - 1].shutdown().await;
    network.crash(victim);
    eventually("the dead node to be marked Down and replaced", || async {
        node_state(&survivor, victim.0) == Some(NodeState::Down)
            && fully_replicated(&survivor, 3, Some(victim))
    })
    .await;
    let service = NodeService::new(survivor.clone());
    let keys: Vec<String> = (0..16).map(|key| format!("while-down-{key}")).collect();
    for key in &keys {
        service
            .kv_put(key.clone(), key.as_bytes().to_vec())
            .await
            .unwrap();
    }

    // Back from its data dir: its own metadata still says Active and lists its old replicas,
    // which the cluster has long given to others.
    network.restart(victim);
    let back = start(&network, config(victim.0, &[1, 2, 3], data.path())).await;
    eventually("the node back to be marked Active", || async {
        node_state(&survivor, victim.0) == Some(NodeState::Active)
    })
    .await;
    let active_at = survivor.metadata().borrow().applied_index;
    eventually(
        "the node back to follow the metadata past its return",
        || async { back.metadata().borrow().applied_index >= active_at },
    )
    .await;
    // Four nodes, four groups of three: the balancing gives it data replicas again.
    let held = |cluster: &Cluster| -> Vec<GroupId> {
        let metadata = cluster.metadata();
        let applied = metadata.borrow();
        let Some(routing) = applied.state.routing() else {
            return Vec::new();
        };
        routing
            .data_groups()
            .filter(|group| {
                routing
                    .members(*group)
                    .is_some_and(|members| members.voters.contains(&victim))
            })
            .collect()
    };
    eventually("three voters per group, some on the node back", || async {
        fully_replicated(&survivor, 3, None) && !held(&survivor).is_empty()
    })
    .await;
    // Every key written while it was down, in a group it now votes in, is on its own replica.
    eventually(
        "its replicas to hold what was written while it was down",
        || {
            let survivor = survivor.clone();
            let back = back.clone();
            let keys = keys.clone();
            let groups = held(&survivor);
            async move {
                let mut checked = 0;
                for key in &keys {
                    let Ok(group) = survivor.vshards().owner(vshard_for_key(key.as_bytes())) else {
                        return false;
                    };
                    if !groups.contains(&group) {
                        continue;
                    }
                    if local_value(&back, group, key).await != Some(key.as_bytes().to_vec()) {
                        return false;
                    }
                    checked += 1;
                }
                checked > 0
            }
        },
    )
    .await;
    assert_eq!(node_state(&survivor, victim.0), Some(NodeState::Active));

    // The cluster serves through the node back, and every group still has three voters.
    let through_back = NodeService::new(back.clone());
    through_back
        .kv_put("after-return".into(), b"ok".to_vec())
        .await
        .unwrap();
    assert_eq!(
        service
            .kv_get("after-return".into(), ReadConsistency::Linearizable)
            .await
            .unwrap(),
        Some(b"ok".to_vec())
    );
    assert_eq!(
        through_back
            .kv_get(keys[0].clone(), ReadConsistency::Linearizable)
            .await
            .unwrap(),
        Some(keys[0].as_bytes().to_vec())
    );
    assert!(fully_replicated(&survivor, 3, None));
    back.shutdown().await;
    for cluster in nodes.iter().filter(|cluster| cluster.node() != victim) {
        cluster.shutdown().await;
    }
}

/// As the reconciler's: a Down node must answer this long without a gap to be Active again.
const RECOVERY_DAMPING: Duration = Duration::from_secs(3);

/// Samples `node`'s state in `observer`'s applied metadata every 100 ms for `period`.
async fn sample_state(
    observer: &Cluster,
    node: NodeId,
    period: Duration,
    seen: &mut Vec<Option<NodeState>>,
) {
    let step = Duration::from_millis(100);
    for _ in 0..period.as_millis() / step.as_millis() {
        seen.push(node_state(observer, node.0));
        tokio::time::sleep(step).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_node_stays_down_until_it_answers_for_the_damping_period() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(21);
    let nodes = start_three(&network, data.path()).await;
    eventually("full replication, every node Active", || async {
        fully_replicated(&nodes[0], 3, None)
            && (1..=3).all(|node| node_state(&nodes[0], node) == Some(NodeState::Active))
    })
    .await;
    let leader = metadata_leader(&nodes[0]).expect("a metadata leader");
    let observer = nodes
        .iter()
        .find(|cluster| cluster.node() == leader)
        .unwrap()
        .clone();
    let flapper = nodes
        .iter()
        .find(|cluster| cluster.node() != leader)
        .unwrap()
        .node();
    let others: Vec<NodeId> = (1..=3)
        .map(NodeId)
        .filter(|node| *node != flapper)
        .collect();
    network.partition(&[flapper], &others);
    eventually("the cut-off node to be marked Down", || async {
        node_state(&observer, flapper.0) == Some(NodeState::Down)
    })
    .await;

    // Reachable for a second, cut off for a second, five times: never long enough.
    const FLAPS: usize = 5;
    const FLAP_PERIOD: Duration = Duration::from_secs(1);
    let mut seen = Vec::new();
    for _ in 0..FLAPS {
        network.heal();
        sample_state(&observer, flapper, FLAP_PERIOD, &mut seen).await;
        network.partition(&[flapper], &others);
        sample_state(&observer, flapper, FLAP_PERIOD, &mut seen).await;
    }
    assert!(seen.len() >= 2 * FLAPS * 9, "sampled: {seen:?}");
    assert!(
        seen.iter().all(|state| *state == Some(NodeState::Down)),
        "a flapping node stays Down: {seen:?}"
    );

    // Reachable for good: Active, but only after the damping period.
    network.heal();
    let healed_at = tokio::time::Instant::now();
    eventually("the node reachable for good to be Active", || async {
        node_state(&observer, flapper.0) == Some(NodeState::Active)
    })
    .await;
    let after = healed_at.elapsed();
    assert!(
        after >= RECOVERY_DAMPING,
        "Active {after:?} after the last heal, before the damping period"
    );
    write_through_every_node(&nodes, "after-flapping").await;
    for cluster in &nodes {
        cluster.shutdown().await;
    }
}

/// Writes `key` through each node in turn and reads it back through the first.
async fn write_through_every_node(nodes: &[Cluster], key: &str) {
    let reader = NodeService::new(nodes[0].clone());
    for (round, cluster) in nodes.iter().enumerate() {
        let writer = NodeService::new(cluster.clone());
        eventually("a write through every node", || {
            let writer = writer.clone();
            async move { writer.kv_put(key.into(), vec![round as u8]).await.is_ok() }
        })
        .await;
        assert_eq!(
            reader
                .kv_get(key.into(), ReadConsistency::Linearizable)
                .await
                .unwrap(),
            Some(vec![round as u8])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_over_the_nodes() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(15);
    let nodes = start_three(&network, data.path()).await;
    let leaders_per_node = || {
        let mut counts = [0usize; 3];
        for group in 1..=NUM_GROUPS {
            let leader = nodes[0]
                .raft()
                .status(nodedb_cluster_core::GroupId(group))
                .and_then(|status| status.leader);
            if let Some(leader) = leader {
                counts[(leader.0 - 1) as usize] += 1;
            }
        }
        counts
    };
    eventually(
        "data group leaders to differ by at most one per node",
        || async {
            let counts = leaders_per_node();
            counts.iter().sum::<usize>() == NUM_GROUPS as usize
                && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1
        },
    )
    .await;
    for cluster in &nodes {
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_leaderships_over() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(16);
    let nodes = start_three(&network, data.path()).await;
    eventually("full replication", || async {
        fully_replicated(&nodes[0], 3, None)
    })
    .await;
    let leader = nodes[0]
        .raft()
        .status(nodedb_cluster_core::METADATA_GROUP)
        .and_then(|status| status.leader)
        .unwrap();
    let leaving = nodes
        .iter()
        .find(|cluster| cluster.node() == leader)
        .unwrap();
    assert_eq!(
        leaving.hand_over_leaderships().await,
        0,
        "every leadership handed over"
    );
    for cluster in &nodes {
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_leader_dies_and_the_cluster_keeps_serving() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(17);
    let nodes = start_three(&network, data.path()).await;
    eventually("full replication", || async {
        fully_replicated(&nodes[0], 3, None)
    })
    .await;
    let metadata_leader = |cluster: &Cluster| {
        cluster
            .raft()
            .status(nodedb_cluster_core::METADATA_GROUP)
            .and_then(|status| status.leader)
    };
    let old_leader = metadata_leader(&nodes[0]).unwrap();
    let victim = nodes
        .iter()
        .find(|cluster| cluster.node() == old_leader)
        .unwrap();
    network.crash(victim.node());
    let survivors: Vec<&Cluster> = nodes
        .iter()
        .filter(|cluster| cluster.node() != old_leader)
        .collect();
    eventually("a new metadata leader", || async {
        survivors
            .iter()
            .all(|cluster| metadata_leader(cluster).is_some_and(|leader| leader != old_leader))
    })
    .await;
    let service = NodeService::new(survivors[0].clone());
    for round in 0..20 {
        let key = format!("after-{round}");
        eventually("a write on every group", || {
            let service = service.clone();
            let key = key.clone();
            async move { service.kv_put(key, b"v".to_vec()).await.is_ok() }
        })
        .await;
    }
    victim.shutdown().await;
    for cluster in survivors {
        cluster.shutdown().await;
    }
}

/// Draining moves a replica of every group and hands over leaderships (each transfer holds
/// its group still for a cool-down): slower than the other waits.
const DECOMMISSION_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_node_hands_everything_over_and_stops() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(18);
    let [first, second, third] = start_three(&network, data.path()).await;
    let service = NodeService::new(first.clone());
    let refused = service.decommission(NodeId(2)).await;
    assert!(
        matches!(refused, Err(ServiceError::Conflict(_))),
        "three nodes with RF 3 cannot lose one: {refused:?}"
    );
    let fourth = start(&network, config(4, &[1, 2, 3], data.path())).await;
    let nodes = [first, second, third, fourth];
    eventually("full replication on four nodes", || async {
        fully_replicated(&nodes[0], 3, None)
            && (1..=4).all(|node| node_state(&nodes[0], node) == Some(NodeState::Active))
    })
    .await;
    service.kv_put("kept".into(), b"v".to_vec()).await.unwrap();

    // Node 1 bootstrapped the cluster, so it holds a replica of every group, group 0 included.
    let victim = nodes[0].clone();
    let survivor = nodes[1].clone();
    let survivor_service = NodeService::new(survivor.clone());
    survivor_service.decommission(victim.node()).await.unwrap();
    assert_eq!(
        survivor_service.decommission(NodeId(99)).await,
        Err(ServiceError::NotFound(
            "no node node-99 in the cluster".into()
        ))
    );
    tokio::time::timeout(DECOMMISSION_WAIT, victim.wait_decommissioned())
        .await
        .expect("the node learns it is decommissioned");
    eventually("every group on three voters without it", || async {
        fully_replicated(&survivor, 3, Some(victim.node()))
    })
    .await;
    {
        let metadata = survivor.metadata();
        let applied = metadata.borrow();
        let routing = applied.state.routing().unwrap();
        assert!(routing.groups_holding_node(victim.node()).is_empty());
    }
    victim.shutdown().await;
    assert_eq!(
        survivor_service
            .kv_get("kept".into(), ReadConsistency::Linearizable)
            .await
            .unwrap(),
        Some(b"v".to_vec())
    );
    for cluster in &nodes[1..] {
        cluster.shutdown().await;
    }
}

/// A host engine: one counter per name; a command is a name and increments it, a query is a
/// name and answers its count (8 bytes, little endian).
#[derive(Debug, Default)]
struct Counters(std::collections::BTreeMap<Vec<u8>, u64>);

impl Counters {
    fn encode<'a>(entries: impl Iterator<Item = (&'a Vec<u8>, &'a u64)>) -> Vec<u8> {
        let entries: Vec<(&Vec<u8>, &u64)> = entries.collect();
        serde_json::to_vec(&entries).unwrap()
    }

    fn decode(bytes: &[u8]) -> Result<Vec<(Vec<u8>, u64)>, StateMachineError> {
        serde_json::from_slice(bytes).map_err(|error| StateMachineError::Corrupt(error.to_string()))
    }
}

impl StateMachine for Counters {
    fn apply(&mut self, batch: &[Committed<'_>]) -> Result<Vec<Vec<u8>>, StateMachineError> {
        Ok(batch
            .iter()
            .map(|entry| {
                let count = self.0.entry(entry.command.to_vec()).or_insert(0);
                *count += 1;
                count.to_le_bytes().to_vec()
            })
            .collect())
    }

    fn query(&self, query: &[u8]) -> Result<Vec<u8>, StateMachineError> {
        Ok(self
            .0
            .get(query)
            .copied()
            .unwrap_or(0)
            .to_le_bytes()
            .to_vec())
    }

    fn snapshot(&self) -> Result<Box<dyn SnapshotChunks>, StateMachineError> {
        Ok(Box::new(VecChunks::from_bytes(&Counters::encode(
            self.0.iter(),
        ))))
    }

    fn restore(&mut self, chunks: &mut dyn SnapshotChunks) -> Result<(), StateMachineError> {
        let bytes = read_all_chunks(chunks, 1 << 20)?;
        self.0 = Counters::decode(&bytes)?.into_iter().collect();
        Ok(())
    }

    fn export_vshard(&self, vshard: VShardId) -> Result<Vec<u8>, StateMachineError> {
        Ok(Counters::encode(
            self.0
                .iter()
                .filter(|(name, _)| vshard_for_key(name) == vshard),
        ))
    }

    fn import_vshard(&mut self, _vshard: VShardId, data: &[u8]) -> Result<(), StateMachineError> {
        self.0.extend(Counters::decode(data)?);
        Ok(())
    }

    fn drop_vshard(&mut self, vshard: VShardId) -> Result<(), StateMachineError> {
        self.0.retain(|name, _| vshard_for_key(name) != vshard);
        Ok(())
    }

    fn state_hash(&self) -> u64 {
        self.0
            .iter()
            .fold(0xcbf2_9ce4_8422_2325, |hash, (name, count)| {
                name.iter()
                    .chain(&count.to_le_bytes())
                    .fold(hash, |hash, byte| {
                        (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3)
                    })
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_engine_is_replicated_moved_and_restored_through_the_library_api() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(19);
    let host_config = || ClusterConfig {
        engine: EngineFactory::new(|_| Box::new(Counters::default())),
        ..config(1, &[], data.path())
    };
    let cluster = start(&network, host_config()).await;
    let name = b"visits".to_vec();
    let vshard = vshard_for_key(&name);
    for expected in 1..=3u64 {
        let write = cluster.propose(vshard, name.clone()).await.unwrap();
        assert_eq!(write.response, expected.to_le_bytes());
    }
    let count = |cluster: Cluster, consistency| {
        let name = name.clone();
        async move {
            let answer = cluster.read(vshard, name, consistency).await.unwrap();
            u64::from_le_bytes(answer.try_into().unwrap())
        }
    };
    assert_eq!(
        count(cluster.clone(), RaftReadConsistency::Linearizable).await,
        3
    );

    // Move the counter's vShard to another group: export and import go through the engine.
    let service = NodeService::new(cluster.clone());
    let owner = cluster.vshards().owner(vshard).unwrap();
    let to = nodedb_cluster_core::GroupId(owner.0 % NUM_GROUPS + 1);
    service.move_vshard(vshard, to).await.unwrap();
    eventually("the move to finish", || async {
        cluster.vshards().owner(vshard) == Ok(to)
    })
    .await;
    assert_eq!(
        cluster.propose(vshard, name.clone()).await.unwrap().group,
        to
    );
    assert_eq!(count(cluster.clone(), RaftReadConsistency::Local).await, 4);

    cluster.shutdown().await;
    network.crash(NodeId(1));
    network.restart(NodeId(1));
    let cluster = start(&network, host_config()).await;
    eventually("the restarted node to serve the count", || {
        let cluster = cluster.clone();
        let name = name.clone();
        async move {
            cluster
                .read(vshard, name, RaftReadConsistency::Linearizable)
                .await
                .is_ok_and(|answer| answer == 4u64.to_le_bytes())
        }
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vshard_larger_than_one_export_page_moves_whole() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(23);
    let cluster = start(&network, config(1, &[], data.path())).await;
    let service = NodeService::new(cluster.clone());

    // 40 values of 256 KiB in one vShard: 10 MiB, more than one page of its export.
    let vshard = vshard_for_key(b"large-0");
    let keys: Vec<String> = keys_in_vshard("large-", vshard).take(40).collect();
    let value = |i: usize| vec![i as u8; 256 * 1024];
    for (i, key) in keys.iter().enumerate() {
        service.kv_put(key.clone(), value(i)).await.unwrap();
    }

    let owner = cluster.vshards().owner(vshard).unwrap();
    let to = GroupId(owner.0 % NUM_GROUPS + 1);
    let started = service.move_vshard(vshard, to).await.unwrap();
    eventually("the move to finish", || async {
        cluster.vshards().owner(vshard) == Ok(to)
    })
    .await;
    let moved = service.migrations().await.unwrap();
    let moved = moved.iter().find(|m| m.id == started.id).unwrap();
    assert!(
        moved.bytes_copied >= 40 * 256 * 1024,
        "copied only {} bytes",
        moved.bytes_copied
    );
    for (i, key) in keys.iter().enumerate() {
        let read = service
            .kv_get(key.clone(), ReadConsistency::Linearizable)
            .await
            .unwrap();
        assert!(read == Some(value(i)), "{key} did not arrive whole");
    }
    let after = service.kv_put(keys[0].clone(), value(0)).await.unwrap();
    assert_eq!(after.group, to.0);
    cluster.shutdown().await;
}
