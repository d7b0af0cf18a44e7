//! [`MultiRaft`]: every Raft group replica of one node behind one API. Creates, opens and
//! removes replicas, proposes commands, serves linearizable reads, changes membership one
//! change at a time per group, and reports status and leader changes.

use crate::claims::{VShardClaim, VShardStep};
use crate::error::{self, GroupError, MembershipError, ProposeError};
use crate::handover::{FencedVShards, Siblings};
use crate::log_db::{LogDb, MetaKey};
use crate::log_growth::{self, LogGrowth};
use crate::log_store::{GroupLog, committed_id_is_lazy};
use crate::network::NetworkFactory;
use crate::quiesce::{self, QuiesceTimings, Quiescence};
use crate::reincarnation;
use crate::replica::SharedMachine;
use crate::router::{GroupTable, HostedGroup, RaftRouter};
use crate::sm_adapter::MachineAdapter;
use crate::state_machine::{LogIndex, StateMachine};
use crate::status::{GroupStatus, LeaderChange, status_from_metrics};
use crate::types::{AppRequest, AppResponse, EntryKind, Raft, RaftNode, node_id, raft_id};
use crate::vshard_copy::ExportCache;
use bytes::Bytes;
use nodedb_cluster_core::{GroupId, MigrationId, NodeId, VShardId};
use nodedb_cluster_transport::{Handler, Transport};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{InitializeError, RaftError};
use openraft::{ChangeMembers, ReadPolicy, SnapshotPolicy};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Leader changes buffered for slow subscribers; a subscriber further behind skips ahead.
pub const LEADER_CHANGES_MAX: usize = 1024;

/// Timing and compaction knobs of every group on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTimings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Deadline of a proposal, a read barrier or a membership change.
    pub proposal_timeout_ms: u64,
    /// Deadline of one snapshot install RPC step (the total grows with the snapshot size).
    pub snapshot_timeout_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Build a snapshot also after this many bytes of entries applied since the last one, or
    /// the last snapshot's size when larger (see `log_growth`).
    pub snapshot_log_bytes_since_last: u64,
    /// Entries kept in the log behind a snapshot, so that slightly lagging followers catch up
    /// from the log rather than by snapshot.
    pub logs_to_keep_after_snapshot: u64,
    /// Bytes of entries kept behind a snapshot at most, whatever their count (see
    /// `log_growth`): a follower further behind gets the snapshot.
    pub log_bytes_to_keep_after_snapshot: u64,
    /// A group unused this long, with every member caught up, stops its heartbeats and
    /// election timers until it is used again (see [`GroupStatus::quiesced`]); 0 never.
    pub quiesce_after_ms: u64,
}

impl Default for RaftTimings {
    fn default() -> RaftTimings {
        RaftTimings {
            heartbeat_interval_ms: 100,
            election_timeout_ms_min: 500,
            election_timeout_ms_max: 1000,
            proposal_timeout_ms: 5000,
            snapshot_timeout_ms: 5000,
            snapshot_logs_since_last: 10_000,
            snapshot_log_bytes_since_last: 1024 * 1024 * 1024,
            logs_to_keep_after_snapshot: 1000,
            log_bytes_to_keep_after_snapshot: 64 * 1024 * 1024,
            quiesce_after_ms: 2000,
        }
    }
}

impl RaftTimings {
    /// Fast timings for in-process tests: 50 ms heartbeat, 150-300 ms elections, small logs,
    /// groups quiet after 500 ms.
    pub fn for_tests() -> RaftTimings {
        RaftTimings {
            heartbeat_interval_ms: 50,
            election_timeout_ms_min: 150,
            election_timeout_ms_max: 300,
            proposal_timeout_ms: 3000,
            snapshot_timeout_ms: 2000,
            snapshot_logs_since_last: 200,
            snapshot_log_bytes_since_last: 64 * 1024 * 1024,
            logs_to_keep_after_snapshot: 20,
            log_bytes_to_keep_after_snapshot: 64 * 1024 * 1024,
            quiesce_after_ms: 500,
        }
    }

