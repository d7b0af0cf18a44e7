//! `metadata-command`: group 0's decoders (`nodedb-cluster-raft/src/metadata_sm.rs` over the
//! commands of `nodedb-cluster-core/src/metadata.rs`): log entries, snapshots, the state a peer
//! answers with and the outcome of a proposal. Decoded commands are applied to a cluster in
//! use; applying must leave a state that still validates and round-trips, and a refused
//! command must change nothing.

use crate::{Target, Verdict, combine, hex, outcome};
use nodedb_cluster_core::metadata::{
    ClusterId, MetadataCommand, MetadataState, MigrationId, MigrationPhase,
};
use nodedb_cluster_core::topology::{NodeInfo, NodeState, PeerAddr};
use nodedb_cluster_core::{GroupId, NodeId, VShardId};
use nodedb_cluster_raft::state_machine::VecChunks;
use nodedb_cluster_raft::{
    Committed, LogIndex, MetadataOutcome, MetadataStateMachine, StateMachine,
    decode_metadata_command, decode_metadata_outcome, decode_metadata_state,
    encode_metadata_command,
};
use std::collections::BTreeSet;

#[derive(Debug)]
pub struct MetadataTarget {
    /// Three nodes, eight groups, one migration in flight.
    state: MetadataState,
}

impl MetadataTarget {
    pub fn new() -> MetadataTarget {
        let mut state = MetadataState::new();
        for command in sample_commands() {
            state
                .apply(&command)
                .unwrap_or_else(|error| panic!("sample command {command:?} refused: {error}"));
        }
        MetadataTarget { state }
    }
}

impl Default for MetadataTarget {
    fn default() -> MetadataTarget {
        MetadataTarget::new()
    }
}

impl Target for MetadataTarget {
    fn name(&self) -> &'static str {
        "metadata-command"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut seeds: Vec<Vec<u8>> = sample_commands()
            .iter()
            .chain(&later_commands())
            .map(encode_metadata_command)
            .collect();
        seeds.push(encode(&self.state));
        seeds.push(sample_snapshot());
        seeds
    }

    fn input_bytes_max(&self) -> usize {
        8192
    }

    fn check(&mut self, input: &[u8]) -> Verdict {
        let command = self.check_command(input)?;
        let state = check_state(input)?;
        let snapshot = check_snapshot(input)?;
        let outcome_label = match decode_metadata_outcome(input) {
            Some(decoded) => {
                let again = encode(&decoded);
                if again != input {
                    return Err(format!(
                        "outcome {} decodes as {decoded:?}, which re-encodes as {}",
                        hex(input),
                        hex(&again)
                    ));
                }
                outcome("outcome ok")
            }
            None => outcome("outcome refused"),
        };
        Ok([command, state, snapshot, outcome_label]
            .into_iter()
            .fold(0, combine))
    }
}

impl MetadataTarget {
    fn check_command(&self, input: &[u8]) -> Verdict {
        let decoded = decode_metadata_command(input);
        // Group 0's replica must reach the same verdict as the decoder.
        let (mut replica, _applied) = MetadataStateMachine::new();
        let responses = replica
            .apply(&[Committed {
                index: LogIndex(1),
                command: input,
            }])
            .map_err(|error| format!("apply failed on {}: {error}", hex(input)))?;
        let replica_outcome = responses
            .first()
            .and_then(|bytes| decode_metadata_outcome(bytes));
        let undecodable = matches!(replica_outcome, Some(MetadataOutcome::Undecodable(_)));
        if undecodable != decoded.is_err() {
            return Err(format!(
                "command {} decodes as {decoded:?} but group 0 answered {replica_outcome:?}",
                hex(input)
            ));
        }
        let command = match decoded {
            Ok(command) => command,
            Err(reason) => return Ok(outcome(&format!("command refused {}", words(&reason)))),
        };
        let again = encode_metadata_command(&command);
        if again != input {
            return Err(format!(
                "command {} decodes as {command:?}, which re-encodes as {}",
                hex(input),
                hex(&again)
            ));
        }
        let mut state = self.state.clone();
        match state.apply(&command) {
            Ok(event) => {
                state.validate().map_err(|error| {
                    format!("{command:?} applied ({event:?}) but left an invalid state: {error}")
                })?;
                let bytes = encode(&state);
                match decode_metadata_state(&bytes) {
                    Some(back) if back == state => {}
                    other => {
                        return Err(format!(
                            "after {command:?} the state does not round-trip: {other:?}"
                        ));
                    }
                }
                Ok(outcome(&format!("applied {}", variant(&command))))
            }
            Err(error) => {
                if state != self.state {
                    return Err(format!(
                        "refused {command:?} ({error}) but changed the state"
                    ));
                }
                Ok(outcome(&format!(
                    "refused {} {}",
                    variant(&command),
                    variant(&error)
                )))
            }
        }
    }
}

