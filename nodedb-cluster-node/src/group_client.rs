//! Runs an operation on the replica that can serve it: the local replica when it leads the
//! group, otherwise the leader, found through leader hints and reached in one hop over the
//! Control channel. Retries are bounded; a timeout after proposing stays "outcome unknown".
//!
//! A forward to a leader that dies would wait for the whole RPC deadline (the dead process
//! never answers, and nothing tells QUIC it is gone). So while this node hosts a replica of
//! the group, a forward also watches the replica's view of the leader: once another node leads,
//! a read moves on to it at once and a write ends as "outcome unknown" (it may have reached
//! the old leader's log), instead of both waiting out the deadline.

use crate::control::{
    ControlError, ControlRequest, ControlResponse, MembershipChange, MigrationStep,
};
use crate::metrics;
use crate::migration::import_page;
use crate::reconciler::CAUGHT_UP_LAG_MAX;
use nodedb_cluster_core::{
    GroupId, METADATA_GROUP, MetadataCommand, MigrationId, NodeId, VShardId,
};
use nodedb_cluster_raft::{
    Applied, AppliedMetadata, LeaderChange, LogIndex, MetadataOutcome, MultiRaft, ProposeError,
    ReadConsistency, StepOutcome, VSHARD_PART_BYTES, VShardExportPage, VShardStep,
    decode_metadata_outcome, encode_metadata_command,
};
use nodedb_cluster_transport::{Bytes, Transport, TransportError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// Most export bytes in one answer to [`MigrationStep::Export`] (whole parts; at least one).
pub const EXPORT_PAGE_BYTES: u64 = 8 * 1024 * 1024;
/// Deadline of one liveness ping.
const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// Attempts per operation before giving up with "unavailable".
pub const FORWARD_ATTEMPTS_MAX: u32 = 8;
/// First pause between attempts; doubles up to [`FORWARD_BACKOFF_MAX`].
const FORWARD_BACKOFF_FIRST: Duration = Duration::from_millis(25);
const FORWARD_BACKOFF_MAX: Duration = Duration::from_millis(400);
/// How long a forward still waits for the node it went to once another node leads the group,
/// unless that node shows it is alive by answering a ping within it: a dead one never answers.
/// A live old leader (a leadership transfer) answers a write only once the write is committed
/// by the new leader or discarded, which under load takes longer than this.
const REPLACED_LEADER_GRACE: Duration = Duration::from_millis(100);

/// What an operation does once it has found its replica.
#[derive(Clone, Debug)]
pub enum Operation {
    Propose(Vec<u8>),
    Query {
        query: Vec<u8>,
        linearizable: bool,
    },
    ChangeMembership(MembershipChange),
    ProposeVShard {
        vshard: VShardId,
        command: Vec<u8>,
    },
    QueryVShard {
        vshard: VShardId,
        query: Vec<u8>,
        linearizable: bool,
    },
    Migrate(MigrationStep),
}

impl Operation {
    /// A read that any replica may answer from its local state.
    fn is_stale_read(&self) -> bool {
        matches!(
            self,
            Operation::Query {
                linearizable: false,
                ..
            } | Operation::QueryVShard {
                linearizable: false,
                ..
            }
        )
    }

    /// Changes nothing, so a lost answer leaves no unknown outcome behind.
    fn is_read(&self) -> bool {
        matches!(
            self,
            Operation::Query { .. }
                | Operation::QueryVShard { .. }
                | Operation::Migrate(MigrationStep::Export { .. })
                | Operation::Migrate(MigrationStep::Changes { .. })
                | Operation::Migrate(MigrationStep::Sizes)
                | Operation::Migrate(MigrationStep::Digest { .. })
                | Operation::Migrate(MigrationStep::DurableThrough { .. })
        )
    }
}

/// The result of an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    Proposed { index: u64, response: Vec<u8> },
    Answered(Vec<u8>),
    MembershipChanged,
    Stepped(StepOutcome),
}

/// Routes group operations to their leaders. Cheap to clone.
#[derive(Clone)]
pub struct GroupClient {
    node: NodeId,
    raft: MultiRaft,
    control: Arc<dyn Transport>,
    metadata: watch::Receiver<AppliedMetadata>,
    rpc_timeout: Duration,
}

impl GroupClient {
    pub fn new(
        node: NodeId,
        raft: MultiRaft,
        control: Arc<dyn Transport>,
        metadata: watch::Receiver<AppliedMetadata>,
        rpc_timeout: Duration,
    ) -> GroupClient {
        GroupClient {
            node,
            raft,
            control,
            metadata,
            rpc_timeout,
        }
    }

