//! The migration driver. It runs on every node but acts only while the node leads the metadata
//! group, and carries each in-flight vShard migration forward one committed phase at a time:
//!
//! - `Planned -> Copying`: recorded at once.
//! - `Copying -> Fenced`: a copy of the vShard from the source group to the target while
//!   writes continue, exported at a known applied index of the source (and made on one node:
//!   the target's leadership is first handed to the source leader's node), then a fence in the
//!   source group at a known log index; from there on the source refuses the vShard (`Moved`).
//! - `Fenced -> Switched`: the target catches up by replaying the vShard's commands that the
//!   source applied between the export and the fence (read from the source's log; a full
//!   second copy when that is not possible), the target serves the vShard (adopt), and the
//!   routing switches (`routing_version + 1`). Clients of the vShard pause from the fence to
//!   the switch, then are re-routed; the pause grows with the writes made during the copy,
//!   not with the vShard's size. The driver goes on from the fence without waiting for its
//!   next round.
//! - `Switched -> Cleaned`: the source drops its copy; it stays fenced, so a request routed by
//!   a stale view is refused, never answered from a dropped vShard.
//!
//! When every replica of the target has a replica of the source on its node, the move is a
//! handover instead (`handover.rs`): no copy before the fence; after it, one `Handover` step in
//! the target, whose replicas take the vShard from their nodes' source replicas; and before
//! the drop, a wait until every target replica holds it in a snapshot.
//!
//! Every step names its migration and is replicated in the data group as a claim change that
//! the group refuses when a later step already happened (`VShardClaim` in the raft crate), so a
//! step sent late by a deposed metadata leader can never overwrite, fence or drop a vShard that
//! moved on. The next step is chosen from the committed phase only, so a new metadata leader
//! resumes a migration where the log says it is. A migration whose copy makes no progress
//! for [`COPY_STALL_MAX`] is given up before the fence only: `AbortMigration` is committed,
//! then the source serves the vShard again and the target drops its partial copy (each new
//! metadata leader repeats that clean-up once). Once `Fenced` is committed the migration only
//! rolls forward.

mod copy;
mod handover;

pub use copy::Bandwidth;
pub(crate) use copy::import_page;

use crate::group_client::GroupClient;
use copy::{EarlyCopy, bring_leaders_together, copy_vshard, new_copy, replay_changes};
use nodedb_cluster_core::{
    GroupId, METADATA_GROUP, MetadataCommand, Migration, MigrationId, MigrationPhase,
};
use nodedb_cluster_raft::{AppliedMetadata, MultiRaft, StepOutcome, VShardClaim, VShardStep};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Pause between driver rounds when nothing changed.
const ROUND_INTERVAL: Duration = Duration::from_millis(50);
/// Default of [`MigrationSettings::bandwidth_bytes_per_s`].
pub const DEFAULT_BANDWIDTH_BYTES_PER_S: u64 = 128 * 1024 * 1024;
/// Default of [`MigrationSettings::concurrent_max`].
pub const DEFAULT_CONCURRENT_MAX: usize = 4;
/// Default of [`MigrationSettings::size_ratio`].
pub const DEFAULT_SIZE_RATIO: f64 = 2.0;
/// Default of [`MigrationSettings::size_floor_bytes`].
pub const DEFAULT_SIZE_FLOOR_BYTES: u64 = 64 * 1024 * 1024;
/// Default of [`MigrationSettings::size_check_interval`].
pub const DEFAULT_SIZE_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// A migration still unfenced whose copy made no progress for this long (since the driver
/// first saw it or since its last part landed) is given up.
pub const COPY_STALL_MAX: Duration = Duration::from_secs(60);

const BYTES_COPIED: &str = "nodedb_cluster_migration_bytes_copied_total";
const WRITE_PAUSE: &str = "nodedb_cluster_migration_write_pause_seconds";
const FINISHED: &str = "nodedb_cluster_migrations_finished_total";

/// How vShards move, and when the metadata leader moves them by itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MigrationSettings {
    /// Bytes per second that the copies before the fence of the moves this node drives may
    /// move, together: a move must not starve the groups' own traffic. (The copy after the fence is not paced:
    /// writes to the vShard wait for it.)
    pub bandwidth_bytes_per_s: u64,
    /// Migrations carried forward at the same time; automatic rebalancing begins a move only
    /// while fewer are in flight.
    pub concurrent_max: usize,
    /// Move vShards away from a data group that holds much more data than the others, and
    /// even out the groups' vShard counts when a node joins.
    pub auto_rebalance: bool,
    /// A group is much larger when it holds more than this many times the mean of the groups...
    pub size_ratio: f64,
    /// ... and more than this many bytes.
    pub size_floor_bytes: u64,
    /// How often the metadata leader asks every data group for its bytes per vShard.
    pub size_check_interval: Duration,
}

