//! Property tests of the metadata state machine: random command logs over a small id space
//! (so that most commands are valid and many conflict), checking validation, idempotence of
//! retries, deterministic replay, routing completeness and that garbage never panics.

use nodedb_cluster_core::metadata::{
    ClusterId, MetadataCommand, MetadataError, MetadataEvent, MetadataState, MigrationId,
    MigrationPhase,
};
use nodedb_cluster_core::topology::{NodeInfo, NodeState, PeerAddr};
use nodedb_cluster_core::{GroupId, NodeId, VSHARD_COUNT, VShardId};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use std::collections::BTreeSet;

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5EED_0002),
        failure_persistence: None,
        ..Config::default()
    }
}

fn node_state() -> impl Strategy<Value = NodeState> {
    prop_oneof![
        Just(NodeState::Joining),
        Just(NodeState::Active),
        Just(NodeState::Draining),
        Just(NodeState::Down),
        Just(NodeState::Decommissioned),
    ]
}

/// Nodes 0..=6 on a pool of four hosts, so that id and address conflicts both happen.
fn node_info() -> impl Strategy<Value = NodeInfo> {
    (0u64..=6, 0u8..4, node_state()).prop_map(|(id, host, state)| NodeInfo {
        id: NodeId(id),
        addr: PeerAddr::parse(&format!("10.0.0.{host}:{}", 9400 + id)).unwrap(),
        admin_addr: PeerAddr::parse(&format!("10.0.1.{host}:{}", 9400 + id)).unwrap(),
        state,
    })
}

fn node_set() -> impl Strategy<Value = BTreeSet<NodeId>> {
    prop::collection::btree_set((0u64..=6).prop_map(NodeId), 0..5)
}

fn phase() -> impl Strategy<Value = MigrationPhase> {
    prop_oneof![
        Just(MigrationPhase::Planned),
        Just(MigrationPhase::Copying),
        (0u64..3).prop_map(|fence_index| MigrationPhase::Fenced { fence_index }),
        Just(MigrationPhase::Switched),
        Just(MigrationPhase::Cleaned),
        Just(MigrationPhase::Aborted),
    ]
}

/// vShards 0..8 plus the edges; `out_of_range` adds ids no decoder would produce.
fn vshard(out_of_range: bool) -> impl Strategy<Value = VShardId> {
    let high = if out_of_range {
        u16::MAX
    } else {
        VSHARD_COUNT - 1
    };
    prop_oneof![
        (0u16..8).prop_map(VShardId),
        Just(VShardId(VSHARD_COUNT - 1)),
        Just(VShardId(high)),
    ]
}

fn command(out_of_range: bool) -> impl Strategy<Value = MetadataCommand> {
    let group = (0u32..=4).prop_map(GroupId);
    let migration = (0u64..=6).prop_map(MigrationId);
    prop_oneof![
        1 => (0u8..2, 0u32..=4, 0u8..=4, node_info()).prop_map(
            |(cluster, num_groups, replication_factor, first_node)| MetadataCommand::Bootstrap {
                cluster_id: ClusterId([cluster; 16]),
                num_groups,
                replication_factor,
                first_node,
            }
        ),
        4 => node_info().prop_map(|node| MetadataCommand::AddNode { node }),
        4 => ((0u64..=6).prop_map(NodeId), node_state())
            .prop_map(|(node, state)| MetadataCommand::SetNodeState { node, state }),
        4 => (group.clone(), node_set(), node_set()).prop_map(|(group, voters, learners)| {
            MetadataCommand::SetGroupMembers { group, voters, learners }
        }),
        2 => (group.clone(), prop::option::of((0u64..=6).prop_map(NodeId)))
            .prop_map(|(group, leader)| MetadataCommand::SetLeaderHint { group, leader }),
        4 => (vshard(out_of_range), group.clone(), group)
            .prop_map(|(vshard, from, to)| MetadataCommand::BeginMigration { vshard, from, to }),
        4 => (migration.clone(), phase())
            .prop_map(|(id, phase)| MetadataCommand::AdvanceMigration { id, phase }),
        2 => migration.clone().prop_map(|id| MetadataCommand::FinishMigration { id }),
        1 => migration.prop_map(|id| MetadataCommand::AbortMigration { id }),
    ]
}

