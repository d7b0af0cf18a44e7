//! Moving a vShard's data from the source group into the target group: the export paged out of
//! the source's leader by the target's leader and imported part by part into the target's log
//! (the driver asks for each page, paced by its node's migration bandwidth before the fence),
//! and the replay of the commands the source applied after the export, up to its fence.

use super::{MigrationContext, claim, record_copy, refused};
use crate::control::{ControlError, ImportPage, MembershipChange, MigrationStep};
use crate::group_client::{EXPORT_PAGE_BYTES, GroupClient, Served, decode_answer};
use futures::StreamExt;
use nodedb_cluster_core::{GroupId, Migration, MigrationId, NodeState};
use nodedb_cluster_raft::{
    CopyId, VShardChanges, VShardClaim, VShardStep, encode_replayed_commands,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Parts of one import replicated at the same time.
const IMPORT_PARTS_IN_FLIGHT: usize = 8;
/// Longest the driver waits for the target's leadership to reach the source leader's node.
const LEADER_HANDOVER_WAIT: Duration = Duration::from_secs(1);
const LEADER_HANDOVER_POLL: Duration = Duration::from_millis(10);

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

/// Paces the migration copies this node drives to a number of bytes per second (0: unpaced),
/// so that a move does not starve the groups' own traffic.
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

    /// Counts `bytes` moved since `began` against the budget and waits until the budget has
    /// paid for them (after every byte counted before them): not at all when moving them took
    /// longer than the budget allows for them.
    async fn spend(&self, bytes: u64, began: Instant) {
        if self.bytes_per_second == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        let paid = {
            let mut next_free = self
                .next_free
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let start = (*next_free).max(began);
            *next_free = start + cost;
            *next_free
        };
        tokio::time::sleep_until(paid).await;
    }

    /// The bytes of one page of a paced copy: an eighth of a second's budget, so that a copy
    /// never runs far ahead of it.
    fn page_bytes(&self) -> u64 {
        match self.bytes_per_second {
            0 => EXPORT_PAGE_BYTES,
            rate => (rate / 8).clamp(1, EXPORT_PAGE_BYTES),
        }
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

/// Hands the target's leadership to the node that leads the source, when that node is Active,
/// holds a voter of the target and answers a ping, and waits a little for the handover: the copy's
/// pages are then read and replicated on one node, so the export crosses no network on its
/// way into the target's log (only the target's own replication). Best effort: the copy works
/// wherever the leaders are. While the move is in flight, leader balancing leaves both groups
/// alone (`plan_during_moves`).
pub(super) async fn bring_leaders_together(context: &MigrationContext, migration: &Migration) {
    let (from, to) = (migration.from, migration.to);
    let groups = &context.groups;
    let Some(source_leader) = groups.leader(from) else {
        return;
    };
    if groups.leader(to) == Some(source_leader) {
        return;
    }
    let fits = {
        let metadata = context.metadata.borrow();
        let state = &metadata.state;
        // A Draining node would only hand the leadership on again.
        let active = state
            .topology()
            .get(source_leader)
            .is_some_and(|node| node.state == NodeState::Active);
        let target_voter = state
            .routing()
            .and_then(|routing| routing.members(to))
            .is_some_and(|members| members.voters.contains(&source_leader));
        active && target_voter
    };
    if !fits || !groups.answers(source_leader).await {
        return;
    }
    let change = MembershipChange::TransferLeader { to: source_leader };
    if let Err(error) = groups.change_membership(to, change).await {
        tracing::debug!(%to, leader = %source_leader, %error, "migration: target leadership not handed over");
        return;
    }
    let deadline = Instant::now() + LEADER_HANDOVER_WAIT;
    while groups.leader(to) != Some(source_leader) && Instant::now() < deadline {
        tokio::time::sleep(LEADER_HANDOVER_POLL).await;
    }
    let leader = groups.leader(to);
    tracing::info!(%from, %to, ?leader, wanted = %source_leader, "migration: target leadership handed to the source's leader");
}

/// Replaces the target's data with copy `copy` of the source's current data, page by page:
/// the target's leader reads each page of the export from the source's leader and replicates
/// its parts (`MigrationStep::ImportPage`), paced when `paced`. Returns the export's standing,
/// or `None` when the target already adopted the vShard in `adopted_in` (an earlier attempt
/// finished).
pub(super) async fn copy_vshard(
    context: &MigrationContext,
    migration: &Migration,
    copy: CopyId,
    adopted_in: Option<MigrationId>,
    paced: bool,
) -> Result<Option<EarlyCopy>, String> {
    let export: u64 = rand::random();
    let mut standing: Option<EarlyCopy> = None;
    let mut first_part = 0;
    let bytes_max = match paced {
        true => context.bandwidth.page_bytes(),
        false => EXPORT_PAGE_BYTES,
    };
    loop {
        let step = MigrationStep::ImportPage(ImportPage {
            vshard: migration.vshard,
            migration: migration.id,
            from: migration.from,
            export,
            first_part,
            bytes_max,
            copy,
        });
        let began = Instant::now();
        let page: ImportedPage = read(context, migration.to, step).await?;
        if let Some((step, claim)) = page.refused {
            return match step {
                VShardStep::Import(_) if adopted_in.is_some_and(|id| claim.adopted_in(id)) => {
                    Ok(None)
                }
                _ => Err(refused(migration, migration.to, step, claim)),
            };
        }
        let standing = *standing.get_or_insert(EarlyCopy {
            copy,
            applied: page.applied,
            serving: page.serving,
        });
        if page.applied != standing.applied {
            return Err(format!("export {export} changed between its pages"));
        }
        record_copy(context, migration.id, page.bytes);
        if paced {
            context.bandwidth.spend(page.bytes, began).await;
        }
        if page.last {
            return Ok(Some(standing));
        }
        first_part = page.next_part;
    }
}

/// What the target's leader did with one page of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImportedPage {
    /// The source's applied index when it made the export, and whether it served the vShard.
    pub applied: u64,
    pub serving: bool,
    /// Whether the page held the export's last part.
    pub last: bool,
    /// The first part of the next page.
    pub next_part: u32,
    /// Bytes of the parts replicated.
    pub bytes: u64,
    /// The target refused this step: it holds the vShard with this claim.
    pub refused: Option<(VShardStep, VShardClaim)>,
}

/// Serves [`MigrationStep::ImportPage`] on the target's leader: reads the page from the
/// source's leader (this node's own replica when it leads the source too) and replicates its
/// parts in the target, the export's first part (`Import`, which starts the copy) before the
/// others, which may apply in any order (each adds disjoint keys) and go several at a time to
/// share the target's log commits.
pub(crate) async fn import_page(
    groups: &GroupClient,
    to: GroupId,
    page: ImportPage,
) -> Result<ImportedPage, ControlError> {
    let ImportPage {
        vshard,
        migration,
        from,
        export,
        first_part,
        bytes_max,
        copy,
    } = page;
    let exported = groups
        .export_page(from, vshard, export, first_part, bytes_max)
        .await
        .map_err(|error| ControlError::Unavailable {
            node: groups.node(),
            reason: format!("reading export {export} of {vshard} from {from}: {error}"),
        })?;
    let mut imported = ImportedPage {
        applied: exported.applied.0,
        serving: exported.serving,
        last: exported.last,
        next_part: exported.first_part + (exported.parts.len() as u32).max(1),
        bytes: 0,
        refused: None,
    };
    let mut parts = exported.parts.iter().cloned();
    if exported.first_part == 0 {
        let first = parts.next().unwrap_or_default();
        let bytes = first.len() as u64;
        let step = VShardStep::Import(copy);
        let outcome = groups.claim(to, vshard, migration, step, first).await?;
        if !outcome.applied {
            imported.refused = Some((step, outcome.claim));
            return Ok(imported);
        }
        imported.bytes += bytes;
    }
    let step = VShardStep::ImportMore(copy);
    let more = parts.map(|part| async move {
        let bytes = part.len() as u64;
        let outcome = groups.claim(to, vshard, migration, step, part).await?;
        Ok::<_, ControlError>((outcome, bytes))
    });
    let mut more = futures::stream::iter(more).buffer_unordered(IMPORT_PARTS_IN_FLIGHT);
    while let Some(result) = more.next().await {
        let (outcome, bytes) = result?;
        match outcome.applied {
            true => imported.bytes += bytes,
            false => imported.refused = Some((step, outcome.claim)),
        }
    }
    Ok(imported)
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

/// Runs a reading migration step on `group`'s leader and decodes its answer.
pub(super) async fn read<T: DeserializeOwned>(
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[tokio::test(start_paused = true)]
    async fn the_budget_holds_a_copy_back_only_when_it_runs_ahead() {
        let bandwidth = Bandwidth::new(MIB);
        // Moving half a MiB took a second: the budget paid for it meanwhile.
        let began = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        bandwidth.spend(MIB / 2, began).await;
        assert_eq!(began.elapsed(), Duration::from_secs(1));
        // Two MiB moved at once: they wait for their two seconds.
        let began = Instant::now();
        bandwidth.spend(2 * MIB, began).await;
        assert_eq!(began.elapsed(), Duration::from_secs(2));
        // Unpaced: never waits.
        let began = Instant::now();
        Bandwidth::new(0).spend(100 * MIB, began).await;
        assert_eq!(began.elapsed(), Duration::ZERO);
    }

    #[test]
    fn a_paced_page_is_an_eighth_of_a_second_of_the_budget() {
        assert_eq!(Bandwidth::new(8 * MIB).page_bytes(), MIB);
        assert_eq!(Bandwidth::new(1024 * MIB).page_bytes(), EXPORT_PAGE_BYTES);
        assert_eq!(Bandwidth::new(1).page_bytes(), 1);
        assert_eq!(Bandwidth::new(0).page_bytes(), EXPORT_PAGE_BYTES);
    }
}
