//! Where a replica finds the data of a vShard handed over by another group
//! ([`VShardStep::Handover`]): from that group's replica on its own node, once it has applied
//! the fence (its engine shares the vShard, no bytes are copied), or else from a replica of
//! that group anywhere, through the node's [`FencedVShards`].
//!
//! The source holds the vShard unchanged from its fence until it drops it, and it drops it only
//! once every replica of the target has a snapshot past the handover and has purged its log
//! through it (the migration driver sees to that): a replica that applies the step, now or when
//! it replays its log after a restart, finds the data.

use crate::claims::{VShardClaim, VShardStep};
use crate::error::ProposeError;
use crate::log_db::MetaKey;
use crate::multi_raft::MultiRaft;
use crate::replica::HandedData;
use crate::router::GroupTable;
use crate::state_machine::{LogIndex, VShardDigest};
use bytes::Bytes;
use futures::future::BoxFuture;
use nodedb_cluster_core::{GroupId, MigrationId, NodeId, VShardId};
use openraft::async_runtime::watch::WatchReceiver;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// How long a replica waits for the source's replica on its node to apply the fence before it
/// asks a replica elsewhere.
const LOCAL_WAIT: Duration = Duration::from_secs(5);
const LOCAL_POLL: Duration = Duration::from_millis(2);

/// A vShard's export read from a replica of its group.
#[derive(Clone, Debug)]
pub struct FencedExport {
    /// The replica's applied index when it made the export.
    pub applied: LogIndex,
    /// Whether the replica served the vShard then.
    pub serving: bool,
    pub parts: Vec<Bytes>,
}

/// Reads a vShard out of a replica of another group on the node's behalf (the node's group
/// client, which reaches any group's leader).
pub trait FencedVShards: Send + Sync + 'static {
    /// An export of `vshard` from the leader of `group`.
    fn export(
        &self,
        group: GroupId,
        vshard: VShardId,
    ) -> BoxFuture<'static, Result<FencedExport, String>>;
}

/// The node's other replicas, as one replica's apply path sees them.
#[derive(Clone)]
pub(crate) struct Siblings {
    table: Weak<GroupTable>,
    remote: Arc<OnceLock<Arc<dyn FencedVShards>>>,
    /// The node's multi-raft has shut down.
    closed: Arc<AtomicBool>,
}

/// What a handover step names: the source group, its fence and the migration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HandoverSource {
    pub from: GroupId,
    pub fence_index: u64,
    pub vshard: VShardId,
    pub migration: MigrationId,
}

impl HandoverSource {
    pub fn of(
        step: VShardStep,
        vshard: VShardId,
        migration: MigrationId,
    ) -> Option<HandoverSource> {
        match step {
            VShardStep::Handover {
                from, fence_index, ..
            } => Some(HandoverSource {
                from,
                fence_index,
                vshard,
                migration,
            }),
            _ => None,
        }
    }
}

impl Siblings {
    pub fn new(
        table: Weak<GroupTable>,
        remote: Arc<OnceLock<Arc<dyn FencedVShards>>>,
        closed: Arc<AtomicBool>,
    ) -> Siblings {
        Siblings {
            table,
            remote,
            closed,
        }
    }

    /// Whether this node still hosts `group`: false once its node shut down or the replica
    /// was removed (a replica is listed only once it runs, so a caller that saw it listed
    /// before knows it was removed).
    pub fn hosts(&self, group: GroupId) -> bool {
        !self.closed.load(Ordering::SeqCst)
            && self
                .table
                .upgrade()
                .is_some_and(|table| table.get(group).is_some())
    }

