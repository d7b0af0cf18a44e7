//! openraft's `RaftLogStorage` / `RaftLogReader` for one group over the node's shared
//! [`LogDb`]: entries, vote, committed id and last purged id are stored as versioned postcard
//! records (layouts pinned in `wire`). Entries appended and not applied yet are read back from
//! memory ([`RecentEntries`]).

use crate::log_db::{LogDb, LogDbError, MetaKey};
use crate::recent_entries::RecentEntries;
use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::wire;
use nodedb_cluster_core::GroupId;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes of entries one AppendEntries carries (past one entry): openraft asks for up to
/// `max_payload_entries` at a time, which for large entries (vShard imports, big values) made
/// RPCs of tens of MiB that missed their deadline and were sent again in full.
pub(crate) const REPLICATION_BYTES_MAX: usize = 1024 * 1024;

/// The log of one group replica. Cheap to clone: every clone reads the same file and the
/// same recent entries.
#[derive(Clone)]
pub struct GroupLog {
    group: GroupId,
    db: LogDb,
    recent: Arc<Mutex<RecentEntries>>,
}

impl GroupLog {
    pub fn new(group: GroupId, db: LogDb) -> GroupLog {
        GroupLog {
            group,
            db,
            recent: Arc::default(),
        }
    }

    fn recent(&self) -> MutexGuard<'_, RecentEntries> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_log_id(&self, key: MetaKey) -> io::Result<Option<LogId>> {
        match self.db.meta(self.group, key).map_err(storage)? {
            None => Ok(None),
            Some(bytes) => wire::decode_log_id(&bytes).map_err(|error| corrupt(self.group, error)),
        }
    }

    /// Stored entries decoded, each checked to be stored at its own index.
    fn decode_entries(&self, stored: Vec<(u64, Vec<u8>)>) -> io::Result<Vec<Entry>> {
        let mut entries = Vec::with_capacity(stored.len());
        for (index, bytes) in stored {
            let entry = wire::decode_entry(&bytes).map_err(|error| corrupt(self.group, error))?;
            if entry.log_id.index != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: entry stored at {index} claims index {}",
                        self.group, entry.log_id.index
                    ),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        let Some(last) = self.db.last_index(self.group).map_err(storage)? else {
            return Ok(None);
        };
        let entries = self
            .db
            .entries(self.group, last..last.saturating_add(1))
            .map_err(storage)?;
        match entries.into_iter().next() {
            None => Ok(None),
            Some((_, bytes)) => Ok(Some(
                wire::decode_entry(&bytes).map_err(|error| corrupt(self.group, error))?,
            )),
        }
    }
}

impl RaftLogReader<TypeConfig> for GroupLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(start) => *start,
            Bound::Excluded(start) => start.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(end) => end.saturating_add(1),
            Bound::Excluded(end) => *end,
            Bound::Unbounded => u64::MAX,
        };
        // openraft reads a range this way to apply it (and, rarely, for membership at startup):
        // once applied, an entry is read again only for a lagging follower, from the file.
        {
            let mut recent = self.recent();
            if let Some(entries) = recent.range(start, end) {
                recent.forget_through(end - 1);
                return Ok(entries);
            }
        }
        let stored = self.db.entries(self.group, start..end).map_err(storage)?;
        self.decode_entries(stored)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        if let Some(entries) = self.recent().up_to(start, end, REPLICATION_BYTES_MAX) {
            return Ok(entries);
        }
        let stored = self
            .db
            .entries_up_to(self.group, start..end, REPLICATION_BYTES_MAX)
            .map_err(storage)?;
        self.decode_entries(stored)
    }

    /// The replica's vote, or, for a replica created again on this node, the vote its removed
    /// predecessor held (see [`MetaKey::RemovedVote`]), as not committed: a replica that has no
    /// log and no membership must never restore itself as the leader it once was.
    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        let Some(stored) = self.db.vote(self.group).map_err(storage)? else {
            return Ok(None);
        };
        let mut vote =
            wire::decode_vote(&stored.bytes).map_err(|error| corrupt(self.group, error))?;
        if stored.kept_from_removed {
            vote.committed = false;
        }
        Ok(Some(vote))
    }
}

/// Whether `group`'s committed id is written lazily (see `save_committed`): every group's but
/// the metadata group's.
pub fn committed_id_is_lazy(group: GroupId) -> bool {
    !group.is_metadata()
}

impl RaftLogStorage<TypeConfig> for GroupLog {
    type LogReader = GroupLog;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id = self.read_log_id(MetaKey::LastPurged)?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> GroupLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let bytes = wire::encode_vote(vote);
        self.db
            .put_meta(self.group, MetaKey::Vote, bytes)
            .await
            .map_err(storage)
    }

    /// openraft applies entries once this returns. The metadata group waits until the id is
    /// durable: everything that follows its applied state (replica hosting, the catalog) may
    /// then rely on a restart never going back. A data group's id is written lazily, with the
    /// next transaction, which takes a transaction off every commit; a restart may then come
    /// back to an older applied index, so reads of a replica's applied state without a read
    /// barrier first wait for the id with [`LogDb::sync_meta`] (`MultiRaft::query`).
    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        let bytes = wire::encode_log_id(&committed);
        if committed_id_is_lazy(self.group) {
            self.db
                .put_meta_lazy(self.group, MetaKey::Committed, bytes)
                .await;
            return Ok(());
        }
        self.db
            .put_meta(self.group, MetaKey::Committed, bytes)
            .await
            .map_err(storage)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        self.read_log_id(MetaKey::Committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|entry| (entry.log_id.index, wire::encode_entry(entry)))
            .collect();
        if encoded.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        self.db.append(
            self.group,
            encoded,
            Box::new(move |result| callback.io_completed(result.map_err(storage))),
        );
        self.recent().appended(&entries);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |log_id| log_id.index.saturating_add(1));
        self.recent().truncating(from);
        self.db
            .truncate_from(self.group, from)
            .await
            .map_err(storage)
    }

    /// openraft purges only what a durable snapshot covers, and awaits the purge in the
    /// group's core loop: both writes are lazy, so the group never waits for the disk here. A
    /// crash that loses them leaves entries the snapshot covers, as a crash before the call
    /// would; the writer keeps their order, so no entry is gone from disk before the purge
    /// point that accounts for it.
    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let bytes = wire::encode_log_id(&Some(log_id));
        self.recent().forget_through(log_id.index);
        self.db
            .put_meta_lazy(self.group, MetaKey::LastPurged, bytes)
            .await;
        self.db.purge_through(self.group, log_id.index).await;
        Ok(())
    }
}

fn storage(error: LogDbError) -> io::Error {
    io::Error::other(error)
}

fn corrupt(group: GroupId, error: wire::DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{group}: {error}"))
}
