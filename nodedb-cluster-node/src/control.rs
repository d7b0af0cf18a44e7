//! The node control protocol, spoken on the Control channel: identify a peer, admit a joining
//! node, and carry client proposals, reads and membership changes to the replica that leads
//! the group. Messages are postcard enums; variants are only ever appended (docs/design.md,
//! "Node control messages").

use bytes::Bytes;
use nodedb_cluster_core::metadata::ClusterId;
use nodedb_cluster_core::{GroupId, MigrationId, NodeId, NodeInfo, VShardId};
use nodedb_cluster_raft::{CopyId, MembershipError, ProposeError, VShardClaim, VShardStep};
use serde::{Deserialize, Serialize};

/// A request on the Control channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Who are you and which cluster are you in? Changes nothing anywhere.
    Identify,
    /// Admit `node` to the cluster. Served by the metadata leader; a seed that does not lead
    /// forwards it there once (`forwarded` stops a second hop).
    Join { node: NodeInfo, forwarded: bool },
    /// Replicate `command` through `group`; served by the group's leader.
    Propose {
        group: GroupId,
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
    },
    /// Answer `query` on `group`; with `linearizable`, served by the leader after a read
    /// barrier, otherwise from the receiver's local replica.
    Query {
        group: GroupId,
        #[serde(with = "serde_bytes")]
        query: Vec<u8>,
        linearizable: bool,
    },
    /// Change the membership of `group`; served by the group's leader.
    ChangeMembership {
        group: GroupId,
        change: MembershipChange,
    },
    /// Replicate `command`, which touches only `vshard`, through `group`; refused with
    /// [`ControlError::Moved`] when the vShard is fenced there.
    ProposeVShard {
        group: GroupId,
        vshard: VShardId,
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
    },
    /// Answer `query`, which reads only `vshard`, on `group` (see `Query`); refused with
    /// [`ControlError::Moved`] when the vShard is fenced there.
    QueryVShard {
        group: GroupId,
        vshard: VShardId,
        #[serde(with = "serde_bytes")]
        query: Vec<u8>,
        linearizable: bool,
    },
    /// One step of a vShard migration on `group`; served by the group's leader.
    Migrate { group: GroupId, step: MigrationStep },
}

/// What a migration does to one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationStep {
    /// Answer parts of the vShard's data as `Answered`: a postcard `VShardExportPage` of
    /// export `export`, from `first_part` on. Part 0 makes the export (after a read barrier)
    /// and the leader keeps it for the pages after it; each part is small enough for one log
    /// entry.
    Export {
        vshard: VShardId,
        export: u64,
        first_part: u32,
        /// Whole parts up to about this many bytes (at least one; the receiver caps it).
        bytes_max: u64,
    },
    /// Replicate one step of `migration` on `vshard` (`data`: the export, for an import);
    /// answered with `Stepped`.
    Claim {
        vshard: VShardId,
        migration: MigrationId,
        step: VShardStep,
        /// Shared: served on this node, the step is replicated without copying it.
        data: Bytes,
    },
    /// Answer the vShard's commands applied after the entry at `after` and before the entry
    /// at `before` (read from the leader's log), as a postcard `VShardChanges` of a bounded
    /// size; the caller asks again from its `through`.
    Changes {
        vshard: VShardId,
        after: u64,
        before: u64,
    },
    /// Answer the bytes the receiver's replica holds per vShard, as `Answered`: a postcard
    /// `BTreeMap<VShardId, u64>` (automatic rebalancing compares groups by it).
    Sizes,
    /// Copy one page of export `export` of `vshard` (from `first_part` on; part 0 makes the
    /// export) from the leader of group `from` into this group as copy `copy` of `migration`:
    /// the first part of the export is replicated as `Import`, every other one as
    /// `ImportMore`. Served by this group's leader, so the export travels from the source's
    /// leader straight to the target's, and not over the network at all when one node leads
    /// both. Answered with `Answered`: a postcard `ImportedPage`.
    ImportPage(ImportPage),
    /// Answer the vShard's standing on the leader after a read barrier, as `Answered`: a
    /// postcard `FencedDigest` (applied index, claim, digest of its data). A handover checks
    /// the data it takes against the source's digest at the fence.
    Digest { vshard: VShardId },
    /// Served by the replica of the node asked, not by the leader: answer, as `Answered`
    /// (a postcard `bool`), whether that replica no longer needs any log entry up to
    /// `through` (snapshot past it, log durably purged through it), asking for what is
    /// missing when not (see `MultiRaft::make_durable_through`). A source drops a vShard it
    /// handed over only once every replica of the target answers true.
    DurableThrough { through: u64 },
}

/// One page of an export for a target group's leader to copy in: the step
/// [`MigrationStep::ImportPage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportPage {
    pub vshard: VShardId,
    pub migration: MigrationId,
    /// The source group, whose leader holds the export.
    pub from: GroupId,
    pub export: u64,
    pub first_part: u32,
    /// Whole parts up to about this many bytes (at least one; the receiver caps it).
    pub bytes_max: u64,
    pub copy: CopyId,
}

