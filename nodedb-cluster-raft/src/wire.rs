//! Byte layouts of everything this crate sends or persists: the RPC envelope routed by group,
//! its replies, the snapshot stream header, and the log entry / vote records in the log store.
//! All postcard; every message starts with a version byte. Golden-byte tests pin the layouts.

use crate::types::{Entry, LogId, SnapshotMeta, TypeConfig, Vote};
use bytes::Bytes;
use nodedb_cluster_core::GroupId;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Version of the RPC envelope, its replies and the snapshot stream header.
pub const WIRE_VERSION: u8 = 1;
/// Version byte in front of every persisted log entry, vote and committed record.
pub const RECORD_VERSION: u8 = 1;

/// A Raft RPC for one group (for [`RpcBody::Probe`], which names its groups itself, `group` is
/// not read).
#[derive(Debug, Serialize, Deserialize)]
pub struct RaftRpc {
    pub version: u8,
    pub group: GroupId,
    pub body: RpcBody,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcBody {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// The leader of an idle group asks a caught-up follower to stop its timers.
    Quiesce(QuiesceRequest),
    /// A follower of quiesced groups asks their leader which of them it no longer holds quiet.
    Probe(ProbeRequest),
    /// A replica that just started asks the other members to wake: a quiet leader restarts
    /// its timers and heartbeats it before its election timer runs out (followers stay
    /// quiet). Answered `Quiesced(false)`.
    Wake,
}

/// Sent by the leader (`vote`) once every member has `last_log`, committed and applied.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct QuiesceRequest {
    pub vote: Vote,
    pub last_log: LogId,
}

/// Groups the sender follows quietly under the receiver's leadership.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub groups: Vec<GroupId>,
}

/// The answer to a [`RaftRpc`] (or to a snapshot stream).
#[derive(Debug, Serialize, Deserialize)]
pub struct RaftReply {
    pub version: u8,
    pub body: ReplyBody,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ReplyBody {
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    Failed(RpcFailure),
    /// Whether the follower stopped its timers.
    Quiesced(bool),
    /// The probed groups the receiver does not hold quiet as their leader.
    Probed {
        awake: Vec<GroupId>,
    },
}

/// Why a receiver could not serve a Raft RPC. The sender backs off and retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RpcFailure {
    /// The receiver hosts no replica of this group (not created yet, or removed).
    #[error("{0} is not hosted by the receiver")]
    UnknownGroup(GroupId),
    /// The receiver's replica of the group stopped (shutdown or storage failure).
    #[error("{group} stopped on the receiver: {reason}")]
    GroupStopped { group: GroupId, reason: String },
    /// The message did not decode or had an unsupported version.
    #[error("bad message: {0}")]
    BadMessage(String),
    /// A streamed snapshot was refused (too large, checksum mismatch, install failed).
    #[error("snapshot refused: {0}")]
    SnapshotRefused(String),
}

/// Header of a snapshot stream; the body that follows is the snapshot file, `bytes` long.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub version: u8,
    pub group: GroupId,
    pub vote: Vote,
    pub meta: SnapshotMeta,
    /// Exact length of the body.
    pub bytes: u64,
    /// CRC32C of the whole body.
    pub crc32c: u32,
}

/// A decode failure of bytes from a peer or from disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty input")]
    Empty,
    #[error("unsupported version {found} (this build reads up to {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("malformed: {0}")]
    Malformed(String),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_after(&[], value)
}

/// `prefix`, then the postcard encoding of `value`, in a vector sized once: a vector grown as
/// the encoding goes moved a large message's bytes again at every doubling.
fn encode_after<T: Serialize>(prefix: &[u8], value: &T) -> Vec<u8> {
    let size = postcard::serialize_with_flavor(value, SizeFlavor(0)).unwrap_or_else(|e| failed(e));
    let mut out = Vec::with_capacity(prefix.len() + size);
    out.extend_from_slice(prefix);
    encode_onto(&mut out, value);
    out
}

/// Appends the postcard encoding of `value` to `out`.
pub(crate) fn encode_onto<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    *out = postcard::serialize_with_flavor(value, VecFlavor(std::mem::take(out)))
        .unwrap_or_else(|e| failed(e));
}

