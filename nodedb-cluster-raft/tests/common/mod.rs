//! In-process cluster harness over the in-memory transport: nodes with real redb log files in a
//! temporary directory, the built-in kv engine, and helpers that wait on conditions with
//! deadlines (never fixed sleeps).

#![allow(dead_code)]

use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::kv::{KvAnswer, KvCommand, KvQuery, KvResponse, KvStateMachine};
use nodedb_cluster_raft::log_db::LogDb;
use nodedb_cluster_raft::{
    Applied, GroupStatus, MembershipError, MultiRaft, ProposeError, RaftTimings, ReadConsistency,
    Role,
};
use nodedb_cluster_transport::{MemoryNetwork, MemoryTransport, Transport};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Default deadline of a wait in these tests: generous, because CI machines are slow.
pub const WAIT: Duration = Duration::from_secs(20);
/// Poll interval of waits.
const POLL: Duration = Duration::from_millis(20);
/// Attempts of a client operation that is retried on NotLeader / Timeout.
pub const CLIENT_ATTEMPTS_MAX: usize = 100;

pub struct TestNode {
    pub id: NodeId,
    pub multi: MultiRaft,
    pub log: LogDb,
    pub transport: Arc<MemoryTransport>,
}

pub struct TestCluster {
    pub network: MemoryNetwork,
    pub root: tempfile::TempDir,
    pub nodes: BTreeMap<NodeId, TestNode>,
    pub groups: BTreeSet<GroupId>,
    pub timings: RaftTimings,
    /// The engines of the live nodes, shared with client tasks that outlive crashes.
    pub live: Arc<RwLock<BTreeMap<NodeId, MultiRaft>>>,
}

pub fn address(node: NodeId) -> String {
    format!("127.0.0.1:{}", 19_400 + node.0)
}

impl TestCluster {
    pub async fn new(node_count: u64, seed: u64) -> TestCluster {
        TestCluster::with_timings(node_count, seed, RaftTimings::for_tests()).await
    }

    pub async fn with_timings(node_count: u64, seed: u64, timings: RaftTimings) -> TestCluster {
        println!("test cluster seed {seed}");
        let mut cluster = TestCluster {
            network: MemoryNetwork::new(seed),
            root: tempfile::tempdir().expect("temp dir"),
            nodes: BTreeMap::new(),
            groups: BTreeSet::new(),
            timings,
            live: Arc::new(RwLock::new(BTreeMap::new())),
        };
        for id in 1..=node_count {
            cluster.start_node(NodeId(id)).await;
        }
        cluster
    }

    pub fn data_dir(&self, node: NodeId) -> PathBuf {
        self.root.path().join(format!("node-{}", node.0))
    }

    /// Starts (or restarts) `node` from its files; reopens every group it stored.
    pub async fn start_node(&mut self, node: NodeId) {
        let dir = self.data_dir(node);
        std::fs::create_dir_all(&dir).expect("node dir");
        let log = LogDb::open(&dir.join("raft-log.redb")).expect("open log");
        let transport = self.network.register(node).expect("register");
        let multi = MultiRaft::new(
            node,
            transport.clone() as Arc<dyn Transport>,
            log.clone(),
            dir,
            self.timings,
        )
        .expect("multi-raft");
        transport.set_handler(multi.handler());
        for group in multi.stored_groups().expect("stored groups") {
            multi
                .open_group(group, Box::new(KvStateMachine::new()))
                .await
                .expect("open group");
        }
        self.live.write().expect("live").insert(node, multi.clone());
        self.nodes.insert(
            node,
            TestNode {
                id: node,
                multi,
                log,
                transport,
            },
        );
    }

    /// Kills `node` as `kill -9` would, losing every log write not yet under way.
    pub async fn crash_node(&mut self, node: NodeId) {
        self.kill_node(node, 0).await;
    }

    /// Kills `node` as `kill -9` would: its peers lose it at once (network crash), its log
    /// keeps what was being written plus the first `survivors` queued writes and loses the
    /// rest, then its in-memory state is dropped; its files stay for a restart.
    pub async fn kill_node(&mut self, node: NodeId, survivors: usize) {
        self.network.crash(node);
        self.live.write().expect("live").remove(&node);
        if let Some(test_node) = self.nodes.remove(&node) {
            test_node.log.crash(survivors);
            test_node.multi.shutdown().await;
        }
    }

    pub async fn restart_node(&mut self, node: NodeId) {
        self.network.restart(node);
        self.start_node(node).await;
    }

