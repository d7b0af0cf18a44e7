//! The placement planner: from topology and routing, the next safe membership and leadership
//! steps that bring every group to its replica target, move replicas off nodes that are not
//! Active, and spread replicas and leaders evenly. Pure: the metadata leader calls [`plan`]
//! repeatedly, executes the steps through Raft and records the results in group 0.
//!
//! Safety rules, in order of precedence:
//! - at most one step per group per plan (membership changes of a group are serialized);
//! - never two replicas of a group on one node;
//! - a voter is removed only when the group keeps at least its target voter count afterwards,
//!   and a replacement for a voter on a non-Active node is a voter before the old one goes:
//!   `add learner -> promote -> remove`;
//! - a leader about to be removed (or on a Draining node) first hands leadership over.
//!
//! Rebalancing (replica moves, then leader transfers) only starts once no group needs repair;
//! replica moves started together touch disjoint nodes, so each one strictly reduces the
//! imbalance and the process converges.

mod balance;
mod rules;
mod sizes;
mod vshards;

pub use sizes::{ReportedSizes, SizeThresholds, plan_size_moves};
pub use vshards::{VShardMove, plan_vshard_moves};

use crate::ids::{GroupId, NodeId};
use crate::metadata::{MetadataCommand, MetadataState};
use crate::routing::{GroupMembers, RoutingError, RoutingTable, validate_members};
use crate::topology::{NodeState, Topology};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most voters the metadata group is given; every other node follows it as a learner.
pub const METADATA_VOTERS_MAX: usize = 5;

/// Most replica moves (for balance, not repair) started by one plan. Each copies a group's
/// data to a new node, so this bounds the extra replication traffic of rebalancing.
pub const REBALANCE_MOVES_PER_PLAN_MAX: usize = 4;

/// Most leader-transfer chains started by one plan (each chain moves one unit of leadership
/// from an overloaded node to an underloaded one).
pub const LEADER_CHAINS_PER_PLAN_MAX: usize = 8;

/// One membership or leadership change of one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PlacementStep {
    /// Start replicating `group` to `node` as a non-voting learner.
    AddLearner { group: GroupId, node: NodeId },
    /// Make the (caught-up) learner `node` a voter of `group`.
    Promote { group: GroupId, node: NodeId },
    /// Remove `node`'s replica (voter or learner) of `group`.
    RemoveReplica { group: GroupId, node: NodeId },
    /// Hand leadership of `group` to its voter `to`.
    TransferLeader { group: GroupId, to: NodeId },
}

impl PlacementStep {
    pub fn group(&self) -> GroupId {
        match *self {
            PlacementStep::AddLearner { group, .. }
            | PlacementStep::Promote { group, .. }
            | PlacementStep::RemoveReplica { group, .. }
            | PlacementStep::TransferLeader { group, .. } => group,
        }
    }

    /// The node the step adds, promotes, removes or makes leader.
    pub fn node(&self) -> NodeId {
        match *self {
            PlacementStep::AddLearner { node, .. }
            | PlacementStep::Promote { node, .. }
            | PlacementStep::RemoveReplica { node, .. }
            | PlacementStep::TransferLeader { to: node, .. } => node,
        }
    }

    /// Whether the step changes the membership (as opposed to leadership only).
    pub fn is_membership(&self) -> bool {
        !matches!(self, PlacementStep::TransferLeader { .. })
    }

    /// The members of the group after this step, or why the step does not fit `members`.
    pub fn members_after(&self, members: &GroupMembers) -> Result<GroupMembers, RoutingError> {
        let group = self.group();
        let node = self.node();
        let mut after = members.clone();
        match *self {
            PlacementStep::AddLearner { .. } => {
                if members.contains(node) {
                    return Err(RoutingError::AlreadyMember { group, node });
                }
                after.learners.insert(node);
            }
            PlacementStep::Promote { .. } => {
                if !after.learners.remove(&node) {
                    return Err(RoutingError::NotALearner { group, node });
                }
                after.voters.insert(node);
            }
            PlacementStep::RemoveReplica { .. } => {
                if members.voters.len() == 1 && members.voters.contains(&node) {
                    return Err(RoutingError::LastVoter { group, node });
                }
                if !after.voters.remove(&node) && !after.learners.remove(&node) {
                    return Err(RoutingError::NotAMember { group, node });
                }
                if after.leader_hint == Some(node) {
                    after.leader_hint = None;
                }
            }
            PlacementStep::TransferLeader { .. } => {
                if !members.voters.contains(&node) {
                    return Err(RoutingError::LeaderNotVoter {
                        group,
                        leader: node,
                    });
                }
                after.leader_hint = Some(node);
            }
        }
        validate_members(group, &after)?;
        Ok(after)
    }

