//! vShard balance: which vShards to move so that every data group owns the same number of
//! vShards, give or take one. Pure; the node begins one migration per planned move.

use crate::ids::{GroupId, VSHARD_COUNT, VShardId};
use crate::routing::RoutingTable;
use std::collections::{BTreeMap, BTreeSet};

/// One planned vShard move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VShardMove {
    pub vshard: VShardId,
    pub from: GroupId,
    pub to: GroupId,
}

/// At most `moves_max` moves, each from a group with the most vShards to one with the
/// fewest, that bring the groups' vShard counts closer; vShards in `moving` (already in a
/// migration) are neither moved nor counted twice: they count for their target group. The
/// plan is deterministic: lowest vShard ids first, ties between groups broken by group id.
pub fn plan_vshard_moves(
    routing: &RoutingTable,
    moving: &BTreeMap<VShardId, GroupId>,
    moves_max: usize,
) -> Vec<VShardMove> {
    let mut owned: BTreeMap<GroupId, BTreeSet<VShardId>> = routing
        .data_groups()
        .map(|group| (group, BTreeSet::new()))
        .collect();
    let mut counts: BTreeMap<GroupId, usize> = owned.keys().map(|group| (*group, 0)).collect();
    for vshard in (0..VSHARD_COUNT).map(VShardId) {
        let group = moving
            .get(&vshard)
            .copied()
            .unwrap_or_else(|| routing.group_of(vshard));
        if let Some(count) = counts.get_mut(&group) {
            *count += 1;
        }
        if !moving.contains_key(&vshard)
            && let Some(set) = owned.get_mut(&group)
        {
            set.insert(vshard);
        }
    }
    let mut moves = Vec::new();
    while moves.len() < moves_max {
        let Some(((largest, most), (smallest, fewest))) = largest_and_smallest(&counts) else {
            break;
        };
        if most <= fewest + 1 {
            break;
        }
        let Some(vshard) = owned.get_mut(&largest).and_then(|set| set.pop_first()) else {
            break;
        };
        moves.push(VShardMove {
            vshard,
            from: largest,
            to: smallest,
        });
        counts.insert(largest, most - 1);
        counts.insert(smallest, fewest + 1);
    }
    moves
}

/// The group with the most and the group with the least of some measure, each with it; ties
/// go to the lowest group id. `None` without groups.
pub(super) fn largest_and_smallest<T: Ord + Copy>(
    measures: &BTreeMap<GroupId, T>,
) -> Option<((GroupId, T), (GroupId, T))> {
    let largest = measures
        .iter()
        .max_by_key(|(group, measure)| (**measure, std::cmp::Reverse(**group)))?;
    let smallest = measures
        .iter()
        .min_by_key(|(group, measure)| (**measure, **group))?;
    Some(((*largest.0, *largest.1), (*smallest.0, *smallest.1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    fn table(groups: u32) -> RoutingTable {
        RoutingTable::new(groups, NodeId(1)).unwrap()
    }

    fn counts(routing: &RoutingTable, moves: &[VShardMove]) -> BTreeMap<GroupId, usize> {
        let mut routing = routing.clone();
        for planned in moves {
            routing.assign_vshard(planned.vshard, planned.to).unwrap();
        }
        routing
            .data_groups()
            .map(|group| (group, routing.vshards_of(group).len()))
            .collect()
    }

    #[test]
    fn a_balanced_table_needs_no_move() {
        let routing = table(8);
        assert!(plan_vshard_moves(&routing, &BTreeMap::new(), 100).is_empty());
    }

    #[test]
    fn moves_bring_every_group_within_one_of_the_others() {
        let mut routing = table(4);
        for vshard in routing.vshards_of(GroupId(2)).into_iter().take(100) {
            routing.assign_vshard(vshard, GroupId(1)).unwrap();
        }
        let moves = plan_vshard_moves(&routing, &BTreeMap::new(), usize::MAX);
        assert!(moves.iter().all(|planned| planned.from == GroupId(1)));
        let after = counts(&routing, &moves);
        let most = after.values().max().unwrap();
        let fewest = after.values().min().unwrap();
        assert!(most - fewest <= 1, "{after:?}");
        // 356 / 156 / 256 / 256: group 1 gives 100 vShards to group 2.
        assert_eq!(moves.len(), 100);
        assert!(moves.iter().all(|planned| planned.to == GroupId(2)));
    }

    #[test]
    fn the_plan_is_bounded_and_skips_vshards_in_flight() {
        let mut routing = table(2);
        let moved: Vec<VShardId> = routing
            .vshards_of(GroupId(2))
            .into_iter()
            .take(10)
            .collect();
        for vshard in &moved {
            routing.assign_vshard(*vshard, GroupId(1)).unwrap();
        }
        let moving: BTreeMap<VShardId, GroupId> = [(moved[0], GroupId(2))].into();
        let moves = plan_vshard_moves(&routing, &moving, 3);
        assert_eq!(moves.len(), 3);
        assert!(moves.iter().all(|planned| planned.vshard != moved[0]));
        let all = plan_vshard_moves(&routing, &moving, usize::MAX);
        // 522 / 502 with one counted for group 2 already: 521 vs 503 -> 9 moves.
        assert_eq!(all.len(), 9);
    }
}
