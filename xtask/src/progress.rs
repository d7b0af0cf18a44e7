//! The once-a-second progress line of `test-cluster`: phase, throughput, outcome counts and
//! the leader of every group, so a stuck group or a failover is visible while it happens.

use crate::api::ClusterView;
use crate::cluster::Cluster;
use crate::workload::{Counts, Recorder};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Time between two progress lines.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One progress line's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressLine {
    pub elapsed: Duration,
    pub phase: String,
    pub ops_per_second: u64,
    pub counts: Counts,
    /// `(group, leader)` for every group, `None` leader when the group has none; empty when
    /// no node answered.
    pub leaders: Vec<(u32, Option<u64>)>,
}

impl ProgressLine {
    /// `[  12s] load | 143 ops/s | ok 1500 failed 20 unknown 3 | leaders 0:1 1:2 2:- 3:3`
    pub fn render(&self) -> String {
        let leaders = if self.leaders.is_empty() {
            "leaders ?".to_string()
        } else {
            let parts: Vec<String> = self
                .leaders
                .iter()
                .map(|(group, leader)| match leader {
                    Some(node) => format!("{group}:{node}"),
                    None => format!("{group}:-"),
                })
                .collect();
            format!("leaders {}", parts.join(" "))
        };
        format!(
            "[{:>5}s] {} | {} ops/s | ok {} failed {} unknown {} | {leaders}",
            self.elapsed.as_secs(),
            self.phase,
            self.ops_per_second,
            self.counts.ok,
            self.counts.failed,
            self.counts.unknown
        )
    }
}

/// The leader of every group in `view`, by group id.
pub fn leaders(view: &ClusterView) -> Vec<(u32, Option<u64>)> {
    let mut leaders: Vec<_> = view
        .groups
        .iter()
        .map(|group| (group.id, group.leader))
        .collect();
    leaders.sort_unstable();
    leaders
}

/// Prints a progress line every [`INTERVAL`] until `stop` is set.
pub fn run(
    cluster: &Cluster,
    recorder: &Recorder,
    phase: &Mutex<String>,
    started: Instant,
    stop: &AtomicBool,
) {
    let mut previous = recorder.counters.snapshot();
    let mut previous_at = Instant::now();
    let mut next = Instant::now() + INTERVAL;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        next += INTERVAL;
        let counts = recorder.counters.snapshot();
        let seconds = previous_at.elapsed().as_secs_f64().max(0.001);
        let ops_per_second = ((counts.total() - previous.total()) as f64 / seconds) as u64;
        previous = counts;
        previous_at = Instant::now();
        let line = ProgressLine {
            elapsed: started.elapsed(),
            phase: phase.lock().map(|text| text.clone()).unwrap_or_default(),
            ops_per_second,
            counts,
            leaders: cluster
                .view_from_any()
                .map(|view| leaders(&view))
                .unwrap_or_default(),
        };
        eprintln!("{}", line.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GroupView;

    fn group(id: u32, leader: Option<u64>) -> GroupView {
        GroupView {
            id,
            voters: vec![1, 2, 3],
            learners: vec![],
            leader,
            term: Some(1),
            commit_index: Some(0),
            applied_index: Some(0),
            vshard_count: 0,
            state_hash: None,
        }
    }

    #[test]
    fn the_line_shows_phase_rate_counts_and_leaders() {
        let line = ProgressLine {
            elapsed: Duration::from_millis(12_400),
            phase: "load".to_string(),
            ops_per_second: 143,
            counts: Counts {
                ok: 1500,
                failed: 20,
                unknown: 3,
            },
            leaders: vec![(0, Some(1)), (1, Some(2)), (2, None)],
        };
        assert_eq!(
            line.render(),
            "[   12s] load | 143 ops/s | ok 1500 failed 20 unknown 3 | leaders 0:1 1:2 2:-"
        );
        let unknown = ProgressLine {
            leaders: vec![],
            ..line
        };
        assert!(unknown.render().ends_with("| leaders ?"));
    }

    #[test]
    fn leaders_are_listed_by_group() {
        let view = ClusterView {
            cluster_id: "c".to_string(),
            node_id: 1,
            routing_version: 1,
            nodes: vec![],
            groups: vec![group(2, None), group(0, Some(3)), group(1, Some(1))],
        };
        assert_eq!(leaders(&view), [(0, Some(3)), (1, Some(1)), (2, None)]);
    }
}
