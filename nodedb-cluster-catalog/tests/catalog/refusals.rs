//! What opening and reading refuse: another node's file, a newer format or record, a damaged
//! or truncated file, a file another handle holds. Each gives a typed error naming the problem
//! and the way out, and never a panic or a silently emptied catalog.

use crate::{Payload, SeededRandom, test_seed};
use nodedb_cluster_catalog::{
    CATALOG_FILE_NAME, Catalog, CatalogError, ClusterId, Corruption, RecordKind,
};
use nodedb_cluster_core::NodeId;
use redb::TableDefinition;
use std::path::Path;

const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");

#[test]
fn another_nodes_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Catalog::open(dir.path(), NodeId(3))
        .unwrap()
        .close()
        .unwrap();
    let error = Catalog::open(dir.path(), NodeId(4)).unwrap_err();
    assert!(
        matches!(
            error,
            CatalogError::NodeIdMismatch {
                stored: NodeId(3),
                expected: NodeId(4),
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("belongs to node 3, config says node 4")
            && message.contains("point data_dir elsewhere or fix node_id"),
        "{message}"
    );
    // The refusal changed nothing: the right node still opens it.
    Catalog::open(dir.path(), NodeId(3)).unwrap();
}

#[test]
fn node_id_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let error = Catalog::open(dir.path(), NodeId(0)).unwrap_err();
    assert!(matches!(error, CatalogError::InvalidNodeId), "{error:?}");
    assert!(!dir.path().join(CATALOG_FILE_NAME).exists());
}

#[test]
fn a_file_held_by_another_handle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Catalog::open(dir.path(), NodeId(1)).unwrap();
    let error = Catalog::open(dir.path(), NodeId(1)).unwrap_err();
    assert!(matches!(error, CatalogError::Locked { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("stop the other nodedb-cluster process"),
        "{error}"
    );
    drop(first);
    Catalog::open(dir.path(), NodeId(1)).unwrap();
}

#[test]
fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CATALOG_FILE_NAME);
    Catalog::open(dir.path(), NodeId(1))
        .unwrap()
        .close()
        .unwrap();
    overwrite_meta(
        &path,
        "format",
        &envelope(1, 1, &postcard::to_stdvec(&2u32).unwrap()),
    );
    let error = Catalog::open(dir.path(), NodeId(1)).unwrap_err();
    assert!(
        matches!(
            error,
            CatalogError::NewerFormat {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("run a newer"), "{error}");
}

#[test]
fn a_newer_record_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CATALOG_FILE_NAME);
    Catalog::open(dir.path(), NodeId(1))
        .unwrap()
        .close()
        .unwrap();
    let body = postcard::to_stdvec(&(3u64, Payload::for_index(3))).unwrap();
    overwrite_meta(&path, "metadata", &envelope(4, 2, &body));
    let catalog = Catalog::open(dir.path(), NodeId(1)).unwrap();
    let error = catalog.load_metadata::<Payload>().unwrap_err();
    assert!(
        matches!(
            error,
            CatalogError::NewerRecord {
                record: RecordKind::Metadata,
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{error:?}"
    );
    // A newer metadata record is not silently replaced either.
    let error = catalog
        .save_metadata(4, &Payload::for_index(4))
        .unwrap_err();
    assert!(
        matches!(error, CatalogError::NewerRecord { .. }),
        "{error:?}"
    );
}

#[test]
fn a_record_with_a_bad_checksum_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CATALOG_FILE_NAME);
    let catalog = Catalog::open(dir.path(), NodeId(1)).unwrap();
    catalog.set_cluster_id(ClusterId(5)).unwrap();
    catalog.close().unwrap();

    let mut bytes = envelope(3, 1, &postcard::to_stdvec(&ClusterId(5)).unwrap());
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    overwrite_meta(&path, "cluster", &bytes);
    let catalog = Catalog::open(dir.path(), NodeId(1)).unwrap();
    let error = catalog.cluster_id().unwrap_err();
    assert!(
        matches!(
            error,
            CatalogError::Corrupt {
                record: Some(RecordKind::Cluster),
                reason: Corruption::ChecksumMismatch { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("cluster record"), "{error}");
}

#[test]
fn a_golden_envelope_written_by_hand_is_read() {
    // Pins the documented envelope layout: a record built from docs/design.md alone is valid.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CATALOG_FILE_NAME);
    Catalog::open(dir.path(), NodeId(1))
        .unwrap()
        .close()
        .unwrap();
    overwrite_meta(&path, "cluster", &envelope(3, 1, &[0x2a]));
    let catalog = Catalog::open(dir.path(), NodeId(1)).unwrap();
    assert_eq!(catalog.cluster_id().unwrap(), Some(ClusterId(42)));
}

#[test]
fn a_new_catalog_holds_exactly_the_documented_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CATALOG_FILE_NAME);
    Catalog::open(dir.path(), NodeId(4))
        .unwrap()
        .close()
        .unwrap();
    let database = redb::Database::open(&path).unwrap();
    let transaction = redb::ReadableDatabase::begin_read(&database).unwrap();
    let table = transaction.open_table(META).unwrap();
    let mut records = Vec::new();
    for entry in redb::ReadableTable::iter(&table).unwrap() {
        let (key, value) = entry.unwrap();
        records.push((key.value().to_string(), value.value().to_vec()));
    }
    assert_eq!(
        records,
        vec![
            ("format".to_string(), envelope(1, 1, &[0x01])),
            ("node".to_string(), envelope(2, 1, &[0x04])),
        ]
    );
}

