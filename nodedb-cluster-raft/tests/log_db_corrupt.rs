//! Damaged or foreign bytes in the Raft log file are reported as typed errors, never panics:
//! the tests edit the file with redb directly, using the layout documented in
//! `docs/design.md` ("Raft log file").

use std::path::Path;

use nodedb_cluster_core::GroupId;
use nodedb_cluster_raft::log_db::{CorruptReason, LogDb, LogDbError, MetaKey};
use redb::{Database, ReadableTable, TableDefinition};

const LOG_TABLE: TableDefinition<'static, (u32, u64), &'static [u8]> =
    TableDefinition::new("raft_log");
const META_TABLE: TableDefinition<'static, (u32, u8), &'static [u8]> =
    TableDefinition::new("raft_meta");
const HEADER_TABLE: TableDefinition<'static, &'static str, u32> =
    TableDefinition::new("raft_log_header");
const G1: GroupId = GroupId(1);

async fn write_sample(path: &Path) {
    let db = LogDb::open(path).unwrap();
    let entries = (1..=3u64).map(|i| (i, vec![i as u8; 10])).collect();
    db.append_durable(G1, entries).await.unwrap();
    db.put_meta(G1, MetaKey::Vote, b"vote".to_vec())
        .await
        .unwrap();
    db.shutdown();
}

fn edit(path: &Path, change: impl FnOnce(&redb::WriteTransaction)) {
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    change(&txn);
    txn.commit().unwrap();
}

#[tokio::test]
async fn log_db_reports_a_flipped_byte_in_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    write_sample(&path).await;
    edit(&path, |txn| {
        let mut log = txn.open_table(LOG_TABLE).unwrap();
        let mut record = log.get((1, 2)).unwrap().unwrap().value().to_vec();
        record[7] ^= 0x40;
        log.insert((1, 2), record.as_slice()).unwrap();
    });
    let db = LogDb::open(&path).unwrap();
    assert_eq!(db.entries(G1, 1..2).unwrap().len(), 1);
    match db.entries(G1, 1..4) {
        Err(LogDbError::Corrupt {
            group,
            index,
            reason: CorruptReason::ChecksumMismatch { .. },
        }) => assert_eq!((group, index), (G1, 2)),
        other => panic!("expected a checksum error, got {other:?}"),
    }
}

#[tokio::test]
async fn log_db_reports_short_and_newer_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    write_sample(&path).await;
    edit(&path, |txn| {
        let mut log = txn.open_table(LOG_TABLE).unwrap();
        log.insert((1, 1), &[1u8, 2][..]).unwrap();
        log.insert((1, 3), &[9u8, 0, 0, 0, 0][..]).unwrap();
        let mut meta = txn.open_table(META_TABLE).unwrap();
        meta.insert((1, MetaKey::Vote.tag()), &[][..]).unwrap();
    });
    let db = LogDb::open(&path).unwrap();
    assert!(matches!(
        db.entries(G1, 1..2),
        Err(LogDbError::Corrupt {
            reason: CorruptReason::TooShort { len: 2 },
            ..
        })
    ));
    assert!(matches!(
        db.entries(G1, 3..4),
        Err(LogDbError::Corrupt {
            reason: CorruptReason::UnsupportedVersion { found: 9, .. },
            ..
        })
    ));
    assert!(matches!(
        db.meta(G1, MetaKey::Vote),
        Err(LogDbError::CorruptMeta {
            key: MetaKey::Vote,
            ..
        })
    ));
}

#[tokio::test]
async fn log_db_refuses_a_newer_file_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    write_sample(&path).await;
    edit(&path, |txn| {
        let mut header = txn.open_table(HEADER_TABLE).unwrap();
        header.insert("format", 2).unwrap();
    });
    assert!(matches!(
        LogDb::open(&path),
        Err(LogDbError::UnsupportedFormat {
            found: 2,
            supported: 1
        })
    ));
}

#[test]
fn log_db_refuses_a_file_that_is_not_redb() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    assert!(matches!(LogDb::open(&path), Err(LogDbError::Open { .. })));
}
