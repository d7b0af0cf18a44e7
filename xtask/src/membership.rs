//! The membership phase of `test-cluster`: while the clients keep writing, one node more than
//! `--nodes` starts with an empty data dir and joins through the seeds; once it holds data
//! replicas, and once the nemesis is done (so that no node is down), one of the launched nodes
//! is decommissioned through `POST /v1/nodes/{id}/decommission`. That node's replicas and
//! leaderships move away, it is recorded Decommissioned and stops itself: its process must
//! exit with status 0. The cluster ends with as many nodes as it began with, and the
//! replication factor is never short of nodes. From then on the clients, the end checks and
//! the report see only the members.

use crate::api::{Api, ClusterView};
use crate::cluster::process::ChildState;
use crate::cluster::{Cluster, NodeHost, ports};
use crate::report::CheckResult;
use crate::workload::Recorder;
use anyhow::{Context, Result, bail};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the joined node may take to hold a data replica as a voter.
pub const REPLICAS_WAIT: Duration = Duration::from_secs(60);
/// How long a decommissioned node may take to stop by itself after the request.
pub const DECOMMISSION_WAIT: Duration = Duration::from_secs(90);
/// Load that goes on once the decommissioned node is gone, against the smaller cluster.
pub const TAIL: Duration = Duration::from_secs(3);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// The phase's plan: the node that joins and the launched node that leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedMembership {
    pub join: u64,
    pub decommission: u64,
}

/// How the join went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    pub node: u64,
    /// Start to `/readyz` answering 200.
    pub ready_after: Duration,
    /// Start to holding a data replica as a voter, and how many it held then.
    pub replicas_after: Duration,
    pub replicas: usize,
}

/// How the decommission went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decommissioned {
    pub node: u64,
    /// Request to the process's exit.
    pub exited_after: Duration,
    pub exit: String,
}

/// What the phase did; `error` is where it stopped, if it did not finish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipEvent {
    pub joined: Option<Joined>,
    pub decommissioned: Option<Decommissioned>,
    pub error: Option<String>,
}

/// The phase for a cluster launched with nodes `1..=nodes`: node `nodes + 1` joins and a
/// launched node drawn from the seed leaves. `None` when no node can be added.
pub fn plan(seed: u64, nodes: u32) -> Option<PlannedMembership> {
    if nodes >= crate::cli::NODES_MAX || nodes == 0 {
        return None;
    }
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6D65_6D62_6572_7321);
    Some(PlannedMembership {
        join: u64::from(nodes) + 1,
        decommission: rng.random_range(1..=u64::from(nodes)),
    })
}

