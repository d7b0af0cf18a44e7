//! What the HTTP admin API asks of a node: the `ClusterService` seam. The running node
//! implements it; the API layer maps its typed outcomes onto the status codes of the outside
//! contract, so "definitely failed" and "outcome unknown" never blur.

use nodedb_cluster_core::{GroupId, NodeId, VShardId};
use nodedb_cluster_transport::BoxFuture;
use serde::Serialize;

/// Largest key the KV API accepts, in bytes (UTF-8).
pub const KEY_BYTES_MAX: usize = 1024;
/// Largest value the KV API accepts, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Confirmed with the group leader's quorum before answering (ReadIndex).
    Linearizable,
    /// Whatever the local replica has applied; may lag.
    Stale,
}

/// Where a successful write landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WriteReceipt {
    pub vshard: u16,
    pub group: u32,
    /// Raft log index at which the write was committed.
    pub index: u64,
}

/// Outcome of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CasOutcome {
    pub swapped: bool,
    /// The value after the operation (the new value if swapped, the unchanged one otherwise).
    pub current: Option<String>,
}

/// Why a request did not succeed. Each variant maps to one status code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request itself is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request definitely did not take effect and may be retried: no leader, no quorum,
    /// node not ready (503 with Retry-After).
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u32,
    },
    /// The deadline passed after the request may have been proposed: it may or may not have
    /// taken effect (504).
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The request conflicts with the cluster's current state, e.g. a vShard already moving (409).
    #[error("{0}")]
    Conflict(String),
    /// The feature exists in the API but not yet in this node (501).
    #[error("{0}")]
    NotImplemented(String),
    /// A broken invariant inside the node (500).
    #[error("{0}")]
    Internal(String),
}

/// One node of `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub id: u64,
    pub addr: String,
    pub admin_addr: String,
    pub state: String,
}

/// One group of `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupView {
    pub id: u32,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub leader: Option<u64>,
    /// The next six describe this node's replica; `null` where it hosts none.
    pub term: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Hash of the replica's state, hex; equal on replicas at equal applied indexes.
    pub state_hash: Option<String>,
    /// Bytes of data the replica holds in the vShards the group owns (what automatic
    /// rebalancing compares; 0 for an engine that does not count).
    pub bytes: Option<u64>,
    /// The group is idle and the replica's heartbeats and election timer are stopped.
    pub quiesced: Option<bool>,
    pub vshard_count: u32,
}

/// The body of `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub cluster_id: String,
    pub node_id: u64,
    pub routing_version: u64,
    pub nodes: Vec<NodeView>,
    pub groups: Vec<GroupView>,
}

/// One entry of `GET /v1/migrations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MigrationView {
    pub id: u64,
    pub vshard: u16,
    pub from_group: u32,
    pub to_group: u32,
    pub phase: String,
    pub bytes_copied: u64,
    pub write_pause_ms: Option<u64>,
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// Everything the admin API can ask of the node it runs in.
pub trait ClusterService: Send + Sync + 'static {
    /// True when this node is a member with metadata applied and serving.
    fn is_ready(&self) -> bool;
    fn cluster(&self) -> BoxFuture<'_, ServiceResult<ClusterView>>;
    fn kv_put(&self, key: String, value: Vec<u8>) -> BoxFuture<'_, ServiceResult<WriteReceipt>>;
    fn kv_get(
        &self,
        key: String,
        consistency: ReadConsistency,
    ) -> BoxFuture<'_, ServiceResult<Option<Vec<u8>>>>;
    fn kv_delete(&self, key: String) -> BoxFuture<'_, ServiceResult<WriteReceipt>>;
    fn kv_cas(
        &self,
        key: String,
        expected: Option<String>,
        new: String,
    ) -> BoxFuture<'_, ServiceResult<CasOutcome>>;
    fn move_vshard(
        &self,
        vshard: VShardId,
        to_group: GroupId,
    ) -> BoxFuture<'_, ServiceResult<MigrationView>>;
    fn migrations(&self) -> BoxFuture<'_, ServiceResult<Vec<MigrationView>>>;
    fn decommission(&self, node: NodeId) -> BoxFuture<'_, ServiceResult<()>>;
    fn rebalance(&self) -> BoxFuture<'_, ServiceResult<Vec<MigrationView>>>;
}
