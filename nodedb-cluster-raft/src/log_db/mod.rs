//! Durable Raft log storage for all groups of a node in one redb file. Stores opaque bytes (no
//! openraft types): the Raft integration encodes entries and votes, this module keeps them safe.
//!
//! One writer thread drains a bounded queue and commits every queued operation of every group
//! in one fsynced transaction (group commit). Reads see an operation as soon as it is queued:
//! each group keeps its pending operations in memory and reads replay them over a committed
//! snapshot. Layout and durability rules: `docs/design.md`, "Raft log file".

mod backend;
mod disk;
mod record;
mod state;
mod writer;

pub(crate) use backend::drop_cached_pages;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use nodedb_cluster_core::GroupId;
use redb::{Database, ReadableDatabase};
use tokio::sync::{Notify, oneshot};

pub use disk::LOG_FORMAT_VERSION;
pub use record::{CorruptReason, RECORD_HEADER_LEN, RECORD_VERSION};

use state::{GroupState, Op};

/// Called once with the outcome of a queued append: `Ok` only after it is durable.
pub type AppendDone = Box<dyn FnOnce(Result<(), LogDbError>) + Send>;

/// Per-group values stored beside the log. The tag is the on-disk key byte: never reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetaKey {
    Vote,
    Committed,
    LastPurged,
    Applied,
    Membership,
    /// The vote of a removed replica, kept so that a replica of the group created on this node
    /// again starts from it: a blank vote would take appends (and give votes) to leaders of
    /// terms this node already voted past, and a deposed leader could count it in a quorum.
    /// Does not make the group stored (a restart does not reopen it).
    RemovedVote,
    /// The highest log index a removed replica held (u64, little-endian; the highest over
    /// every replica removed here). Its acknowledgements up to there are forgotten, so a
    /// replica created here again votes only once its own log reaches that far. Kept and
    /// ignored by `groups()` like [`MetaKey::RemovedVote`].
    RemovedLastIndex,
}

impl MetaKey {
    /// The byte stored in the meta table key.
    pub fn tag(self) -> u8 {
        match self {
            MetaKey::Vote => 1,
            MetaKey::Committed => 2,
            MetaKey::LastPurged => 3,
            MetaKey::Applied => 4,
            MetaKey::Membership => 5,
            MetaKey::RemovedVote => 6,
            MetaKey::RemovedLastIndex => 7,
        }
    }

    /// Whether the value outlives the removal of the group's replica (and alone does not make
    /// the group stored).
    pub fn kept_on_removal(self) -> bool {
        matches!(self, MetaKey::RemovedVote | MetaKey::RemovedLastIndex)
    }

    /// The key for a stored tag; `None` for a tag this build does not know.
    pub fn from_tag(tag: u8) -> Option<MetaKey> {
        [
            MetaKey::Vote,
            MetaKey::Committed,
            MetaKey::LastPurged,
            MetaKey::Applied,
            MetaKey::Membership,
            MetaKey::RemovedVote,
            MetaKey::RemovedLastIndex,
        ]
        .into_iter()
        .find(|key| key.tag() == tag)
    }
}

/// A stored vote, see [`LogDb::vote`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVote {
    pub bytes: Vec<u8>,
    /// Kept from a removed replica of the group, not written by the current one.
    pub kept_from_removed: bool,
}

/// Bounds of the write path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogDbOptions {
    /// Operations waiting for the writer; enqueuing beyond it waits for room.
    pub write_queue_len_max: usize,
    /// Operations committed in one transaction.
    pub batch_ops_max: usize,
    /// Payload bytes committed in one transaction (a single larger operation still goes alone).
    pub batch_bytes_max: u64,
    /// redb quick repair: every commit also saves the allocator state and uses a two-phase
    /// commit (two fsyncs), so that reopening after a crash need not walk the whole file.
    pub quick_repair: bool,
    /// Longest a lazy write ([`LogDb::put_meta_lazy`]) waits for a transaction when nothing
    /// else is queued; it rides along with the next write otherwise.
    pub lazy_write_delay_max: Duration,
    /// Bytes of pages redb keeps in memory, those just written included.
    pub cache_bytes: usize,
}

