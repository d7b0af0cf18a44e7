//! What the multi-raft API reports about a replica: role, leader, indexes, members and how far
//! each follower lags. Built from openraft metrics, exposed in this crate's own types.

use crate::state_machine::LogIndex;
use crate::types::{RaftMetrics, node_id};
use nodedb_cluster_core::{GroupId, NodeId};
use openraft::ServerState;

/// A replica's role in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Candidate,
    Follower,
    Learner,
    Shutdown,
}

/// A snapshot of one replica's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub node: NodeId,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<LogIndex>,
    pub commit_index: Option<LogIndex>,
    pub applied_index: Option<LogIndex>,
    pub snapshot_index: Option<LogIndex>,
    pub purged_index: Option<LogIndex>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The membership is a joint configuration (a change is half way).
    pub joint: bool,
    /// The membership is a joint configuration whose new half leaves this replica out: the
    /// group is removing it. A voter cut off before the final configuration reached it stays
    /// in this state for good.
    pub leaving: bool,
    /// Replication progress, only on the leader.
    pub followers: Vec<FollowerProgress>,
    /// The group is idle and this replica's heartbeats and election timer are stopped until
    /// the group is used again.
    pub quiesced: bool,
}

/// How far one follower or learner is behind the leader's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerProgress {
    pub node: NodeId,
    pub matched_index: Option<LogIndex>,
    /// Entries the leader has that the follower is not known to have.
    pub lag: u64,
}

/// A leader change observed on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderChange {
    pub group: GroupId,
    pub leader: Option<NodeId>,
    pub term: u64,
}

pub(crate) fn status_from_metrics(
    group: GroupId,
    metrics: &RaftMetrics,
    quiesced: bool,
) -> GroupStatus {
    let role = match metrics.state {
        ServerState::Leader => Role::Leader,
        ServerState::Candidate => Role::Candidate,
        ServerState::Follower => Role::Follower,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    };
    let membership = metrics.membership_config.membership();
    let configs = membership.get_joint_config();
    let voters: Vec<NodeId> = membership.voter_ids().map(node_id).collect();
    let learners: Vec<NodeId> = membership.learner_ids().map(node_id).collect();
    let last = metrics.last_log_index.unwrap_or(0);
    let followers = metrics
        .replication
        .as_ref()
        .map(|replication| {
            replication
                .iter()
                .filter(|(id, _)| **id != metrics.id)
                .map(|(id, matched)| {
                    let matched_index = matched.as_ref().map(|log_id| log_id.index);
                    FollowerProgress {
                        node: node_id(*id),
                        matched_index: matched_index.map(LogIndex),
                        lag: last.saturating_sub(matched_index.unwrap_or(0)),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let index = |log_id: &Option<crate::types::LogId>| log_id.as_ref().map(|id| LogIndex(id.index));
    GroupStatus {
        group,
        node: node_id(metrics.id),
        role,
        leader: metrics.current_leader.map(node_id),
        term: metrics.current_term,
        last_log_index: metrics.last_log_index.map(LogIndex),
        commit_index: index(&metrics.local_committed),
        applied_index: index(&metrics.last_applied),
        snapshot_index: index(&metrics.snapshot),
        purged_index: index(&metrics.purged),
        voters,
        learners,
        joint: configs.len() > 1,
        leaving: configs.len() > 1
            && configs
                .last()
                .is_some_and(|final_voters| !final_voters.contains(&metrics.id)),
        followers,
        quiesced,
    }
}
