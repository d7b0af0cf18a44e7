//! Linearizability checking of recorded client histories against a key-value store, one
//! register per key. Shared by the in-process Raft tests, `cargo xtask test-cluster` and
//! `cargo xtask chaos`, so that all three judge "correct" the same way.
//!
//! # Model
//!
//! A [`History`] is a set of [`Operation`]s: a client invoked `put`, `get`, `delete` or `cas`
//! on a key at `invoked_at` and learned the [`Outcome`] at `completed_at` (any monotonic unit
//! shared by all clients). Every key starts absent and is an independent register, so each key
//! is checked on its own (linearizability is compositional). A history is linearizable when,
//! for every key, its operations can be put in one sequence that respects real time (an
//! operation that completed before another was invoked comes first) and in which every answer
//! is the one a single sequential register would give.
//!
//! # Outcomes
//!
//! - `Ok(result)`: took effect once, between invocation and completion, with this answer.
//! - `Failed`: definitely did not happen; removed before checking. A failed write whose value
//!   shows up later is therefore caught.
//! - `Unknown` (timeout, 504, lost connection, never completed): may take effect at any instant
//!   after its invocation, including after the client gave up, or never. It is treated as
//!   completing at infinity, and may be left out. An unknown read constrains nothing and is
//!   dropped; so is an unknown write whose value no operation observes (it cannot matter).
//!
//! # Algorithm and cost
//!
//! Wing & Gong's search with Lowe's refinements and Porcupine's memoization of visited
//! (set of placed operations, value) pairs, per key; see `search.rs`. Values are interned per
//! key, so a state is a compact bitset and two small integers. Unknown writes never complete,
//! so they would stay candidates forever and multiply the states; the search therefore applies
//! rules that keep the verdict (each argued where it is implemented, and all checked against a
//! brute-force oracle in the tests):
//!
//! - an unknown write whose value no kept operation observes is dropped (`model.rs`);
//! - an unknown write is placed only right before an operation that observes its value, only
//!   while such an observer may still be unplaced, and only once no answered operation fits;
//! - of several interchangeable unknown writes only the first is tried;
//! - a state is skipped when a visited one has the same value and answered operations and a
//!   subset of its unknown ones.
//!
//! The worst case stays exponential in the number of operations in flight at once on one key.
//! Measured in a debug build (simulated store as in `tests/linearizability_props.rs`, 1 in 10
//! outcomes unknown, 1 in 20 failed): a linearizable history of 3000 operations from 8
//! clients on one key takes about 0.1 s, and 20 000 operations from 16 clients over 200 keys
//! about 0.1 s. Proving a history *not* linearizable means exhausting every ordering up to the
//! failure, which costs more: with a bad read 90% of the way through, 5 000 to 20 000 states
//! for 1000 operations from 4 clients (well under a second), but 1.3 to 2 million for 3000
//! operations from 8 busy clients on one key, beyond the default bound (roughly 10 µs per
//! state in debug; under 50 MB). The search visits at most
//! [`CheckLimits::explored_states_max`] states per key and then answers [`Verdict::Unknown`]
//! (with a hint of where it got furthest), never a false pass; spreading a workload over more
//! keys keeps each key's search small.
//!
//! # Lost writes
//!
//! To confirm that no acknowledged write was lost, read every key once the system is quiet and
//! check [`check_with_final_reads`]: the final reads are appended as reads invoked after every
//! recorded operation completed, so they must see a value the history allows.
//!
//! # Reading a failure
//!
//! A [`Verdict::NotLinearizable`] explains the first failing key: the deepest valid ordering
//! the search found (its last steps and the value after it), the completed operation that
//! could not be placed, and for each operation that might have come next, why it does not fit.

mod history;
mod model;
mod report;
mod search;
mod text;

pub use history::{
    History, HistoryError, HistoryRecorder, OpId, OpKind, OpResult, Operation, Outcome,
};
pub use report::{Report, UnknownReason, Verdict};

use search::SearchResult;

/// Bounds of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckLimits {
    /// Distinct (placed set, value) states the search may visit per key before it answers
    /// `Unknown`.
    pub explored_states_max: u64,
}

impl Default for CheckLimits {
    fn default() -> CheckLimits {
        CheckLimits {
            explored_states_max: 1_000_000,
        }
    }
}

/// Checks `history` with the default limits.
pub fn check(history: &History) -> Report {
    check_with_limits(history, CheckLimits::default())
}

/// Checks `history` with explicit limits.
pub fn check_with_limits(history: &History, limits: CheckLimits) -> Report {
    let keys = model::split_by_key(history);
    let mut problems = Vec::new();
    let mut ops_checked: u64 = 0;
    let mut ops_ignored: u64 = 0;
    let mut states_explored: u64 = 0;
    for key in &keys {
        ops_checked += key.ops.len() as u64;
        ops_ignored += key.ignored;
        let outcome = search::search(key, limits.explored_states_max);
        states_explored += outcome.explored_states;
        match outcome.result {
            SearchResult::Linearizable => {}
            SearchResult::NotLinearizable(stuck) => {
                problems.push(report::not_linearizable(key, &stuck));
            }
            SearchResult::Exceeded(stuck) => problems.push(report::undecided(
                key,
                limits.explored_states_max,
                stuck.as_ref(),
            )),
        }
    }
    Report::from_keys(
        problems,
        keys.len() as u64,
        ops_checked,
        ops_ignored,
        states_explored,
    )
}

/// Checks `history` followed by one read per `(key, value)` in `final_reads`, invoked after
/// every recorded operation completed: passes only if the history is linearizable and the
/// final values are ones it allows (no acknowledged write lost, no failed write visible).
pub fn check_with_final_reads<K, V>(
    history: &History,
    final_reads: impl IntoIterator<Item = (K, Option<V>)>,
) -> Report
where
    K: Into<Vec<u8>>,
    V: Into<Vec<u8>>,
{
    check(&history.with_final_reads(final_reads))
}
