//! The state machine of group 0: applies core's [`MetadataCommand`]s to a [`MetadataState`] and
//! publishes every applied state on a watch channel, so the node reacts to topology and routing
//! changes as they commit, on every replica, without polling.

use crate::state_machine::{
    Committed, SnapshotChunks, StateMachine, StateMachineError, VecChunks, read_all_chunks,
};
use crate::wire::decode_exact;
use nodedb_cluster_core::routing::xxh64;
use nodedb_cluster_core::{MetadataCommand, MetadataError, MetadataEvent, MetadataState, VShardId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::watch;

/// Version of the metadata snapshot record; a newer one is refused.
pub const METADATA_SNAPSHOT_VERSION: u8 = 1;
/// Largest metadata snapshot accepted from disk or a peer.
pub const METADATA_SNAPSHOT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The applied metadata as seen by this replica.
#[derive(Clone, Debug, Default)]
pub struct AppliedMetadata {
    /// Log index of the last applied metadata entry (0 before any).
    pub applied_index: u64,
    pub state: Arc<MetadataState>,
}

/// What the metadata group answers to one proposed command. Every replica reaches the same
/// verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataOutcome {
    Applied(MetadataEvent),
    /// The command was valid bytes but refused by validation; the state is unchanged.
    Refused(MetadataError),
    /// The entry does not decode as a command of this binary; the state is unchanged.
    Undecodable(String),
}

/// Read-only questions to the metadata group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataQuery {
    /// The whole applied state, postcard-encoded as [`MetadataState`].
    State,
}

/// Group 0's engine.
#[derive(Debug)]
pub struct MetadataStateMachine {
    state: MetadataState,
    applied_index: u64,
    published: watch::Sender<AppliedMetadata>,
}

#[derive(Serialize, Deserialize)]
struct MetadataSnapshot {
    version: u8,
    applied_index: u64,
    state: MetadataState,
}

impl MetadataStateMachine {
    /// A fresh engine and the receiver that sees every state it applies.
    pub fn new() -> (MetadataStateMachine, watch::Receiver<AppliedMetadata>) {
        let (published, receiver) = watch::channel(AppliedMetadata::default());
        let machine = MetadataStateMachine {
            state: MetadataState::default(),
            applied_index: 0,
            published,
        };
        (machine, receiver)
    }

    /// Another receiver of the applied states.
    pub fn subscribe(&self) -> watch::Receiver<AppliedMetadata> {
        self.published.subscribe()
    }

    fn publish(&self) {
        self.published.send_replace(AppliedMetadata {
            applied_index: self.applied_index,
            state: Arc::new(self.state.clone()),
        });
    }
}

/// Encodes a command for [`crate::MultiRaft::propose`] on group 0.
pub fn encode_metadata_command(command: &MetadataCommand) -> Vec<u8> {
    postcard::to_stdvec(command)
        .unwrap_or_else(|error| panic!("metadata command must encode: {error}"))
}

/// Decodes one command of group 0's log. Every command has exactly one accepted encoding:
/// trailing bytes and other spellings of the same value (overlong varints) are refused, so
/// that the bytes in the log and the command applied are one and the same.
pub fn decode_metadata_command(bytes: &[u8]) -> Result<MetadataCommand, String> {
    decode_exact(bytes).map_err(|error| error.to_string())
}

/// Decodes group 0's response to one proposed command.
pub fn decode_metadata_outcome(bytes: &[u8]) -> Option<MetadataOutcome> {
    decode_exact(bytes).ok()
}

/// Decodes the answer to [`MetadataQuery::State`].
pub fn decode_metadata_state(bytes: &[u8]) -> Option<MetadataState> {
    decode_exact(bytes).ok()
}

