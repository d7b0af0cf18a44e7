//! Moving a vShard's data from the source group into the target group: the export paged out of
//! the source's leader and imported part by part into the target's log (paced by the node's
//! migration bandwidth before the fence), and the replay of the commands the source applied
//! after the export, up to its fence.

use super::{MigrationContext, claim, record_copy, refused, replicate};
use crate::control::MigrationStep;
use crate::group_client::{Served, decode_answer};
use futures::StreamExt;
use nodedb_cluster_core::{GroupId, Migration};
use nodedb_cluster_raft::{
    CopyId, VShardChanges, VShardClaim, VShardExportPage, VShardStep, encode_replayed_commands,
};
use serde::de::DeserializeOwned;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Parts of one import replicated at the same time.
const IMPORT_PARTS_IN_FLIGHT: usize = 8;

/// The copy made while the source still served the vShard, remembered by the driver that made
/// it until the fence: the changes after `applied` turn it into the final copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EarlyCopy {
    pub copy: CopyId,
    /// The source's applied index when it exported the vShard.
    pub applied: u64,
    /// Whether the source served the vShard then (only then are its later commands the
    /// vShard's changes).
    pub serving: bool,
}

/// Paces migration copies on this node to a number of bytes per second (0: unpaced), so that a
/// move does not starve the groups' own traffic.
#[derive(Debug)]
pub struct Bandwidth {
    bytes_per_second: u64,
    next_free: Mutex<Instant>,
}

impl Bandwidth {
    pub fn new(bytes_per_second: u64) -> Bandwidth {
        Bandwidth {
            bytes_per_second,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` more fit in the budget.
    async fn take(&self, bytes: usize) {
        if self.bytes_per_second == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        let start = {
            let mut next_free = self
                .next_free
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let start = (*next_free).max(Instant::now());
            *next_free = start + cost;
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// A fresh copy: made after the fence at `fence_index`, or before it (0). The nonce keeps the
/// parts of two attempts (two drivers, or a retry) from mixing in the target.
pub(super) fn new_copy(fence_index: u64) -> CopyId {
    CopyId {
        fence_index,
        nonce: rand::random(),
    }
}

/// Replaces the target's data with copy `copy` of the source's current data: the export is
/// paged out of the source's leader and each part replicated in the target as one log entry
/// (`Import`, then `ImportMore`), paced when `paced`. Returns the export's standing, or `None`
/// when the target already serves the vShard as `adopted` (an earlier attempt finished).
pub(super) async fn copy_vshard(
    context: &MigrationContext,
    migration: &Migration,
    copy: CopyId,
    adopted: Option<VShardClaim>,
    paced: bool,
) -> Result<Option<EarlyCopy>, String> {
    let export: u64 = rand::random();
    let mut standing: Option<EarlyCopy> = None;
    let mut next_part = 0;
    loop {
        let page: VShardExportPage = read(
            context,
            migration.from,
            MigrationStep::Export {
                vshard: migration.vshard,
                export,
                first_part: next_part,
            },
        )
        .await?;
        if standing.is_some_and(|standing| standing.applied != page.applied.0) {
            return Err(format!("export {export} changed between its pages"));
        }
        let received = page.parts.len() as u32;
        let mut parts = page.parts.into_iter();
        if next_part == 0 {
            let first = parts.next().unwrap_or_default();
            let bytes = first.len();
            pace(context, paced, bytes).await;
            let step = VShardStep::Import(copy);
            let outcome = replicate(context, migration, migration.to, step, first).await?;
            if !outcome.applied {
                if adopted == Some(outcome.claim) {
                    return Ok(None);
                }
                return Err(refused(migration, migration.to, step, outcome.claim));
            }
            record_copy(context, migration.id, bytes as u64);
            standing = Some(EarlyCopy {
                copy,
                applied: page.applied.0,
                serving: page.serving,
            });
        }
        // The parts after the first may apply in any order: each adds disjoint keys. Several
        // in flight at once share the target's log commits.
        let step = VShardStep::ImportMore(copy);
        let more = parts.map(|part| async move {
            let bytes = part.len();
            pace(context, paced, bytes).await;
            claim(context, migration, migration.to, step, part).await?;
            record_copy(context, migration.id, bytes as u64);
            Ok::<(), String>(())
        });
        let mut more = futures::stream::iter(more).buffer_unordered(IMPORT_PARTS_IN_FLIGHT);
        while let Some(result) = more.next().await {
            result?;
        }
        next_part = page.first_part + received.max(1);
        if next_part >= page.parts_total {
            return Ok(standing);
        }
    }
}

/// Turns the target's `early` copy into the final copy of the source at `fence_index` by
/// replaying, batch by batch, the vShard's commands the source applied after the export and
/// before the fence. Each batch is accepted only on the copy the previous batch made.
pub(super) async fn replay_changes(
    context: &MigrationContext,
    migration: &Migration,
    early: EarlyCopy,
    fence_index: u64,
) -> Result<CopyId, String> {
    if !early.serving || early.applied >= fence_index {
        return Err("the early copy was not made while the source served the vShard".into());
    }
    let (mut copy, mut after) = (early.copy, early.applied);
    loop {
        let changes: VShardChanges = read(
            context,
            migration.from,
            MigrationStep::Changes {
                vshard: migration.vshard,
                after,
                before: fence_index,
            },
        )
        .await?;
        let last = changes.through.0 + 1 >= fence_index;
        let next = new_copy(if last { fence_index } else { 0 });
        let payload = encode_replayed_commands(&changes.commands);
        let bytes = payload.len() as u64;
        let step = VShardStep::ImportChanges {
            from: copy,
            to: next,
        };
        claim(context, migration, migration.to, step, payload).await?;
        record_copy(context, migration.id, bytes);
        (copy, after) = (next, changes.through.0);
        if last {
            return Ok(copy);
        }
    }
}

async fn pace(context: &MigrationContext, paced: bool, bytes: usize) {
    if paced {
        context.bandwidth.take(bytes).await;
    }
}

/// Runs a reading migration step on `group`'s leader and decodes its answer.
async fn read<T: DeserializeOwned>(
    context: &MigrationContext,
    group: GroupId,
    step: MigrationStep,
) -> Result<T, String> {
    let what = step.to_string();
    match context.groups.migrate(group, step).await {
        Ok(Served::Answered(answer)) => {
            decode_answer(&answer).map_err(|error| format!("{what} from {group}: {error}"))
        }
        Ok(other) => Err(format!("unexpected answer {other:?} to {what}")),
        Err(error) => Err(format!("{what} from {group}: {error}")),
    }
}
