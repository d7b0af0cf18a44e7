//! Balancing once nothing needs repair: replica moves (a bounded batch of moves on disjoint
//! nodes, each from the most loaded voter of a group to the least loaded node outside it) and leader transfers along a chain of
//! groups, each strictly reducing the imbalance so that planning converges.

use super::{LEADER_CHAINS_PER_PLAN_MAX, PlacementStep, Planner, REBALANCE_MOVES_PER_PLAN_MAX};
use crate::ids::{GroupId, NodeId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

impl Planner<'_> {
    /// Starts replica moves (up to [`REBALANCE_MOVES_PER_PLAN_MAX`]) where some Active node
    /// holds at least two more data-group replicas than another that could take one. Returns
    /// whether any move was started.
    ///
    /// A move is `AddLearner(target)` now; the repair rules then promote it and remove the
    /// most loaded voter, which is the source chosen here. Moves started together use groups
    /// with disjoint voters, none of them a target, so no other move changes the loads that
    /// removal compares; several moves may share a target, each gap measured with the earlier
    /// ones counted. Each move lowers the sum of squared loads, so balancing ends.
    pub(super) fn rebalance_replicas(&mut self) -> bool {
        let mut moving: BTreeSet<NodeId> = BTreeSet::new();
        let mut targets: BTreeSet<NodeId> = BTreeSet::new();
        let mut started = false;
        for _ in 0..REBALANCE_MOVES_PER_PLAN_MAX {
            let Some((group, target)) = self.best_move(&moving, &targets) else {
                break;
            };
            if let Some(members) = self.routing.members(group) {
                moving.extend(members.voters.iter().copied());
            }
            targets.insert(target);
            self.push(PlacementStep::AddLearner {
                group,
                node: target,
            });
            started = true;
        }
        started
    }

    /// The move with the largest load gap among steady, idle groups whose voters are neither
    /// in `moving` (voters of groups already moving) nor in `targets`: `(group, target)`.
    /// Lowest group id and target id win ties.
    fn best_move(
        &self,
        moving: &BTreeSet<NodeId>,
        targets: &BTreeSet<NodeId>,
    ) -> Option<(GroupId, NodeId)> {
        let mut best: Option<(i64, GroupId, NodeId)> = None;
        for group in self.routing.data_groups() {
            let Some(members) = self.routing.members(group) else {
                continue;
            };
            let eligible = !self.busy.contains(&group)
                && members.learners.is_empty()
                && members.voters.iter().all(|node| {
                    self.is_active(*node) && !moving.contains(node) && !targets.contains(node)
                });
            if !eligible {
                continue;
            }
            let source = members
                .voters
                .iter()
                .copied()
                .max_by_key(|node| (self.replica_load(*node), *node));
            let outside = self
                .active
                .iter()
                .copied()
                .filter(|node| !members.contains(*node) && !moving.contains(node));
            let (Some(source), Some(target)) = (source, self.least_loaded(outside)) else {
                continue;
            };
            let gain = self.replica_load(source) - self.replica_load(target);
            if gain >= 2 && best.is_none_or(|(best_gain, ..)| gain > best_gain) {
                best = Some((gain, group, target));
            }
        }
        best.map(|(_, group, target)| (group, target))
    }

    /// Moves leadership units (up to [`LEADER_CHAINS_PER_PLAN_MAX`] chains) from nodes leading
    /// at least two groups more than another, each along the shortest chain
    /// `a -> x -> ... -> b` where each arrow is a group led by the left node with the right
    /// node as an Active voter. Intermediate counts do not change; chains use distinct groups.
    pub(super) fn balance_leaders(&mut self) {
        for _ in 0..LEADER_CHAINS_PER_PLAN_MAX {
            let mut sources: Vec<NodeId> = self.active.iter().copied().collect();
            sources.sort_by_key(|node| (std::cmp::Reverse(self.leader_load(*node)), *node));
            let Some(path) = sources
                .into_iter()
                .find_map(|source| self.leader_path(source))
            else {
                return;
            };
            for (group, to) in path {
                self.push(PlacementStep::TransferLeader { group, to });
            }
        }
    }

    /// Breadth-first search from `source` for a node leading at least two groups fewer.
    fn leader_path(&self, source: NodeId) -> Option<Vec<(GroupId, NodeId)>> {
        let threshold = self.leader_load(source) - 2;
        let mut edges: BTreeMap<NodeId, Vec<(GroupId, NodeId)>> = BTreeMap::new();
        for group in self.routing.data_groups() {
            let Some(members) = self.routing.members(group) else {
                continue;
            };
            if self.busy.contains(&group) || self.moving.contains(&group) {
                continue;
            }
            let Some(leader) = members.leader_hint.filter(|l| self.is_active(*l)) else {
                continue;
            };
            if members.voters.iter().any(|node| !self.is_active(*node)) {
                continue;
            }
            let next = members.voters.iter().filter(|node| **node != leader);
            edges
                .entry(leader)
                .or_default()
                .extend(next.map(|node| (group, *node)));
        }
        let mut came_from: BTreeMap<NodeId, (GroupId, NodeId)> = BTreeMap::new();
        let mut queue = VecDeque::from([source]);
        while let Some(node) = queue.pop_front() {
            if node != source && self.leader_load(node) <= threshold {
                return Some(unwind(&came_from, source, node));
            }
            for (group, next) in edges.get(&node).into_iter().flatten() {
                if *next != source && !came_from.contains_key(next) {
                    came_from.insert(*next, (*group, node));
                    queue.push_back(*next);
                }
            }
        }
        None
    }
}

/// The transfers `(group, to)` from `source` to `end`, in path order.
fn unwind(
    came_from: &BTreeMap<NodeId, (GroupId, NodeId)>,
    source: NodeId,
    end: NodeId,
) -> Vec<(GroupId, NodeId)> {
    let mut path = Vec::new();
    let mut node = end;
    // Each node is entered once, so the walk back is at most as long as the node count.
    while node != source {
        let Some((group, previous)) = came_from.get(&node) else {
            break;
        };
        path.push((*group, node));
        node = *previous;
    }
    path.reverse();
    path
}
