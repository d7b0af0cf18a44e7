//! The end-of-run checks of `test-cluster`: every node back and ready, every node agreeing
//! on routing and membership, final linearizable reads of every key, the history (with those
//! reads) linearizable per key, replica state hashes when the node exposes them, and the
//! unavailability window of every failover.

use crate::api::{Api, ClusterView, GroupView, NodeView, Reply};
use crate::cluster::Cluster;
use crate::nemesis::FaultEvent;
use crate::report::{CheckResult, FailoverRow};
use crate::workload::GroupWrite;
use nodedb_cluster_core::linearizability::{self, History, Verdict};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long the nodes get to agree on routing and membership after the load stops.
pub const AGREEMENT_WAIT: Duration = Duration::from_secs(30);
/// Attempts per key of the final read, each against the next node.
pub const FINAL_READ_ATTEMPTS_MAX: u32 = 20;
/// How long all final reads together may take: a stuck cluster fails the check instead of
/// retrying every key for minutes.
pub const FINAL_READS_TIMEOUT: Duration = Duration::from_secs(90);
/// Characters of a checker explanation shown in the report (the full text goes to a file).
const EXPLANATION_CHARS_MAX: usize = 3_000;
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// A key and the value its final read saw.
pub type FinalRead = (String, Option<Vec<u8>>);

/// Restarts any node that is not running and waits until all are ready.
pub fn settle(cluster: &Cluster) -> CheckResult {
    const NAME: &str = "all nodes ready";
    let mut restarted = Vec::new();
    for node in cluster.node_ids() {
        if !cluster.is_running(node) {
            if let Err(error) = cluster.start(node) {
                return CheckResult::fail(NAME, format!("cannot restart node {node}: {error:#}"));
            }
            restarted.push(node);
        }
    }
    match cluster.wait_ready(&cluster.node_ids(), cluster.ready_timeout()) {
        Ok(()) if restarted.is_empty() => CheckResult::pass(NAME, "every node answers /readyz"),
        Ok(()) => CheckResult::pass(NAME, format!("after restarting nodes {restarted:?}")),
        Err(not_ready) => CheckResult::fail(NAME, not_ready.to_string()),
    }
}

/// Waits (bounded) until every node reports the same routing version and membership.
pub fn agreement(cluster: &Cluster) -> (CheckResult, Vec<ClusterView>) {
    const NAME: &str = "routing/membership agree";
    let started = Instant::now();
    let expected: Vec<u64> = cluster.node_ids();
    loop {
        let views: Result<Vec<ClusterView>, String> = expected
            .iter()
            .map(|node| {
                cluster
                    .view(*node)
                    .map_err(|error| format!("node {node}: {error:#}"))
            })
            .collect();
        let verdict = views
            .and_then(|views| compare_views(&views, &expected).map(|summary| (summary, views)));
        match verdict {
            Ok((summary, views)) => return (CheckResult::pass(NAME, summary), views),
            Err(difference) if started.elapsed() > AGREEMENT_WAIT => {
                let detail = format!("still differing after {AGREEMENT_WAIT:?}: {difference}");
                return (CheckResult::fail(NAME, detail), Vec::new());
            }
            Err(_) => std::thread::sleep(RETRY_INTERVAL),
        }
    }
}

/// Whether `views` (one per node, in the order of `expected` node ids) agree; a one-line
/// summary, or the first difference.
pub fn compare_views(views: &[ClusterView], expected: &[u64]) -> Result<String, String> {
    let first = views.first().ok_or("no views")?;
    let nodes = sorted_nodes(first);
    let node_ids: Vec<u64> = nodes.iter().map(|node| node.id).collect();
    if node_ids != expected {
        return Err(format!(
            "node {} lists nodes {node_ids:?}, expected {expected:?}",
            first.node_id
        ));
    }
    let membership = group_membership(first);
    for (view, asked) in views.iter().zip(expected) {
        if view.node_id != *asked {
            return Err(format!(
                "the node asked as {asked} says it is node {}",
                view.node_id
            ));
        }
        if view.cluster_id != first.cluster_id {
            return Err(format!(
                "node {} is in cluster {}, node {} in {}",
                view.node_id, view.cluster_id, first.node_id, first.cluster_id
            ));
        }
        if view.routing_version != first.routing_version {
            return Err(format!(
                "node {} has routing_version {}, node {} has {}",
                view.node_id, view.routing_version, first.node_id, first.routing_version
            ));
        }
        if sorted_nodes(view) != nodes {
            return Err(format!(
                "node {} lists other nodes than node {}",
                view.node_id, first.node_id
            ));
        }
        if let Some(group) = first_difference(&group_membership(view), &membership) {
            return Err(format!(
                "node {} and node {} disagree on the members of group {group}",
                view.node_id, first.node_id
            ));
        }
    }
    if let Some(group) = first.groups.iter().find(|group| group.leader.is_none()) {
        return Err(format!("group {} has no leader", group.id));
    }
    Ok(format!(
        "{} nodes agree: routing_version {}, {} groups, members and addresses equal",
        views.len(),
        first.routing_version,
        first.groups.len()
    ))
}

