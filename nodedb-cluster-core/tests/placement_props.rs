//! Property tests of the placement planner: random clusters and random failure sequences,
//! planning and applying steps until the fixed point, with every safety invariant checked at
//! every step and balance checked at every fixed point. Fixed seed: runs are reproducible.

use nodedb_cluster_core::metadata::{ClusterId, MetadataCommand, MetadataEvent, MetadataState};
use nodedb_cluster_core::placement::{PlacementStep, metadata_voter_target, plan};
use nodedb_cluster_core::topology::{NodeInfo, NodeState, PeerAddr, Topology};
use nodedb_cluster_core::{GroupId, METADATA_GROUP, NodeId, RoutingTable};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use std::collections::{BTreeMap, BTreeSet};

/// Plans allowed to reach a fixed point after one event.
const PLANS_PER_EVENT_MAX: usize = 2_000;

/// One change to the cluster between convergence runs.
#[derive(Clone, Copy, Debug)]
enum Event {
    SetState(u64, NodeState),
    Decommission(u64),
    AddNode { active: bool },
}

fn event() -> impl Strategy<Value = Event> {
    let state = prop_oneof![
        Just(NodeState::Active),
        Just(NodeState::Down),
        Just(NodeState::Draining),
    ];
    prop_oneof![
        4 => (1u64..=10, state).prop_map(|(node, state)| Event::SetState(node, state)),
        1 => (1u64..=10).prop_map(Event::Decommission),
        2 => any::<bool>().prop_map(|active| Event::AddNode { active }),
    ]
}

fn config() -> Config {
    Config {
        cases: 192,
        rng_seed: RngSeed::Fixed(0x5EED_0001),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn placement_converges_safely_through_failures(
        initial_nodes in 1u64..=7,
        num_groups in 1u32..=10,
        replication_factor in 1u8..=5,
        events in prop::collection::vec(event(), 0..10),
    ) {
        let mut topology = Topology::new();
        for id in 1..=initial_nodes {
            add_node(&mut topology, id, true);
        }
        let mut routing = RoutingTable::new(num_groups, NodeId(1)).unwrap();
        elect(&topology, &mut routing);
        converge_checked(&topology, &mut routing, replication_factor);
        for event in events {
            apply_event(&mut topology, &routing, event);
            elect(&topology, &mut routing);
            converge_checked(&topology, &mut routing, replication_factor);
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: 96, ..config() })]

    /// The same journey through the metadata state machine: every step the planner proposes
    /// must be accepted, as a command, by the metadata validation, and change something.
    #[test]
    fn planned_steps_are_valid_metadata_commands(
        initial_nodes in 1u64..=6,
        num_groups in 1u32..=8,
        replication_factor in 1u8..=4,
        events in prop::collection::vec(event(), 0..8),
    ) {
        let mut state = MetadataState::new();
        let bootstrap = MetadataCommand::Bootstrap {
            cluster_id: ClusterId([9; 16]),
            num_groups,
            replication_factor,
            first_node: node_info(1, true),
        };
        state.apply(&bootstrap).unwrap();
        for id in 2..=initial_nodes {
            state.apply(&MetadataCommand::AddNode { node: node_info(id, true) }).unwrap();
        }
        converge_metadata(&mut state);
        for event in events {
            let command = match event {
                Event::SetState(node, state) => MetadataCommand::SetNodeState {
                    node: NodeId(node),
                    state,
                },
                Event::Decommission(node) => MetadataCommand::SetNodeState {
                    node: NodeId(node),
                    state: NodeState::Decommissioned,
                },
                Event::AddNode { active } => MetadataCommand::AddNode {
                    node: node_info(state.topology().len() as u64 + 1, active),
                },
            };
            let _ = state.apply(&command);
            converge_metadata(&mut state);
        }
    }
}