impl Default for LogDbOptions {
    fn default() -> Self {
        LogDbOptions {
            write_queue_len_max: 4096,
            batch_ops_max: 1024,
            batch_bytes_max: 16 * 1024 * 1024,
            quick_repair: false,
            lazy_write_delay_max: Duration::from_millis(10),
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Writer counters: one committed batch is one fsync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogDbStats {
    pub batches_committed: u64,
    pub operations_committed: u64,
}

/// What can go wrong with the log file. Cloneable: one failed commit is reported to every
/// operation of its batch.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LogDbError {
    #[error("cannot open log file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<redb::Error>,
    },
    #[error("log file format {found} is newer than this build supports ({supported})")]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("log storage failed while {context}: {source}")]
    Storage {
        context: &'static str,
        #[source]
        source: Arc<redb::Error>,
    },
    #[error("cannot start the log writer thread: {source}")]
    Spawn {
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("log entry {index} of {group} is corrupt: {reason}")]
    Corrupt {
        group: GroupId,
        index: u64,
        reason: CorruptReason,
    },
    #[error("meta value {key:?} of {group} is corrupt: {reason}")]
    CorruptMeta {
        group: GroupId,
        key: MetaKey,
        reason: CorruptReason,
    },
    /// An earlier commit failed; what was queued after it was not written. Reopen the file.
    #[error("log file refuses work after an earlier failure: {first}")]
    Failed { first: Box<LogDbError> },
    #[error("log file is shut down")]
    Closed,
}

impl LogDbError {
    fn storage<E: Into<redb::Error>>(context: &'static str) -> impl Fn(E) -> LogDbError {
        move |error| LogDbError::Storage {
            context,
            source: Arc::new(error.into()),
        }
    }
}

/// Handle to the node's Raft log file. Cheap to clone; the file closes when the last clone is
/// dropped or `shutdown` is called.
#[derive(Clone)]
pub struct LogDb {
    handle: Arc<Handle>,
}

impl LogDb {
    /// Opens (creating if missing) the log file at `path` with default bounds.
    pub fn open(path: &Path) -> Result<LogDb, LogDbError> {
        LogDb::open_with(path, LogDbOptions::default())
    }