    fn quiesce_timings(&self) -> Option<QuiesceTimings> {
        (self.quiesce_after_ms > 0).then(|| QuiesceTimings {
            idle: Duration::from_millis(self.quiesce_after_ms),
            round: Duration::from_millis(self.heartbeat_interval_ms),
            silence_max: Duration::from_millis(self.election_timeout_ms_max),
        })
    }

    fn openraft_config(&self) -> Result<openraft::Config, GroupError> {
        let config = openraft::Config {
            cluster_name: "nodedb".to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_ms_min,
            election_timeout_max: self.election_timeout_ms_max,
            install_snapshot_timeout: self.snapshot_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_to_keep_after_snapshot,
            enable_pre_vote: Some(true),
            // A replica removed from a group deletes its log; when the node is added back, the
            // leader may still remember how far the old replica's log reached and would stop
            // on the "reverted" log instead of replicating into the new, empty one. Logs never
            // revert otherwise: every append is fsynced before it is acknowledged.
            allow_log_reversion: Some(true),
            // A leader's entry commits on its followers' acknowledgements while its own append
            // may still be queued. Killed then and restored as leader of its old term at
            // restart, it would give its next entry that lost entry's term and index, and the
            // followers would keep theirs: two commands at one position. A restarted replica
            // always starts as a follower; leading again takes an election and a new term.
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        config
            .validate()
            .map_err(|error| GroupError::InvalidTimings(error.to_string()))
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Confirmed by a quorum (ReadIndex) before reading: sees every acknowledged write.
    Linearizable,
    /// This replica's current state, possibly behind the leader.
    Local,
}

/// The outcome of an applied proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub index: LogIndex,
    pub response: Vec<u8>,
}

/// Target size of one part of a vShard export: each part travels as one log entry, which must
/// replicate well within a heartbeat interval. As large as what replication sends in one
/// AppendEntries, so that a copy takes as few entries, RPCs and log commits as it can.
pub const VSHARD_PART_BYTES: usize = crate::log_store::REPLICATION_BYTES_MAX;

/// The result of a replicated migration step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    pub index: LogIndex,
    /// False when the vShard's claim refused the step (a later step already happened).
    pub applied: bool,
    /// The group's claim on the vShard after the entry.
    pub claim: VShardClaim,
}

/// After a proposal was handed to Raft, a stop of the replica is not a refusal: the entry may
/// be in the log already.
fn interrupted(error: ProposeError) -> ProposeError {
    match error {
        ProposeError::Shutdown { group } => ProposeError::Interrupted { group },
        other => other,
    }
}

/// All Raft group replicas of one node. Cheap to clone.
#[derive(Clone)]
pub struct MultiRaft {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    transport: Arc<dyn Transport>,
    log_db: LogDb,
    data_dir: PathBuf,
    timings: RaftTimings,
    config: Arc<openraft::Config>,
    table: Arc<GroupTable>,
    lifecycle: tokio::sync::Mutex<()>,
    /// Each replica's leader watch and snapshot trigger, aborted when it stops.
    replica_tasks: Mutex<HashMap<GroupId, JoinHandle<()>>>,
    leader_changes: broadcast::Sender<LeaderChange>,
    exports: ExportCache,
    /// Reads handed-over vShards from other nodes (see `handover.rs`).
    fenced_vshards: Arc<OnceLock<Arc<dyn FencedVShards>>>,
    closed: Arc<AtomicBool>,
    /// The quiescence task, started with the first replica.
    quiescer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(quiescer) = self.quiescer.get_mut().ok().and_then(Option::take) {
            quiescer.abort();
        }
    }
}

impl MultiRaft {
    /// A node's multi-raft engine. Snapshots live under `data_dir/groups/<id>/`. Incoming
    /// traffic is served by [`MultiRaft::handler`], which the caller installs on the transport.
    pub fn new(
        node: NodeId,
        transport: Arc<dyn Transport>,
        log_db: LogDb,
        data_dir: PathBuf,
        timings: RaftTimings,
    ) -> Result<MultiRaft, GroupError> {
        let config = Arc::new(timings.openraft_config()?);
        let (leader_changes, _) = broadcast::channel(LEADER_CHANGES_MAX);
        Ok(MultiRaft {
            inner: Arc::new(Inner {
                node,
                transport,
                log_db,
                data_dir,
                timings,
                config,
                table: Arc::new(GroupTable::default()),
                lifecycle: tokio::sync::Mutex::new(()),
                replica_tasks: Mutex::new(HashMap::new()),
                leader_changes,
                exports: ExportCache::default(),
                fenced_vshards: Arc::default(),
                closed: Arc::default(),
                quiescer: Mutex::new(None),
            }),
        })
    }

    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// The handler serving Raft RPCs and snapshot streams for every hosted group.
    pub fn handler(&self) -> Arc<dyn Handler> {
        Arc::new(RaftRouter::new(Arc::clone(&self.inner.table)))
    }

