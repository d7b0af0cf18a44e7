//! Identifier newtypes shared by every crate. Fixed-width integers, because they are persisted
//! and sent on the wire.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Number of virtual shards the key space is split into. Fixed forever: changing it would
/// re-route every stored key.
pub const VSHARD_COUNT: u16 = 1024;

/// The metadata group: holds topology, routing and migrations, never user vShards.
pub const METADATA_GROUP: GroupId = GroupId(0);

/// A cluster member. Assigned by the operator (config `node_id`), never reused; 0 is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A Raft group. Group 0 is the metadata group; data groups are `1..=num_groups`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u32);

/// A virtual shard, `0..VSHARD_COUNT`. Decoding refuses an out-of-range value, so an id read
/// from a peer or from disk is always a valid index; the encoding is that of a plain `u16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16")]
pub struct VShardId(pub u16);

/// A raw value outside `0..VSHARD_COUNT` was offered as a vShard id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("vShard {raw} is out of range (0..{VSHARD_COUNT})")]
pub struct VShardOutOfRange {
    pub raw: u16,
}

impl GroupId {
    pub fn is_metadata(self) -> bool {
        self == METADATA_GROUP
    }
}

impl VShardId {
    /// Returns the vShard if `raw` is in range, so that bytes from a peer or a URL cannot
    /// produce an out-of-range id.
    pub fn new(raw: u16) -> Option<VShardId> {
        (raw < VSHARD_COUNT).then_some(VShardId(raw))
    }

    /// The vShard as an index into per-vShard tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Every vShard in ascending order.
    pub fn all() -> impl Iterator<Item = VShardId> {
        (0..VSHARD_COUNT).map(VShardId)
    }
}

impl TryFrom<u16> for VShardId {
    type Error = VShardOutOfRange;

    fn try_from(raw: u16) -> Result<VShardId, VShardOutOfRange> {
        VShardId::new(raw).ok_or(VShardOutOfRange { raw })
    }
}

impl NodeId {
    /// Node id 0 is reserved as "no node"; every real node has a non-zero id.
    pub fn is_valid(self) -> bool {
        self.0 != 0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group-{}", self.0)
    }
}

impl fmt::Display for VShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vshard-{}", self.0)
    }
}
