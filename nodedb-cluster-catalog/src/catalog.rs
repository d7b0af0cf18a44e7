//! The catalog handle: opening (create, validate, refuse), and the reads and writes of the
//! node's identity, its last applied metadata and its migration checkpoints. Each logical write
//! is one redb transaction committed with `Durability::Immediate`.

use crate::ClusterId;
use crate::create;
use crate::error::{CatalogError, Corruption};
use crate::metrics::{self, WriteOutcome};
use crate::record::{self, EnvelopeError, RECORD_BODY_BYTES_MAX, RecordKind};
use nodedb_cluster_core::{NodeId, VSHARD_COUNT};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableError, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The catalog format this binary writes and the newest it reads.
pub const FORMAT_VERSION_CURRENT: u32 = 1;

/// File name of the catalog inside a node's data directory.
pub const CATALOG_FILE_NAME: &str = "catalog.redb";

/// Most migration checkpoints kept at once. A migration moves one vShard and no vShard is in
/// two migrations at once, so at most `VSHARD_COUNT` run together; a migration removes its
/// checkpoint when it ends, so reaching this means checkpoints are leaking.
pub const MIGRATION_CHECKPOINTS_MAX: u32 = VSHARD_COUNT as u32;

/// Page cache for the catalog file. The file holds a few small records; redb's 1 GiB default
/// would only be a ceiling, but a small one documents the intent.
const CACHE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Identity and metadata records: `&str` key -> envelope bytes.
pub(crate) const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");
/// Migration checkpoints: migration id -> envelope bytes.
const MIGRATIONS: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new("migration_checkpoints");

pub(crate) const KEY_FORMAT: &str = "format";
pub(crate) const KEY_NODE: &str = "node";
const KEY_CLUSTER: &str = "cluster";
const KEY_METADATA: &str = "metadata";

/// A node's catalog file, opened exclusively. Blocking: every method does file IO and may
/// fsync, so async callers run it on a blocking thread (`spawn_blocking`).
#[derive(Debug)]
pub struct Catalog {
    database: Database,
    path: PathBuf,
    node_id: NodeId,
}