    /// Creates `group` with `voters` as a node creates a group: initialized on the first
    /// voter alone, then every other voter is added as a learner and all are made voters.
    /// The first voter leads when this returns.
    pub async fn create_group(&mut self, group: GroupId, voters: &[NodeId]) {
        let (first, others) = voters.split_first().expect("a voter");
        let only_first = BTreeMap::from([(*first, address(*first))]);
        let leader = self.nodes[first].multi.clone();
        leader
            .create_group(group, Box::new(KvStateMachine::new()), Some(only_first))
            .await
            .expect("create group");
        self.groups.insert(group);
        if others.is_empty() {
            return;
        }
        for node in others {
            self.nodes[node]
                .multi
                .open_group(group, Box::new(KvStateMachine::new()))
                .await
                .expect("open group");
        }
        wait_for(&format!("{first} to lead {group}"), WAIT, || {
            leader.is_leader(group).then_some(())
        })
        .await;
        for node in others {
            until_not_in_progress(|| leader.add_learner(group, *node, address(*node))).await;
        }
        until_not_in_progress(|| leader.change_voters(group, voters.iter().copied().collect()))
            .await;
    }

    pub fn status(&self, node: NodeId, group: GroupId) -> Option<GroupStatus> {
        self.nodes.get(&node)?.multi.status(group)
    }

    /// Whether every replica of `groups` on `nodes` reports itself quiesced.
    pub fn quiesced(&self, nodes: &[NodeId], groups: &[GroupId]) -> bool {
        nodes.iter().all(|node| {
            groups
                .iter()
                .all(|group| self.status(*node, *group).is_some_and(|s| s.quiesced))
        })
    }

    /// Waits until a live node is leader of `group` and every other live member agrees.
    pub async fn wait_leader(&self, group: GroupId) -> NodeId {
        self.wait_leader_among(group, &self.nodes.keys().copied().collect::<Vec<_>>())
            .await
    }

    pub async fn wait_leader_among(&self, group: GroupId, nodes: &[NodeId]) -> NodeId {
        wait_for(
            &format!("a leader of {group} among {nodes:?}"),
            WAIT,
            || {
                let statuses: Vec<GroupStatus> = nodes
                    .iter()
                    .filter_map(|node| self.status(*node, group))
                    .collect();
                let leader = statuses.iter().find(|status| status.role == Role::Leader)?;
                let agreed = statuses
                    .iter()
                    .filter(|status| leader.voters.contains(&status.node))
                    .all(|status| status.leader == Some(leader.node) && status.term == leader.term);
                agreed.then_some(leader.node)
            },
        )
        .await
    }

    /// Proposes `command` to whichever node leads `group`, following NotLeader hints.
    pub async fn propose(
        &self,
        group: GroupId,
        command: KvCommand,
    ) -> Result<(Applied, KvResponse), ProposeError> {
        propose_any(&self.handles(), group, command).await
    }

    /// Every live node's engine handle, for tasks that outlive a borrow of the cluster.
    pub fn handles(&self) -> BTreeMap<NodeId, MultiRaft> {
        self.nodes
            .iter()
            .map(|(id, node)| (*id, node.multi.clone()))
            .collect()
    }

    pub async fn put(&self, group: GroupId, key: &str, value: &str) -> Applied {
        let command = KvCommand::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        };
        let (applied, response) = self.propose(group, command).await.expect("put");
        assert_eq!(response, KvResponse::Written);
        applied
    }

    /// Linearizable read through the leader; retried while leadership or quorum settles.
    pub async fn get(&self, group: GroupId, key: &str) -> Option<String> {
        let query = KvQuery::Get {
            key: key.as_bytes().to_vec(),
        }
        .encode();
        let mut last_error = None;
        for _ in 0..CLIENT_ATTEMPTS_MAX {
            let leader = self.wait_leader(group).await;
            let read = self.nodes[&leader]
                .multi
                .query(group, &query, ReadConsistency::Linearizable)
                .await;
            match read {
                Ok(answer) => match KvAnswer::decode(&answer) {
                    Some(KvAnswer::Value(value)) => {
                        return value.map(|bytes| String::from_utf8(bytes).expect("utf8"));
                    }
                    other => panic!("unexpected answer {other:?}"),
                },
                Err(
                    error @ (ProposeError::NoQuorum { .. }
                    | ProposeError::NotLeader { .. }
                    | ProposeError::Timeout { .. }),
                ) => {
                    last_error = Some(error);
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => panic!("linearizable get of {key} failed: {error}"),
            }
        }
        panic!("linearizable get of {key} never succeeded: {last_error:?}");
    }

    /// Reads `key` from `node`'s own replica without a barrier.
    pub async fn local_get(&self, node: NodeId, group: GroupId, key: &str) -> Option<String> {
        let query = KvQuery::Get {
            key: key.as_bytes().to_vec(),
        }
        .encode();
        let answer = self.nodes[&node]
            .multi
            .query(group, &query, ReadConsistency::Local)
            .await
            .ok()?;
        match KvAnswer::decode(&answer) {
            Some(KvAnswer::Value(value)) => {
                value.map(|bytes| String::from_utf8(bytes).expect("utf8"))
            }
            _ => None,
        }
    }

    /// Waits until every live replica of `group` applied the same index and has the same hash.
    pub async fn wait_converged(&self, group: GroupId) -> u64 {
        wait_for(&format!("replicas of {group} to converge"), WAIT, || {
            let mut applied = BTreeSet::new();
            let mut hashes = BTreeSet::new();
            for node in self.nodes.values() {
                let Some(status) = node.multi.status(group) else {
                    continue;
                };
                applied.insert(status.applied_index);
                hashes.insert(node.multi.state_hash(group).ok()?);
            }
            (applied.len() == 1 && hashes.len() == 1).then(|| *hashes.iter().next().expect("hash"))
        })
        .await
    }

    pub async fn shutdown(mut self) {
        for node in self.nodes.keys().copied().collect::<Vec<_>>() {
            if let Some(test_node) = self.nodes.remove(&node) {
                test_node.multi.shutdown().await;
                test_node.log.shutdown();
            }
        }
    }
}

