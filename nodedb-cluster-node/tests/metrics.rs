//! `GET /metrics` of a real three-node cluster records what happened: after writes and reads
//! through node 1, the proposal, read, forwarding, Raft, transport, log and catalog series exist
//! with non-zero values for the groups written.
//!
//! The `metrics` recorder is global to a process, so this file is its own test binary with a
//! single test that installs it. The three nodes share that recorder: their series add up.

mod real_cluster;

use nodedb_cluster_core::GroupId;
use nodedb_cluster_raft::RaftTimings;
use real_cluster::{NUM_GROUPS, RealCluster};
use std::collections::BTreeMap;

/// Writes to one group: more than `RaftTimings::for_tests().snapshot_logs_since_last`, so its
/// replicas build a snapshot.
const WRITES_TO_ONE_GROUP: usize = 250;

#[test]
fn metrics_record_proposals_reads_raft_state_transport_log_and_catalog() {
    let handle = nodedb_cluster_node::metrics::install_recorder().unwrap();
    let timings = RaftTimings::for_tests();
    assert!(WRITES_TO_ONE_GROUP as u64 > timings.snapshot_logs_since_last);
    let cluster = RealCluster::start(None, handle, timings);

    for group in 1..=NUM_GROUPS {
        let key = cluster.key_in(GroupId(group), "metric");
        assert_eq!(cluster.put(1, &key, b"v").status, 200);
        assert_eq!(cluster.get(1, &key).status, 200);
        cluster.wait_until("node 1's replica to apply the write", || {
            cluster.get_stale(1, &key).status == 200
        });
    }
    let busy_key = cluster.key_in(GroupId(1), "busy");
    for round in 0..WRITES_TO_ONE_GROUP {
        let put = cluster.put(1, &busy_key, format!("{round}").as_bytes());
        assert_eq!(put.status, 200, "{}", put.text());
    }

    let mut scrape = Scrape::default();
    cluster.wait_until("the Raft state of every group to be sampled", || {
        scrape = Scrape::of(&cluster);
        (1..=NUM_GROUPS).all(|group| {
            let group = group.to_string();
            scrape.value("nodedb_cluster_raft_applied_index", &[("group", &group)]) > 0.0
        })
    });

    for group in 1..=NUM_GROUPS {
        let group = group.to_string();
        let labels = [("group", group.as_str())];
        assert!(
            scrape.value(
                "nodedb_cluster_proposals_total",
                &[("group", &group), ("outcome", "ok")]
            ) > 0.0,
            "proposals of group {group}"
        );
        assert!(scrape.value("nodedb_cluster_proposal_duration_seconds_count", &labels) > 0.0);
        assert!(scrape.value("nodedb_cluster_proposal_duration_seconds_bucket", &labels) > 0.0);
        for consistency in ["linearizable", "stale"] {
            let read = [
                ("group", group.as_str()),
                ("consistency", consistency),
                ("outcome", "ok"),
            ];
            assert!(
                scrape.value("nodedb_cluster_reads_total", &read) > 0.0,
                "{consistency} reads of group {group}"
            );
        }
        assert!(scrape.value("nodedb_cluster_read_duration_seconds_count", &labels) > 0.0);
        for gauge in [
            "nodedb_cluster_raft_term",
            "nodedb_cluster_raft_commit_index",
            "nodedb_cluster_raft_applied_index",
            "nodedb_cluster_raft_last_log_index",
            "nodedb_cluster_raft_leader",
        ] {
            assert!(
                scrape.value(gauge, &labels) > 0.0,
                "{gauge} of group {group}"
            );
        }
        assert!(scrape.has("nodedb_cluster_raft_is_leader", &labels));
    }
    for series in [
        "nodedb_cluster_forwarded_requests_total",
        "nodedb_cluster_raft_leader_changes_total",
        "nodedb_cluster_raft_replicas",
        "nodedb_cluster_transport_rpcs_sent_total",
        "nodedb_cluster_transport_rpcs_received_total",
        "nodedb_cluster_transport_bytes_sent_total",
        "nodedb_cluster_transport_bytes_received_total",
        "nodedb_cluster_raft_log_commits_total",
        "nodedb_cluster_raft_log_commit_operations_sum",
        "nodedb_cluster_raft_log_commit_duration_seconds_count",
        "nodedb_cluster_raft_snapshots_built_total",
        "nodedb_cluster_catalog_writes_total",
        "nodedb_cluster_catalog_write_duration_seconds_count",
    ] {
        assert!(scrape.total(series) > 0.0, "{series} recorded something");
    }
    for role in ["leader", "follower"] {
        assert!(
            scrape.has("nodedb_cluster_raft_quiet_replicas", &[("role", role)]),
            "quiet {role} replicas are reported"
        );
    }
    for peer in ["1", "2", "3"] {
        assert!(
            scrape.value(
                "nodedb_cluster_transport_rpcs_sent_total",
                &[("peer", peer)]
            ) > 0.0,
            "RPCs to node {peer}"
        );
    }
    assert!(
        scrape.value(
            "nodedb_cluster_catalog_writes_total",
            &[("record", "cluster"), ("outcome", "committed")]
        ) > 0.0
    );
    assert!(
        scrape.value(
            "nodedb_cluster_raft_snapshots_built_total",
            &[("group", "1")]
        ) > 0.0,
        "the busy group built a snapshot"
    );
    assert!(
        scrape
            .text
            .contains("# TYPE nodedb_cluster_proposal_duration_seconds histogram"),
        "latencies are histograms with buckets"
    );
    assert!(
        scrape
            .text
            .contains("# HELP nodedb_cluster_transport_rpcs_sent_total"),
        "series are described"
    );
    cluster.shutdown();
}

/// One scrape of `/metrics`, parsed into (name, labels) -> value.
#[derive(Default)]
struct Scrape {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn of(cluster: &RealCluster) -> Scrape {
        let answer = cluster.send(1, "GET", "/metrics", b"");
        assert_eq!(answer.status, 200);
        let text = answer.text();
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(parse_sample)
            .collect();
        Scrape { text, samples }
    }

    /// The sum of the samples of `name` whose labels include all of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).sum()
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    fn total(&self, name: &str) -> f64 {
        self.value(name, &[])
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.samples
            .iter()
            .filter(move |(sample, sample_labels, _)| {
                sample == name
                    && labels.iter().all(|(key, value)| {
                        sample_labels.get(*key).map(String::as_str) == Some(value)
                    })
            })
            .map(|(_, _, value)| *value)
    }
}

/// `name{a="x",b="y"} value` or `name value`.
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("not a sample: {line}"));
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("not a value: {line}"));
    let Some((name, labels)) = series.split_once('{') else {
        return (series.to_string(), BTreeMap::new(), value);
    };
    let labels = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("not a label: {line}"));
            (key.to_string(), value.trim_matches('"').to_string())
        })
        .collect();
    (name.to_string(), labels, value)
}
