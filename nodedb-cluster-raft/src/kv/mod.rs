//! The built-in replicated key-value engine: put, get, delete and compare-and-swap on bytes,
//! postcard-encoded commands and answers, snapshots, vShard export/import/drop and a state
//! hash. The node binary serves it over HTTP; the tests use it to exercise the replication.

use crate::state_machine::{
    Committed, SharedVShard, SnapshotChunks, StateMachine, StateMachineError, VShardDigest,
    VShardParts,
};
use crate::wire::decode_exact;
use nodedb_cluster_core::{VShardId, vshard_for_key};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

mod snapshot;

use snapshot::KvSnapshot;

/// Version byte in front of kv snapshots and vShard exports.
pub const KV_FORMAT_VERSION: u8 = 1;

/// A write to the key-value engine. Variants are appended, never reordered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Sets `key` to `new` when its current value equals `expected` (`None`: absent).
    Cas {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        new: Vec<u8>,
    },
}

/// The answer to a [`KvCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    Written,
    Deleted {
        existed: bool,
    },
    Cas {
        swapped: bool,
        #[serde(with = "serde_bytes")]
        current: Option<Vec<u8>>,
    },
    /// The command bytes did not decode; nothing changed (every replica agrees).
    BadCommand,
}

/// A read of the key-value engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvQuery {
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Number of keys (tests and status).
    Len,
}

/// The answer to a [`KvQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvAnswer {
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    Len(u64),
}

/// The in-memory key-value engine of one replica. Values are shared, so that a snapshot
/// copies only the maps, never the values, while it holds up the apply path. Entries are
/// held per vShard, so that exporting or dropping one (under the replica's lock, in the
/// apply path) takes the time of that vShard's entries, not of the whole group's.
#[derive(Clone, Debug, Default)]
pub struct KvStateMachine {
    /// Every vShard holding at least one key.
    vshards: BTreeMap<VShardId, VShardEntries>,
    /// Keys over all vShards.
    len: usize,
    /// The wrapping sum of [`entry_hash`] over all entries, following every change, so that
    /// the state hash costs nothing to ask for (it is asked under the replica's lock).
    entry_hash_sum: u64,
}

/// One vShard's keys, with its counts following every change of them.
#[derive(Clone, Debug, Default)]
struct VShardEntries {
    entries: BTreeMap<Vec<u8>, Value>,
    /// Key and value bytes.
    bytes: u64,
    /// The wrapping sum of [`entry_hash`] over `entries`: a dropped vShard leaves the state
    /// hash without hashing its values again.
    hash_sum: u64,
}

type Value = Arc<[u8]>;

/// One key and its value, borrowed from the map when written and from the bytes when read
/// (postcard writes it as the tuple of the two, byte strings in one go), so that an import
/// copies each value once, into the map.
#[derive(Serialize, Deserialize)]
struct KeyValueRef<'a>(
    #[serde(with = "serde_bytes", borrow)] &'a [u8],
    #[serde(with = "serde_bytes", borrow)] &'a [u8],
);

/// A vShard export or a snapshot: every key and value, keys ascending.
#[derive(Serialize, Deserialize)]
struct KvDataRef<'a> {
    version: u8,
    #[serde(borrow)]
    entries: Vec<KeyValueRef<'a>>,
}

impl KvCommand {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_else(|error| panic!("kv command encode: {error}"))
    }

    /// The command in `bytes`, accepted only in its one encoding (the Raft wire's exact
    /// decoding), so that the log entry and the command applied are one and the same.
    pub fn decode(bytes: &[u8]) -> Option<KvCommand> {
        decode_exact(bytes).ok()
    }
}

impl KvResponse {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_else(|error| panic!("kv response encode: {error}"))
    }

    pub fn decode(bytes: &[u8]) -> Option<KvResponse> {
        decode_exact(bytes).ok()
    }
}

impl KvQuery {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_else(|error| panic!("kv query encode: {error}"))
    }
}

impl KvAnswer {
    pub fn decode(bytes: &[u8]) -> Option<KvAnswer> {
        decode_exact(bytes).ok()
    }
}

impl KvStateMachine {
    pub fn new() -> KvStateMachine {
        KvStateMachine::default()
    }

