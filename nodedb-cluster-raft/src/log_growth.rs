//! Snapshots by the bytes a replica's log grew, beside openraft's count of entries.
//!
//! openraft builds a snapshot after a number of entries (`SnapshotPolicy::LogsSinceLast`),
//! whatever their size, and only a snapshot lets the log behind it be purged: 10,000 entries of
//! 1 MiB (a vShard import's parts, large values) kept 10 GB of log per group. [`LogGrowth`]
//! counts the payload bytes a replica applies and, past a bound, [`trigger_snapshots`] asks
//! openraft for a snapshot (`Trigger::snapshot`), after which the log is purged as after any
//! other. The bound is the larger of the configured bytes and the size of the replica's last
//! snapshot, so that a large state is not written out again for every few bytes of log: the
//! snapshots write at most about what the log took.

use crate::sm_adapter::MachineAdapter;
use crate::types::Raft;
use nodedb_cluster_core::GroupId;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// One replica's log growth since its last snapshot.
pub(crate) struct LogGrowth {
    /// Payload bytes applied since the state of the last snapshot was captured.
    applied: AtomicU64,
    /// Bytes of the replica's current snapshot file.
    snapshot_bytes: AtomicU64,
    /// The least growth that asks for a snapshot.
    bytes_min: u64,
    due: Notify,
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
    pub(crate) fn new(bytes_min: u64) -> Arc<LogGrowth> {
        Arc::new(LogGrowth {
            applied: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(0),
            bytes_min,
            due: Notify::new(),
        })
    }

    /// The replica applied entries carrying `bytes` of payload.
    pub(crate) fn applied(&self, bytes: u64) {
        self.applied.fetch_add(bytes, Ordering::Relaxed);
        if self.is_due() {
            self.due.notify_one();
        }
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
/// while it builds one). Runs until the replica stops.
pub(crate) async fn trigger_snapshots(
    group: GroupId,
    raft: Raft<MachineAdapter>,
    growth: Arc<LogGrowth>,
) {
    loop {
        growth.due.notified().await;
        if !growth.is_due() {
            continue;
        }
        tracing::debug!(%group, ?growth, "log grew past its bound: asking for a snapshot");
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_larger_of_the_minimum_and_the_last_snapshot() {
        let growth = LogGrowth::new(100);
        growth.applied(60);
        assert!(!growth.is_due());
        growth.applied(40);
        assert!(growth.is_due());

        growth.captured();
        growth.snapshot_is(1000);
        growth.applied(500);
        assert!(
            !growth.is_due(),
            "a snapshot of 1000 B waits for 1000 B of log"
        );
        growth.applied(500);
        assert!(growth.is_due());

        growth.captured();
        growth.snapshot_is(10);
        growth.applied(99);
        assert!(!growth.is_due(), "a small snapshot waits for the minimum");
    }
}