fn converge_metadata(state: &mut MetadataState) {
    let replication_factor = state.replication_factor().unwrap();
    for _ in 0..PLANS_PER_EVENT_MAX {
        elect_through_metadata(state);
        let steps = state.plan_placement();
        if steps.is_empty() {
            let routing = state.routing().unwrap();
            check_fixed_point(state.topology(), routing, replication_factor);
            return;
        }
        for step in &steps {
            let command = step.to_command(state.routing().unwrap()).unwrap();
            let event = state.apply(&command);
            assert!(
                matches!(event, Ok(ref event) if *event != MetadataEvent::Unchanged),
                "{step:?} as {command:?} answered {event:?}"
            );
        }
        state.validate().unwrap();
    }
    panic!("no fixed point after {PLANS_PER_EVENT_MAX} plans");
}

/// `elect`, recorded the way the cluster records it: with `SetLeaderHint`.
fn elect_through_metadata(state: &mut MetadataState) {
    let mut routing = state.routing().unwrap().clone();
    elect(state.topology(), &mut routing);
    let changes: Vec<MetadataCommand> = routing
        .groups()
        .filter(|(group, members)| {
            state
                .routing()
                .unwrap()
                .members(*group)
                .unwrap()
                .leader_hint
                != members.leader_hint
        })
        .map(|(group, members)| MetadataCommand::SetLeaderHint {
            group,
            leader: members.leader_hint,
        })
        .collect();
    for command in changes {
        state.apply(&command).unwrap();
    }
}

fn node_info(id: u64, active: bool) -> NodeInfo {
    NodeInfo {
        id: NodeId(id),
        addr: PeerAddr::parse(&format!("10.0.0.{id}:9400")).unwrap(),
        admin_addr: PeerAddr::parse(&format!("10.0.0.{id}:9401")).unwrap(),
        state: if active {
            NodeState::Active
        } else {
            NodeState::Joining
        },
    }
}

fn add_node(topology: &mut Topology, id: u64, active: bool) {
    topology.insert(node_info(id, active)).unwrap();
}

/// Applies `event` if it is a legal transition; illegal ones are skipped, as the metadata
/// state machine would refuse them.
fn apply_event(topology: &mut Topology, routing: &RoutingTable, event: Event) {
    match event {
        Event::SetState(node, state) => {
            let _ = topology.set_state(NodeId(node), state);
        }
        Event::Decommission(node) => {
            if routing.groups_of_node(NodeId(node)).is_empty() {
                let _ = topology.set_state(NodeId(node), NodeState::Decommissioned);
            }
        }
        Event::AddNode { active } => {
            let id = topology.len() as u64 + 1;
            add_node(topology, id, active);
        }
    }
}

/// What Raft would do on its own: a group without a live leader elects its lowest Active voter.
fn elect(topology: &Topology, routing: &mut RoutingTable) {
    let groups: Vec<GroupId> = routing.groups().map(|(group, _)| group).collect();
    for group in groups {
        let members = routing.members(group).unwrap();
        let alive = |node: &NodeId| {
            matches!(
                topology.state_of(*node),
                Some(NodeState::Active | NodeState::Draining)
            )
        };
        if members.leader_hint.is_some_and(|leader| alive(&leader)) {
            continue;
        }
        let leader = members
            .voters
            .iter()
            .copied()
            .find(|node| topology.state_of(*node) == Some(NodeState::Active));
        routing.set_leader_hint(group, leader).unwrap();
    }
}

fn converge_checked(topology: &Topology, routing: &mut RoutingTable, replication_factor: u8) {
    for _ in 0..PLANS_PER_EVENT_MAX {
        let steps = plan(topology, routing, replication_factor);
        assert_eq!(
            steps,
            plan(topology, routing, replication_factor),
            "not deterministic"
        );
        let groups: BTreeSet<GroupId> = steps.iter().map(|step| step.group()).collect();
        assert_eq!(
            groups.len(),
            steps.len(),
            "two steps for one group: {steps:?}"
        );
        if steps.is_empty() {
            check_fixed_point(topology, routing, replication_factor);
            return;
        }
        for step in &steps {
            check_step(topology, routing, replication_factor, step);
            routing.apply_step(step).unwrap();
            routing.validate().unwrap();
        }
        elect(topology, routing);
    }
    panic!("no fixed point after {PLANS_PER_EVENT_MAX} plans: {routing:?}");
}