    /// The vShard shared by the source's replica on this node, once that replica has applied
    /// the fence; `None` when this node holds no replica of the source, or its replica does
    /// not reach the fence within [`LOCAL_WAIT`], or holds the vShard under another claim.
    pub async fn local(&self, source: HandoverSource) -> Option<HandedData> {
        let deadline = Instant::now() + LOCAL_WAIT;
        loop {
            let hosted = self.table.upgrade()?.get(source.from)?;
            {
                let replica = hosted.machine.lock();
                if replica.applied().0 >= source.fence_index {
                    if replica.claim(source.vshard) != VShardClaim::Fenced(source.migration) {
                        return None;
                    }
                    return replica
                        .engine
                        .share_vshard(source.vshard)
                        .map(HandedData::Shared);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(LOCAL_POLL).await;
        }
    }

    /// An export of the vShard from the source's leader, made at or after the fence while the
    /// source no longer served it.
    pub async fn remote(&self, source: HandoverSource) -> Result<HandedData, String> {
        let remote = self
            .remote
            .get()
            .ok_or("this node reads no other group's replicas")?;
        let export = remote.export(source.from, source.vshard).await?;
        if export.serving || export.applied.0 < source.fence_index {
            return Err(format!(
                "{} exported {} at index {} ({}), before its fence at {}",
                source.from,
                source.vshard,
                export.applied.0,
                if export.serving { "serving" } else { "fenced" },
                source.fence_index
            ));
        }
        Ok(HandedData::Parts(export.parts))
    }
}

/// A vShard's standing on a group's leader, for a handover out of it: the digest the target
/// checks the data it takes against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedDigest {
    /// The leader's applied index when asked.
    pub applied: LogIndex,
    pub claim: VShardClaim,
    /// `None` when the group's engine keeps no digests (its vShards move through the log).
    pub digest: Option<VShardDigest>,
    /// The group's voters and learners as the leader knows them (both halves of a joint
    /// membership).
    pub members: Vec<NodeId>,
}

impl MultiRaft {
    /// Lets this node's replicas read a vShard handed over to them from a replica of its
    /// source elsewhere, when the source's replica on this node cannot give it (set once;
    /// without it they wait for their own node's replica).
    pub fn set_fenced_vshards(&self, source: Arc<dyn FencedVShards>) {
        if self.fenced_vshards().set(source).is_err() {
            tracing::warn!("the source of handed-over vShards was set already; kept the first");
        }
    }

    /// The standing of `vshard` in `group` at its leader, after a read barrier.
    pub async fn vshard_digest(
        &self,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<FencedDigest, ProposeError> {
        self.read_barrier(group).await?;
        let mut members = self
            .status(group)
            .map(|status| [status.voters, status.learners].concat())
            .unwrap_or_default();
        members.sort();
        members.dedup();
        let hosted = self.hosted(group)?;
        let replica = hosted.machine.lock();
        Ok(FencedDigest {
            applied: replica.applied(),
            claim: replica.claim(vshard),
            digest: replica.engine.vshard_digest(vshard),
            members,
        })
    }

    /// Whether this node's replica of `group` no longer needs any entry up to `through` to
    /// rebuild its state: it has applied `through`, holds a snapshot past it and has durably
    /// purged its log through it, so it never replays nor sends an entry up to `through`
    /// again (a replica that needs them gets a snapshot). When not yet, asks for what is
    /// missing (a snapshot, then the purge) and answers false: ask again.
    pub async fn make_durable_through(
        &self,
        group: GroupId,
        through: LogIndex,
    ) -> Result<bool, ProposeError> {
        let hosted = self.hosted(group)?;
        let (applied, snapshot, purged) = {
            let metrics = hosted.raft.metrics();
            let metrics = metrics.borrow_watched();
            let index = |log_id: Option<crate::types::LogId>| log_id.map_or(0, |id| id.index);
            (
                index(metrics.last_applied),
                index(metrics.snapshot),
                index(metrics.purged),
            )
        };
        let stopped = |_| ProposeError::Shutdown { group };
        if applied < through.0 {
            return Ok(false);
        }
        if snapshot < through.0 {
            hosted.raft.trigger().snapshot().await.map_err(stopped)?;
            return Ok(false);
        }
        if purged < through.0 {
            hosted
                .raft
                .trigger()
                .purge_log(through.0)
                .await
                .map_err(stopped)?;
            return Ok(false);
        }
        self.log_db()
            .sync_meta(group, MetaKey::LastPurged)
            .await
            .map_err(|error| ProposeError::Storage {
                group,
                reason: error.to_string(),
            })?;
        Ok(true)
    }
}