/// Reads every key once (linearizable), trying the nodes in turn, within
/// [`FINAL_READS_TIMEOUT`] in all.
pub fn final_reads(
    nodes: &[SocketAddr],
    api: &Api,
    keys: &[String],
) -> Result<Vec<FinalRead>, String> {
    if nodes.is_empty() {
        return Err("no nodes to read from".to_string());
    }
    let deadline = Instant::now() + FINAL_READS_TIMEOUT;
    let mut reads = Vec::with_capacity(keys.len());
    for (index, key) in keys.iter().enumerate() {
        let mut last = String::new();
        let mut value = None;
        for attempt in 0..FINAL_READ_ATTEMPTS_MAX as usize {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {} keys read within {FINAL_READS_TIMEOUT:?}; last: {last}",
                    reads.len(),
                    keys.len()
                ));
            }
            let node = nodes[(index + attempt) % nodes.len()];
            match api.get(node, key) {
                Reply::Ok(seen) => {
                    value = Some(seen);
                    break;
                }
                Reply::Failed(why) | Reply::Refused(why) | Reply::Unknown(why) => {
                    last = format!("{node}: {why}")
                }
            }
            std::thread::sleep(RETRY_INTERVAL);
        }
        match value {
            Some(seen) => reads.push((key.clone(), seen)),
            None => {
                return Err(format!(
                    "key {key} unreadable after {FINAL_READ_ATTEMPTS_MAX} attempts; last: {last}"
                ));
            }
        }
    }
    Ok(reads)
}

/// The per-key linearizability check of the history plus the final reads. Returns the row
/// and the full report text.
pub fn linearizable(history: &History, reads: Vec<FinalRead>) -> (CheckResult, String) {
    const NAME: &str = "linearizable per key";
    let final_count = reads.len();
    let report = linearizability::check_with_final_reads(history, reads);
    let full = report.to_string();
    let summary = format!(
        "{} keys, {} ops checked ({} ignored), {final_count} final reads",
        report.keys_checked, report.ops_checked, report.ops_ignored
    );
    let row = match &report.verdict {
        Verdict::Linearizable => CheckResult::pass(
            NAME,
            format!(
                "{summary}\nthe final reads fit: no acknowledged write lost, no failed one seen"
            ),
        ),
        Verdict::NotLinearizable { .. } | Verdict::Unknown { .. } => {
            let shown: String = full.chars().take(EXPLANATION_CHARS_MAX).collect();
            CheckResult::fail(NAME, format!("{summary}\n{shown}"))
        }
    };
    (row, full)
}

/// Compares replica state hashes of equal `(group, applied_index)` across the nodes' views;
/// skipped, and said so, when no view exposes a hash.
pub fn state_hashes(views: &[ClusterView]) -> CheckResult {
    const NAME: &str = "replica state hashes";
    let mut seen: BTreeMap<(u32, u64), (u64, &str)> = BTreeMap::new();
    let mut compared = 0;
    for view in views {
        for group in &view.groups {
            let (Some(hash), Some(applied_index)) =
                (group.state_hash.as_deref(), group.applied_index)
            else {
                continue;
            };
            match seen.get(&(group.id, applied_index)) {
                Some((other, other_hash)) if *other_hash != hash => {
                    return CheckResult::fail(
                        NAME,
                        format!(
                            "group {} at applied index {}: node {} has {hash}, node {other} \
                             has {other_hash}",
                            group.id, applied_index, view.node_id
                        ),
                    );
                }
                Some(_) => compared += 1,
                None => {
                    seen.insert((group.id, applied_index), (view.node_id, hash));
                }
            }
        }
    }
    match (seen.is_empty(), compared) {
        (true, _) => CheckResult::skip(NAME, "skipped: not exposed by /v1/cluster"),
        (false, 0) => CheckResult::skip(NAME, "skipped: no two replicas at the same applied index"),
        (false, compared) => CheckResult::pass(NAME, format!("{compared} replica pairs equal")),
    }
}