/// One membership step of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    AddLearner { node: NodeId, addr: String },
    Promote { node: NodeId },
    Remove { node: NodeId },
    TransferLeader { to: NodeId },
}

/// The answer to a [`ControlRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    Identity {
        node: NodeId,
        cluster_id: Option<ClusterId>,
    },
    /// The node is admitted; it learns everything else from the metadata log.
    Joined {
        cluster_id: ClusterId,
    },
    Proposed {
        index: u64,
        #[serde(with = "serde_bytes")]
        response: Vec<u8>,
    },
    Answered {
        #[serde(with = "serde_bytes")]
        answer: Vec<u8>,
    },
    MembershipChanged,
    Refused(ControlError),
    /// A migration step was replicated: its log index, whether it applied, and the claim.
    Stepped {
        index: u64,
        applied: bool,
        claim: VShardClaim,
    },
}

/// Why a control request was not served. Each variant says whether it may be retried and
/// whether the outcome is known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControlError {
    /// The receiver does not lead the group; nothing was applied. Retry at the hint.
    #[error("{node} does not lead {group} (leader hint: {leader_hint:?})")]
    NotLeader {
        node: NodeId,
        group: GroupId,
        leader_hint: Option<NodeId>,
    },
    /// The receiver hosts no replica of the group; nothing was applied.
    #[error("{node} hosts no replica of {group}")]
    UnknownGroup { node: NodeId, group: GroupId },
    /// The group could not reach a quorum; nothing was applied.
    #[error("{group} has no quorum")]
    NoQuorum { group: GroupId },
    /// The deadline passed after proposing: the outcome is unknown.
    #[error("{group} did not answer in time (outcome unknown)")]
    Timeout { group: GroupId },
    /// The receiver is starting or stopping; nothing was applied.
    #[error("{node} is not serving: {reason}")]
    Unavailable { node: NodeId, reason: String },
    /// Another membership change of the group is still in progress; nothing was changed.
    #[error("a membership change of {group} is in progress")]
    MembershipBusy { group: GroupId },
    /// A learner is too far behind to become a voter yet; nothing was changed.
    #[error("{node} is {lag} entries behind in {group}; not promoted yet")]
    NotCaughtUp {
        group: GroupId,
        node: NodeId,
        lag: u64,
    },
    /// The request is invalid (bad bytes, refused join, invalid membership change).
    #[error("refused: {0}")]
    Invalid(String),
    /// The receiver's storage failed.
    #[error("storage failure: {0}")]
    Storage(String),
    /// `vshard` is fenced in `group` (moved or moving away); nothing was applied. Retry
    /// through the routing once it changes; `routing_version` is the receiver's view.
    #[error("{vshard} moved away from {group} (routing version {routing_version} at the receiver)")]
    Moved {
        group: GroupId,
        vshard: VShardId,
        routing_version: u64,
    },
    /// The replica lost track of the request in flight (it stopped, or dropped the entry under
    /// a newer leader): the outcome is unknown.
    #[error("{group} lost track of the request (outcome unknown)")]
    Interrupted { group: GroupId },
}

impl ControlError {
    /// True when the request may have taken effect.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ControlError::Timeout { .. } | ControlError::Interrupted { .. }
        )
    }

    /// From a local propose or read failure on `node`.
    pub fn from_propose(node: NodeId, error: ProposeError) -> ControlError {
        match error {
            ProposeError::UnknownGroup { group } => ControlError::UnknownGroup { node, group },
            ProposeError::NotLeader { group, leader_hint } => ControlError::NotLeader {
                node,
                group,
                leader_hint,
            },
            ProposeError::NoQuorum { group } => ControlError::NoQuorum { group },
            ProposeError::Timeout { group } => ControlError::Timeout { group },
            ProposeError::Shutdown { group } => ControlError::Unavailable {
                node,
                reason: format!("replica of {group} is shut down"),
            },
            ProposeError::Storage { group, reason } => {
                ControlError::Storage(format!("{group}: {reason}"))
            }
            ProposeError::Query { group, reason } => {
                ControlError::Invalid(format!("query on {group}: {reason}"))
            }
            ProposeError::Interrupted { group } => ControlError::Interrupted { group },
            ProposeError::Moved { group, vshard } => ControlError::Moved {
                group,
                vshard,
                routing_version: 0,
            },
        }
    }

    /// From a local membership change failure on `node`.
    pub fn from_membership(node: NodeId, error: MembershipError) -> ControlError {
        match error {
            MembershipError::UnknownGroup { group } => ControlError::UnknownGroup { node, group },
            MembershipError::NotLeader { group, leader_hint } => ControlError::NotLeader {
                node,
                group,
                leader_hint,
            },
            MembershipError::InProgress { group } => ControlError::MembershipBusy { group },
            MembershipError::Invalid { group, reason } => {
                ControlError::Invalid(format!("{group}: {reason}"))
            }
            MembershipError::Timeout { group } => ControlError::Timeout { group },
            MembershipError::Shutdown { group } => ControlError::Unavailable {
                node,
                reason: format!("replica of {group} is shut down"),
            },
            MembershipError::Storage { group, reason } => {
                ControlError::Storage(format!("{group}: {reason}"))
            }
        }
    }
}

