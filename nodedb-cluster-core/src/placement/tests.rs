//! Example-based placement tests: exact steps for small, hand-checked situations. Random
//! topologies and failure sequences are covered by `tests/placement_props.rs`.

use super::*;
use crate::ids::METADATA_GROUP;
use crate::topology::{NodeInfo, PeerAddr};

fn topology(states: &[(u64, NodeState)]) -> Topology {
    let mut topology = Topology::new();
    for (id, state) in states {
        let info = NodeInfo {
            id: NodeId(*id),
            addr: PeerAddr::parse(&format!("10.0.0.{id}:9400")).unwrap(),
            admin_addr: PeerAddr::parse(&format!("10.0.0.{id}:9401")).unwrap(),
            state: NodeState::Joining,
        };
        topology.insert(info).unwrap();
        if *state != NodeState::Joining {
            topology.set_state(NodeId(*id), NodeState::Active).unwrap();
            topology.set_state(NodeId(*id), *state).unwrap();
        }
    }
    topology
}

fn set(ids: &[u64]) -> BTreeSet<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

/// Plans and applies until the plan is empty; returns the number of plans that had steps.
fn converge(topology: &Topology, routing: &mut RoutingTable, replication_factor: u8) -> usize {
    for round in 0..1_000 {
        let steps = plan(topology, routing, replication_factor);
        if steps.is_empty() {
            return round;
        }
        for step in &steps {
            routing.apply_step(step).unwrap();
        }
    }
    panic!("placement did not converge in 1000 plans");
}

#[test]
fn single_node_cluster_is_already_placed() {
    let topology = topology(&[(1, NodeState::Active)]);
    let routing = RoutingTable::new(4, NodeId(1)).unwrap();
    assert_eq!(plan(&topology, &routing, 3), vec![]);
}

#[test]
fn new_nodes_become_learners_then_voters_one_step_per_group() {
    let topology = topology(&[
        (1, NodeState::Active),
        (2, NodeState::Active),
        (3, NodeState::Active),
    ]);
    let routing = RoutingTable::new(2, NodeId(1)).unwrap();
    let steps = plan(&topology, &routing, 3);
    assert_eq!(
        steps,
        vec![
            PlacementStep::AddLearner {
                group: METADATA_GROUP,
                node: NodeId(2)
            },
            PlacementStep::AddLearner {
                group: GroupId(1),
                node: NodeId(2)
            },
            PlacementStep::AddLearner {
                group: GroupId(2),
                node: NodeId(3)
            },
        ]
    );
}

#[test]
fn joining_nodes_only_follow_the_metadata_group() {
    let topology = topology(&[(1, NodeState::Active), (2, NodeState::Joining)]);
    let mut routing = RoutingTable::new(2, NodeId(1)).unwrap();
    converge(&topology, &mut routing, 3);
    assert_eq!(routing.members(METADATA_GROUP).unwrap().learners, set(&[2]));
    for group in routing.data_groups() {
        assert_eq!(routing.members(group).unwrap().voters, set(&[1]));
        assert!(routing.members(group).unwrap().learners.is_empty());
    }
}

#[test]
fn down_voter_is_replaced_before_it_is_removed() {
    let topology = topology(&[
        (1, NodeState::Active),
        (2, NodeState::Active),
        (3, NodeState::Down),
        (4, NodeState::Active),
    ]);
    let mut routing = RoutingTable::new(1, NodeId(1)).unwrap();
    let group = GroupId(1);
    routing
        .set_members(group, set(&[1, 2, 3]), set(&[]))
        .unwrap();
    let expected = [
        PlacementStep::AddLearner {
            group,
            node: NodeId(4),
        },
        PlacementStep::Promote {
            group,
            node: NodeId(4),
        },
        PlacementStep::RemoveReplica {
            group,
            node: NodeId(3),
        },
    ];
    for step in expected {
        let steps: Vec<PlacementStep> = plan(&topology, &routing, 3)
            .into_iter()
            .filter(|step| step.group() == group)
            .collect();
        assert_eq!(steps, vec![step]);
        routing.apply_step(&step).unwrap();
    }
    assert_eq!(routing.members(group).unwrap().voters, set(&[1, 2, 4]));
}

