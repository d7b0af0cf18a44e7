//! Encoding of everything core persists or sends: postcard round trips for every public
//! serializable type, and golden bytes for each `MetadataCommand` variant, which live in the
//! Raft log and therefore may never change encoding.

use nodedb_cluster_core::metadata::{
    ClusterId, MetadataCommand, MetadataError, MetadataEvent, MetadataState, Migration,
    MigrationId, MigrationPhase,
};
use nodedb_cluster_core::placement::PlacementStep;
use nodedb_cluster_core::topology::{NodeInfo, NodeState, PeerAddr, Topology, TopologyError};
use nodedb_cluster_core::{GroupId, GroupMembers, NodeId, RoutingError, RoutingTable, VShardId};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::fmt::Debug;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let bytes = postcard::to_allocvec(value).unwrap();
    let decoded: T = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(&decoded, value);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn node_info() -> NodeInfo {
    NodeInfo {
        id: NodeId(3),
        addr: PeerAddr::parse("10.0.0.3:9400").unwrap(),
        admin_addr: PeerAddr::parse("[::1]:9401").unwrap(),
        state: NodeState::Joining,
    }
}

/// One command of each variant, in declaration order, with its pinned encoding (hex).
fn golden_commands() -> Vec<(MetadataCommand, &'static str)> {
    vec![
        (
            MetadataCommand::Bootstrap {
                cluster_id: ClusterId([0xAB; 16]),
                num_groups: 8,
                replication_factor: 3,
                first_node: NodeInfo {
                    id: NodeId(1),
                    addr: PeerAddr::parse("10.0.0.1:9400").unwrap(),
                    admin_addr: PeerAddr::parse("10.0.0.1:9401").unwrap(),
                    state: NodeState::Active,
                },
            },
            "00abababababababababababababababab0803010d31302e302e302e313a393430300d31302e302e302e313a3934303101",
        ),
        (
            MetadataCommand::AddNode { node: node_info() },
            "01030d31302e302e302e333a393430300a5b3a3a315d3a3934303100",
        ),
        (
            MetadataCommand::SetNodeState {
                node: NodeId(300),
                state: NodeState::Decommissioned,
            },
            "02ac0204",
        ),
        (
            MetadataCommand::SetGroupMembers {
                group: GroupId(2),
                voters: BTreeSet::from([NodeId(1), NodeId(2), NodeId(3)]),
                learners: BTreeSet::from([NodeId(4)]),
            },
            "0302030102030104",
        ),
        (
            MetadataCommand::SetLeaderHint {
                group: GroupId(2),
                leader: Some(NodeId(3)),
            },
            "04020103",
        ),
        (
            MetadataCommand::BeginMigration {
                vshard: VShardId(1023),
                from: GroupId(1),
                to: GroupId(2),
            },
            "05ff070102",
        ),
        (
            MetadataCommand::AdvanceMigration {
                id: MigrationId(5),
                phase: MigrationPhase::Fenced { fence_index: 1000 },
            },
            "060502e807",
        ),
        (
            MetadataCommand::FinishMigration { id: MigrationId(5) },
            "0705",
        ),
        (
            MetadataCommand::AbortMigration { id: MigrationId(6) },
            "0806",
        ),
        (
            MetadataCommand::ChangeGroupMembers {
                group: GroupId(2),
                from_voters: BTreeSet::from([NodeId(1)]),
                from_learners: BTreeSet::new(),
                voters: BTreeSet::from([NodeId(1)]),
                learners: BTreeSet::from([NodeId(4)]),
            },
            "090201010001010104",
        ),
    ]
}

