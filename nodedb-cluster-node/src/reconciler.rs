//! The placement reconciler and failure detector. It runs on every node but acts only while
//! the node leads the metadata group: it pings every member, marks silent ones Down and
//! returning ones Active again (damped), admits caught-up joiners, decommissions draining
//! nodes that no longer hold a replica (a silent draining node stays Draining, so its
//! decommission goes on without it), and carries out the core planner's steps at each
//! group's leader, recording each result in group 0. Automatic vShard moves are begun by a
//! task of their own (`rebalance.rs`), so that asking the groups for their sizes never holds
//! up a round.

pub(crate) mod rebalance;

use crate::control::{ControlError, MembershipChange};
use crate::group_client::GroupClient;
use crate::migration::MigrationSettings;
use nodedb_cluster_core::{
    GroupId, METADATA_GROUP, MetadataCommand, MetadataState, NodeId, NodeState, PlacementStep,
};
use nodedb_cluster_raft::{AppliedMetadata, MultiRaft};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Pause between reconciliation rounds.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(250);
/// Longest a round waits for one placement step; a slower step is left to finish (or not)
/// on its own and is planned again from the recorded state.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// A Down node must answer pings this long, without a gap, before it is Active again.
pub const RECOVERY_DAMPING: Duration = Duration::from_secs(3);
/// Entries a learner may still miss and count as caught up.
pub const CAUGHT_UP_LAG_MAX: u64 = 64;
/// After a leadership transfer, the group's leadership is left alone this long: the new
/// leader needs time to win and to publish its hint, and acting on the old hint meanwhile
/// makes leadership ping-pong.
pub const LEADER_TRANSFER_COOLDOWN: Duration = Duration::from_secs(10);

/// What the reconciler needs from the node.
#[derive(Clone)]
pub struct ReconcilerContext {
    pub node: NodeId,
    pub raft: MultiRaft,
    pub groups: GroupClient,
    pub metadata: watch::Receiver<AppliedMetadata>,
    /// A node silent this long is marked Down.
    pub down_timeout: Duration,
    /// Automatic rebalancing and how many migrations may be in flight.
    pub migration: MigrationSettings,
}

/// What the metadata leader remembers between rounds: liveness and recent transfers.
#[derive(Debug, Default)]
struct Liveness {
    last_seen: HashMap<NodeId, Instant>,
    reachable_since: HashMap<NodeId, Instant>,
    transferred_at: HashMap<GroupId, Instant>,
}

