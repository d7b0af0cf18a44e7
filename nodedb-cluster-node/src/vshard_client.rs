//! Operations addressed to a vShard rather than a group: routed to the group the applied
//! routing names, and re-routed when that group answers `Moved` (the vShard was fenced there
//! by a migration). Callers see no error for a move, only a pause until the routing switches
//! or the migration is given up, at most [`MOVED_WAIT_MAX`].

use crate::control::ControlError;
use crate::group_client::GroupClient;
use nodedb_cluster_core::{GroupId, MetadataState, VShardId};
use nodedb_cluster_raft::AppliedMetadata;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest an operation waits for a moving vShard before answering "unavailable".
pub const MOVED_WAIT_MAX: Duration = Duration::from_secs(10);
/// First and longest pause between retries of a vShard refused as moved.
const MOVED_RETRY_PAUSE_FIRST: Duration = Duration::from_millis(1);
const MOVED_RETRY_PAUSE_MAX: Duration = Duration::from_millis(100);

/// An applied write to a vShard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VShardWrite {
    pub group: GroupId,
    /// Log index of the write in `group`.
    pub index: u64,
    /// The engine's response.
    pub response: Vec<u8>,
}

/// Routes vShard operations. Cheap to clone.
#[derive(Clone, Debug)]
pub struct VShardClient {
    groups: GroupClient,
    metadata: watch::Receiver<AppliedMetadata>,
}

impl VShardClient {
    pub fn new(groups: GroupClient, metadata: watch::Receiver<AppliedMetadata>) -> VShardClient {
        VShardClient { groups, metadata }
    }

    /// Replicates `command` through the group that owns `vshard`; the engine's response.
    pub async fn propose(
        &self,
        vshard: VShardId,
        command: Vec<u8>,
    ) -> Result<VShardWrite, ControlError> {
        self.routed(vshard, |group| {
            let command = command.clone();
            async move {
                let (index, response) = self.groups.propose_vshard(group, vshard, command).await?;
                Ok(VShardWrite {
                    group,
                    index,
                    response,
                })
            }
        })
        .await
    }

    /// Answers `query` on the group that owns `vshard`: after a read barrier at its leader
    /// when `linearizable`, else from the nearest replica's current state.
    pub async fn read(
        &self,
        vshard: VShardId,
        query: Vec<u8>,
        linearizable: bool,
    ) -> Result<Vec<u8>, ControlError> {
        self.routed(vshard, |group| {
            let query = query.clone();
            self.groups.query_vshard(group, vshard, query, linearizable)
        })
        .await
    }

    /// The group that owns `vshard` in the applied routing.
    pub fn owner(&self, vshard: VShardId) -> Result<GroupId, ControlError> {
        self.owner_in(&self.metadata.borrow().state, vshard)
    }

    fn owner_in(&self, state: &MetadataState, vshard: VShardId) -> Result<GroupId, ControlError> {
        state
            .routing()
            .map(|routing| routing.group_of(vshard))
            .ok_or_else(|| ControlError::Unavailable {
                node: self.groups.node(),
                reason: "no routing applied yet".to_string(),
            })
    }

    async fn routed<T, F, Fut>(&self, vshard: VShardId, operation: F) -> Result<T, ControlError>
    where
        F: Fn(GroupId) -> Fut,
        Fut: Future<Output = Result<T, ControlError>>,
    {
        let deadline = Instant::now() + MOVED_WAIT_MAX;
        let mut metadata = self.metadata.clone();
        let mut pause = MOVED_RETRY_PAUSE_FIRST;
        loop {
            let group = self.owner_in(&metadata.borrow_and_update().state, vshard)?;
            let error = match operation(group).await {
                Err(error @ ControlError::Moved { .. }) => error,
                other => return other,
            };
            let moved_on = async {
                let waited =
                    metadata.wait_for(|applied| has_moved_on(&applied.state, vshard, group));
                let closed = waited.await.is_err();
                // The routing may name `group` until the switch is applied here; a short,
                // growing pause keeps a lagging view from turning into a busy loop.
                tokio::time::sleep(pause).await;
                closed
            };
            match tokio::time::timeout_at(deadline, moved_on).await {
                Ok(false) => tracing::debug!(%vshard, from = %group, "re-routing a moved vShard"),
                Ok(true) => return Err(error),
                Err(_) => {
                    return Err(ControlError::Unavailable {
                        node: self.groups.node(),
                        reason: format!(
                            "{vshard} is moving away from {group}; still fenced after {MOVED_WAIT_MAX:?}"
                        ),
                    });
                }
            }
            pause = (pause * 2).min(MOVED_RETRY_PAUSE_MAX);
        }
    }
}

/// Whether a retry of an operation that `group` refused as moved may now succeed: the routing
/// points elsewhere, or no migration of the vShard is in flight any more (it was given up and
/// the source serves the vShard again).
fn has_moved_on(state: &MetadataState, vshard: VShardId, group: GroupId) -> bool {
    let routed_elsewhere = state
        .routing()
        .is_some_and(|routing| routing.group_of(vshard) != group);
    let in_flight = state
        .migrations()
        .values()
        .any(|migration| migration.vshard == vshard && migration.is_active());
    routed_elsewhere || !in_flight
}