    /// The current value of `key` on this replica.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.vshards
            .get(&vshard_for_key(key))?
            .entries
            .get(key)
            .map(|value| &**value)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, vShard by vShard (keys ascending within each).
    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Value)> {
        self.vshards
            .values()
            .flat_map(|vshard| vshard.entries.iter())
    }

    /// Sets `key` to `value`, counting the bytes and the hash of its vShard.
    fn insert(&mut self, key: Vec<u8>, value: Value) {
        let key_hash = crc32c::crc32c(&key);
        let mut added_hash = value_hash(key_hash, &value);
        let mut added_bytes = (key.len() + value.len()) as u64;
        let vshard = self.vshards.entry(vshard_for_key(&key)).or_default();
        let key_len = key.len() as u64;
        match vshard.entries.insert(key, value) {
            Some(old) => {
                added_hash = added_hash.wrapping_sub(value_hash(key_hash, &old));
                added_bytes = added_bytes.wrapping_sub(key_len + old.len() as u64);
            }
            None => self.len += 1,
        }
        vshard.bytes = vshard.bytes.wrapping_add(added_bytes);
        vshard.hash_sum = vshard.hash_sum.wrapping_add(added_hash);
        self.entry_hash_sum = self.entry_hash_sum.wrapping_add(added_hash);
    }

    /// Removes `key`; whether it was there.
    fn remove(&mut self, key: &[u8]) -> bool {
        let vshard_id = vshard_for_key(key);
        let Some(vshard) = self.vshards.get_mut(&vshard_id) else {
            return false;
        };
        let Some(value) = vshard.entries.remove(key) else {
            return false;
        };
        let hash = entry_hash(key, &value);
        vshard.bytes -= (key.len() + value.len()) as u64;
        vshard.hash_sum = vshard.hash_sum.wrapping_sub(hash);
        if vshard.entries.is_empty() {
            self.vshards.remove(&vshard_id);
        }
        self.len -= 1;
        self.entry_hash_sum = self.entry_hash_sum.wrapping_sub(hash);
        true
    }

    fn apply_one(&mut self, command: &[u8]) -> KvResponse {
        let Some(command) = KvCommand::decode(command) else {
            return KvResponse::BadCommand;
        };
        match command {
            KvCommand::Put { key, value } => {
                self.insert(key, value.into());
                KvResponse::Written
            }
            KvCommand::Delete { key } => KvResponse::Deleted {
                existed: self.remove(&key),
            },
            KvCommand::Cas { key, expected, new } => {
                let current = self.get(&key).map(<[u8]>::to_vec);
                if current == expected {
                    self.insert(key, new.as_slice().into());
                    KvResponse::Cas {
                        swapped: true,
                        current: Some(new),
                    }
                } else {
                    KvResponse::Cas {
                        swapped: false,
                        current,
                    }
                }
            }
        }
    }
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, batch: &[Committed<'_>]) -> Result<Vec<Vec<u8>>, StateMachineError> {
        Ok(batch
            .iter()
            .map(|committed| self.apply_one(committed.command).encode())
            .collect())
    }

    fn query(&self, query: &[u8]) -> Result<Vec<u8>, StateMachineError> {
        let query: KvQuery =
            decode_exact(query).map_err(|error| StateMachineError::BadQuery(error.to_string()))?;
        let answer = match query {
            KvQuery::Get { key } => KvAnswer::Value(self.get(&key).map(<[u8]>::to_vec)),
            KvQuery::Len => KvAnswer::Len(self.len as u64),
        };
        Ok(
            postcard::to_stdvec(&answer)
                .unwrap_or_else(|error| panic!("kv answer encode: {error}")),
        )
    }

    fn snapshot(&self) -> Result<Box<dyn SnapshotChunks>, StateMachineError> {
        // Only the maps are copied here; the encoding happens when the chunks are read, off
        // the apply path.
        Ok(Box::new(KvSnapshot::Captured(self.clone())))
    }

    fn restore(&mut self, chunks: &mut dyn SnapshotChunks) -> Result<(), StateMachineError> {
        *self = snapshot::restore(chunks)?;
        Ok(())
    }

    fn export_vshard(&self, vshard: VShardId) -> Result<Vec<u8>, StateMachineError> {
        let entries = self.vshards.get(&vshard).map(|vshard| &vshard.entries);
        Ok(encode_data(entries.into_iter().flatten()))
    }

    fn export_vshard_parts(
        &self,
        vshard: VShardId,
        part_bytes: usize,
    ) -> Result<VShardParts, StateMachineError> {
        // Values are shared: capturing them is cheap, and later applies replace, never change.
        let entries: Vec<(Vec<u8>, Value)> = self
            .vshards
            .get(&vshard)
            .map(|vshard| &vshard.entries)
            .into_iter()
            .flatten()
            .map(|(key, value)| (key.clone(), Arc::clone(value)))
            .collect();
        Ok(Box::new(ExportParts {
            entries: entries.into_iter().peekable(),
            part_bytes,
            yielded: false,
        }))
    }

    fn import_vshard(&mut self, vshard: VShardId, data: &[u8]) -> Result<(), StateMachineError> {
        let entries = decode_data(data)?;
        if let Some(KeyValueRef(key, _)) = entries
            .iter()
            .find(|KeyValueRef(key, _)| vshard_for_key(key) != vshard)
        {
            return Err(StateMachineError::Corrupt(format!(
                "key of {} in an export of {vshard}",
                vshard_for_key(key)
            )));
        }
        for (key, value) in shared(entries) {
            self.insert(key, value);
        }
        Ok(())
    }

    fn drop_vshard(&mut self, vshard: VShardId) -> Result<(), StateMachineError> {
        if let Some(dropped) = self.vshards.remove(&vshard) {
            self.len -= dropped.entries.len();
            self.entry_hash_sum = self.entry_hash_sum.wrapping_sub(dropped.hash_sum);
        }
        Ok(())
    }

    fn state_hash(&self) -> u64 {
        mix(self.entry_hash_sum ^ mix(self.len as u64))
    }

    fn vshard_bytes(&self) -> BTreeMap<VShardId, u64> {
        self.vshards
            .iter()
            .filter(|(_, entries)| entries.bytes > 0)
            .map(|(vshard, entries)| (*vshard, entries.bytes))
            .collect()
    }

    fn vshard_digest(&self, vshard: VShardId) -> Option<VShardDigest> {
        Some(match self.vshards.get(&vshard) {
            Some(entries) => VShardDigest {
                bytes: entries.bytes,
                entries: entries.entries.len() as u64,
                hash: mix(entries.hash_sum ^ mix(entries.entries.len() as u64)),
            },
            None => VShardDigest {
                bytes: 0,
                entries: 0,
                hash: 0,
            },
        })
    }

    /// The vShard's keys, copied, and its values, shared.
    fn share_vshard(&self, vshard: VShardId) -> Option<SharedVShard> {
        let entries = self.vshards.get(&vshard).cloned().unwrap_or_default();
        Some(Box::new(entries))
    }

    fn adopt_vshard(
        &mut self,
        vshard: VShardId,
        shared: SharedVShard,
    ) -> Result<(), StateMachineError> {
        let entries = shared.downcast::<VShardEntries>().map_err(|_| {
            StateMachineError::Corrupt(format!("{vshard} handed over by another kind of engine"))
        })?;
        if let Some(key) = entries
            .entries
            .keys()
            .find(|key| vshard_for_key(key) != vshard)
        {
            return Err(StateMachineError::Corrupt(format!(
                "key of {} handed over as {vshard}",
                vshard_for_key(key)
            )));
        }
        self.drop_vshard(vshard)?;
        if !entries.entries.is_empty() {
            self.len += entries.entries.len();
            self.entry_hash_sum = self.entry_hash_sum.wrapping_add(entries.hash_sum);
            self.vshards.insert(vshard, *entries);
        }
        Ok(())
    }
}

