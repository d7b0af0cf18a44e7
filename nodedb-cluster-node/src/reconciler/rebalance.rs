//! Automatic rebalancing, on the metadata leader: every size-check interval it asks each data
//! group for its bytes per vShard and begins the moves core's size planner proposes; after a
//! node joined it evens out the groups' vShard counts once. Moves are begun only while fewer
//! than the configured number of migrations are in flight, and the migration driver carries
//! them out like any other.

use super::ReconcilerContext;
use nodedb_cluster_core::{
    GroupId, MetadataCommand, MetadataState, ReportedSizes, SizeThresholds, VShardId, VShardMove,
    plan_size_moves, plan_vshard_moves,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// Longest the metadata leader waits for the groups' sizes.
const SIZES_TIMEOUT: Duration = Duration::from_secs(2);

/// What automatic rebalancing remembers between reconciler rounds.
#[derive(Debug, Default)]
pub(super) struct RebalanceMemory {
    sizes_checked_at: Option<Instant>,
    /// A node became Active: even out the vShard counts at the next chance.
    count_plan_due: bool,
}

impl RebalanceMemory {
    pub(super) fn node_joined(&mut self) {
        self.count_plan_due = true;
    }
}

/// Begins the moves this round calls for, if any.
pub(super) async fn rebalance(
    context: &ReconcilerContext,
    state: &MetadataState,
    memory: &mut RebalanceMemory,
) {
    let settings = context.migration;
    if !settings.auto_rebalance {
        return;
    }
    let Some(routing) = state.routing() else {
        return;
    };
    let moving: BTreeMap<VShardId, GroupId> = state
        .migrations()
        .values()
        .filter(|migration| migration.is_active())
        .map(|migration| (migration.vshard, migration.to))
        .collect();
    let budget = settings.concurrent_max.saturating_sub(moving.len());
    if budget == 0 {
        return;
    }
    let moves = if memory.count_plan_due {
        memory.count_plan_due = false;
        plan_vshard_moves(routing, &moving, budget)
    } else {
        let due = memory
            .sizes_checked_at
            .is_none_or(|at| at.elapsed() >= settings.size_check_interval);
        if !due {
            return;
        }
        memory.sizes_checked_at = Some(Instant::now());
        let Some(reported) = group_sizes(context, routing.data_groups().collect()).await else {
            return;
        };
        let thresholds = SizeThresholds {
            ratio: settings.size_ratio,
            floor_bytes: settings.size_floor_bytes,
        };
        plan_size_moves(routing, &reported, &moving, thresholds, budget)
    };
    for planned in moves {
        begin(context, planned).await;
    }
}

/// Every group's bytes per vShard, or `None` when a group did not answer in time (a plan from
/// part of the groups would misjudge the mean).
async fn group_sizes(context: &ReconcilerContext, groups: Vec<GroupId>) -> Option<ReportedSizes> {
    let asks = groups
        .iter()
        .map(|group| tokio::time::timeout(SIZES_TIMEOUT, context.groups.vshard_bytes(*group)));
    let answers = futures::future::join_all(asks).await;
    let mut reported = ReportedSizes::new();
    for (group, answer) in groups.into_iter().zip(answers) {
        match answer {
            Ok(Ok(sizes)) => {
                reported.insert(group, sizes);
            }
            Ok(Err(error)) => {
                tracing::debug!(%group, %error, "group sizes not known; no size plan this time");
                return None;
            }
            Err(_) => {
                tracing::debug!(%group, "group sizes not known in time; no size plan this time");
                return None;
            }
        }
    }
    Some(reported)
}

async fn begin(context: &ReconcilerContext, planned: VShardMove) {
    let command = MetadataCommand::BeginMigration {
        vshard: planned.vshard,
        from: planned.from,
        to: planned.to,
    };
    match context.groups.propose_metadata(&command).await {
        Ok(()) => tracing::info!(?planned, "automatic rebalancing: move begun"),
        Err(error) => tracing::info!(?planned, %error, "automatic rebalancing: move not begun"),
    }
}
