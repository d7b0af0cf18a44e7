//! Snapshots and purges by the bytes of a replica's log, beside openraft's counts of entries.
//!
//! openraft builds a snapshot after a number of entries (`SnapshotPolicy::LogsSinceLast`),
//! whatever their size, and only a snapshot lets the log behind it be purged: 10,000 entries of
//! 1 MiB (a vShard import's parts, large values) kept 10 GB of log per group. [`LogGrowth`]
//! counts the payload bytes a replica applies and, past a bound, [`trigger_snapshots`] asks
//! openraft for a snapshot (`Trigger::snapshot`), after which the log is purged as after any
//! other. The bound is the larger of the configured bytes and the size of the replica's last
//! snapshot, so that a large state is not written out again for every few bytes of log: the
//! snapshots write at most about what the log took.
//!
//! Behind a snapshot openraft keeps a count of entries (`max_in_snapshot_log_to_keep`, so that
//! a follower a little behind catches up from the log), again whatever their size: 1,000
//! entries of 1 MiB stayed behind every snapshot. [`LogGrowth`] also remembers how many bytes
//! were applied through recent indexes, and after each snapshot it is built asks openraft
//! (`Trigger::purge_log`) to purge through the earliest index behind which at most the kept
//! bytes remain; a follower further behind gets the snapshot.

use crate::sm_adapter::MachineAdapter;
use crate::types::Raft;
use nodedb_cluster_core::GroupId;
use openraft::async_runtime::watch::WatchReceiver;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// Longest a purge waits for openraft to know of the snapshot that allows it.
const SNAPSHOT_KNOWN_WAIT: Duration = Duration::from_secs(10);

/// Marks of applied bytes are at least the kept bytes over this apart (fewer marks, a purge
/// point that much coarser).
const MARKS_PER_KEPT_BYTES: u64 = 64;

/// One replica's log growth since its last snapshot.
pub(crate) struct LogGrowth {
    /// Payload bytes applied since the state of the last snapshot was captured.
    applied: AtomicU64,
    /// Bytes of the replica's current snapshot file.
    snapshot_bytes: AtomicU64,
    /// The least growth that asks for a snapshot.
    bytes_min: u64,
    /// Bytes of entries kept behind a snapshot at most.
    kept_bytes_max: u64,
    marks: Mutex<AppliedMarks>,
    /// A purge to ask for at the next wake-up: `(snapshot index, purge through)`.
    purge: Mutex<Option<(u64, u64)>>,
    /// Wakes [`trigger_snapshots`]: a snapshot or a purge is due.
    due: Notify,
}

/// Payload bytes applied through recent indexes: `(index, bytes applied through it)`, oldest
/// first, since the base of the log behind the last purge (or since the replica started).
#[derive(Default)]
struct AppliedMarks {
    total: u64,
    marks: VecDeque<(u64, u64)>,
}

impl AppliedMarks {
    /// Applied `bytes` through `index`. The last mark moves up to it until the last mark is
    /// `step` bytes past the one before; then a new mark starts.
    fn record(&mut self, index: u64, bytes: u64, step: u64) {
        self.total += bytes;
        let len = self.marks.len();
        let moving = len >= 2 && self.marks[len - 1].1 - self.marks[len - 2].1 < step;
        match self.marks.back_mut() {
            Some(last) if moving => *last = (index, self.total),
            _ => self.marks.push_back((index, self.total)),
        }
    }

    /// The earliest marked index through which the log can be purged keeping at most
    /// `kept_bytes_max` of payload between it and `snapshot` (marks before it are forgotten).
    /// None when the marks behind the snapshot do not carry more than that: then openraft's
    /// count of entries decides alone.
    fn purge_point(&mut self, snapshot: u64, kept_bytes_max: u64) -> Option<u64> {
        let at_snapshot = self
            .marks
            .iter()
            .rev()
            .find(|(index, _)| *index <= snapshot)?
            .1;
        let first_kept = self
            .marks
            .iter()
            .position(|(_, total)| at_snapshot - total <= kept_bytes_max)?;
        if first_kept == 0 {
            return None;
        }
        let (through, _) = self.marks[first_kept];
        while self
            .marks
            .front()
            .is_some_and(|(index, _)| *index < through)
        {
            self.marks.pop_front();
        }
        Some(through)
    }
}

impl fmt::Debug for LogGrowth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogGrowth")
            .field("applied", &self.applied.load(Ordering::Relaxed))
            .field("bound", &self.bound())
            .finish()
    }
}

impl LogGrowth {
    /// Snapshots after `bytes_min` bytes at least; at most `kept_bytes_max` behind them.
    pub(crate) fn new(bytes_min: u64, kept_bytes_max: u64) -> Arc<LogGrowth> {
        Arc::new(LogGrowth {
            applied: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(0),
            bytes_min,
            kept_bytes_max,
            marks: Mutex::new(AppliedMarks::default()),
            purge: Mutex::new(None),
            due: Notify::new(),
        })
    }

    /// The replica applied entries through `index` carrying `bytes` of payload.
    pub(crate) fn applied(&self, index: u64, bytes: u64) {
        self.applied.fetch_add(bytes, Ordering::Relaxed);
        let step = (self.kept_bytes_max / MARKS_PER_KEPT_BYTES).max(1);
        self.marks().record(index, bytes, step);
        if self.is_due() {
            self.due.notify_one();
        }
    }

