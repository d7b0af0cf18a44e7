//! Automatic rebalancing on in-process nodes: keys written into a few vShards of one data
//! group make it much larger than the others, and the metadata leader moves vShards away from it
//! on its own, never more than `concurrent_max` at a time; every key written stays readable.
//! A node that joins makes the metadata leader even out the groups' vShard counts. A move's
//! copy keeps to the configured bandwidth (a move that can hand the vShard over copies nothing;
//! an engine without vShard digests makes it copy).

mod memory_cluster;

use memory_cluster::{
    NUM_GROUPS, WAIT, config, eventually, fully_replicated, start, start_three_with,
};
use nodedb_cluster_core::{
    GroupId, MigrationId, MigrationPhase, VShardId, keys_in_vshard, vshard_for_key,
};
use nodedb_cluster_node::cluster::{Cluster, ClusterConfig};
use nodedb_cluster_node::engine::EngineFactory;
use nodedb_cluster_node::migration::MigrationSettings;
use nodedb_cluster_node::node_service::NodeService;
use nodedb_cluster_node::service::{ClusterService, ReadConsistency};
use nodedb_cluster_raft::kv::KvStateMachine;
use nodedb_cluster_raft::{
    Committed, SnapshotChunks, StateMachine, StateMachineError, VShardClaim, VShardParts,
};
use nodedb_cluster_transport::MemoryNetwork;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const CONCURRENT_MAX: usize = 2;
/// vShards of the large group that the keys go to.
const HOT_VSHARDS: usize = 8;
const KEYS: usize = 64;
const VALUE_BYTES: usize = 16 * 1024;
/// Attempts of one write or read before the test fails.
const ATTEMPTS_MAX: u32 = 40;

fn settings() -> MigrationSettings {
    MigrationSettings {
        concurrent_max: CONCURRENT_MAX,
        auto_rebalance: true,
        size_ratio: 2.0,
        size_floor_bytes: 256 * 1024,
        size_check_interval: Duration::from_millis(300),
        ..MigrationSettings::default()
    }
}