impl Default for MigrationSettings {
    fn default() -> MigrationSettings {
        MigrationSettings {
            bandwidth_bytes_per_s: DEFAULT_BANDWIDTH_BYTES_PER_S,
            concurrent_max: DEFAULT_CONCURRENT_MAX,
            auto_rebalance: true,
            size_ratio: DEFAULT_SIZE_RATIO,
            size_floor_bytes: DEFAULT_SIZE_FLOOR_BYTES,
            size_check_interval: DEFAULT_SIZE_CHECK_INTERVAL,
        }
    }
}

/// What the driver measured of one migration, on the node that drove it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationProgress {
    pub bytes_copied: u64,
    /// From the fence to the routing switch.
    pub write_pause: Option<Duration>,
}

/// Progress of the migrations this node drove, shared with the admin API.
#[derive(Clone, Debug, Default)]
pub struct ProgressBook(Arc<Mutex<HashMap<MigrationId, Tracked>>>);

#[derive(Clone, Copy, Debug)]
struct Tracked {
    progress: MigrationProgress,
    /// When the driver first saw the migration, then when a part of its copy last landed.
    last_progress: Instant,
    fenced_at: Option<Instant>,
    /// The copy this driver made before the fence, if it made one.
    early: Option<EarlyCopy>,
    /// An aborted migration's groups were cleaned up by this node.
    cleaned_up: bool,
}

/// What the driver needs from the node.
#[derive(Clone)]
pub(crate) struct MigrationContext {
    pub raft: MultiRaft,
    pub groups: GroupClient,
    pub metadata: watch::Receiver<AppliedMetadata>,
    pub progress: ProgressBook,
    pub bandwidth: Arc<Bandwidth>,
    /// Migrations carried forward at the same time.
    pub concurrent_max: usize,
}

