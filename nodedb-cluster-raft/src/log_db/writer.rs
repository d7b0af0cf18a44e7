//! The writer thread: takes a batch off the queue, commits it in one fsynced transaction, drops
//! the batch from the groups' overlays, then runs the completion callbacks in queue order.
//! A dedicated OS thread, so that fsync never blocks an async runtime worker.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use redb::Database;

use super::{LogDbError, Queued, Shared, Write, disk};

/// Runs until shutdown has been requested and the queue is empty.
pub(super) fn run(shared: &Shared, db: &Database) {
    while let Some(batch) = next_batch(shared) {
        shared.room.notify_all();
        shared.room_async.notify_waiters();
        let started = Instant::now();
        let result = disk::apply_batch(
            db,
            shared.options.quick_repair,
            batch.iter().map(|q| (q.group, q.op.as_ref())),
        );
        crate::metrics::log_committed(batch.len(), started.elapsed(), result.is_ok());
        match result {
            Ok(()) => {
                shared.batches_committed.fetch_add(1, Ordering::Relaxed);
                shared
                    .operations_committed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                settle(shared, &batch);
                finish(batch, &Ok(()));
            }
            Err(error) => {
                tracing::error!(%error, "raft log commit failed; refusing further writes");
                let abandoned = fail(shared, &error);
                finish(batch, &Err(error.clone()));
                let failed = LogDbError::Failed {
                    first: Box::new(error),
                };
                finish(abandoned, &Err(failed));
            }
        }
    }
}

/// Waits for work and takes the next batch off the queue; `None` once shut down and drained.
/// Lazy operations alone wait up to `lazy_write_delay_max` for an eager one to ride along with.
fn next_batch(shared: &Shared) -> Option<Vec<Queued>> {
    let options = shared.options;
    let mut state = shared.lock();
    let mut lazy_deadline: Option<Instant> = None;
    while !state.closing && !state.queue.iter().any(|q| q.write == Write::Eager) {
        if state.queue.is_empty() {
            lazy_deadline = None;
            state = shared
                .work
                .wait(state)
                .expect("raft log state lock poisoned");
            continue;
        }
        let deadline =
            *lazy_deadline.get_or_insert_with(|| Instant::now() + options.lazy_write_delay_max);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        state = shared
            .work
            .wait_timeout(state, left)
            .expect("raft log state lock poisoned")
            .0;
    }
    if state.queue.is_empty() {
        return None;
    }
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    while batch.len() < options.batch_ops_max {
        let Some(next) = state.queue.front() else {
            break;
        };
        let next_bytes = next.op.payload_bytes();
        if !batch.is_empty() && bytes.saturating_add(next_bytes) > options.batch_bytes_max {
            break;
        }
        bytes = bytes.saturating_add(next_bytes);
        batch.extend(state.queue.pop_front());
    }
    Some(batch)
}

/// Drops a committed batch from the overlays: its operations are now in every new snapshot.
fn settle(shared: &Shared, batch: &[Queued]) {
    let mut state = shared.lock();
    for queued in batch {
        let group_state = state.groups.get_mut(&queued.group).unwrap_or_else(|| {
            panic!(
                "raft log of {}: committed an operation for a group with no state",
                queued.group
            )
        });
        let front = group_state.pending.pop_front();
        assert!(
            front.as_ref().is_some_and(|op| Arc::ptr_eq(op, &queued.op)),
            "raft log of {}: committed operation {:?} is not the oldest pending one ({:?})",
            queued.group,
            queued.op,
            front
        );
        if group_state.is_vacant() {
            state.groups.remove(&queued.group);
        }
    }
}

/// Records the failure and takes everything still queued, to be failed too.
fn fail(shared: &Shared, error: &LogDbError) -> Vec<Queued> {
    let mut state = shared.lock();
    state.failure = Some(error.clone());
    state.queue.drain(..).collect()
}

/// Runs the callbacks in queue order. A panicking callback is logged, not allowed to stop the
/// writer (every other caller would hang).
pub(super) fn finish(batch: Vec<Queued>, result: &Result<(), LogDbError>) {
    for queued in batch {
        let outcome = result.clone();
        if catch_unwind(AssertUnwindSafe(move || (queued.done)(outcome))).is_err() {
            tracing::error!(group = %queued.group, "raft log completion callback panicked");
        }
    }
}