/// Nodes 1-3 with the small rebalancing thresholds of [`settings`], every group replicated.
async fn start_rebalancing_three(network: &MemoryNetwork, data_root: &Path) -> [Cluster; 3] {
    let nodes = start_three_with(network, data_root, |config| ClusterConfig {
        migration: settings(),
        ..config
    })
    .await;
    eventually("every group on three voters", || async {
        fully_replicated(&nodes[0])
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_much_larger_than_the_others_gives_vshards_away_by_itself() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(31);
    let nodes = start_rebalancing_three(&network, data.path()).await;

    let hot = owner_of(&nodes[0], vshard_for_key(b"hot-0"));
    let keys = hot_keys(&nodes[0], hot);
    let hot_vshards: BTreeSet<VShardId> = keys
        .iter()
        .map(|key| vshard_for_key(key.as_bytes()))
        .collect();
    println!("writing {KEYS} keys of {VALUE_BYTES} bytes into {hot_vshards:?} of {hot}");

    let stop = Arc::new(AtomicBool::new(false));
    let most_active = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn(sample_active(
        nodes.to_vec(),
        Arc::clone(&stop),
        Arc::clone(&most_active),
    ));
    let started = Instant::now();
    let service = NodeService::new(nodes[0].clone());
    for key in &keys {
        put(&service, key).await;
    }
    println!("written in {:?}", started.elapsed());

    let moves_over = || {
        let metadata = nodes[0].metadata();
        let applied = metadata.borrow();
        let state = &applied.state;
        let cleaned = state
            .migrations()
            .values()
            .any(|migration| migration.from == hot && migration.phase == MigrationPhase::Cleaned);
        let active = state
            .migrations()
            .values()
            .any(|migration| migration.is_active());
        cleaned && !active
    };
    eventually(
        "vShards moved away from the large group until it is not large",
        || async {
            if !moves_over() {
                return false;
            }
            let totals = group_bytes(&service).await;
            let mean = totals.values().sum::<u64>() as f64 / totals.len() as f64;
            totals[&hot] as f64 <= settings().size_ratio * mean
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();

    let moves: Vec<_> = {
        let metadata = nodes[0].metadata();
        let applied = metadata.borrow();
        applied
            .state
            .migrations()
            .values()
            .map(|migration| {
                (
                    migration.vshard,
                    migration.from,
                    migration.to,
                    migration.phase,
                )
            })
            .collect()
    };
    println!(
        "moves after {:?}: {moves:?}; at most {} in flight at once; bytes per group {:?}",
        started.elapsed(),
        most_active.load(Ordering::SeqCst),
        group_bytes(&service).await,
    );
    assert!(
        most_active.load(Ordering::SeqCst) <= CONCURRENT_MAX,
        "more than {CONCURRENT_MAX} migrations in flight at once"
    );
    assert!(
        moves
            .iter()
            .all(|(vshard, from, _, phase)| hot_vshards.contains(vshard)
                && *from == hot
                && *phase == MigrationPhase::Cleaned),
        "only vShards of the large group moved, each to the end"
    );
    let still_hot = hot_vshards
        .iter()
        .filter(|vshard| owner_of(&nodes[0], **vshard) == hot)
        .count();
    assert!(
        still_hot < HOT_VSHARDS,
        "every hot vShard is still in {hot}"
    );

    for (index, node) in nodes.iter().enumerate() {
        let service = NodeService::new(node.clone());
        for key in keys.iter().skip(index).step_by(nodes.len()) {
            assert_eq!(get(&service, key).await, Some(value_of(key)), "{key}");
        }
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_makes_the_vshard_counts_even() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(32);
    let nodes = start_rebalancing_three(&network, data.path()).await;
    // Three vShards of group 1 moved to group 2 by hand: 253 against 259 vShards.
    let service = NodeService::new(nodes[0].clone());
    let moved: Vec<VShardId> = {
        let metadata = nodes[0].metadata();
        let applied = metadata.borrow();
        let routing = applied.state.routing().expect("routing");
        routing.vshards_of(GroupId(1)).into_iter().take(3).collect()
    };
    for vshard in &moved {
        service.move_vshard(*vshard, GroupId(2)).await.unwrap();
    }
    eventually("the moves by hand to finish", || async {
        moved
            .iter()
            .all(|vshard| owner_of(&nodes[0], *vshard) == GroupId(2))
    })
    .await;
    let skewed = vshard_counts(&nodes[0]);
    println!("vShards per group before the join: {skewed:?}");
    assert_eq!(skewed[&GroupId(1)] + 6, skewed[&GroupId(2)]);

    let joiner = start(
        &network,
        ClusterConfig {
            migration: settings(),
            ..config(4, &[1, 2, 3], data.path())
        },
    )
    .await;
    eventually("vShard counts within one of each other", || async {
        let counts = vshard_counts(&nodes[0]);
        counts.values().max().unwrap() - counts.values().min().unwrap() <= 1
    })
    .await;
    println!(
        "vShards per group after the join: {:?}",
        vshard_counts(&nodes[0])
    );
    joiner.shutdown().await;
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_copies_no_faster_than_the_configured_bandwidth() {
    const BANDWIDTH: u64 = 1024 * 1024;
    const VALUES: usize = 48;
    const VALUE_BYTES: usize = 64 * 1024;
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(33);
    let single = ClusterConfig {
        migration: MigrationSettings {
            bandwidth_bytes_per_s: BANDWIDTH,
            auto_rebalance: false,
            ..MigrationSettings::default()
        },
        engine: EngineFactory::new(|_| Box::new(WithoutDigests(KvStateMachine::new()))),
        ..config(1, &[], data.path())
    };
    let node = start(&network, single).await;
    let vshard = vshard_for_key(b"paced-0");
    let service = NodeService::new(node.clone());
    let keys: Vec<String> = keys_in_vshard("paced-", vshard).take(VALUES).collect();
    for key in &keys {
        let value = key.bytes().cycle().take(VALUE_BYTES).collect();
        service.kv_put(key.clone(), value).await.unwrap();
    }
    let from = owner_of(&node, vshard);
    let to = GroupId(from.0 % NUM_GROUPS + 1);
    let started = Instant::now();
    let id = MigrationId(service.move_vshard(vshard, to).await.unwrap().id);
    eventually("the move to finish", || async {
        let metadata = node.metadata();
        let applied = metadata.borrow();
        applied
            .state
            .migrations()
            .values()
            .any(|migration| migration.vshard == vshard && !migration.is_active())
    })
    .await;
    let took = started.elapsed();
    let bytes = (VALUES * VALUE_BYTES) as u64;
    println!("{bytes} bytes moved in {took:?} at {BANDWIDTH} bytes/s");
    assert_eq!(owner_of(&node, vshard), to);
    // The copy waits for the budget to pay for every page it moved.
    let least = Duration::from_secs_f64(0.75 * bytes as f64 / BANDWIDTH as f64);
    assert!(took >= least, "{bytes} bytes moved in {took:?}");
    assert_eq!(
        node.raft().claim(to, vshard).ok(),
        Some(VShardClaim::Serving(id))
    );
    node.shutdown().await;
}

/// The KV engine without vShard digests, so that its vShards move by a copy.
struct WithoutDigests(KvStateMachine);

impl StateMachine for WithoutDigests {
    fn apply(&mut self, batch: &[Committed<'_>]) -> Result<Vec<Vec<u8>>, StateMachineError> {
        self.0.apply(batch)
    }

    fn query(&self, query: &[u8]) -> Result<Vec<u8>, StateMachineError> {
        self.0.query(query)
    }

    fn snapshot(&self) -> Result<Box<dyn SnapshotChunks>, StateMachineError> {
        self.0.snapshot()
    }

    fn restore(&mut self, chunks: &mut dyn SnapshotChunks) -> Result<(), StateMachineError> {
        self.0.restore(chunks)
    }

    fn export_vshard(&self, vshard: VShardId) -> Result<Vec<u8>, StateMachineError> {
        self.0.export_vshard(vshard)
    }

    fn export_vshard_parts(
        &self,
        vshard: VShardId,
        part_bytes: usize,
    ) -> Result<VShardParts, StateMachineError> {
        self.0.export_vshard_parts(vshard, part_bytes)
    }

    fn import_vshard(&mut self, vshard: VShardId, data: &[u8]) -> Result<(), StateMachineError> {
        self.0.import_vshard(vshard, data)
    }

    fn drop_vshard(&mut self, vshard: VShardId) -> Result<(), StateMachineError> {
        self.0.drop_vshard(vshard)
    }

    fn state_hash(&self) -> u64 {
        self.0.state_hash()
    }
}

/// vShards each data group owns in `cluster`'s view of the routing.
fn vshard_counts(cluster: &Cluster) -> BTreeMap<GroupId, usize> {
    let metadata = cluster.metadata();
    let applied = metadata.borrow();
    let routing = applied.state.routing().expect("routing");
    routing
        .data_groups()
        .map(|group| (group, routing.vshards_of(group).len()))
        .collect()
}

/// [`KEYS`] keys that fall into [`HOT_VSHARDS`] vShards owned by `hot`.
fn hot_keys(cluster: &Cluster, hot: GroupId) -> Vec<String> {
    let mut vshards = BTreeSet::new();
    (0u64..)
        .map(|index| format!("hot-{index}"))
        .filter(|key| {
            let vshard = vshard_for_key(key.as_bytes());
            if owner_of(cluster, vshard) != hot {
                return false;
            }
            if vshards.len() < HOT_VSHARDS {
                vshards.insert(vshard);
            }
            vshards.contains(&vshard)
        })
        .take(KEYS)
        .collect()
}

fn value_of(key: &str) -> Vec<u8> {
    key.bytes().cycle().take(VALUE_BYTES).collect()
}

async fn put(service: &NodeService, key: &str) {
    for attempt in 1..=ATTEMPTS_MAX {
        match service.kv_put(key.to_string(), value_of(key)).await {
            Ok(_) => return,
            Err(error) if attempt < ATTEMPTS_MAX => {
                println!("put {key}: {error}; again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("put {key}: {error}"),
        }
    }
}

async fn get(service: &NodeService, key: &str) -> Option<Vec<u8>> {
    for attempt in 1..=ATTEMPTS_MAX {
        match service
            .kv_get(key.to_string(), ReadConsistency::Linearizable)
            .await
        {
            Ok(value) => return value,
            Err(error) if attempt < ATTEMPTS_MAX => {
                println!("get {key}: {error}; again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("get {key}: {error}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// Until `stop`, the most migrations in flight in any node's view, every 20 ms.
async fn sample_active(nodes: Vec<Cluster>, stop: Arc<AtomicBool>, most: Arc<AtomicUsize>) {
    let deadline = Instant::now() + 2 * WAIT;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        for node in &nodes {
            let active = node
                .metadata()
                .borrow()
                .state
                .migrations()
                .values()
                .filter(|migration| migration.is_active())
                .count();
            most.fetch_max(active, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bytes each data group holds in the vShards it owns, as `GET /v1/cluster` shows them.
async fn group_bytes(service: &NodeService) -> BTreeMap<GroupId, u64> {
    let view = service.cluster().await.expect("cluster view");
    view.groups
        .iter()
        .filter(|group| group.id != 0)
        .map(|group| {
            (
                GroupId(group.id),
                group.bytes.expect("every node hosts every group"),
            )
        })
        .collect()
}

fn owner_of(cluster: &Cluster, vshard: VShardId) -> GroupId {
    let metadata = cluster.metadata();
    let applied = metadata.borrow();
    applied.state.routing().expect("routing").group_of(vshard)
}
