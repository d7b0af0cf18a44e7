//! KV snapshots: written chunk by chunk from a captured state, restored entry by entry as
//! the chunks are read, so that neither side holds the snapshot's bytes at once. The bytes are
//! [`encode_data`](super::encode_data) over every entry, keys ascending.

use super::{
    KV_FORMAT_VERSION, KeyValueRef, KvStateMachine, Value, check_ascending, check_version,
};
use crate::state_machine::{SNAPSHOT_CHUNK_BYTES_MAX, SnapshotChunks, StateMachineError};
use crate::wire::{TakeError, encode_onto, take_exact};

/// A snapshot of the maps as they were, encoded chunk by chunk as it is read: the bytes of
/// [`encode_data`] over every entry, keys ascending, without ever holding them all.
pub(super) enum KvSnapshot {
    Captured(KvStateMachine),
    Encoding {
        entries: std::vec::IntoIter<(Vec<u8>, Value)>,
        /// Encoded and not yet read: the data's header, then whole entries.
        pending: Vec<u8>,
    },
}

impl SnapshotChunks for KvSnapshot {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StateMachineError> {
        if let KvSnapshot::Captured(machine) = self {
            let machine = std::mem::take(machine);
            *self = KvSnapshot::encoding(machine);
        }
        let KvSnapshot::Encoding { entries, pending } = self else {
            unreachable!("a captured snapshot was just turned into its encoding");
        };
        while pending.len() < SNAPSHOT_CHUNK_BYTES_MAX {
            let Some((key, value)) = entries.next() else {
                break;
            };
            encode_onto(pending, &KeyValueRef(&key, &value));
        }
        if pending.is_empty() {
            return Ok(None);
        }
        let rest = pending.split_off(pending.len().min(SNAPSHOT_CHUNK_BYTES_MAX));
        Ok(Some(std::mem::replace(pending, rest)))
    }
}

impl KvSnapshot {
    /// Starts the encoding of `machine`: postcard writes the data as its version, the number
    /// of entries and then each entry, so the entries can follow one by one.
    fn encoding(machine: KvStateMachine) -> KvSnapshot {
        let mut entries: Vec<(Vec<u8>, Value)> = machine
            .vshards
            .into_values()
            .flat_map(|vshard| vshard.entries)
            .collect();
        // A snapshot lists the keys ascending over all vShards.
        entries.sort_unstable_by(|(one, _), (other, _)| one.cmp(other));
        // The version byte and the entry count as postcard writes them before the entries.
        let pending = crate::wire::encode(&(KV_FORMAT_VERSION, entries.len() as u64));
        KvSnapshot::Encoding {
            entries: entries.into_iter(),
            pending,
        }
    }
}

/// Reads a snapshot's values one after another across its chunks, holding at most the chunk
/// being read and the start of a value the chunk before it cut.
struct SnapshotReader<'a> {
    chunks: &'a mut dyn SnapshotChunks,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already taken.
    start: usize,
}

impl SnapshotReader<'_> {
    /// The next value, as `parse` takes it from the front of the unread bytes.
    fn take<T>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<(T, usize), TakeError>,
    ) -> Result<T, StateMachineError> {
        loop {
            match parse(&self.buffer[self.start..]) {
                Ok((value, used)) => {
                    self.start += used;
                    return Ok(value);
                }
                Err(TakeError::Incomplete) => {
                    if !self.read_chunk()? {
                        return Err(StateMachineError::Corrupt(
                            "kv snapshot ends inside a value".to_string(),
                        ));
                    }
                }
                Err(TakeError::Malformed(reason)) => {
                    return Err(StateMachineError::Corrupt(format!("kv snapshot: {reason}")));
                }
            }
        }
    }

    /// Appends the next chunk to the unread bytes; false at the end.
    fn read_chunk(&mut self) -> Result<bool, StateMachineError> {
        let Some(chunk) = self.chunks.next_chunk()? else {
            return Ok(false);
        };
        self.buffer.drain(..self.start);
        self.start = 0;
        self.buffer.extend_from_slice(&chunk);
        Ok(true)
    }

    /// Refuses bytes after the last value.
    fn finish(mut self) -> Result<(), StateMachineError> {
        while self.start == self.buffer.len() {
            if !self.read_chunk()? {
                return Ok(());
            }
        }
        Err(StateMachineError::Corrupt(
            "kv snapshot has bytes after its last entry".to_string(),
        ))
    }
}

