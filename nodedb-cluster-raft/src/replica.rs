//! The replicated state of one group replica: the engine's state plus the set of vShards
//! fenced in this group (moved or moving elsewhere). Both change only by applying the log and
//! both travel in snapshots: the first chunk of every snapshot is the [`ReplicaHeader`], the
//! engine's own chunks follow.

use crate::state_machine::{SnapshotChunks, StateMachine, StateMachineError};
use nodedb_cluster_core::VShardId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// Version of the [`ReplicaHeader`] encoding.
const HEADER_VERSION: u8 = 1;

/// An engine and the vShards its group refuses.
pub struct ReplicaState {
    pub engine: Box<dyn StateMachine>,
    fenced: BTreeSet<VShardId>,
}

/// The replica state shared between the apply path and local reads.
#[derive(Clone)]
pub struct SharedMachine(Arc<Mutex<ReplicaState>>);

/// What a snapshot carries besides the engine's chunks. Postcard, fields appended only.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ReplicaHeader {
    version: u8,
    fenced: Vec<VShardId>,
}

impl SharedMachine {
    pub fn new(engine: Box<dyn StateMachine>) -> SharedMachine {
        SharedMachine(Arc::new(Mutex::new(ReplicaState {
            engine,
            fenced: BTreeSet::new(),
        })))
    }

    /// Locks the replica. A poisoned lock means an engine call panicked: keep going with the
    /// state as it is, the replica's apply path will report the failure.
    pub fn lock(&self) -> MutexGuard<'_, ReplicaState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ReplicaState {
    pub fn is_fenced(&self, vshard: VShardId) -> bool {
        self.fenced.contains(&vshard)
    }

    pub fn fence(&mut self, vshard: VShardId) {
        self.fenced.insert(vshard);
    }

    pub fn unfence(&mut self, vshard: VShardId) {
        self.fenced.remove(&vshard);
    }

    /// Replaces the replica's data of `vshard` with an export of it.
    pub fn replace_vshard(
        &mut self,
        vshard: VShardId,
        data: &[u8],
    ) -> Result<(), StateMachineError> {
        self.engine.drop_vshard(vshard)?;
        self.engine.import_vshard(vshard, data)
    }

    /// The engine's hash mixed with the fenced set: equal on replicas at equal applied indexes.
    pub fn state_hash(&self) -> u64 {
        let mut hash = self.engine.state_hash();
        for vshard in &self.fenced {
            hash = (hash ^ u64::from(vshard.0)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }

    /// A snapshot source: the header chunk, then the engine's chunks.
    pub fn snapshot(&self) -> Result<Box<dyn SnapshotChunks>, StateMachineError> {
        let header = ReplicaHeader {
            version: HEADER_VERSION,
            fenced: self.fenced.iter().copied().collect(),
        };
        let header = postcard::to_stdvec(&header)
            .map_err(|error| StateMachineError::Corrupt(format!("replica header: {error}")))?;
        Ok(Box::new(WithHeader {
            header: Some(header),
            engine: self.engine.snapshot()?,
        }))
    }

    /// Restores from a snapshot made by [`ReplicaState::snapshot`].
    pub fn restore(&mut self, chunks: &mut dyn SnapshotChunks) -> Result<(), StateMachineError> {
        let header = chunks
            .next_chunk()?
            .ok_or_else(|| StateMachineError::Corrupt("snapshot without a header".to_string()))?;
        let header: ReplicaHeader = postcard::from_bytes(&header)
            .map_err(|error| StateMachineError::Corrupt(format!("replica header: {error}")))?;
        if header.version != HEADER_VERSION {
            return Err(StateMachineError::Corrupt(format!(
                "replica header version {} (this build reads {HEADER_VERSION})",
                header.version
            )));
        }
        self.engine.restore(chunks)?;
        self.fenced = header.fenced.into_iter().collect();
        Ok(())
    }
}

struct WithHeader {
    header: Option<Vec<u8>>,
    engine: Box<dyn SnapshotChunks>,
}

impl SnapshotChunks for WithHeader {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StateMachineError> {
        match self.header.take() {
            Some(header) => Ok(Some(header)),
            None => self.engine.next_chunk(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvCommand, KvStateMachine};
    use crate::state_machine::{Committed, LogIndex};

    struct List(std::vec::IntoIter<Vec<u8>>);

    impl List {
        fn new(chunks: Vec<Vec<u8>>) -> List {
            List(chunks.into_iter())
        }
    }

    impl SnapshotChunks for List {
        fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StateMachineError> {
            Ok(self.0.next())
        }
    }

    fn replica_with_key(key: &[u8]) -> ReplicaState {
        let mut engine = KvStateMachine::default();
        let command = KvCommand::Put {
            key: key.to_vec(),
            value: b"v".to_vec(),
        }
        .encode();
        engine
            .apply(&[Committed {
                index: LogIndex(1),
                command: &command,
            }])
            .unwrap();
        ReplicaState {
            engine: Box::new(engine),
            fenced: BTreeSet::new(),
        }
    }

    fn all_chunks(replica: &ReplicaState) -> Vec<Vec<u8>> {
        let mut chunks = replica.snapshot().unwrap();
        let mut all = Vec::new();
        while let Some(chunk) = chunks.next_chunk().unwrap() {
            all.push(chunk);
        }
        all
    }

    #[test]
    fn snapshots_carry_the_fenced_set() {
        let mut replica = replica_with_key(b"a");
        replica.fence(VShardId(7));
        replica.fence(VShardId(1000));
        let chunks = all_chunks(&replica);

        let mut restored = ReplicaState {
            engine: Box::new(KvStateMachine::default()),
            fenced: BTreeSet::new(),
        };
        restored.restore(&mut List::new(chunks)).unwrap();
        assert!(restored.is_fenced(VShardId(7)) && restored.is_fenced(VShardId(1000)));
        assert!(!restored.is_fenced(VShardId(8)));
        assert_eq!(restored.state_hash(), replica.state_hash());
    }

    #[test]
    fn the_fenced_set_is_part_of_the_state_hash() {
        let mut replica = replica_with_key(b"a");
        let open = replica.state_hash();
        replica.fence(VShardId(3));
        assert_ne!(replica.state_hash(), open);
        replica.unfence(VShardId(3));
        assert_eq!(replica.state_hash(), open);
    }

    #[test]
    fn a_snapshot_without_a_valid_header_is_refused() {
        let mut replica = replica_with_key(b"a");
        let empty = replica.restore(&mut List::new(vec![]));
        assert!(matches!(empty, Err(StateMachineError::Corrupt(_))));
        let future = postcard::to_stdvec(&ReplicaHeader {
            version: HEADER_VERSION + 1,
            fenced: vec![],
        })
        .unwrap();
        let refused = replica.restore(&mut List::new(vec![future]));
        assert!(matches!(refused, Err(StateMachineError::Corrupt(_))));
    }

    #[test]
    fn replacing_a_vshard_removes_keys_missing_from_the_export() {
        let mut replica = replica_with_key(b"gone");
        let vshard = nodedb_cluster_core::vshard_for_key(b"gone");
        let empty_export = KvStateMachine::default().export_vshard(vshard).unwrap();
        replica.replace_vshard(vshard, &empty_export).unwrap();
        assert_eq!(
            replica.engine.state_hash(),
            KvStateMachine::default().state_hash()
        );
    }
}