/// Reconciles until `stop` turns true.
pub async fn run(context: ReconcilerContext, mut stop: watch::Receiver<bool>) {
    let mut liveness: Option<Liveness> = None;
    loop {
        if context.raft.is_leader(METADATA_GROUP) {
            // A new leader gives every node a full timeout before judging it.
            let state = liveness.get_or_insert_with(|| fresh_liveness(&context));
            round(&context, state).await;
        } else {
            liveness = None;
        }
        tokio::select! {
            () = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// Records this node's leaderships in the routing table's leader hints, so that forwarding
/// and leader balancing see who leads. Runs on every node; scans its own replicas each round,
/// so leaderships won before it started are recorded too.
pub async fn publish_leader_hints(context: ReconcilerContext, mut stop: watch::Receiver<bool>) {
    loop {
        for group in context
            .raft
            .groups()
            .into_iter()
            .filter(|group| !group.is_metadata())
        {
            let leads = context.raft.is_leader(group);
            let recorded = context
                .metadata
                .borrow()
                .state
                .routing()
                .and_then(|routing| routing.members(group))
                .and_then(|members| members.leader_hint);
            if leads && recorded != Some(context.node) {
                let command = MetadataCommand::SetLeaderHint {
                    group,
                    leader: Some(context.node),
                };
                if let Err(error) = propose(&context, &command).await {
                    tracing::debug!(%group, %error, "could not record leader hint");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

fn fresh_liveness(context: &ReconcilerContext) -> Liveness {
    let now = Instant::now();
    let metadata = context.metadata.borrow();
    let last_seen = metadata
        .state
        .topology()
        .nodes()
        .map(|node| (node.id, now))
        .collect();
    Liveness {
        last_seen,
        ..Liveness::default()
    }
}

async fn round(context: &ReconcilerContext, liveness: &mut Liveness) {
    // A new leader may not have applied every committed entry yet; steps planned from an
    // older state would be carried out in Raft and then refused when recorded
    // (`ChangeGroupMembers` applies only to the members it was planned from). Every round,
    // not once per leadership: the barrier also confirms leadership, so a leader cut off from
    // the quorum (openraft may report it leader for long) never acts on the data groups from
    // a stale view. It keeps the metadata group from quiescing; that costs no measurable CPU.
    if let Err(error) = context.raft.read_barrier(METADATA_GROUP).await {
        tracing::debug!(%error, "metadata not caught up; round skipped");
        return;
    }
    let mut state = MetadataState::clone(&context.metadata.borrow().state);
    if let Some(record) = metadata_membership_record(context, &state) {
        tracing::info!(?record, "recording the metadata group's actual membership");
        match propose(context, &record).await {
            // Plan next round, from the corrected record.
            Ok(()) => return,
            Err(error) => tracing::warn!(%error, "metadata group membership not recorded"),
        }
    }
    // The planner hands leadership over before it removes the leader's replica, but only
    // knows a group's leader from its hint, which group 0 does not publish: this node leads.
    let _ = state.apply(&MetadataCommand::SetLeaderHint {
        group: METADATA_GROUP,
        leader: Some(context.node),
    });
    ping_members(context, &state, liveness).await;
    let changes = node_state_changes(context, &state, liveness);
    if !changes.is_empty() {
        for command in changes {
            if let Err(error) = propose(context, &command).await {
                tracing::warn!(?command, %error, "node state change not recorded");
            }
        }
        // Plan from the state these changes produced, next round: planning from the old
        // state would treat a node that just became Active as absent.
        return;
    }
    let now = Instant::now();
    liveness
        .transferred_at
        .retain(|_, at| now.duration_since(*at) < LEADER_TRANSFER_COOLDOWN);
    let steps: Vec<PlacementStep> = state
        .plan_placement()
        .into_iter()
        .filter(|step| !liveness.transferred_at.contains_key(&step.group()))
        .filter(|step| leader_target_answers(step, context.node, liveness))
        .collect();
    for step in steps.iter().filter(|step| !step.is_membership()) {
        liveness.transferred_at.insert(step.group(), now);
    }
    let executions = steps.iter().map(|step| async {
        tokio::time::timeout(STEP_TIMEOUT, execute(context, &state, *step))
            .await
            .unwrap_or_else(|_| Err(format!("not done within {STEP_TIMEOUT:?}")))
    });
    for (step, result) in steps
        .iter()
        .zip(futures::future::join_all(executions).await)
    {
        match result {
            Ok(()) => tracing::info!(?step, "placement step done"),
            Err(error) => tracing::debug!(?step, %error, "placement step not done yet"),
        }
    }
}

/// `ChangeGroupMembers` for group 0 when the recorded members differ from the Raft membership
/// this leader replicates with (outside a joint change). The two part when a step's record is
/// lost or overtaken by an older one; planning from a record that lists a node its Raft
/// membership dropped would leave that node out of group 0 for good.
fn metadata_membership_record(
    context: &ReconcilerContext,
    state: &MetadataState,
) -> Option<MetadataCommand> {
    let status = context.raft.status(METADATA_GROUP)?;
    if status.joint || status.leader != Some(context.node) {
        return None;
    }
    let members = state.routing()?.members(METADATA_GROUP)?;
    let voters: BTreeSet<NodeId> = status.voters.iter().copied().collect();
    let learners: BTreeSet<NodeId> = status.learners.iter().copied().collect();
    (members.voters != voters || members.learners != learners).then(|| {
        MetadataCommand::ChangeGroupMembers {
            group: METADATA_GROUP,
            from_voters: members.voters.clone(),
            from_learners: members.learners.clone(),
            voters,
            learners,
        }
    })
}

async fn ping_members(context: &ReconcilerContext, state: &MetadataState, liveness: &mut Liveness) {
    let now = Instant::now();
    let peers: Vec<NodeId> = state
        .topology()
        .nodes()
        .filter(|node| node.id != context.node && node.state != NodeState::Decommissioned)
        .map(|node| node.id)
        .collect();
    let pings = peers.iter().map(|peer| context.groups.answers(*peer));
    let answers = futures::future::join_all(pings).await;
    for (peer, answered) in peers.into_iter().zip(answers) {
        liveness.last_seen.entry(peer).or_insert(now);
        if answered {
            liveness.last_seen.insert(peer, now);
            liveness.reachable_since.entry(peer).or_insert(now);
        } else {
            liveness.reachable_since.remove(&peer);
        }
    }
    liveness.last_seen.insert(context.node, now);
}

/// False for a leadership transfer to a node that did not answer this round's ping: a killed
/// node stays Active until the down timeout, and a leader that hands over to it stops serving
/// until an election replaces the transfer (seconds of unavailability for nothing).
fn leader_target_answers(step: &PlacementStep, this_node: NodeId, liveness: &Liveness) -> bool {
    match *step {
        PlacementStep::TransferLeader { to, .. } => {
            to == this_node || liveness.reachable_since.contains_key(&to)
        }
        _ => true,
    }
}

/// The lifecycle commands this round calls for, at most one per node.
fn node_state_changes(
    context: &ReconcilerContext,
    state: &MetadataState,
    liveness: &Liveness,
) -> Vec<MetadataCommand> {
    let now = Instant::now();
    let metadata_followers = context
        .raft
        .status(METADATA_GROUP)
        .map(|status| status.followers)
        .unwrap_or_default();
    let mut commands = Vec::new();
    for node in state.topology().nodes() {
        let silent_for = liveness
            .last_seen
            .get(&node.id)
            .map_or(Duration::ZERO, |seen| now.duration_since(*seen));
        let reachable_for = liveness
            .reachable_since
            .get(&node.id)
            .map(|since| now.duration_since(*since));
        let next = match node.state {
            // A Draining node stays Draining however long it is silent: draining already
            // moves every replica off it, and Down would forget that it is to be removed.
            NodeState::Joining | NodeState::Active if silent_for > context.down_timeout => {
                Some(NodeState::Down)
            }
            NodeState::Down if reachable_for.is_some_and(|period| period >= RECOVERY_DAMPING) => {
                Some(NodeState::Active)
            }
            NodeState::Draining if holds_no_replica(state, node.id) => {
                Some(NodeState::Decommissioned)
            }
            NodeState::Joining => {
                let caught_up = metadata_followers
                    .iter()
                    .any(|follower| follower.node == node.id && follower.lag <= CAUGHT_UP_LAG_MAX);
                caught_up.then_some(NodeState::Active)
            }
            _ => None,
        };
        if let Some(next) = next {
            tracing::info!(node = %node.id, from = ?node.state, to = ?next, "node state change");
            commands.push(MetadataCommand::SetNodeState {
                node: node.id,
                state: next,
            });
        }
    }
    commands
}

/// A draining node is decommissioned once placement moved every data replica and its group 0
/// vote off it; it still follows group 0 as a learner, so it hears the news and stops.
fn holds_no_replica(state: &MetadataState, node: NodeId) -> bool {
    state
        .routing()
        .is_some_and(|routing| routing.groups_holding_node(node).is_empty())
}

/// Carries out one step at the group's leader, then records a membership change in the
/// metadata. A leadership transfer is recorded by the new leader itself, once it leads.
async fn execute(
    context: &ReconcilerContext,
    state: &MetadataState,
    step: PlacementStep,
) -> Result<(), String> {
    let routing = state.routing().ok_or("no routing")?;
    let record = step
        .to_command(routing)
        .map_err(|error| error.to_string())?;
    let change = match step {
        PlacementStep::AddLearner { node, .. } => {
            let addr = state
                .topology()
                .get(node)
                .map(|info| info.addr.as_str().to_string())
                .ok_or_else(|| format!("{node} has no address"))?;
            MembershipChange::AddLearner { node, addr }
        }
        PlacementStep::Promote { node, .. } => MembershipChange::Promote { node },
        PlacementStep::RemoveReplica { node, .. } => MembershipChange::Remove { node },
        PlacementStep::TransferLeader { to, .. } => MembershipChange::TransferLeader { to },
    };
    match context.groups.change_membership(step.group(), change).await {
        Ok(()) => {}
        // The change is already in place (a retried step whose record was lost).
        Err(ControlError::Invalid(reason)) => {
            tracing::debug!(?step, %reason, "step already carried out; recording it");
        }
        Err(error) => return Err(error.to_string()),
    }
    if !step.is_membership() {
        return Ok(());
    }
    propose(context, &record).await
}

async fn propose(context: &ReconcilerContext, command: &MetadataCommand) -> Result<(), String> {
    context.groups.propose_metadata(command).await
}
