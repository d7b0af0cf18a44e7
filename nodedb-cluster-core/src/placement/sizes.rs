//! Size balance: which vShards to move when one data group holds much more data than the
//! others. Pure; the metadata leader feeds it the bytes each group reports per vShard and
//! begins one migration per planned move.

use super::vshards::{VShardMove, largest_and_smallest};
use crate::ids::{GroupId, VSHARD_COUNT, VShardId};
use crate::routing::RoutingTable;
use std::collections::BTreeMap;

/// When a group counts as too large.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeThresholds {
    /// The largest group must hold more than this many times the mean of the groups' sizes.
    pub ratio: f64,
    /// ... and more than this many bytes: small clusters are left alone.
    pub floor_bytes: u64,
}

/// Bytes per vShard as each data group reported them (a group may hold data of vShards it does
/// not own: a copy being imported, a source not yet cleaned; only the owner's count is used).
pub type ReportedSizes = BTreeMap<GroupId, BTreeMap<VShardId, u64>>;

/// At most `moves_max` moves, each of one vShard from the largest data group (by bytes) to the
/// smallest, while the largest is above `thresholds`. A vShard's size is the one its owner
/// reported; vShards in `moving` (already in a migration) are not moved again and count for
/// their target. Each move's vShard is the one that leaves the two groups closest in size
/// among those smaller than their difference, so the pair ends strictly between their former
/// sizes: no move widens the spread between the largest and the smallest group. Deterministic:
/// ties go to the lowest group id and the lowest vShard id.
pub fn plan_size_moves(
    routing: &RoutingTable,
    reported: &ReportedSizes,
    moving: &BTreeMap<VShardId, GroupId>,
    thresholds: SizeThresholds,
    moves_max: usize,
) -> Vec<VShardMove> {
    let mut totals: BTreeMap<GroupId, u64> =
        routing.data_groups().map(|group| (group, 0)).collect();
    let mut movable: BTreeMap<GroupId, BTreeMap<VShardId, u64>> = BTreeMap::new();
    for vshard in (0..VSHARD_COUNT).map(VShardId) {
        let owner = routing.group_of(vshard);
        let size = reported
            .get(&owner)
            .and_then(|sizes| sizes.get(&vshard))
            .copied()
            .unwrap_or(0);
        let counted_in = moving.get(&vshard).copied().unwrap_or(owner);
        if let Some(total) = totals.get_mut(&counted_in) {
            *total += size;
        }
        if !moving.contains_key(&vshard) && size > 0 {
            movable.entry(owner).or_default().insert(vshard, size);
        }
    }
    let mut moves = Vec::new();
    while moves.len() < moves_max {
        let Some(((largest, most), (smallest, least))) = largest_and_smallest(&totals) else {
            break;
        };
        if !too_large(most, &totals, thresholds) {
            break;
        }
        let gap = most - least;
        let Some(vshard) = movable.get(&largest).and_then(|sizes| best_fit(sizes, gap)) else {
            break;
        };
        let size = movable
            .get_mut(&largest)
            .and_then(|sizes| sizes.remove(&vshard))
            .unwrap_or(0);
        totals.insert(largest, most - size);
        totals.insert(smallest, least + size);
        moves.push(VShardMove {
            vshard,
            from: largest,
            to: smallest,
        });
    }
    moves
}

/// Whether a group of `bytes` is above both thresholds, given every group's total.
fn too_large(bytes: u64, totals: &BTreeMap<GroupId, u64>, thresholds: SizeThresholds) -> bool {
    if bytes <= thresholds.floor_bytes || totals.is_empty() {
        return false;
    }
    let sum: u64 = totals.values().sum();
    let mean = sum as f64 / totals.len() as f64;
    bytes as f64 > thresholds.ratio * mean
}