impl Catalog {
    /// Opens `data_dir/catalog.redb`, creating the directory and an empty catalog for
    /// `node_id` if absent.
    pub fn open(data_dir: impl AsRef<Path>, node_id: NodeId) -> Result<Catalog, CatalogError> {
        let data_dir = data_dir.as_ref();
        fs::create_dir_all(data_dir).map_err(|source| CatalogError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        Catalog::open_file(data_dir.join(CATALOG_FILE_NAME), node_id)
    }

    /// Opens the catalog file at `path`, creating an empty catalog for `node_id` if absent.
    ///
    /// Refuses a file of a newer format, of another node, a damaged file and a file another
    /// handle has open. A file at `path` is only ever a fully initialised catalog (a new one is
    /// built aside and linked into place), so an empty or unreadable file is damage, never
    /// "start fresh".
    pub fn open_file(path: impl AsRef<Path>, node_id: NodeId) -> Result<Catalog, CatalogError> {
        let path = path.as_ref().to_path_buf();
        if node_id.0 == 0 {
            return Err(CatalogError::InvalidNodeId);
        }
        let exists = path.try_exists().map_err(|source| CatalogError::Io {
            path: path.clone(),
            source,
        })?;
        if !exists {
            create::create_catalog_file(&path, node_id)?;
        }
        let database = builder()
            .open(&path)
            .map_err(|error| storage_error(&path, error))?;
        let catalog = Catalog {
            database,
            path,
            node_id,
        };
        catalog.validate_identity()?;
        create::remove_stale_staging_files(&catalog.path);
        Ok(catalog)
    }

    /// This node's id, as stored in the file and checked against the caller's at open.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The catalog file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cluster this node belongs to, once set.
    pub fn cluster_id(&self) -> Result<Option<ClusterId>, CatalogError> {
        self.read_meta(KEY_CLUSTER, RecordKind::Cluster)?
            .map(|body| self.decode_own_body::<ClusterId>(RecordKind::Cluster, &body))
            .transpose()
    }

    /// Records the cluster this node belongs to. Set once: the same id again is a no-op, a
    /// different one is refused with [`CatalogError::ClusterIdMismatch`].
    pub fn set_cluster_id(&self, cluster_id: ClusterId) -> Result<(), CatalogError> {
        let envelope = encode_record(RecordKind::Cluster, &cluster_id)?;
        self.write(RecordKind::Cluster, |transaction| {
            let mut table = transaction.open_table(META).map_err(|e| self.error(e))?;
            if let Some(stored) = table.get(KEY_CLUSTER).map_err(|e| self.error(e))? {
                let body = self.decode_envelope(RecordKind::Cluster, stored.value())?;
                let stored = self.decode_own_body::<ClusterId>(RecordKind::Cluster, body)?;
                if stored == cluster_id {
                    return Ok(Write::Unchanged);
                }
                return Err(CatalogError::ClusterIdMismatch {
                    stored,
                    attempted: cluster_id,
                });
            }
            table
                .insert(KEY_CLUSTER, envelope.as_slice())
                .map_err(|e| self.error(e))?;
            Ok(Write::Changed)
        })
    }

    /// Saves the metadata state applied up to `applied_index`, atomically and durably.
    ///
    /// The applied index never goes backwards: a lower index than the stored one is refused
    /// ([`CatalogError::MetadataIndexRegressed`]). At the stored index, the same encoded state
    /// is a no-op and a different one is refused ([`CatalogError::MetadataConflict`]): applying
    /// the same log prefix must give the same state.
    pub fn save_metadata<S: Serialize>(
        &self,
        applied_index: u64,
        state: &S,
    ) -> Result<(), CatalogError> {
        let envelope = encode_record(RecordKind::Metadata, &(applied_index, state))?;
        self.write(RecordKind::Metadata, |transaction| {
            let mut table = transaction.open_table(META).map_err(|e| self.error(e))?;
            if let Some(stored) = table.get(KEY_METADATA).map_err(|e| self.error(e))? {
                let body = self.decode_envelope(RecordKind::Metadata, stored.value())?;
                let (stored_index, _) = self.split_metadata(body)?;
                if applied_index < stored_index {
                    return Err(CatalogError::MetadataIndexRegressed {
                        stored: stored_index,
                        attempted: applied_index,
                    });
                }
                if applied_index == stored_index {
                    if body == &envelope[record::ENVELOPE_HEADER_BYTES..] {
                        return Ok(Write::Unchanged);
                    }
                    return Err(CatalogError::MetadataConflict { applied_index });
                }
            }
            table
                .insert(KEY_METADATA, envelope.as_slice())
                .map_err(|e| self.error(e))?;
            Ok(Write::Changed)
        })
    }

    /// The applied index of the saved metadata, without decoding the state.
    pub fn metadata_applied_index(&self) -> Result<Option<u64>, CatalogError> {
        let Some(body) = self.read_meta(KEY_METADATA, RecordKind::Metadata)? else {
            return Ok(None);
        };
        Ok(Some(self.split_metadata(&body)?.0))
    }

    /// The last saved metadata state and its applied index, if any was saved.
    pub fn load_metadata<S: DeserializeOwned>(&self) -> Result<Option<(u64, S)>, CatalogError> {
        let Some(body) = self.read_meta(KEY_METADATA, RecordKind::Metadata)? else {
            return Ok(None);
        };
        let (applied_index, state) = self.split_metadata(&body)?;
        let state = self.decode_caller_body(RecordKind::Metadata, state)?;
        Ok(Some((applied_index, state)))
    }

    /// Saves (or replaces) the checkpoint of migration `migration_id`, atomically and durably.
    /// At most [`MIGRATION_CHECKPOINTS_MAX`] checkpoints are kept.
    pub fn save_migration_checkpoint<C: Serialize>(
        &self,
        migration_id: u64,
        checkpoint: &C,
    ) -> Result<(), CatalogError> {
        let envelope = encode_record(RecordKind::MigrationCheckpoint, checkpoint)?;
        self.write(RecordKind::MigrationCheckpoint, |transaction| {
            let mut table = transaction
                .open_table(MIGRATIONS)
                .map_err(|e| self.error(e))?;
            let present = table
                .get(migration_id)
                .map_err(|e| self.error(e))?
                .is_some();
            let count = table.len().map_err(|e| self.error(e))?;
            if !present && count >= u64::from(MIGRATION_CHECKPOINTS_MAX) {
                return Err(CatalogError::TooManyMigrationCheckpoints {
                    migration_id,
                    count_max: MIGRATION_CHECKPOINTS_MAX,
                });
            }
            table
                .insert(migration_id, envelope.as_slice())
                .map_err(|e| self.error(e))?;
            Ok(Write::Changed)
        })
    }

    /// The checkpoint of migration `migration_id`, if one is saved.
    pub fn load_migration_checkpoint<C: DeserializeOwned>(
        &self,
        migration_id: u64,
    ) -> Result<Option<C>, CatalogError> {
        let transaction = self.database.begin_read().map_err(|e| self.error(e))?;
        let table = match transaction.open_table(MIGRATIONS) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(self.error(error)),
        };
        let Some(stored) = table.get(migration_id).map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        let body = self.decode_envelope(RecordKind::MigrationCheckpoint, stored.value())?;
        self.decode_caller_body(RecordKind::MigrationCheckpoint, body)
            .map(Some)
    }

