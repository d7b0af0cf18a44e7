//! Inputs the fuzzer found, each replayed through its target (which must now pass) and, where
//! the decoder is public, checked to be refused. Each one broke a property before its fix.

use nodedb_cluster_fuzz::engine::replay;
use nodedb_cluster_fuzz::{from_hex, targets};
use nodedb_cluster_raft::kv::{KvCommand, KvResponse};
use nodedb_cluster_raft::{decode_metadata_command, decode_metadata_outcome};
use nodedb_cluster_transport::Bytes;
use nodedb_cluster_transport::codec::{Frame, FrameKind};

/// (target, input in hex, what it broke).
const FOUND: &[(&str, &str, &str)] = &[
    (
        "frame",
        "db010701ffffffff",
        "a short header: the slice decoder and the stream reader must agree",
    ),
    (
        "raft-rpc",
        "01030084000201000000",
        "a Raft RPC whose term is an overlong varint was accepted",
    ),
    (
        "raft-log",
        "0104020d020103010203040100020029000400",
        "a membership entry with node ids out of order was accepted",
    ),
    (
        "kv-command",
        "0001610131",
        "a KV response with trailing bytes was accepted",
    ),
    (
        "metadata-command",
        "01020e3132372e302e302e323a393430300e3132372e302e302e323a3934303100",
        "a metadata outcome with trailing bytes was accepted",
    ),
    (
        "catalog-record",
        "030100090000000087d0aa818080808080c0f600",
        "a cluster id record whose body is an overlong varint was accepted",
    ),
    (
        "http-kv",
        "027f6b636f6e73697374656e63793d73b900616c65ef006e73697174656e63793d7374616c65",
        "a key that is not UTF-8 was refused in plain text, not the contract's JSON error",
    ),
    (
        "http-kv",
        "ffff0000226578706563746564223a206e756c6c0020226e6577223a2022817f68227d",
        "a vShard id that is not UTF-8 was refused in plain text",
    ),
];

#[test]
fn every_found_input_now_passes_its_target() {
    for (name, input, broke) in FOUND {
        let input = from_hex(input).unwrap();
        let mut target = targets::by_name(name).unwrap();
        if let Err(failure) = replay(target.as_mut(), &input) {
            panic!("{name}: {broke}: still fails: {failure:?}");
        }
    }
}

#[test]
fn non_canonical_encodings_are_refused() {
    assert_eq!(KvResponse::decode(&from_hex("0001610131").unwrap()), None);
    assert_eq!(KvResponse::decode(&[0]), Some(KvResponse::Written));
    let put = KvCommand::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    };
    let mut padded = put.encode();
    padded.push(0);
    assert_eq!(KvCommand::decode(&padded), None);
    // The key's length 1 as the two-byte varint 81 00.
    assert_eq!(KvCommand::decode(&[0, 0x81, 0x00, b'k', 1, b'v']), None);
    assert_eq!(KvCommand::decode(&[0, 1, b'k', 1, b'v']), Some(put));

    let outcome = from_hex("01020e3132372e302e302e323a393430300e3132372e302e302e323a3934303100");
    assert_eq!(decode_metadata_outcome(&outcome.unwrap()), None);
    // FinishMigration of migration 5, then the same with an overlong id.
    assert!(decode_metadata_command(&[7, 5]).is_ok());
    assert!(decode_metadata_command(&[7, 0x85, 0x00]).is_err());
    assert!(decode_metadata_command(&[7, 5, 0]).is_err());

    let overlong = Frame::new(
        FrameKind::ErrorResponse,
        Bytes::from_static(&[1, 0x81, 0x00, b'x']),
    );
    assert!(overlong.handler_error().is_err());
    let canonical = Frame::new(FrameKind::ErrorResponse, Bytes::from_static(&[1, 1, b'x']));
    assert!(canonical.handler_error().is_ok());
}