/// The engine a snapshot holds, read entry by entry as its chunks come: the snapshot's bytes
/// need never be in memory at once. Only the one encoding of a snapshot is accepted.
pub(super) fn restore(
    chunks: &mut dyn SnapshotChunks,
) -> Result<KvStateMachine, StateMachineError> {
    let mut reader = SnapshotReader {
        chunks,
        buffer: Vec::new(),
        start: 0,
    };
    let (version, count) = reader.take(|bytes| take_exact::<(u8, u64)>(bytes))?;
    check_version(version)?;
    let mut restored = KvStateMachine::default();
    let mut previous: Option<Vec<u8>> = None;
    for _ in 0..count {
        let (key, value) = reader.take(|bytes| {
            take_exact::<KeyValueRef<'_>>(bytes)
                .map(|(KeyValueRef(key, value), used)| ((key.to_vec(), Value::from(value)), used))
        })?;
        if let Some(previous) = &previous {
            check_ascending(previous, &key)?;
        }
        previous = Some(key.clone());
        restored.insert(key, value);
    }
    reader.finish()?;
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::encode_data;
    use crate::kv::tests::apply;
    use crate::kv::{KvCommand, KvStateMachine};
    use crate::state_machine::{StateMachine, VecChunks, read_all_chunks};

    /// A machine holding keys `key-0` .. `key-<count - 1>`, the value of key `i` being
    /// `value_len(i)` bytes of `i`.
    fn machine_with(count: u32, value_len: impl Fn(usize) -> usize) -> KvStateMachine {
        let mut machine = KvStateMachine::new();
        for i in 0..count {
            let put = KvCommand::Put {
                key: format!("key-{i}").into_bytes(),
                value: vec![i as u8; value_len(i as usize)],
            };
            apply(&mut machine, put);
        }
        machine
    }

    #[test]
    fn a_snapshot_is_read_chunk_by_chunk_as_the_encoding_of_all_its_entries() {
        let mut machine = machine_with(200, |i| (i % 7) * 20_000);
        let large = vec![7u8; 3 * SNAPSHOT_CHUNK_BYTES_MAX + 5];
        let put = KvCommand::Put {
            key: b"large".to_vec(),
            value: large,
        };
        apply(&mut machine, put);
        let mut all: Vec<_> = machine.iter().collect();
        all.sort_unstable_by_key(|(key, _)| *key);
        let whole = encode_data(all.into_iter());

        let mut snapshot = machine.snapshot().unwrap();
        let mut read = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = snapshot.next_chunk().unwrap() {
            assert!(!chunk.is_empty() && chunk.len() <= SNAPSHOT_CHUNK_BYTES_MAX);
            read.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert_eq!(read, whole);
        assert!(chunks > 4, "{chunks} chunks");
        assert_eq!(snapshot.next_chunk().unwrap(), None);

        let mut empty = KvStateMachine::new().snapshot().unwrap();
        let whole = encode_data(std::iter::empty());
        assert_eq!(empty.next_chunk().unwrap(), Some(whole));
        assert_eq!(empty.next_chunk().unwrap(), None);
    }

    /// `bytes` in chunks of `size`, the last one taking the rest.
    fn cut(bytes: &[u8], size: usize) -> VecChunks {
        VecChunks::from(bytes.chunks(size).map(<[u8]>::to_vec).collect::<Vec<_>>())
    }

    #[test]
    fn a_snapshot_restores_from_chunks_cut_anywhere_and_damage_is_refused() {
        let machine = machine_with(40, |i| (i % 5) * 300);
        let bytes = read_all_chunks(machine.snapshot().unwrap().as_mut(), u64::MAX).unwrap();
        for size in [1, 2, 7, 300, bytes.len()] {
            let mut restored = KvStateMachine::new();
            restored.restore(&mut cut(&bytes, size)).unwrap();
            assert_eq!(
                restored.state_hash(),
                machine.state_hash(),
                "chunks of {size}"
            );
            assert_eq!(restored.len(), machine.len());
        }

        let refused = |bytes: &[u8]| {
            let mut target = KvStateMachine::new();
            apply(
                &mut target,
                KvCommand::Put {
                    key: b"kept".to_vec(),
                    value: b"x".to_vec(),
                },
            );
            let before = target.state_hash();
            let refused = target.restore(&mut cut(bytes, 3)).is_err();
            if refused {
                assert_eq!(
                    target.state_hash(),
                    before,
                    "a refused snapshot changes nothing"
                );
            }
            refused
        };
        assert!(refused(&bytes[..bytes.len() - 1]), "truncated");
        assert!(refused(&[bytes.as_slice(), &[0]].concat()), "trailing byte");
        let mut version = bytes.clone();
        version[0] = KV_FORMAT_VERSION + 1;
        assert!(refused(&version), "unknown version");
        let one = |key: &[u8]| encode_data([(&key.to_vec(), &Value::from(&b"v"[..]))].into_iter());
        let unordered = [
            &[KV_FORMAT_VERSION, 2][..],
            &one(b"b")[2..],
            &one(b"a")[2..],
        ]
        .concat();
        assert!(refused(&unordered), "keys out of order");
        let overlong = [&[KV_FORMAT_VERSION, 0x81, 0x00][..], &one(b"a")[2..]].concat();
        assert!(refused(&overlong), "an overlong entry count");
        let well_formed = [&[KV_FORMAT_VERSION, 1][..], &one(b"a")[2..]].concat();
        assert!(
            !refused(&well_formed),
            "the same entry, counted canonically"
        );
    }
}
