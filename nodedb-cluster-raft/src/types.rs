//! The openraft type configuration of every group and the application payload it replicates.
//! Private to the crate: callers see `NodeId`/`GroupId` from core and plain bytes.

use crate::claims::{VShardClaim, VShardStep};
use bytes::Bytes;
use nodedb_cluster_core::{MigrationId, NodeId, VShardId};
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
/// enum tag, never a marker byte inside the payload, so a payload can hold any bytes. The
/// payload is shared, so that an entry kept in memory after its append (`log_store`) is handed
/// to replication and apply without copying it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRequest {
    pub kind: EntryKind,
    #[serde(with = "crate::wire::shared_bytes")]
    pub payload: Bytes,
}

/// Why an application entry is in the log. Variants are appended, never reordered (postcard
/// tags them by index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A command for the state machine's `apply`.
    Command,
    /// A command for the state machine's `apply` that touches only `vshard`; refused with
    /// [`AppResponse::Moved`] unless the group serves the vShard (see `claims.rs`).
    VShardCommand { vshard: VShardId },
    /// One step of migration `migration` on `vshard`; the payload is the export for
    /// [`VShardStep::Import`], empty otherwise.
    Migration {
        vshard: VShardId,
        migration: MigrationId,
        step: VShardStep,
    },
}

/// The answer to one applied entry. Local to the replica that proposed it, never persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppResponse {
    /// The state machine's response bytes.
    Applied(Vec<u8>),
    /// The group does not serve the command's vShard: it moved (or is moving) elsewhere.
    /// Nothing was applied.
    Moved { vshard: VShardId },
    /// A migration step: the vShard's claim after it, and whether the step applied (`false`:
    /// refused because a later step already happened; nothing changed).
    Claim { applied: bool, claim: VShardClaim },
    /// An entry without a response of its own (membership, blank).
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