    /// Removes the checkpoint of migration `migration_id`; returns whether one was saved.
    pub fn remove_migration_checkpoint(&self, migration_id: u64) -> Result<bool, CatalogError> {
        let mut removed = false;
        self.write(RecordKind::MigrationCheckpoint, |transaction| {
            let mut table = transaction
                .open_table(MIGRATIONS)
                .map_err(|e| self.error(e))?;
            removed = table
                .remove(migration_id)
                .map_err(|e| self.error(e))?
                .is_some();
            Ok(if removed {
                Write::Changed
            } else {
                Write::Unchanged
            })
        })?;
        Ok(removed)
    }

    /// Every saved migration checkpoint, in ascending migration id order.
    pub fn list_migration_checkpoints<C: DeserializeOwned>(
        &self,
    ) -> Result<Vec<(u64, C)>, CatalogError> {
        let transaction = self.database.begin_read().map_err(|e| self.error(e))?;
        let table = match transaction.open_table(MIGRATIONS) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(self.error(error)),
        };
        let mut checkpoints = Vec::new();
        for entry in table.iter().map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            let body = self.decode_envelope(RecordKind::MigrationCheckpoint, value.value())?;
            let checkpoint = self.decode_caller_body(RecordKind::MigrationCheckpoint, body)?;
            checkpoints.push((key.value(), checkpoint));
        }
        Ok(checkpoints)
    }

    /// Closes the file, reporting what dropping would swallow. Dropping also closes it.
    pub fn close(self) -> Result<(), CatalogError> {
        let path = self.path;
        self.database
            .close()
            .map_err(|error| storage_error(&path, error))
    }
}

/// Whether a write transaction changed anything (commit) or not (abort).
enum Write {
    Changed,
    Unchanged,
}