#[test]
fn down_voter_stays_when_no_replacement_exists() {
    let topology = topology(&[
        (1, NodeState::Active),
        (2, NodeState::Active),
        (3, NodeState::Down),
    ]);
    let mut routing = RoutingTable::new(1, NodeId(1)).unwrap();
    routing
        .set_members(GroupId(1), set(&[1, 2, 3]), set(&[]))
        .unwrap();
    routing
        .set_members(METADATA_GROUP, set(&[1, 2, 3]), set(&[]))
        .unwrap();
    assert_eq!(plan(&topology, &routing, 3), vec![]);
}

#[test]
fn draining_leader_hands_over_before_removal() {
    let topology = topology(&[
        (1, NodeState::Draining),
        (2, NodeState::Active),
        (3, NodeState::Active),
        (4, NodeState::Active),
    ]);
    let mut routing = RoutingTable::new(1, NodeId(1)).unwrap();
    let group = GroupId(1);
    routing
        .set_members(group, set(&[1, 2, 3, 4]), set(&[]))
        .unwrap();
    routing.set_leader_hint(group, Some(NodeId(1))).unwrap();
    let steps = plan(&topology, &routing, 3);
    assert!(steps.contains(&PlacementStep::TransferLeader {
        group,
        to: NodeId(2)
    }));
    routing
        .apply_step(&PlacementStep::TransferLeader {
            group,
            to: NodeId(2),
        })
        .unwrap();
    let steps = plan(&topology, &routing, 3);
    assert!(steps.contains(&PlacementStep::RemoveReplica {
        group,
        node: NodeId(1)
    }));
}

#[test]
fn a_surplus_metadata_leader_hands_over_then_stays_a_learner() {
    // One node Draining and the joiner not yet Active: the voter target drops to 3.
    let topology = topology(&[
        (1, NodeState::Active),
        (2, NodeState::Active),
        (3, NodeState::Active),
        (4, NodeState::Draining),
        (5, NodeState::Active),
        (6, NodeState::Joining),
    ]);
    let mut routing = RoutingTable::new(1, NodeId(1)).unwrap();
    routing
        .set_members(METADATA_GROUP, set(&[1, 2, 3, 4, 5]), set(&[]))
        .unwrap();
    // The reconciler tells the planner who leads group 0.
    routing
        .set_leader_hint(METADATA_GROUP, Some(NodeId(5)))
        .unwrap();
    let metadata_step = |routing: &RoutingTable| {
        plan(&topology, routing, 3)
            .into_iter()
            .find(|step| step.group() == METADATA_GROUP)
    };
    let draining = PlacementStep::RemoveReplica {
        group: METADATA_GROUP,
        node: NodeId(4),
    };
    assert_eq!(metadata_step(&routing), Some(draining));
    routing.apply_step(&draining).unwrap();
    let handover = metadata_step(&routing).unwrap();
    assert!(
        matches!(handover, PlacementStep::TransferLeader { to, .. } if to != NodeId(5)),
        "the leader hands over before it removes itself: {handover:?}"
    );
    routing.apply_step(&handover).unwrap();
    let surplus = PlacementStep::RemoveReplica {
        group: METADATA_GROUP,
        node: NodeId(5),
    };
    assert_eq!(metadata_step(&routing), Some(surplus));
    converge(&topology, &mut routing, 3);
    let metadata = routing.members(METADATA_GROUP).unwrap();
    assert_eq!(metadata.voters.len(), 3);
    assert_eq!(
        metadata.learners,
        set(&[4, 5, 6]),
        "every other node follows group 0"
    );
}

#[test]
fn metadata_group_target_is_odd_beyond_three_and_capped() {
    let states = |count: u64| -> Vec<(u64, NodeState)> {
        (1..=count).map(|id| (id, NodeState::Active)).collect()
    };
    let expected = [(1, 1), (2, 2), (3, 3), (4, 3), (5, 5), (6, 5), (9, 5)];
    for (count, target) in expected {
        assert_eq!(metadata_voter_target(&topology(&states(count))), target);
    }
}