/// A log that starts with a valid bootstrap, so that later commands mostly hit real state.
fn log(out_of_range: bool) -> impl Strategy<Value = Vec<MetadataCommand>> {
    let bootstrap = (1u32..=4, 1u8..=3).prop_map(|(num_groups, replication_factor)| {
        MetadataCommand::Bootstrap {
            cluster_id: ClusterId([1; 16]),
            num_groups,
            replication_factor,
            first_node: NodeInfo {
                id: NodeId(1),
                addr: PeerAddr::parse("10.0.0.9:9400").unwrap(),
                admin_addr: PeerAddr::parse("10.0.1.9:9400").unwrap(),
                state: NodeState::Active,
            },
        }
    });
    (
        bootstrap,
        prop::collection::vec(command(out_of_range), 0..80),
    )
        .prop_map(|(bootstrap, mut rest)| {
            rest.insert(0, bootstrap);
            rest
        })
}

/// Every vShard maps to exactly one existing data group.
fn check_routing_complete(state: &MetadataState) {
    let Some(routing) = state.routing() else {
        return;
    };
    let mut owned = 0;
    for group in routing.data_groups() {
        owned += routing.vshards_of(group).len();
    }
    assert_eq!(owned, usize::from(VSHARD_COUNT));
    for vshard in VShardId::all() {
        let group = routing.group_of(vshard);
        assert!(!group.is_metadata() && routing.contains_group(group));
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn apply_validates_and_refusals_change_nothing(log in log(true)) {
        let mut state = MetadataState::new();
        let mut last_routing_version = 0;
        for command in &log {
            let before = state.clone();
            match state.apply(command) {
                Ok(MetadataEvent::Unchanged | MetadataEvent::MigrationExists { .. }) => {
                    prop_assert_eq!(&state, &before);
                }
                Ok(_) => prop_assert_eq!(state.changes_applied(), before.changes_applied() + 1),
                Err(_) => prop_assert_eq!(&state, &before),
            }
            state.validate().unwrap();
            check_routing_complete(&state);
            let version = state.routing().map_or(0, |routing| routing.routing_version());
            prop_assert!(version >= last_routing_version, "routing_version went back");
            last_routing_version = version;
        }
    }

    #[test]
    fn retried_commands_change_nothing(log in log(true)) {
        let mut state = MetadataState::new();
        for command in &log {
            let first = state.apply(command);
            let after_first = state.clone();
            let second = state.apply(command);
            prop_assert_eq!(&state, &after_first, "retry of {:?} changed the state", command);
            if first.is_ok() {
                let retry_ok = matches!(
                    second,
                    Ok(MetadataEvent::Unchanged | MetadataEvent::MigrationExists { .. })
                        | Err(MetadataError::UnknownMigration { .. })
                );
                prop_assert!(retry_ok, "retry of {:?} answered {:?}", command, second);
            }
        }
    }

    #[test]
    fn replay_gives_the_same_state_and_answers(log in log(true)) {
        let mut first = MetadataState::new();
        let mut second = MetadataState::new();
        for command in &log {
            prop_assert_eq!(first.apply(command), second.apply(command));
        }
        prop_assert_eq!(&first, &second);
        let bytes = postcard::to_allocvec(&first).unwrap();
        let decoded: MetadataState = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(decoded, first);
    }

    #[test]
    fn commands_survive_the_log_encoding(log in log(false)) {
        let mut state = MetadataState::new();
        let mut decoded_state = MetadataState::new();
        for command in &log {
            let bytes = postcard::to_allocvec(command).unwrap();
            let decoded: MetadataCommand = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&decoded, command);
            let answer = state.apply(command);
            let bytes = postcard::to_allocvec(&answer).unwrap();
            let decoded_answer: Result<MetadataEvent, MetadataError> =
                postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&decoded_answer, &answer);
            prop_assert_eq!(decoded_state.apply(&decoded), answer);
        }
        prop_assert_eq!(decoded_state, state);
    }
}

proptest! {
    #![proptest_config(config(2048))]

    /// Bytes from a peer or a disk: decoding either fails or yields a value that applies
    /// without panicking.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..96), seed in log(false)) {
        if let Ok(command) = postcard::from_bytes::<MetadataCommand>(&bytes) {
            let mut state = MetadataState::new();
            for command in &seed {
                let _ = state.apply(command);
            }
            let _ = state.apply(&command);
            state.validate().unwrap();
        }
        if let Ok(mut state) = postcard::from_bytes::<MetadataState>(&bytes) {
            state.validate().unwrap();
            for command in &seed {
                let _ = state.apply(command);
            }
            state.validate().unwrap();
        }
        let _ = postcard::from_bytes::<MetadataEvent>(&bytes);
        let _ = postcard::from_bytes::<Result<MetadataEvent, MetadataError>>(&bytes);
    }
}

