//! The catalog's error type. Every variant says what happened and what the operator or the
//! caller can do about it, because these errors end up in a node's startup log.

use crate::ClusterId;
use crate::record::RecordKind;
use nodedb_cluster_core::NodeId;
use std::path::PathBuf;

/// Everything that can go wrong opening, reading or writing a catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// Node id 0 is reserved as invalid; a catalog is never created for it.
    #[error("node id 0 is invalid: set node_id in the config to a positive integer")]
    InvalidNodeId,

    /// Another process (or another handle in this process) has the file open.
    #[error(
        "catalog file {path} is already open by another process or handle: stop the other \
         nodedb-cluster process using this data_dir, or give this node its own data_dir"
    )]
    Locked { path: PathBuf },

    /// The file was created for a different node.
    #[error(
        "catalog file {path} belongs to node {}, config says node {}: point data_dir elsewhere \
         or fix node_id",
        stored.0,
        expected.0
    )]
    NodeIdMismatch {
        path: PathBuf,
        stored: NodeId,
        expected: NodeId,
    },

    /// The file was written by a newer binary whose layout this one cannot read.
    #[error(
        "catalog file {path} has format version {found}, this binary reads up to {supported}: \
         run a newer nodedb-cluster binary on this data_dir"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// One record was written by a newer binary whose record layout this one cannot read.
    #[error(
        "catalog file {path}: the {record} record has version {found}, this binary reads up to \
         {supported}: run a newer nodedb-cluster binary on this data_dir"
    )]
    NewerRecord {
        path: PathBuf,
        record: RecordKind,
        found: u16,
        supported: u16,
    },

    /// The file or one of its records is damaged. Nothing in it is trusted.
    #[error(
        "catalog file {path} is corrupt ({}: {reason}): restore it from a backup, or move it \
         aside and rejoin the cluster with a fresh data_dir",
        record.map_or("file".to_string(), |record| format!("{record} record"))
    )]
    Corrupt {
        path: PathBuf,
        record: Option<RecordKind>,
        reason: Corruption,
    },

    /// A record passed its checksum but does not decode as the type the caller asked for: the
    /// caller's stored type changed incompatibly (for example after a downgrade).
    #[error(
        "catalog file {path}: the {record} record is intact but does not decode as the requested \
         type ({source}): run the binary that wrote it, or remove the record"
    )]
    Undecodable {
        path: PathBuf,
        record: RecordKind,
        source: postcard::Error,
    },

    /// The caller's value could not be encoded.
    #[error("cannot encode the {record} record: {source}")]
    Encode {
        record: RecordKind,
        source: postcard::Error,
    },

    /// The encoded record exceeds [`crate::RECORD_BODY_BYTES_MAX`].
    #[error("the {record} record is {bytes} bytes, more than the {bytes_max} bytes allowed")]
    RecordTooLarge {
        record: RecordKind,
        bytes: u64,
        bytes_max: u32,
    },

    /// The cluster id is set once; a different one is refused.
    #[error(
        "this node already belongs to cluster {stored}, refusing to join cluster {attempted}: \
         use a fresh data_dir to join another cluster"
    )]
    ClusterIdMismatch {
        stored: ClusterId,
        attempted: ClusterId,
    },

    /// The applied index of the metadata never goes backwards.
    #[error(
        "refusing to save metadata at applied index {attempted}: index {stored} is already \
         saved and the applied index never goes backwards"
    )]
    MetadataIndexRegressed { stored: u64, attempted: u64 },

    /// The same applied index was saved before with a different state: applying the same log
    /// must give the same state, so this is a bug in the caller.
    #[error(
        "refusing to save metadata at applied index {applied_index}: a different state is \
         already saved at that index (the metadata state machine is not deterministic)"
    )]
    MetadataConflict { applied_index: u64 },

    /// Saving one more migration checkpoint would exceed [`crate::MIGRATION_CHECKPOINTS_MAX`].
    #[error(
        "refusing to save migration checkpoint {migration_id}: {count_max} checkpoints are \
         already stored; remove finished migrations' checkpoints first"
    )]
    TooManyMigrationCheckpoints { migration_id: u64, count_max: u32 },

    /// The file system failed (permissions, disk full, missing directory).
    #[error(
        "catalog file {path}: I/O error: {source}: check the data_dir's permissions and free space"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Any other failure reported by the storage engine.
    #[error("catalog file {path}: storage error: {source}")]
    Storage { path: PathBuf, source: redb::Error },
}

/// What exactly is damaged, for [`CatalogError::Corrupt`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The storage engine found the file itself damaged (bad page checksum, bad header,
    /// truncated file).
    #[error("the storage engine reports: {detail}")]
    Storage { detail: String },
    /// A record every catalog has is absent.
    #[error("the record is missing")]
    Missing,
    /// Fewer bytes than the envelope header or its length field promise.
    #[error("{bytes} bytes stored, {bytes_expected} expected")]
    Truncated { bytes: u64, bytes_expected: u64 },
    /// More bytes than the envelope's length field says.
    #[error("{bytes} bytes stored, only {bytes_expected} expected")]
    TrailingBytes { bytes: u64, bytes_expected: u64 },
    /// The envelope's length field is beyond the maximum record size.
    #[error("length field says {body_bytes} bytes, more than the {body_bytes_max} allowed")]
    LengthOutOfRange {
        body_bytes: u32,
        body_bytes_max: u32,
    },
    /// The CRC32C over header and body does not match.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    /// The record's kind tag is not the one its key holds.
    #[error("kind tag {found_tag} stored under this key")]
    WrongKind { found_tag: u8 },
    /// Version 0 is never written.
    #[error("record version 0")]
    VersionZero,
    /// A catalog-owned body does not decode although its checksum matches.
    #[error("the body does not decode: {detail}")]
    BodyUndecodable { detail: String },
    /// The format version is below any version ever written.
    #[error("format version {found} was never written by any release")]
    FormatVersionInvalid { found: u32 },
}
