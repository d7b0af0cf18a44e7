//! Runs an operation on the replica that can serve it: the local replica when it leads the
//! group, otherwise the leader, found through leader hints and reached in one hop over the
//! Control channel. Retries are bounded; a timeout after proposing stays "outcome unknown".

use crate::control::{ControlError, ControlRequest, ControlResponse, MembershipChange};
use crate::metrics;
use crate::reconciler::CAUGHT_UP_LAG_MAX;
use nodedb_cluster_core::{GroupId, METADATA_GROUP, MetadataCommand, NodeId};
use nodedb_cluster_raft::{
    AppliedMetadata, MetadataOutcome, MultiRaft, ReadConsistency, decode_metadata_outcome,
    encode_metadata_command,
};
use nodedb_cluster_transport::{Bytes, Transport, TransportError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Attempts per operation before giving up with "unavailable".
pub const FORWARD_ATTEMPTS_MAX: u32 = 8;
/// First pause between attempts; doubles up to [`FORWARD_BACKOFF_MAX`].
const FORWARD_BACKOFF_FIRST: Duration = Duration::from_millis(25);
const FORWARD_BACKOFF_MAX: Duration = Duration::from_millis(400);

/// What an operation does once it has found its replica.
#[derive(Clone, Debug)]
pub enum Operation {
    Propose(Vec<u8>),
    Query { query: Vec<u8>, linearizable: bool },
    ChangeMembership(MembershipChange),
}

/// The result of an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    Proposed { index: u64, response: Vec<u8> },
    Answered(Vec<u8>),
    MembershipChanged,
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

    /// Replicates `command` through `group`; returns the log index and the engine's response.
    pub async fn propose(
        &self,
        group: GroupId,
        command: Vec<u8>,
    ) -> Result<(u64, Vec<u8>), ControlError> {
        let started = Instant::now();
        let result = match self.run(group, Operation::Propose(command)).await {
            Ok(Served::Proposed { index, response }) => Ok((index, response)),
            Ok(other) => Err(unexpected(other)),
            Err(error) => Err(error),
        };
        metrics::proposal_done(group, started.elapsed(), &result);
        result
    }

    /// Answers `query` on `group`: linearizable at the leader, or stale from the nearest replica.
    pub async fn query(
        &self,
        group: GroupId,
        query: Vec<u8>,
        linearizable: bool,
    ) -> Result<Vec<u8>, ControlError> {
        let started = Instant::now();
        let operation = Operation::Query {
            query,
            linearizable,
        };
        let result = match self.run(group, operation).await {
            Ok(Served::Answered(answer)) => Ok(answer),
            Ok(other) => Err(unexpected(other)),
            Err(error) => Err(error),
        };
        metrics::read_done(group, linearizable, started.elapsed(), &result);
        result
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
        for attempt in 0..FORWARD_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(FORWARD_BACKOFF_MAX);
            }
            let Some(node) = target.or_else(|| self.any_replica(group, attempt)) else {
                continue;
            };
            let result = if node == self.node {
                serve_locally(&self.raft, self.node, group, operation.clone()).await
            } else {
                let forwarded = self.forward(node, group, &operation).await;
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
                Err(error @ ControlError::Invalid(_)) | Err(error @ ControlError::Storage(_)) => {
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

    /// The replica to try first: this node when it hosts the group and either leads it or the
    /// read may be stale; otherwise the known leader.
    fn first_target(&self, group: GroupId, operation: &Operation) -> Option<NodeId> {
        let status = self.raft.status(group);
        if let Some(status) = &status {
            let stale_read = matches!(
                operation,
                Operation::Query {
                    linearizable: false,
                    ..
                }
            );
            if stale_read || status.leader == Some(self.node) {
                return Some(self.node);
            }
            if status.leader.is_some() {
                return status.leader;
            }
        }
        let metadata = self.metadata.borrow();
        let members = metadata.state.routing()?.members(group)?;
        members.leader_hint
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

    async fn forward(
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
            Ok(ControlResponse::Refused(error)) => Err(error),
            Ok(other) => Err(unexpected_response(node, other)),
            Err(reason) => Err(ControlError::Invalid(format!(
                "undecodable answer from {node}: {reason}"
            ))),
        }
    }
}

/// Serves an operation on this node's replica without forwarding (the one hop of a forward).
pub async fn serve_locally(
    raft: &MultiRaft,
    node: NodeId,
    group: GroupId,
    operation: Operation,
) -> Result<Served, ControlError> {
    match operation {
        Operation::Propose(command) => raft
            .propose(group, command)
            .await
            .map(|applied| Served::Proposed {
                index: applied.index.0,
                response: applied.response,
            })
            .map_err(|error| ControlError::from_propose(node, error)),
        Operation::Query {
            query,
            linearizable,
        } => {
            let consistency = match linearizable {
                true => ReadConsistency::Linearizable,
                false => ReadConsistency::Local,
            };
            raft.query(group, &query, consistency)
                .await
                .map(Served::Answered)
                .map_err(|error| ControlError::from_propose(node, error))
        }
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
                MembershipChange::TransferLeader { to } => raft.transfer_leader(group, to).await,
            };
            result
                .map(|()| Served::MembershipChanged)
                .map_err(|error| ControlError::from_membership(node, error))
        }
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
    let is_read = matches!(operation, Operation::Query { .. });
    if error.outcome_unknown() && !is_read {
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