/// One entry's share of the state hash: CRC-32C of the key and of key and value together (the
/// CPU computes both at memory speed), mixed. The state hash sums the shares, so it follows
/// each change in the time of hashing that entry, in any order of changes.
fn entry_hash(key: &[u8], value: &[u8]) -> u64 {
    value_hash(crc32c::crc32c(key), value)
}

/// [`entry_hash`] from the key's CRC.
fn value_hash(key_hash: u32, value: &[u8]) -> u64 {
    let whole = crc32c::crc32c_append(key_hash, value);
    mix(u64::from(key_hash) << 32 | u64::from(whole))
}

/// The splitmix64 finalizer: spreads every input bit over the whole word.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A captured vShard, encoded part by part as it is read.
struct ExportParts {
    entries: std::iter::Peekable<std::vec::IntoIter<(Vec<u8>, Value)>>,
    part_bytes: usize,
    /// At least one part is yielded, empty for an empty vShard.
    yielded: bool,
}

impl Iterator for ExportParts {
    type Item = Result<Vec<u8>, StateMachineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut part = Vec::new();
        let mut size = 0;
        while let Some((key, value)) = self.entries.peek() {
            let entry_bytes = key.len() + value.len() + 2 * 10;
            if !part.is_empty() && size + entry_bytes > self.part_bytes {
                break;
            }
            size += entry_bytes;
            part.extend(self.entries.next());
        }
        if part.is_empty() && self.yielded {
            return None;
        }
        self.yielded = true;
        Some(Ok(encode_data(
            part.iter().map(|(key, value)| (key, value)),
        )))
    }
}