    /// Opens (creating if missing) the log file at `path` and starts the writer thread.
    pub fn open_with(path: &Path, options: LogDbOptions) -> Result<LogDb, LogDbError> {
        assert!(
            options.write_queue_len_max > 0 && options.batch_ops_max > 0,
            "log bounds must be positive: {options:?}"
        );
        let open_error = |error: redb::DatabaseError| LogDbError::Open {
            path: path.to_path_buf(),
            source: Arc::new(error.into()),
        };
        let backend = backend::UncachedFile::open(path).map_err(open_error)?;
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create_with_backend(backend)
            .map_err(open_error)?;
        disk::prepare(&db)?;
        let groups = disk::load_groups(&db)?;
        let db = Arc::new(db);
        let writer_db = Arc::clone(&db);
        let shared = Arc::new(Shared {
            options,
            state: Mutex::new(State {
                db: Some(db),
                groups,
                queue: Default::default(),
                closing: false,
                failure: None,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            room_async: Notify::new(),
            batches_committed: AtomicU64::new(0),
            operations_committed: AtomicU64::new(0),
        });
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("raft-log-writer".to_owned())
            .spawn(move || writer::run(&writer_shared, &writer_db))
            .map_err(|error| LogDbError::Spawn {
                source: Arc::new(error),
            })?;
        let writer_id = writer.thread().id();
        Ok(LogDb {
            handle: Arc::new(Handle {
                shared,
                writer: Mutex::new(Some(writer)),
                writer_id,
            }),
        })
    }

    /// Queues an append. The entries are readable through `entries`/`last_index` as soon as this
    /// returns (before fsync); `done` runs on the writer thread after the transaction holding
    /// them is durable, or with the error. Waits while the queue is full (except when called
    /// from a completion callback, which runs on the writer thread: then it queues past the
    /// bound rather than wait for itself).
    ///
    /// # Panics
    /// When the entries are not consecutive or do not continue the group's log (a caller bug).
    pub fn append(&self, group: GroupId, entries: Vec<(u64, Vec<u8>)>, done: AppendDone) {
        self.enqueue_blocking(group, Op::Append { entries }, done);
    }

    /// Like `append`, but awaits room in a full queue instead of blocking the thread: returns
    /// once queued (entries readable), `done` runs once they are durable.
    pub async fn append_async(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
        done: AppendDone,
    ) {
        self.enqueue_when_room(group, Op::Append { entries }, Write::Eager, done)
            .await;
    }

    /// Appends and waits until the entries are durable. Never blocks the runtime thread.
    pub async fn append_durable(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
    ) -> Result<(), LogDbError> {
        self.enqueue_async(group, Op::Append { entries }).await
    }

    /// Deletes entries with index >= `index`; durable on return.
    pub async fn truncate_from(&self, group: GroupId, index: u64) -> Result<(), LogDbError> {
        self.enqueue_async(group, Op::TruncateFrom { index }).await
    }

    /// Deletes entries with index <= `index` lazily: unreadable on return, durable with the next
    /// transaction, as [`LogDb::put_meta_lazy`]. For a purge that a crash may undo: one behind
    /// a durable snapshot only leaves entries the snapshot covers.
    pub async fn purge_through(&self, group: GroupId, index: u64) {
        let op = Op::PurgeThrough { index };
        self.enqueue_when_room(group, op, Write::Lazy, Box::new(|_| {}))
            .await;
    }

    /// Stores a meta value; durable on return (a vote must be, before it is answered).
    pub async fn put_meta(
        &self,
        group: GroupId,
        key: MetaKey,
        value: Vec<u8>,
    ) -> Result<(), LogDbError> {
        self.enqueue_async(group, Op::PutMeta { key, value }).await
    }

    /// Stores a meta value lazily: readable on return, durable with the next transaction, which
    /// this write does not start by itself before `lazy_write_delay_max`. For values that may
    /// lag on disk as long as [`LogDb::sync_meta`] is called before anything relies on them.
    pub async fn put_meta_lazy(&self, group: GroupId, key: MetaKey, value: Vec<u8>) {
        let op = Op::PutMeta { key, value };
        self.enqueue_when_room(group, op, Write::Lazy, Box::new(|_| {}))
            .await;
    }

    /// Returns once every queued write of meta `key` of `group` is durable (at once when none
    /// is pending).
    pub async fn sync_meta(&self, group: GroupId, key: MetaKey) -> Result<(), LogDbError> {
        let pending = {
            let state = self.shared().lock();
            state.check_open()?;
            state
                .groups
                .get(&group)
                .is_some_and(|g| state::meta_write_pending(&g.pending, key))
        };
        match pending {
            // The writer commits in queue order: once `Sync` is durable, so is what was before.
            true => self.enqueue_async(group, Op::Sync).await,
            false => Ok(()),
        }
    }

    /// Deletes every entry, meta value and purge mark of `group`, in the same transaction
    /// keeping its last vote as [`MetaKey::RemovedVote`] and the highest index it held as
    /// [`MetaKey::RemovedLastIndex`]; durable on return.
    pub async fn remove_group(&self, group: GroupId) -> Result<(), LogDbError> {
        let mut kept = Vec::new();
        if let Some(vote) = self.vote(group)? {
            kept.push((MetaKey::RemovedVote, vote.bytes));
        }
        let held = {
            let state = self.shared().lock();
            state.check_open()?;
            let group = state.groups.get(&group);
            group.and_then(|g| g.last.max(g.purged_through))
        };
        let last_index = held.max(self.removed_last_index(group)?);
        if let Some(index) = last_index {
            kept.push((MetaKey::RemovedLastIndex, index.to_le_bytes().to_vec()));
        }
        self.enqueue_async(group, Op::RemoveGroup { kept }).await
    }

    /// The highest log index held by a replica of `group` this node removed, if it removed
    /// one ([`MetaKey::RemovedLastIndex`]).
    pub fn removed_last_index(&self, group: GroupId) -> Result<Option<u64>, LogDbError> {
        let Some(bytes) = self.meta(group, MetaKey::RemovedLastIndex)? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| LogDbError::CorruptMeta {
                group,
                key: MetaKey::RemovedLastIndex,
                reason: CorruptReason::WrongLength {
                    len: bytes.len() as u64,
                    expected: 8,
                },
            })?;
        Ok(Some(u64::from_le_bytes(bytes)))
    }

    /// The vote a replica of `group` on this node starts from: its own, or else the one kept
    /// from a removed replica of the group ([`MetaKey::RemovedVote`]).
    pub fn vote(&self, group: GroupId) -> Result<Option<StoredVote>, LogDbError> {
        if let Some(bytes) = self.meta(group, MetaKey::Vote)? {
            return Ok(Some(StoredVote {
                bytes,
                kept_from_removed: false,
            }));
        }
        let kept = self.meta(group, MetaKey::RemovedVote)?;
        Ok(kept.map(|bytes| StoredVote {
            bytes,
            kept_from_removed: true,
        }))
    }

    /// The latest queued value of meta `key`.
    pub fn meta(&self, group: GroupId, key: MetaKey) -> Result<Option<Vec<u8>>, LogDbError> {
        let db = {
            let state = self.shared().lock();
            let db = state.database()?;
            if let Some(pending) = state
                .groups
                .get(&group)
                .and_then(|g| state::pending_meta(&g.pending, key))
            {
                return Ok(pending);
            }
            db
        };
        // Nothing pending for this key: everything it depends on is committed, and a snapshot
        // taken now is at least that new.
        disk::read_meta(&db, group, key)
    }

    /// Entries of `group` with index in `range`, ascending; absent indexes are skipped.
    pub fn entries(
        &self,
        group: GroupId,
        range: Range<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, LogDbError> {
        self.entries_read(group, range, usize::MAX)
    }

    /// The first entries of `group` in `range`, of consecutive indexes, up to the one that
    /// brings their size to `bytes_max` (at least one entry when any is present), so that a
    /// reader of a log of large entries does not load all of them at once.
    pub fn entries_up_to(
        &self,
        group: GroupId,
        range: Range<u64>,
        bytes_max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, LogDbError> {
        let entries = self.entries_read(group, range, bytes_max)?;
        let mut bytes = 0;
        let mut expected = entries.first().map(|(index, _)| *index);
        Ok(entries
            .into_iter()
            .take_while(|(index, entry)| {
                let take = Some(*index) == expected && bytes < bytes_max;
                expected = index.checked_add(1);
                bytes += entry.len();
                take
            })
            .collect())
    }

    /// [`LogDb::entries`], reading from the file only until `bytes_max` is reached.
    fn entries_read(
        &self,
        group: GroupId,
        range: Range<u64>,
        bytes_max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, LogDbError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let (pending, snapshot) = {
            let state = self.shared().lock();
            let db = state.database()?;
            let pending: Vec<Arc<Op>> = match state.groups.get(&group) {
                Some(group_state) => {
                    if let Some(entries) = group_state.entries_from_overlay(&range) {
                        return Ok(entries);
                    }
                    group_state.pending.iter().cloned().collect()
                }
                None => Vec::new(),
            };
            // The snapshot is taken under the lock: it holds every operation already removed
            // from `pending` and none queued after this copy, so replaying `pending` over it
            // gives exactly the queued state.
            let snapshot = db
                .begin_read()
                .map_err(LogDbError::storage("beginning a read"))?;
            (pending, snapshot)
        };
        let mut entries = disk::read_entries(&snapshot, group, &range, bytes_max)?;
        state::replay_entries(&mut entries, &pending, &range);
        Ok(entries.into_iter().collect())
    }

    /// Lowest index present in `group`'s log, counting queued operations.
    pub fn first_index(&self, group: GroupId) -> Result<Option<u64>, LogDbError> {
        let state = self.shared().lock();
        state.check_open()?;
        Ok(state.groups.get(&group).and_then(|g| g.first))
    }

    /// Highest index present in `group`'s log, counting queued operations.
    pub fn last_index(&self, group: GroupId) -> Result<Option<u64>, LogDbError> {
        let state = self.shared().lock();
        state.check_open()?;
        Ok(state.groups.get(&group).and_then(|g| g.last))
    }

    /// Counters of the writer since open.
    pub fn stats(&self) -> LogDbStats {
        let shared = self.shared();
        LogDbStats {
            batches_committed: shared.batches_committed.load(Ordering::Relaxed),
            operations_committed: shared.operations_committed.load(Ordering::Relaxed),
        }
    }

    /// Groups with any entry, meta value or purge mark, ascending.
    pub fn groups(&self) -> Result<Vec<GroupId>, LogDbError> {
        let state = self.shared().lock();
        state.check_open()?;
        let mut groups: Vec<GroupId> = state
            .groups
            .iter()
            .filter(|(_, g)| g.is_listed())
            .map(|(id, _)| *id)
            .collect();
        groups.sort_unstable();
        Ok(groups)
    }

    /// Commits what is queued, stops the writer thread and makes later calls fail with
    /// `Closed`. Blocks until the writer has finished (except when called from the writer
    /// thread itself, inside a completion callback).
    pub fn shutdown(&self) {
        self.handle.shutdown();
    }

    /// Stops the log as `kill -9` would, for fault-injection tests: of the operations queued
    /// and not yet being written, only the first `survivors` are committed (a crash falls
    /// between two of the writer's transactions, so what survives is a prefix of the queue);
    /// the rest are lost, their callers get `Closed`, and the file closes as on `shutdown`.
    pub fn crash(&self, survivors: usize) {
        let lost = {
            let mut state = self.shared().lock();
            state.closing = true;
            let kept = survivors.min(state.queue.len());
            state.queue.split_off(kept)
        };
        writer::finish(lost.into(), &Err(LogDbError::Closed));
        self.handle.shutdown();
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    fn enqueue_blocking(&self, group: GroupId, op: Op, done: AppendDone) {
        let shared = self.shared();
        let mut op = Arc::new(op);
        let mut done = done;
        // On the writer thread (inside a completion callback) waiting for room would wait for
        // this very thread: queue past the bound instead.
        let queue_len_max = if std::thread::current().id() == self.handle.writer_id {
            usize::MAX
        } else {
            shared.options.write_queue_len_max
        };
        let mut state = shared.lock();
        loop {
            match state.admit(queue_len_max, group, op, Write::Eager, done) {
                Admit::Queued => {
                    drop(state);
                    shared.work.notify_one();
                    return;
                }
                Admit::Full(back_op, back_done) => {
                    (op, done) = (back_op, back_done);
                    state = shared
                        .room
                        .wait(state)
                        .expect("raft log state lock poisoned");
                }
                Admit::Rejected(error, back_done) => {
                    drop(state);
                    back_done(Err(error));
                    return;
                }
                Admit::Violation(message) => {
                    drop(state);
                    panic!("raft log of {group}: {message}");
                }
            }
        }
    }

    async fn enqueue_async(&self, group: GroupId, op: Op) -> Result<(), LogDbError> {
        let (sender, receiver) = oneshot::channel();
        let done: AppendDone = Box::new(move |result| {
            let _receiver_gone = sender.send(result);
        });
        self.enqueue_when_room(group, op, Write::Eager, done).await;
        receiver.await.unwrap_or(Err(LogDbError::Closed))
    }

    /// Queues `op`, awaiting room without blocking the thread. A refusal goes to `done`.
    async fn enqueue_when_room(&self, group: GroupId, op: Op, write: Write, done: AppendDone) {
        let shared = self.shared();
        let mut op = Arc::new(op);
        let mut done = done;
        loop {
            let mut room = pin!(shared.room_async.notified());
            room.as_mut().enable();
            let admitted =
                shared
                    .lock()
                    .admit(shared.options.write_queue_len_max, group, op, write, done);
            match admitted {
                Admit::Queued => {
                    shared.work.notify_one();
                    return;
                }
                Admit::Full(back_op, back_done) => {
                    (op, done) = (back_op, back_done);
                    room.await;
                }
                Admit::Rejected(error, back_done) => return back_done(Err(error)),
                Admit::Violation(message) => panic!("raft log of {group}: {message}"),
            }
        }
    }
}

impl fmt::Debug for LogDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogDb")
            .field("options", &self.shared().options)
            .finish_non_exhaustive()
    }
}

/// Owns the writer thread; the last `LogDb` clone dropping it shuts the log down.
struct Handle {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    writer_id: ThreadId,
}

impl Handle {
    fn shutdown(&self) {
        {
            let mut state = self.shared.lock();
            state.closing = true;
        }
        self.shared.work.notify_all();
        self.shared.room.notify_all();
        self.shared.room_async.notify_waiters();
        if std::thread::current().id() == self.writer_id {
            return;
        }
        let writer = self
            .writer
            .lock()
            .expect("raft log writer handle lock poisoned")
            .take();
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("raft log writer thread panicked");
        }
        // The writer has dropped its handle; this closes the file.
        self.shared.lock().db = None;
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// State shared by callers and the writer thread.
struct Shared {
    options: LogDbOptions,
    state: Mutex<State>,
    /// Signals the writer that work was queued or shutdown began.
    work: Condvar,
    /// Signals blocking enqueuers that the queue has room.
    room: Condvar,
    /// Same, for async enqueuers.
    room_async: Notify,
    batches_committed: AtomicU64,
    operations_committed: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("raft log state lock poisoned")
    }
}

struct State {
    /// The readers' handle on the file; `None` once shut down, so that the file is released
    /// as soon as the writer (which holds its own handle) has stopped.
    db: Option<Arc<Database>>,
    groups: HashMap<GroupId, GroupState>,
    queue: std::collections::VecDeque<Queued>,
    closing: bool,
    failure: Option<LogDbError>,
}

struct Queued {
    group: GroupId,
    op: Arc<Op>,
    write: Write,
    done: AppendDone,
}

/// Whether a queued operation starts a transaction by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    /// Committed as soon as the writer is free.
    Eager,
    /// Committed with the next eager operation, or after `lazy_write_delay_max`.
    Lazy,
}

enum Admit {
    Queued,
    Full(Arc<Op>, AppendDone),
    Rejected(LogDbError, AppendDone),
    Violation(String),
}

impl State {
    fn check_open(&self) -> Result<(), LogDbError> {
        if let Some(first) = &self.failure {
            return Err(LogDbError::Failed {
                first: Box::new(first.clone()),
            });
        }
        if self.closing {
            return Err(LogDbError::Closed);
        }
        Ok(())
    }

    fn database(&self) -> Result<Arc<Database>, LogDbError> {
        self.check_open()?;
        self.db.clone().ok_or(LogDbError::Closed)
    }

    /// Queues `op` if there is room, updating the group's bounds and overlay in the same step
    /// so that reads and the queue agree on order.
    fn admit(
        &mut self,
        queue_len_max: usize,
        group: GroupId,
        op: Arc<Op>,
        write: Write,
        done: AppendDone,
    ) -> Admit {
        if let Err(error) = self.check_open() {
            return Admit::Rejected(error, done);
        }
        if self.queue.len() >= queue_len_max {
            return Admit::Full(op, done);
        }
        let group_state = self.groups.entry(group).or_default();
        if let Op::Append { entries } = op.as_ref()
            && let Some(message) = group_state.append_violation(entries)
        {
            return Admit::Violation(message);
        }
        group_state.apply(&op);
        group_state.pending.push_back(Arc::clone(&op));
        self.queue.push_back(Queued {
            group,
            op,
            write,
            done,
        });
        Admit::Queued
    }
}