impl StateMachine for MetadataStateMachine {
    fn apply(&mut self, batch: &[Committed<'_>]) -> Result<Vec<Vec<u8>>, StateMachineError> {
        let mut responses = Vec::with_capacity(batch.len());
        for entry in batch {
            let outcome = match decode_metadata_command(entry.command) {
                Ok(command) => match self.state.apply(&command) {
                    Ok(event) => MetadataOutcome::Applied(event),
                    Err(error) => MetadataOutcome::Refused(error),
                },
                Err(reason) => MetadataOutcome::Undecodable(reason),
            };
            self.applied_index = entry.index.0;
            responses.push(
                postcard::to_stdvec(&outcome)
                    .map_err(|error| StateMachineError::Storage(error.to_string()))?,
            );
        }
        if !batch.is_empty() {
            self.publish();
        }
        Ok(responses)
    }

    fn query(&self, query: &[u8]) -> Result<Vec<u8>, StateMachineError> {
        match decode_exact::<MetadataQuery>(query) {
            Ok(MetadataQuery::State) => postcard::to_stdvec(&self.state)
                .map_err(|error| StateMachineError::Storage(error.to_string())),
            Err(error) => Err(StateMachineError::BadQuery(error.to_string())),
        }
    }

    fn snapshot(&self) -> Result<Box<dyn SnapshotChunks>, StateMachineError> {
        let snapshot = MetadataSnapshot {
            version: METADATA_SNAPSHOT_VERSION,
            applied_index: self.applied_index,
            state: self.state.clone(),
        };
        let bytes = postcard::to_stdvec(&snapshot)
            .map_err(|error| StateMachineError::Storage(error.to_string()))?;
        Ok(Box::new(VecChunks::from_bytes(&bytes)))
    }

    fn restore(&mut self, chunks: &mut dyn SnapshotChunks) -> Result<(), StateMachineError> {
        let bytes = read_all_chunks(chunks, METADATA_SNAPSHOT_BYTES_MAX)?;
        let version = *bytes
            .first()
            .ok_or_else(|| StateMachineError::Corrupt("empty metadata snapshot".to_string()))?;
        if version != METADATA_SNAPSHOT_VERSION {
            return Err(StateMachineError::Corrupt(format!(
                "metadata snapshot version {version}, this binary reads {METADATA_SNAPSHOT_VERSION}"
            )));
        }
        let snapshot: MetadataSnapshot =
            decode_exact(&bytes).map_err(|error| StateMachineError::Corrupt(error.to_string()))?;
        self.state = snapshot.state;
        self.applied_index = snapshot.applied_index;
        self.publish();
        Ok(())
    }

    fn export_vshard(&self, vshard: VShardId) -> Result<Vec<u8>, StateMachineError> {
        Err(no_vshards(vshard))
    }

    fn import_vshard(&mut self, vshard: VShardId, _data: &[u8]) -> Result<(), StateMachineError> {
        Err(no_vshards(vshard))
    }

    fn drop_vshard(&mut self, vshard: VShardId) -> Result<(), StateMachineError> {
        Err(no_vshards(vshard))
    }

    fn state_hash(&self) -> u64 {
        let bytes = postcard::to_stdvec(&self.state)
            .unwrap_or_else(|error| panic!("metadata state must encode: {error}"));
        xxh64(&bytes, 0)
    }
}

fn no_vshards(vshard: VShardId) -> StateMachineError {
    StateMachineError::BadQuery(format!("the metadata group holds no vShards ({vshard})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::LogIndex;
    use nodedb_cluster_core::metadata::ClusterId;
    use nodedb_cluster_core::{NodeId, NodeInfo, NodeState, PeerAddr};

    fn bootstrap_command() -> MetadataCommand {
        MetadataCommand::Bootstrap {
            cluster_id: ClusterId([7; 16]),
            num_groups: 4,
            replication_factor: 3,
            first_node: NodeInfo {
                id: NodeId(1),
                addr: PeerAddr::parse("127.0.0.1:9400").unwrap(),
                admin_addr: PeerAddr::parse("127.0.0.1:9401").unwrap(),
                state: NodeState::Active,
            },
        }
    }

    fn apply(machine: &mut MetadataStateMachine, index: u64, command: &[u8]) -> MetadataOutcome {
        let batch = [Committed {
            index: LogIndex(index),
            command,
        }];
        let responses = machine.apply(&batch).unwrap();
        decode_metadata_outcome(&responses[0]).unwrap()
    }

    #[test]
    fn applied_states_are_published() {
        let (mut machine, mut receiver) = MetadataStateMachine::new();
        assert!(!receiver.borrow().state.is_bootstrapped());
        let outcome = apply(
            &mut machine,
            1,
            &encode_metadata_command(&bootstrap_command()),
        );
        assert!(matches!(
            outcome,
            MetadataOutcome::Applied(MetadataEvent::Bootstrapped { .. })
        ));
        assert!(receiver.has_changed().unwrap());
        let seen = receiver.borrow_and_update().clone();
        assert_eq!(seen.applied_index, 1);
        assert_eq!(seen.state.cluster_id(), Some(ClusterId([7; 16])));
    }

    #[test]
    fn refused_and_undecodable_commands_leave_the_state_unchanged() {
        let (mut machine, receiver) = MetadataStateMachine::new();
        let add = MetadataCommand::SetNodeState {
            node: NodeId(9),
            state: NodeState::Down,
        };
        let outcome = apply(&mut machine, 1, &encode_metadata_command(&add));
        assert!(
            matches!(outcome, MetadataOutcome::Refused(_)),
            "{outcome:?}"
        );
        let outcome = apply(&mut machine, 2, &[0xff, 0xff, 0xff]);
        assert!(
            matches!(outcome, MetadataOutcome::Undecodable(_)),
            "{outcome:?}"
        );
        assert_eq!(*receiver.borrow().state, MetadataState::default());
        assert_eq!(receiver.borrow().applied_index, 2);
    }

    #[test]
    fn snapshot_round_trip_restores_state_and_hash() {
        let (mut machine, _) = MetadataStateMachine::new();
        apply(
            &mut machine,
            5,
            &encode_metadata_command(&bootstrap_command()),
        );
        let mut chunks = machine.snapshot().unwrap();
        let (mut restored, receiver) = MetadataStateMachine::new();
        restored.restore(chunks.as_mut()).unwrap();
        assert_eq!(restored.state_hash(), machine.state_hash());
        assert_eq!(receiver.borrow().applied_index, 5);
        assert_eq!(*receiver.borrow().state, machine.state);
    }

    #[test]
    fn corrupt_snapshots_are_refused() {
        let (mut machine, _) = MetadataStateMachine::new();
        for bytes in [
            vec![],
            vec![2, 0, 0],
            vec![METADATA_SNAPSHOT_VERSION, 0xff, 0xff],
        ] {
            let mut chunks = VecChunks::from_bytes(&bytes);
            assert!(matches!(
                machine.restore(&mut chunks),
                Err(StateMachineError::Corrupt(_))
            ));
        }
    }

    #[test]
    fn the_metadata_group_holds_no_vshards() {
        let (mut machine, _) = MetadataStateMachine::new();
        assert!(machine.export_vshard(VShardId(3)).is_err());
        assert!(machine.import_vshard(VShardId(3), b"").is_err());
        assert!(machine.drop_vshard(VShardId(3)).is_err());
    }

    #[test]
    fn the_state_query_answers_the_whole_state() {
        let (mut machine, _) = MetadataStateMachine::new();
        apply(
            &mut machine,
            1,
            &encode_metadata_command(&bootstrap_command()),
        );
        let query = postcard::to_stdvec(&MetadataQuery::State).unwrap();
        let state = decode_metadata_state(&machine.query(&query).unwrap()).unwrap();
        assert_eq!(state, machine.state);
        assert!(machine.query(&[0xff]).is_err());
    }
}