#[test]
fn converged_placement_is_balanced() {
    let states: Vec<(u64, NodeState)> = (1..=5).map(|id| (id, NodeState::Active)).collect();
    let topology = topology(&states);
    let mut routing = RoutingTable::new(8, NodeId(1)).unwrap();
    converge(&topology, &mut routing, 3);
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for group in routing.data_groups() {
        let members = routing.members(group).unwrap();
        assert_eq!(members.voters.len(), 3);
        assert!(members.learners.is_empty());
        for node in &members.voters {
            *load.entry(*node).or_default() += 1;
        }
    }
    let (min, max) = (load.values().min(), load.values().max());
    assert!(max.unwrap() - min.unwrap() <= 1, "{load:?}");
    let metadata = routing.members(METADATA_GROUP).unwrap();
    assert_eq!(metadata.voters.len(), 5);
}

#[test]
fn apply_step_refuses_steps_that_do_not_fit() {
    let mut routing = RoutingTable::new(1, NodeId(1)).unwrap();
    let group = GroupId(1);
    let before = routing.clone();
    assert_eq!(
        routing.apply_step(&PlacementStep::RemoveReplica {
            group,
            node: NodeId(1)
        }),
        Err(RoutingError::LastVoter {
            group,
            node: NodeId(1)
        })
    );
    assert_eq!(
        routing.apply_step(&PlacementStep::Promote {
            group,
            node: NodeId(2)
        }),
        Err(RoutingError::NotALearner {
            group,
            node: NodeId(2)
        })
    );
    assert_eq!(
        routing.apply_step(&PlacementStep::AddLearner {
            group,
            node: NodeId(1)
        }),
        Err(RoutingError::AlreadyMember {
            group,
            node: NodeId(1)
        })
    );
    assert_eq!(routing, before);
}

#[test]
fn nodes_joining_one_by_one_spread_replicas_with_few_moves() {
    let mut states = vec![(1, NodeState::Active)];
    let mut routing = RoutingTable::new(64, NodeId(1)).unwrap();
    let mut plans = 0;
    for id in 2..=16 {
        states.push((id, NodeState::Active));
        plans += converge(&topology(&states), &mut routing, 3);
    }
    let version = routing.routing_version();
    println!("16 nodes joined one by one, 64 groups: {plans} plans, routing_version {version}");
    // Each join moves at most its fair share of replicas, three plans per move, in parallel
    // with the metadata group.
    assert!(plans <= 16 * 64, "{plans} plans");
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for group in routing.data_groups() {
        for node in &routing.members(group).unwrap().voters {
            *load.entry(*node).or_default() += 1;
        }
    }
    let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
    assert!(max - min <= 1, "{load:?}");
}

#[test]
fn balancing_leaves_the_leaders_of_moving_groups_where_they_are() {
    let topology = topology(&[
        (1, NodeState::Active),
        (2, NodeState::Active),
        (3, NodeState::Active),
    ]);
    let mut routing = RoutingTable::new(2, NodeId(1)).unwrap();
    for group in [METADATA_GROUP, GroupId(1), GroupId(2)] {
        routing
            .set_members(group, set(&[1, 2, 3]), set(&[]))
            .unwrap();
        routing.set_leader_hint(group, Some(NodeId(1))).unwrap();
    }
    let transfers = |moving: &[u32]| -> Vec<GroupId> {
        let moving: BTreeSet<GroupId> = moving.iter().copied().map(GroupId).collect();
        plan_during_moves(&topology, &routing, 3, &moving)
            .into_iter()
            .filter(|step| matches!(step, PlacementStep::TransferLeader { .. }))
            .map(|step| step.group())
            .collect()
    };
    // Node 1 leads both data groups, the others none: one leadership moves.
    assert_eq!(transfers(&[]), vec![GroupId(1)]);
    assert_eq!(transfers(&[1]), vec![GroupId(2)]);
    assert_eq!(transfers(&[1, 2]), vec![]);
}