/// Starts node `planned.join`, waits until it is ready and holds a data replica, then adds it
/// to the nodes the clients address.
pub fn join(
    cluster: &Cluster,
    planned: PlannedMembership,
    recorder: &Recorder,
    phase: &Mutex<String>,
    stop: &AtomicBool,
) -> Result<Joined> {
    let node = planned.join;
    set_phase(phase, &format!("node {node} joining"));
    let host = NodeHost {
        ports: ports::allocate(1)?[0],
        wrapper: Vec::new(),
    };
    cluster
        .add_node(node, &host)
        .with_context(|| format!("adding node {node}"))?;
    let started = Instant::now();
    cluster.start(node)?;
    cluster
        .wait_ready(&[node], cluster.ready_timeout())
        .map_err(|not_ready| anyhow::anyhow!("node {node} did not join: {not_ready}"))?;
    let ready_after = started.elapsed();
    eprintln!("node {node} joined: ready after {ready_after:.1?}; waiting for its replicas");
    recorder.set_nodes(cluster.admin_addrs().into_values().collect());
    set_phase(phase, &format!("node {node} joined, awaiting replicas"));
    let deadline = Instant::now() + REPLICAS_WAIT;
    loop {
        let replicas = cluster
            .view_from_any()
            .map_or(0, |view| data_replicas(&view, node));
        if replicas > 0 {
            let joined = Joined {
                node,
                ready_after,
                replicas_after: started.elapsed(),
                replicas,
            };
            eprintln!(
                "node {node} holds {replicas} data replicas after {:.1?}",
                joined.replicas_after
            );
            set_phase(phase, "load");
            return Ok(joined);
        }
        if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
            bail!("node {node} held no data replica within {REPLICAS_WAIT:?} of its start");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Decommissions node `planned.decommission` through another member's admin API and waits
/// until its process exits; then it is no longer a node of `cluster` nor addressed by the
/// clients.
pub fn decommission(
    cluster: &Cluster,
    planned: PlannedMembership,
    recorder: &Recorder,
    phase: &Mutex<String>,
) -> Result<Decommissioned> {
    let node = planned.decommission;
    set_phase(phase, &format!("decommissioning node {node}"));
    let api = Api::new(API_TIMEOUT);
    let others: Vec<SocketAddr> = cluster
        .admin_addrs()
        .into_iter()
        .filter(|(id, _)| *id != node)
        .map(|(_, addr)| addr)
        .collect();
    let asked = Instant::now();
    let mut last = String::from("no other node to ask");
    let mut accepted = false;
    while !accepted && asked.elapsed() < API_TIMEOUT * 4 {
        for addr in &others {
            match api.decommission(*addr, node) {
                Ok(()) => {
                    accepted = true;
                    break;
                }
                Err(error) => last = format!("{error:#}"),
            }
        }
        if !accepted {
            std::thread::sleep(POLL_INTERVAL);
        }
    }
    if !accepted {
        bail!("no node accepted the decommission of node {node}: {last}");
    }
    eprintln!("decommissioning node {node}: accepted; waiting for it to stop by itself");
    let deadline = asked + DECOMMISSION_WAIT;
    let status = loop {
        match cluster.process_state(node) {
            ChildState::Exited(status) => break status,
            ChildState::NotStarted => bail!("node {node} was not running"),
            ChildState::Running if Instant::now() > deadline => {
                bail!("node {node} still runs {DECOMMISSION_WAIT:?} after its decommission")
            }
            ChildState::Running => std::thread::sleep(POLL_INTERVAL),
        }
    };
    let exited_after = asked.elapsed();
    cluster.retire(node);
    recorder.set_nodes(cluster.admin_addrs().into_values().collect());
    eprintln!("node {node} stopped after {exited_after:.1?}: {status}");
    set_phase(phase, "load");
    if !status.success() {
        bail!("node {node} stopped after its decommission with {status}");
    }
    Ok(Decommissioned {
        node,
        exited_after,
        exit: status.to_string(),
    })
}

/// The report row: the node joined and held replicas, the other left and exited 0, and in the
/// final `views` it is decommissioned and holds no replica (group 0 included).
pub fn check(
    planned: Option<PlannedMembership>,
    event: &MembershipEvent,
    views: &[ClusterView],
) -> CheckResult {
    const NAME: &str = "add/remove node";
    let Some(planned) = planned else {
        return CheckResult::skip(
            NAME,
            "skipped: no membership phase (--no-faults, --no-membership, or --nodes at the maximum)",
        );
    };
    let mut detail = String::new();
    let mut failed = event.error.clone();
    match &event.joined {
        Some(joined) => {
            let _ = write!(
                detail,
                "node {} joined (ready in {} ms, {} data replicas after {} ms)",
                joined.node,
                joined.ready_after.as_millis(),
                joined.replicas,
                joined.replicas_after.as_millis()
            );
        }
        None => detail.push_str("no node joined"),
    }
    match &event.decommissioned {
        Some(gone) => {
            let _ = write!(
                detail,
                "; node {} decommissioned, stopped by itself in {} ms ({})",
                gone.node,
                gone.exited_after.as_millis(),
                gone.exit
            );
            if let Some(leftover) = views
                .iter()
                .find_map(|view| leftover(view, planned.decommission))
            {
                failed.get_or_insert(leftover);
            }
        }
        None => {
            let _ = write!(detail, "; node {} not decommissioned", planned.decommission);
        }
    }
    match failed {
        Some(why) => CheckResult::fail(NAME, format!("{detail}\n{why}")),
        None if event.joined.is_none() || event.decommissioned.is_none() => {
            CheckResult::fail(NAME, detail)
        }
        None => CheckResult::pass(NAME, detail),
    }
}

/// Data groups (not group 0) in which `node` votes.
fn data_replicas(view: &ClusterView, node: u64) -> usize {
    view.groups
        .iter()
        .filter(|group| group.id != 0 && group.voters.contains(&node))
        .count()
}

/// What `view` still says of decommissioned `node`, if anything is wrong.
fn leftover(view: &ClusterView, node: u64) -> Option<String> {
    let seen = view.node_id;
    match view.nodes.iter().find(|listed| listed.id == node) {
        Some(listed) if listed.state != "decommissioned" => {
            return Some(format!(
                "node {seen} lists node {node} as {}, not decommissioned",
                listed.state
            ));
        }
        _ => {}
    }
    view.groups
        .iter()
        .find(|group| group.voters.contains(&node) || group.learners.contains(&node))
        .map(|group| format!("node {seen} still lists node {node} in group {}", group.id))
}

fn set_phase(phase: &Mutex<String>, text: &str) {
    *phase
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = text.to_string();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GroupView, NodeView};
    use crate::report::Status;

    fn view(voters_of_1: Vec<u64>, state_of_2: &str) -> ClusterView {
        let group = |id: u32, voters: Vec<u64>, learners: Vec<u64>| GroupView {
            id,
            voters,
            learners,
            leader: Some(1),
            term: Some(1),
            commit_index: Some(1),
            applied_index: Some(1),
            vshard_count: 0,
            state_hash: None,
        };
        let node = |id: u64, state: &str| NodeView {
            id,
            addr: format!("127.0.0.1:70{id:02}"),
            admin_addr: format!("127.0.0.1:80{id:02}"),
            state: state.to_string(),
        };
        ClusterView {
            cluster_id: "c".to_string(),
            node_id: 1,
            routing_version: 9,
            nodes: vec![node(1, "active"), node(2, state_of_2), node(4, "active")],
            groups: vec![
                group(0, vec![1, 4, 3], vec![]),
                group(1, voters_of_1, vec![]),
            ],
        }
    }

    #[test]
    fn the_plan_adds_the_next_id_and_removes_a_launched_node() {
        for seed in 0..50 {
            let planned = plan(seed, 3).unwrap();
            assert_eq!(planned.join, 4);
            assert!((1..=3).contains(&planned.decommission), "seed {seed}");
            assert_eq!(plan(seed, 3), Some(planned));
        }
        let leaving: std::collections::BTreeSet<u64> = (0..50)
            .map(|seed| plan(seed, 3).unwrap().decommission)
            .collect();
        assert_eq!(leaving.len(), 3, "every launched node is drawn sometimes");
        assert_eq!(plan(1, crate::cli::NODES_MAX), None);
        assert_eq!(plan(1, 1).unwrap().decommission, 1);
    }

    #[test]
    fn replicas_count_only_data_group_votes() {
        let view = view(vec![1, 4, 3], "decommissioned");
        assert_eq!(data_replicas(&view, 4), 1);
        assert_eq!(data_replicas(&view, 2), 0);
    }

    #[test]
    fn the_check_wants_a_join_a_clean_exit_and_no_leftover() {
        let planned = Some(PlannedMembership {
            join: 4,
            decommission: 2,
        });
        let done = MembershipEvent {
            joined: Some(Joined {
                node: 4,
                ready_after: Duration::from_millis(900),
                replicas_after: Duration::from_millis(4200),
                replicas: 3,
            }),
            decommissioned: Some(Decommissioned {
                node: 2,
                exited_after: Duration::from_millis(6100),
                exit: "exit status: 0".to_string(),
            }),
            error: None,
        };
        let clean = check(planned, &done, &[view(vec![1, 4, 3], "decommissioned")]);
        assert_eq!(clean.status, Status::Pass, "{}", clean.detail);
        assert!(clean.detail.contains("node 4 joined"), "{}", clean.detail);
        assert!(
            clean.detail.contains("node 2 decommissioned"),
            "{}",
            clean.detail
        );

        let still_voting = check(planned, &done, &[view(vec![1, 2, 4], "decommissioned")]);
        assert_eq!(still_voting.status, Status::Fail);
        assert!(
            still_voting.detail.contains("in group 1"),
            "{}",
            still_voting.detail
        );
        let still_active = check(planned, &done, &[view(vec![1, 4, 3], "draining")]);
        assert_eq!(still_active.status, Status::Fail);

        let stuck = MembershipEvent {
            decommissioned: None,
            error: Some("node 2 still runs".to_string()),
            ..done.clone()
        };
        let failed = check(planned, &stuck, &[]);
        assert_eq!(failed.status, Status::Fail);
        assert!(failed.detail.contains("still runs"), "{}", failed.detail);
        assert_eq!(check(None, &stuck, &[]).status, Status::Skip);
    }
}