/// What a state-aware driver should try next; turned into a command against the current state
/// so that deep sequences (a migration through every phase, membership of live nodes) are
/// common rather than lucky.
#[derive(Clone, Copy, Debug)]
struct Intent {
    kind: u8,
    a: u16,
    b: u8,
}

fn intent() -> impl Strategy<Value = Intent> {
    (0u8..7, any::<u16>(), any::<u8>()).prop_map(|(kind, a, b)| Intent { kind, a, b })
}

/// The command `intent` stands for in `state` (bootstrapped).
fn command_for(state: &MetadataState, intent: Intent) -> MetadataCommand {
    let routing = state.routing().unwrap();
    let num_groups = routing.num_data_groups();
    let group = GroupId(1 + u32::from(intent.b) % num_groups);
    let migrations: Vec<_> = state.migrations().values().collect();
    let picked =
        (!migrations.is_empty()).then(|| migrations[usize::from(intent.a) % migrations.len()]);
    let nodes: Vec<NodeId> = state.topology().nodes().map(|info| info.id).collect();
    match (intent.kind, picked) {
        (0, _) => {
            let vshard = VShardId(intent.a % VSHARD_COUNT);
            MetadataCommand::BeginMigration {
                vshard,
                from: routing.group_of(vshard),
                to: group,
            }
        }
        (1, Some(migration)) => {
            let phase = match migration.phase {
                MigrationPhase::Planned => MigrationPhase::Copying,
                MigrationPhase::Copying => MigrationPhase::Fenced {
                    fence_index: u64::from(intent.a),
                },
                MigrationPhase::Switched => MigrationPhase::Cleaned,
                other => other,
            };
            MetadataCommand::AdvanceMigration {
                id: migration.id,
                phase,
            }
        }
        (2, Some(migration)) => MetadataCommand::FinishMigration { id: migration.id },
        (3, Some(migration)) if intent.b.is_multiple_of(4) => {
            MetadataCommand::AbortMigration { id: migration.id }
        }
        (4, _) => {
            let id = 2 + u64::from(intent.b % 5);
            match state.topology().contains(NodeId(id)) {
                true => MetadataCommand::SetNodeState {
                    node: NodeId(id),
                    state: NodeState::Active,
                },
                false => MetadataCommand::AddNode {
                    node: NodeInfo {
                        id: NodeId(id),
                        addr: PeerAddr::parse(&format!("10.0.0.{id}:9400")).unwrap(),
                        admin_addr: PeerAddr::parse(&format!("10.0.1.{id}:9400")).unwrap(),
                        state: NodeState::Joining,
                    },
                },
            }
        }
        (5, _) => {
            let pick = |mask: u16| -> BTreeSet<NodeId> {
                nodes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, n)| *n)
                    .collect()
            };
            let voters = pick(intent.a);
            let learners = pick(intent.a >> 8).difference(&voters).copied().collect();
            MetadataCommand::SetGroupMembers {
                group,
                voters,
                learners,
            }
        }
        (_, _) => {
            let node = nodes[usize::from(intent.a) % nodes.len()];
            let state = [
                NodeState::Active,
                NodeState::Draining,
                NodeState::Down,
                NodeState::Decommissioned,
            ][usize::from(intent.b) % 4];
            MetadataCommand::SetNodeState { node, state }
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn driven_sequences_keep_every_invariant(
        bootstrap in log(false).prop_map(|log| log[0].clone()),
        intents in prop::collection::vec(intent(), 0..120),
    ) {
        let mut state = MetadataState::new();
        state.apply(&bootstrap).unwrap();
        let mut log = vec![bootstrap];
        for intent in intents {
            let command = command_for(&state, intent);
            let before = state.clone();
            let answer = state.apply(&command);
            if answer.is_err() {
                prop_assert_eq!(&state, &before);
            }
            if let Ok(MetadataEvent::MigrationFinished { vshard, to, .. }) = &answer {
                prop_assert_eq!(state.routing().unwrap().group_of(*vshard), *to);
            }
            let after = state.clone();
            let _ = state.apply(&command);
            prop_assert_eq!(&state, &after, "retry of {:?} changed the state", command);
            state.validate().unwrap();
            check_routing_complete(&state);
            log.push(command);
        }
        let mut replayed = MetadataState::new();
        for command in &log {
            let _ = replayed.apply(command);
            let _ = replayed.apply(command);
        }
        prop_assert_eq!(replayed, state);
    }
}