    /// Groups with a replica on this node, ascending.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner.table.ids()
    }

    /// Groups that have durable Raft state in the log file (to reopen after a restart).
    pub fn stored_groups(&self) -> Result<Vec<GroupId>, GroupError> {
        self.inner
            .log_db
            .groups()
            .map_err(|error| GroupError::LogFile {
                reason: error.to_string(),
            })
    }

    /// Starts a replica of `group`. With `initial_members` (node -> address) the group is
    /// initialized, but only if it never was: a replica that already has a vote or a log is
    /// started as it is. Call on exactly one node of a new group; the others use
    /// [`MultiRaft::open_group`] and learn the membership from the leader.
    pub async fn create_group(
        &self,
        group: GroupId,
        machine: Box<dyn StateMachine>,
        initial_members: Option<BTreeMap<NodeId, String>>,
    ) -> Result<(), GroupError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let raft = self.start_replica(group, machine).await?;
        let Some(members) = initial_members else {
            return Ok(());
        };
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|fatal| GroupError::Storage {
                group,
                reason: fatal.to_string(),
            })?;
        if initialized {
            tracing::info!(%group, "group already initialized; not initializing again");
            return Ok(());
        }
        let nodes: BTreeMap<u64, RaftNode> = members
            .into_iter()
            .map(|(node, addr)| (raft_id(node), RaftNode { addr }))
            .collect();
        match raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(error) => Err(GroupError::Initialize {
                group,
                reason: error.to_string(),
            }),
        }
    }

    /// Starts a replica of `group` from its stored state, never initializing it.
    pub async fn open_group(
        &self,
        group: GroupId,
        machine: Box<dyn StateMachine>,
    ) -> Result<(), GroupError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        self.start_replica(group, machine).await.map(|_| ())
    }

    /// Stops the replica of `group` and deletes its log and snapshots from this node.
    pub async fn remove_group(&self, group: GroupId) -> Result<(), GroupError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let hosted = self
            .inner
            .table
            .remove(group)
            .ok_or(GroupError::UnknownGroup { group })?;
        self.stop_replica(group, &hosted).await;
        let storage = |reason: String| GroupError::Storage { group, reason };
        self.inner
            .log_db
            .remove_group(group)
            .await
            .map_err(|error| storage(error.to_string()))?;
        match tokio::fs::remove_dir_all(self.group_dir(group)).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(storage(error.to_string())),
        }
    }

    /// Replicates `command` through `group` and returns the state machine's response.
    pub async fn propose(&self, group: GroupId, command: Vec<u8>) -> Result<Applied, ProposeError> {
        self.propose_entry(group, EntryKind::Command, command).await
    }

    /// Replicates `command`, which touches only `vshard`, through `group`. Refused with
    /// [`ProposeError::Moved`] when the vShard is fenced in the group at the command's log
    /// position (it moved away); then nothing was applied.
    pub async fn propose_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
        command: Vec<u8>,
    ) -> Result<Applied, ProposeError> {
        self.propose_entry(group, EntryKind::VShardCommand { vshard }, command)
            .await
    }

    /// Answers `query`, which reads only `vshard`, like [`MultiRaft::query`]; refused with
    /// [`ProposeError::Moved`] unless the group serves the vShard in its applied state.
    pub async fn query_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
        query: &[u8],
        consistency: ReadConsistency,
    ) -> Result<Vec<u8>, ProposeError> {
        if consistency == ReadConsistency::Linearizable {
            self.read_barrier(group).await?;
        }
        let hosted = self.propose_target(group)?;
        let answer = {
            let replica = hosted.machine.lock();
            if !replica.claim(vshard).serves() {
                return Err(ProposeError::Moved { group, vshard });
            }
            replica
                .engine
                .query(query)
                .map_err(|error| error::query_error(group, error))?
        };
        self.survives_restart(group, consistency).await?;
        Ok(answer)
    }

    /// Replicates one step of `migration` on `vshard` through `group` (the payload is the
    /// export for [`VShardStep::Import`]). A step that a later one already overtook is refused
    /// by every replica and answered with `applied: false`; see [`VShardClaim`].
    pub async fn migration_step(
        &self,
        group: GroupId,
        vshard: VShardId,
        migration: MigrationId,
        step: VShardStep,
        payload: impl Into<Bytes>,
    ) -> Result<StepOutcome, ProposeError> {
        let kind = EntryKind::Migration {
            vshard,
            migration,
            step,
        };
        let (index, answer) = self.write(group, kind, payload.into()).await?;
        match answer {
            AppResponse::Claim { applied, claim } => Ok(StepOutcome {
                index,
                applied,
                claim,
            }),
            other => Err(ProposeError::Storage {
                group,
                reason: format!("unexpected answer {other:?} to a migration step"),
            }),
        }
    }

    /// This node's replica's claim on `vshard` in `group` (its applied state).
    pub fn claim(&self, group: GroupId, vshard: VShardId) -> Result<VShardClaim, ProposeError> {
        let hosted = self.propose_target(group)?;
        let claim = hosted.machine.lock().claim(vshard);
        Ok(claim)
    }

    /// Returns once this replica is the leader and has applied everything committed before the
    /// call (ReadIndex confirmed by a quorum). Reads after it are linearizable.
    pub async fn read_barrier(&self, group: GroupId) -> Result<(), ProposeError> {
        let hosted = self.propose_target(group)?;
        hosted.quiescence.touch(&hosted.raft);
        let barrier = hosted.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        match self.with_deadline(barrier).await {
            None => Err(ProposeError::Timeout { group }),
            Some(Err(error)) => Err(error::read_error(group, error)),
            Some(Ok(_)) => Ok(()),
        }
    }

    /// Answers `query` from the state machine of `group`, after a read barrier when
    /// `consistency` asks for it.
    pub async fn query(
        &self,
        group: GroupId,
        query: &[u8],
        consistency: ReadConsistency,
    ) -> Result<Vec<u8>, ProposeError> {
        if consistency == ReadConsistency::Linearizable {
            self.read_barrier(group).await?;
        }
        let hosted = self.propose_target(group)?;
        let answer = hosted.machine.lock().engine.query(query);
        let answer = answer.map_err(|error| error::query_error(group, error))?;
        self.survives_restart(group, consistency).await?;
        Ok(answer)
    }

    /// Returns once an answer just read from `group`'s applied state cannot be undone by a
    /// restart of this node. A data group's committed id is written lazily (`GroupLog`), and a
    /// replica restarts at its durable committed id: a read without a barrier waits until the
    /// id covering what it saw is durable. A linearizable read needs no wait: a restarted
    /// replica leads only after an election (leader restore is off), and a leader serves reads
    /// only once it applied an entry of its own term, which is past everything committed before.
    async fn survives_restart(
        &self,
        group: GroupId,
        consistency: ReadConsistency,
    ) -> Result<(), ProposeError> {
        if consistency == ReadConsistency::Linearizable || !committed_id_is_lazy(group) {
            return Ok(());
        }
        self.inner
            .log_db
            .sync_meta(group, MetaKey::Committed)
            .await
            .map_err(|error| ProposeError::Storage {
                group,
                reason: error.to_string(),
            })
    }

    /// The local replica's state hash (compare across replicas at equal applied indexes).
    pub fn state_hash(&self, group: GroupId) -> Result<u64, ProposeError> {
        let hosted = self.propose_target(group)?;
        let hash = hosted.machine.lock().state_hash();
        Ok(hash)
    }

    /// Bytes the local replica's engine holds per vShard ([`StateMachine::vshard_bytes`]),
    /// fenced and partly imported vShards included.
    pub fn vshard_bytes(&self, group: GroupId) -> Result<BTreeMap<VShardId, u64>, ProposeError> {
        let hosted = self.propose_target(group)?;
        let bytes = hosted.machine.lock().engine.vshard_bytes();
        Ok(bytes)
    }

    /// Whether this node leads `group`, as its own replica sees it.
    pub fn is_leader(&self, group: GroupId) -> bool {
        self.status(group)
            .is_some_and(|status| status.leader == Some(self.node()))
    }

    /// The local replica's status.
    pub fn status(&self, group: GroupId) -> Option<GroupStatus> {
        let hosted = self.inner.table.get(group)?;
        let metrics = hosted.raft.metrics();
        let quiesced = hosted.quiescence.quiet().is_some();
        let status = status_from_metrics(group, &metrics.borrow_watched(), quiesced);
        Some(status)
    }

    /// Subscribes to leader changes of every hosted group, as this node observes them.
    pub fn leader_changes(&self) -> broadcast::Receiver<LeaderChange> {
        self.inner.leader_changes.subscribe()
    }

    /// Adds `node` (reached at `addr`) as a learner of `group`; returns without waiting for it
    /// to catch up (watch [`GroupStatus::followers`]).
    pub async fn add_learner(
        &self,
        group: GroupId,
        node: NodeId,
        addr: String,
    ) -> Result<(), MembershipError> {
        self.change(group, |raft| async move {
            raft.add_learner(raft_id(node), RaftNode { addr }, false)
                .await
        })
        .await
    }

    /// Makes the learner `node` a voter of `group`.
    pub async fn promote(&self, group: GroupId, node: NodeId) -> Result<(), MembershipError> {
        let voters = BTreeSet::from([raft_id(node)]);
        self.change(group, |raft| async move {
            raft.change_membership(ChangeMembers::AddVoterIds(voters), true)
                .await
        })
        .await
    }

    /// Replaces the voters of `group` with `voters` (which must already be members); removed
    /// voters stay as learners.
    pub async fn change_voters(
        &self,
        group: GroupId,
        voters: BTreeSet<NodeId>,
    ) -> Result<(), MembershipError> {
        let voters: BTreeSet<u64> = voters.into_iter().map(raft_id).collect();
        self.change(group, |raft| async move {
            raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true)
                .await
        })
        .await
    }

    /// Removes `node` from `group` entirely, whether it is a voter or a learner.
    pub async fn remove_replica(
        &self,
        group: GroupId,
        node: NodeId,
    ) -> Result<(), MembershipError> {
        let id = raft_id(node);
        self.change(group, |raft| async move {
            let is_voter = raft.voter_ids().any(|voter| voter == id);
            let change = if is_voter {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            raft.change_membership(change, false).await
        })
        .await
    }

    /// Asks the leader of `group` (this node) to hand leadership to `to`. Returns once asked;
    /// watch [`MultiRaft::leader_changes`] for the outcome.
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<(), MembershipError> {
        let hosted = self.membership_target(group)?;
        hosted.quiescence.touch(&hosted.raft);
        if !hosted.raft.is_leader() {
            let leader_hint = hosted.raft.current_leader().await.map(node_id);
            return Err(MembershipError::NotLeader { group, leader_hint });
        }
        hosted
            .raft
            .trigger()
            .transfer_leader(raft_id(to))
            .await
            .map_err(|fatal| MembershipError::Storage {
                group,
                reason: fatal.to_string(),
            })
    }

    /// Stops every replica. Their durable state stays; the log file is the caller's to close.
    /// Call it before dropping the last handle: replicas run as tasks of their own.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let _lifecycle = self.inner.lifecycle.lock().await;
        if let Some(quiescer) = lock(&self.inner.quiescer).take() {
            quiescer.abort();
        }
        for group in self.inner.table.ids() {
            if let Some(hosted) = self.inner.table.remove(group) {
                self.stop_replica(group, &hosted).await;
            }
        }
    }
}

