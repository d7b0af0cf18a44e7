//! Automatic rebalancing, a task on every node that acts only on the metadata leader: every
//! size-check interval it asks each data group for its bytes per vShard and begins the moves
//! core's size planner proposes; after a node joined (Active now, Joining or unknown when last
//! looked at) it evens out the groups' vShard counts (give or take one) before it looks at
//! sizes again. Moves are begun only while fewer than the configured number of migrations are
//! in flight, and the migration driver carries them out like any other. It runs apart from the
//! reconciler's rounds, so a group slow to answer never delays failure detection.

use super::{RECONCILE_INTERVAL, ReconcilerContext};
use nodedb_cluster_core::{
    GroupId, METADATA_GROUP, MetadataCommand, MetadataState, NodeId, NodeState, ReportedSizes,
    SizeThresholds, VShardMove, plan_size_moves, plan_vshard_moves,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest the metadata leader waits for the groups' sizes.
const SIZES_TIMEOUT: Duration = Duration::from_secs(2);

/// What automatic rebalancing remembers while this node leads the metadata group.
#[derive(Debug, Default)]
struct Memory {
    sizes_checked_at: Option<Instant>,
    /// Each node's state when last looked at; `None` before the first look. A join is told by
    /// comparing with it, so a node that went from Joining to Active between two looks counts.
    seen: Option<BTreeMap<NodeId, NodeState>>,
    /// A node joined: even out the vShard counts, as far as the migrations in flight allow
    /// each time, until they are even.
    count_plan_due: bool,
}

/// Rebalances until `stop` turns true.
pub(crate) async fn run(context: ReconcilerContext, mut stop: watch::Receiver<bool>) {
    let mut memory: Option<Memory> = None;
    loop {
        if context.raft.is_leader(METADATA_GROUP) && context.migration.auto_rebalance {
            let memory = memory.get_or_insert_with(Memory::default);
            rebalance(&context, memory).await;
        } else {
            memory = None;
        }
        tokio::select! {
            () = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// Begins the moves this moment calls for, if any.
async fn rebalance(context: &ReconcilerContext, memory: &mut Memory) {
    note_joins(&context.metadata.borrow().state, memory);
    let settings = context.migration;
    let size_check_due = memory
        .sizes_checked_at
        .is_none_or(|at| at.elapsed() >= settings.size_check_interval);
    if !memory.count_plan_due && !size_check_due {
        return;
    }
    // Plan from everything committed: the migrations in flight bound the new ones.
    if let Err(error) = context.raft.read_barrier(METADATA_GROUP).await {
        tracing::debug!(%error, "metadata not caught up; no rebalancing this time");
        return;
    }
    let state = MetadataState::clone(&context.metadata.borrow().state);
    let Some(routing) = state.routing() else {
        return;
    };
    let moving = state.moving_vshards();
    let budget = settings.concurrent_max.saturating_sub(moving.len());
    if budget == 0 {
        return;
    }
    let moves = if memory.count_plan_due {
        let moves = plan_vshard_moves(routing, &moving, budget);
        // Even: done until the next join. Otherwise more moves once some of these finished.
        memory.count_plan_due = !moves.is_empty();
        moves
    } else {
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

/// Asks for a count plan when a node is Active that was Joining or unknown at the last look.
fn note_joins(state: &MetadataState, memory: &mut Memory) {
    let now: BTreeMap<NodeId, NodeState> = state
        .topology()
        .nodes()
        .map(|node| (node.id, node.state))
        .collect();
    if let Some(seen) = &memory.seen {
        for (node, node_state) in &now {
            let was = seen.get(node);
            if *node_state == NodeState::Active && matches!(was, None | Some(NodeState::Joining)) {
                tracing::info!(%node, "node joined; evening out vShard counts");
                memory.count_plan_due = true;
            }
        }
    }
    memory.seen = Some(now);
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
