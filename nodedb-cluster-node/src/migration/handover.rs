//! Moving a vShard between two groups that share their nodes without copying it: after the
//! source's fence, the target replicates one small `Handover` step and each of its replicas
//! takes the vShard from the source's replica on its own node (the raft crate's
//! `handover.rs`). The bytes then cross no network and enter no Raft log; each node writes
//! them once, in the target's next snapshot. Before the source may drop the vShard, every
//! replica of the target must have a snapshot past the step and have purged its log through
//! it, so that none needs the source again to rebuild its state.

use super::copy::read;
use super::{MigrationContext, claim, record_copy};
use crate::control::{ControlError, MigrationStep};
use crate::group_client::{EXPORT_PAGE_BYTES, GroupClient, Operation, Served, decode_answer};
use futures::future::BoxFuture;
use nodedb_cluster_core::{GroupId, Migration, NodeId, VShardId};
use nodedb_cluster_raft::{
    FencedDigest, FencedExport, FencedVShards, VShardClaim, VShardDigest, VShardStep,
};
use std::time::Duration;
use tokio::time::Instant;

/// A target group holding at most this many bytes takes a vShard by a handover whatever the
/// vShard's size: its snapshots cost little.
const SMALL_TARGET_BYTES: u64 = 64 * 1024 * 1024;
/// A larger target group takes a vShard by a handover only while it holds at most this many
/// times the vShard's bytes. A handover makes every target replica write a snapshot of the
/// whole group, vShard included; a copy writes the vShard into the target's logs, at about
/// four times the CPU per byte (docs/measurements.md: 14 against 3.4 ms per MB) and a third of
/// the rate. Beyond twice the vShard, the snapshots would cost more than the copy.
const TARGET_BYTES_PER_VSHARD_BYTE_MAX: u64 = 2;

/// A vShard of more entries moves by a copy: sharing it walks over its entries under both
/// replicas' locks during the write pause (the KV engine: 82 + 20 ms for a million keys,
/// `--example kv_vshard_ops`), where a copy's pause grows only with the writes made during it.
const ENTRIES_MAX: u64 = 100_000;

/// How long one driver round waits for the target's replicas to stop needing the source.
const DURABLE_WAIT: Duration = Duration::from_secs(10);
const DURABLE_POLL: Duration = Duration::from_millis(10);

/// Whether the move should be a handover: the groups share their nodes ([`co_located`]), the
/// source's engine keeps vShard digests, and neither the walk over the vShard's entries nor
/// the target's snapshots would cost more than a copy ([`handover_pays`]). Asked before the
/// fence, so that a move that will be handed over makes no early copy.
pub(super) async fn fits(context: &MigrationContext, migration: &Migration) -> bool {
    if !co_located(context, migration) {
        return false;
    }
    let step = MigrationStep::Digest {
        vshard: migration.vshard,
    };
    let Ok(FencedDigest {
        digest: Some(digest),
        ..
    }) = read(context, migration.from, step).await
    else {
        return false;
    };
    match context.groups.vshard_bytes(migration.to).await {
        Ok(sizes) => handover_pays(sizes.values().sum(), digest),
        Err(_) => false,
    }
}

/// Whether a target group holding `target_bytes` should take a vShard of `vshard` by a
/// handover rather than by a copy.
fn handover_pays(target_bytes: u64, vshard: VShardDigest) -> bool {
    let snapshot_bytes_max = SMALL_TARGET_BYTES.max(
        vshard
            .bytes
            .saturating_mul(TARGET_BYTES_PER_VSHARD_BYTE_MAX),
    );
    vshard.entries <= ENTRIES_MAX && target_bytes <= snapshot_bytes_max
}

/// Whether every replica of the target (voters and learners, as the metadata records them) has
/// a replica of the source on its node.
fn co_located(context: &MigrationContext, migration: &Migration) -> bool {
    let metadata = context.metadata.borrow();
    let Some(routing) = metadata.state.routing() else {
        return false;
    };
    let (Some(source), Some(target)) = (
        routing.members(migration.from),
        routing.members(migration.to),
    ) else {
        return false;
    };
    let hosts_source =
        |node: &NodeId| source.voters.contains(node) || source.learners.contains(node);
    target
        .voters
        .iter()
        .chain(&target.learners)
        .all(hosts_source)
}

/// After the fence at `fence_index`: replicates the handover in the target, with the source's
/// digest at the fence for the target's replicas to check what they take. `Ok(false)` when
/// the move does not fit a handover (any more): the caller copies the vShard instead.
pub(super) async fn hand_over(
    context: &MigrationContext,
    migration: &Migration,
    fence_index: u64,
) -> Result<bool, String> {
    let (id, vshard, from) = (migration.id, migration.vshard, migration.from);
    if !co_located(context, migration) {
        return Ok(false);
    }
    let standing: FencedDigest = read(context, from, MigrationStep::Digest { vshard }).await?;
    let Some(digest) = standing.digest else {
        return Ok(false);
    };
    if standing.claim != VShardClaim::Fenced(id) || standing.applied.0 < fence_index {
        return Err(format!(
            "{from} holds {vshard} as {} at index {}, not fenced at {fence_index}",
            standing.claim, standing.applied.0
        ));
    }
    let step = VShardStep::Handover {
        from,
        fence_index,
        digest,
    };
    claim(context, migration, migration.to, step, Vec::new()).await?;
    record_copy(context, id, digest.bytes);
    Ok(true)
}

