//! Example-based tests of the metadata state machine: each command's validation, idempotence
//! and exact resulting state. Property tests live in `tests/metadata_props.rs`.

use super::*;
use crate::ids::METADATA_GROUP;
use crate::topology::PeerAddr;

fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id: NodeId(id),
        addr: PeerAddr::parse(&format!("127.0.0.1:{}", 9400 + id * 10)).unwrap(),
        admin_addr: PeerAddr::parse(&format!("127.0.0.1:{}", 9401 + id * 10)).unwrap(),
        state: NodeState::Joining,
    }
}

const CLUSTER: ClusterId = ClusterId([7; 16]);

fn bootstrapped(num_groups: u32) -> MetadataState {
    let mut state = MetadataState::new();
    let event = state
        .apply(&MetadataCommand::Bootstrap {
            cluster_id: CLUSTER,
            num_groups,
            replication_factor: 3,
            first_node: node(1),
        })
        .unwrap();
    assert_eq!(
        event,
        MetadataEvent::Bootstrapped {
            cluster_id: CLUSTER
        }
    );
    state
}

/// Applies `command` expecting a refusal, and checks that the state did not move.
fn refused(state: &mut MetadataState, command: MetadataCommand) -> MetadataError {
    let before = state.clone();
    let error = state.apply(&command).unwrap_err();
    assert_eq!(*state, before, "refused {command:?} changed the state");
    error
}

fn set(ids: &[u64]) -> BTreeSet<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

#[test]
fn bootstrap_creates_groups_and_is_idempotent() {
    let mut state = bootstrapped(4);
    state.validate().unwrap();
    assert_eq!(state.replication_factor(), Some(3));
    assert_eq!(
        state.topology().state_of(NodeId(1)),
        Some(NodeState::Active)
    );
    let routing = state.routing().unwrap();
    assert_eq!(routing.num_data_groups(), 4);
    assert_eq!(routing.members(METADATA_GROUP).unwrap().voters, set(&[1]));
    let again = MetadataCommand::Bootstrap {
        cluster_id: CLUSTER,
        num_groups: 4,
        replication_factor: 3,
        first_node: node(1),
    };
    let before = state.clone();
    assert_eq!(state.apply(&again), Ok(MetadataEvent::Unchanged));
    assert_eq!(state, before);
    let other = MetadataCommand::Bootstrap {
        cluster_id: ClusterId([8; 16]),
        num_groups: 4,
        replication_factor: 3,
        first_node: node(1),
    };
    assert_eq!(
        refused(&mut state, other),
        MetadataError::AlreadyBootstrapped {
            cluster_id: CLUSTER
        }
    );
}

#[test]
fn bootstrap_refuses_bad_parameters() {
    let mut state = MetadataState::new();
    let command = |num_groups, replication_factor, id| MetadataCommand::Bootstrap {
        cluster_id: CLUSTER,
        num_groups,
        replication_factor,
        first_node: node(id),
    };
    assert!(matches!(
        refused(&mut state, command(4, 0, 1)),
        MetadataError::ReplicationFactorOutOfRange { .. }
    ));
    assert!(matches!(
        refused(&mut state, command(4, REPLICATION_FACTOR_MAX + 1, 1)),
        MetadataError::ReplicationFactorOutOfRange { .. }
    ));
    assert!(matches!(
        refused(&mut state, command(0, 3, 1)),
        MetadataError::Routing(RoutingError::NumGroupsOutOfRange { .. })
    ));
    assert!(matches!(
        refused(&mut state, command(4, 3, 0)),
        MetadataError::Topology(TopologyError::InvalidNodeId)
    ));
    assert_eq!(
        refused(&mut state, MetadataCommand::AddNode { node: node(2) }),
        MetadataError::NotBootstrapped
    );
}

#[test]
fn add_node_is_idempotent_and_refuses_a_moved_id() {
    let mut state = bootstrapped(2);
    let add = MetadataCommand::AddNode { node: node(2) };
    assert_eq!(
        state.apply(&add),
        Ok(MetadataEvent::NodeAdded { node: NodeId(2) })
    );
    let applied = state.changes_applied();
    assert_eq!(state.apply(&add), Ok(MetadataEvent::Unchanged));
    assert_eq!(state.changes_applied(), applied);
    let mut moved = node(2);
    moved.addr = PeerAddr::parse("10.0.0.2:9400").unwrap();
    assert_eq!(
        refused(&mut state, MetadataCommand::AddNode { node: moved }),
        MetadataError::Topology(TopologyError::NodeIdConflict { node: NodeId(2) })
    );
}

