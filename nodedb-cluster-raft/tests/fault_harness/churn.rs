//! The harness's membership churn: one voter of a group is replaced by the node that holds no
//! replica of it, as a node's reconciler replaces one (open a replica on the new node, add it as
//! a learner, promote it once caught up, remove the old voter, delete the old replica). The new
//! replica is often created on a node that held one before, so the re-created replica's rules
//! (no vote, no election until it caught up with what it forgot) are exercised under load and
//! beside the other faults.

use crate::common::TestCluster;
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::kv::KvStateMachine;
use nodedb_cluster_raft::{GroupStatus, MembershipError, MultiRaft, Role};
use std::time::{Duration, Instant};

/// Longest time one replacement may take while a quorum of the group is reachable.
const CHURN_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
/// A learner this close to the leader's log is promoted (as the node's reconciler does).
const CAUGHT_UP_LAG_MAX: u64 = 10;

/// The next membership step that brings `group` from its current membership (`status`, as
/// its leader reports it) to `out` removed and `spare` a voter.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    AddLearner,
    WaitCatchUp,
    Promote,
    Remove,
    WaitJointEnds,
    /// The leader's membership may not be committed yet.
    WaitCommit,
    Done,
}

fn next_step(status: &GroupStatus, out: NodeId, spare: NodeId) -> Next {
    let member = |node: NodeId| status.voters.contains(&node) || status.learners.contains(&node);
    if status.joint {
        Next::WaitJointEnds
    } else if !member(spare) {
        Next::AddLearner
    } else if !status.voters.contains(&spare) {
        let lag = status
            .followers
            .iter()
            .find(|progress| progress.node == spare)
            .map_or(u64::MAX, |progress| progress.lag);
        if lag <= CAUGHT_UP_LAG_MAX {
            Next::Promote
        } else {
            Next::WaitCatchUp
        }
    } else if member(out) {
        Next::Remove
    } else if status.commit_index < status.last_log_index {
        // A leader uses its last membership before it commits; elected without that entry,
        // the next leader undoes it.
        Next::WaitCommit
    } else {
        Next::Done
    }
}

/// The live node that leads `group` in the highest term, with its status (a leader cut off
/// from the others may still think it leads an older term).
fn leader(cluster: &TestCluster, group: GroupId) -> Option<(MultiRaft, GroupStatus)> {
    cluster
        .nodes
        .values()
        .filter_map(|node| {
            let status = node.multi.status(group)?;
            (status.role == Role::Leader).then(|| (node.multi.clone(), status))
        })
        .max_by_key(|(_, status)| status.term)
}

/// Replaces the voter `out` of `group` with `spare`, which holds no replica of it, and deletes
/// `out`'s replica once the group no longer lists it. Panics (naming `seed`) when it does not
/// finish in time: the group has a reachable quorum throughout, so that is a liveness bug.
pub async fn replace_voter(
    cluster: &TestCluster,
    seed: u64,
    group: GroupId,
    out: NodeId,
    spare: NodeId,
) {
    cluster.nodes[&spare]
        .multi
        .open_group(group, Box::new(KvStateMachine::new()))
        .await
        .unwrap_or_else(|error| panic!("seed {seed}: open {group} on {spare}: {error}"));
    let started = Instant::now();
    let mut last_refusal = None;
    loop {
        assert!(
            started.elapsed() < CHURN_DEADLINE,
            "seed {seed}: replacing {out} by {spare} in {group} did not finish in \
             {CHURN_DEADLINE:?} (last refusal: {last_refusal:?})"
        );
        let Some((multi, status)) = leader(cluster, group) else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let result = match next_step(&status, out, spare) {
            // A leader cut off from the others still reports the membership of its own, older
            // term, which may well be the one this replacement aims at (the group had it before
            // the replacement that undid it). Taken as done on its word, the old replica was
            // deleted while the group still had it as a voter (seed 1014 of the soak: replicas
            // that never converged). Only a leader that still reaches a quorum counts.
            Next::Done => {
                let confirmed = multi.read_barrier(group).await.is_ok()
                    && multi
                        .status(group)
                        .is_some_and(|status| next_step(&status, out, spare) == Next::Done);
                if confirmed {
                    break;
                }
                Ok(())
            }
            Next::WaitCatchUp | Next::WaitJointEnds | Next::WaitCommit => Ok(()),
            Next::AddLearner => {
                multi
                    .add_learner(group, spare, crate::common::address(spare))
                    .await
            }
            Next::Promote => multi.promote(group, spare).await,
            Next::Remove => multi.remove_replica(group, out).await,
        };
        match result {
            Ok(()) => {}
            // Leadership moved, a change is still committing, or the outcome is unknown: the
            // next round reads the membership again and carries on from what it says.
            Err(
                refusal @ (MembershipError::NotLeader { .. }
                | MembershipError::InProgress { .. }
                | MembershipError::Timeout { .. }
                | MembershipError::Shutdown { .. }),
            ) => last_refusal = Some(refusal),
            Err(error) => panic!("seed {seed}: replacing {out} by {spare} in {group}: {error}"),
        }
        tokio::time::sleep(POLL).await;
    }
    cluster.nodes[&out]
        .multi
        .remove_group(group)
        .await
        .unwrap_or_else(|error| panic!("seed {seed}: remove {group} from {out}: {error}"));
    println!("seed {seed}: {group}: {out} replaced by {spare}");
}
