//! Deterministic-schedule fault harness: N nodes, M groups of three replicas, a seeded plan of
//! partitions, isolations, lossy periods, node kills (as kill -9: queued log writes lost, or a
//! prefix of them written) with restarts, and membership churn (a voter replaced by the node
//! without a replica, while another voter is isolated or killed: see `churn.rs`) on the
//! in-memory network, and concurrent put/get/delete/CAS clients recorded into core's
//! linearizability checker. Some steps first hush the clients
//! until the groups quiesce (heartbeats and election timers stopped), so that the fault hits
//! quiet groups: a quiet leader killed or cut off must still be replaced. After healing: every
//! key's history must be linearizable (with final reads, so no acknowledged write is lost) and
//! every group's replicas must report equal state hashes. Beside the clients, a ticker puts
//! increasing numbers into one more key per group and reads them back without a barrier from
//! random nodes: a replica's answer may lag, but must never go back, not even across a kill
//! and restart of its node (a replica created again on a node after a removal is a new one).
//!
//! The seed is printed; `NODEDB_RAFT_SEED=<n>` replays one. The fault plan and every client's
//! choice of operations derive from the seed; thread interleavings come from the real runtime.

#[path = "fault_harness/churn.rs"]
mod churn;
mod common;

use common::{TestCluster, wait_for};
use nodedb_cluster_core::linearizability::{self, HistoryRecorder, OpKind, Outcome};
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::kv::{KvAnswer, KvCommand, KvQuery, KvResponse};
use nodedb_cluster_raft::{MultiRaft, ProposeError, RaftTimings, ReadConsistency};
use nodedb_cluster_transport::FaultPlan;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const NODES: u64 = 4;
/// Replicas of every group; the node left out is the one churn brings in.
const VOTERS: u64 = 3;
const GROUPS: u32 = 2;
const KEYS_PER_GROUP: u32 = 3;
const CLIENTS: u64 = 4;
const OPS_PER_CLIENT_MAX: u64 = 60;
/// Pause between two operations of one client, so that operations spread over the faults.
const CLIENT_PAUSE_MS_MAX: u64 = 60;
const FAULT_STEPS: usize = 8;
/// Most queued log writes a killed node keeps (a partly written last batch).
const KILL_SURVIVORS_MAX: usize = 4;
/// Rounds of the ticker at most, and its pause between two rounds.
const TICKS_MAX: u64 = 2_000;
const TICK_PAUSE_MS_MAX: u64 = 20;
/// Mixed into the seed for the ticker's own choices.
const TICKER_SEED: u64 = 0x7469_636b;
/// NotLeader redirects one client operation follows before giving up (definitely failed).
const REDIRECTS_MAX: usize = 20;
const DEFAULT_SEEDS: [u64; 3] = [101, 202, 303];
/// Longest wait for every live replica to quiesce before a quiet step's fault.
const QUIET_WAIT: Duration = Duration::from_secs(5);
/// How long the clients stay hushed after a quiet step's fault began: longer than the longest
/// election timeout, so that a quiet follower has to notice a dead or cut-off leader itself.
const QUIET_FAULT_HOLD: Duration = Duration::from_millis(500);

/// The engines of the live nodes; a crashed node is absent until it restarts.
type LiveNodes = Arc<RwLock<BTreeMap<NodeId, MultiRaft>>>;

#[derive(Clone, Debug)]
enum Fault {
    Calm,
    Isolate(NodeId),
    Partition {
        minority: NodeId,
    },
    Lossy {
        drop_percent: u32,
        delay_ms_max: u64,
    },
    /// The node is killed (its log keeps what was being written and the first `survivors`
    /// queued writes; its files stay) and restarts at the end of the step.
    Kill {
        node: NodeId,
        survivors: usize,
    },
    /// The voter of `group` ranked `out_rank` among its current voters is replaced by the node
    /// without a replica, while the one ranked `cut_rank` among the others is cut off.
    Churn {
        group: GroupId,
        out_rank: usize,
        cut: Option<(usize, Cut)>,
    },
}