impl MultiRaft {
    async fn start_replica(
        &self,
        group: GroupId,
        machine: Box<dyn StateMachine>,
    ) -> Result<Raft<MachineAdapter>, GroupError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(GroupError::Shutdown);
        }
        if self.inner.table.get(group).is_some() {
            return Err(GroupError::AlreadyHosted { group });
        }
        let storage = |reason: String| GroupError::Storage { group, reason };
        let snapshot_dir = self.group_dir(group).join("snapshots");
        let forgotten_through = self
            .inner
            .log_db
            .removed_last_index(group)
            .map_err(|error| storage(error.to_string()))?;
        let machine = SharedMachine::new(machine);
        let timings = &self.inner.timings;
        let growth = LogGrowth::new(
            timings.snapshot_log_bytes_since_last,
            timings.log_bytes_to_keep_after_snapshot,
        );
        let siblings = Siblings::new(
            Arc::downgrade(&self.inner.table),
            Arc::clone(&self.inner.fenced_vshards),
            Arc::clone(&self.inner.closed),
        );
        let adapter = MachineAdapter::open(
            group,
            machine.clone(),
            snapshot_dir.clone(),
            Arc::clone(&growth),
            siblings,
        )
        .await
        .map_err(|error| storage(error.to_string()))?;
        let log = GroupLog::new(group, self.inner.log_db.clone());
        let network = NetworkFactory::new(group, Arc::clone(&self.inner.transport));
        let config = match forgotten_through {
            Some(_) => Arc::new(reincarnation::held_config(&self.inner.config)),
            None => Arc::clone(&self.inner.config),
        };
        let raft = Raft::new(raft_id(self.inner.node), config, network, log, adapter)
            .await
            .map_err(|fatal| storage(fatal.to_string()))?;
        if let Some(forgotten_through) = forgotten_through {
            reincarnation::release_when_caught_up(group, &raft, forgotten_through);
        }
        let hosted = HostedGroup {
            raft: raft.clone(),
            forgotten_through,
            snapshot_dir,
            machine,
            changes: Arc::new(tokio::sync::Mutex::new(())),
            quiescence: Arc::new(Quiescence::new(Duration::from_millis(
                self.inner.timings.election_timeout_ms_min,
            ))),
            transport: Arc::clone(&self.inner.transport),
        };
        self.inner.table.insert(group, hosted);
        if self.start_quiescer() {
            let deadline = Duration::from_millis(self.inner.timings.election_timeout_ms_min);
            tokio::spawn(quiesce::wake_members(
                Arc::clone(&self.inner.transport),
                group,
                raft.clone(),
                deadline,
            ));
        }
        let leader_changes = self.inner.leader_changes.clone();
        let replica_raft = raft.clone();
        // Both end with the replica (its metrics close, a trigger fails) or when aborted.
        let tasks = tokio::spawn(async move {
            tokio::select! {
                () = watch_leader(group, replica_raft.clone(), leader_changes) => {}
                () = log_growth::trigger_snapshots(group, replica_raft, growth) => {}
            }
        });
        if let Some(old) = lock(&self.inner.replica_tasks).insert(group, tasks) {
            old.abort();
        }
        Ok(raft)
    }

    /// Starts the quiescence task once (it needs a runtime, which `new` does not). False when
    /// quiescence is off.
    fn start_quiescer(&self) -> bool {
        let Some(timings) = self.inner.timings.quiesce_timings() else {
            return false;
        };
        let mut quiescer = lock(&self.inner.quiescer);
        if quiescer.is_none() {
            *quiescer = Some(tokio::spawn(quiesce::run(
                Arc::downgrade(&self.inner.table),
                Arc::clone(&self.inner.transport),
                timings,
            )));
        }
        true
    }

    async fn stop_replica(&self, group: GroupId, hosted: &HostedGroup) {
        if let Err(error) = hosted.raft.shutdown().await {
            tracing::warn!(%group, %error, "replica did not shut down cleanly");
        }
        let tasks = lock(&self.inner.replica_tasks).remove(&group);
        if let Some(tasks) = tasks {
            tasks.abort();
        }
    }

    async fn propose_entry(
        &self,
        group: GroupId,
        kind: EntryKind,
        payload: Vec<u8>,
    ) -> Result<Applied, ProposeError> {
        let (index, answer) = self.write(group, kind, payload.into()).await?;
        let response = match answer {
            AppResponse::Applied(bytes) => bytes,
            AppResponse::Done | AppResponse::Claim { .. } => Vec::new(),
            AppResponse::Moved { vshard } => return Err(ProposeError::Moved { group, vshard }),
        };
        Ok(Applied { index, response })
    }

    /// Replicates `request` through `group` (a use: a quiet group wakes) and returns its log
    /// index and the state machine's answer.
    async fn write(
        &self,
        group: GroupId,
        kind: EntryKind,
        payload: Bytes,
    ) -> Result<(LogIndex, AppResponse), ProposeError> {
        let request = AppRequest { kind, payload };
        let hosted = self.propose_target(group)?;
        let write = async {
            hosted
                .quiescence
                .touch_for_write(&hosted.raft, self.lease_patience())
                .await;
            hosted.raft.client_write(request).await
        };
        match self.with_deadline(write).await {
            None => Err(ProposeError::Timeout { group }),
            Some(Err(error)) => Err(interrupted(error::propose_error(group, error))),
            Some(Ok(response)) => Ok((LogIndex(response.log_id.index), response.data)),
        }
    }

    async fn change<F, Fut>(&self, group: GroupId, change: F) -> Result<(), MembershipError>
    where
        F: FnOnce(Raft<MachineAdapter>) -> Fut,
        Fut: Future<
            Output = Result<
                openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
                RaftError<
                    crate::types::TypeConfig,
                    openraft::error::ClientWriteError<crate::types::TypeConfig>,
                >,
            >,
        >,
    {
        let hosted = self.membership_target(group)?;
        let _one_change_at_a_time = hosted.changes.lock().await;
        let write = async {
            hosted
                .quiescence
                .touch_for_write(&hosted.raft, self.lease_patience())
                .await;
            change(hosted.raft.clone()).await
        };
        match self.with_deadline(write).await {
            None => Err(MembershipError::Timeout { group }),
            Some(Err(error)) => Err(error::membership_error(group, error)),
            Some(Ok(_)) => Ok(()),
        }
    }

    /// How long a write waits for a woken leader to renew its quorum lease: one longest
    /// election timeout, after which the followers would have elected another leader.
    fn lease_patience(&self) -> Duration {
        Duration::from_millis(self.inner.timings.election_timeout_ms_max)
    }

    async fn with_deadline<T>(&self, future: impl Future<Output = T>) -> Option<T> {
        let deadline = Duration::from_millis(self.inner.timings.proposal_timeout_ms);
        tokio::time::timeout(deadline, future).await.ok()
    }

    pub(crate) fn hosted(&self, group: GroupId) -> Result<HostedGroup, ProposeError> {
        self.propose_target(group)
    }

    pub(crate) fn log_db(&self) -> &LogDb {
        &self.inner.log_db
    }

    pub(crate) fn exports(&self) -> &ExportCache {
        &self.inner.exports
    }

    pub(crate) fn fenced_vshards(&self) -> &OnceLock<Arc<dyn FencedVShards>> {
        &self.inner.fenced_vshards
    }

    fn propose_target(&self, group: GroupId) -> Result<HostedGroup, ProposeError> {
        self.inner
            .table
            .get(group)
            .ok_or(ProposeError::UnknownGroup { group })
    }

    fn membership_target(&self, group: GroupId) -> Result<HostedGroup, MembershipError> {
        self.inner
            .table
            .get(group)
            .ok_or(MembershipError::UnknownGroup { group })
    }

    fn group_dir(&self, group: GroupId) -> PathBuf {
        self.inner.data_dir.join("groups").join(group.0.to_string())
    }
}

/// Publishes every leader change of `group` until the replica stops.
async fn watch_leader(
    group: GroupId,
    raft: Raft<MachineAdapter>,
    changes: broadcast::Sender<LeaderChange>,
) {
    let mut metrics = raft.metrics();
    let mut last: Option<Option<u64>> = None;
    loop {
        let (leader, term) = {
            let current = metrics.borrow_watched();
            (current.current_leader, current.current_term)
        };
        if last != Some(leader) {
            last = Some(leader);
            // No subscribers is fine: changes are a notification, not a log.
            let _ = changes.send(LeaderChange {
                group,
                leader: leader.map(node_id),
                term,
            });
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl std::fmt::Debug for MultiRaft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiRaft")
            .field("node", &self.inner.node)
            .field("groups", &self.inner.table.ids())
            .finish_non_exhaustive()
    }
}
