//! Repair rules: the one next step that brings a group closer to its voter target and off
//! nodes that are not Active, without ever dropping below the target.

use super::{PlacementStep, Planner, metadata_voter_target};
use crate::ids::{GroupId, METADATA_GROUP, NodeId};
use crate::routing::GroupMembers;
use crate::topology::NodeState;

impl Planner<'_> {
    /// Repairs every data group; returns true if none needed a step.
    pub(super) fn repair_data_groups(&mut self) -> bool {
        let mut all_steady = true;
        let groups: Vec<GroupId> = self.routing.data_groups().collect();
        for group in groups {
            let Some(members) = self.routing.members(group) else {
                continue;
            };
            let target = self.replication_factor;
            if let Some(step) = self.repair_step(group, members, target, |planner, node| {
                planner.is_active(node)
            }) {
                self.push(step);
                all_steady = false;
            }
        }
        all_steady
    }

    /// Group 0: up to `metadata_voter_target` Active voters, every other Joining, Active or
    /// Draining node a learner (so that every node holds the full metadata, and a draining
    /// node learns that it is decommissioned).
    pub(super) fn repair_metadata_group(&mut self) {
        let Some(members) = self.routing.members(METADATA_GROUP) else {
            return;
        };
        let target = metadata_voter_target(self.topology);
        let follows_metadata = |planner: &Planner<'_>, node: NodeId| {
            matches!(
                planner.topology.state_of(node),
                Some(NodeState::Joining | NodeState::Active | NodeState::Draining)
            )
        };
        if let Some(step) = self.repair_step(METADATA_GROUP, members, target, follows_metadata) {
            self.push(step);
            return;
        }
        let missing = self
            .topology
            .nodes()
            .map(|info| info.id)
            .find(|node| follows_metadata(self, *node) && !members.contains(*node));
        if let Some(node) = missing {
            self.push(PlacementStep::AddLearner {
                group: METADATA_GROUP,
                node,
            });
        }
    }

    /// The next repair step of one group with voter target `target`. `may_learn` says which
    /// nodes may hold a learner replica; voters must be Active.
    fn repair_step(
        &self,
        group: GroupId,
        members: &GroupMembers,
        target: usize,
        may_learn: impl Fn(&Planner<'_>, NodeId) -> bool,
    ) -> Option<PlacementStep> {
        let is_data = !group.is_metadata();
        let healthy = members
            .voters
            .iter()
            .filter(|node| self.is_active(**node))
            .count();
        let add_target = target.min(self.active.len());

        // Learners on nodes that may not follow the group cannot help: drop them first.
        if let Some(node) = members
            .learners
            .iter()
            .find(|node| !may_learn(self, **node))
        {
            return Some(PlacementStep::RemoveReplica { group, node: *node });
        }
        if healthy < add_target {
            return self.grow_step(group, members);
        }
        // A voter on a non-Active node goes only once enough Active voters replace it.
        let unhealthy = members.voters.iter().find(|node| !self.is_active(**node));
        if let Some(node) = unhealthy
            && healthy >= target
        {
            return Some(self.remove_voter(group, members, *node));
        }
        // A learner on an Active node at this point is a move in progress: promote it.
        if is_data && let Some(node) = self.active_learner(group, members) {
            return Some(PlacementStep::Promote { group, node });
        }
        if healthy > target {
            let excess = members
                .voters
                .iter()
                .copied()
                .filter(|node| self.is_active(*node))
                .max_by_key(|node| match is_data {
                    true => (self.replica_load(*node), *node),
                    false => (0, *node),
                })?;
            return Some(self.remove_voter(group, members, excess));
        }
        if let Some(leader) = members.leader_hint
            && self.topology.state_of(leader) == Some(NodeState::Draining)
        {
            return self.hand_over_leadership(group, members, leader);
        }
        None
    }

    /// One step toward more Active voters: promote an Active learner, else add a learner on
    /// the least loaded Active node outside the group.
    fn grow_step(&self, group: GroupId, members: &GroupMembers) -> Option<PlacementStep> {
        if let Some(node) = self.active_learner(group, members) {
            return Some(PlacementStep::Promote { group, node });
        }
        let candidates = self
            .active
            .iter()
            .copied()
            .filter(|node| !members.contains(*node));
        let node = match group.is_metadata() {
            true => candidates.min(),
            false => self.least_loaded(candidates),
        }?;
        Some(PlacementStep::AddLearner { group, node })
    }

    /// The learner on an Active node to promote: least loaded for data groups, lowest id for
    /// the metadata group (where load is not counted).
    fn active_learner(&self, group: GroupId, members: &GroupMembers) -> Option<NodeId> {
        let learners = members
            .learners
            .iter()
            .copied()
            .filter(|node| self.is_active(*node));
        match group.is_metadata() {
            true => learners.min(),
            false => self.least_loaded(learners),
        }
    }

    /// Removes voter `node`, or first moves leadership off it if it is the (reachable) leader.
    fn remove_voter(&self, group: GroupId, members: &GroupMembers, node: NodeId) -> PlacementStep {
        let leader_reachable = self.topology.state_of(node) != Some(NodeState::Down);
        if members.leader_hint == Some(node)
            && leader_reachable
            && let Some(step) = self.hand_over_leadership(group, members, node)
        {
            return step;
        }
        PlacementStep::RemoveReplica { group, node }
    }

    fn hand_over_leadership(
        &self,
        group: GroupId,
        members: &GroupMembers,
        leader: NodeId,
    ) -> Option<PlacementStep> {
        let others = members
            .voters
            .iter()
            .copied()
            .filter(|node| *node != leader && self.is_active(*node));
        let to = self.least_leading(others)?;
        Some(PlacementStep::TransferLeader { group, to })
    }
}