#[test]
fn group_members_must_be_known_distinct_and_not_decommissioned() {
    let mut state = bootstrapped(2);
    state
        .apply(&MetadataCommand::AddNode { node: node(2) })
        .unwrap();
    let members = |voters: &[u64], learners: &[u64]| MetadataCommand::SetGroupMembers {
        group: GroupId(1),
        voters: set(voters),
        learners: set(learners),
    };
    assert_eq!(
        refused(&mut state, members(&[1, 9], &[])),
        MetadataError::Topology(TopologyError::UnknownNode { node: NodeId(9) })
    );
    assert_eq!(
        refused(&mut state, members(&[1, 2], &[2])),
        MetadataError::Routing(RoutingError::DuplicateReplica {
            group: GroupId(1),
            node: NodeId(2)
        })
    );
    assert_eq!(
        refused(&mut state, members(&[], &[1])),
        MetadataError::Routing(RoutingError::NoVoters { group: GroupId(1) })
    );
    let event = state.apply(&members(&[1], &[2])).unwrap();
    assert_eq!(
        event,
        MetadataEvent::GroupMembersChanged {
            group: GroupId(1),
            routing_version: 2
        }
    );
    assert_eq!(
        state.apply(&members(&[1], &[2])),
        Ok(MetadataEvent::Unchanged)
    );
    let unknown_group = MetadataCommand::SetGroupMembers {
        group: GroupId(3),
        voters: set(&[1]),
        learners: set(&[]),
    };
    assert!(matches!(
        refused(&mut state, unknown_group),
        MetadataError::Routing(RoutingError::UnknownGroup { .. })
    ));
}

#[test]
fn a_members_change_planned_from_an_older_record_is_refused() {
    let mut state = bootstrapped(2);
    for id in [2, 3] {
        state
            .apply(&MetadataCommand::AddNode { node: node(id) })
            .unwrap();
    }
    let change =
        |from: (&[u64], &[u64]), to: (&[u64], &[u64])| MetadataCommand::ChangeGroupMembers {
            group: GroupId(1),
            from_voters: set(from.0),
            from_learners: set(from.1),
            voters: set(to.0),
            learners: set(to.1),
        };
    // Two leaders plan from the same record {1}: the first change lands...
    let add_2 = change((&[1], &[]), (&[1], &[2]));
    assert_eq!(
        state.apply(&add_2),
        Ok(MetadataEvent::GroupMembersChanged {
            group: GroupId(1),
            routing_version: 2
        })
    );
    // ... a retry of it changes nothing ...
    assert_eq!(state.apply(&add_2), Ok(MetadataEvent::Unchanged));
    // ... and the other, planned from {1}, would drop learner 2: refused.
    assert_eq!(
        refused(&mut state, change((&[1], &[]), (&[1], &[3]))),
        MetadataError::MembersChanged { group: GroupId(1) }
    );
    // Planned from the current record it applies, validated like SetGroupMembers.
    assert_eq!(
        refused(&mut state, change((&[1], &[2]), (&[1], &[9]))),
        MetadataError::Topology(TopologyError::UnknownNode { node: NodeId(9) })
    );
    state.apply(&change((&[1], &[2]), (&[1, 2], &[]))).unwrap();
    let members = state.routing().unwrap().members(GroupId(1)).unwrap();
    assert_eq!(
        (&members.voters, &members.learners),
        (&set(&[1, 2]), &set(&[]))
    );
    state.validate().unwrap();
}

#[test]
fn decommission_requires_an_empty_node() {
    let mut state = bootstrapped(1);
    state
        .apply(&MetadataCommand::AddNode { node: node(2) })
        .unwrap();
    let to = |id, state| MetadataCommand::SetNodeState {
        node: NodeId(id),
        state,
    };
    state.apply(&to(2, NodeState::Active)).unwrap();
    state
        .apply(&MetadataCommand::SetGroupMembers {
            group: GroupId(1),
            voters: set(&[1]),
            learners: set(&[2]),
        })
        .unwrap();
    state.apply(&to(2, NodeState::Draining)).unwrap();
    assert_eq!(
        refused(&mut state, to(2, NodeState::Decommissioned)),
        MetadataError::NodeHoldsReplicas {
            node: NodeId(2),
            group: GroupId(1)
        }
    );
    state
        .apply(&MetadataCommand::SetGroupMembers {
            group: GroupId(1),
            voters: set(&[1]),
            learners: set(&[]),
        })
        .unwrap();
    assert_eq!(
        state.apply(&to(2, NodeState::Decommissioned)),
        Ok(MetadataEvent::NodeStateChanged {
            node: NodeId(2),
            from: NodeState::Draining,
            to: NodeState::Decommissioned
        })
    );
    assert_eq!(
        state.apply(&to(2, NodeState::Decommissioned)),
        Ok(MetadataEvent::Unchanged)
    );
    let rejoin = MetadataCommand::SetGroupMembers {
        group: GroupId(1),
        voters: set(&[1, 2]),
        learners: set(&[]),
    };
    assert!(matches!(
        refused(&mut state, rejoin),
        MetadataError::NodeNotEligible { .. }
    ));
    state.validate().unwrap();
}