/// Runs a membership change until it is not refused for a change still committing (a new
/// leader's first entry commits its membership); panics on any other failure.
async fn until_not_in_progress<F, Fut>(change: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), MembershipError>>,
{
    for _ in 0..CLIENT_ATTEMPTS_MAX {
        match change().await {
            Ok(()) => return,
            Err(MembershipError::InProgress { .. }) => tokio::time::sleep(POLL).await,
            Err(error) => panic!("membership change failed: {error}"),
        }
    }
    panic!("a membership change stayed in progress");
}

/// Proposes `command` on `nodes`, starting anywhere and following NotLeader hints; bounded by
/// [`CLIENT_ATTEMPTS_MAX`]. Other errors (a timeout: outcome unknown) are returned as they are.
pub async fn propose_any(
    nodes: &BTreeMap<NodeId, MultiRaft>,
    group: GroupId,
    command: KvCommand,
) -> Result<(Applied, KvResponse), ProposeError> {
    let bytes = command.encode();
    let mut target = *nodes.keys().next().expect("a node");
    for _ in 0..CLIENT_ATTEMPTS_MAX {
        let result = match nodes.get(&target) {
            Some(multi) => multi.propose(group, bytes.clone()).await,
            None => Err(ProposeError::NotLeader {
                group,
                leader_hint: None,
            }),
        };
        match result {
            Ok(applied) => {
                let response = KvResponse::decode(&applied.response).expect("kv response");
                return Ok((applied, response));
            }
            Err(ProposeError::UnknownGroup { .. }) => {
                target = next_node(nodes, target);
                tokio::time::sleep(POLL).await;
            }
            Err(ProposeError::NotLeader { leader_hint, .. }) => {
                target = match leader_hint {
                    Some(leader) if nodes.contains_key(&leader) => leader,
                    _ => next_node(nodes, target),
                };
                tokio::time::sleep(POLL).await;
            }
            Err(error) => return Err(error),
        }
    }
    Err(ProposeError::Timeout { group })
}

fn next_node(nodes: &BTreeMap<NodeId, MultiRaft>, after: NodeId) -> NodeId {
    nodes
        .keys()
        .copied()
        .find(|node| *node > after)
        .or_else(|| nodes.keys().next().copied())
        .expect("a live node")
}

/// Polls `condition` until it yields a value, at most `deadline`; panics with `what` after.
pub async fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    let polls_max = deadline.as_millis() / POLL.as_millis() + 1;
    for _ in 0..polls_max {
        if let Some(value) = condition() {
            return value;
        }
        if start.elapsed() > deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("timed out after {deadline:?} waiting for {what}");
}

/// Runs `operation` on the current leader of `group`, again on the new leader when leadership
/// moved in between (a `NotLeader` answer applied nothing).
pub async fn on_leader<T, F, Fut>(
    cluster: &TestCluster,
    group: GroupId,
    operation: F,
) -> Result<T, ProposeError>
where
    F: Fn(MultiRaft) -> Fut,
    Fut: Future<Output = Result<T, ProposeError>>,
{
    let mut last = None;
    for _ in 0..CLIENT_ATTEMPTS_MAX {
        let leader = cluster.wait_leader(group).await;
        match operation(cluster.nodes[&leader].multi.clone()).await {
            Err(error @ ProposeError::NotLeader { .. }) => last = Some(error),
            other => return other,
        }
    }
    Err(last.expect("at least one attempt"))
}