#[test]
fn flipped_bytes_give_an_error_or_a_committed_state() {
    let seed = test_seed(0x00ca_7a10);
    let mut random = SeededRandom::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CATALOG_FILE_NAME);
    let indexes_committed = write_history(dir.path());
    let newest = *indexes_committed.last().unwrap();
    let original = std::fs::read(&path).unwrap();

    // Flips inside the newest metadata record, where damage must be noticed: the open is
    // refused, or falls back to an earlier commit, but never returns the damaged record.
    let newest_record = envelope(
        RecordKind::Metadata.tag(),
        1,
        &postcard::to_stdvec(&(newest, Payload::for_index(newest))).unwrap(),
    );
    let record_at = original
        .windows(newest_record.len())
        .position(|window| window == newest_record)
        .expect("the newest metadata record is stored verbatim");
    let targeted_flips = 4;
    for flip in 0..targeted_flips {
        let position = record_at + random.between(0, newest_record.len() as u64 - 1) as usize;
        let context = format!("seed {seed}, targeted flip {flip} at byte {position}");
        let outcome = open_with_flip(
            &path,
            &original,
            position,
            &mut random,
            &indexes_committed,
            &context,
        );
        assert_ne!(
            outcome,
            Some(Some(newest)),
            "{context}: damage went unnoticed"
        );
    }

    // Flips anywhere, mostly in bytes that carry something (headers, pages in use).
    let nonzero: Vec<usize> = (0..original.len()).filter(|&i| original[i] != 0).collect();
    let flips_max = 24;
    let mut refused = 0;
    for flip in 0..flips_max {
        let position = if flip % 4 == 3 {
            random.between(0, original.len() as u64 - 1) as usize
        } else {
            nonzero[random.between(0, nonzero.len() as u64 - 1) as usize]
        };
        let context = format!("seed {seed}, flip {flip} at byte {position}");
        let outcome = open_with_flip(
            &path,
            &original,
            position,
            &mut random,
            &indexes_committed,
            &context,
        );
        refused += u32::from(outcome.is_none());
    }
    eprintln!(
        "seed {seed}: {refused} of {flips_max} random flips refused, the rest read committed states"
    );
}