#[test]
fn leader_hint_must_be_a_voter() {
    let mut state = bootstrapped(1);
    let hint = |leader| MetadataCommand::SetLeaderHint {
        group: GroupId(1),
        leader,
    };
    assert!(matches!(
        refused(&mut state, hint(Some(NodeId(2)))),
        MetadataError::Routing(RoutingError::LeaderNotVoter { .. })
    ));
    assert_eq!(
        state.apply(&hint(Some(NodeId(1)))),
        Ok(MetadataEvent::LeaderHintChanged {
            group: GroupId(1),
            leader: Some(NodeId(1))
        })
    );
    assert_eq!(
        state.apply(&hint(Some(NodeId(1)))),
        Ok(MetadataEvent::Unchanged)
    );
}

#[test]
fn migration_happy_path_switches_routing_once() {
    let mut state = bootstrapped(2);
    let vshard = VShardId(0);
    assert_eq!(state.routing().unwrap().group_of(vshard), GroupId(1));
    let begin = MetadataCommand::BeginMigration {
        vshard,
        from: GroupId(1),
        to: GroupId(2),
    };
    let id = MigrationId(1);
    assert_eq!(
        state.apply(&begin),
        Ok(MetadataEvent::MigrationBegun { id })
    );
    assert_eq!(
        state.apply(&begin),
        Ok(MetadataEvent::MigrationExists { id })
    );
    let advance = |phase| MetadataCommand::AdvanceMigration { id, phase };
    let fenced = MigrationPhase::Fenced { fence_index: 42 };
    state.apply(&advance(MigrationPhase::Copying)).unwrap();
    assert_eq!(
        state.apply(&advance(MigrationPhase::Copying)),
        Ok(MetadataEvent::Unchanged)
    );
    state.apply(&advance(fenced)).unwrap();
    assert!(matches!(
        refused(
            &mut state,
            advance(MigrationPhase::Fenced { fence_index: 43 })
        ),
        MetadataError::InvalidPhaseTransition { .. }
    ));
    let version = state.routing().unwrap().routing_version();
    assert_eq!(
        state.apply(&MetadataCommand::FinishMigration { id }),
        Ok(MetadataEvent::MigrationFinished {
            id,
            vshard,
            to: GroupId(2),
            routing_version: version + 1
        })
    );
    assert_eq!(
        state.apply(&MetadataCommand::FinishMigration { id }),
        Ok(MetadataEvent::Unchanged)
    );
    assert_eq!(state.routing().unwrap().group_of(vshard), GroupId(2));
    assert_eq!(state.routing().unwrap().routing_version(), version + 1);
    assert!(matches!(
        refused(&mut state, MetadataCommand::AbortMigration { id }),
        MetadataError::InvalidPhaseTransition { .. }
    ));
    state.apply(&advance(MigrationPhase::Cleaned)).unwrap();
    assert!(state.active_migration_of(vshard).is_none());
    state.validate().unwrap();
}