fn encode_data<'a>(entries: impl Iterator<Item = (&'a Vec<u8>, &'a Value)>) -> Vec<u8> {
    let data = KvDataRef {
        version: KV_FORMAT_VERSION,
        entries: entries
            .map(|(key, value)| KeyValueRef(key, value))
            .collect(),
    };
    crate::wire::encode(&data)
}

fn shared<'a>(entries: Vec<KeyValueRef<'a>>) -> impl Iterator<Item = (Vec<u8>, Value)> + 'a {
    entries
        .into_iter()
        .map(|KeyValueRef(key, value)| (key.to_vec(), Value::from(value)))
}

fn decode_data(bytes: &[u8]) -> Result<Vec<KeyValueRef<'_>>, StateMachineError> {
    let Some(&version) = bytes.first() else {
        return Err(StateMachineError::Corrupt("empty kv data".to_string()));
    };
    check_version(version)?;
    let data: KvDataRef<'_> =
        decode_exact(bytes).map_err(|error| StateMachineError::Corrupt(error.to_string()))?;
    for pair in data.entries.windows(2) {
        check_ascending(pair[0].0, pair[1].0)?;
    }
    Ok(data.entries)
}

/// Refuses kv data (an export or a snapshot) of a version this build does not write.
fn check_version(version: u8) -> Result<(), StateMachineError> {
    match version {
        KV_FORMAT_VERSION => Ok(()),
        other => Err(StateMachineError::Corrupt(format!(
            "kv data version {other}"
        ))),
    }
}