    /// The metadata command that records this step once carried out: `ChangeGroupMembers`
    /// from the members it was planned from to the members after it, or `SetLeaderHint` for a
    /// leadership transfer.
    pub fn to_command(&self, routing: &RoutingTable) -> Result<MetadataCommand, RoutingError> {
        let group = self.group();
        let members = routing
            .members(group)
            .ok_or(RoutingError::UnknownGroup { group })?;
        let after = self.members_after(members)?;
        Ok(match self {
            PlacementStep::TransferLeader { to, .. } => MetadataCommand::SetLeaderHint {
                group,
                leader: Some(*to),
            },
            _ => MetadataCommand::ChangeGroupMembers {
                group,
                from_voters: members.voters.clone(),
                from_learners: members.learners.clone(),
                voters: after.voters,
                learners: after.learners,
            },
        })
    }
}

impl MetadataState {
    /// The next placement steps for the current metadata; empty before bootstrap.
    pub fn plan_placement(&self) -> Vec<PlacementStep> {
        match (self.routing(), self.replication_factor()) {
            (Some(routing), Some(replication_factor)) => {
                let moving: BTreeSet<GroupId> = self
                    .migrations()
                    .values()
                    .filter(|migration| migration.is_active())
                    .flat_map(|migration| [migration.from, migration.to])
                    .collect();
                plan_during_moves(self.topology(), routing, replication_factor, &moving)
            }
            _ => Vec::new(),
        }
    }
}

impl RoutingTable {
    /// Applies a placement step as if it had been carried out (for simulation and tests; the
    /// cluster records real membership with `MetadataCommand::SetGroupMembers`). Returns
    /// whether anything changed.
    pub fn apply_step(&mut self, step: &PlacementStep) -> Result<bool, RoutingError> {
        let group = step.group();
        let members = self
            .members(group)
            .ok_or(RoutingError::UnknownGroup { group })?;
        let after = step.members_after(members)?;
        self.replace_members(group, after)
    }
}

/// The voter target of the metadata group, from the number `n` of Active and Down nodes (Down
/// nodes count so that a failure does not shrink the group; they are replaced when an Active
/// node is free): every node up to 3, then the largest odd number up to
/// [`METADATA_VOTERS_MAX`]. Two nodes get two voters: a fourth or sixth voter adds no fault
/// tolerance, but with two nodes a second voter keeps every committed entry on both disks.
pub fn metadata_voter_target(topology: &Topology) -> usize {
    let alive_or_down = topology
        .nodes()
        .filter(|info| matches!(info.state, NodeState::Active | NodeState::Down))
        .count()
        .clamp(1, METADATA_VOTERS_MAX);
    match alive_or_down {
        4 => 3,
        count => count,
    }
}

/// The next steps toward the placement target, at most one per group, ordered by group. Empty
/// when the placement is at its fixed point (or nothing can be improved with the nodes
/// available). Deterministic: ties are broken by lowest group id, then lowest node id.
pub fn plan(
    topology: &Topology,
    routing: &RoutingTable,
    replication_factor: u8,
) -> Vec<PlacementStep> {
    plan_during_moves(topology, routing, replication_factor, &BTreeSet::new())
}

