//! The catalog's public API on the happy path and its documented refusals of bad writes.

use crate::Payload;
use nodedb_cluster_catalog::{
    CATALOG_FILE_NAME, Catalog, CatalogError, ClusterId, MIGRATION_CHECKPOINTS_MAX,
};
use nodedb_cluster_core::NodeId;

#[test]
fn missing_file_starts_empty_and_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("not-yet-there");
    let catalog = Catalog::open(&data_dir, NodeId(7)).unwrap();
    assert_eq!(catalog.node_id(), NodeId(7));
    assert_eq!(catalog.path(), data_dir.join(CATALOG_FILE_NAME));
    assert_eq!(catalog.cluster_id().unwrap(), None);
    assert_eq!(catalog.metadata_applied_index().unwrap(), None);
    assert_eq!(catalog.load_metadata::<Payload>().unwrap(), None);
    assert!(
        catalog
            .list_migration_checkpoints::<Payload>()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        catalog.load_migration_checkpoint::<Payload>(1).unwrap(),
        None
    );
    catalog.close().unwrap();

    let names: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![CATALOG_FILE_NAME],
        "no staging file is left behind"
    );
}

#[test]
fn a_staging_file_left_by_a_crashed_creation_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join(format!("{CATALOG_FILE_NAME}.new-4000000"));
    std::fs::write(&staging, b"half-built").unwrap();
    Catalog::open(dir.path(), NodeId(1)).unwrap();
    assert!(!staging.exists());
}

#[test]
fn everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path(), NodeId(1)).unwrap();
    catalog.set_cluster_id(ClusterId(0xabc)).unwrap();
    catalog.save_metadata(5, &Payload::for_index(5)).unwrap();
    catalog
        .save_migration_checkpoint(9, &Payload::for_index(9))
        .unwrap();
    catalog
        .save_migration_checkpoint(3, &Payload::for_index(3))
        .unwrap();
    catalog.close().unwrap();

    let catalog = Catalog::open(dir.path(), NodeId(1)).unwrap();
    assert_eq!(catalog.cluster_id().unwrap(), Some(ClusterId(0xabc)));
    assert_eq!(catalog.metadata_applied_index().unwrap(), Some(5));
    assert_eq!(
        catalog.load_metadata::<Payload>().unwrap(),
        Some((5, Payload::for_index(5)))
    );
    assert_eq!(
        catalog.list_migration_checkpoints::<Payload>().unwrap(),
        vec![(3, Payload::for_index(3)), (9, Payload::for_index(9))]
    );
    assert!(catalog.remove_migration_checkpoint(3).unwrap());
    assert!(!catalog.remove_migration_checkpoint(3).unwrap());
    assert_eq!(
        catalog.load_migration_checkpoint::<Payload>(3).unwrap(),
        None
    );
}

#[test]
fn cluster_id_is_set_once() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path(), NodeId(1)).unwrap();
    catalog.set_cluster_id(ClusterId(1)).unwrap();
    catalog.set_cluster_id(ClusterId(1)).unwrap();
    let error = catalog.set_cluster_id(ClusterId(2)).unwrap_err();
    assert!(
        matches!(
            error,
            CatalogError::ClusterIdMismatch {
                stored: ClusterId(1),
                attempted: ClusterId(2)
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("fresh data_dir"), "{error}");
    assert_eq!(catalog.cluster_id().unwrap(), Some(ClusterId(1)));
}

#[test]
fn applied_index_never_goes_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path(), NodeId(1)).unwrap();
    catalog.save_metadata(10, &Payload::for_index(10)).unwrap();

    let error = catalog
        .save_metadata(9, &Payload::for_index(9))
        .unwrap_err();
    assert!(
        matches!(
            error,
            CatalogError::MetadataIndexRegressed {
                stored: 10,
                attempted: 9
            }
        ),
        "{error:?}"
    );

    // The same state at the same index is idempotent; a different one is refused.
    catalog.save_metadata(10, &Payload::for_index(10)).unwrap();
    let error = catalog
        .save_metadata(10, &Payload::for_index(11))
        .unwrap_err();
    assert!(
        matches!(error, CatalogError::MetadataConflict { applied_index: 10 }),
        "{error:?}"
    );

    catalog.save_metadata(11, &Payload::for_index(11)).unwrap();
    assert_eq!(
        catalog.load_metadata::<Payload>().unwrap(),
        Some((11, Payload::for_index(11)))
    );
}

#[test]
fn a_stored_state_read_as_another_type_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path(), NodeId(1)).unwrap();
    catalog.save_metadata(1, &String::from("text")).unwrap();
    let error = catalog.load_metadata::<(u64, u64, u64)>().unwrap_err();
    assert!(
        matches!(error, CatalogError::Undecodable { .. }),
        "{error:?}"
    );
}

#[test]
fn migration_checkpoints_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path(), NodeId(1)).unwrap();
    let count_max = u64::from(MIGRATION_CHECKPOINTS_MAX);
    for migration_id in 0..count_max {
        catalog
            .save_migration_checkpoint(migration_id, &())
            .unwrap();
    }
    let error = catalog
        .save_migration_checkpoint(count_max, &())
        .unwrap_err();
    assert!(
        matches!(error, CatalogError::TooManyMigrationCheckpoints { .. }),
        "{error:?}"
    );
    // Replacing an existing one and saving after a removal are still allowed.
    catalog.save_migration_checkpoint(0, &()).unwrap();
    assert!(catalog.remove_migration_checkpoint(0).unwrap());
    catalog.save_migration_checkpoint(count_max, &()).unwrap();
    let listed = catalog.list_migration_checkpoints::<()>().unwrap();
    assert_eq!(listed.len() as u64, count_max);
}

#[test]
fn catalog_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Catalog>();
}