/// The vShard whose size is below `gap` and closest to half of it (moving it leaves the two
/// groups nearest to equal); the lowest id among equals. `None` when every vShard is too large.
fn best_fit(sizes: &BTreeMap<VShardId, u64>, gap: u64) -> Option<VShardId> {
    sizes
        .iter()
        .filter(|(_, size)| **size > 0 && **size < gap)
        .min_by_key(|(vshard, size)| ((gap - **size).abs_diff(**size), **vshard))
        .map(|(vshard, _)| *vshard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    const MIB: u64 = 1024 * 1024;
    const THRESHOLDS: SizeThresholds = SizeThresholds {
        ratio: 2.0,
        floor_bytes: 64 * MIB,
    };

    fn table(groups: u32) -> RoutingTable {
        RoutingTable::new(groups, NodeId(1)).unwrap()
    }

    /// `bytes` in each of the first `count` vShards of `group`.
    fn fill(
        reported: &mut ReportedSizes,
        routing: &RoutingTable,
        group: u32,
        count: usize,
        bytes: u64,
    ) {
        let sizes = reported.entry(GroupId(group)).or_default();
        for vshard in routing.vshards_of(GroupId(group)).into_iter().take(count) {
            sizes.insert(vshard, bytes);
        }
    }

    #[test]
    fn a_large_group_gives_a_vshard_to_the_smallest() {
        let routing = table(4);
        let mut reported = ReportedSizes::new();
        fill(&mut reported, &routing, 1, 10, 20 * MIB);
        fill(&mut reported, &routing, 2, 1, 10 * MIB);
        fill(&mut reported, &routing, 3, 1, 5 * MIB);
        let moves = plan_size_moves(&routing, &reported, &BTreeMap::new(), THRESHOLDS, 1);
        assert_eq!(moves.len(), 1);
        assert_eq!((moves[0].from, moves[0].to), (GroupId(1), GroupId(4)));
        let first = routing.vshards_of(GroupId(1))[0];
        assert_eq!(moves[0].vshard, first, "equal sizes: the lowest vShard id");
    }

    #[test]
    fn below_the_floor_or_the_ratio_nothing_moves() {
        let routing = table(4);
        let mut small = ReportedSizes::new();
        fill(&mut small, &routing, 1, 3, 20 * MIB);
        assert!(plan_size_moves(&routing, &small, &BTreeMap::new(), THRESHOLDS, 8).is_empty());
        let mut even = ReportedSizes::new();
        for group in 1..=4 {
            fill(&mut even, &routing, group, 10, 30 * MIB);
        }
        fill(&mut even, &routing, 1, 12, 30 * MIB);
        assert!(plan_size_moves(&routing, &even, &BTreeMap::new(), THRESHOLDS, 8).is_empty());
    }

    #[test]
    fn a_single_huge_vshard_is_not_moved_back_and_forth() {
        let routing = table(4);
        let mut reported = ReportedSizes::new();
        fill(&mut reported, &routing, 1, 1, 500 * MIB);
        let moves = plan_size_moves(&routing, &reported, &BTreeMap::new(), THRESHOLDS, 8);
        assert!(
            moves.is_empty(),
            "moving it would only swap two groups: {moves:?}"
        );
    }

    #[test]
    fn vshards_in_flight_are_skipped_and_count_for_their_target() {
        let routing = table(4);
        let mut reported = ReportedSizes::new();
        fill(&mut reported, &routing, 1, 8, 20 * MIB);
        let vshards = routing.vshards_of(GroupId(1));
        let moving: BTreeMap<VShardId, GroupId> =
            vshards.iter().take(3).map(|v| (*v, GroupId(2))).collect();
        // 100 / 60 / 0 / 0 MiB: one more move to group 3 leaves 80 MiB, not above twice the
        // mean of 40.
        let moves = plan_size_moves(&routing, &reported, &moving, THRESHOLDS, 8);
        let expected = VShardMove {
            vshard: vshards[3],
            from: GroupId(1),
            to: GroupId(3),
        };
        assert_eq!(moves, vec![expected]);
    }

    #[test]
    fn the_plan_is_bounded() {
        let routing = table(8);
        let mut reported = ReportedSizes::new();
        fill(&mut reported, &routing, 3, 100, 10 * MIB);
        let moves = plan_size_moves(&routing, &reported, &BTreeMap::new(), THRESHOLDS, 2);
        assert_eq!(moves.len(), 2);
        assert!(moves.iter().all(|planned| planned.from == GroupId(3)));
        assert_ne!(moves[0].vshard, moves[1].vshard);
        assert_ne!(
            moves[0].to, moves[1].to,
            "each move goes to the smallest group then"
        );
    }
}
