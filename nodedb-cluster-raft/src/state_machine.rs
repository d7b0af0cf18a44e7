//! The [`StateMachine`] trait: what a NodeDB engine implements to be replicated by a group.
//!
//! The engine sees committed entries in log order, answers read-only queries, streams its state
//! out as a snapshot and back in, and moves single vShards for migrations. It never sees Raft
//! terms, votes or membership: the replication layer owns those.

use nodedb_cluster_core::VShardId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest chunk a [`SnapshotChunks`] source may yield. Larger chunks are refused.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1024 * 1024;

/// Position of an entry in its group's log: 1-based and increasing across applies (commands
/// replayed by a migration share the index of the entry that carries them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogIndex(pub u64);

/// One committed command, handed to [`StateMachine::apply`].
#[derive(Clone, Copy, Debug)]
pub struct Committed<'a> {
    pub index: LogIndex,
    pub command: &'a [u8],
}

/// A failure of the engine itself (its storage, a corrupted snapshot). Not a rejected command:
/// a command that the engine refuses (a failed CAS, a bad key) is a normal response encoded in
/// the response bytes, because every replica must reach the same verdict.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// The engine's storage failed. The replica stops; the operator must look at it.
    #[error("state machine storage failed: {0}")]
    Storage(String),
    /// Snapshot or vShard bytes do not decode. The sender may retry with a fresh snapshot.
    #[error("corrupt state data: {0}")]
    Corrupt(String),
    /// A query's bytes do not decode as a query of this engine.
    #[error("bad query: {0}")]
    BadQuery(String),
}

/// A point-in-time source of snapshot chunks. Produced by [`StateMachine::snapshot`] and
/// consumed by [`StateMachine::restore`]; each chunk is at most [`SNAPSHOT_CHUNK_BYTES_MAX`].
pub trait SnapshotChunks: Send {
    /// The next chunk, or `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StateMachineError>;
}

/// The parts of one vShard's export, in order (see [`StateMachine::export_vshard_parts`]).
pub type VShardParts = Box<dyn Iterator<Item = Result<Vec<u8>, StateMachineError>> + Send>;

/// One vShard's data handed from an engine to a sibling engine of the same kind on the same
/// node (see [`StateMachine::share_vshard`]); only that kind of engine knows what is inside.
pub type SharedVShard = Box<dyn std::any::Any + Send>;

/// What one vShard holds, in brief: replicas holding the same data of the vShard report the
/// same digest, and a replica that took the vShard from elsewhere checks it against the
/// source's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VShardDigest {
    /// Bytes of data held (as [`StateMachine::vshard_bytes`] counts them).
    pub bytes: u64,
    /// Entries held (keys, rows: what sharing the vShard walks over).
    pub entries: u64,
    /// A hash of every key and value of the vShard; 0 for an empty vShard.
    pub hash: u64,
}