/// One failover row per group each killed node led, with its unavailability window.
pub fn failover_rows(events: &[FaultEvent], writes: &[GroupWrite]) -> Vec<FailoverRow> {
    let mut rows = Vec::new();
    for event in events {
        for group in &event.groups_led {
            let window_us = match group {
                0 => event.metadata_leader_after_us,
                _ => writes
                    .iter()
                    .filter(|write| {
                        write.group == *group && write.invoked_at_us >= event.killed_at_us
                    })
                    .map(|write| write.completed_at_us - event.killed_at_us)
                    .min(),
            };
            rows.push(FailoverRow {
                fault: event.kind.to_string(),
                node: event.node,
                group: *group,
                window: window_us.map(Duration::from_micros),
                down_for: Duration::from_micros(
                    event.restarted_at_us.saturating_sub(event.killed_at_us),
                ),
            });
        }
    }
    rows
}

/// Fails when a group a killed node led never served again.
pub fn failovers_recovered(rows: &[FailoverRow], planned: usize, executed: usize) -> CheckResult {
    const NAME: &str = "failovers recovered";
    if planned == 0 {
        return CheckResult::skip(NAME, "skipped: no faults in this run");
    }
    if executed < planned {
        return CheckResult::fail(
            NAME,
            format!("only {executed} of {planned} faults were carried out"),
        );
    }
    let stuck: Vec<String> = rows
        .iter()
        .filter(|row| row.window.is_none())
        .map(|row| format!("group {} (after {})", row.group, row.fault))
        .collect();
    if !stuck.is_empty() {
        return CheckResult::fail(NAME, format!("never served again: {}", stuck.join(", ")));
    }
    let worst = rows
        .iter()
        .filter_map(|row| row.window)
        .max()
        .unwrap_or_default();
    CheckResult::pass(
        NAME,
        format!(
            "{executed} faults, {} groups failed over, worst window {} ms",
            rows.len(),
            worst.as_millis()
        ),
    )
}

/// The members a view lists, sorted: a decommissioned node is no longer one.
fn sorted_nodes(view: &ClusterView) -> Vec<NodeView> {
    let mut nodes: Vec<NodeView> = view
        .nodes
        .iter()
        .filter(|node| node.state != "decommissioned")
        .cloned()
        .collect();
    nodes.sort();
    nodes
}

fn group_membership(view: &ClusterView) -> BTreeMap<u32, (Vec<u64>, Vec<u64>)> {
    view.groups
        .iter()
        .map(|group: &GroupView| {
            let mut voters = group.voters.clone();
            let mut learners = group.learners.clone();
            voters.sort_unstable();
            learners.sort_unstable();
            (group.id, (voters, learners))
        })
        .collect()
}