/// Serializing our own in-memory types cannot fail: no maps with non-string keys are rejected
/// by postcard, and no IO is involved.
fn failed(error: postcard::Error) -> ! {
    panic!("postcard encode failed: {error}")
}

/// A postcard output that only counts the bytes.
struct SizeFlavor(usize);

impl postcard::ser_flavors::Flavor for SizeFlavor {
    type Output = usize;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0 += data.len();
        Ok(())
    }

    fn try_push(&mut self, _data: u8) -> postcard::Result<()> {
        self.0 += 1;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.0)
    }
}

/// A postcard output appending to a vector (sized beforehand by [`encode_after`]).
struct VecFlavor(Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor {
    type Output = Vec<u8>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

pub fn decode<'a, T: Deserialize<'a> + Serialize>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let first = *bytes.first().ok_or(DecodeError::Empty)?;
    if first != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: first,
            supported: WIRE_VERSION,
        });
    }
    decode_exact(bytes)
}

/// Serde of a list of byte strings that writes each string in one go: postcard gives the same
/// bytes as for a plain `Vec<Vec<u8>>` (which serde walks byte by byte). Use with
/// `#[serde(with = "byte_strings")]`; single byte strings use `serde_bytes`.
pub mod byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(list: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(list.iter().map(|bytes| Bytes::new(bytes)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        let list = Vec::<ByteBuf>::deserialize(deserializer)?;
        Ok(list.into_iter().map(ByteBuf::into_vec).collect())
    }
}

/// Like [`decode`], but the shared byte strings of the value (`shared_bytes`, such as entry
/// payloads) point into `bytes` instead of being copied out of it.
pub fn decode_shared<T: DeserializeOwned + Serialize>(bytes: &Bytes) -> Result<T, DecodeError> {
    let _decoding = shared_bytes::Decoding::of(bytes);
    decode(bytes)
}

/// Serde of one shared byte string, the same postcard bytes as `serde_bytes` gives a `Vec<u8>`.
/// Use with `#[serde(with = "shared_bytes")]`. Read by [`decode_shared`], the string shares
/// the buffer it was read from; read otherwise, it is copied.
pub mod shared_bytes {
    use bytes::Bytes;
    use serde::Serializer;
    use serde::de::{Deserializer, Error, Visitor};
    use std::cell::RefCell;
    use std::fmt;

    thread_local! {
        /// The buffer this thread is decoding with `decode_shared`.
        static DECODING: RefCell<Option<Bytes>> = const { RefCell::new(None) };
    }

    /// Marks `bytes` as the buffer being decoded on this thread until dropped.
    pub(super) struct Decoding(Option<Bytes>);

    impl Decoding {
        pub(super) fn of(bytes: &Bytes) -> Decoding {
            Decoding(DECODING.replace(Some(bytes.clone())))
        }
    }

    impl Drop for Decoding {
        fn drop(&mut self) {
            DECODING.set(self.0.take());
        }
    }

    pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        deserializer.deserialize_bytes(SharedBytes)
    }

    struct SharedBytes;

    impl<'de> Visitor<'de> for SharedBytes {
        type Value = Bytes;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a byte string")
        }

        fn visit_borrowed_bytes<E: Error>(self, read: &'de [u8]) -> Result<Bytes, E> {
            let shared = DECODING.with_borrow(|buffer| {
                let buffer = buffer.as_ref()?;
                let within = buffer.as_ptr_range();
                let read_range = read.as_ptr_range();
                (within.start <= read_range.start && read_range.end <= within.end)
                    .then(|| buffer.slice_ref(read))
            });
            Ok(shared.unwrap_or_else(|| Bytes::copy_from_slice(read)))
        }

        fn visit_bytes<E: Error>(self, read: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(read))
        }

        fn visit_byte_buf<E: Error>(self, read: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(read))
        }
    }
}

/// A log entry as stored in the log: `[RECORD_VERSION][postcard(Entry)]`.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    encode_record(entry)
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, DecodeError> {
    decode_record(bytes)
}

/// The vote as stored in the log's metadata: `[RECORD_VERSION][postcard(Vote)]`.
pub fn encode_vote(vote: &Vote) -> Vec<u8> {
    encode_record(vote)
}

