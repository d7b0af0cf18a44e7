//! The replicated state of one group replica: the engine's state plus the group's claim on
//! each vShard a migration touched (see `claims.rs`). Both change only by applying the log and
//! both travel in snapshots: the first chunk of every snapshot is the [`ReplicaHeader`], the
//! engine's own chunks follow.

use crate::claims::{DataChange, VShardClaim, VShardStep};
use crate::state_machine::{
    Committed, LogIndex, SharedVShard, SnapshotChunks, StateMachine, StateMachineError,
};
use crate::vshard_copy::decode_replayed_commands;
use bytes::Bytes;
use nodedb_cluster_core::{MigrationId, VShardId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The data a [`VShardStep::Handover`] takes from the source group.
pub enum HandedData {
    /// Shared by the source's replica on this node (`StateMachine::share_vshard`).
    Shared(SharedVShard),
    /// An export of the source's vShard, in parts (`StateMachine::export_vshard_parts`).
    Parts(Vec<Bytes>),
}

/// Version of the [`ReplicaHeader`] encoding.
const HEADER_VERSION: u8 = 1;

/// An engine and the group's claims on vShards.
pub struct ReplicaState {
    pub engine: Box<dyn StateMachine>,
    /// Only vShards a migration touched; every other vShard is [`VShardClaim::UNCLAIMED`].
    claims: BTreeMap<VShardId, VShardClaim>,
    /// The last log entry whose effect the state holds (entries that change nothing, such as
    /// membership changes, may follow it). A vShard export taken now holds exactly the
    /// entries up to this one.
    applied: LogIndex,
}

/// The replica state shared between the apply path and local reads.
#[derive(Clone)]
pub struct SharedMachine(Arc<Mutex<ReplicaState>>);

/// What a snapshot carries besides the engine's chunks. Postcard, fields appended only.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ReplicaHeader {
    version: u8,
    claims: Vec<(VShardId, VShardClaim)>,
}