fn voter_target(topology: &Topology, group: GroupId, replication_factor: u8) -> usize {
    match group.is_metadata() {
        true => metadata_voter_target(topology),
        false => usize::from(replication_factor),
    }
}

/// The safety rules a single step must respect.
fn check_step(
    topology: &Topology,
    routing: &RoutingTable,
    replication_factor: u8,
    step: &PlacementStep,
) {
    let group = step.group();
    let members = routing.members(group).unwrap();
    let state = topology.state_of(step.node());
    match *step {
        PlacementStep::AddLearner { node, .. } => {
            assert!(!members.contains(node), "{step:?} on a member");
            let allowed = match group.is_metadata() {
                true => matches!(
                    state,
                    Some(NodeState::Active | NodeState::Joining | NodeState::Draining)
                ),
                false => state == Some(NodeState::Active),
            };
            assert!(allowed, "{step:?} onto a {state:?} node");
        }
        PlacementStep::Promote { .. } | PlacementStep::TransferLeader { .. } => {
            assert_eq!(state, Some(NodeState::Active), "{step:?}");
        }
        PlacementStep::RemoveReplica { node, .. } => {
            if members.voters.contains(&node) {
                let target = voter_target(topology, group, replication_factor);
                let before = members.voters.len();
                assert!(
                    before > target.min(before),
                    "{step:?} drops {group} from {before} voters below target {target}"
                );
                let healthy_before = active_count(topology, &members.voters);
                let healthy_after = healthy_before - usize::from(state == Some(NodeState::Active));
                assert!(
                    healthy_after >= target.min(healthy_before),
                    "{step:?} removes an Active voter before its replacement is a voter"
                );
            }
        }
    }
}

fn active_count(topology: &Topology, nodes: &BTreeSet<NodeId>) -> usize {
    nodes
        .iter()
        .filter(|node| topology.state_of(**node) == Some(NodeState::Active))
        .count()
}

fn check_fixed_point(topology: &Topology, routing: &RoutingTable, replication_factor: u8) {
    let active: BTreeSet<NodeId> = topology.ids_in(NodeState::Active).collect();
    let rf = usize::from(replication_factor);
    let mut replicas: BTreeMap<NodeId, usize> = active.iter().map(|node| (*node, 0)).collect();
    let mut leaders = replicas.clone();
    let mut all_voters_active = true;
    for group in routing.data_groups() {
        let members = routing.members(group).unwrap();
        assert!(
            members.learners.is_empty(),
            "{group} keeps learners at the fixed point: {members:?}"
        );
        let healthy = active_count(topology, &members.voters);
        assert_eq!(healthy, rf.min(active.len()), "{group}: {members:?}");
        if active.len() >= rf {
            assert_eq!(members.voters.len(), rf, "{group}: {members:?}");
        }
        all_voters_active &= healthy == members.voters.len();
        for node in members.voters.iter() {
            if let Some(count) = replicas.get_mut(node) {
                *count += 1;
            }
        }
        if let Some(count) = members.leader_hint.and_then(|l| leaders.get_mut(&l)) {
            *count += 1;
        }
    }
    assert_spread(&replicas, "replicas");
    if all_voters_active {
        assert_spread(&leaders, "leaders");
    }
    let metadata = routing.members(METADATA_GROUP).unwrap();
    let target = metadata_voter_target(topology);
    let healthy = active_count(topology, &metadata.voters);
    assert!(
        (target.min(active.len())..=target).contains(&healthy),
        "metadata group has {healthy} Active voters, target {target}: {metadata:?}"
    );
    for info in topology.nodes() {
        let follows = matches!(
            info.state,
            NodeState::Joining | NodeState::Active | NodeState::Draining
        );
        assert_eq!(
            metadata.contains(info.id),
            follows || metadata.voters.contains(&info.id)
        );
    }
}

fn assert_spread(counts: &BTreeMap<NodeId, usize>, what: &str) {
    let (Some(min), Some(max)) = (counts.values().min(), counts.values().max()) else {
        return;
    };
    assert!(
        max - min <= 1,
        "{what} per Active node differ by more than one: {counts:?}"
    );
}