pub fn decode_vote(bytes: &[u8]) -> Result<Vote, DecodeError> {
    decode_record(bytes)
}

/// A log id as stored (committed, last purged): `[RECORD_VERSION][postcard(Option<LogId>)]`.
pub fn encode_log_id(log_id: &Option<LogId>) -> Vec<u8> {
    encode_record(log_id)
}

pub fn decode_log_id(bytes: &[u8]) -> Result<Option<LogId>, DecodeError> {
    decode_record(bytes)
}

fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    encode_after(&[RECORD_VERSION], value)
}

fn decode_record<T: for<'a> Deserialize<'a> + Serialize>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != RECORD_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: RECORD_VERSION,
        });
    }
    decode_exact(body)
}

/// Decodes `bytes` as exactly one `T` in its one encoding: trailing bytes are an error, and so
/// are the other spellings postcard would accept for the same value (overlong varints, map
/// keys out of order or repeated, ignored fields that are not empty). A value read from a peer
/// or from disk therefore re-encodes to the very bytes it came from.
pub(crate) fn decode_exact<'a, T: Deserialize<'a> + Serialize>(
    bytes: &'a [u8],
) -> Result<T, DecodeError> {
    let (value, used) = take_exact(bytes).map_err(|error| match error {
        TakeError::Incomplete => {
            DecodeError::Malformed(postcard::Error::DeserializeUnexpectedEnd.to_string())
        }
        TakeError::Malformed(reason) => DecodeError::Malformed(reason),
    })?;
    if used != bytes.len() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Why [`take_exact`] took nothing.
#[derive(Debug, PartialEq)]
pub(crate) enum TakeError {
    /// The bytes end inside the value: more may complete it.
    Incomplete,
    Malformed(String),
}

/// The `T` at the front of `bytes`, in its one encoding (see [`decode_exact`]), and how many
/// bytes it took; for values read one after another from a stream.
pub(crate) fn take_exact<'a, T: Deserialize<'a> + Serialize>(
    bytes: &'a [u8],
) -> Result<(T, usize), TakeError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|error| match error {
        postcard::Error::DeserializeUnexpectedEnd => TakeError::Incomplete,
        other => TakeError::Malformed(other.to_string()),
    })?;
    let used = bytes.len() - rest.len();
    if !encodes_as(&value, &bytes[..used]) {
        return Err(TakeError::Malformed(
            "not in the canonical encoding".to_string(),
        ));
    }
    Ok((value, used))
}

/// Whether `value` encodes to exactly `expected`, compared byte by byte while encoding.
fn encodes_as<T: Serialize>(value: &T, expected: &[u8]) -> bool {
    postcard::serialize_with_flavor(value, CompareFlavor { rest: expected }).unwrap_or(false)
}

/// A postcard output that checks each byte against the expected encoding instead of storing
/// it; it fails at the first difference.
struct CompareFlavor<'a> {
    rest: &'a [u8],
}

