//! What the replication engine counts, through the `metrics` facade (a no-op until the process
//! installs a recorder): snapshots sent, built and installed per group, the log's group
//! commits (one fsync each) with their size and duration, and quiet replicas. Labels stay
//! bounded: `group` is a group id, `outcome` and `role` fixed sets.

use nodedb_cluster_core::GroupId;
use std::time::Duration;

/// Snapshots sent to a follower, per group and outcome (`ok`, `timeout`, `closed`, `failed`).
pub const SNAPSHOTS_SENT: &str = "nodedb_cluster_raft_snapshots_sent_total";
/// Bytes of snapshots delivered to followers, per group.
pub const SNAPSHOT_BYTES_SENT: &str = "nodedb_cluster_raft_snapshot_bytes_sent_total";
/// Snapshots this node built from its state machine, per group.
pub const SNAPSHOTS_BUILT: &str = "nodedb_cluster_raft_snapshots_built_total";
/// Snapshots received from a leader and installed into the state machine, per group.
pub const SNAPSHOTS_INSTALLED: &str = "nodedb_cluster_raft_snapshots_installed_total";
/// Transactions of the Raft log, each one fsync, by outcome (`ok`, `failed`).
pub const LOG_COMMITS: &str = "nodedb_cluster_raft_log_commits_total";
/// Operations (appends, truncates, purges, votes of any group) per log transaction.
pub const LOG_COMMIT_OPERATIONS: &str = "nodedb_cluster_raft_log_commit_operations";
/// Time to write and fsync one log transaction.
pub const LOG_COMMIT_SECONDS: &str = "nodedb_cluster_raft_log_commit_duration_seconds";

/// Replicas on this node whose timers are stopped (see `quiesce`), by `role` (`leader`,
/// `follower`).
pub const QUIET_REPLICAS: &str = "nodedb_cluster_raft_quiet_replicas";
/// Quiet groups woken on this node because their leader's node stopped answering probes.
pub const SILENT_LEADER_WAKES: &str = "nodedb_cluster_raft_silent_leader_wakes_total";
/// Votes a quiet follower held until it heard from its leader, by `outcome` (`heard`, or
/// `timeout`: the leader did not answer in time and the vote was answered anyway).
pub const QUIET_VOTE_HOLDS: &str = "nodedb_cluster_raft_quiet_vote_holds_total";

/// How a snapshot send ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SnapshotSend {
    Delivered { bytes: u64 },
    TimedOut,
    Closed,
    Failed,
}

/// Gives every series above its help text; call once after installing a recorder.
pub fn describe() {
    metrics::describe_counter!(SNAPSHOTS_SENT, "snapshots sent to followers, by outcome");
    metrics::describe_counter!(SNAPSHOT_BYTES_SENT, "bytes of snapshots delivered");
    metrics::describe_counter!(SNAPSHOTS_BUILT, "snapshots built from the state machine");
    metrics::describe_counter!(SNAPSHOTS_INSTALLED, "snapshots installed from a leader");
    metrics::describe_counter!(LOG_COMMITS, "Raft log transactions (one fsync each)");
    metrics::describe_histogram!(
        LOG_COMMIT_OPERATIONS,
        "operations committed together in one Raft log transaction"
    );
    metrics::describe_histogram!(
        LOG_COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "time to write and fsync one Raft log transaction"
    );
    metrics::describe_gauge!(
        QUIET_REPLICAS,
        "replicas of idle groups with heartbeats and election timers stopped"
    );
    metrics::describe_counter!(
        SILENT_LEADER_WAKES,
        "quiet groups woken because their leader's node stopped answering"
    );
    metrics::describe_counter!(
        QUIET_VOTE_HOLDS,
        "votes a quiet follower held until it heard from its leader, by outcome"
    );
}

pub(crate) fn snapshot_sent(group: GroupId, send: SnapshotSend) {
    let outcome = match send {
        SnapshotSend::Delivered { bytes } => {
            metrics::counter!(SNAPSHOT_BYTES_SENT, "group" => group_label(group)).increment(bytes);
            "ok"
        }
        SnapshotSend::TimedOut => "timeout",
        SnapshotSend::Closed => "closed",
        SnapshotSend::Failed => "failed",
    };
    metrics::counter!(SNAPSHOTS_SENT, "group" => group_label(group), "outcome" => outcome)
        .increment(1);
}

pub(crate) fn snapshot_built(group: GroupId) {
    metrics::counter!(SNAPSHOTS_BUILT, "group" => group_label(group)).increment(1);
}

pub(crate) fn snapshot_installed(group: GroupId) {
    metrics::counter!(SNAPSHOTS_INSTALLED, "group" => group_label(group)).increment(1);
}

/// One log transaction of `operations`, which took `elapsed`.
pub(crate) fn log_committed(operations: usize, elapsed: Duration, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    metrics::counter!(LOG_COMMITS, "outcome" => outcome).increment(1);
    metrics::histogram!(LOG_COMMIT_OPERATIONS).record(operations as f64);
    metrics::histogram!(LOG_COMMIT_SECONDS).record(elapsed.as_secs_f64());
}

/// The quiet replicas counted in one round of the quiescence task.
pub(crate) fn quiet_replicas(leaders: usize, followers: usize) {
    metrics::gauge!(QUIET_REPLICAS, "role" => "leader").set(leaders as f64);
    metrics::gauge!(QUIET_REPLICAS, "role" => "follower").set(followers as f64);
}

/// `groups` quiet groups woken because their leader's node went silent.
pub(crate) fn silent_leader_wakes(groups: usize) {
    metrics::counter!(SILENT_LEADER_WAKES).increment(groups as u64);
}

/// A quiet follower held a vote until its leader's AppendEntries (`heard`) or gave up.
pub(crate) fn quiet_vote_held(heard: bool) {
    let outcome = if heard { "heard" } else { "timeout" };
    metrics::counter!(QUIET_VOTE_HOLDS, "outcome" => outcome).increment(1);
}

fn group_label(group: GroupId) -> String {
    group.0.to_string()
}
