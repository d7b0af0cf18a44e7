//! The redb side of the log: table definitions, the format check at open, loading every group's
//! bounds, applying one batch of queued operations in one write transaction, and reading a
//! committed range back with its records verified.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use nodedb_cluster_core::GroupId;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
};

use super::record::{self, CorruptReason, Decoded};
use super::state::{GroupState, Op};
use super::{LogDbError, MetaKey};

/// `(group, index)` -> record (header + entry payload, or its tail when pieced).
pub(crate) const LOG_TABLE: TableDefinition<'static, (u32, u64), &'static [u8]> =
    TableDefinition::new("raft_log");
/// `(group, index, piece)` -> the pieces of a pieced record, in payload order from 0.
pub(crate) const PIECES_TABLE: TableDefinition<'static, (u32, u64, u32), &'static [u8]> =
    TableDefinition::new("raft_log_pieces");
/// `(group, meta key tag)` -> record (header + value).
pub(crate) const META_TABLE: TableDefinition<'static, (u32, u8), &'static [u8]> =
    TableDefinition::new("raft_meta");
/// `group` -> highest index ever purged, so the next append index is known after a restart
/// even when the log is empty.
pub(crate) const PURGED_TABLE: TableDefinition<'static, u32, u64> =
    TableDefinition::new("raft_purged");
/// `"format"` -> file format version.
pub(crate) const HEADER_TABLE: TableDefinition<'static, &'static str, u32> =
    TableDefinition::new("raft_log_header");

/// File format written by this build; a file with a newer version is refused. Version 2 added
/// pieced records; a version 1 file is read as it is and marked version 2 at open, so that a
/// build that cannot read pieces refuses it instead of calling its records corrupt.
pub const LOG_FORMAT_VERSION: u32 = 2;
const PIECELESS_FORMAT_VERSION: u32 = 1;
const FORMAT_KEY: &str = "format";

/// Creates the tables and checks (or writes) the format version.
pub(crate) fn prepare(db: &Database) -> Result<(), LogDbError> {
    let context = "preparing tables";
    let txn = db.begin_write().map_err(LogDbError::storage(context))?;
    let found = {
        let mut header = txn
            .open_table(HEADER_TABLE)
            .map_err(LogDbError::storage(context))?;
        let found = header
            .get(FORMAT_KEY)
            .map_err(LogDbError::storage(context))?
            .map(|v| v.value());
        if found.is_none_or(|found| found == PIECELESS_FORMAT_VERSION) {
            header
                .insert(FORMAT_KEY, LOG_FORMAT_VERSION)
                .map_err(LogDbError::storage(context))?;
        }
        found
    };
    if let Some(found) = found
        && found != LOG_FORMAT_VERSION
        && found != PIECELESS_FORMAT_VERSION
    {
        return Err(LogDbError::UnsupportedFormat {
            found,
            supported: LOG_FORMAT_VERSION,
        });
    }
    txn.open_table(LOG_TABLE)
        .map_err(LogDbError::storage(context))?;
    txn.open_table(PIECES_TABLE)
        .map_err(LogDbError::storage(context))?;
    txn.open_table(META_TABLE)
        .map_err(LogDbError::storage(context))?;
    txn.open_table(PURGED_TABLE)
        .map_err(LogDbError::storage(context))?;
    txn.commit().map_err(LogDbError::storage(context))?;
    Ok(())
}