/// Before the source drops a vShard it handed over: waits until every replica of the target
/// has a snapshot past the handover and has durably purged its log through it (asking each
/// for them). Returns at once when the target's vShard did not come by a handover.
pub(super) async fn wait_until_durable(
    context: &MigrationContext,
    migration: &Migration,
) -> Result<(), String> {
    let (id, vshard, to) = (migration.id, migration.vshard, migration.to);
    let standing: FencedDigest = read(context, to, MigrationStep::Digest { vshard }).await?;
    if standing.claim != VShardClaim::Handed(id) {
        return Ok(());
    }
    // The leader's applied index is past the handover: the routing switched after it applied.
    let through = standing.applied.0;
    let deadline = Instant::now() + DURABLE_WAIT;
    let mut waiting = standing.members.clone();
    while !waiting.is_empty() {
        let asked = waiting
            .iter()
            .map(|node| durable_on(&context.groups, *node, to, through));
        let answers = futures::future::join_all(asked).await;
        waiting = waiting
            .into_iter()
            .zip(answers)
            .filter_map(|(node, answer)| match answer {
                Ok(true) => None,
                Ok(false) => Some(node),
                Err(error) => {
                    tracing::debug!(%id, %to, %node, %error, "migration: replica not reached");
                    Some(node)
                }
            })
            .collect();
        if !waiting.is_empty() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "replicas of {to} on {waiting:?} still need their log through {through}"
                ));
            }
            tokio::time::sleep(DURABLE_POLL).await;
        }
    }
    tracing::info!(%id, %vshard, %to, through, members = ?standing.members, "migration: every target replica holds the vShard in a snapshot");
    Ok(())
}

/// Asks `node`'s replica of `group` whether it still needs its log through `through`
/// ([`MigrationStep::DurableThrough`]).
async fn durable_on(
    groups: &GroupClient,
    node: NodeId,
    group: GroupId,
    through: u64,
) -> Result<bool, ControlError> {
    let operation = Operation::Migrate(MigrationStep::DurableThrough { through });
    let served = match node == groups.node() {
        true => groups.serve_here(group, operation).await,
        false => groups.forward(node, group, &operation).await,
    }?;
    match served {
        Served::Answered(answer) => decode_answer(&answer).map_err(ControlError::Invalid),
        other => Err(ControlError::Invalid(format!(
            "unexpected answer {other:?} to a durability check"
        ))),
    }
}

/// A target replica whose node cannot give it the vShard reads it from the source's leader.
impl FencedVShards for GroupClient {
    fn export(
        &self,
        group: GroupId,
        vshard: VShardId,
    ) -> BoxFuture<'static, Result<FencedExport, String>> {
        let groups = self.clone();
        Box::pin(async move {
            let export: u64 = rand::random();
            let (mut parts, mut first_part) = (Vec::new(), 0);
            let mut standing = None;
            loop {
                let page = groups
                    .export_page(group, vshard, export, first_part, EXPORT_PAGE_BYTES)
                    .await
                    .map_err(|error| format!("export of {vshard} from {group}: {error}"))?;
                let (applied, serving) = *standing.get_or_insert((page.applied, page.serving));
                if page.applied != applied {
                    return Err(format!("export {export} changed between its pages"));
                }
                parts.extend(page.parts.iter().cloned());
                if page.last {
                    return Ok(FencedExport {
                        applied,
                        serving,
                        parts,
                    });
                }
                first_part = page.first_part + (page.parts.len() as u32).max(1);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn vshard(bytes: u64, entries: u64) -> VShardDigest {
        VShardDigest {
            bytes,
            entries,
            hash: 0,
        }
    }

    #[test]
    fn a_handover_pays_into_a_small_group_or_one_not_much_larger_than_the_vshard() {
        // Small target groups always: their snapshots cost little.
        assert!(handover_pays(0, vshard(0, 0)));
        assert!(handover_pays(64 * MIB, vshard(1, 1)));
        // Larger ones up to twice the vShard.
        assert!(handover_pays(200 * MIB, vshard(100 * MIB, 1_600)));
        assert!(!handover_pays(200 * MIB + 1, vshard(100 * MIB, 1_600)));
        assert!(!handover_pays(50_000 * MIB, vshard(100 * MIB, 1_600)));
        assert!(handover_pays(u64::MAX, vshard(u64::MAX, 1)));
    }

    #[test]
    fn a_vshard_of_many_entries_is_copied() {
        assert!(handover_pays(0, vshard(100 * MIB, ENTRIES_MAX)));
        assert!(!handover_pays(0, vshard(100 * MIB, ENTRIES_MAX + 1)));
    }
}