/// A replicated engine. One instance per group replica; the replication layer calls it from
/// one task at a time, so `&mut self` methods never run concurrently with each other.
///
/// Contract:
/// - `apply` is deterministic: the same entries on the same state give the same responses and
///   the same next state on every replica (no clocks, no randomness, no local configuration).
/// - The engine may keep its state in memory only. After a restart the replication layer
///   restores the last snapshot with [`StateMachine::restore`] and re-applies the log after it.
/// - [`StateMachine::state_hash`] covers all replicated state and nothing local, so replicas
///   that applied the same log prefix report the same hash.
/// - A command proposed for a vShard reads and writes only that vShard's data. A migration
///   relies on it: it replays the commands that the source applied after exporting the vShard
///   on the target's copy of that export.
pub trait StateMachine: Send + 'static {
    /// Applies a batch of committed commands in log order and returns one response per
    /// command, in the same order. An `Err` stops this replica (storage failure), so refused
    /// commands must be encoded in the response instead.
    fn apply(&mut self, batch: &[Committed<'_>]) -> Result<Vec<Vec<u8>>, StateMachineError>;

    /// Answers a read-only query against the current state. Linearizable when the caller
    /// passed a read barrier first.
    fn query(&self, query: &[u8]) -> Result<Vec<u8>, StateMachineError>;

    /// Captures the current state as an owned chunk source. The source must not change when
    /// later entries are applied (copy, copy-on-write, or an engine snapshot handle).
    fn snapshot(&self) -> Result<Box<dyn SnapshotChunks>, StateMachineError>;

    /// Replaces the whole state with the snapshot read from `chunks`.
    fn restore(&mut self, chunks: &mut dyn SnapshotChunks) -> Result<(), StateMachineError>;

    /// The data of one vShard, in a form [`StateMachine::import_vshard`] accepts.
    fn export_vshard(&self, vshard: VShardId) -> Result<Vec<u8>, StateMachineError>;

    /// The data of one vShard split into parts of about `part_bytes` or less (a single larger
    /// item may exceed it), each of which [`StateMachine::import_vshard`] accepts on its own;
    /// importing all of them in order equals importing the whole export. At least one part,
    /// empty for an empty vShard. Migrations replicate each part as its own log entry, so that
    /// no entry is too large to replicate within a heartbeat.
    ///
    /// This call holds the replica while it runs, so it should only capture the vShard's
    /// current state (cheaply: shared values, copy-on-write, an engine snapshot); the parts
    /// are produced by the returned iterator after the replica is released, and must not
    /// change when later entries are applied. The default exports everything in this call,
    /// as one part.
    fn export_vshard_parts(
        &self,
        vshard: VShardId,
        part_bytes: usize,
    ) -> Result<VShardParts, StateMachineError> {
        let _ = part_bytes;
        let whole = self.export_vshard(vshard)?;
        Ok(Box::new(std::iter::once(Ok(whole))))
    }

    /// Adds the exported data of `vshard` (replicated through the log, applied in order). The
    /// replication layer drops the vShard first, so the engine holds none of it when called.
    fn import_vshard(&mut self, vshard: VShardId, data: &[u8]) -> Result<(), StateMachineError>;

    /// Removes every key of `vshard` (replicated through the log, applied in order).
    fn drop_vshard(&mut self, vshard: VShardId) -> Result<(), StateMachineError>;

    /// A hash of the replicated state, equal across replicas at the same applied index. It is
    /// asked for under the replica's lock (every `GET /v1/cluster` asks for each replica's),
    /// so it should be cheap: kept up to date as entries apply rather than computed over the
    /// whole state.
    fn state_hash(&self) -> u64;

    /// Bytes of data held per vShard (vShards holding none may be left out), kept up to date
    /// as entries apply so that asking is cheap; automatic rebalancing compares groups by it.
    /// The default, for engines that do not count, is empty: such groups look empty.
    fn vshard_bytes(&self) -> BTreeMap<VShardId, u64> {
        BTreeMap::new()
    }

    /// The digest of one vShard's data, kept up to date as entries apply so that asking is
    /// cheap. `None` (the default) for engines that keep none: their vShards then always
    /// move through the target's log, never by [`StateMachine::share_vshard`].
    fn vshard_digest(&self, vshard: VShardId) -> Option<VShardDigest> {
        let _ = vshard;
        None
    }

    /// The vShard's current data as a value that [`StateMachine::adopt_vshard`] of another
    /// engine of the same kind on this node accepts, sharing rather than copying what it can
    /// (it is taken under the replica's lock). It must not change when later entries are
    /// applied here. `None` (the default): not supported.
    fn share_vshard(&self, vshard: VShardId) -> Option<SharedVShard> {
        let _ = vshard;
        None
    }

    /// Takes `shared`, made by [`StateMachine::share_vshard`] of a sibling engine, as the
    /// data of `vshard`. The replication layer drops the vShard first and checks the
    /// vShard's digest after. The default refuses, as does an engine given a value of
    /// another kind.
    fn adopt_vshard(
        &mut self,
        vshard: VShardId,
        shared: SharedVShard,
    ) -> Result<(), StateMachineError> {
        let _ = shared;
        Err(StateMachineError::Corrupt(format!(
            "this engine cannot adopt {vshard} from another engine"
        )))
    }
}

/// A [`SnapshotChunks`] over an in-memory list of chunks; handy for engines that serialize
/// their state at once.
#[derive(Debug)]
pub struct VecChunks {
    chunks: std::vec::IntoIter<Vec<u8>>,
}

impl VecChunks {
    /// Splits `bytes` into chunks of at most [`SNAPSHOT_CHUNK_BYTES_MAX`].
    pub fn from_bytes(bytes: &[u8]) -> VecChunks {
        let chunks: Vec<Vec<u8>> = bytes
            .chunks(SNAPSHOT_CHUNK_BYTES_MAX)
            .map(<[u8]>::to_vec)
            .collect();
        VecChunks::from(chunks)
    }
}

impl From<Vec<Vec<u8>>> for VecChunks {
    /// These very chunks, in order.
    fn from(chunks: Vec<Vec<u8>>) -> VecChunks {
        VecChunks {
            chunks: chunks.into_iter(),
        }
    }
}

impl SnapshotChunks for VecChunks {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StateMachineError> {
        Ok(self.chunks.next())
    }
}

/// Reads every chunk of `chunks` into one buffer, refusing more than `bytes_max`.
pub fn read_all_chunks(
    chunks: &mut dyn SnapshotChunks,
    bytes_max: u64,
) -> Result<Vec<u8>, StateMachineError> {
    let mut out = Vec::new();
    while let Some(chunk) = chunks.next_chunk()? {
        if out.len() as u64 + chunk.len() as u64 > bytes_max {
            return Err(StateMachineError::Corrupt(format!(
                "snapshot larger than {bytes_max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
