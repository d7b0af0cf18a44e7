//! Pure types and algorithms of the NodeDB cluster: identifiers, key -> vShard routing,
//! topology, placement planning and the metadata state machine replicated by group 0.
//!
//! **Architecture Invariant:** this crate does no IO. No tokio, no sockets, no files, no wall
//! clock, no unseeded randomness: time and randomness are passed in by the caller, so every
//! function here is deterministic and can be property-tested and replayed.
//!
//! # How the pieces fit
//!
//! - [`vshard_for_key`] maps a key to one of [`VSHARD_COUNT`] vShards with a hash pinned
//!   forever (xxh64, seed 0, mod 1024; see `docs/design.md`, "vShard hash").
//! - [`RoutingTable`] maps every vShard to a data group and every group (0 = metadata) to its
//!   voters, learners and leader hint; `routing_version` grows with every change.
//! - [`Topology`] lists the nodes with their validated addresses ([`PeerAddr`]) and lifecycle
//!   state ([`NodeState`]).
//! - [`MetadataState`] is the state machine of group 0. The Raft layer appends
//!   [`MetadataCommand`]s to group 0's log and calls [`MetadataState::apply`] on every replica
//!   in log order; each returns a [`MetadataEvent`] or a typed [`MetadataError`] and never
//!   panics. A refused command changes nothing; a retried command answers `Unchanged`.
//! - [`plan`] looks at topology and routing and proposes the next [`PlacementStep`]s (at most one
//!   per group). The metadata leader executes them as Raft membership changes and records the
//!   outcome with `MetadataCommand::SetGroupMembers` / `SetLeaderHint`.
//!
//! ```
//! use nodedb_cluster_core::{
//!     ClusterId, MetadataCommand, MetadataState, NodeId, NodeInfo, NodeState, PeerAddr, plan,
//!     vshard_for_key,
//! };
//!
//! let mut state = MetadataState::new();
//! let first_node = NodeInfo {
//!     id: NodeId(1),
//!     addr: PeerAddr::parse("127.0.0.1:9400").unwrap(),
//!     admin_addr: PeerAddr::parse("127.0.0.1:9401").unwrap(),
//!     state: NodeState::Active,
//! };
//! let bootstrap = MetadataCommand::Bootstrap {
//!     cluster_id: ClusterId([42; 16]),
//!     num_groups: 8,
//!     replication_factor: 3,
//!     first_node,
//! };
//! state.apply(&bootstrap).unwrap();
//!
//! let routing = state.routing().unwrap();
//! let group = routing.group_of(vshard_for_key(b"user:1"));
//! assert!(routing.members(group).unwrap().voters.contains(&NodeId(1)));
//! // A single node already holds every group: nothing to place.
//! assert!(plan(state.topology(), routing, 3).is_empty());
//! ```

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
pub use placement::{
    PlacementStep, ReportedSizes, SizeThresholds, VShardMove, plan, plan_size_moves,
    plan_vshard_moves,
};
pub use routing::{GroupMembers, RoutingError, RoutingTable, keys_in_vshard, vshard_for_key};
pub use topology::{AddrError, NodeInfo, NodeState, PeerAddr, Topology, TopologyError};