/// A state a peer answered with: accepted only valid and in its one encoding.
fn check_state(input: &[u8]) -> Verdict {
    let Some(state) = decode_metadata_state(input) else {
        return Ok(outcome("state refused"));
    };
    state
        .validate()
        .map_err(|error| format!("state {} decodes but is invalid: {error}", hex(input)))?;
    let again = encode(&state);
    if again != input {
        return Err(format!(
            "state {} decodes, but re-encodes as {}",
            hex(input),
            hex(&again)
        ));
    }
    Ok(outcome("state ok"))
}

/// A snapshot restored into group 0's replica must be taken again as the same bytes.
fn check_snapshot(input: &[u8]) -> Verdict {
    let (mut replica, _applied) = MetadataStateMachine::new();
    match replica.restore(&mut VecChunks::from_bytes(input)) {
        Ok(()) => {
            let again = snapshot_bytes(&replica);
            if again != input {
                return Err(format!(
                    "snapshot {} restores, but the replica's snapshot is {}",
                    hex(input),
                    hex(&again)
                ));
            }
            Ok(outcome("snapshot ok"))
        }
        Err(_) => Ok(outcome("snapshot refused")),
    }
}

fn sample_snapshot() -> Vec<u8> {
    let (mut replica, _applied) = MetadataStateMachine::new();
    let commands: Vec<Vec<u8>> = sample_commands()
        .iter()
        .map(encode_metadata_command)
        .collect();
    let batch: Vec<Committed<'_>> = commands
        .iter()
        .enumerate()
        .map(|(index, command)| Committed {
            index: LogIndex(index as u64 + 1),
            command,
        })
        .collect();
    replica
        .apply(&batch)
        .unwrap_or_else(|error| panic!("sample commands must apply: {error}"));
    snapshot_bytes(&replica)
}

fn snapshot_bytes(replica: &MetadataStateMachine) -> Vec<u8> {
    let mut chunks = replica
        .snapshot()
        .unwrap_or_else(|error| panic!("metadata snapshot: {error}"));
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks
        .next_chunk()
        .unwrap_or_else(|error| panic!("metadata snapshot chunk: {error}"))
    {
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

fn node(id: u64, state: NodeState) -> NodeInfo {
    let addr = |port: u16| {
        PeerAddr::parse(&format!("127.0.0.{id}:{port}"))
            .unwrap_or_else(|error| panic!("sample address: {error}"))
    };
    NodeInfo {
        id: NodeId(id),
        addr: addr(9400),
        admin_addr: addr(9401),
        state,
    }
}

fn sample_commands() -> Vec<MetadataCommand> {
    vec![
        MetadataCommand::Bootstrap {
            cluster_id: ClusterId([0xAB; 16]),
            num_groups: 8,
            replication_factor: 3,
            first_node: node(1, NodeState::Active),
        },
        MetadataCommand::AddNode {
            node: node(2, NodeState::Joining),
        },
        MetadataCommand::AddNode {
            node: node(3, NodeState::Joining),
        },
        MetadataCommand::SetNodeState {
            node: NodeId(2),
            state: NodeState::Active,
        },
        MetadataCommand::SetGroupMembers {
            group: GroupId(1),
            voters: BTreeSet::from([NodeId(1), NodeId(2)]),
            learners: BTreeSet::from([NodeId(3)]),
        },
        MetadataCommand::BeginMigration {
            vshard: VShardId(1),
            from: GroupId(2),
            to: GroupId(1),
        },
    ]
}

/// Valid commands that follow the sample ones (their bytes seed the corpus).
fn later_commands() -> Vec<MetadataCommand> {
    vec![
        MetadataCommand::SetLeaderHint {
            group: GroupId(1),
            leader: Some(NodeId(2)),
        },
        MetadataCommand::AdvanceMigration {
            id: MigrationId(1),
            phase: MigrationPhase::Fenced { fence_index: 1000 },
        },
        MetadataCommand::FinishMigration { id: MigrationId(1) },
        MetadataCommand::AbortMigration { id: MigrationId(1) },
    ]
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap_or_else(|error| panic!("encode: {error}"))
}

fn variant<T: std::fmt::Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    text.split(['(', '{', ' '])
        .next()
        .unwrap_or_default()
        .to_string()
}

fn words(text: &str) -> String {
    text.chars().filter(|c| !c.is_ascii_digit()).collect()
}