impl Catalog {
    /// Checks the format and node records of a freshly opened file.
    fn validate_identity(&self) -> Result<(), CatalogError> {
        let Some(body) = self.read_meta(KEY_FORMAT, RecordKind::Format)? else {
            return Err(self.corrupt(Some(RecordKind::Format), Corruption::Missing));
        };
        let found = self.decode_own_body::<u32>(RecordKind::Format, &body)?;
        if found == 0 {
            return Err(self.corrupt(
                Some(RecordKind::Format),
                Corruption::FormatVersionInvalid { found },
            ));
        }
        if found > FORMAT_VERSION_CURRENT {
            return Err(CatalogError::NewerFormat {
                path: self.path.clone(),
                found,
                supported: FORMAT_VERSION_CURRENT,
            });
        }
        let Some(body) = self.read_meta(KEY_NODE, RecordKind::Node)? else {
            return Err(self.corrupt(Some(RecordKind::Node), Corruption::Missing));
        };
        let stored = self.decode_own_body::<NodeId>(RecordKind::Node, &body)?;
        if stored.0 == 0 {
            return Err(self.corrupt(
                Some(RecordKind::Node),
                Corruption::BodyUndecodable {
                    detail: "node id 0 is never written".to_string(),
                },
            ));
        }
        if stored != self.node_id {
            return Err(CatalogError::NodeIdMismatch {
                path: self.path.clone(),
                stored,
                expected: self.node_id,
            });
        }
        Ok(())
    }

    /// Runs `body` in one write transaction of `record`; commits durably if it changed
    /// something. Counted in [`crate::metrics`].
    fn write(
        &self,
        record: RecordKind,
        body: impl FnOnce(&WriteTransaction) -> Result<Write, CatalogError>,
    ) -> Result<(), CatalogError> {
        let started = Instant::now();
        let result = self.write_transaction(body);
        let outcome = match &result {
            Ok(Write::Changed) => WriteOutcome::Committed,
            Ok(Write::Unchanged) => WriteOutcome::Unchanged,
            Err(_) => WriteOutcome::Failed,
        };
        metrics::write_done(record, outcome, started.elapsed());
        result.map(|_| ())
    }

    fn write_transaction(
        &self,
        body: impl FnOnce(&WriteTransaction) -> Result<Write, CatalogError>,
    ) -> Result<Write, CatalogError> {
        let mut transaction = self.database.begin_write().map_err(|e| self.error(e))?;
        transaction
            .set_durability(Durability::Immediate)
            .map_err(|e| self.error(e))?;
        match body(&transaction) {
            Ok(Write::Changed) => transaction
                .commit()
                .map(|()| Write::Changed)
                .map_err(|e| self.error(e)),
            Ok(Write::Unchanged) => transaction
                .abort()
                .map(|()| Write::Unchanged)
                .map_err(|e| self.error(e)),
            Err(error) => {
                // The transaction changed nothing that must survive; an abort failure would
                // only hide the error that matters.
                let _ = transaction.abort();
                Err(error)
            }
        }
    }

    /// Reads and unframes one identity/metadata record; `None` if absent.
    fn read_meta(&self, key: &str, kind: RecordKind) -> Result<Option<Vec<u8>>, CatalogError> {
        let transaction = self.database.begin_read().map_err(|e| self.error(e))?;
        let table = match transaction.open_table(META) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => {
                return Err(self.corrupt(None, Corruption::Missing));
            }
            Err(error) => return Err(self.error(error)),
        };
        let Some(stored) = table.get(key).map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        let body = self.decode_envelope(kind, stored.value())?;
        Ok(Some(body.to_vec()))
    }

    fn decode_envelope<'a>(
        &self,
        kind: RecordKind,
        bytes: &'a [u8],
    ) -> Result<&'a [u8], CatalogError> {
        record::decode(kind, bytes).map_err(|error| match error {
            EnvelopeError::Corrupt(reason) => self.corrupt(Some(kind), reason),
            EnvelopeError::Newer { found, supported } => CatalogError::NewerRecord {
                path: self.path.clone(),
                record: kind,
                found,
                supported,
            },
        })
    }

    /// Splits a metadata body into its applied index and the caller's encoded state.
    fn split_metadata<'a>(&self, body: &'a [u8]) -> Result<(u64, &'a [u8]), CatalogError> {
        split_applied_index(body).map_err(|error| {
            self.corrupt(
                Some(RecordKind::Metadata),
                Corruption::BodyUndecodable {
                    detail: error.to_string(),
                },
            )
        })
    }

    /// Decodes a body whose type the catalog owns: failure is corruption.
    fn decode_own_body<T: DeserializeOwned + Serialize>(
        &self,
        kind: RecordKind,
        body: &[u8],
    ) -> Result<T, CatalogError> {
        decode_canonical(body).map_err(|error| {
            self.corrupt(
                Some(kind),
                Corruption::BodyUndecodable {
                    detail: error.to_string(),
                },
            )
        })
    }

    /// Decodes a body whose type the caller owns: failure means the type changed.
    fn decode_caller_body<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        body: &[u8],
    ) -> Result<T, CatalogError> {
        decode_exact(body).map_err(|source| CatalogError::Undecodable {
            path: self.path.clone(),
            record: kind,
            source,
        })
    }

    fn corrupt(&self, record: Option<RecordKind>, reason: Corruption) -> CatalogError {
        CatalogError::Corrupt {
            path: self.path.clone(),
            record,
            reason,
        }
    }

    fn error(&self, error: impl Into<redb::Error>) -> CatalogError {
        storage_error(&self.path, error)
    }
}