    /// A snapshot through `index` is built: the log behind it may be purged down to the kept
    /// bytes.
    pub(crate) fn built(&self, index: u64) {
        let purge_point = self.marks().purge_point(index, self.kept_bytes_max);
        if let Some(through) = purge_point {
            *lock(&self.purge) = Some((index, through));
            self.due.notify_one();
        }
    }

    /// The replica's state was replaced by a snapshot: the log behind it is gone.
    pub(crate) fn installed(&self) {
        *self.marks() = AppliedMarks::default();
    }

    fn marks(&self) -> MutexGuard<'_, AppliedMarks> {
        lock(&self.marks)
    }

    /// The replica's state was captured for a snapshot (or replaced by one): what it applied
    /// so far is in it.
    pub(crate) fn captured(&self) {
        self.applied.store(0, Ordering::Relaxed);
    }

    /// The replica's current snapshot is now a file of `bytes`.
    pub(crate) fn snapshot_is(&self, bytes: u64) {
        self.snapshot_bytes.store(bytes, Ordering::Relaxed);
    }

    fn bound(&self) -> u64 {
        self.bytes_min
            .max(self.snapshot_bytes.load(Ordering::Relaxed))
    }

    fn is_due(&self) -> bool {
        self.applied.load(Ordering::Relaxed) >= self.bound()
    }
}

/// Asks `raft` for a snapshot whenever `growth` passes its bound (openraft ignores the request
/// while it builds one), and for a purge after each snapshot built. Runs until the replica
/// stops.
pub(crate) async fn trigger_snapshots(
    group: GroupId,
    raft: Raft<MachineAdapter>,
    growth: Arc<LogGrowth>,
) {
    loop {
        growth.due.notified().await;
        let purge = lock(&growth.purge).take();
        if let Some((snapshot, through)) = purge
            && !purge_behind(group, &raft, snapshot, through).await
        {
            return;
        }
        if growth.is_due() {
            tracing::debug!(%group, ?growth, "log grew past its bound: asking for a snapshot");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}

/// Asks openraft to purge the log through `through` once it knows the snapshot at `snapshot`
/// (or a later one): openraft purges only behind the snapshot it knows of, and learns of a
/// snapshot after it is built; asked earlier, it purged behind the one before. A snapshot it
/// never learns of within [`SNAPSHOT_KNOWN_WAIT`] (its build failed) is let go: the next one
/// purges. False once the replica has stopped.
async fn purge_behind(
    group: GroupId,
    raft: &Raft<MachineAdapter>,
    snapshot: u64,
    through: u64,
) -> bool {
    let known = async {
        let mut metrics = raft.metrics();
        loop {
            let watched = metrics.borrow_watched().snapshot;
            if watched.is_some_and(|known| known.index >= snapshot) {
                return true;
            }
            if metrics.changed().await.is_err() {
                return false;
            }
        }
    };
    match tokio::time::timeout(SNAPSHOT_KNOWN_WAIT, known).await {
        Ok(false) => false,
        Ok(true) => {
            tracing::debug!(%group, through, "purging the log behind a snapshot down to its kept bytes");
            raft.trigger().purge_log(through).await.is_ok()
        }
        Err(_elapsed) => true,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_larger_of_the_minimum_and_the_last_snapshot() {
        let growth = LogGrowth::new(100, 1 << 20);
        growth.applied(1, 60);
        assert!(!growth.is_due());
        growth.applied(2, 40);
        assert!(growth.is_due());

        growth.captured();
        growth.snapshot_is(1000);
        growth.applied(3, 500);
        assert!(
            !growth.is_due(),
            "a snapshot of 1000 B waits for 1000 B of log"
        );
        growth.applied(4, 500);
        assert!(growth.is_due());

        growth.captured();
        growth.snapshot_is(10);
        growth.applied(5, 99);
        assert!(!growth.is_due(), "a small snapshot waits for the minimum");
    }

    #[test]
    fn the_purge_keeps_at_most_the_kept_bytes_behind_the_snapshot() {
        let mut marks = AppliedMarks::default();
        for index in 1..=10 {
            marks.record(index, 100, 1);
        }
        assert_eq!(
            marks.purge_point(8, 250),
            Some(6),
            "7 and 8 hold 200 B, 6 to 8 would 300"
        );
        assert_eq!(marks.purge_point(8, 0), Some(8));
        assert_eq!(
            marks.purge_point(10, 10_000),
            None,
            "within the bytes kept: the count of entries decides"
        );
        assert_eq!(
            marks.purge_point(5, 100),
            None,
            "no mark behind the snapshot anymore"
        );
    }

    #[test]
    fn close_marks_merge_into_one() {
        let mut marks = AppliedMarks::default();
        for index in 1..=10 {
            marks.record(index, 10, 50);
        }
        let indexes: Vec<u64> = marks.marks.iter().map(|(index, _)| *index).collect();
        assert_eq!(indexes, [1, 6, 10], "a mark per 50 B at least");
        assert_eq!(
            marks.purge_point(10, 45),
            Some(6),
            "10 B short of a mark's step"
        );
    }

    #[test]
    fn a_built_snapshot_asks_for_a_purge_and_an_installed_one_forgets_the_marks() {
        let growth = LogGrowth::new(1 << 30, 100);
        for index in 1..=5 {
            growth.applied(index, 60);
        }
        growth.built(4);
        assert_eq!(lock(&growth.purge).take(), Some((4, 3)));
        growth.installed();
        growth.built(5);
        assert_eq!(lock(&growth.purge).take(), None, "no marks, no purge");
    }
}
