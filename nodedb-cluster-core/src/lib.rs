//! Pure types and algorithms of the NodeDB cluster: identifiers, key -> vShard routing,
//! topology, placement planning and the metadata state machine replicated by group 0.
//!
//! **Architecture Invariant:** this crate does no IO. No tokio, no sockets, no files, no wall
//! clock, no unseeded randomness: time and randomness are passed in by the caller, so every
//! function here is deterministic and can be property-tested and replayed.

pub mod ids;
pub mod linearizability;
pub mod metadata;
pub mod placement;
pub mod routing;
pub mod topology;

pub use ids::{GroupId, METADATA_GROUP, NodeId, VSHARD_COUNT, VShardId, VShardOutOfRange};
pub use metadata::{
    ClusterId, MetadataCommand, MetadataError, MetadataEvent, MetadataState, Migration,
    MigrationId, MigrationPhase,
};
pub use placement::{PlacementStep, plan};
pub use routing::{GroupMembers, RoutingError, RoutingTable, vshard_for_key};
pub use topology::{AddrError, NodeInfo, NodeState, PeerAddr, Topology, TopologyError};
