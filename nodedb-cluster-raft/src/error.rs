//! Errors of the multi-raft API, one enum per operation family. Each variant tells the caller
//! what to do: retry elsewhere (`NotLeader`), retry later (`NoQuorum`), or treat the outcome as
//! unknown (`Timeout`).

use crate::state_machine::StateMachineError;
use crate::types::TypeConfig;
use nodedb_cluster_core::{GroupId, NodeId, VShardId};
use openraft::error::{ClientWriteError, Fatal, LinearizableReadError, RaftError};

/// Failure of a proposal or a read on a group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node hosts no replica of the group.
    #[error("{group} is not hosted on this node")]
    UnknownGroup { group: GroupId },
    /// This replica is not the leader; retry on `leader_hint` when known. Nothing was applied.
    #[error("not the leader of {group} (leader: {leader_hint:?})")]
    NotLeader {
        group: GroupId,
        leader_hint: Option<NodeId>,
    },
    /// The leader could not reach a quorum to confirm a read. Nothing was changed.
    #[error("{group} has no quorum")]
    NoQuorum { group: GroupId },
    /// The deadline passed. A write may or may not be applied (outcome unknown).
    #[error("{group} did not answer in time (outcome unknown)")]
    Timeout { group: GroupId },
    /// The replica or the engine is shutting down.
    #[error("replica of {group} is shut down")]
    Shutdown { group: GroupId },
    /// The replica stopped on a storage or state machine failure.
    #[error("storage failure in {group}: {reason}")]
    Storage { group: GroupId, reason: String },
    /// The state machine refused a query.
    #[error("query on {group} failed: {reason}")]
    Query { group: GroupId, reason: String },
    /// `vshard` is fenced in `group`: it moved, or is moving, to another group. Nothing was
    /// applied; retry once the routing says where the vShard lives now.
    #[error("{vshard} is fenced in {group} (moved or moving)")]
    Moved { group: GroupId, vshard: VShardId },
    /// The replica lost track of a proposal in flight: it stopped, or dropped the entry from
    /// its log under a newer leader (a truncate, or a snapshot that covers the entry). The
    /// entry may or may not be applied (outcome unknown).
    #[error("replica of {group} lost track of the proposal (outcome unknown)")]
    Interrupted { group: GroupId },
}

/// Failure to create, open or remove a group replica.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("{group} is already hosted on this node")]
    AlreadyHosted { group: GroupId },
    #[error("{group} is not hosted on this node")]
    UnknownGroup { group: GroupId },
    /// `initialize` was refused (e.g. this node is not among the initial members).
    #[error("cannot initialize {group}: {reason}")]
    Initialize { group: GroupId, reason: String },
    #[error("invalid raft timings: {0}")]
    InvalidTimings(String),
    #[error("storage failure in {group}: {reason}")]
    Storage { group: GroupId, reason: String },
    /// The node's log file failed outside any one group.
    #[error("log file failure: {reason}")]
    LogFile { reason: String },
    #[error("multi-raft is shut down")]
    Shutdown,
}

/// Failure of a membership change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("{group} is not hosted on this node")]
    UnknownGroup { group: GroupId },
    #[error("not the leader of {group} (leader: {leader_hint:?})")]
    NotLeader {
        group: GroupId,
        leader_hint: Option<NodeId>,
    },
    /// Another change of this group has not committed yet; retry after it.
    #[error("a membership change of {group} is in progress")]
    InProgress { group: GroupId },
    /// The change makes no sense for the current membership (unknown learner, empty voters).
    #[error("invalid membership change of {group}: {reason}")]
    Invalid { group: GroupId, reason: String },
    /// The deadline passed; the change may or may not commit (outcome unknown).
    #[error("membership change of {group} timed out (outcome unknown)")]
    Timeout { group: GroupId },
    #[error("replica of {group} is shut down")]
    Shutdown { group: GroupId },
    #[error("storage failure in {group}: {reason}")]
    Storage { group: GroupId, reason: String },
}

pub(crate) fn propose_error(
    group: GroupId,
    error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> ProposeError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ProposeError::NotLeader {
                group,
                leader_hint: forward.leader_id.map(NodeId),
            }
        }
        // openraft says the same for an entry truncated (never committed) and for one purged
        // under a snapshot from a newer leader, which may well have committed it: retrying
        // could apply the write twice.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
            ProposeError::Interrupted { group }
        }
        RaftError::APIError(other) => ProposeError::Storage {
            group,
            reason: format!("unexpected write error: {other}"),
        },
        RaftError::Fatal(fatal) => fatal_propose(group, fatal),
    }
}

pub(crate) fn read_error(
    group: GroupId,
    error: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>,
) -> ProposeError {
    match error {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)) => {
            ProposeError::NotLeader {
                group,
                leader_hint: forward.leader_id.map(NodeId),
            }
        }
        RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)) => {
            ProposeError::NoQuorum { group }
        }
        RaftError::Fatal(fatal) => fatal_propose(group, fatal),
    }
}

/// The engine refused a read-only request (a query or an export) of `group`.
pub(crate) fn query_error(group: GroupId, error: StateMachineError) -> ProposeError {
    ProposeError::Query {
        group,
        reason: error.to_string(),
    }
}

pub(crate) fn fatal_propose(group: GroupId, fatal: Fatal<TypeConfig>) -> ProposeError {
    match fatal {
        Fatal::Stopped => ProposeError::Shutdown { group },
        other => ProposeError::Storage {
            group,
            reason: other.to_string(),
        },
    }
}

pub(crate) fn membership_error(
    group: GroupId,
    error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> MembershipError {
    use openraft::error::ChangeMembershipError;
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward))
        | RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward)) => {
            MembershipError::NotLeader {
                group,
                leader_hint: forward.leader_id.map(NodeId),
            }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => MembershipError::InProgress { group },
        RaftError::APIError(other) => MembershipError::Invalid {
            group,
            reason: other.to_string(),
        },
        RaftError::Fatal(Fatal::Stopped) => MembershipError::Shutdown { group },
        RaftError::Fatal(other) => MembershipError::Storage {
            group,
            reason: other.to_string(),
        },
    }
}
