//! Replication engine of the NodeDB cluster: multi-raft on openraft with a durable redb log,
//! streamed snapshots and a pluggable [`StateMachine`].
//!
//! How to use it:
//! 1. Open the node's log file with [`log_db::LogDb::open`].
//! 2. Build a [`MultiRaft`] with the node id, an `Arc<dyn Transport>` (QUIC or in-memory), the
//!    log, a data directory (snapshots) and [`RaftTimings`]; install [`MultiRaft::handler`] on
//!    the transport so that peers reach the local replicas.
//! 3. Start replicas: [`MultiRaft::create_group`] with the initial members on exactly one node
//!    of a new group; [`MultiRaft::open_group`] everywhere else and after every restart (it
//!    never initializes). Each replica gets its own engine implementing [`StateMachine`]; the
//!    built-in [`kv::KvStateMachine`] is one, group 0 runs
//!    [`MetadataStateMachine`].
//! 4. Write with [`MultiRaft::propose`], read with [`MultiRaft::query`] (linearizable by
//!    default through a ReadIndex barrier), change membership with `add_learner`, `promote`,
//!    `change_voters`, `remove_replica` (one change at a time per group), observe with
//!    [`MultiRaft::status`] and [`MultiRaft::leader_changes`].
//!
//! Errors say what the caller can do: [`ProposeError::NotLeader`] carries the leader hint,
//! [`ProposeError::Timeout`] means the outcome is unknown.
//!
//! Wire and disk layouts (RPC envelope, log records, snapshot files) are in `docs/design.md`,
//! "Raft messages and snapshots".
//!
//! **Architecture Invariant:** every openraft type stays inside this crate; the node crate sees
//! only this crate's own API. The network is reached only through the transport trait.

mod claims;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod handover;
pub mod kv;
pub mod log_db;
mod log_growth;
mod log_store;
mod metadata_sm;
pub mod metrics;
mod multi_raft;
mod network;
mod quiesce;
mod recent_entries;
mod reincarnation;
mod replica;
mod router;
mod sm_adapter;
mod snapshot;
pub mod state_machine;
mod status;
mod types;
mod vshard_copy;
mod wire;

pub use claims::{CopyId, VShardClaim, VShardStep};
pub use error::{GroupError, MembershipError, ProposeError};
pub use handover::{FencedDigest, FencedExport, FencedVShards};
pub use metadata_sm::{
    AppliedMetadata, METADATA_SNAPSHOT_VERSION, MetadataOutcome, MetadataQuery,
    MetadataStateMachine, decode_metadata_command, decode_metadata_outcome, decode_metadata_state,
    encode_metadata_command,
};
pub use multi_raft::{
    Applied, LEADER_CHANGES_MAX, MultiRaft, RaftTimings, ReadConsistency, StepOutcome,
    VSHARD_PART_BYTES,
};
pub use state_machine::{
    Committed, LogIndex, SharedVShard, SnapshotChunks, StateMachine, StateMachineError,
    VShardDigest, VShardParts,
};
pub use status::{FollowerProgress, GroupStatus, LeaderChange, Role};
pub use vshard_copy::{
    VShardChanges, VShardExport, VShardExportPage, decode_replayed_commands,
    encode_replayed_commands,
};
