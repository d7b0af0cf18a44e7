//! Damaged or foreign bytes in the Raft log file are reported as typed errors, never panics:
//! the tests edit the file with redb directly, using the layout documented in
//! `docs/design.md` ("Raft log file").

use std::path::Path;

use nodedb_cluster_core::GroupId;
use nodedb_cluster_raft::log_db::{CorruptReason, LogDb, LogDbError, MetaKey};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const LOG_TABLE: TableDefinition<'static, (u32, u64), &'static [u8]> =
    TableDefinition::new("raft_log");
const PIECES_TABLE: TableDefinition<'static, (u32, u64, u32), &'static [u8]> =
    TableDefinition::new("raft_log_pieces");
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
        header.insert("format", 3).unwrap();
    });
    assert!(matches!(
        LogDb::open(&path),
        Err(LogDbError::UnsupportedFormat {
            found: 3,
            supported: 2
        })
    ));
}

/// A file of the format before pieced records (whole records only) is read as it is, and
/// marked with the current format so that an older build refuses it once it may hold pieces.
#[tokio::test]
async fn log_db_reads_a_file_of_the_format_before_pieces_and_marks_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    write_sample(&path).await;
    edit(&path, |txn| {
        let mut header = txn.open_table(HEADER_TABLE).unwrap();
        header.insert("format", 1).unwrap();
        txn.delete_table(PIECES_TABLE).unwrap();
    });
    let db = LogDb::open(&path).unwrap();
    let entries = db.entries(G1, 1..4).unwrap();
    assert_eq!(
        entries,
        (1..=3u64)
            .map(|i| (i, vec![i as u8; 10]))
            .collect::<Vec<_>>()
    );
    db.append_durable(G1, vec![(4, vec![4; 100_000])])
        .await
        .unwrap();
    db.shutdown();
    let raw = Database::open(&path).unwrap();
    let txn = raw.begin_read().unwrap();
    let header = txn.open_table(HEADER_TABLE).unwrap();
    assert_eq!(header.get("format").unwrap().unwrap().value(), 2);
}

#[tokio::test]
async fn log_db_reports_a_missing_or_damaged_piece() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let db = LogDb::open(&path).unwrap();
    // 70 000 bytes: a piece of 16 pages, one of a page, and a tail in the record.
    let large: Vec<(u64, Vec<u8>)> = (1..=2u64).map(|i| (i, vec![i as u8; 70_000])).collect();
    db.append_durable(G1, large.clone()).await.unwrap();
    assert_eq!(db.entries(G1, 1..3).unwrap(), large);
    db.shutdown();
    edit(&path, |txn| {
        let mut pieces = txn.open_table(PIECES_TABLE).unwrap();
        assert!(pieces.remove((1, 1, 0)).unwrap().is_some());
        let mut piece = pieces.get((1, 2, 0)).unwrap().unwrap().value().to_vec();
        piece[1000] ^= 0x08;
        pieces.insert((1, 2, 0), piece.as_slice()).unwrap();
    });
    let db = LogDb::open(&path).unwrap();
    assert!(matches!(
        db.entries(G1, 1..2),
        Err(LogDbError::Corrupt {
            index: 1,
            reason: CorruptReason::MissingPieces {
                expected: 2,
                found: 1
            },
            ..
        })
    ));
    assert!(matches!(
        db.entries(G1, 2..3),
        Err(LogDbError::Corrupt {
            index: 2,
            reason: CorruptReason::ChecksumMismatch { .. },
            ..
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
