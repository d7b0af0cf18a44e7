//! The node's Prometheus metrics: installing the recorder with its histogram buckets, what
//! routed operations count (proposals, reads, forwards), and a sampler that publishes each
//! hosted replica's Raft state every second and counts leader changes. The lower crates record
//! their own series through the same `metrics` facade; README.md, "Metrics", lists them all.
//! Labels stay bounded: groups, peers, consistencies and outcomes, never keys.

use crate::control::ControlError;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use nodedb_cluster_core::GroupId;
use nodedb_cluster_raft::{LeaderChange, MultiRaft, Role};
use std::borrow::Cow;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Proposals routed by this node, per group and outcome (`ok`, or the error's kind).
pub const PROPOSALS: &str = "nodedb_cluster_proposals_total";
/// Time from routing a proposal to its answer, per group, every outcome included.
pub const PROPOSAL_SECONDS: &str = "nodedb_cluster_proposal_duration_seconds";
/// Reads routed by this node, per group, consistency (`linearizable`, `stale`) and outcome.
pub const READS: &str = "nodedb_cluster_reads_total";
/// Time from routing a read to its answer, per group and consistency.
pub const READ_SECONDS: &str = "nodedb_cluster_read_duration_seconds";
/// Requests (proposals, reads, membership changes) this node forwarded to another replica over
/// the Control channel, per group and outcome.
pub const FORWARDED: &str = "nodedb_cluster_forwarded_requests_total";
/// Current term of this node's replica, per group.
pub const RAFT_TERM: &str = "nodedb_cluster_raft_term";
/// Highest log index this node's replica knows committed, per group.
pub const RAFT_COMMIT_INDEX: &str = "nodedb_cluster_raft_commit_index";
/// Highest log index this node's replica applied, per group.
pub const RAFT_APPLIED_INDEX: &str = "nodedb_cluster_raft_applied_index";
/// Last log index of this node's replica, per group.
pub const RAFT_LAST_LOG_INDEX: &str = "nodedb_cluster_raft_last_log_index";
/// 1 while this node's replica leads the group, else 0.
pub const RAFT_IS_LEADER: &str = "nodedb_cluster_raft_is_leader";
/// The node id this node's replica sees as leader, 0 when none.
pub const RAFT_LEADER: &str = "nodedb_cluster_raft_leader";
/// Replicas hosted by this node, per role (`leader`, `follower`, `candidate`, `learner`).
pub const RAFT_REPLICAS: &str = "nodedb_cluster_raft_replicas";
/// New leaders observed by this node's replica, per group.
pub const RAFT_LEADER_CHANGES: &str = "nodedb_cluster_raft_leader_changes_total";

/// How often the sampler publishes the replicas' Raft state.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// A gauge not set for this long leaves the scrape output (a group this node stopped hosting).
const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the exporter drains recorded histogram samples into its buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Upper bounds of the latency buckets, in seconds (all `*_seconds` histograms).
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the Raft log's operations-per-commit buckets.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The exporter configuration of a node: latency and batch histograms with fixed buckets (so
/// they aggregate across nodes), gauges of vanished groups dropped after a while.
pub fn builder() -> Result<PrometheusBuilder, BuildError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(nodedb_cluster_raft::metrics::LOG_COMMIT_OPERATIONS.into()),
            BATCH_BUCKETS,
        )?
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT)))
}

/// Installs the process-wide recorder and describes every series of every crate. Call once per
/// process, inside a tokio runtime; keep [`upkeep`] running with the returned handle.
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let handle = builder()?.install_recorder()?;
    describe();
    Ok(handle)
}

/// Drains recorded histogram samples into their buckets periodically, so memory stays bounded
/// between scrapes. Runs until dropped.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        ticks.tick().await;
        handle.run_upkeep();
    }
}

/// Gives every series of the node and the crates below it its help text.
pub fn describe() {
    nodedb_cluster_transport::quic::metrics::describe();
    nodedb_cluster_raft::metrics::describe();
    nodedb_cluster_catalog::metrics::describe();
    metrics::describe_counter!(PROPOSALS, "proposals routed by this node, by outcome");
    metrics::describe_histogram!(
        PROPOSAL_SECONDS,
        metrics::Unit::Seconds,
        "time to answer a routed proposal"
    );
    metrics::describe_counter!(
        READS,
        "reads routed by this node, by consistency and outcome"
    );
    metrics::describe_histogram!(
        READ_SECONDS,
        metrics::Unit::Seconds,
        "time to answer a routed read"
    );
    metrics::describe_counter!(FORWARDED, "requests forwarded to another replica");
    metrics::describe_gauge!(RAFT_TERM, "current term of the local replica");
    metrics::describe_gauge!(
        RAFT_COMMIT_INDEX,
        "committed log index of the local replica"
    );
    metrics::describe_gauge!(RAFT_APPLIED_INDEX, "applied log index of the local replica");
    metrics::describe_gauge!(RAFT_LAST_LOG_INDEX, "last log index of the local replica");
    metrics::describe_gauge!(RAFT_IS_LEADER, "1 while the local replica leads the group");
    metrics::describe_gauge!(RAFT_LEADER, "leader seen by the local replica, 0 for none");
    metrics::describe_gauge!(RAFT_REPLICAS, "replicas hosted by this node, by role");
    metrics::describe_counter!(RAFT_LEADER_CHANGES, "new leaders seen by the local replica");
}

