//! The openraft type configuration of every group and the application payload it replicates.
//! Private to the crate: callers see `NodeId`/`GroupId` from core and plain bytes.

use nodedb_cluster_core::{NodeId, VShardId};
use serde::{Deserialize, Serialize};
use std::fmt;

openraft::declare_raft_types!(
    /// The one type configuration shared by all groups of a node.
    pub TypeConfig:
        D = AppRequest,
        R = AppResponse,
        NodeId = u64,
        Node = RaftNode,
);

pub type Raft<SM> = openraft::Raft<TypeConfig, SM>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;

/// What a group member record carries: where the node is reached. The address is informative
/// (the transport owns connection details); node identity is the Raft node id itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    /// The node's QUIC listen address, `host:port`.
    pub addr: String,
}

/// One application entry of a group's log: a typed kind and opaque bytes. The kind is a real
/// enum tag, never a marker byte inside the payload, so a payload can hold any bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRequest {
    pub kind: EntryKind,
    pub payload: Vec<u8>,
}

/// Why an application entry is in the log. Variants are appended, never reordered (postcard
/// tags them by index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A command for the state machine's `apply`.
    Command,
    /// Migration: the payload is the exported data of `vshard`; replicas replace their data
    /// of the vShard with it.
    ImportVShard { vshard: VShardId },
    /// Migration: every replica drops the data of `vshard`.
    DropVShard { vshard: VShardId },
    /// A command for the state machine's `apply` that touches only `vshard`; refused with
    /// [`AppResponse::Moved`] while the vShard is fenced in this group.
    VShardCommand { vshard: VShardId },
    /// Migration: from this entry on, commands and reads of `vshard` are refused here.
    FenceVShard { vshard: VShardId },
    /// Migration: lifts the fence of `vshard` (the group owns the vShard again).
    UnfenceVShard { vshard: VShardId },
}

/// The answer to one applied entry. Local to the replica that proposed it, never persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppResponse {
    /// The state machine's response bytes (empty for entries that are not commands).
    Applied(Vec<u8>),
    /// The command's vShard is fenced in this group: it moved (or is moving) elsewhere.
    /// Nothing was applied.
    Moved { vshard: VShardId },
    /// An entry without a response of its own (membership, blank, migration steps).
    #[default]
    Done,
}

impl fmt::Display for RaftNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

impl fmt::Display for AppRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({} bytes)", self.kind, self.payload.len())
    }
}

/// Core node id -> Raft node id.
pub fn raft_id(node: NodeId) -> u64 {
    node.0
}

/// Raft node id -> core node id.
pub fn node_id(raft: u64) -> NodeId {
    NodeId(raft)
}

pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