/// [`plan`] while vShards move between the `moving` groups: balancing leaves their
/// leaderships where they are (the migration driver brings a move's two leaders to one node,
/// so that its copy is read and written there). A leader that must hand over (its node
/// drains, its replica goes) still does.
pub fn plan_during_moves(
    topology: &Topology,
    routing: &RoutingTable,
    replication_factor: u8,
    moving: &BTreeSet<GroupId>,
) -> Vec<PlacementStep> {
    let replication_factor = usize::from(replication_factor.max(1));
    let mut planner = Planner::new(topology, routing, replication_factor, moving);
    planner.repair_metadata_group();
    let all_data_groups_steady = planner.repair_data_groups();
    // Balancing waits for repairs, and leaders wait for replica moves.
    if all_data_groups_steady && !planner.rebalance_replicas() {
        planner.balance_leaders();
    }
    let mut steps = planner.steps;
    steps.sort_by_key(|step| step.group());
    steps
}

/// Working state of one `plan` call: loads are updated as steps are chosen, so that later
/// groups see the effect of earlier decisions in the same plan.
#[derive(Debug)]
struct Planner<'a> {
    topology: &'a Topology,
    routing: &'a RoutingTable,
    replication_factor: usize,
    /// Active node ids, ascending.
    active: BTreeSet<NodeId>,
    /// Data-group replicas (voters + learners) per Active node.
    replica_load: BTreeMap<NodeId, i64>,
    /// Data-group leaderships per Active node.
    leader_load: BTreeMap<NodeId, i64>,
    steps: Vec<PlacementStep>,
    busy: BTreeSet<GroupId>,
    /// Groups whose leadership balancing leaves alone.
    moving: &'a BTreeSet<GroupId>,
}

impl<'a> Planner<'a> {
    fn new(
        topology: &'a Topology,
        routing: &'a RoutingTable,
        replication_factor: usize,
        moving: &'a BTreeSet<GroupId>,
    ) -> Self {
        let active: BTreeSet<NodeId> = topology.ids_in(NodeState::Active).collect();
        let mut replica_load: BTreeMap<NodeId, i64> =
            active.iter().map(|node| (*node, 0)).collect();
        let mut leader_load = replica_load.clone();
        for group in routing.data_groups() {
            let Some(members) = routing.members(group) else {
                continue;
            };
            for node in members.replicas() {
                if let Some(load) = replica_load.get_mut(&node) {
                    *load += 1;
                }
            }
            if let Some(load) = members.leader_hint.and_then(|l| leader_load.get_mut(&l)) {
                *load += 1;
            }
        }
        Planner {
            topology,
            routing,
            replication_factor,
            active,
            replica_load,
            leader_load,
            steps: Vec::new(),
            busy: BTreeSet::new(),
            moving,
        }
    }

    fn is_active(&self, node: NodeId) -> bool {
        self.active.contains(&node)
    }

    fn replica_load(&self, node: NodeId) -> i64 {
        self.replica_load.get(&node).copied().unwrap_or(0)
    }

    fn leader_load(&self, node: NodeId) -> i64 {
        self.leader_load.get(&node).copied().unwrap_or(0)
    }

    /// Records `step`, marks its group busy and keeps the simulated loads in step.
    fn push(&mut self, step: PlacementStep) {
        let is_data = !step.group().is_metadata();
        match step {
            PlacementStep::AddLearner { node, .. } if is_data => {
                *self.replica_load.entry(node).or_insert(0) += 1;
            }
            PlacementStep::RemoveReplica { node, .. } if is_data => {
                *self.replica_load.entry(node).or_insert(0) -= 1;
            }
            PlacementStep::TransferLeader { group, to } if is_data => {
                let from = self.routing.members(group).and_then(|m| m.leader_hint);
                if let Some(load) = from.and_then(|from| self.leader_load.get_mut(&from)) {
                    *load -= 1;
                }
                *self.leader_load.entry(to).or_insert(0) += 1;
            }
            _ => {}
        }
        self.busy.insert(step.group());
        self.steps.push(step);
    }

    /// Among `candidates`, the node with the fewest data-group leaderships, lowest id on ties.
    fn least_leading(&self, candidates: impl Iterator<Item = NodeId>) -> Option<NodeId> {
        candidates.min_by_key(|node| (self.leader_load(*node), *node))
    }

    /// Among `candidates`, the node with the fewest data-group replicas, lowest id on ties.
    fn least_loaded(&self, candidates: impl Iterator<Item = NodeId>) -> Option<NodeId> {
        candidates.min_by_key(|node| (self.replica_load(*node), *node))
    }
}

#[cfg(test)]
mod tests;
