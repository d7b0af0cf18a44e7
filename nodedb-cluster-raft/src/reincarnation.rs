//! A replica created on a node that removed a replica of the same group before.
//!
//! Raft ids are node ids, so they are reused. The removed replica's acknowledgements helped
//! commit entries and are gone with its log, while the group's older configurations still
//! name the node. Until the new replica's log, received from a current leader, reaches the
//! highest index the removed one held (`forgotten_through`, kept by `LogDb::remove_group`),
//! it could act on what it forgot:
//! - as a voter: a member that missed the removal still counts the node, and an empty log is
//!   never "more up to date", so the two could be a majority of the old configuration and
//!   elect a leader with a stale log, which then overwrites what the current members committed;
//! - as a candidate: catching up from the start of the log, it passes through old
//!   configurations, among them one in which it alone is the quorum (the node that created
//!   the group): it elected itself there and took writes of a phantom one-node group.
//!
//! So until then it neither votes nor stands for election. From that index on it holds every
//! committed entry its predecessor acknowledged and every configuration its predecessor knew,
//! and Raft's own rules protect the rest. Replicas that are the first of their group on a
//! node forgot nothing and are not held.

use crate::sm_adapter::MachineAdapter;
use crate::types::{Raft, RaftMetrics, TypeConfig};
use nodedb_cluster_core::GroupId;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::VoteResponse;

/// Whether the replica's log (or snapshot) reaches `forgotten_through`.
fn caught_up(metrics: &RaftMetrics, forgotten_through: u64) -> bool {
    metrics
        .last_log_index
        .is_some_and(|last| last >= forgotten_through)
}

/// The openraft config of a replica that starts held: elections off until it caught up (see
/// [`release_when_caught_up`]); off from the start, so that not even the first tick elects.
pub(crate) fn held_config(config: &openraft::Config) -> openraft::Config {
    openraft::Config {
        enable_elect: false,
        ..config.clone()
    }
}

/// Turns elections on once the replica's log reaches `forgotten_through`. Ends with the
/// replica if it never does.
pub(crate) fn release_when_caught_up(
    group: GroupId,
    raft: &Raft<MachineAdapter>,
    forgotten_through: u64,
) {
    let raft = raft.clone();
    tokio::spawn(async move {
        let reached = raft
            .wait(None)
            .metrics(
                |metrics| caught_up(metrics, forgotten_through),
                "the log to reach the removed replica's last index",
            )
            .await;
        if reached.is_ok() {
            raft.runtime_config().elect(true);
            tracing::info!(%group, forgotten_through, "replica created again caught up; it may stand for election");
        }
    });
}

/// A refusal (carrying the replica's current vote) while its log ends below
/// `forgotten_through`; `None` once a vote request may be considered.
pub(crate) fn refuse_vote_while_behind(
    raft: &Raft<MachineAdapter>,
    forgotten_through: u64,
) -> Option<VoteResponse<TypeConfig>> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    (!caught_up(&metrics, forgotten_through)).then(|| VoteResponse::new(metrics.vote, None, false))
}