/// How a churn step cuts a voter off.
#[derive(Clone, Copy, Debug)]
enum Cut {
    Isolate,
    /// Killed as [`Fault::Kill`] and restarted at the end of the step.
    Kill {
        survivors: usize,
    },
}

/// One step of the plan: a fault for a while, hitting quiesced groups when `quiet`.
#[derive(Clone, Debug)]
struct Step {
    fault: Fault,
    duration: Duration,
    quiet: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_keep_every_group_linearizable() {
    let seeds: Vec<u64> = match std::env::var("NODEDB_RAFT_SEED") {
        Ok(seed) => vec![seed.parse().expect("NODEDB_RAFT_SEED must be a u64")],
        Err(_) => DEFAULT_SEEDS.to_vec(),
    };
    for seed in seeds {
        run_seed(seed).await;
    }
}

async fn run_seed(seed: u64) {
    println!("fault harness seed {seed} (replay with NODEDB_RAFT_SEED={seed})");
    // A deadline shorter than most faults, so that outcome-unknown operations occur.
    let timings = RaftTimings {
        proposal_timeout_ms: 600,
        ..RaftTimings::for_tests()
    };
    let mut cluster = TestCluster::with_timings(NODES, seed, timings).await;
    let groups: Vec<GroupId> = (1..=GROUPS).map(GroupId).collect();
    let mut placement = BTreeMap::new();
    for group in &groups {
        let voters = initial_voters(*group);
        cluster.create_group(*group, &voters).await;
        cluster.wait_leader(*group).await;
        placement.insert(*group, voters.into_iter().collect::<BTreeSet<NodeId>>());
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let schedule: Vec<Step> = (0..FAULT_STEPS).map(|_| next_step(&mut rng)).collect();
    println!("seed {seed}: fault schedule {schedule:?}");

    let started = Instant::now();
    let recorder = Arc::new(Mutex::new(HistoryRecorder::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let hush = Arc::new(Hush::default());
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let nodes = Arc::clone(&cluster.live);
        let recorder = Arc::clone(&recorder);
        let stop = Arc::clone(&stop);
        let hush = Arc::clone(&hush);
        let client_seed = seed.wrapping_mul(31).wrapping_add(client);
        clients.push(tokio::spawn(async move {
            run_client(client, client_seed, nodes, recorder, stop, hush, started).await
        }));
    }

    let ticks = Arc::new(TickReads::default());
    let ticker = {
        let (nodes, stop, hush, ticks) = (
            Arc::clone(&cluster.live),
            Arc::clone(&stop),
            Arc::clone(&hush),
            Arc::clone(&ticks),
        );
        tokio::spawn(async move { run_ticker(seed, nodes, stop, hush, ticks).await })
    };

    for step in &schedule {
        if step.quiet {
            hush.begin().await;
            // The clients are silent and the step before has healed: only a group that
            // never settles stays awake.
            let what = format!("seed {seed}: every replica quiet before {:?}", step.fault);
            wait_for(&what, QUIET_WAIT, || {
                placement
                    .iter()
                    .all(|(group, members)| {
                        let members: Vec<NodeId> = members.iter().copied().collect();
                        cluster.quiesced(&members, &[*group])
                    })
                    .then_some(())
            })
            .await;
            println!("seed {seed}: quiet before {:?}", step.fault);
        }
        let churning = Churning::resolve(&placement, &step.fault);
        let killed = killed_node(&step.fault, churning.as_ref());
        if let Some((node, survivors)) = killed {
            // What the victim answers just before the kill, it must answer after the restart.
            ticks.read_every_group(&cluster.live, node).await;
            cluster.kill_node(node, survivors).await;
        }
        apply_fault(&cluster, &step.fault);
        if let Some(churning) = churning {
            if let Some((node, Cut::Isolate)) = churning.cut {
                cluster.network.isolate(node);
            }
            // The new replica answers from its own, empty start.
            ticks.forget(churning.spare, churning.group);
            churn::replace_voter(&cluster, seed, churning.group, churning.out, churning.spare)
                .await;
            let members = placement.get_mut(&churning.group).expect("a placed group");
            members.remove(&churning.out);
            members.insert(churning.spare);
        }
        if step.quiet {
            tokio::time::sleep(QUIET_FAULT_HOLD).await;
            hush.end();
        }
        tokio::time::sleep(step.duration).await;
        cluster.network.heal();
        cluster.network.set_fault_plan(FaultPlan::none());
        if let Some((node, _)) = killed {
            cluster.restart_node(node).await;
            // Read at once, before the leader's next message brings the replica up to date.
            ticks.read_every_group(&cluster.live, node).await;
        }
    }
    hush.end();
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("client task");
    }
    ticker.await.expect("ticker task");
    let ticks_read = ticks
        .checked()
        .unwrap_or_else(|went_back| panic!("seed {seed}: {went_back}"));

    let mut final_reads = Vec::new();
    for group in &groups {
        cluster.wait_leader(*group).await;
        for key in 0..KEYS_PER_GROUP {
            let key = key_name(*group, key);
            final_reads.push((
                key.clone().into_bytes(),
                cluster.get(*group, &key).await.map(String::into_bytes),
            ));
        }
        cluster.wait_converged(*group).await;
    }
    let history = recorder.lock().expect("recorder").history();
    let report = linearizability::check_with_final_reads(&history, final_reads);
    assert!(
        report.is_linearizable(),
        "seed {seed}: history of {} operations is not linearizable: {:#?}",
        history.len(),
        report.verdict
    );
    let unknown = history
        .operations()
        .iter()
        .filter(|operation| operation.outcome == Outcome::Unknown)
        .count();
    let failed = history
        .operations()
        .iter()
        .filter(|operation| operation.outcome == Outcome::Failed)
        .count();
    println!(
        "seed {seed}: {} operations ({unknown} unknown, {failed} failed), {} keys checked, {} ignored; {ticks_read} reads without a barrier never went back",
        history.len(),
        report.keys_checked,
        report.ops_ignored
    );
    cluster.shutdown().await;
}

/// Holds the clients between operations, so that the groups can go quiet.
#[derive(Default)]
struct Hush {
    hushed: AtomicBool,
    /// Client operations under way.
    in_flight: AtomicU64,
}

impl Hush {
    /// Hushes the clients and waits for the operations under way to end.
    async fn begin(&self) {
        self.hushed.store(true, Ordering::SeqCst);
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn end(&self) {
        self.hushed.store(false, Ordering::SeqCst);
    }

    /// Waits while hushed, then counts the caller's operation as under way.
    async fn enter(&self) {
        loop {
            while self.hushed.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            if !self.hushed.load(Ordering::SeqCst) {
                return;
            }
            // Hushed in between: step back so that `begin` does not wait for this one.
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn next_step(rng: &mut SmallRng) -> Step {
    let (fault, duration) = next_fault(rng);
    Step {
        fault,
        duration,
        quiet: rng.random_bool(0.35),
    }
}

fn next_fault(rng: &mut SmallRng) -> (Fault, Duration) {
    let node = NodeId(rng.random_range(1..=NODES));
    let fault = match rng.random_range(0..6) {
        0 => Fault::Calm,
        1 => Fault::Isolate(node),
        2 => Fault::Partition { minority: node },
        3 => Fault::Kill {
            node,
            survivors: rng.random_range(0..=KILL_SURVIVORS_MAX),
        },
        4 => Fault::Churn {
            group: GroupId(rng.random_range(1..=GROUPS)),
            out_rank: rng.random_range(0..VOTERS as usize),
            cut: match rng.random_range(0..3) {
                0 => None,
                1 => Some((rng.random_range(0..VOTERS as usize - 1), Cut::Isolate)),
                _ => Some((
                    rng.random_range(0..VOTERS as usize - 1),
                    Cut::Kill {
                        survivors: rng.random_range(0..=KILL_SURVIVORS_MAX),
                    },
                )),
            },
        },
        _ => Fault::Lossy {
            drop_percent: rng.random_range(1..=15),
            delay_ms_max: rng.random_range(0..=20),
        },
    };
    (fault, Duration::from_millis(rng.random_range(200..=600)))
}

/// Groups are placed on consecutive nodes, so that each has a different node without a
/// replica: group 1 on nodes 1, 2, 3, group 2 on nodes 2, 3, 4, ...
fn initial_voters(group: GroupId) -> Vec<NodeId> {
    (0..VOTERS)
        .map(|rank| NodeId((u64::from(group.0) - 1 + rank) % NODES + 1))
        .collect()
}

/// A churn step resolved against the current placement: which voter goes, which node comes
/// in (the lowest-numbered node without a replica), and which other voter is cut off how.
struct Churning {
    group: GroupId,
    out: NodeId,
    spare: NodeId,
    cut: Option<(NodeId, Cut)>,
}

impl Churning {
    fn resolve(placement: &BTreeMap<GroupId, BTreeSet<NodeId>>, fault: &Fault) -> Option<Self> {
        let Fault::Churn {
            group,
            out_rank,
            cut,
        } = fault
        else {
            return None;
        };
        let members = &placement[group];
        let out = *members.iter().nth(*out_rank).expect("a voter of that rank");
        let spare = (1..=NODES)
            .map(NodeId)
            .find(|node| !members.contains(node))
            .expect("a node without a replica");
        let cut = cut.map(|(rank, how)| {
            let mut kept = members.iter().filter(|node| **node != out);
            (*kept.nth(rank).expect("a voter of that rank"), how)
        });
        Some(Churning {
            group: *group,
            out,
            spare,
            cut,
        })
    }
}

/// The node a step kills (restarted at the end of the step), with how many of its queued log
/// writes survive.
fn killed_node(fault: &Fault, churning: Option<&Churning>) -> Option<(NodeId, usize)> {
    match (fault, churning) {
        (Fault::Kill { node, survivors }, _) => Some((*node, *survivors)),
        (
            _,
            Some(Churning {
                cut: Some((node, Cut::Kill { survivors })),
                ..
            }),
        ) => Some((*node, *survivors)),
        _ => None,
    }
}

/// Switches on a step's network fault (kills and churn are carried out in the step loop).
fn apply_fault(cluster: &TestCluster, fault: &Fault) {
    match fault {
        Fault::Calm | Fault::Kill { .. } | Fault::Churn { .. } => {}
        Fault::Isolate(node) => cluster.network.isolate(*node),
        Fault::Partition { minority } => {
            let majority: Vec<NodeId> = (1..=NODES)
                .map(NodeId)
                .filter(|node| node != minority)
                .collect();
            cluster.network.partition(&[*minority], &majority);
        }
        Fault::Lossy {
            drop_percent,
            delay_ms_max,
        } => {
            let plan = FaultPlan::lossy(f64::from(*drop_percent) / 100.0, 0, *delay_ms_max);
            cluster.network.set_fault_plan(plan);
        }
    }
}

fn key_name(group: GroupId, key: u32) -> String {
    format!("g{}-k{key}", group.0)
}

async fn run_client(
    client: u64,
    seed: u64,
    nodes: LiveNodes,
    recorder: Arc<Mutex<HistoryRecorder>>,
    stop: Arc<AtomicBool>,
    hush: Arc<Hush>,
    started: Instant,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let now = || started.elapsed().as_micros() as u64;
    for sequence in 0..OPS_PER_CLIENT_MAX {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let group = GroupId(rng.random_range(1..=GROUPS));
        let key = key_name(group, rng.random_range(0..KEYS_PER_GROUP));
        let value = format!("c{client}-{sequence}").into_bytes();
        let kind = match rng.random_range(0..10) {
            0..=3 => OpKind::put(value),
            4..=6 => OpKind::Get,
            7 => OpKind::Delete,
            _ => {
                let expected = rng.random_bool(0.3).then(|| {
                    format!(
                        "c{}-{}",
                        rng.random_range(0..CLIENTS),
                        rng.random_range(0..sequence.max(1))
                    )
                    .into_bytes()
                });
                OpKind::Cas {
                    expected,
                    new: value,
                }
            }
        };
        let pause = Duration::from_millis(rng.random_range(0..=CLIENT_PAUSE_MS_MAX));
        tokio::time::sleep(pause).await;
        hush.enter().await;
        let op =
            recorder
                .lock()
                .expect("recorder")
                .invoke(client, key.clone(), kind.clone(), now());
        let outcome = execute(&nodes, group, key.as_bytes(), &kind).await;
        hush.leave();
        if outcome != Outcome::Unknown {
            recorder
                .lock()
                .expect("recorder")
                .complete(op, now(), outcome)
                .expect("valid outcome");
        }
    }
}

/// Puts 1, 2, 3, ... into each group's tick key (one writer: the values apply in that order)
/// and, after each round, reads a tick key without a barrier from a random live node.
async fn run_ticker(
    seed: u64,
    nodes: LiveNodes,
    stop: Arc<AtomicBool>,
    hush: Arc<Hush>,
    ticks: Arc<TickReads>,
) {
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(37).wrapping_add(TICKER_SEED));
    for tick in 1..=TICKS_MAX {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        for group in (1..=GROUPS).map(GroupId) {
            let put = KvCommand::Put {
                key: tick_key(group).into_bytes(),
                value: tick.to_string().into_bytes(),
            };
            hush.enter().await;
            let live = nodes.read().expect("live nodes").clone();
            // Any outcome will do: a later tick is proposed only after this one ended.
            let _outcome = common::propose_any(&live, group, put).await;
            hush.leave();
        }
        let group = GroupId(rng.random_range(1..=GROUPS));
        let node = NodeId(rng.random_range(1..=NODES));
        hush.enter().await;
        let live = nodes.read().expect("live nodes").get(&node).cloned();
        if let Some(multi) = live {
            ticks.read(&multi, node, group).await;
        }
        hush.leave();
        let pause = Duration::from_millis(rng.random_range(0..=TICK_PAUSE_MS_MAX));
        tokio::time::sleep(pause).await;
    }
}

/// The tick each node's replica of each group answered last to a read without a barrier,
/// and the first answer that went back from it.
#[derive(Default)]
struct TickReads {
    seen: Mutex<BTreeMap<(NodeId, GroupId), u64>>,
    reads: AtomicU64,
    went_back: Mutex<Option<String>>,
}

impl TickReads {
    /// Reads `group`'s tick key from `node`'s replica without a barrier (a failed read is
    /// skipped) and checks it against that replica's earlier answers.
    async fn read(&self, multi: &MultiRaft, node: NodeId, group: GroupId) {
        let Ok(answer) = multi
            .query(group, &tick_query(group), ReadConsistency::Local)
            .await
        else {
            return;
        };
        let tick = match KvAnswer::decode(&answer) {
            Some(KvAnswer::Value(None)) => 0,
            Some(KvAnswer::Value(Some(bytes))) => String::from_utf8(bytes)
                .ok()
                .and_then(|text| text.parse().ok())
                .expect("a tick value"),
            other => panic!("unexpected answer {other:?}"),
        };
        self.reads.fetch_add(1, Ordering::SeqCst);
        let mut seen = self.seen.lock().expect("tick reads");
        let before = seen.entry((node, group)).or_default();
        if tick < *before {
            let mut went_back = self.went_back.lock().expect("tick reads");
            went_back.get_or_insert_with(|| {
                format!("{node}'s replica of {group} answered tick {tick} after {before}")
            });
        }
        *before = (*before).max(tick);
    }

    /// Forgets what `node`'s replica of `group` answered: a replica created there again
    /// starts empty and catches up, a new replica with no past to go back from.
    fn forget(&self, node: NodeId, group: GroupId) {
        self.seen.lock().expect("tick reads").remove(&(node, group));
    }

    /// [`TickReads::read`] of every group's tick key on `node`, when it is live.
    async fn read_every_group(&self, nodes: &LiveNodes, node: NodeId) {
        let live = nodes.read().expect("live nodes").get(&node).cloned();
        if let Some(multi) = live {
            for group in (1..=GROUPS).map(GroupId) {
                self.read(&multi, node, group).await;
            }
        }
    }

    /// How many reads were checked, or the first that went back.
    fn checked(&self) -> Result<u64, String> {
        match self.went_back.lock().expect("tick reads").clone() {
            Some(went_back) => Err(went_back),
            None => Ok(self.reads.load(Ordering::SeqCst)),
        }
    }
}

fn tick_key(group: GroupId) -> String {
    format!("g{}-tick", group.0)
}

fn tick_query(group: GroupId) -> Vec<u8> {
    KvQuery::Get {
        key: tick_key(group).into_bytes(),
    }
    .encode()
}

/// Runs one client operation, following leader hints; maps the result to what the client knows.
async fn execute(nodes: &LiveNodes, group: GroupId, key: &[u8], kind: &OpKind) -> Outcome {
    let mut target = NodeId(1);
    for _ in 0..REDIRECTS_MAX {
        let live = nodes.read().expect("live nodes").get(&target).cloned();
        let Some(multi) = live else {
            target = NodeId(target.0 % NODES + 1);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let result = match kind {
            OpKind::Get => {
                let query = KvQuery::Get { key: key.to_vec() }.encode();
                multi
                    .query(group, &query, ReadConsistency::Linearizable)
                    .await
                    .map(|answer| match KvAnswer::decode(&answer) {
                        Some(KvAnswer::Value(value)) => Outcome::read(value),
                        other => panic!("unexpected answer {other:?}"),
                    })
            }
            write => {
                let command = match write {
                    OpKind::Put { value } => KvCommand::Put {
                        key: key.to_vec(),
                        value: value.clone(),
                    },
                    OpKind::Delete => KvCommand::Delete { key: key.to_vec() },
                    OpKind::Cas { expected, new } => KvCommand::Cas {
                        key: key.to_vec(),
                        expected: expected.clone(),
                        new: new.clone(),
                    },
                    OpKind::Get => unreachable!("reads handled above"),
                };
                multi.propose(group, command.encode()).await.map(
                    |applied| match KvResponse::decode(&applied.response) {
                        Some(KvResponse::Written) | Some(KvResponse::Deleted { .. }) => {
                            Outcome::done()
                        }
                        Some(KvResponse::Cas { swapped, current }) => {
                            Outcome::cas(swapped, current)
                        }
                        other => panic!("unexpected response {other:?}"),
                    },
                )
            }
        };
        match result {
            Ok(outcome) => return outcome,
            Err(ProposeError::NotLeader { leader_hint, .. }) => {
                target = leader_hint.unwrap_or(NodeId(target.0 % NODES + 1));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Not a member (any more, or yet): nothing was done there.
            Err(ProposeError::UnknownGroup { .. }) => {
                target = NodeId(target.0 % NODES + 1);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Nothing was changed: the read could not be confirmed.
            Err(ProposeError::NoQuorum { .. }) => return Outcome::Failed,
            Err(_) => return Outcome::Unknown,
        }
    }
    Outcome::Failed
}