/// Counts a routed proposal that took `elapsed`.
pub(crate) fn proposal_done<T>(
    group: GroupId,
    elapsed: Duration,
    result: &Result<T, ControlError>,
) {
    let group = group_label(group);
    metrics::counter!(PROPOSALS, "group" => group.clone(), "outcome" => outcome(result))
        .increment(1);
    metrics::histogram!(PROPOSAL_SECONDS, "group" => group).record(elapsed.as_secs_f64());
}

/// Counts a routed read that took `elapsed`.
pub(crate) fn read_done<T>(
    group: GroupId,
    linearizable: bool,
    elapsed: Duration,
    result: &Result<T, ControlError>,
) {
    let group = group_label(group);
    let consistency = if linearizable {
        "linearizable"
    } else {
        "stale"
    };
    metrics::counter!(
        READS,
        "group" => group.clone(),
        "consistency" => consistency,
        "outcome" => outcome(result)
    )
    .increment(1);
    metrics::histogram!(READ_SECONDS, "group" => group, "consistency" => consistency)
        .record(elapsed.as_secs_f64());
}

/// Counts one request forwarded to another replica.
pub(crate) fn forwarded<T>(group: GroupId, result: &Result<T, ControlError>) {
    metrics::counter!(FORWARDED, "group" => group_label(group), "outcome" => outcome(result))
        .increment(1);
}

/// Publishes the Raft state of every replica `raft` hosts each [`SAMPLE_INTERVAL`], and counts
/// the leader changes it reports, until `stop` turns true.
pub(crate) async fn sample_raft(raft: MultiRaft, mut stop: watch::Receiver<bool>) {
    let mut changes = raft.leader_changes();
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            _ = ticks.tick() => publish_status(&raft),
            change = changes.recv() => match change {
                Ok(change) => count_leader_change(change),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "leader change notifications missed by the metrics sampler");
                }
                Err(broadcast::error::RecvError::Closed) => changes = raft.leader_changes(),
            },
        }
    }
}

fn publish_status(raft: &MultiRaft) {
    let mut replicas = [0u32; 4];
    for status in raft
        .groups()
        .into_iter()
        .filter_map(|group| raft.status(group))
    {
        let role = match status.role {
            Role::Leader => 0,
            Role::Follower => 1,
            Role::Candidate => 2,
            Role::Learner => 3,
            Role::Shutdown => continue,
        };
        replicas[role] += 1;
        let group = group_label(status.group);
        let index = |index: Option<nodedb_cluster_raft::LogIndex>| index.map_or(0, |i| i.0) as f64;
        metrics::gauge!(RAFT_TERM, "group" => group.clone()).set(status.term as f64);
        metrics::gauge!(RAFT_COMMIT_INDEX, "group" => group.clone())
            .set(index(status.commit_index));
        metrics::gauge!(RAFT_APPLIED_INDEX, "group" => group.clone())
            .set(index(status.applied_index));
        metrics::gauge!(RAFT_LAST_LOG_INDEX, "group" => group.clone())
            .set(index(status.last_log_index));
        metrics::gauge!(RAFT_IS_LEADER, "group" => group.clone()).set(
            if status.role == Role::Leader {
                1.0
            } else {
                0.0
            },
        );
        metrics::gauge!(RAFT_LEADER, "group" => group)
            .set(status.leader.map_or(0, |leader| leader.0) as f64);
    }
    for (role, count) in ["leader", "follower", "candidate", "learner"]
        .into_iter()
        .zip(replicas)
    {
        metrics::gauge!(RAFT_REPLICAS, "role" => role).set(f64::from(count));
    }
}

fn count_leader_change(change: LeaderChange) {
    if change.leader.is_some() {
        metrics::counter!(RAFT_LEADER_CHANGES, "group" => group_label(change.group)).increment(1);
    }
}

/// `ok`, or the error variant's name in snake case (`not_leader`, `timeout`, ...): a set as
/// bounded as the enum, and a new variant gets its own name without a change here.
fn outcome<T>(result: &Result<T, ControlError>) -> Cow<'static, str> {
    match result {
        Ok(_) => Cow::Borrowed("ok"),
        Err(error) => Cow::Owned(error_kind(error)),
    }
}

fn error_kind(error: &ControlError) -> String {
    let debug = format!("{error:?}");
    let mut kind = String::new();
    for (position, c) in debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .enumerate()
    {
        if c.is_ascii_uppercase() && position > 0 {
            kind.push('_');
        }
        kind.push(c.to_ascii_lowercase());
    }
    kind
}

fn group_label(group: GroupId) -> String {
    group.0.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodedb_cluster_core::NodeId;

    #[test]
    fn error_kinds_are_the_variant_names_in_snake_case() {
        let not_leader = ControlError::NotLeader {
            node: NodeId(1),
            group: GroupId(2),
            leader_hint: None,
        };
        assert_eq!(error_kind(&not_leader), "not_leader");
        assert_eq!(
            error_kind(&ControlError::Timeout { group: GroupId(1) }),
            "timeout"
        );
        assert_eq!(error_kind(&ControlError::Invalid("x".into())), "invalid");
        assert_eq!(outcome::<()>(&Ok(())), "ok");
    }
}
