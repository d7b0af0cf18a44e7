//! Hooks for the fuzzer (feature `fuzzing`, off in every normal build): valid encodings of the
//! Raft wire messages and log records to start from, and the checks of their decoders, so that
//! the fuzzer reaches `wire.rs` without any openraft type leaving this crate.
//!
//! Each check decodes the input as every message type read from the same source and returns a
//! label of what happened, or the property that broke: whatever decodes must re-encode to
//! exactly the input bytes.

use crate::types::{AppRequest, Entry, EntryKind, LogId, RaftNode, SnapshotMeta, Vote};
use crate::wire::{
    self, DecodeError, RaftReply, RaftRpc, ReplyBody, RpcBody, RpcFailure, SnapshotHeader,
    WIRE_VERSION,
};
use nodedb_cluster_core::{GroupId, VShardId};
use openraft::entry::RaftEntry;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft::{Membership, StoredMembership};
use std::collections::BTreeSet;

/// Valid RPC envelopes, replies and snapshot stream headers, as a peer sends them.
pub fn rpc_seeds() -> Vec<Vec<u8>> {
    let vote = Vote::new_committed(4, 2);
    let rpc = |body| {
        wire::encode(&RaftRpc {
            version: WIRE_VERSION,
            group: GroupId(3),
            body,
        })
    };
    let reply = |body| {
        wire::encode(&RaftReply {
            version: WIRE_VERSION,
            body,
        })
    };
    vec![
        rpc(RpcBody::AppendEntries(AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(4, 2, 9)),
            entries: sample_entries(),
            leader_commit: Some(log_id(4, 2, 8)),
        })),
        rpc(RpcBody::AppendEntries(AppendEntriesRequest {
            vote,
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        })),
        rpc(RpcBody::Vote(VoteRequest::new(
            Vote::new(5, 1),
            Some(log_id(4, 2, 12)),
        ))),
        rpc(RpcBody::PreVote(VoteRequest::new(Vote::new(5, 1), None))),
        rpc(RpcBody::TransferLeader(TransferLeaderRequest::new(
            vote,
            3,
            Some(log_id(4, 2, 12)),
        ))),
        reply(ReplyBody::AppendEntries(AppendEntriesResponse::Success)),
        reply(ReplyBody::AppendEntries(
            AppendEntriesResponse::PartialSuccess(Some(log_id(4, 2, 10))),
        )),
        reply(ReplyBody::AppendEntries(AppendEntriesResponse::HigherVote(
            Vote::new(6, 3),
        ))),
        reply(ReplyBody::Vote(VoteResponse::new(
            Vote::new(5, 1),
            Some(log_id(4, 2, 12)),
            true,
        ))),
        reply(ReplyBody::TransferLeader(Ok(()))),
        reply(ReplyBody::Snapshot(SnapshotResponse::new(vote))),
        reply(ReplyBody::Failed(RpcFailure::UnknownGroup(GroupId(300)))),
        reply(ReplyBody::Failed(RpcFailure::GroupStopped {
            group: GroupId(1),
            reason: "shutting down".into(),
        })),
        reply(ReplyBody::Failed(RpcFailure::BadMessage("junk".into()))),
        wire::encode(&SnapshotHeader {
            version: WIRE_VERSION,
            group: GroupId(2),
            vote,
            meta: SnapshotMeta {
                last_log_id: Some(log_id(4, 2, 100)),
                last_membership: StoredMembership::new(Some(log_id(1, 1, 1)), membership()),
            },
            bytes: 4096,
            crc32c: 0x1234_5678,
        }),
    ]
}

/// Checks bytes read from a peer: an RPC envelope, a reply or a snapshot stream header.
pub fn check_rpc(bytes: &[u8]) -> Result<String, String> {
    let request = canonical(bytes, wire::decode::<RaftRpc>(bytes), wire::encode)?;
    let reply = canonical(bytes, wire::decode::<RaftReply>(bytes), wire::encode)?;
    let header = canonical(bytes, wire::decode::<SnapshotHeader>(bytes), wire::encode)?;
    Ok(format!("{request}|{reply}|{header}"))
}

/// Valid log entries, votes and log ids as the log store keeps them.
pub fn log_record_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = sample_entries().iter().map(wire::encode_entry).collect();
    seeds.push(wire::encode_vote(&Vote::new_committed(5, 3)));
    seeds.push(wire::encode_vote(&Vote::new(7, 1)));
    seeds.push(wire::encode_log_id(&Some(log_id(5, 3, 1000))));
    seeds.push(wire::encode_log_id(&None));
    seeds
}

/// Checks bytes read from the log file: an entry, a vote or a log id record.
pub fn check_log_record(bytes: &[u8]) -> Result<String, String> {
    let entry = canonical(bytes, wire::decode_entry(bytes), wire::encode_entry)?;
    let vote = canonical(bytes, wire::decode_vote(bytes), wire::encode_vote)?;
    let log_id = canonical(bytes, wire::decode_log_id(bytes), wire::encode_log_id)?;
    Ok(format!("{entry}|{vote}|{log_id}"))
}

/// Checks what a decoder made of `bytes`: an accepted value must re-encode to exactly `bytes`.
/// Returns a label of the outcome.
fn canonical<T: std::fmt::Debug>(
    bytes: &[u8],
    decoded: Result<T, DecodeError>,
    encode: fn(&T) -> Vec<u8>,
) -> Result<String, String> {
    match decoded {
        Ok(value) => {
            let encoded = encode(&value);
            if encoded != bytes {
                return Err(format!(
                    "{} decodes as {value:?}, which re-encodes as {}",
                    hex(bytes),
                    hex(&encoded)
                ));
            }
            Ok(format!("ok {}", variant_name(&value)))
        }
        Err(DecodeError::Empty) => Ok("empty".into()),
        Err(DecodeError::UnsupportedVersion { .. }) => Ok("version".into()),
        Err(DecodeError::Malformed(reason)) => Ok(format!("malformed {}", words(&reason))),
    }
}

fn sample_entries() -> Vec<Entry> {
    vec![
        Entry::new_blank(log_id(4, 2, 10)),
        Entry::new_normal(
            log_id(4, 2, 11),
            AppRequest {
                kind: EntryKind::Command,
                payload: vec![0, 3, b'k', b'e', b'y', 1, b'v'].into(),
            },
        ),
        Entry::new_normal(
            log_id(4, 2, 12),
            AppRequest {
                kind: EntryKind::VShardCommand {
                    vshard: VShardId(300),
                },
                payload: vec![2, 1, b'k', 0, 1, b'v'].into(),
            },
        ),
        Entry::new_membership(log_id(4, 2, 13), membership()),
    ]
}

fn membership() -> Membership<u64, RaftNode> {
    let voters: BTreeSet<u64> = [1, 2, 3].into_iter().collect();
    Membership::new_with_defaults(vec![voters], [4])
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(
        LeaderId {
            term,
            node_id: node,
        },
        index,
    )
}

/// The enum variant (or type) name of a value's debug text, without its fields.
fn variant_name<T: std::fmt::Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    text.split(['(', '{', ' ', ','])
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The words of an error message, without numbers (which would make every input a new class).
fn words(text: &str) -> String {
    text.chars().filter(|c| !c.is_ascii_digit()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
