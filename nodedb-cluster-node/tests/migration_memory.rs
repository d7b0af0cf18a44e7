//! vShards move between groups while clients keep reading and writing them through every node,
//! and the leader of the metadata group, of the source group or of the target group crashes at
//! a seeded migration phase (copying, fenced, switched) and restarts from its data dir. Afterwards: every migration finished, the whole history is
//! linearizable per key (final reads included), every replica of a group has the same state,
//! and every node holds the same routing.
//!
//! A target replica down during a handover holds the source's drop back until it is back and
//! has taken the vShard over.
//!
//! With four nodes, a vShard also moves to a group its source's leader holds no replica of,
//! so that the target's leader reads the export over the network (and the replicas the
//! reconciler moved to the fourth node are gone from the nodes they left).
//!
//! Seeds: `NODEDB_MIGRATION_SEEDS=7,8,9 cargo test -p nodedb-cluster-node --test
//! migration_memory -- --nocapture` replays or widens the run; each seed is printed.

mod memory_cluster;

use memory_cluster::{NUM_GROUPS, config, eventually, fully_replicated, start, start_three};
use nodedb_cluster_core::linearizability::{self, HistoryRecorder, OpKind, Outcome};
use nodedb_cluster_core::{
    GroupId, METADATA_GROUP, MigrationId, MigrationPhase, NodeId, VShardId, keys_in_vshard,
    vshard_for_key,
};
use nodedb_cluster_node::cluster::Cluster;
use nodedb_cluster_node::node_service::NodeService;
use nodedb_cluster_node::service::{ClusterService, ReadConsistency, ServiceError};
use nodedb_cluster_raft::VShardClaim;
use nodedb_cluster_transport::MemoryNetwork;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const DEFAULT_SEEDS: [u64; 1] = [2026];
const CLIENTS: u64 = 3;
const KEYS: usize = 8;
const MOVES: usize = 4;
const OPS_PER_CLIENT_MAX: u64 = 5_000;
/// Longest one migration may take, crash and restart included.
const MIGRATION_WAIT: Duration = Duration::from_secs(40);

type LiveNodes = Arc<RwLock<Vec<Cluster>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vshards_move_under_load_while_leaders_crash() {
    let seeds: Vec<u64> = match std::env::var("NODEDB_MIGRATION_SEEDS") {
        Ok(list) => list
            .split(',')
            .map(|seed| seed.trim().parse().expect("seed"))
            .collect(),
        Err(_) => DEFAULT_SEEDS.to_vec(),
    };
    for seed in seeds {
        run_seed(seed).await;
    }
}

/// When the metadata leader is crashed during one move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashAt {
    Never,
    Copying,
    Fenced,
    Switched,
}