#[test]
fn metadata_command_golden_bytes() {
    let mut mismatches = Vec::new();
    for (command, golden) in golden_commands() {
        let bytes = postcard::to_allocvec(&command).unwrap();
        if hex(&bytes) != golden {
            mismatches.push(format!("{command:?}\n  encodes as {}", hex(&bytes)));
        }
        round_trip(&command);
    }
    assert!(
        mismatches.is_empty(),
        "MetadataCommand encoding changed; log entries would no longer decode:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn every_public_type_round_trips() {
    let mut state = MetadataState::new();
    for (command, _) in golden_commands().into_iter().take(2) {
        state.apply(&command).unwrap();
    }
    round_trip(&state);
    round_trip(&MetadataState::new());
    round_trip(state.routing().unwrap());
    round_trip(state.topology());
    round_trip(&Topology::new());
    round_trip(&RoutingTable::new(1024, NodeId(u64::MAX)).unwrap());
    round_trip(&GroupMembers::default());
    round_trip(&node_info());
    round_trip(&PeerAddr::parse("node-1.example.com:65535").unwrap());
    round_trip(&ClusterId([0; 16]));
    round_trip(&(NodeId(u64::MAX), GroupId(u32::MAX), VShardId(1023)));
    round_trip(&Migration {
        id: MigrationId(u64::MAX),
        vshard: VShardId(0),
        from: GroupId(1),
        to: GroupId(2),
        phase: MigrationPhase::Fenced {
            fence_index: u64::MAX,
        },
    });
    let steps = [
        PlacementStep::AddLearner {
            group: GroupId(0),
            node: NodeId(1),
        },
        PlacementStep::Promote {
            group: GroupId(1),
            node: NodeId(2),
        },
        PlacementStep::RemoveReplica {
            group: GroupId(2),
            node: NodeId(3),
        },
        PlacementStep::TransferLeader {
            group: GroupId(3),
            to: NodeId(4),
        },
    ];
    for step in steps {
        round_trip(&step);
    }
    let events = [
        MetadataEvent::Unchanged,
        MetadataEvent::NodeStateChanged {
            node: NodeId(1),
            from: NodeState::Active,
            to: NodeState::Down,
        },
        MetadataEvent::MigrationFinished {
            id: MigrationId(1),
            vshard: VShardId(7),
            to: GroupId(2),
            routing_version: 99,
        },
    ];
    for event in events {
        round_trip(&event);
    }
    let errors = [
        MetadataError::NotBootstrapped,
        MetadataError::Topology(TopologyError::AddrInUse {
            node: NodeId(2),
            addr: PeerAddr::parse("10.0.0.1:1").unwrap(),
            owner: NodeId(1),
        }),
        MetadataError::Routing(RoutingError::LastVoter {
            group: GroupId(1),
            node: NodeId(1),
        }),
        MetadataError::InvalidPhaseTransition {
            id: MigrationId(1),
            from: MigrationPhase::Switched,
            to: MigrationPhase::Aborted,
        },
    ];
    for error in errors {
        round_trip(&error);
    }
}

#[test]
fn out_of_range_vshard_does_not_decode() {
    let bytes = postcard::to_allocvec(&1024u16).unwrap();
    assert!(postcard::from_bytes::<VShardId>(&bytes).is_err());
    let bytes = postcard::to_allocvec(&1023u16).unwrap();
    assert_eq!(
        postcard::from_bytes::<VShardId>(&bytes).unwrap(),
        VShardId(1023)
    );
}

proptest! {
    #![proptest_config(Config {
        cases: 512,
        rng_seed: RngSeed::Fixed(0x5EED_0003),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn routing_tables_round_trip(
        num_groups in 1u32..=1024,
        moves in prop::collection::vec((0u16..1024, 1u32..=1024), 0..32),
        extra_voters in prop::collection::btree_set(1u64..100, 0..6),
    ) {
        let mut table = RoutingTable::new(num_groups, NodeId(1)).unwrap();
        for (vshard, group) in moves {
            let _ = table.assign_vshard(VShardId(vshard), GroupId(1 + (group - 1) % num_groups));
        }
        let mut voters: BTreeSet<NodeId> = extra_voters.into_iter().map(NodeId).collect();
        voters.insert(NodeId(1));
        table.set_members(GroupId(1), voters, BTreeSet::new()).unwrap();
        round_trip(&table);
    }

    #[test]
    fn garbage_routing_and_topology_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        if let Ok(table) = postcard::from_bytes::<RoutingTable>(&bytes) {
            table.validate().unwrap();
        }
        if let Ok(topology) = postcard::from_bytes::<Topology>(&bytes) {
            topology.validate().unwrap();
        }
        let _ = postcard::from_bytes::<PlacementStep>(&bytes);
        let _ = postcard::from_bytes::<PeerAddr>(&bytes);
    }
}

/// The metadata snapshot is persisted by the catalog and sent to lagging replicas; its
/// encoding is pinned by length and xxh64 of the bytes (the full text would be ~1 KiB).
#[test]
fn metadata_state_golden_digest() {
    let mut state = MetadataState::new();
    for (command, _) in golden_commands().into_iter().take(2) {
        state.apply(&command).unwrap();
    }
    let more = [
        MetadataCommand::SetNodeState {
            node: NodeId(3),
            state: NodeState::Active,
        },
        MetadataCommand::SetGroupMembers {
            group: GroupId(2),
            voters: BTreeSet::from([NodeId(1), NodeId(3)]),
            learners: BTreeSet::new(),
        },
        MetadataCommand::SetLeaderHint {
            group: GroupId(2),
            leader: Some(NodeId(3)),
        },
        MetadataCommand::BeginMigration {
            vshard: VShardId(0),
            from: GroupId(1),
            to: GroupId(2),
        },
        MetadataCommand::AdvanceMigration {
            id: MigrationId(1),
            phase: MigrationPhase::Copying,
        },
    ];
    for command in &more {
        state.apply(command).unwrap();
    }
    let bytes = postcard::to_allocvec(&state).unwrap();
    let digest = nodedb_cluster_core::routing::xxh64(&bytes, 0);
    assert_eq!(
        (bytes.len(), format!("{digest:016x}")),
        (1163, "17124b5aa636b5d3".to_owned()),
        "MetadataState encoding changed; stored snapshots would no longer decode"
    );
}

/// Answers to proposals travel between nodes (forwarded proposals), so their encoding is
/// pinned too.
#[test]
fn metadata_event_and_error_golden_bytes() {
    let answers: Vec<(Result<MetadataEvent, MetadataError>, &str)> = vec![
        (Ok(MetadataEvent::Unchanged), "0000"),
        (
            Ok(MetadataEvent::MigrationFinished {
                id: MigrationId(5),
                vshard: VShardId(1023),
                to: GroupId(2),
                routing_version: 300,
            }),
            "000905ff0702ac02",
        ),
        (Err(MetadataError::NotBootstrapped), "0100"),
        (
            Err(MetadataError::NotOwner {
                vshard: VShardId(3),
                group: GroupId(2),
                owner: GroupId(4),
            }),
            "0109030204",
        ),
    ];
    let mut mismatches = Vec::new();
    for (answer, golden) in answers {
        let bytes = postcard::to_allocvec(&answer).unwrap();
        if hex(&bytes) != golden {
            mismatches.push(format!("{answer:?}\n  encodes as {}", hex(&bytes)));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