#[test]
fn a_truncated_file_gives_an_error_or_a_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CATALOG_FILE_NAME);
    let indexes_committed = write_history(dir.path());
    let original = std::fs::read(&path).unwrap();
    let length = original.len();
    for kept in [0, 1, 100, 511, 4096, length / 2, length - 4096, length - 1] {
        std::fs::write(&path, &original[..kept]).unwrap();
        let context = format!("truncated to {kept} of {length} bytes");
        let outcome = open_damaged(dir.path(), &indexes_committed, &context);
        if kept == 0 {
            assert_eq!(
                outcome, None,
                "{context}: an emptied file must not start a fresh catalog"
            );
        }
    }
}

/// Writes `original` with the byte at `position` changed, then opens it like `open_damaged`.
fn open_with_flip(
    path: &Path,
    original: &[u8],
    position: usize,
    random: &mut SeededRandom,
    indexes_committed: &[u64],
    context: &str,
) -> Option<Option<u64>> {
    let mut damaged = original.to_vec();
    damaged[position] ^= random.between(1, 255) as u8;
    std::fs::write(path, &damaged).unwrap();
    open_damaged(path.parent().unwrap(), indexes_committed, context)
}

/// Writes several commits; returns the applied indexes committed (any may be read back after
/// damage that makes redb fall back to an earlier commit).
fn write_history(data_dir: &Path) -> Vec<u64> {
    let catalog = Catalog::open(data_dir, NodeId(1)).unwrap();
    catalog.set_cluster_id(ClusterId(77)).unwrap();
    let indexes: Vec<u64> = (1..=6).map(|step| step * 10).collect();
    for &index in &indexes {
        catalog
            .save_metadata(index, &Payload::for_index(index))
            .unwrap();
        catalog
            .save_migration_checkpoint(index % 3, &Payload::for_index(index))
            .unwrap();
    }
    catalog.close().unwrap();
    indexes
}

/// Opens the damaged catalog. `None` if it was refused with a clear error; otherwise checks
/// that everything read is a state that was committed and returns the metadata's index.
fn open_damaged(data_dir: &Path, indexes_committed: &[u64], context: &str) -> Option<Option<u64>> {
    let catalog = match Catalog::open(data_dir, NodeId(1)) {
        Ok(catalog) => catalog,
        Err(error) => {
            assert_refusal_is_clear(&error, context);
            return None;
        }
    };
    let read = (|| -> Result<Option<u64>, CatalogError> {
        let cluster = catalog.cluster_id()?;
        assert!(
            cluster.is_none() || cluster == Some(ClusterId(77)),
            "{context}: cluster id {cluster:?}"
        );
        let metadata = catalog.load_metadata::<Payload>()?;
        if let Some((index, state)) = &metadata {
            assert!(
                indexes_committed.contains(index) && *state == Payload::for_index(*index),
                "{context}: metadata at {index} is {state:?}"
            );
        }
        for (id, checkpoint) in catalog.list_migration_checkpoints::<Payload>()? {
            assert!(
                checkpoint.is_consistent() && checkpoint.index % 3 == id,
                "{context}: checkpoint {id} is {checkpoint:?}"
            );
        }
        Ok(metadata.map(|(index, _)| index))
    })();
    match read {
        Ok(index) => Some(index),
        Err(error) => {
            assert_refusal_is_clear(&error, context);
            None
        }
    }
}

fn assert_refusal_is_clear(error: &CatalogError, context: &str) {
    assert!(
        matches!(
            error,
            CatalogError::Corrupt { .. } | CatalogError::NodeIdMismatch { .. }
        ),
        "{context}: unexpected error {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("corrupt") || message.contains("belongs to node"),
        "{context}: {message}"
    );
}

/// Replaces one record of the `meta` table behind the catalog's back.
fn overwrite_meta(path: &Path, key: &str, value: &[u8]) {
    let database = redb::Database::open(path).unwrap();
    let transaction = database.begin_write().unwrap();
    transaction
        .open_table(META)
        .unwrap()
        .insert(key, value)
        .unwrap();
    transaction.commit().unwrap();
}

/// An envelope built from the layout in docs/design.md, independently of the crate's encoder.
fn envelope(tag: u8, version: u16, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![tag];
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes), body);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}