/// Decodes `body` as exactly one `T`: trailing bytes mean the layout is not the expected one.
pub(crate) fn decode_exact<T: DeserializeOwned>(body: &[u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes::<T>(body)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

/// Decodes a body whose type the catalog owns in its one encoding: besides trailing bytes, a
/// value that would re-encode differently (an overlong varint) is refused, so a stored record
/// and the value read from it are one and the same.
pub(crate) fn decode_canonical<T: DeserializeOwned + Serialize>(
    body: &[u8],
) -> Result<T, postcard::Error> {
    let value = decode_exact::<T>(body)?;
    if postcard::to_stdvec(&value)? != body {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok(value)
}

/// Splits a metadata body into its applied index (in its one encoding) and the rest.
pub(crate) fn split_applied_index(body: &[u8]) -> Result<(u64, &[u8]), postcard::Error> {
    let (index, rest) = postcard::take_from_bytes::<u64>(body)?;
    if postcard::to_stdvec(&index)? != body[..body.len() - rest.len()] {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok((index, rest))
}

pub(crate) fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    // Verify every page checksum at open: redb otherwise trusts a file altered since it last
    // wrote it and may panic on it. The catalog is small, so the full check costs little.
    builder
        .set_check_integrity_on_open(true)
        .set_cache_size(CACHE_BYTES_MAX);
    builder
}

/// Encodes `value` as a `kind` record, checking the size bound.
pub(crate) fn encode_record<T: Serialize + ?Sized>(
    kind: RecordKind,
    value: &T,
) -> Result<Vec<u8>, CatalogError> {
    let body = postcard::to_stdvec(value).map_err(|source| CatalogError::Encode {
        record: kind,
        source,
    })?;
    if body.len() as u64 > u64::from(RECORD_BODY_BYTES_MAX) {
        return Err(CatalogError::RecordTooLarge {
            record: kind,
            bytes: body.len() as u64,
            bytes_max: RECORD_BODY_BYTES_MAX,
        });
    }
    Ok(record::encode(kind, &body))
}

/// Sorts a storage engine error into the variant a caller can act on.
pub(crate) fn storage_error(path: &Path, error: impl Into<redb::Error>) -> CatalogError {
    let path = path.to_path_buf();
    match error.into() {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            CatalogError::Locked { path }
        }
        redb::Error::Corrupted(detail) => CatalogError::Corrupt {
            path,
            record: None,
            reason: Corruption::Storage { detail },
        },
        // redb reports a file that is not (or no longer) a database as InvalidData, and a file
        // shorter than its own header says as UnexpectedEof.
        redb::Error::Io(source)
            if matches!(
                source.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            CatalogError::Corrupt {
                path,
                record: None,
                reason: Corruption::Storage {
                    detail: source.to_string(),
                },
            }
        }
        redb::Error::Io(source) => CatalogError::Io { path, source },
        source => CatalogError::Storage { path, source },
    }
}