async fn run_seed(seed: u64) {
    println!("migration seed {seed} (replay with NODEDB_MIGRATION_SEEDS={seed})");
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(seed);
    let nodes = start_placed_three(&network, data.path()).await;

    let keys: Vec<String> = (0..KEYS).map(|key| format!("moving-{key}")).collect();
    let started = Instant::now();
    let recorder = Arc::new(Mutex::new(HistoryRecorder::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let worker = Client {
                id: client,
                nodes: Arc::clone(&nodes),
                recorder: Arc::clone(&recorder),
                stop: Arc::clone(&stop),
                keys: keys.clone(),
                started,
            };
            tokio::spawn(worker.run(seed.wrapping_mul(131).wrapping_add(client)))
        })
        .collect();

    let mut rng = SmallRng::seed_from_u64(seed);
    for round in 0..MOVES {
        let key = &keys[rng.random_range(0..keys.len())];
        let vshard = vshard_for_key(key.as_bytes());
        let owner = owner_of(&live(&nodes)[0], vshard);
        let to = loop {
            let group = GroupId(rng.random_range(1..=NUM_GROUPS));
            if group != owner {
                break group;
            }
        };
        let crash_at = match rng.random_range(0..4) {
            0 => CrashAt::Never,
            1 => CrashAt::Copying,
            2 => CrashAt::Fenced,
            _ => CrashAt::Switched,
        };
        let victim_group = match rng.random_range(0..3) {
            0 => METADATA_GROUP,
            1 => owner,
            _ => to,
        };
        println!(
            "seed {seed} move {round}: {vshard} {owner} -> {to}, crash the leader of {victim_group} at {crash_at:?}"
        );
        let id = begin_move(&nodes, vshard, to).await;
        if crash_at != CrashAt::Never {
            let crash = Crash {
                network: &network,
                data_root: data.path(),
                nodes: &nodes,
            };
            crash.leader_of_at(victim_group, id, crash_at).await;
        }
        let phase = wait_final(&nodes, id).await;
        assert_eq!(
            phase,
            MigrationPhase::Cleaned,
            "seed {seed}: move {round} ended {phase:?}"
        );
        assert_eq!(owner_of(&live(&nodes)[0], vshard), to);
        // Three nodes hold every group: each node's replica of the target took the vShard from
        // its replica of the source, nothing was copied through the log.
        eventually(
            "every replica of the target took the vShard over",
            || async {
                live(&nodes).iter().all(|cluster| {
                    cluster.raft().claim(to, vshard).ok() == Some(VShardClaim::Handed(id))
                })
            },
        )
        .await;
        let measured = live(&nodes).iter().find_map(|cluster| {
            let progress = cluster.migration_progress().get(id)?;
            Some((progress.write_pause?, progress.bytes_copied))
        });
        println!("  write pause and bytes copied: {measured:?}");
        if crash_at == CrashAt::Never {
            assert!(measured.is_some(), "the driver measured {id}'s write pause");
        }
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("client");
    }

    let service = NodeService::new(live(&nodes)[0].clone());
    let mut final_reads = Vec::new();
    for key in &keys {
        let value = read_until_served(&service, key).await;
        final_reads.push((key.clone().into_bytes(), value));
    }
    let history = recorder.lock().unwrap().history();
    let report = linearizability::check_with_final_reads(&history, final_reads);
    assert!(
        report.is_linearizable(),
        "seed {seed}: {} operations are not linearizable: {:#?}",
        history.len(),
        report.verdict
    );
    let count = |outcome: &Outcome| {
        history
            .operations()
            .iter()
            .filter(|operation| &operation.outcome == outcome)
            .count()
    };
    println!(
        "seed {seed}: {} operations ({} unknown, {} failed), {} keys checked",
        history.len(),
        count(&Outcome::Unknown),
        count(&Outcome::Failed),
        report.keys_checked
    );
    eventually("equal replica states and routing on every node", || async {
        replicas_agree(&live(&nodes))
    })
    .await;
    for cluster in live(&nodes) {
        cluster.shutdown().await;
    }
}