fn first_difference(
    left: &BTreeMap<u32, (Vec<u64>, Vec<u64>)>,
    right: &BTreeMap<u32, (Vec<u64>, Vec<u64>)>,
) -> Option<u32> {
    left.keys()
        .chain(right.keys())
        .find(|group| left.get(group) != right.get(group))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::FaultKind;
    use crate::report::Status;
    use nodedb_cluster_core::linearizability::{HistoryRecorder, OpKind, Outcome};

    fn view(node_id: u64, routing_version: u64) -> ClusterView {
        let node = |id: u64| NodeView {
            id,
            addr: format!("127.0.0.1:70{id:02}"),
            admin_addr: format!("127.0.0.1:80{id:02}"),
            state: "active".to_string(),
        };
        let group = |id: u32| GroupView {
            id,
            voters: vec![3, 1, 2],
            learners: vec![],
            leader: Some(1),
            term: Some(2),
            commit_index: Some(10),
            applied_index: Some(10),
            vshard_count: if id == 0 { 0 } else { 512 },
            state_hash: None,
        };
        ClusterView {
            cluster_id: "c1".to_string(),
            node_id,
            routing_version,
            nodes: vec![node(2), node(1), node(3)],
            groups: vec![group(0), group(1), group(2)],
        }
    }

    #[test]
    fn agreeing_views_pass() {
        let views = vec![view(1, 5), view(2, 5), view(3, 5)];
        let summary = compare_views(&views, &[1, 2, 3]).unwrap();
        assert!(summary.contains("routing_version 5"), "{summary}");
    }

    #[test]
    fn each_kind_of_disagreement_is_named() {
        let expected = [1, 2, 3];
        let mut lagging = vec![view(1, 5), view(2, 4), view(3, 5)];
        assert!(
            compare_views(&lagging, &expected)
                .unwrap_err()
                .contains("routing_version 4")
        );
        lagging[1].routing_version = 5;
        lagging[1].groups[2].voters = vec![1, 2];
        assert!(
            compare_views(&lagging, &expected)
                .unwrap_err()
                .contains("group 2")
        );
        let mut missing = vec![view(1, 5), view(2, 5), view(3, 5)];
        missing[0].nodes.pop();
        assert!(
            compare_views(&missing, &expected)
                .unwrap_err()
                .contains("lists nodes")
        );
        let mut leaderless = vec![view(1, 5), view(2, 5), view(3, 5)];
        for view in &mut leaderless {
            view.groups[1].leader = None;
        }
        assert!(
            compare_views(&leaderless, &expected)
                .unwrap_err()
                .contains("no leader")
        );
        let mut moved = vec![view(1, 5), view(2, 5), view(3, 5)];
        moved[2].nodes[0].admin_addr = "127.0.0.1:1".to_string();
        assert!(
            compare_views(&moved, &expected)
                .unwrap_err()
                .contains("other nodes")
        );
        let swapped = vec![view(1, 5), view(3, 5), view(2, 5)];
        assert!(
            compare_views(&swapped, &expected)
                .unwrap_err()
                .contains("asked as 2")
        );
    }

    #[test]
    fn final_reads_name_the_unreadable_key() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let api = Api::new(Duration::from_secs(1));
        let error = final_reads(&[], &api, &["k".to_string()]).unwrap_err();
        assert!(error.contains("no nodes"), "{error}");
        let error = final_reads(&[dead], &api, &["k00001".to_string()]).unwrap_err();
        assert!(
            error.contains("key k00001 unreadable after 20 attempts"),
            "{error}"
        );
        assert!(error.contains("connection refused"), "{error}");
    }

    #[test]
    fn hashes_are_skipped_when_absent_and_compared_when_present() {
        let plain = vec![view(1, 5), view(2, 5)];
        let result = state_hashes(&plain);
        assert_eq!(result.status, Status::Skip);
        assert!(result.detail.contains("not exposed"));
        let mut hashed = vec![view(1, 5), view(2, 5), view(3, 5)];
        for view in &mut hashed {
            for group in &mut view.groups {
                group.state_hash = Some(format!("h{}", group.id));
            }
        }
        assert_eq!(state_hashes(&hashed).status, Status::Pass);
        hashed[2].groups[1].state_hash = Some("other".to_string());
        let failed = state_hashes(&hashed);
        assert_eq!(failed.status, Status::Fail);
        assert!(failed.detail.contains("group 1"), "{}", failed.detail);
    }

    #[test]
    fn windows_run_from_the_kill_to_the_next_write_invoked_after_it() {
        let event = FaultEvent {
            kind: FaultKind::KillDataLeader { group: 2 },
            node: 3,
            groups_led: vec![0, 2, 5],
            killed_at_us: 10_000_000,
            metadata_leader_after_us: Some(450_000),
            restarted_at_us: 13_000_000,
            ready_at_us: 14_000_000,
        };
        let write = |group, invoked_at_us, completed_at_us| GroupWrite {
            group,
            invoked_at_us,
            completed_at_us,
        };
        let writes = vec![
            write(2, 9_900_000, 10_100_000), // invoked before the kill: does not count
            write(2, 10_500_000, 11_200_000),
            write(2, 10_400_000, 11_900_000),
            write(1, 10_001_000, 10_002_000), // another group
        ];
        let rows = failover_rows(&[event], &writes);
        let windows: Vec<_> = rows.iter().map(|row| (row.group, row.window)).collect();
        assert_eq!(
            windows,
            [
                (0, Some(Duration::from_millis(450))),
                (2, Some(Duration::from_millis(1200))),
                (5, None),
            ]
        );
        assert_eq!(rows[1].down_for, Duration::from_secs(3));
        let verdict = failovers_recovered(&rows, 1, 1);
        assert_eq!(verdict.status, Status::Fail);
        assert!(verdict.detail.contains("group 5"), "{}", verdict.detail);
        assert_eq!(failovers_recovered(&rows[..2], 1, 1).status, Status::Pass);
        assert_eq!(failovers_recovered(&[], 0, 0).status, Status::Skip);
        assert_eq!(failovers_recovered(&[], 2, 1).status, Status::Fail);
    }

    #[test]
    fn a_lost_acknowledged_write_fails_the_linearizability_check() {
        let mut recorder = HistoryRecorder::new();
        recorder
            .record(1, "k1", OpKind::put("a"), 0, 10, Outcome::done())
            .unwrap();
        let history = recorder.finish();
        let (kept, _) = linearizable(&history, vec![("k1".to_string(), Some(b"a".to_vec()))]);
        assert_eq!(kept.status, Status::Pass, "{}", kept.detail);
        let (lost, full) = linearizable(&history, vec![("k1".to_string(), None)]);
        assert_eq!(lost.status, Status::Fail);
        assert!(full.contains("NOT linearizable"), "{full}");
    }
}