    /// The node this client runs on.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Replicates `command` through `group`; returns the log index and the engine's response.
    pub async fn propose(
        &self,
        group: GroupId,
        command: Vec<u8>,
    ) -> Result<(u64, Vec<u8>), ControlError> {
        self.proposed(group, Operation::Propose(command)).await
    }

    /// Answers `query` on `group`: linearizable at the leader, or stale from the nearest replica.
    pub async fn query(
        &self,
        group: GroupId,
        query: Vec<u8>,
        linearizable: bool,
    ) -> Result<Vec<u8>, ControlError> {
        let operation = Operation::Query {
            query,
            linearizable,
        };
        self.answered(group, operation, linearizable).await
    }

    /// Replicates `command`, which touches only `vshard`, through `group`. A fenced vShard
    /// answers [`ControlError::Moved`] at once (not retried here: the routing decides).
    pub async fn propose_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
        command: Vec<u8>,
    ) -> Result<(u64, Vec<u8>), ControlError> {
        self.proposed(group, Operation::ProposeVShard { vshard, command })
            .await
    }

    /// Answers `query`, which reads only `vshard`, on `group`; [`ControlError::Moved`] when
    /// the vShard is fenced there.
    pub async fn query_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
        query: Vec<u8>,
        linearizable: bool,
    ) -> Result<Vec<u8>, ControlError> {
        let operation = Operation::QueryVShard {
            vshard,
            query,
            linearizable,
        };
        self.answered(group, operation, linearizable).await
    }

    /// Runs a write and counts it: the log index and the engine's response.
    async fn proposed(
        &self,
        group: GroupId,
        operation: Operation,
    ) -> Result<(u64, Vec<u8>), ControlError> {
        let started = Instant::now();
        let result = match self.run(group, operation).await {
            Ok(Served::Proposed { index, response }) => Ok((index, response)),
            Ok(other) => Err(unexpected(other)),
            Err(error) => Err(error),
        };
        metrics::proposal_done(group, started.elapsed(), &result);
        result
    }

    /// Runs a read and counts it: the engine's answer.
    async fn answered(
        &self,
        group: GroupId,
        operation: Operation,
        linearizable: bool,
    ) -> Result<Vec<u8>, ControlError> {
        let started = Instant::now();
        let result = match self.run(group, operation).await {
            Ok(Served::Answered(answer)) => Ok(answer),
            Ok(other) => Err(unexpected(other)),
            Err(error) => Err(error),
        };
        metrics::read_done(group, linearizable, started.elapsed(), &result);
        result
    }

    /// Runs one migration step on `group`'s leader.
    pub async fn migrate(
        &self,
        group: GroupId,
        step: MigrationStep,
    ) -> Result<Served, ControlError> {
        self.run(group, Operation::Migrate(step)).await
    }

    /// Replicates one step of `migration` on `vshard` (`data`: its payload) in `group` at its
    /// leader.
    pub async fn claim(
        &self,
        group: GroupId,
        vshard: VShardId,
        migration: MigrationId,
        step: VShardStep,
        data: impl Into<Bytes>,
    ) -> Result<StepOutcome, ControlError> {
        let claim = MigrationStep::Claim {
            vshard,
            migration,
            step,
            data: data.into(),
        };
        match self.migrate(group, claim).await? {
            Served::Stepped(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// The page of export `export` of `vshard` in `group` from `first_part` on (see
    /// [`MigrationStep::Export`]): read in place when this node leads `group`, its parts then
    /// shared with the export rather than encoded, copied and decoded; else asked of the
    /// leader.
    pub async fn export_page(
        &self,
        group: GroupId,
        vshard: VShardId,
        export: u64,
        first_part: u32,
        bytes_max: u64,
    ) -> Result<Arc<VShardExportPage>, ControlError> {
        if self.raft.is_leader(group) {
            let bytes_max = page_bytes(bytes_max);
            match (self.raft)
                .export_vshard_page(group, vshard, export, first_part, bytes_max)
                .await
            {
                // The lead moved meanwhile: ask whoever leads now.
                Err(ProposeError::NotLeader { .. }) => {}
                local => {
                    return local.map_err(|error| ControlError::from_propose(self.node, error));
                }
            }
        }
        let read = MigrationStep::Export {
            vshard,
            export,
            first_part,
            bytes_max,
        };
        match self.migrate(group, read).await? {
            Served::Answered(answer) => decode_answer(&answer).map(Arc::new).map_err(|reason| {
                ControlError::Invalid(format!("undecodable export page of {group}: {reason}"))
            }),
            other => Err(unexpected(other)),
        }
    }

    /// The bytes per vShard that a replica of `group` holds: the leader's, or another
    /// replica's when the leader is not known.
    pub async fn vshard_bytes(
        &self,
        group: GroupId,
    ) -> Result<BTreeMap<VShardId, u64>, ControlError> {
        match self
            .run(group, Operation::Migrate(MigrationStep::Sizes))
            .await?
        {
            Served::Answered(answer) => decode_answer(&answer).map_err(|reason| {
                ControlError::Invalid(format!("undecodable sizes of {group}: {reason}"))
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Applies one membership change to `group` at its leader.
    pub async fn change_membership(
        &self,
        group: GroupId,
        change: MembershipChange,
    ) -> Result<(), ControlError> {
        match self.run(group, Operation::ChangeMembership(change)).await? {
            Served::MembershipChanged => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Commits `command` in the metadata group (group 0); `Ok` only when it was applied, the
    /// refusal or the routing failure otherwise, as text for logs and start errors.
    pub async fn propose_metadata(&self, command: &MetadataCommand) -> Result<(), String> {
        let (_, response) = self
            .propose(METADATA_GROUP, encode_metadata_command(command))
            .await
            .map_err(|error| error.to_string())?;
        match decode_metadata_outcome(&response) {
            Some(MetadataOutcome::Applied(_)) => Ok(()),
            other => Err(format!("the metadata group answered {other:?}")),
        }
    }

    async fn run(&self, group: GroupId, operation: Operation) -> Result<Served, ControlError> {
        let mut target = self.first_target(group, &operation);
        let mut backoff = FORWARD_BACKOFF_FIRST;
        let mut last_error = ControlError::Unavailable {
            node: self.node,
            reason: format!("no replica of {group} known"),
        };
        let mut tried = None;
        for attempt in 0..FORWARD_ATTEMPTS_MAX {
            if attempt > 0 {
                if let Some(leader) = self.pause_before_retry(group, tried, backoff).await {
                    target = Some(leader);
                }
                backoff = (backoff * 2).min(FORWARD_BACKOFF_MAX);
            }
            let Some(node) = target.or_else(|| self.any_replica(group, attempt)) else {
                tried = None;
                continue;
            };
            tried = Some(node);
            let result = if node == self.node {
                self.serve_here(group, operation.clone()).await
            } else {
                let forwarded = self.forward_watched(node, group, &operation).await;
                metrics::forwarded(group, &forwarded);
                forwarded
            };
            match result {
                Ok(served) => return Ok(served),
                Err(error) if error.outcome_unknown() => return Err(error),
                Err(ControlError::NotLeader { leader_hint, .. }) => {
                    target = leader_hint.filter(|hint| Some(*hint) != Some(node));
                    last_error = ControlError::NoQuorum { group };
                }
                // A moved vShard is the leader's definite answer: the caller re-routes it.
                Err(error @ ControlError::Invalid(_))
                | Err(error @ ControlError::Storage(_))
                | Err(error @ ControlError::Moved { .. }) => {
                    return Err(error);
                }
                Err(error) => {
                    target = None;
                    last_error = error;
                }
            }
        }
        Err(last_error)
    }

    /// Waits `pause` before another attempt on `group`, or less: until the local replica of
    /// the group (if this node hosts one) knows a leader other than `failed`, the node the
    /// last attempt went to; returns that leader. So a write that failed on a dead leader is
    /// retried as soon as the election ends, not after a backoff that kept doubling while the
    /// group had no leader.
    async fn pause_before_retry(
        &self,
        group: GroupId,
        failed: Option<NodeId>,
        pause: Duration,
    ) -> Option<NodeId> {
        let another = |leader: Option<NodeId>| leader.filter(|leader| Some(*leader) != failed);
        // Subscribed before the status is read, so that no change falls in between.
        let mut changes = self.raft.leader_changes();
        let Some(status) = self.raft.status(group) else {
            tokio::time::sleep(pause).await;
            return None;
        };
        if let Some(leader) = another(status.leader) {
            return Some(leader);
        }
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            let leader = tokio::select! {
                () = &mut sleep => return None,
                change = changes.recv() => match change {
                    Ok(change) if change.group == group => another(change.leader),
                    Ok(_) => None,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        another(self.raft.status(group).and_then(|status| status.leader))
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        sleep.await;
                        return None;
                    }
                },
            };
            if leader.is_some() {
                return leader;
            }
        }
    }

    /// The replica to try first: this node when it hosts the group and either leads it or the
    /// read may be stale; otherwise the known leader.
    fn first_target(&self, group: GroupId, operation: &Operation) -> Option<NodeId> {
        if operation.is_stale_read() && self.raft.status(group).is_some() {
            return Some(self.node);
        }
        self.leader(group)
    }

    /// The leader of `group` as far as this node knows: its own replica's view, else the
    /// routing's leader hint.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        if let Some(leader) = self.raft.status(group).and_then(|status| status.leader) {
            return Some(leader);
        }
        let metadata = self.metadata.borrow();
        let members = metadata.state.routing()?.members(group)?;
        members.leader_hint
    }

    /// Whether `node` answers a ping within `PING_TIMEOUT` (half a second).
    pub async fn answers(&self, node: NodeId) -> bool {
        if node == self.node {
            return true;
        }
        let ping = Bytes::from(ControlRequest::Identify.encode());
        self.control.call(node, ping, PING_TIMEOUT).await.is_ok()
    }

    /// Some replica of `group` from the routing table, rotating with `attempt`.
    fn any_replica(&self, group: GroupId, attempt: u32) -> Option<NodeId> {
        let metadata = self.metadata.borrow();
        let members = metadata.state.routing()?.members(group)?;
        let voters: Vec<NodeId> = members.voters.iter().copied().collect();
        match voters.len() {
            0 => None,
            count => Some(voters[attempt as usize % count]),
        }
    }

    /// [`GroupClient::forward`] to `node`, given up [`REPLACED_LEADER_GRACE`] after the local
    /// replica of `group` (if any) sees another node lead: a read then answers `NotLeader` with
    /// the new leader as hint (nothing changed, so [`GroupClient::run`] tries there next), a
    /// write answers `Timeout` (outcome unknown), unless `node` answered a ping within the
    /// grace: a write then waits for its answer (the forward's own deadline still bounds it),
    /// since an old leader alive after a transfer tells whether the write committed. Without a
    /// local replica there is nothing to watch.
    async fn forward_watched(
        &self,
        node: NodeId,
        group: GroupId,
        operation: &Operation,
    ) -> Result<Served, ControlError> {
        if self.raft.status(group).is_none() {
            return self.forward(node, group, operation).await;
        }
        let mut changes = self.raft.leader_changes();
        let call = self.forward(node, group, operation);
        tokio::pin!(call);
        loop {
            let leader = tokio::select! {
                result = &mut call => return result,
                change = changes.recv() => match change {
                    Ok(change) => replaced_leader(&change, group, node),
                    // Missed some changes: the replica's current view decides.
                    Err(broadcast::error::RecvError::Lagged(_)) => self
                        .raft
                        .status(group)
                        .and_then(|status| status.leader)
                        .filter(|leader| *leader != node),
                    Err(broadcast::error::RecvError::Closed) => return call.await,
                },
            };
            let Some(leader) = leader else {
                continue;
            };
            let alive = async {
                match operation.is_read() {
                    true => std::future::pending().await,
                    false => self.answers(node).await,
                }
            };
            tokio::select! {
                result = &mut call => return result,
                true = alive => return call.await,
                () = tokio::time::sleep(REPLACED_LEADER_GRACE) => {}
            }
            tracing::debug!(%group, from = %node, to = %leader, "leader changed under a forward");
            return Err(match operation.is_read() {
                true => ControlError::NotLeader {
                    node,
                    group,
                    leader_hint: Some(leader),
                },
                false => ControlError::Timeout { group },
            });
        }
    }

    pub(crate) async fn forward(
        &self,
        node: NodeId,
        group: GroupId,
        operation: &Operation,
    ) -> Result<Served, ControlError> {
        let request = match operation.clone() {
            Operation::Propose(command) => ControlRequest::Propose { group, command },
            Operation::Query {
                query,
                linearizable,
            } => ControlRequest::Query {
                group,
                query,
                linearizable,
            },
            Operation::ChangeMembership(change) => {
                ControlRequest::ChangeMembership { group, change }
            }
            Operation::ProposeVShard { vshard, command } => ControlRequest::ProposeVShard {
                group,
                vshard,
                command,
            },
            Operation::QueryVShard {
                vshard,
                query,
                linearizable,
            } => ControlRequest::QueryVShard {
                group,
                vshard,
                query,
                linearizable,
            },
            Operation::Migrate(step) => ControlRequest::Migrate { group, step },
        };
        let answer = self
            .control
            .call(node, Bytes::from(request.encode()), self.rpc_timeout)
            .await;
        let bytes = match answer {
            Ok(bytes) => bytes,
            Err(error) => return Err(transport_failure(node, group, operation, error)),
        };
        match ControlResponse::decode(&bytes) {
            Ok(ControlResponse::Proposed { index, response }) => {
                Ok(Served::Proposed { index, response })
            }
            Ok(ControlResponse::Answered { answer }) => Ok(Served::Answered(answer)),
            Ok(ControlResponse::MembershipChanged) => Ok(Served::MembershipChanged),
            Ok(ControlResponse::Stepped {
                index,
                applied,
                claim,
            }) => Ok(Served::Stepped(StepOutcome {
                index: LogIndex(index),
                applied,
                claim,
            })),
            Ok(ControlResponse::Refused(error)) => Err(error),
            Ok(other) => Err(unexpected_response(node, other)),
            Err(reason) => Err(ControlError::Invalid(format!(
                "undecodable answer from {node}: {reason}"
            ))),
        }
    }

    /// Serves an operation on this node's replica without forwarding it (the one hop of a
    /// forward). Only a vShard import reaches further: the target's leader reads the export
    /// from the source's leader.
    pub async fn serve_here(
        &self,
        group: GroupId,
        operation: Operation,
    ) -> Result<Served, ControlError> {
        let (raft, node) = (&self.raft, self.node);
        let refused = |error| ControlError::from_propose(node, error);
        let proposed = |applied: Applied| Served::Proposed {
            index: applied.index.0,
            response: applied.response,
        };
        match operation {
            Operation::Propose(command) => raft
                .propose(group, command)
                .await
                .map(proposed)
                .map_err(refused),
            Operation::ProposeVShard { vshard, command } => raft
                .propose_vshard(group, vshard, command)
                .await
                .map(proposed)
                .map_err(refused),
            Operation::QueryVShard {
                vshard,
                query,
                linearizable,
            } => raft
                .query_vshard(group, vshard, &query, consistency(linearizable))
                .await
                .map(Served::Answered)
                .map_err(refused),
            Operation::Migrate(step) => match step {
                MigrationStep::Export {
                    vshard,
                    export,
                    first_part,
                    bytes_max,
                } => raft
                    .export_vshard_page(group, vshard, export, first_part, page_bytes(bytes_max))
                    .await
                    .map(|page| Served::Answered(encode_answer(page.as_ref()))),
                MigrationStep::Changes {
                    vshard,
                    after,
                    before,
                } => raft
                    .vshard_changes(
                        group,
                        vshard,
                        LogIndex(after),
                        LogIndex(before),
                        VSHARD_PART_BYTES,
                    )
                    .await
                    .map(|changes| Served::Answered(encode_answer(&changes))),
                MigrationStep::Sizes => raft
                    .vshard_bytes(group)
                    .map(|bytes| Served::Answered(encode_answer(&bytes))),
                MigrationStep::Digest { vshard } => raft
                    .vshard_digest(group, vshard)
                    .await
                    .map(|digest| Served::Answered(encode_answer(&digest))),
                MigrationStep::DurableThrough { through } => raft
                    .make_durable_through(group, LogIndex(through))
                    .await
                    .map(|durable| Served::Answered(encode_answer(&durable))),
                MigrationStep::Claim {
                    vshard,
                    migration,
                    step,
                    data,
                } => raft
                    .migration_step(group, vshard, migration, step, data)
                    .await
                    .map(Served::Stepped),
                MigrationStep::ImportPage(page) => {
                    if !raft.is_leader(group) {
                        let leader_hint = raft.status(group).and_then(|status| status.leader);
                        return Err(refused(ProposeError::NotLeader { group, leader_hint }));
                    }
                    // Boxed: the import calls back into this client.
                    return Box::pin(import_page(self, group, page))
                        .await
                        .map(|imported| Served::Answered(encode_answer(&imported)));
                }
            }
            .map_err(refused),
            Operation::Query {
                query,
                linearizable,
            } => raft
                .query(group, &query, consistency(linearizable))
                .await
                .map(Served::Answered)
                .map_err(refused),
            Operation::ChangeMembership(change) => {
                let result = match change {
                    MembershipChange::AddLearner {
                        node: learner,
                        addr,
                    } => raft.add_learner(group, learner, addr).await,
                    MembershipChange::Promote { node: learner } => {
                        if let Some(lag) = learner_lag(raft, group, learner)
                            && lag > CAUGHT_UP_LAG_MAX
                        {
                            return Err(ControlError::NotCaughtUp {
                                group,
                                node: learner,
                                lag,
                            });
                        }
                        raft.promote(group, learner).await
                    }
                    MembershipChange::Remove { node: member } => {
                        raft.remove_replica(group, member).await
                    }
                    MembershipChange::TransferLeader { to } => {
                        raft.transfer_leader(group, to).await
                    }
                };
                result
                    .map(|()| Served::MembershipChanged)
                    .map_err(|error| ControlError::from_membership(node, error))
            }
        }
    }
}

/// The bytes of one export page asked for, capped at [`EXPORT_PAGE_BYTES`].
fn page_bytes(bytes_max: u64) -> usize {
    bytes_max.min(EXPORT_PAGE_BYTES) as usize
}

/// The answer to a [`MigrationStep`] that reads (`VShardExportPage`, `VShardChanges`, the
/// bytes per vShard), postcard-encoded into a vector sized once (an export page is about a
/// MiB: grown as it was written, it was copied again at every doubling).
pub fn encode_answer<T: Serialize>(answer: &T) -> Vec<u8> {
    let encoded = postcard::experimental::serialized_size(answer).and_then(|size| {
        let mut out = vec![0; size];
        postcard::to_slice(answer, &mut out)?;
        Ok(out)
    });
    encoded.unwrap_or_else(|error| panic!("migration answer encode: {error}"))
}

/// Reads an answer made by [`encode_answer`].
pub fn decode_answer<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|error| error.to_string())
}

fn consistency(linearizable: bool) -> ReadConsistency {
    match linearizable {
        true => ReadConsistency::Linearizable,
        false => ReadConsistency::Local,
    }
}

/// The leader `change` reports for `group`, when it is a node other than `old`.
fn replaced_leader(change: &LeaderChange, group: GroupId, old: NodeId) -> Option<NodeId> {
    match change.group == group {
        true => change.leader.filter(|leader| *leader != old),
        false => None,
    }
}

/// Fills in the routing version a `Moved` refusal reports: this node's view of the routing.
pub fn with_routing_version(
    error: ControlError,
    metadata: &watch::Receiver<AppliedMetadata>,
) -> ControlError {
    match error {
        ControlError::Moved { group, vshard, .. } => ControlError::Moved {
            group,
            vshard,
            routing_version: metadata
                .borrow()
                .state
                .routing()
                .map_or(0, |routing| routing.routing_version()),
        },
        other => other,
    }
}

/// How far `learner` is behind this leader's log, if this node leads `group` and knows.
fn learner_lag(raft: &MultiRaft, group: GroupId, learner: NodeId) -> Option<u64> {
    let status = raft.status(group)?;
    status
        .followers
        .iter()
        .find(|follower| follower.node == learner)
        .map(|follower| follower.lag)
}

/// Maps a transport failure: after a write may have been delivered, the outcome is unknown;
/// before delivery, or for reads, the peer is just unavailable.
fn transport_failure(
    node: NodeId,
    group: GroupId,
    operation: &Operation,
    error: TransportError,
) -> ControlError {
    if error.outcome_unknown() && !operation.is_read() {
        return ControlError::Timeout { group };
    }
    ControlError::Unavailable {
        node,
        reason: error.to_string(),
    }
}

fn unexpected(served: Served) -> ControlError {
    ControlError::Invalid(format!("unexpected result {served:?}"))
}

fn unexpected_response(node: NodeId, response: ControlResponse) -> ControlError {
    ControlError::Invalid(format!("unexpected answer from {node}: {response:?}"))
}

impl std::fmt::Debug for GroupClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupClient")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(group: u32, leader: Option<u64>) -> LeaderChange {
        LeaderChange {
            group: GroupId(group),
            leader: leader.map(NodeId),
            term: 3,
        }
    }

    #[test]
    fn only_another_leader_of_the_same_group_replaces_the_forward_target() {
        let (group, old) = (GroupId(2), NodeId(1));
        assert_eq!(
            replaced_leader(&change(2, Some(3)), group, old),
            Some(NodeId(3))
        );
        assert_eq!(replaced_leader(&change(2, Some(1)), group, old), None);
        assert_eq!(
            replaced_leader(&change(2, None), group, old),
            None,
            "an election in progress is not a new leader yet"
        );
        assert_eq!(replaced_leader(&change(5, Some(3)), group, old), None);
    }
}
