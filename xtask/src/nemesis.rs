//! The fault schedule of `test-cluster`, drawn from the run's seed, and its execution against
//! a live cluster: SIGKILL the leader of a data group, restart it from its data dir a few
//! seconds later; later the same for the metadata group (group 0). Each fault is recorded
//! with the groups its victim led, for the failover report.
//!
//! Growing the cluster and decommissioning a node are not faults: `membership.rs` does them,
//! the decommission after the last fault here.

use crate::cluster::Cluster;
use crate::workload::Recorder;
use anyhow::{Context, Result, bail};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the nemesis looks for a group's leader before it gives up.
pub const LEADER_WAIT: Duration = Duration::from_secs(15);
/// Attempts to start a killed node again (a bind can fail while the port is released).
pub const RESTART_ATTEMPTS_MAX: u32 = 3;
/// Shortest and longest time a killed node stays down.
pub const DOWN_FOR_MIN: Duration = Duration::from_secs(2);
pub const DOWN_FOR_MAX: Duration = Duration::from_secs(5);
/// Poll interval of the nemesis while it waits for a time or a leader.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What one fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL the leader of data group `group`.
    KillDataLeader { group: u32 },
    /// SIGKILL the leader of the metadata group (group 0).
    KillMetadataLeader,
}

/// One fault of the schedule: when (since the workload started), what, and for how long the
/// victim stays down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    pub at: Duration,
    pub kind: FaultKind,
    pub down_for: Duration,
}

/// What happened when a fault was carried out. Times are microseconds of the recorder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    pub kind: FaultKind,
    pub node: u64,
    /// Every group the node led when it was killed.
    pub groups_led: Vec<u32>,
    pub killed_at_us: u64,
    /// When another node was first seen leading group 0, if the victim led it.
    pub metadata_leader_after_us: Option<u64>,
    pub restarted_at_us: u64,
    pub ready_at_us: u64,
}

/// The schedule for a run of `duration` over data groups `1..=num_groups`: a data-group
/// leader kill at 20-35% of the run, a metadata leader kill at 55-70%, each down for 2-5 s
/// but back before 90% of the run. Runs too short for a node to come back get no faults.
pub fn plan(seed: u64, duration: Duration, num_groups: u32) -> Vec<PlannedFault> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6E65_6D65_7369_7321);
    let mut faults = Vec::new();
    let slots = [
        (
            0.20,
            0.35,
            FaultKind::KillDataLeader {
                group: rng.random_range(1..=num_groups.max(1)),
            },
        ),
        (0.55, 0.70, FaultKind::KillMetadataLeader),
    ];
    for (from, to, kind) in slots {
        let at = duration.mul_f64(rng.random_range(from..to));
        let down_for = Duration::from_millis(
            rng.random_range(DOWN_FOR_MIN.as_millis() as u64..=DOWN_FOR_MAX.as_millis() as u64),
        );
        let latest_back = duration.mul_f64(0.9);
        if at + DOWN_FOR_MIN > latest_back {
            continue;
        }
        faults.push(PlannedFault {
            at,
            kind,
            down_for: down_for.min(latest_back - at),
        });
    }
    faults
}

/// Carries out `faults` in order, timed from `started`, until done or `stop` is set.
/// `phase` shows what is going on to the progress line.
pub fn execute(
    cluster: &Cluster,
    faults: &[PlannedFault],
    started: Instant,
    recorder: &Recorder,
    phase: &Mutex<String>,
    stop: &AtomicBool,
) -> Result<Vec<FaultEvent>> {
    let mut events = Vec::new();
    for fault in faults {
        if !sleep_until(started + fault.at, stop) {
            break;
        }
        let event = run_fault(cluster, fault, recorder, phase, stop)
            .with_context(|| format!("fault {fault}"))?;
        set_phase(phase, "load");
        events.push(event);
    }
    Ok(events)
}

impl FaultKind {
    /// The group whose leader is killed.
    pub fn group(self) -> u32 {
        match self {
            FaultKind::KillDataLeader { group } => group,
            FaultKind::KillMetadataLeader => 0,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::KillDataLeader { group } => write!(f, "kill leader of group {group}"),
            FaultKind::KillMetadataLeader => write!(f, "kill leader of group 0 (metadata)"),
        }
    }
}

impl fmt::Display for PlannedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {:.1}s, down for {:.1}s",
            self.kind,
            self.at.as_secs_f64(),
            self.down_for.as_secs_f64()
        )
    }
}

fn run_fault(
    cluster: &Cluster,
    fault: &PlannedFault,
    recorder: &Recorder,
    phase: &Mutex<String>,
    stop: &AtomicBool,
) -> Result<FaultEvent> {
    let group = fault.kind.group();
    let (node, groups_led, voters) = find_leader(cluster, group)?;
    if !cluster.kill(node) {
        bail!("node {node}, leader of group {group}, was not running");
    }
    eprintln!(
        "killed node {node}: leader of groups {groups_led:?}; group {group} voters {voters:?}"
    );
    let killed_at_us = recorder.now_us();
    let killed = Instant::now();
    set_phase(phase, &format!("node {node} down ({})", fault.kind));
    // Watched only while the victim is down, so the schedule is kept whatever happens.
    let metadata_leader_after_us = match groups_led.contains(&0) {
        true => wait_new_leader(cluster, 0, node, killed, killed + fault.down_for, stop)
            .map(|after| u64::try_from(after.as_micros()).unwrap_or(u64::MAX)),
        false => None,
    };
    sleep_until(killed + fault.down_for, stop);
    set_phase(phase, &format!("restarting node {node}"));
    restart(cluster, node)?;
    let restarted_at_us = recorder.now_us();
    cluster
        .wait_ready(&[node], cluster.ready_timeout())
        .map_err(|not_ready| anyhow::anyhow!("after restart: {not_ready}"))?;
    Ok(FaultEvent {
        kind: fault.kind,
        node,
        groups_led,
        killed_at_us,
        metadata_leader_after_us,
        restarted_at_us,
        ready_at_us: recorder.now_us(),
    })
}

