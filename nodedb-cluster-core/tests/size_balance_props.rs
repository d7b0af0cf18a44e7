//! Property tests of the size-balance planner: random vShard sizes (one group made large),
//! owners and moves in flight.
//! A planned move never widens the spread between the largest and the smallest group, the plan
//! is deterministic and bounded, and planning again after carrying the moves out comes to an
//! end. Fixed seed: runs are reproducible.

use nodedb_cluster_core::{
    GroupId, NodeId, ReportedSizes, RoutingTable, SizeThresholds, VSHARD_COUNT, VShardId,
    VShardMove, plan_size_moves,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use std::collections::BTreeMap;

/// Rounds of "plan, carry out" allowed before the planner must have nothing left to do.
const ROUNDS_MAX: usize = 2 * VSHARD_COUNT as usize;

#[derive(Clone, Debug)]
struct Case {
    routing: RoutingTable,
    reported: ReportedSizes,
    moving: BTreeMap<VShardId, GroupId>,
    thresholds: SizeThresholds,
    moves_max: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (2u32..=8)
        .prop_flat_map(|groups| {
            (
                Just(groups),
                proptest::collection::vec((0u16..VSHARD_COUNT, 1..=groups), 0..300),
                proptest::collection::vec((0u16..VSHARD_COUNT, 0u64..1 << 26), 1..100),
                (1..=groups, proptest::collection::vec(0u64..1 << 28, 0..100)),
                proptest::collection::vec((0u16..VSHARD_COUNT, 1..=groups), 0..6),
                (11u32..40, 0u64..1 << 30, 1usize..=8),
            )
        })
        .prop_map(
            |(groups, owners, sizes, (hot, hot_sizes), moving, (ratio, floor, moves_max))| {
                let mut routing = RoutingTable::new(groups, NodeId(1)).unwrap();
                for (vshard, group) in owners {
                    routing
                        .assign_vshard(VShardId(vshard), GroupId(group))
                        .unwrap();
                }
                let mut reported = ReportedSizes::new();
                for (vshard, bytes) in sizes {
                    let vshard = VShardId(vshard);
                    reported
                        .entry(routing.group_of(vshard))
                        .or_default()
                        .insert(vshard, bytes);
                }
                // One group made large, as when keys are written into it only.
                let hot = GroupId(hot);
                for (vshard, bytes) in routing.vshards_of(hot).into_iter().zip(hot_sizes) {
                    reported.entry(hot).or_default().insert(vshard, bytes);
                }
                let moving = moving
                    .into_iter()
                    .map(|(vshard, group)| (VShardId(vshard), GroupId(group)))
                    .filter(|(vshard, group)| routing.group_of(*vshard) != *group)
                    .collect();
                Case {
                    routing,
                    reported,
                    moving,
                    thresholds: SizeThresholds {
                        ratio: f64::from(ratio) / 10.0,
                        floor_bytes: floor,
                    },
                    moves_max,
                }
            },
        )
}

/// Bytes per group as the planner counts them: owners' sizes, vShards in flight at their target.
fn totals(case: &Case) -> BTreeMap<GroupId, u64> {
    let mut totals: BTreeMap<GroupId, u64> =
        case.routing.data_groups().map(|group| (group, 0)).collect();
    for vshard in (0..VSHARD_COUNT).map(VShardId) {
        let owner = case.routing.group_of(vshard);
        let size = size_of(case, vshard);
        let group = case.moving.get(&vshard).copied().unwrap_or(owner);
        *totals.get_mut(&group).unwrap() += size;
    }
    totals
}

fn size_of(case: &Case, vshard: VShardId) -> u64 {
    let owner = case.routing.group_of(vshard);
    case.reported
        .get(&owner)
        .and_then(|sizes| sizes.get(&vshard))
        .copied()
        .unwrap_or(0)
}

fn spread(totals: &BTreeMap<GroupId, u64>) -> u64 {
    totals.values().max().unwrap() - totals.values().min().unwrap()
}

/// Carries `planned` out: the vShard and its reported size go to the target group.
fn carry_out(case: &mut Case, planned: VShardMove) {
    let size = case
        .reported
        .get_mut(&planned.from)
        .and_then(|sizes| sizes.remove(&planned.vshard))
        .unwrap_or(0);
    case.reported
        .entry(planned.to)
        .or_default()
        .insert(planned.vshard, size);
    case.routing
        .assign_vshard(planned.vshard, planned.to)
        .unwrap();
}

fn config() -> Config {
    Config {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x5EED_0512),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn no_planned_move_widens_the_spread(case in case()) {
        let moves = plan_size_moves(
            &case.routing, &case.reported, &case.moving, case.thresholds, case.moves_max,
        );
        prop_assert!(moves.len() <= case.moves_max);
        prop_assert_eq!(
            &moves,
            &plan_size_moves(
                &case.routing, &case.reported, &case.moving, case.thresholds, case.moves_max,
            ),
            "deterministic"
        );
        let mut totals = totals(&case);
        let mut seen = std::collections::BTreeSet::new();
        for planned in &moves {
            prop_assert!(!case.moving.contains_key(&planned.vshard));
            prop_assert!(seen.insert(planned.vshard), "{} planned twice", planned.vshard);
            prop_assert_eq!(case.routing.group_of(planned.vshard), planned.from);
            prop_assert_ne!(planned.from, planned.to);
            let size = size_of(&case, planned.vshard);
            prop_assert!(size > 0);
            let (before_spread, before_max) = (spread(&totals), *totals.values().max().unwrap());
            *totals.get_mut(&planned.from).unwrap() -= size;
            *totals.get_mut(&planned.to).unwrap() += size;
            prop_assert!(spread(&totals) <= before_spread, "{planned:?} widened {totals:?}");
            prop_assert!(*totals.values().max().unwrap() <= before_max);
        }
    }

    #[test]
    fn planning_after_carrying_moves_out_comes_to_an_end(case in case()) {
        let mut case = case;
        case.moving.clear();
        let mut rounds = 0;
        loop {
            let moves = plan_size_moves(
                &case.routing, &case.reported, &case.moving, case.thresholds, case.moves_max,
            );
            if moves.is_empty() {
                break;
            }
            rounds += 1;
            prop_assert!(rounds <= ROUNDS_MAX, "still planning after {ROUNDS_MAX} rounds");
            for planned in moves {
                carry_out(&mut case, planned);
            }
        }
    }
}