impl SharedMachine {
    pub fn new(engine: Box<dyn StateMachine>) -> SharedMachine {
        SharedMachine(Arc::new(Mutex::new(ReplicaState {
            engine,
            claims: BTreeMap::new(),
            applied: LogIndex(0),
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
    pub fn claim(&self, vshard: VShardId) -> VShardClaim {
        self.claims
            .get(&vshard)
            .copied()
            .unwrap_or(VShardClaim::UNCLAIMED)
    }

    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// Records that the state now holds every entry up to `index` (after applying it, or
    /// after restoring a snapshot taken there).
    pub fn set_applied(&mut self, index: LogIndex) {
        self.applied = index;
    }

    /// Applies one migration step, carried by the entry at `index`; `Ok(None)` when the
    /// vShard's claim refuses it (a later step already happened), otherwise the new claim.
    pub fn apply_step(
        &mut self,
        index: LogIndex,
        vshard: VShardId,
        migration: MigrationId,
        step: VShardStep,
        data: &[u8],
    ) -> Result<Option<VShardClaim>, StateMachineError> {
        self.applied = index;
        let Some((next, change)) = step.apply(self.claim(vshard), migration) else {
            return Ok(None);
        };
        match change {
            DataChange::None => {}
            DataChange::Replace => {
                self.engine.drop_vshard(vshard)?;
                self.engine.import_vshard(vshard, data)?;
            }
            DataChange::Add => self.engine.import_vshard(vshard, data)?,
            DataChange::Delete => self.engine.drop_vshard(vshard)?,
            DataChange::Handover => {
                return Err(StateMachineError::Storage(format!(
                    "the handover of {vshard} in {migration} was applied without its data"
                )));
            }
            DataChange::Replay => {
                let commands = decode_replayed_commands(data)?;
                let batch: Vec<Committed<'_>> = commands
                    .iter()
                    .map(|command| Committed { index, command })
                    .collect();
                // The responses were given by the source when the commands were first applied.
                self.engine.apply(&batch)?;
            }
        }
        self.claims.insert(vshard, next);
        Ok(Some(next))
    }

    /// Whether `step` of `migration` would take the vShard's data from its source: its data
    /// must then be found first and handed to [`ReplicaState::apply_handover`].
    pub fn takes_handover(
        &self,
        vshard: VShardId,
        migration: MigrationId,
        step: VShardStep,
    ) -> bool {
        matches!(
            step.apply(self.claim(vshard), migration),
            Some((_, DataChange::Handover))
        )
    }

    /// Applies the [`VShardStep::Handover`] carried by the entry at `index` with the vShard's
    /// data: the data replaces the vShard's, and the vShard is served once its digest equals
    /// the step's. Otherwise (the data is not the source's at its fence, or not the engine's
    /// kind) the claim stays as it was, the vShard holds no data and the reason is returned:
    /// the caller finds the data elsewhere and tries again.
    pub fn apply_handover(
        &mut self,
        index: LogIndex,
        vshard: VShardId,
        migration: MigrationId,
        step: VShardStep,
        data: HandedData,
    ) -> Result<VShardClaim, String> {
        let VShardStep::Handover { digest, .. } = step else {
            return Err(format!("{step:?} is not a handover"));
        };
        let Some((next, DataChange::Handover)) = step.apply(self.claim(vshard), migration) else {
            return Err(format!("{vshard} is {}: no handover", self.claim(vshard)));
        };
        let placed = self.engine.drop_vshard(vshard).and_then(|()| match data {
            HandedData::Shared(shared) => self.engine.adopt_vshard(vshard, shared),
            HandedData::Parts(parts) => parts
                .iter()
                .try_for_each(|part| self.engine.import_vshard(vshard, part)),
        });
        let held = self.engine.vshard_digest(vshard);
        if let Err(error) = placed
            .map_err(|error| error.to_string())
            .and_then(|()| match held {
                Some(held) if held == digest => Ok(()),
                _ => Err(format!(
                    "{vshard} holds {held:?}, its source held {digest:?}"
                )),
            })
        {
            // Whatever came in is not the source's data: leave none of it.
            let _ = self.engine.drop_vshard(vshard);
            return Err(error);
        }
        self.applied = index;
        self.claims.insert(vshard, next);
        Ok(next)
    }

    /// The engine's hash mixed with the claims: equal on replicas at equal applied indexes.
    pub fn state_hash(&self) -> u64 {
        let mut hash = self.engine.state_hash();
        let mut mix = |value: u64| hash = (hash ^ value).wrapping_mul(0x0000_0100_0000_01b3);
        for (vshard, claim) in &self.claims {
            let (tag, migration, copy) = match claim {
                VShardClaim::Serving(id) => (1, id, (0, 0)),
                VShardClaim::Importing(id, copy) => (2, id, (copy.fence_index, copy.nonce)),
                VShardClaim::Fenced(id) => (3, id, (0, 0)),
                VShardClaim::Handed(id) => (4, id, (0, 0)),
            };
            mix(u64::from(vshard.0));
            mix(tag);
            mix(migration.0);
            mix(copy.0);
            mix(copy.1);
        }
        hash
    }

    /// A snapshot source: the header chunk, then the engine's chunks.
    pub fn snapshot(&self) -> Result<Box<dyn SnapshotChunks>, StateMachineError> {
        let header = ReplicaHeader {
            version: HEADER_VERSION,
            claims: self
                .claims
                .iter()
                .map(|(vshard, claim)| (*vshard, *claim))
                .collect(),
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
        self.claims = header.claims.into_iter().collect();
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
    use crate::state_machine::{Committed, LogIndex, VecChunks};

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
            claims: BTreeMap::new(),
            applied: LogIndex(1),
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

    const M1: MigrationId = MigrationId(1);
    const AT: LogIndex = LogIndex(2);
    const COPY: crate::claims::CopyId = crate::claims::CopyId {
        fence_index: 0,
        nonce: 9,
    };

    #[test]
    fn snapshots_carry_the_claims() {
        let mut replica = replica_with_key(b"a");
        replica
            .apply_step(AT, VShardId(7), M1, VShardStep::Fence, &[])
            .unwrap();
        replica
            .apply_step(AT, VShardId(1000), M1, VShardStep::Fence, &[])
            .unwrap();
        let chunks = all_chunks(&replica);

        let mut restored = ReplicaState {
            engine: Box::new(KvStateMachine::default()),
            claims: BTreeMap::new(),
            applied: LogIndex(0),
        };
        restored.restore(&mut VecChunks::from(chunks)).unwrap();
        assert_eq!(restored.claim(VShardId(7)), VShardClaim::Fenced(M1));
        assert_eq!(restored.claim(VShardId(8)), VShardClaim::UNCLAIMED);
        assert_eq!(restored.state_hash(), replica.state_hash());
    }

    #[test]
    fn the_claims_are_part_of_the_state_hash() {
        let mut replica = replica_with_key(b"a");
        let open = replica.state_hash();
        replica
            .apply_step(AT, VShardId(3), M1, VShardStep::Fence, &[])
            .unwrap();
        assert_ne!(replica.state_hash(), open);
    }

    #[test]
    fn refused_steps_change_nothing() {
        let mut replica = replica_with_key(b"a");
        let before = replica.state_hash();
        let refused = replica
            .apply_step(AT, VShardId(3), M1, VShardStep::Drop, &[])
            .unwrap();
        assert_eq!(refused, None);
        assert_eq!(replica.state_hash(), before);
    }

    #[test]
    fn a_snapshot_without_a_valid_header_is_refused() {
        let mut replica = replica_with_key(b"a");
        let empty = replica.restore(&mut VecChunks::from(vec![]));
        assert!(matches!(empty, Err(StateMachineError::Corrupt(_))));
        let future = postcard::to_stdvec(&ReplicaHeader {
            version: HEADER_VERSION + 1,
            claims: vec![],
        })
        .unwrap();
        let refused = replica.restore(&mut VecChunks::from(vec![future]));
        assert!(matches!(refused, Err(StateMachineError::Corrupt(_))));
    }

    #[test]
    fn an_import_replaces_the_vshard_and_drops_keys_missing_from_the_export() {
        let mut replica = replica_with_key(b"gone");
        let vshard = nodedb_cluster_core::vshard_for_key(b"gone");
        let empty_export = KvStateMachine::default().export_vshard(vshard).unwrap();
        replica
            .apply_step(AT, vshard, M1, VShardStep::Import(COPY), &empty_export)
            .unwrap();
        assert_eq!(
            replica.engine.state_hash(),
            KvStateMachine::default().state_hash()
        );
    }
}