impl postcard::ser_flavors::Flavor for CompareFlavor<'_> {
    type Output = bool;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let Some((expected, rest)) = self.rest.split_at_checked(data.len()) else {
            return Err(postcard::Error::SerializeBufferFull);
        };
        // A byte string read by `decode_shared` is written from the very bytes it was read
        // from: equal without comparing them.
        if expected.as_ptr() != data.as_ptr() && expected != data {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.rest = rest;
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<bool> {
        Ok(self.rest.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{CopyId, VShardStep};
    use crate::types::{AppRequest, EntryKind};
    use nodedb_cluster_core::{MigrationId, VShardId};
    use openraft::entry::RaftEntry;
    use openraft::impls::leader_id_adv::LeaderId;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(
            LeaderId {
                term,
                node_id: node,
            },
            index,
        )
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    #[test]
    fn byte_strings_keep_the_layout_of_a_plain_list() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Listed(#[serde(with = "byte_strings")] Vec<Vec<u8>>);
        let list = vec![b"ab".to_vec(), Vec::new(), vec![7; 300]];
        let bytes = encode(&Listed(list.clone()));
        assert_eq!(bytes, encode(&list));
        assert_eq!(decode_exact::<Listed>(&bytes), Ok(Listed(list)));
    }

    #[test]
    fn a_shared_decode_points_into_the_buffer_and_stays_canonical() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Carrier {
            version: u8,
            #[serde(with = "shared_bytes")]
            payload: Bytes,
        }
        let sent = Carrier {
            version: WIRE_VERSION,
            payload: Bytes::from(vec![7u8; 5000]),
        };
        let buffer = Bytes::from(encode(&sent));
        let within = buffer.as_ptr_range();
        let shared: Carrier = decode_shared(&buffer).unwrap();
        assert_eq!(shared, sent);
        assert!(
            within.contains(&shared.payload.as_ptr()),
            "shared, not copied"
        );
        let copied: Carrier = decode(&buffer).unwrap();
        assert_eq!(copied, sent);
        assert!(!within.contains(&copied.payload.as_ptr()), "copied outside");

        // The same payload behind an overlong length (5000 in three bytes instead of two).
        assert_eq!(buffer[1..3], [0x88, 0x27]);
        let mut overlong = vec![WIRE_VERSION, 0x88, 0xa7, 0x00];
        overlong.extend_from_slice(&buffer[3..]);
        let refused = decode_shared::<Carrier>(&Bytes::from(overlong));
        assert!(
            matches!(refused, Err(DecodeError::Malformed(_))),
            "{refused:?}"
        );
    }

    #[test]
    fn an_encoding_is_written_into_a_vector_sized_once() {
        let entry = Entry::new_normal(
            log_id(2, 1, 7),
            AppRequest {
                kind: EntryKind::Command,
                payload: vec![0xab; 300_000].into(),
            },
        );
        let record = encode_entry(&entry);
        assert_eq!(record.capacity(), record.len());
        assert_eq!(record[0], RECORD_VERSION);
        assert_eq!(record[1..], postcard::to_stdvec(&entry).unwrap());
        assert_eq!(decode_entry(&record).unwrap(), entry);
    }

    #[test]
    fn log_entry_layout_is_pinned() {
        let entry = Entry::new_normal(
            log_id(2, 1, 7),
            AppRequest {
                kind: EntryKind::Command,
                payload: vec![0xab, 0xcd].into(),
            },
        );
        let bytes = encode_entry(&entry);
        assert_eq!(hex(&bytes), "01020107010002abcd");
        assert_eq!(decode_entry(&bytes).unwrap(), entry);

        let fenced_put = Entry::new_normal(
            log_id(2, 1, 9),
            AppRequest {
                kind: EntryKind::VShardCommand {
                    vshard: VShardId(300),
                },
                payload: vec![0xee].into(),
            },
        );
        assert_eq!(hex(&encode_entry(&fenced_put)), "010201090101ac0201ee");
        let fence = Entry::new_normal(
            log_id(2, 1, 10),
            AppRequest {
                kind: EntryKind::Migration {
                    vshard: VShardId(300),
                    migration: MigrationId(5),
                    step: VShardStep::Fence,
                },
                payload: Default::default(),
            },
        );
        assert_eq!(hex(&encode_entry(&fence)), "0102010a0102ac02050200");
        let blank = Entry::new_blank(log_id(3, 2, 9));
        assert_eq!(hex(&encode_entry(&blank)), "0103020900");
    }

    #[test]
    fn vote_and_log_id_layouts_are_pinned() {
        let vote = Vote::new_committed(5, 3);
        let bytes = encode_vote(&vote);
        assert_eq!(hex(&bytes), "01050301");
        assert_eq!(decode_vote(&bytes).unwrap(), vote);
        let committed = Some(log_id(5, 3, 1000));
        assert_eq!(hex(&encode_log_id(&committed)), "01010503e807");
        assert_eq!(hex(&encode_log_id(&None)), "0100");
    }

    #[test]
    fn rpc_envelope_layout_is_pinned() {
        let rpc = RaftRpc {
            version: WIRE_VERSION,
            group: GroupId(3),
            body: RpcBody::Vote(VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 1, 10)))),
        };
        let bytes = encode(&rpc);
        assert_eq!(hex(&bytes), "0103010402000103010a00");
        let back: RaftRpc = decode(&bytes).unwrap();
        assert_eq!(back.group, GroupId(3));

        let reply = RaftReply {
            version: WIRE_VERSION,
            body: ReplyBody::Failed(RpcFailure::UnknownGroup(GroupId(9))),
        };
        assert_eq!(hex(&encode(&reply)), "01040009");
    }

    #[test]
    fn quiescence_layouts_are_pinned() {
        let quiesce = RaftRpc {
            version: WIRE_VERSION,
            group: GroupId(3),
            body: RpcBody::Quiesce(QuiesceRequest {
                vote: Vote::new_committed(5, 1),
                last_log: log_id(5, 1, 12),
            }),
        };
        assert_eq!(hex(&encode(&quiesce)), "01030405010105010c");
        let probe = RaftRpc {
            version: WIRE_VERSION,
            group: GroupId(0),
            body: RpcBody::Probe(ProbeRequest {
                groups: vec![GroupId(1), GroupId(300)],
            }),
        };
        assert_eq!(hex(&encode(&probe)), "0100050201ac02");
        let quiesced = RaftReply {
            version: WIRE_VERSION,
            body: ReplyBody::Quiesced(true),
        };
        assert_eq!(hex(&encode(&quiesced)), "010501");
        let probed = RaftReply {
            version: WIRE_VERSION,
            body: ReplyBody::Probed {
                awake: vec![GroupId(2)],
            },
        };
        assert_eq!(hex(&encode(&probed)), "01060102");
        let wake = RaftRpc {
            version: WIRE_VERSION,
            group: GroupId(3),
            body: RpcBody::Wake,
        };
        assert_eq!(hex(&encode(&wake)), "010306");
    }

    proptest::proptest! {
        #[test]
        fn log_entries_round_trip(
            term in 0u64..1000,
            node in 0u64..100,
            index in 0u64..u64::MAX,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            vshard in 0u16..1024,
            kind_tag in 0u8..9,
            migration in 0u64..1000,
        ) {
            let vshard = VShardId(vshard);
            let migration = MigrationId(migration);
            let copy = CopyId { fence_index: index / 2, nonce: index };
            let steps = [
                VShardStep::Import(copy),
                VShardStep::Adopt(copy),
                VShardStep::Fence,
                VShardStep::Drop,
                VShardStep::Release,
                VShardStep::Discard,
                VShardStep::ImportMore(copy),
            ];
            let kind = match kind_tag {
                0 => EntryKind::Command,
                1 => EntryKind::VShardCommand { vshard },
                tag => EntryKind::Migration { vshard, migration, step: steps[usize::from(tag - 2)] },
            };
            let entry = Entry::new_normal(log_id(term, node, index), AppRequest { kind, payload: payload.into() });
            proptest::prop_assert_eq!(decode_entry(&encode_entry(&entry)).unwrap(), entry);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode::<RaftRpc>(&bytes);
            let _ = decode::<RaftReply>(&bytes);
            let _ = decode::<SnapshotHeader>(&bytes);
            let _ = decode_entry(&bytes);
            let _ = decode_vote(&bytes);
            let _ = decode_log_id(&bytes);
        }
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        assert_eq!(decode::<RaftRpc>(&[]).unwrap_err(), DecodeError::Empty);
        assert!(matches!(
            decode::<RaftRpc>(&[9, 1, 2]).unwrap_err(),
            DecodeError::UnsupportedVersion { found: 9, .. }
        ));
        assert!(decode_entry(&[1, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_vote(&[2, 1, 1, 1]).is_err());
        let mut padded = encode(&RaftReply {
            version: WIRE_VERSION,
            body: ReplyBody::Failed(RpcFailure::UnknownGroup(GroupId(1))),
        });
        padded.push(0);
        assert!(matches!(
            decode::<RaftReply>(&padded),
            Err(DecodeError::Malformed(_))
        ));
        for length in 0..64 {
            let junk: Vec<u8> = (0..length).map(|i| (i * 37 + 1) as u8).collect();
            let _ = decode::<RaftRpc>(&junk);
            let _ = decode_entry(&junk);
        }
    }
}
