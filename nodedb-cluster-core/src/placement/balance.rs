//! Balancing once nothing needs repair: replica moves (one at a time, from the most loaded
//! node of a group to the least loaded node outside it) and leader transfers along a chain of
//! groups, each strictly reducing the imbalance so that planning converges.

use super::{PlacementStep, Planner};
use crate::ids::{GroupId, NodeId};
use std::collections::{BTreeMap, VecDeque};

impl Planner<'_> {
    /// Starts one replica move if some Active node holds at least two more data-group replicas
    /// than another that could take one of them. Returns whether a move was started.
    ///
    /// The move is `AddLearner(to)` now; the repair rules then promote it and remove the most
    /// loaded voter, which is the source chosen here (loads elsewhere do not change meanwhile,
    /// since only one move runs at a time).
    pub(super) fn rebalance_replicas(&mut self) -> bool {
        let mut best: Option<(i64, GroupId, NodeId)> = None;
        for group in self.routing.data_groups() {
            let Some(members) = self.routing.members(group) else {
                continue;
            };
            let steady = members.learners.is_empty()
                && members.voters.iter().all(|node| self.is_active(*node));
            if !steady {
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
                .filter(|node| !members.contains(*node));
            let (Some(source), Some(target)) = (source, self.least_loaded(outside)) else {
                continue;
            };
            let gain = self.replica_load(source) - self.replica_load(target);
            if gain >= 2 && best.is_none_or(|(best_gain, ..)| gain > best_gain) {
                best = Some((gain, group, target));
            }
        }
        let Some((_, group, node)) = best else {
            return false;
        };
        self.push(PlacementStep::AddLearner { group, node });
        true
    }

    /// Moves one leadership unit from a node leading at least two groups more than another,
    /// along the shortest chain `a -> x -> ... -> b` where each arrow is a group led by the
    /// left node with the right node as an Active voter. Intermediate counts do not change.
    pub(super) fn balance_leaders(&mut self) {
        let mut sources: Vec<NodeId> = self.active.iter().copied().collect();
        sources.sort_by_key(|node| (std::cmp::Reverse(self.leader_load(*node)), *node));
        for source in sources {
            if let Some(path) = self.leader_path(source) {
                for (group, to) in path {
                    self.push(PlacementStep::TransferLeader { group, to });
                }
                return;
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