/// Refuses `key` after `previous` unless it is greater. kv data is written from sorted maps:
/// keys out of order or repeated are damage, and accepting them would give replicas whose
/// snapshots differ from the bytes they restored.
fn check_ascending(previous: &[u8], key: &[u8]) -> Result<(), StateMachineError> {
    if previous >= key {
        return Err(StateMachineError::Corrupt(format!(
            "kv data keys out of order or repeated: {previous:?} then {key:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::state_machine::{LogIndex, read_all_chunks};

    pub(crate) fn apply(machine: &mut KvStateMachine, command: KvCommand) -> KvResponse {
        let bytes = command.encode();
        let responses = machine
            .apply(&[Committed {
                index: LogIndex(1),
                command: &bytes,
            }])
            .unwrap();
        KvResponse::decode(&responses[0]).unwrap()
    }

    #[test]
    fn a_snapshot_holds_the_state_when_taken_even_if_read_later() {
        let mut machine = KvStateMachine::new();
        let put = |key: &[u8], value: &[u8]| KvCommand::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        apply(&mut machine, put(b"a", b"1"));
        apply(&mut machine, put(b"b", b"2"));
        let before = machine.clone();
        let mut chunks = machine.snapshot().unwrap();
        apply(&mut machine, put(b"a", b"changed"));
        apply(&mut machine, put(b"c", b"3"));
        let mut restored = KvStateMachine::new();
        restored.restore(chunks.as_mut()).unwrap();
        assert_eq!(restored.state_hash(), before.state_hash());
        assert_eq!(restored.get(b"a"), Some(&b"1"[..]));
        assert_eq!(restored.get(b"c"), None);
    }

    #[test]
    fn put_delete_cas() {
        let mut machine = KvStateMachine::new();
        let put = KvCommand::Put {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
        };
        assert_eq!(apply(&mut machine, put), KvResponse::Written);
        let cas = KvCommand::Cas {
            key: b"a".to_vec(),
            expected: None,
            new: b"2".to_vec(),
        };
        assert_eq!(
            apply(&mut machine, cas),
            KvResponse::Cas {
                swapped: false,
                current: Some(b"1".to_vec())
            }
        );
        let cas = KvCommand::Cas {
            key: b"a".to_vec(),
            expected: Some(b"1".to_vec()),
            new: b"2".to_vec(),
        };
        assert_eq!(
            apply(&mut machine, cas),
            KvResponse::Cas {
                swapped: true,
                current: Some(b"2".to_vec())
            }
        );
        assert_eq!(
            apply(&mut machine, KvCommand::Delete { key: b"a".to_vec() }),
            KvResponse::Deleted { existed: true }
        );
        let junk = machine
            .apply(&[Committed {
                index: LogIndex(2),
                command: &[0xff, 0xff],
            }])
            .unwrap();
        assert_eq!(KvResponse::decode(&junk[0]), Some(KvResponse::BadCommand));
    }

    #[test]
    fn a_vshard_exports_in_parts_that_import_to_the_whole() {
        let mut machine = KvStateMachine::new();
        let vshard = vshard_for_key(b"part-0");
        let keys: Vec<Vec<u8>> = (0u32..)
            .map(|i| format!("part-{i}").into_bytes())
            .filter(|key| vshard_for_key(key) == vshard)
            .take(12)
            .collect();
        for key in &keys {
            let value = vec![7; 1000];
            apply(
                &mut machine,
                KvCommand::Put {
                    key: key.clone(),
                    value,
                },
            );
        }
        let parts: Vec<Vec<u8>> = machine
            .export_vshard_parts(vshard, 3000)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(parts.len() >= 4, "{} parts", parts.len());
        assert!(parts.iter().all(|part| part.len() <= 3000 + 64));
        let mut imported = KvStateMachine::new();
        for part in &parts {
            imported.import_vshard(vshard, part).unwrap();
        }
        assert_eq!(imported.state_hash(), machine.state_hash());
        let empty: Vec<Vec<u8>> = KvStateMachine::new()
            .export_vshard_parts(vshard, 3000)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(empty.len(), 1, "an empty vShard is one empty part");
        KvStateMachine::new()
            .import_vshard(vshard, &empty[0])
            .unwrap();
    }

    #[test]
    fn snapshot_and_vshard_round_trip() {
        let mut machine = KvStateMachine::new();
        for i in 0..200u32 {
            let key = format!("key-{i}").into_bytes();
            apply(
                &mut machine,
                KvCommand::Put {
                    key,
                    value: i.to_le_bytes().to_vec(),
                },
            );
        }
        let mut restored = KvStateMachine::new();
        restored
            .restore(machine.snapshot().unwrap().as_mut())
            .unwrap();
        assert_eq!(restored.state_hash(), machine.state_hash());

        let vshard = vshard_for_key(b"key-7");
        let exported = machine.export_vshard(vshard).unwrap();
        machine.drop_vshard(vshard).unwrap();
        assert_eq!(machine.get(b"key-7"), None);
        assert!(
            machine
                .import_vshard(VShardId((vshard.0 + 1) % 1024), &exported)
                .is_err()
        );
        machine.import_vshard(vshard, &exported).unwrap();
        assert_eq!(machine.state_hash(), restored.state_hash());
        assert!(machine.import_vshard(vshard, &[9, 9, 9]).is_err());
    }

    /// Key and value bytes per vShard, counted from scratch.
    fn counted(machine: &KvStateMachine) -> BTreeMap<VShardId, u64> {
        let mut counts = BTreeMap::new();
        for (key, value) in machine.iter() {
            *counts.entry(vshard_for_key(key)).or_default() += (key.len() + value.len()) as u64;
        }
        counts
    }

    /// The state hash computed from scratch.
    fn hashed(machine: &KvStateMachine) -> u64 {
        let sum = machine.iter().fold(0u64, |sum, (key, value)| {
            sum.wrapping_add(entry_hash(key, value))
        });
        mix(sum ^ mix(machine.iter().count() as u64))
    }

    #[test]
    fn the_state_hash_is_the_same_whatever_the_order_of_changes() {
        let puts = |order: &mut dyn Iterator<Item = u32>| {
            let mut machine = KvStateMachine::new();
            for i in order {
                let key = format!("k{i}").into_bytes();
                apply(
                    &mut machine,
                    KvCommand::Put {
                        key,
                        value: vec![i as u8; 3],
                    },
                );
            }
            machine
        };
        let forward = puts(&mut (0..50));
        let backward = puts(&mut (0..50).rev());
        assert_eq!(forward.state_hash(), backward.state_hash());
        let mut changed = forward.clone();
        let value = vec![9; 3];
        apply(
            &mut changed,
            KvCommand::Put {
                key: b"k7".to_vec(),
                value,
            },
        );
        assert_ne!(changed.state_hash(), forward.state_hash());
        let mut moved = forward.clone();
        apply(
            &mut moved,
            KvCommand::Delete {
                key: b"k7".to_vec(),
            },
        );
        let value = vec![7; 3];
        apply(
            &mut moved,
            KvCommand::Put {
                key: b"k7x".to_vec(),
                value,
            },
        );
        assert_ne!(moved.state_hash(), forward.state_hash());
        assert_ne!(KvStateMachine::new().state_hash(), forward.state_hash());
    }

    #[test]
    fn vshard_bytes_and_the_state_hash_follow_every_change() {
        let mut machine = KvStateMachine::new();
        for i in 0..300u32 {
            let key = format!("size-{i}").into_bytes();
            let value = vec![1; (i % 50) as usize];
            apply(&mut machine, KvCommand::Put { key, value });
        }
        let overwrite = KvCommand::Put {
            key: b"size-3".to_vec(),
            value: vec![2; 500],
        };
        apply(&mut machine, overwrite);
        let swap = KvCommand::Cas {
            key: b"size-4".to_vec(),
            expected: Some(vec![1; 4]),
            new: vec![3; 90],
        };
        apply(&mut machine, swap);
        for i in 100..200u32 {
            let key = format!("size-{i}").into_bytes();
            apply(&mut machine, KvCommand::Delete { key });
        }
        assert_eq!(machine.vshard_bytes(), counted(&machine));
        assert_eq!(machine.state_hash(), hashed(&machine));
        assert!(machine.vshard_bytes().values().all(|bytes| *bytes > 0));

        let vshard = vshard_for_key(b"size-3");
        let exported = machine.export_vshard(vshard).unwrap();
        machine.drop_vshard(vshard).unwrap();
        assert!(!machine.vshard_bytes().contains_key(&vshard));
        assert_eq!(machine.state_hash(), hashed(&machine));
        machine.import_vshard(vshard, &exported).unwrap();
        assert_eq!(machine.vshard_bytes(), counted(&machine));
        assert_eq!(machine.state_hash(), hashed(&machine));

        let mut restored = KvStateMachine::new();
        apply(
            &mut restored,
            KvCommand::Put {
                key: b"gone".to_vec(),
                value: b"x".to_vec(),
            },
        );
        restored
            .restore(machine.snapshot().unwrap().as_mut())
            .unwrap();
        assert_eq!(restored.vshard_bytes(), machine.vshard_bytes());
        assert_eq!(restored.state_hash(), hashed(&restored));
        assert_eq!(restored.state_hash(), machine.state_hash());
    }

    #[test]
    fn a_vshard_handed_to_a_sibling_equals_an_imported_one() {
        let mut source = KvStateMachine::new();
        for i in 0..2_000u32 {
            let key = format!("hand-{i}").into_bytes();
            let value = vec![i as u8; (i % 70) as usize];
            apply(&mut source, KvCommand::Put { key, value });
        }
        let vshard = vshard_for_key(b"hand-7");
        let digest = source.vshard_digest(vshard).unwrap();
        assert_eq!(digest.bytes, source.vshard_bytes()[&vshard]);
        let exported = source.export_vshard(vshard).unwrap();
        let shared = source.share_vshard(vshard).unwrap();
        // Changes of the source after the handover do not reach the shared data.
        apply(
            &mut source,
            KvCommand::Delete {
                key: b"hand-7".to_vec(),
            },
        );
        assert_ne!(source.vshard_digest(vshard), Some(digest));

        let stale = KvCommand::Put {
            key: b"hand-7".to_vec(),
            value: b"stale".to_vec(),
        };
        let (mut adopted, mut imported) = (KvStateMachine::new(), KvStateMachine::new());
        apply(&mut adopted, stale.clone());
        adopted.adopt_vshard(vshard, shared).unwrap();
        apply(&mut imported, stale);
        imported.drop_vshard(vshard).unwrap();
        imported.import_vshard(vshard, &exported).unwrap();
        assert_eq!(adopted.vshard_digest(vshard), Some(digest));
        assert_eq!(imported.vshard_digest(vshard), Some(digest));
        assert_eq!(adopted.state_hash(), imported.state_hash());
        assert_eq!(adopted.state_hash(), hashed(&adopted));
        assert_eq!(adopted.vshard_bytes(), counted(&adopted));
        assert_eq!(
            KvStateMachine::new().vshard_digest(vshard),
            Some(VShardDigest {
                bytes: 0,
                entries: 0,
                hash: 0
            })
        );
    }

    #[test]
    fn a_handover_of_another_vshard_or_engine_is_refused() {
        let mut source = KvStateMachine::new();
        apply(
            &mut source,
            KvCommand::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
        );
        let vshard = vshard_for_key(b"k");
        let other = VShardId((vshard.0 + 1) % nodedb_cluster_core::VSHARD_COUNT);
        let mut target = KvStateMachine::new();
        let wrong_vshard = target.adopt_vshard(other, source.share_vshard(vshard).unwrap());
        assert!(matches!(wrong_vshard, Err(StateMachineError::Corrupt(_))));
        let wrong_kind = target.adopt_vshard(vshard, Box::new(42u32));
        assert!(matches!(wrong_kind, Err(StateMachineError::Corrupt(_))));
        assert_eq!(target.state_hash(), KvStateMachine::new().state_hash());
    }

    #[test]
    fn dropping_a_vshard_leaves_the_state_of_a_machine_that_never_held_it() {
        let dropped = vshard_for_key(b"key-0");
        let mut machine = KvStateMachine::new();
        let mut without = KvStateMachine::new();
        let (mut in_dropped, mut elsewhere) = (0, 0);
        for i in 0..100_000u32 {
            let key = format!("key-{i}").into_bytes();
            let here = vshard_for_key(&key) == dropped;
            if (here && in_dropped == 5) || (!here && elsewhere == 300) {
                continue;
            }
            let put = KvCommand::Put {
                key,
                value: vec![i as u8; (i % 40) as usize],
            };
            apply(&mut machine, put.clone());
            if here {
                in_dropped += 1;
            } else {
                apply(&mut without, put);
                elsewhere += 1;
            }
        }
        assert_eq!((in_dropped, elsewhere), (5, 300));

        machine.drop_vshard(dropped).unwrap();

        assert_eq!(machine.get(b"key-0"), None);
        assert_eq!(machine.len(), without.len());
        assert_eq!(machine.vshard_bytes(), without.vshard_bytes());
        assert_eq!(machine.state_hash(), without.state_hash());
        assert_eq!(machine.state_hash(), hashed(&machine));
        let snapshot = |machine: &KvStateMachine| {
            read_all_chunks(machine.snapshot().unwrap().as_mut(), u64::MAX).unwrap()
        };
        assert_eq!(snapshot(&machine), snapshot(&without));
        assert!(
            machine.drop_vshard(dropped).is_ok(),
            "dropping it again is a no-op"
        );
        assert_eq!(machine.state_hash(), without.state_hash());
    }

    #[test]
    fn command_layout_is_pinned() {
        let put = KvCommand::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        assert_eq!(put.encode(), vec![0, 1, b'k', 1, b'v']);
        let cas = KvCommand::Cas {
            key: b"k".to_vec(),
            expected: None,
            new: b"n".to_vec(),
        };
        assert_eq!(cas.encode(), vec![2, 1, b'k', 0, 1, b'n']);
    }

    #[test]
    fn data_layout_is_pinned() {
        let (key, value) = (b"k".to_vec(), Value::from(&b"vv"[..]));
        let bytes = encode_data([(&key, &value)].into_iter());
        assert_eq!(bytes, vec![KV_FORMAT_VERSION, 1, 1, b'k', 2, b'v', b'v']);
        let decoded = decode_data(&bytes).unwrap();
        assert_eq!((decoded[0].0, decoded[0].1), (&key[..], &b"vv"[..]));
    }
}