/// Reads every group's first/last index, purge mark and meta keys.
pub(crate) fn load_groups(db: &Database) -> Result<HashMap<GroupId, GroupState>, LogDbError> {
    let context = "loading group bounds";
    let txn = db.begin_read().map_err(LogDbError::storage(context))?;
    let log = txn
        .open_table(LOG_TABLE)
        .map_err(LogDbError::storage(context))?;
    let mut bounds: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut from = (0u32, 0u64);
    loop {
        let next = log
            .range(from..)
            .map_err(LogDbError::storage(context))?
            .next()
            .transpose()
            .map_err(LogDbError::storage(context))?;
        let Some((key, _)) = next else { break };
        let (group, first) = key.value();
        let last = log
            .range((group, first)..=(group, u64::MAX))
            .map_err(LogDbError::storage(context))?
            .next_back()
            .transpose()
            .map_err(LogDbError::storage(context))?
            .map_or(first, |(key, _)| key.value().1);
        bounds.insert(group, (first, last));
        let Some(next_group) = group.checked_add(1) else {
            break;
        };
        from = (next_group, 0);
    }

    let mut metas: BTreeMap<u32, BTreeSet<u8>> = BTreeMap::new();
    let meta = txn
        .open_table(META_TABLE)
        .map_err(LogDbError::storage(context))?;
    for item in meta.iter().map_err(LogDbError::storage(context))? {
        let (key, _) = item.map_err(LogDbError::storage(context))?;
        let (group, tag) = key.value();
        metas.entry(group).or_default().insert(tag);
    }
    let mut purged: BTreeMap<u32, u64> = BTreeMap::new();
    let purged_table = txn
        .open_table(PURGED_TABLE)
        .map_err(LogDbError::storage(context))?;
    for item in purged_table.iter().map_err(LogDbError::storage(context))? {
        let (group, index) = item.map_err(LogDbError::storage(context))?;
        purged.insert(group.value(), index.value());
    }

    let ids: BTreeSet<u32> = bounds
        .keys()
        .chain(metas.keys())
        .chain(purged.keys())
        .copied()
        .collect();
    Ok(ids
        .into_iter()
        .map(|id| {
            let state = GroupState::loaded(
                bounds.get(&id).copied(),
                purged.get(&id).copied(),
                metas.remove(&id).unwrap_or_default(),
            );
            (GroupId(id), state)
        })
        .collect())
}

/// Applies `ops` in order in one write transaction and commits it with an fsync.
pub(crate) fn apply_batch<'a>(
    db: &Database,
    quick_repair: bool,
    ops: impl Iterator<Item = (GroupId, &'a Op)>,
) -> Result<(), LogDbError> {
    let context = "committing a batch";
    let mut txn = db.begin_write().map_err(LogDbError::storage(context))?;
    txn.set_quick_repair(quick_repair);
    txn.set_durability(Durability::Immediate)
        .map_err(LogDbError::storage(context))?;
    {
        let mut tables = Tables {
            log: txn
                .open_table(LOG_TABLE)
                .map_err(LogDbError::storage(context))?,
            pieces: txn
                .open_table(PIECES_TABLE)
                .map_err(LogDbError::storage(context))?,
            meta: txn
                .open_table(META_TABLE)
                .map_err(LogDbError::storage(context))?,
            purged: txn
                .open_table(PURGED_TABLE)
                .map_err(LogDbError::storage(context))?,
            buffer: Vec::new(),
        };
        for (group, op) in ops {
            tables
                .apply(group.0, op)
                .map_err(LogDbError::storage(context))?;
        }
    }
    txn.commit().map_err(LogDbError::storage(context))?;
    Ok(())
}

/// Committed entries of `group` in `range`, verified, ascending, up to the one that brings
/// their size to `bytes_max`.
pub(crate) fn read_entries(
    txn: &ReadTransaction,
    group: GroupId,
    range: &Range<u64>,
    bytes_max: usize,
) -> Result<BTreeMap<u64, Vec<u8>>, LogDbError> {
    let context = "reading entries";
    let mut out = BTreeMap::new();
    let mut bytes = 0;
    if range.is_empty() {
        return Ok(out);
    }
    let log = txn
        .open_table(LOG_TABLE)
        .map_err(LogDbError::storage(context))?;
    let pieces = txn
        .open_table(PIECES_TABLE)
        .map_err(LogDbError::storage(context))?;
    let items = log
        .range((group.0, range.start)..(group.0, range.end))
        .map_err(LogDbError::storage(context))?;
    for item in items {
        let (key, value) = item.map_err(LogDbError::storage(context))?;
        let index = key.value().1;
        let corrupt = |reason| LogDbError::Corrupt {
            group,
            index,
            reason,
        };
        let payload = match record::decode_entry(value.value()).map_err(corrupt)? {
            Decoded::Whole(payload) => payload.to_vec(),
            Decoded::Pieced {
                crc,
                pieces: count,
                tail,
            } => {
                let stored = pieces
                    .range((group.0, index, 0)..(group.0, index, count))
                    .map_err(LogDbError::storage(context))?
                    .map(|item| item.map(|(_, piece)| piece))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(LogDbError::storage(context))?;
                let stored: Vec<&[u8]> = stored.iter().map(|piece| piece.value()).collect();
                record::assemble(crc, count, tail, &stored).map_err(corrupt)?
            }
        };
        bytes += payload.len();
        out.insert(index, payload);
        if bytes >= bytes_max {
            break;
        }
    }
    Ok(out)
}