impl ProgressBook {
    pub fn get(&self, id: MigrationId) -> Option<MigrationProgress> {
        self.lock().get(&id).map(|tracked| tracked.progress)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<MigrationId, Tracked>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn track(&self, id: MigrationId) -> Tracked {
        *self.lock().entry(id).or_insert_with(|| Tracked {
            progress: MigrationProgress::default(),
            last_progress: Instant::now(),
            fenced_at: None,
            early: None,
            cleaned_up: false,
        })
    }

    fn update(&self, id: MigrationId, change: impl FnOnce(&mut Tracked)) {
        if let Some(tracked) = self.lock().get_mut(&id) {
            change(tracked);
        }
    }
}

/// Drives migrations until `stop` turns true.
pub(crate) async fn run(context: MigrationContext, mut stop: watch::Receiver<bool>) {
    let mut metadata = context.metadata.clone();
    loop {
        let has_work = context.raft.is_leader(METADATA_GROUP)
            && metadata
                .borrow()
                .state
                .migrations()
                .values()
                .any(|migration| migration.is_active() || needs_clean_up(&context, migration));
        // The barrier makes the view below include every committed phase, so a new leader
        // does not redo steps from an old one (the groups would refuse them anyway). Without
        // work there is no barrier: an idle cluster sends nothing for migrations.
        if has_work && context.raft.read_barrier(METADATA_GROUP).await.is_ok() {
            let active: Vec<Migration> = metadata
                .borrow_and_update()
                .state
                .migrations()
                .values()
                .filter(|migration| migration.is_active() || needs_clean_up(&context, migration))
                .take(context.concurrent_max)
                .cloned()
                .collect();
            let steps = active.iter().map(|migration| step(&context, migration));
            for (migration, result) in active.iter().zip(futures::future::join_all(steps).await) {
                if let Err(error) = result {
                    tracing::info!(id = %migration.id, vshard = %migration.vshard, phase = ?migration.phase, %error, "migration step failed; retrying");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(ROUND_INTERVAL) => {}
            _ = metadata.changed() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// Carries `migration` one phase forward (or gives it up).
async fn step(context: &MigrationContext, migration: &Migration) -> Result<(), String> {
    let tracked = context.progress.track(migration.id);
    let (id, vshard, from, to) = (migration.id, migration.vshard, migration.from, migration.to);
    match migration.phase {
        MigrationPhase::Planned | MigrationPhase::Copying
            if tracked.last_progress.elapsed() > COPY_STALL_MAX =>
        {
            abort(context, migration, "the copy made no progress").await
        }
        MigrationPhase::Planned => {
            tracing::info!(%id, %vshard, %from, %to, "migration: copying");
            let phase = MigrationPhase::Copying;
            propose(context, MetadataCommand::AdvanceMigration { id, phase }).await
        }
        MigrationPhase::Copying => {
            if handover::fits(context, migration).await {
                tracing::info!(%id, %vshard, %from, %to, "migration: the groups share their nodes; handing the vShard over after the fence");
            } else {
                bring_leaders_together(context, migration).await;
                let started = Instant::now();
                let early = copy_vshard(context, migration, new_copy(0), None, true).await?;
                let bytes = context.progress.track(id).progress.bytes_copied;
                tracing::info!(%id, %vshard, %to, bytes, took = ?started.elapsed(), "migration: copied");
                context.progress.update(id, |tracked| tracked.early = early);
            }
            let fence = claim(context, migration, from, VShardStep::Fence, Vec::new()).await?;
            context
                .progress
                .update(id, |tracked| tracked.fenced_at = Some(Instant::now()));
            let fence_index = fence.index.0;
            tracing::info!(%id, %vshard, %from, fence_index, "migration: fenced");
            let phase = MigrationPhase::Fenced { fence_index };
            propose(context, MetadataCommand::AdvanceMigration { id, phase }).await?;
            // Writes to the vShard pause from here: go on at once rather than next round.
            switch(context, migration, fence_index).await
        }
        MigrationPhase::Fenced { fence_index } => switch(context, migration, fence_index).await,
        MigrationPhase::Switched => {
            handover::wait_until_durable(context, migration).await?;
            // Refused only when a later migration already took the vShard back to the source.
            let dropped = claim_or_later(context, migration, from, VShardStep::Drop).await?;
            if !dropped {
                tracing::info!(%id, %vshard, %from, "migration: source already moved on");
            }
            let phase = MigrationPhase::Cleaned;
            propose(context, MetadataCommand::AdvanceMigration { id, phase }).await?;
            metrics::counter!(FINISHED, "outcome" => "cleaned").increment(1);
            tracing::info!(%id, %vshard, %from, "migration: source cleaned");
            Ok(())
        }
        MigrationPhase::Aborted if !tracked.cleaned_up => {
            clean_up_aborted(context, migration).await
        }
        MigrationPhase::Cleaned | MigrationPhase::Aborted => Ok(()),
    }
}

/// From the fence on: hands the vShard over to the target when the groups share their nodes,
/// or else makes the target's copy final (replaying the changes after this driver's early
/// copy, or a full copy of the now unchanging source) and adopts it; then switches the
/// routing.
async fn switch(
    context: &MigrationContext,
    migration: &Migration,
    fence_index: u64,
) -> Result<(), String> {
    let (id, vshard, to) = (migration.id, migration.vshard, migration.to);
    // A driver that copied before the fence chose the copy (the target's snapshots would cost
    // more); one that did not (it handed over, or took over from another driver) hands over
    // when it can, which pauses writes far less than a whole copy after the fence.
    let copied_early = context.progress.track(id).early.is_some();
    let handed_over = !copied_early && handover::hand_over(context, migration, fence_index).await?;
    if !handed_over {
        copy_after_fence(context, migration, fence_index).await?;
    }
    propose(context, MetadataCommand::FinishMigration { id }).await?;
    let pause = context.progress.track(id).fenced_at.map(|at| at.elapsed());
    if let Some(pause) = pause {
        metrics::histogram!(WRITE_PAUSE).record(pause.as_secs_f64());
        context
            .progress
            .update(id, |tracked| tracked.progress.write_pause = Some(pause));
    }
    tracing::info!(%id, %vshard, %to, ?pause, handed_over, "migration: routing switched");
    Ok(())
}

/// Makes the target's copy final and adopts it: the changes after this driver's early copy
/// replayed, or a full copy of the now unchanging source.
async fn copy_after_fence(
    context: &MigrationContext,
    migration: &Migration,
    fence_index: u64,
) -> Result<(), String> {
    let (id, vshard, to) = (migration.id, migration.vshard, migration.to);
    // Used once: after a failed attempt the target may hold another copy.
    let early = context.progress.track(id).early;
    context.progress.update(id, |tracked| tracked.early = None);
    let replayed = match early {
        Some(early) => replay_changes(context, migration, early, fence_index)
            .await
            .inspect_err(|error| {
                tracing::info!(%id, %vshard, %error, "migration: copying the whole vShard again instead of its changes");
            })
            .ok(),
        None => None,
    };
    let copy = match replayed {
        Some(copy) => copy,
        None => {
            let copy = new_copy(fence_index);
            copy_vshard(context, migration, copy, Some(id), false).await?;
            copy
        }
    };
    claim(context, migration, to, VShardStep::Adopt(copy), Vec::new()).await?;
    tracing::info!(%id, %vshard, %to, replayed = replayed.is_some(), "migration: copy adopted");
    Ok(())
}

/// An aborted migration this node has not cleaned up since it started: every new metadata
/// leader cleans each one once, in case the one that aborted it stopped first.
fn needs_clean_up(context: &MigrationContext, migration: &Migration) -> bool {
    migration.phase == MigrationPhase::Aborted
        && !context
            .progress
            .lock()
            .get(&migration.id)
            .is_some_and(|tracked| tracked.cleaned_up)
}

/// Gives up a migration that is not fenced in the log. The abort is committed first, so no
/// other driver can carry the migration on; then the source serves the vShard again and the
/// target forgets its copy ([`clean_up_aborted`]).
async fn abort(
    context: &MigrationContext,
    migration: &Migration,
    reason: &str,
) -> Result<(), String> {
    let id = migration.id;
    tracing::warn!(%id, vshard = %migration.vshard, reason, "giving up the migration");
    propose(context, MetadataCommand::AbortMigration { id }).await?;
    metrics::counter!(FINISHED, "outcome" => "aborted").increment(1);
    clean_up_aborted(context, migration).await
}

/// Undoes what an aborted migration did to its groups. Idempotent, and refused by the groups
/// for a vShard a later migration touched.
async fn clean_up_aborted(context: &MigrationContext, migration: &Migration) -> Result<(), String> {
    claim_or_later(context, migration, migration.from, VShardStep::Release).await?;
    claim_or_later(context, migration, migration.to, VShardStep::Discard).await?;
    context
        .progress
        .update(migration.id, |tracked| tracked.cleaned_up = true);
    Ok(())
}

fn refused(migration: &Migration, group: GroupId, step: VShardStep, claim: VShardClaim) -> String {
    format!(
        "{group} refused {step:?} of {} in {}: {claim}",
        migration.vshard, migration.id
    )
}

/// Replicates one step of `migration` in `group`; refused steps are errors (this driver's view
/// is behind: the next round reads the metadata again).
async fn claim(
    context: &MigrationContext,
    migration: &Migration,
    group: GroupId,
    step: VShardStep,
    data: Vec<u8>,
) -> Result<StepOutcome, String> {
    let outcome = replicate(context, migration, group, step, data).await?;
    match outcome.applied {
        true => Ok(outcome),
        false => Err(refused(migration, group, step, outcome.claim)),
    }
}

/// Replicates a step that a later migration may have made moot: `Ok(false)` when refused
/// because the group's claim belongs to a later migration.
async fn claim_or_later(
    context: &MigrationContext,
    migration: &Migration,
    group: GroupId,
    step: VShardStep,
) -> Result<bool, String> {
    let outcome = replicate(context, migration, group, step, Vec::new()).await?;
    if outcome.applied || outcome.claim.migration() > migration.id {
        return Ok(outcome.applied);
    }
    Err(refused(migration, group, step, outcome.claim))
}

async fn replicate(
    context: &MigrationContext,
    migration: &Migration,
    group: GroupId,
    step: VShardStep,
    data: Vec<u8>,
) -> Result<StepOutcome, String> {
    let (vshard, id) = (migration.vshard, migration.id);
    let what = format!("{step:?} of {vshard} in {id} ({} bytes)", data.len());
    context
        .groups
        .claim(group, vshard, id, step, data)
        .await
        .map_err(|error| format!("{what} on {group}: {error}"))
}

fn record_copy(context: &MigrationContext, id: MigrationId, bytes: u64) {
    metrics::counter!(BYTES_COPIED).increment(bytes);
    context.progress.update(id, |tracked| {
        tracked.progress.bytes_copied += bytes;
        tracked.last_progress = Instant::now();
    });
}

async fn propose(context: &MigrationContext, command: MetadataCommand) -> Result<(), String> {
    context.groups.propose_metadata(&command).await
}