/// The running node that leads `group`, and every group it leads, as the cluster reports.
pub fn find_leader(cluster: &Cluster, group: u32) -> Result<(u64, Vec<u32>, Vec<u64>)> {
    let deadline = Instant::now() + LEADER_WAIT;
    let mut last = String::from("no node answered /v1/cluster");
    while Instant::now() < deadline {
        if let Some(view) = cluster.view_from_any() {
            let target = view.groups.iter().find(|candidate| candidate.id == group);
            let leader = target.and_then(|candidate| candidate.leader);
            let voters = target
                .map(|candidate| candidate.voters.clone())
                .unwrap_or_default();
            match leader {
                Some(node) if cluster.is_running(node) => {
                    let led = view
                        .groups
                        .iter()
                        .filter(|candidate| candidate.leader == Some(node))
                        .map(|candidate| candidate.id)
                        .collect();
                    return Ok((node, led, voters));
                }
                Some(node) => last = format!("group {group} reports dead node {node} as leader"),
                None => last = format!("group {group} has no leader"),
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    bail!("no leader of group {group} found within {LEADER_WAIT:?}: {last}")
}

/// Time from `since` until any running node reports a leader of `group` other than `old`;
/// `None` if none does before `deadline`.
fn wait_new_leader(
    cluster: &Cluster,
    group: u32,
    old: u64,
    since: Instant,
    deadline: Instant,
    stop: &AtomicBool,
) -> Option<Duration> {
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let new_leader = cluster
            .node_ids()
            .into_iter()
            .filter(|node| cluster.is_running(*node))
            .filter_map(|node| cluster.view(node).ok())
            .filter_map(|view| {
                view.groups
                    .into_iter()
                    .find(|candidate| candidate.id == group)
            })
            .any(|view| view.leader.is_some_and(|leader| leader != old));
        if new_leader {
            return Some(since.elapsed());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    None
}

pub fn restart(cluster: &Cluster, node: u64) -> Result<()> {
    let mut last_error = None;
    for _ in 0..RESTART_ATTEMPTS_MAX {
        match cluster.start(node) {
            Ok(()) => return Ok(()),
            Err(error) => last_error = Some(error),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(last_error.expect("at least one attempt")).context(format!("restarting node {node}"))
}

/// Sleeps until `deadline`; false if `stop` was set first.
pub fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

fn set_phase(phase: &Mutex<String>, text: &str) {
    let mut phase = phase
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *phase = text.to_string();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_a_data_kill_then_a_metadata_kill_inside_the_run() {
        for seed in 0..200 {
            let duration = Duration::from_secs(30);
            let faults = plan(seed, duration, 8);
            assert_eq!(faults.len(), 2, "seed {seed}");
            let FaultKind::KillDataLeader { group } = faults[0].kind else {
                panic!("seed {seed}: first fault is {:?}", faults[0].kind);
            };
            assert!((1..=8).contains(&group), "seed {seed}: group {group}");
            assert_eq!(faults[1].kind, FaultKind::KillMetadataLeader);
            assert!(
                faults[0].at + faults[0].down_for < faults[1].at,
                "seed {seed}"
            );
            for fault in &faults {
                assert!(fault.down_for >= DOWN_FOR_MIN && fault.down_for <= DOWN_FOR_MAX);
                assert!(
                    fault.at + fault.down_for <= duration.mul_f64(0.9),
                    "seed {seed}"
                );
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let duration = Duration::from_secs(60);
        assert_eq!(plan(7, duration, 8), plan(7, duration, 8));
        let distinct: std::collections::BTreeSet<_> = (0..20)
            .map(|seed| format!("{:?}", plan(seed, duration, 8)))
            .collect();
        assert!(distinct.len() > 10);
    }

    #[test]
    fn short_runs_get_fewer_faults() {
        assert!(plan(1, Duration::from_secs(2), 8).is_empty());
        let faults = plan(1, Duration::from_secs(12), 8);
        assert!(faults.len() <= 2);
        for fault in faults {
            assert!(fault.at + fault.down_for <= Duration::from_secs(12).mul_f64(0.9));
        }
    }

    #[test]
    fn a_single_data_group_is_still_targeted() {
        let faults = plan(3, Duration::from_secs(30), 1);
        assert_eq!(faults[0].kind, FaultKind::KillDataLeader { group: 1 });
    }

    #[test]
    fn faults_read_well() {
        let fault = PlannedFault {
            at: Duration::from_millis(7500),
            kind: FaultKind::KillDataLeader { group: 3 },
            down_for: Duration::from_secs(2),
        };
        assert_eq!(
            fault.to_string(),
            "kill leader of group 3 at 7.5s, down for 2.0s"
        );
        assert_eq!(FaultKind::KillMetadataLeader.group(), 0);
    }

    #[test]
    fn sleep_until_stops_early_when_asked() {
        let stop = AtomicBool::new(true);
        assert!(!sleep_until(
            Instant::now() + Duration::from_secs(600),
            &stop
        ));
        let go = AtomicBool::new(false);
        assert!(sleep_until(Instant::now(), &go));
    }
}