#[test]
fn migration_validation() {
    let mut state = bootstrapped(3);
    let begin = |vshard, from, to| MetadataCommand::BeginMigration {
        vshard: VShardId(vshard),
        from: GroupId(from),
        to: GroupId(to),
    };
    assert_eq!(
        refused(&mut state, begin(0, 2, 3)),
        MetadataError::NotOwner {
            vshard: VShardId(0),
            group: GroupId(2),
            owner: GroupId(1)
        }
    );
    assert!(matches!(
        refused(&mut state, begin(0, 1, 1)),
        MetadataError::SameGroup { .. }
    ));
    assert!(matches!(
        refused(&mut state, begin(0, 1, 0)),
        MetadataError::Routing(RoutingError::NotADataGroup { .. })
    ));
    assert!(matches!(
        refused(&mut state, begin(0, 1, 4)),
        MetadataError::Routing(RoutingError::UnknownGroup { .. })
    ));
    assert!(matches!(
        refused(&mut state, begin(5000, 1, 2)),
        MetadataError::VShardOutOfRange(_)
    ));
    state.apply(&begin(0, 1, 2)).unwrap();
    assert_eq!(
        refused(&mut state, begin(0, 1, 3)),
        MetadataError::VShardMigrating {
            vshard: VShardId(0),
            id: MigrationId(1)
        }
    );
    let id = MigrationId(1);
    assert!(matches!(
        refused(&mut state, MetadataCommand::FinishMigration { id }),
        MetadataError::InvalidPhaseTransition { .. }
    ));
    assert!(matches!(
        refused(
            &mut state,
            MetadataCommand::AdvanceMigration {
                id,
                phase: MigrationPhase::Switched
            }
        ),
        MetadataError::InvalidPhaseTransition { .. }
    ));
    assert_eq!(
        state.apply(&MetadataCommand::AbortMigration { id }),
        Ok(MetadataEvent::MigrationAborted { id })
    );
    assert_eq!(
        state.apply(&MetadataCommand::AbortMigration { id }),
        Ok(MetadataEvent::Unchanged)
    );
    assert_eq!(state.routing().unwrap().group_of(VShardId(0)), GroupId(1));
    assert_eq!(
        refused(
            &mut state,
            MetadataCommand::AbortMigration { id: MigrationId(9) }
        ),
        MetadataError::UnknownMigration { id: MigrationId(9) }
    );
    // The vShard is free again.
    assert_eq!(
        state.apply(&begin(0, 1, 3)),
        Ok(MetadataEvent::MigrationBegun { id: MigrationId(2) })
    );
}

#[test]
fn migrations_in_flight_and_history_are_bounded() {
    let mut state = bootstrapped(2);
    for raw in 0..MIGRATIONS_ACTIVE_MAX as u16 {
        let vshard = VShardId(raw * 2);
        state
            .apply(&MetadataCommand::BeginMigration {
                vshard,
                from: GroupId(1),
                to: GroupId(2),
            })
            .unwrap();
    }
    let one_more = MetadataCommand::BeginMigration {
        vshard: VShardId(1000),
        from: GroupId(1),
        to: GroupId(2),
    };
    assert!(matches!(
        refused(&mut state, one_more),
        MetadataError::TooManyMigrations { .. }
    ));
    let ids: Vec<MigrationId> = state.migrations().keys().copied().collect();
    for id in ids {
        state
            .apply(&MetadataCommand::AbortMigration { id })
            .unwrap();
    }
    for raw in 0..(MIGRATION_HISTORY_MAX as u16 + 10) {
        let begin = MetadataCommand::BeginMigration {
            vshard: VShardId(raw * 2),
            from: GroupId(1),
            to: GroupId(2),
        };
        let Ok(MetadataEvent::MigrationBegun { id }) = state.apply(&begin) else {
            panic!("begin {raw} refused");
        };
        state
            .apply(&MetadataCommand::AbortMigration { id })
            .unwrap();
    }
    assert_eq!(state.migrations().len(), MIGRATION_HISTORY_MAX);
    state.validate().unwrap();
}

#[test]
fn snapshot_round_trip_validates() {
    let mut state = bootstrapped(3);
    state
        .apply(&MetadataCommand::AddNode { node: node(2) })
        .unwrap();
    let bytes = postcard::to_allocvec(&state).unwrap();
    let decoded: MetadataState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, state);
    let empty = postcard::to_allocvec(&MetadataState::new()).unwrap();
    assert_eq!(
        postcard::from_bytes::<MetadataState>(&empty).unwrap(),
        MetadataState::new()
    );
}

#[test]
fn counters_at_their_limit_do_not_panic() {
    let mut state = bootstrapped(2);
    state.next_migration_id = MigrationId(u64::MAX);
    state.changes_applied = u64::MAX;
    let begin = MetadataCommand::BeginMigration {
        vshard: VShardId(0),
        from: GroupId(1),
        to: GroupId(2),
    };
    assert!(matches!(
        refused(&mut state, begin),
        MetadataError::TooManyMigrations { .. }
    ));
    let hint = MetadataCommand::SetLeaderHint {
        group: GroupId(1),
        leader: Some(NodeId(1)),
    };
    state.apply(&hint).unwrap();
    assert_eq!(state.changes_applied(), u64::MAX);
}
