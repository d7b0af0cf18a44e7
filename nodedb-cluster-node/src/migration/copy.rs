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
/// (`Import`, then `ImportMore`), paced when `paced`. The next page travels while the parts of
/// the last one are imported. Returns the export's standing, or `None` when the target already
/// serves the vShard as `adopted` (an earlier attempt finished).
pub(super) async fn copy_vshard(
    context: &MigrationContext,
    migration: &Migration,
    copy: CopyId,
    adopted: Option<VShardClaim>,
    paced: bool,
) -> Result<Option<EarlyCopy>, String> {
    let export: u64 = rand::random();
    let mut page = read_page(context, migration, export, 0).await?;
    let standing = EarlyCopy {
        copy,
        applied: page.applied.0,
        serving: page.serving,
    };
    loop {
        if page.applied.0 != standing.applied {
            return Err(format!("export {export} changed between its pages"));
        }
        let next_part = page.first_part + (page.parts.len() as u32).max(1);
        let more_pages = next_part < page.parts_total;
        let prefetch = async {
            if more_pages {
                Some(read_page(context, migration, export, next_part).await)
            } else {
                None
            }
        };
        let import = import_page(context, migration, copy, paced, page);
        let (imported, next_page) = tokio::join!(import, prefetch);
        match imported? {
            ImportedPage::Done => {}
            ImportedPage::AlreadyAdopted(claim) if adopted == Some(claim) => return Ok(None),
            ImportedPage::AlreadyAdopted(claim) => {
                return Err(refused(
                    migration,
                    migration.to,
                    VShardStep::Import(copy),
                    claim,
                ));
            }
        }
        match next_page {
            Some(next_page) => page = next_page?,
            None => return Ok(Some(standing)),
        }
    }
}

/// How the import of one page of an export ended.
enum ImportedPage {
    Done,
    /// The target refused the first part: it holds the vShard with this claim.
    AlreadyAdopted(VShardClaim),
}

/// Replicates the parts of `page` in the target: the first part of the export as `Import`
/// (which starts the copy), every other one as `ImportMore`, several at a time.
async fn import_page(
    context: &MigrationContext,
    migration: &Migration,
    copy: CopyId,
    paced: bool,
    page: VShardExportPage,
) -> Result<ImportedPage, String> {
    let mut parts = page.parts.into_iter();
    if page.first_part == 0 {
        let first = parts.next().unwrap_or_default();
        let bytes = first.len();
        pace(context, paced, bytes).await;
        let step = VShardStep::Import(copy);
        let outcome = replicate(context, migration, migration.to, step, first).await?;
        if !outcome.applied {
            return Ok(ImportedPage::AlreadyAdopted(outcome.claim));
        }
        record_copy(context, migration.id, bytes as u64);
    }
    // The parts after the first may apply in any order: each adds disjoint keys. Several in
    // flight at once share the target's log commits.
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
    Ok(ImportedPage::Done)
}

/// Parts of export `export` of the migrating vShard from the source's leader, from
/// `first_part` on (the export is made when it is 0).
async fn read_page(
    context: &MigrationContext,
    migration: &Migration,
    export: u64,
    first_part: u32,
) -> Result<VShardExportPage, String> {
    let step = MigrationStep::Export {
        vshard: migration.vshard,
        export,
        first_part,
    };
    read(context, migration.from, step).await
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