impl std::fmt::Display for MigrationStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationStep::Export {
                vshard,
                export,
                first_part,
                ..
            } => write!(f, "export {export} of {vshard} from part {first_part}"),
            MigrationStep::Changes {
                vshard,
                after,
                before,
            } => write!(f, "changes of {vshard} after {after} before {before}"),
            MigrationStep::Sizes => write!(f, "bytes per vShard"),
            MigrationStep::Digest { vshard } => write!(f, "digest of {vshard}"),
            MigrationStep::DurableThrough { through } => {
                write!(f, "snapshot and purge through {through}")
            }
            MigrationStep::ImportPage(page) => write!(
                f,
                "import of export {} of {} from {} (part {} on) as {:?} in {}",
                page.export, page.vshard, page.from, page.first_part, page.copy, page.migration
            ),
            MigrationStep::Claim {
                vshard,
                migration,
                step,
                data,
            } => write!(
                f,
                "{step:?} of {vshard} in {migration} ({} bytes)",
                data.len()
            ),
        }
    }
}

impl ControlRequest {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_else(|error| panic!("control request encode: {error}"))
    }

    pub fn decode(bytes: &[u8]) -> Result<ControlRequest, String> {
        postcard::from_bytes(bytes).map_err(|error| error.to_string())
    }
}

impl ControlResponse {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_else(|error| panic!("control response encode: {error}"))
    }

    pub fn decode(bytes: &[u8]) -> Result<ControlResponse, String> {
        postcard::from_bytes(bytes).map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodedb_cluster_core::{NodeState, PeerAddr};

    fn node_info() -> NodeInfo {
        NodeInfo {
            id: NodeId(2),
            addr: PeerAddr::parse("127.0.0.1:9410").unwrap(),
            admin_addr: PeerAddr::parse("127.0.0.1:9411").unwrap(),
            state: NodeState::Joining,
        }
    }

    #[test]
    fn every_request_round_trips() {
        let requests = [
            ControlRequest::Identify,
            ControlRequest::Join {
                node: node_info(),
                forwarded: false,
            },
            ControlRequest::Propose {
                group: GroupId(3),
                command: vec![1, 2, 3],
            },
            ControlRequest::Query {
                group: GroupId(0),
                query: vec![],
                linearizable: true,
            },
            ControlRequest::ChangeMembership {
                group: GroupId(1),
                change: MembershipChange::AddLearner {
                    node: NodeId(4),
                    addr: "127.0.0.1:1".to_string(),
                },
            },
            ControlRequest::Migrate {
                group: GroupId(2),
                step: MigrationStep::ImportPage(ImportPage {
                    vshard: VShardId(7),
                    migration: MigrationId(3),
                    from: GroupId(1),
                    export: u64::MAX,
                    first_part: 9,
                    bytes_max: 1 << 20,
                    copy: CopyId {
                        fence_index: 0,
                        nonce: 42,
                    },
                }),
            },
        ];
        for request in requests {
            assert_eq!(ControlRequest::decode(&request.encode()).unwrap(), request);
        }
    }

    #[test]
    fn golden_bytes_pin_the_wire_layout() {
        assert_eq!(ControlRequest::Identify.encode(), [0]);
        let propose = ControlRequest::Propose {
            group: GroupId(3),
            command: vec![9],
        };
        assert_eq!(propose.encode(), [2, 3, 1, 9]);
        let refused = ControlResponse::Refused(ControlError::Timeout { group: GroupId(1) });
        assert_eq!(refused.encode(), [5, 3, 1]);
        let sizes = ControlRequest::Migrate {
            group: GroupId(2),
            step: MigrationStep::Sizes,
        };
        assert_eq!(sizes.encode(), [7, 2, 3]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[][..], &[200][..], &[2, 3][..], &[0xff; 32][..]] {
            assert!(ControlRequest::decode(bytes).is_err(), "{bytes:?}");
            assert!(ControlResponse::decode(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn only_timeouts_leave_the_outcome_unknown() {
        let node = NodeId(1);
        let timeout = ControlError::from_propose(node, ProposeError::Timeout { group: GroupId(1) });
        assert!(timeout.outcome_unknown());
        let not_leader = ControlError::from_propose(
            node,
            ProposeError::NotLeader {
                group: GroupId(1),
                leader_hint: Some(NodeId(2)),
            },
        );
        assert!(!not_leader.outcome_unknown());
        let busy =
            ControlError::from_membership(node, MembershipError::InProgress { group: GroupId(1) });
        assert_eq!(busy, ControlError::MembershipBusy { group: GroupId(1) });
    }
}