/// The committed value of meta `key` of `group`, verified.
pub(crate) fn read_meta(
    db: &Database,
    group: GroupId,
    key: MetaKey,
) -> Result<Option<Vec<u8>>, LogDbError> {
    let context = "reading meta";
    let txn = db.begin_read().map_err(LogDbError::storage(context))?;
    let meta = txn
        .open_table(META_TABLE)
        .map_err(LogDbError::storage(context))?;
    let Some(value) = meta
        .get((group.0, key.tag()))
        .map_err(LogDbError::storage(context))?
    else {
        return Ok(None);
    };
    let payload = record::decode_whole(value.value())
        .map_err(|reason: CorruptReason| LogDbError::CorruptMeta { group, key, reason })?;
    Ok(Some(payload.to_vec()))
}

struct Tables<'txn> {
    log: Table<'txn, (u32, u64), &'static [u8]>,
    pieces: Table<'txn, (u32, u64, u32), &'static [u8]>,
    meta: Table<'txn, (u32, u8), &'static [u8]>,
    purged: Table<'txn, u32, u64>,
    buffer: Vec<u8>,
}

impl Tables<'_> {
    fn apply(&mut self, group: u32, op: &Op) -> Result<(), redb::Error> {
        match op {
            Op::Append { entries } => {
                for (index, payload) in entries {
                    self.append(group, *index, payload)?;
                }
            }
            Op::TruncateFrom { index } => {
                self.log
                    .retain_in((group, *index)..=(group, u64::MAX), |_, _| false)?;
                self.pieces
                    .retain_in((group, *index, 0)..=(group, u64::MAX, u32::MAX), |_, _| {
                        false
                    })?;
            }
            Op::PurgeThrough { index } => {
                self.log
                    .retain_in((group, 0)..=(group, *index), |_, _| false)?;
                self.pieces
                    .retain_in((group, 0, 0)..=(group, *index, u32::MAX), |_, _| false)?;
                let old = self.purged.get(group)?.map(|v| v.value());
                self.purged
                    .insert(group, old.map_or(*index, |old| old.max(*index)))?;
            }
            Op::PutMeta { key, value } => {
                record::encode_into(value, &mut self.buffer);
                self.meta
                    .insert((group, key.tag()), self.buffer.as_slice())?;
            }
            Op::RemoveGroup { kept } => {
                self.log
                    .retain_in((group, 0)..=(group, u64::MAX), |_, _| false)?;
                self.pieces
                    .retain_in((group, 0, 0)..=(group, u64::MAX, u32::MAX), |_, _| false)?;
                self.meta
                    .retain_in((group, 0)..=(group, u8::MAX), |_, _| false)?;
                self.purged.remove(group)?;
                for (key, value) in kept {
                    record::encode_into(value, &mut self.buffer);
                    self.meta
                        .insert((group, key.tag()), self.buffer.as_slice())?;
                }
            }
            Op::Sync => {}
        }
        Ok(())
    }

    /// Stores one entry, in pieces when it is larger than a page (see `record`). Pieces left
    /// at this index by an earlier, longer entry are never read: a record reads exactly as
    /// many as it names, and truncates and purges remove them.
    fn append(&mut self, group: u32, index: u64, payload: &[u8]) -> Result<(), redb::Error> {
        let mut pieces = 0u32;
        let mut pieced_len = 0;
        for len in record::piece_lens(payload.len()) {
            let piece = &payload[pieced_len..pieced_len + len];
            self.pieces.insert((group, index, pieces), piece)?;
            pieces += 1;
            pieced_len += len;
        }
        if pieces == 0 {
            record::encode_into(payload, &mut self.buffer);
        } else {
            record::encode_pieced_into(payload, pieces, pieced_len, &mut self.buffer);
        }
        self.log.insert((group, index), self.buffer.as_slice())?;
        Ok(())
    }
}