/// With four nodes each group lacks one, so a move may have a source leader that holds no
/// replica of the target: the target's leadership cannot come to it, and the target's leader
/// reads the export from the source's leader over the network. The data arrives whole all the
/// same, and every replica ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vshard_moves_to_a_group_its_source_leader_is_not_in() {
    const KEYS_MOVED: usize = 24;
    const VALUE_BYTES: usize = 64 * 1024;
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(41);
    let mut started = start_three(&network, data.path()).await.to_vec();
    started.push(start(&network, config(4, &[1, 2, 3], data.path())).await);
    let nodes: LiveNodes = Arc::new(RwLock::new(started));
    let first = live(&nodes)[0].clone();
    let deadline = Instant::now() + MIGRATION_WAIT;
    let (from, to, source_leader) = loop {
        if fully_replicated(&first)
            && let Some(apart) = groups_apart(&first)
        {
            break apart;
        }
        assert!(
            Instant::now() < deadline,
            "no group led from outside another"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("moving from {from} (led by {source_leader}) to {to}, which it holds no replica of");

    let vshard = first
        .metadata()
        .borrow()
        .state
        .routing()
        .expect("routing")
        .vshards_of(from)[0];
    let keys: Vec<String> = keys_in_vshard("apart-", vshard).take(KEYS_MOVED).collect();
    let value_of = |key: &str| -> Vec<u8> { key.bytes().cycle().take(VALUE_BYTES).collect() };
    let service = NodeService::new(first.clone());
    for key in &keys {
        service.kv_put(key.clone(), value_of(key)).await.unwrap();
    }
    let id = begin_move(&nodes, vshard, to).await;
    assert_eq!(wait_final(&nodes, id).await, MigrationPhase::Cleaned);
    assert_eq!(owner_of(&first, vshard), to);
    // The target has a replica on a node without the source: copied, not handed over.
    eventually("every replica of the target adopted the copy", || async {
        let claims: Vec<VShardClaim> = live(&nodes)
            .iter()
            .filter_map(|cluster| cluster.raft().claim(to, vshard).ok())
            .collect();
        claims.len() == 3
            && claims
                .iter()
                .all(|claim| *claim == VShardClaim::Serving(id))
    })
    .await;
    for cluster in live(&nodes) {
        let service = NodeService::new(cluster.clone());
        for key in &keys {
            let value = read_until_served(&service, key).await;
            assert_eq!(
                value,
                Some(value_of(key)),
                "{key} through {}",
                cluster.node()
            );
        }
    }
    eventually("equal replica states and routing on every node", || async {
        replicas_agree(&live(&nodes))
    })
    .await;
    // The nodes the reconciler moved replicas off (for the fourth node) keep none of them.
    eventually("no replica outside its group's members", || async {
        live(&nodes).iter().all(|cluster| {
            let routing = cluster.metadata().borrow().state.routing().cloned();
            let routing = routing.expect("routing");
            cluster.raft().groups().into_iter().all(|group| {
                group == METADATA_GROUP
                    || routing
                        .members(group)
                        .is_some_and(|members| members.contains(cluster.node()))
            })
        })
    })
    .await;
    for cluster in live(&nodes) {
        cluster.shutdown().await;
    }
}

/// A target replica down during a handover takes the vShard over when it comes back: until
/// it has (and holds it in a snapshot), the move stays switched and the source keeps its fenced
/// copy, since the replica's log can rebuild the vShard only from the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_keeps_a_handed_over_vshard_until_every_target_replica_holds_it() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(57);
    let nodes = start_placed_three(&network, data.path()).await;
    let first = live(&nodes)[0].clone();
    let vshard = vshard_for_key(b"held-0");
    let keys: Vec<String> = keys_in_vshard("held-", vshard).take(16).collect();
    let service = NodeService::new(first.clone());
    for key in &keys {
        service
            .kv_put(key.clone(), key.clone().into_bytes())
            .await
            .unwrap();
    }
    let from = owner_of(&first, vshard);
    let to = GroupId(from.0 % NUM_GROUPS + 1);
    let crash = Crash {
        network: &network,
        data_root: data.path(),
        nodes: &nodes,
    };
    let victim = NodeId(3);
    crash.stop(victim).await;

    let id = begin_move(&nodes, vshard, to).await;
    eventually(
        "the routing to switch with two of three replicas",
        || async { phase_of(&first, id).is_some_and(|phase| phase.is_switched()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(phase_of(&first, id), Some(MigrationPhase::Switched));
    let held = first.raft().vshard_bytes(from).unwrap();
    assert!(
        held.get(&vshard).is_some_and(|bytes| *bytes > 0),
        "the source dropped the vShard while a target replica still needed it"
    );

    let back = crash.start_again(victim).await;
    assert_eq!(wait_final(&nodes, id).await, MigrationPhase::Cleaned);
    eventually(
        "node 3's target replica to take the vShard over",
        || async { back.raft().claim(to, vshard).ok() == Some(VShardClaim::Handed(id)) },
    )
    .await;
    eventually("equal replica states and routing on every node", || async {
        replicas_agree(&live(&nodes))
    })
    .await;
    let moved = back.raft().vshard_bytes(to).unwrap();
    assert_eq!(moved.get(&vshard), held.get(&vshard));
    for key in &keys {
        let value = read_until_served(&NodeService::new(back.clone()), key).await;
        assert_eq!(value, Some(key.clone().into_bytes()));
    }
    for cluster in live(&nodes) {
        cluster.shutdown().await;
    }
}

/// Two data groups `(from, to)` and `from`'s leader, which holds no replica of `to`.
fn groups_apart(cluster: &Cluster) -> Option<(GroupId, GroupId, NodeId)> {
    let metadata = cluster.metadata();
    let applied = metadata.borrow();
    let routing = applied.state.routing()?;
    routing.data_groups().find_map(|from| {
        let leader = routing.members(from)?.leader_hint?;
        routing
            .data_groups()
            .find(|to| {
                routing
                    .members(*to)
                    .is_some_and(|members| !members.replicas().any(|node| node == leader))
            })
            .map(|to| (from, to, leader))
    })
}

/// Nodes 1, 2 and 3, once every group has a voter on each.
async fn start_placed_three(network: &MemoryNetwork, data_root: &Path) -> LiveNodes {
    let nodes: LiveNodes = Arc::new(RwLock::new(start_three(network, data_root).await.to_vec()));
    let first = live(&nodes)[0].clone();
    eventually("every group on three voters", || async {
        fully_replicated(&first)
    })
    .await;
    nodes
}

fn live(nodes: &LiveNodes) -> Vec<Cluster> {
    nodes.read().unwrap().clone()
}

fn owner_of(cluster: &Cluster, vshard: VShardId) -> GroupId {
    let metadata = cluster.metadata();
    let applied = metadata.borrow();
    applied.state.routing().expect("routing").group_of(vshard)
}

fn phase_of(cluster: &Cluster, id: MigrationId) -> Option<MigrationPhase> {
    let metadata = cluster.metadata();
    let applied = metadata.borrow();
    applied
        .state
        .migrations()
        .get(&id)
        .map(|migration| migration.phase)
}

async fn begin_move(nodes: &LiveNodes, vshard: VShardId, to: GroupId) -> MigrationId {
    let deadline = Instant::now() + MIGRATION_WAIT;
    loop {
        let service = NodeService::new(live(nodes)[0].clone());
        match service.move_vshard(vshard, to).await {
            Ok(view) => return MigrationId(view.id),
            Err(error) => {
                assert!(Instant::now() < deadline, "cannot begin a move: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What crashing and restarting a node needs.
struct Crash<'a> {
    network: &'a MemoryNetwork,
    data_root: &'a Path,
    nodes: &'a LiveNodes,
}

impl Crash<'_> {
    /// Waits for migration `id` to reach `crash_at`, then crashes the node that leads `group`
    /// (the metadata group, or the move's source or target) and starts it again from its data
    /// dir.
    async fn leader_of_at(&self, group: GroupId, id: MigrationId, crash_at: CrashAt) {
        let reached = |phase: MigrationPhase| match crash_at {
            CrashAt::Copying => !matches!(phase, MigrationPhase::Planned),
            CrashAt::Fenced => !matches!(phase, MigrationPhase::Planned | MigrationPhase::Copying),
            CrashAt::Switched | CrashAt::Never => phase.is_switched(),
        };
        let deadline = Instant::now() + MIGRATION_WAIT;
        while !live(self.nodes)
            .iter()
            .any(|cluster| phase_of(cluster, id).is_some_and(reached))
        {
            assert!(Instant::now() < deadline, "{id} never reached {crash_at:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let leader = live(self.nodes).iter().find_map(|cluster| {
            cluster
                .raft()
                .status(group)
                .and_then(|status| status.leader)
                .filter(|leader| *leader == cluster.node())
        });
        let Some(victim) = leader else {
            return;
        };
        println!("  crashing {victim}, leader of {group}, at {crash_at:?}");
        self.stop(victim).await;
        self.start_again(victim).await;
    }

    /// Crashes `victim`: its peers lose it at once, and it leaves the live nodes.
    async fn stop(&self, victim: NodeId) {
        self.network.crash(victim);
        let crashed = {
            let mut nodes = self.nodes.write().unwrap();
            let position = nodes.iter().position(|cluster| cluster.node() == victim);
            nodes.remove(position.expect("victim is live"))
        };
        crashed.shutdown().await;
    }

    /// Starts `victim` again from its data dir, as a live node.
    async fn start_again(&self, victim: NodeId) -> Cluster {
        self.network.restart(victim);
        let restarted = start(self.network, config(victim.0, &[1, 2, 3], self.data_root)).await;
        self.nodes.write().unwrap().push(restarted.clone());
        restarted
    }
}

async fn wait_final(nodes: &LiveNodes, id: MigrationId) -> MigrationPhase {
    let deadline = Instant::now() + MIGRATION_WAIT;
    loop {
        let phase = phase_of(&live(nodes)[0], id);
        if let Some(phase) = phase.filter(|phase| phase.is_final()) {
            return phase;
        }
        assert!(Instant::now() < deadline, "{id} stuck at {phase:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_until_served(service: &NodeService, key: &str) -> Option<Vec<u8>> {
    let deadline = Instant::now() + MIGRATION_WAIT;
    loop {
        match service
            .kv_get(key.to_string(), ReadConsistency::Linearizable)
            .await
        {
            Ok(value) => return value,
            Err(error) => {
                assert!(Instant::now() < deadline, "final read of {key}: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Every live node holds the same routing, and the replicas of every group on the nodes the
/// routing makes its members (three) have the same applied index and state hash.
fn replicas_agree(nodes: &[Cluster]) -> bool {
    let routings: Vec<_> = nodes
        .iter()
        .map(|cluster| cluster.metadata().borrow().state.routing().cloned())
        .collect();
    if routings.windows(2).any(|pair| pair[0] != pair[1]) {
        return false;
    }
    let Some(Some(routing)) = routings.first() else {
        return false;
    };
    (1..=NUM_GROUPS).map(GroupId).all(|group| {
        let Some(members) = routing.members(group) else {
            return false;
        };
        let states: Vec<_> = nodes
            .iter()
            .filter(|cluster| members.contains(cluster.node()))
            .filter_map(|cluster| {
                let status = cluster.raft().status(group)?;
                let hash = cluster.raft().state_hash(group).ok()?;
                Some((status.applied_index, hash))
            })
            .collect();
        states.len() == 3 && states.windows(2).all(|pair| pair[0] == pair[1])
    })
}

/// One client: random puts, gets and CAS on the moving keys through random live nodes.
struct Client {
    id: u64,
    nodes: LiveNodes,
    recorder: Arc<Mutex<HistoryRecorder>>,
    stop: Arc<AtomicBool>,
    keys: Vec<String>,
    started: Instant,
}

impl Client {
    async fn run(self, seed: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let now = || self.started.elapsed().as_micros() as u64;
        for sequence in 0..OPS_PER_CLIENT_MAX {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let key = self.keys[rng.random_range(0..self.keys.len())].clone();
            let value = format!("c{}-{sequence}", self.id);
            let kind = match rng.random_range(0..10) {
                0..=4 => OpKind::put(value.clone()),
                5..=7 => OpKind::Get,
                _ => OpKind::Cas {
                    expected: None,
                    new: value.clone().into_bytes(),
                },
            };
            let nodes = live(&self.nodes);
            let service = NodeService::new(nodes[rng.random_range(0..nodes.len())].clone());
            let op =
                self.recorder
                    .lock()
                    .unwrap()
                    .invoke(self.id, key.clone(), kind.clone(), now());
            let outcome = execute(&service, key, value, &kind).await;
            if outcome != Outcome::Unknown {
                self.recorder
                    .lock()
                    .unwrap()
                    .complete(op, now(), outcome)
                    .expect("valid outcome");
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..=3))).await;
        }
    }
}

async fn execute(service: &NodeService, key: String, value: String, kind: &OpKind) -> Outcome {
    let result = match kind {
        OpKind::Put { .. } => service
            .kv_put(key, value.into_bytes())
            .await
            .map(|_| Outcome::done()),
        OpKind::Get => service
            .kv_get(key, ReadConsistency::Linearizable)
            .await
            .map(Outcome::read),
        OpKind::Cas { .. } => service
            .kv_cas(key, None, value)
            .await
            .map(|cas| Outcome::cas(cas.swapped, cas.current)),
        OpKind::Delete => unreachable!("the workload does not delete"),
    };
    match result {
        Ok(outcome) => outcome,
        Err(ServiceError::Unavailable { .. } | ServiceError::BadRequest(_)) => Outcome::Failed,
        Err(_) => Outcome::Unknown,
    }
}
