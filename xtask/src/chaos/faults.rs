//! Carrying out a round's faults against the live cluster and its namespace network, and
//! undoing them: iptables DROP rules (partitions, random loss) in the nodes' own chain, token
//! bucket qdiscs (slow links), SIGSTOP/SIGCONT (pauses), SIGKILL and restart (kills), a
//! restart with the node's UDP fault layer on and one with it off again (delays), starting the
//! spare node (join) and asking for a decommission. Leaders are looked up when the round
//! starts. [`heal_everything`] puts the whole cluster back, whatever was left on, and
//! [`settle_churn`] waits for the joins and decommissions to finish.

use super::network::{self, CHAIN, HOST_ADDR, NODE_LINK, Network};
use super::plan::{Fault, Split, Target};
use crate::api::Api;
use crate::cluster::config::UdpFaults;
use crate::cluster::{Cluster, NodeHost};
use crate::nemesis;
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a round looks for the leader it targets before it leaves that fault out.
pub const TARGET_WAIT: Duration = Duration::from_secs(5);
/// Burst and queueing bound of a slow link's token bucket (the burst holds a full packet).
const SLOW_BURST: &str = "32kbit";
const SLOW_LATENCY: &str = "400ms";
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a node gets to stop after SIGTERM before it is killed.
pub const STOP_WAIT: Duration = Duration::from_secs(10);
/// How long a decommission request is retried (through every member in turn) during faults.
pub const DECOMMISSION_REQUEST_WAIT: Duration = Duration::from_secs(20);
/// How long, after the stage, a joined node gets to be Active and a decommissioned node to be
/// Decommissioned.
pub const CHURN_WAIT: Duration = Duration::from_secs(90);
/// How often the churn's progress is looked at.
const CHURN_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long a Decommissioned node gets to stop by itself.
pub const SELF_STOP_WAIT: Duration = Duration::from_secs(15);

/// What the faults of a run know beyond the cluster: where the spare node runs, which nodes
/// have their UDP fault layer on, which joined and which are leaving.
#[derive(Debug, Default)]
pub struct RunState {
    hosts: BTreeMap<u64, NodeHost>,
    inner: Mutex<Membership>,
}

#[derive(Debug, Default)]
struct Membership {
    udp_faulty: BTreeSet<u64>,
    /// Started to join, and when.
    joining: BTreeMap<u64, Instant>,
    /// Asked to decommission, and when.
    leaving: BTreeMap<u64, Instant>,
    /// How long after its start or request a node was first seen Active or Decommissioned.
    reached: BTreeMap<u64, Duration>,
    /// The state each joining or leaving node was last seen in.
    last_seen: BTreeMap<u64, String>,
}

impl RunState {
    /// `hosts` holds every node the run may start, the spare included.
    pub fn new(hosts: BTreeMap<u64, NodeHost>) -> RunState {
        RunState {
            hosts,
            inner: Mutex::default(),
        }
    }

    /// Nodes asked to decommission and not retired yet: they may stop by themselves.
    pub fn leaving(&self) -> BTreeSet<u64> {
        self.lock().leaving.keys().copied().collect()
    }

    fn lock(&self) -> MutexGuard<'_, Membership> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A fault that is on, and how to switch it off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// What was done, with the nodes resolved, e.g. `isolate node 3 (the metadata leader)`.
    pub description: String,
    undo: Undo,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Undo {
    FlushRules(Vec<u64>),
    RemoveQdisc(Vec<u64>),
    Continue {
        node: u64,
        pid: u32,
    },
    Restart(u64),
    /// Restart these nodes with their UDP fault layer off.
    UdpFaultsOff(Vec<u64>),
    /// Churn is not undone: the stage waits for it to finish ([`settle_churn`]).
    Nothing,
}

/// Switches `fault` on. `Ok(None)`: left out, with the reason printed (its target could not
/// be found or is not running).
pub fn apply(cluster: &Cluster, state: &RunState, fault: &Fault) -> Result<Option<Applied>> {
    let nodes = cluster.node_ids();
    match fault {
        Fault::Delay {
            nodes: delayed,
            delay_ms_max,
            duplicate_percent,
            seed,
        } => {
            let delayed: Vec<u64> = delayed
                .iter()
                .copied()
                .filter(|node| cluster.is_running(*node))
                .collect();
            if delayed.is_empty() {
                eprintln!("  {fault}: none of its nodes is running, left out");
                return Ok(None);
            }
            for node in &delayed {
                let faults = UdpFaults {
                    delay_ms_max: *delay_ms_max,
                    duplicate_probability: f64::from(*duplicate_percent) / 100.0,
                    seed: seed ^ node,
                };
                state.lock().udp_faulty.insert(*node);
                cluster.set_udp_faults(*node, Some(faults))?;
                restart_gracefully(cluster, *node)?;
            }
            Ok(Some(Applied {
                description: format!(
                    "restarted nodes {delayed:?} with UDP faults: delay 0-{delay_ms_max} ms, \
                     {duplicate_percent}% sent twice"
                ),
                undo: Undo::UdpFaultsOff(delayed),
            }))
        }
        Fault::Join(node) => {
            let host = state
                .hosts
                .get(node)
                .with_context(|| format!("node {node} has no host"))?;
            if !nodes.contains(node) {
                cluster.add_node(*node, host)?;
            }
            nemesis::restart(cluster, *node)?;
            state.lock().joining.insert(*node, Instant::now());
            Ok(Some(Applied {
                description: format!("node {node} started to join"),
                undo: Undo::Nothing,
            }))
        }
        Fault::Decommission(node) => {
            if !nodes.contains(node) {
                eprintln!("  decommission of node {node} left out: not in the cluster");
                return Ok(None);
            }
            let asked = Instant::now();
            request_decommission(cluster, *node)?;
            state.lock().leaving.insert(*node, asked);
            Ok(Some(Applied {
                description: format!(
                    "node {node} asked to decommission (accepted after {:.1?})",
                    asked.elapsed()
                ),
                undo: Undo::Nothing,
            }))
        }
        Fault::Partition(split) => {
            let Some((left, right, named)) = resolve_split(cluster, split, &nodes) else {
                return Ok(None);
            };
            for (from, to) in blocked_pairs(&left, &right) {
                block(from, to)?;
                block(to, from)?;
            }
            let description = match split {
                Split::Isolate(target) => format!("isolate node {} ({target})", left[0]),
                _ => named,
            };
            Ok(Some(Applied {
                description,
                undo: Undo::FlushRules(nodes),
            }))
        }
        Fault::Lossy {
            nodes: lossy,
            percent,
        } => {
            let probability = format!("{:.2}", f64::from(*percent) / 100.0);
            for node in lossy {
                lose(*node, &probability)?;
            }
            Ok(Some(Applied {
                description: fault.to_string(),
                undo: Undo::FlushRules(lossy.clone()),
            }))
        }
        Fault::Slow {
            nodes: slow,
            rate_kbit,
        } => {
            for node in slow {
                let rate = format!("{rate_kbit}kbit");
                network::tc(
                    *node,
                    &[
                        "qdisc",
                        "replace",
                        "dev",
                        NODE_LINK,
                        "root",
                        "tbf",
                        "rate",
                        &rate,
                        "burst",
                        SLOW_BURST,
                        "latency",
                        SLOW_LATENCY,
                    ],
                )?;
            }
            Ok(Some(Applied {
                description: fault.to_string(),
                undo: Undo::RemoveQdisc(slow.clone()),
            }))
        }
        Fault::Pause(target) => {
            let Some(node) = resolve_target(cluster, *target) else {
                return Ok(None);
            };
            let Some(pid) = cluster.pid(node).filter(|_| cluster.is_running(node)) else {
                eprintln!("  pause of node {node} left out: it is not running");
                return Ok(None);
            };
            signal("-STOP", pid)?;
            Ok(Some(Applied {
                description: format!("pause node {node} ({target})"),
                undo: Undo::Continue { node, pid },
            }))
        }
        Fault::Kill(target) => {
            let Some(node) = kill_target(cluster, *target) else {
                return Ok(None);
            };
            Ok(Some(Applied {
                description: format!("kill -9 node {node} ({target})"),
                undo: Undo::Restart(node),
            }))
        }
        Fault::Crash(target) => {
            let Some(node) = kill_target(cluster, *target) else {
                return Ok(None);
            };
            nemesis::restart(cluster, node)?;
            Ok(Some(Applied {
                description: format!("kill -9 node {node} ({target}) and restart it at once"),
                undo: Undo::Nothing,
            }))
        }
    }
}

/// SIGKILLs the node `target` names; `None` (said on stderr) when it names none or that node
/// is not running.
fn kill_target(cluster: &Cluster, target: Target) -> Option<u64> {
    let node = resolve_target(cluster, target)?;
    if !cluster.kill(node) {
        eprintln!("  kill of node {node} left out: it is not running");
        return None;
    }
    Some(node)
}

/// Switches `applied` off.
pub fn undo(cluster: &Cluster, state: &RunState, applied: &Applied) -> Result<()> {
    match &applied.undo {
        Undo::Nothing => Ok(()),
        Undo::UdpFaultsOff(nodes) => nodes
            .iter()
            .try_for_each(|node| udp_faults_off(cluster, state, *node)),
        Undo::FlushRules(nodes) => nodes
            .iter()
            .try_for_each(|node| network::iptables(*node, &["-F", CHAIN])),
        Undo::RemoveQdisc(nodes) => nodes.iter().try_for_each(|node| {
            network::tc(*node, &["qdisc", "del", "dev", NODE_LINK, "root"]).map(drop)
        }),
        // Killed while paused (a kill in the same round): nothing left to continue.
        Undo::Continue { node, pid } if cluster.pid(*node) != Some(*pid) => Ok(()),
        Undo::Continue { pid, .. } => signal("-CONT", *pid),
        Undo::Restart(node) => nemesis::restart(cluster, *node),
    }
}

/// Removes every rule and qdisc, continues every node, restarts any node whose UDP fault
/// layer is still on without it, and starts every node that is not running but a node that
/// is leaving. Returns the nodes it found not running (after the rounds restarted every node
/// they killed, these exited by themselves), or an error naming what it could not do.
pub fn heal_everything(cluster: &Cluster, state: &RunState) -> Result<Vec<u64>> {
    let mut restarted = Vec::new();
    let leaving = state.leaving();
    // First, so that a node found not running below starts from its usual config.
    let faulty: Vec<u64> = state.lock().udp_faulty.iter().copied().collect();
    for node in faulty {
        udp_faults_off(cluster, state, node)?;
        eprintln!("  healed: node {node} restarted without its UDP fault layer");
    }
    for node in cluster.node_ids() {
        network::iptables(node, &["-F", CHAIN])?;
        // Fails when no qdisc of ours is there, the usual case.
        if network::tc(node, &["qdisc", "del", "dev", NODE_LINK, "root"]).is_ok() {
            eprintln!("  healed: slow link of node {node} removed");
        }
        match cluster.pid(node).filter(|_| cluster.is_running(node)) {
            Some(pid) => signal("-CONT", pid)?,
            // It stops itself once decommissioned; [`settle_churn`] checks that it did.
            None if leaving.contains(&node) => {}
            None => {
                nemesis::restart(cluster, node)?;
                eprintln!("  healed: node {node} was not running, restarted");
                restarted.push(node);
            }
        }
    }
    Ok(restarted)
}

/// How the churn of a stage ended, once [`settle_churn`] waited for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChurnOutcome {
    /// What finished, e.g. `node 6 active 4.2 s after its start`.
    pub done: Vec<String>,
    /// What did not, with the reason.
    pub failed: Vec<String>,
}

/// While the stage runs, notes when each joining node is first seen Active and each leaving
/// node Decommissioned, so that the times reported are not those of the end of the stage.
pub fn watch_churn(cluster: &Cluster, state: &RunState, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        note_churn(cluster, state);
        std::thread::sleep(CHURN_POLL_INTERVAL);
    }
}

/// Waits (bounded) until every node that started to join is Active and every node asked to
/// decommission is Decommissioned and has stopped by itself; retires the latter from the
/// cluster. `None` when the stage had no churn.
pub fn settle_churn(cluster: &Cluster, state: &RunState) -> Option<ChurnOutcome> {
    let deadline = Instant::now() + CHURN_WAIT;
    while note_churn(cluster, state) > 0 && Instant::now() < deadline {
        std::thread::sleep(CHURN_POLL_INTERVAL);
    }
    let (joining, leaving, reached, last_seen) = {
        let mut inner = state.lock();
        (
            std::mem::take(&mut inner.joining),
            inner.leaving.clone(),
            std::mem::take(&mut inner.reached),
            std::mem::take(&mut inner.last_seen),
        )
    };
    if joining.is_empty() && leaving.is_empty() {
        return None;
    }
    let mut outcome = ChurnOutcome {
        done: Vec::new(),
        failed: Vec::new(),
    };
    let wanted = joining.keys().map(|node| (*node, "active", "start")).chain(
        leaving
            .keys()
            .map(|node| (*node, "decommissioned", "request")),
    );
    for (node, state, since) in wanted {
        match reached.get(&node) {
            Some(after) => outcome
                .done
                .push(format!("node {node} {state} {after:.1?} after its {since}")),
            None => {
                let seen = last_seen.get(&node).map_or("unknown", String::as_str);
                outcome.failed.push(format!(
                    "node {node} not {state} within {CHURN_WAIT:?} after the stage (last seen \
                     {seen})"
                ));
            }
        }
    }
    for node in leaving.keys() {
        if reached.contains_key(node) {
            let stop_deadline = Instant::now() + SELF_STOP_WAIT;
            while cluster.is_running(*node) && Instant::now() < stop_deadline {
                std::thread::sleep(POLL_INTERVAL);
            }
            match cluster.is_running(*node) {
                true => outcome.failed.push(format!(
                    "node {node} still running {SELF_STOP_WAIT:?} after it was decommissioned"
                )),
                false => outcome.done.push(format!("node {node} stopped by itself")),
            }
        }
        cluster.retire(*node);
        state.lock().leaving.remove(node);
        eprintln!("  node {node} retired from the cluster");
    }
    Some(outcome)
}

/// Looks once at a member's view and notes the churn that reached its end state; returns how
/// many joins and decommissions have not yet.
fn note_churn(cluster: &Cluster, state: &RunState) -> usize {
    let (pending, leaving) = {
        let inner = state.lock();
        let pending: Vec<(u64, &'static str, Instant)> = inner
            .joining
            .iter()
            .map(|(node, since)| (*node, "active", *since))
            .chain(
                inner
                    .leaving
                    .iter()
                    .map(|(node, since)| (*node, "decommissioned", *since)),
            )
            .filter(|(node, _, _)| !inner.reached.contains_key(node))
            .collect();
        (
            pending,
            inner.leaving.keys().copied().collect::<BTreeSet<u64>>(),
        )
    };
    if pending.is_empty() {
        return 0;
    }
    let Some(view) = view_from_member(cluster, &leaving) else {
        return pending.len();
    };
    let mut inner = state.lock();
    let mut left = 0;
    for (node, wanted, since) in pending {
        let seen = view
            .nodes
            .iter()
            .find(|seen| seen.id == node)
            .map_or_else(|| "absent".to_string(), |seen| seen.state.clone());
        if seen == wanted {
            inner.reached.insert(node, since.elapsed());
        } else {
            left += 1;
        }
        inner.last_seen.insert(node, seen);
    }
    left
}

/// `/v1/cluster` from a running node that is not leaving.
fn view_from_member(cluster: &Cluster, leaving: &BTreeSet<u64>) -> Option<crate::api::ClusterView> {
    cluster
        .node_ids()
        .into_iter()
        .filter(|node| !leaving.contains(node) && cluster.is_running(*node))
        .find_map(|node| cluster.view(node).ok())
}

/// Asks every running member in turn to decommission `node` until one accepts, for at most
/// [`DECOMMISSION_REQUEST_WAIT`].
fn request_decommission(cluster: &Cluster, node: u64) -> Result<()> {
    let api = Api::new(Duration::from_secs(5));
    let deadline = Instant::now() + DECOMMISSION_REQUEST_WAIT;
    let mut last_error = String::from("no running member to ask");
    while Instant::now() < deadline {
        let members: Vec<_> = cluster
            .admin_addrs()
            .into_iter()
            .filter(|(member, _)| *member != node && cluster.is_running(*member))
            .collect();
        for (_, addr) in members {
            match api.decommission(addr, node) {
                Ok(()) => return Ok(()),
                Err(error) => last_error = format!("{error:#}"),
            }
        }
        std::thread::sleep(POLL_INTERVAL * 5);
    }
    bail!(
        "no member accepted to decommission node {node} within {DECOMMISSION_REQUEST_WAIT:?}: {last_error}"
    )
}

/// Restarts `node` with its UDP fault layer off.
fn udp_faults_off(cluster: &Cluster, state: &RunState, node: u64) -> Result<()> {
    cluster.set_udp_faults(node, None)?;
    state.lock().udp_faulty.remove(&node);
    match cluster.is_running(node) {
        true => restart_gracefully(cluster, node),
        // Killed in the same round: it starts from the rewritten config when restarted.
        false => Ok(()),
    }
}

/// SIGTERM (SIGKILL after [`STOP_WAIT`]), start from the node's config, wait until ready: a
/// config change, one node at a time.
fn restart_gracefully(cluster: &Cluster, node: u64) -> Result<()> {
    if let Some(pid) = cluster.pid(node).filter(|_| cluster.is_running(node)) {
        // A paused node only stops once continued.
        signal("-CONT", pid)?;
        signal("-TERM", pid)?;
        let deadline = Instant::now() + STOP_WAIT;
        while cluster.is_running(node) && Instant::now() < deadline {
            std::thread::sleep(POLL_INTERVAL);
        }
        if cluster.is_running(node) {
            eprintln!("  node {node} still running {STOP_WAIT:?} after SIGTERM: killed");
        }
    }
    cluster.kill(node);
    nemesis::restart(cluster, node)?;
    cluster
        .wait_ready(&[node], cluster.ready_timeout())
        .map_err(|not_ready| anyhow::anyhow!("{not_ready}"))
}

/// Every (left, right) pair, each once.
pub fn blocked_pairs(left: &[u64], right: &[u64]) -> Vec<(u64, u64)> {
    left.iter()
        .flat_map(|from| right.iter().map(move |to| (*from, *to)))
        .filter(|(from, to)| from != to)
        .collect()
}

/// The two sides of `split` among `nodes` and a description; `None` when its target is not
/// found.
fn resolve_split(
    cluster: &Cluster,
    split: &Split,
    nodes: &[u64],
) -> Option<(Vec<u64>, Vec<u64>, String)> {
    let rest = |side: &[u64]| -> Vec<u64> {
        let side: BTreeSet<u64> = side.iter().copied().collect();
        nodes
            .iter()
            .copied()
            .filter(|node| !side.contains(node))
            .collect()
    };
    let fault = Fault::Partition(split.clone()).to_string();
    match split {
        Split::Halves { side } => Some((side.clone(), rest(side), fault)),
        Split::Bridge { left, right, .. } => Some((left.clone(), right.clone(), fault)),
        Split::Isolate(target) => {
            let node = resolve_target(cluster, *target)?;
            Some((vec![node], rest(&[node]), fault))
        }
    }
}

/// The node `target` names now; `None` (said why) when no leader is known in time.
fn resolve_target(cluster: &Cluster, target: Target) -> Option<u64> {
    let group = match target {
        Target::Node(node) => return Some(node),
        Target::MetadataLeader => 0,
        Target::DataLeader { group } => group,
    };
    let deadline = Instant::now() + TARGET_WAIT;
    while Instant::now() < deadline {
        let leader = cluster.view_from_any().and_then(|view| {
            view.groups
                .iter()
                .find(|candidate| candidate.id == group)
                .and_then(|candidate| candidate.leader)
        });
        if let Some(node) = leader.filter(|node| cluster.is_running(*node)) {
            return Some(node);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    eprintln!("  {target}: none known within {TARGET_WAIT:?}, fault left out");
    None
}

/// Node `node` drops everything from and to node `peer`.
fn block(node: u64, peer: u64) -> Result<()> {
    let peer_address = Network::address(peer).to_string();
    network::iptables(node, &["-A", CHAIN, "-s", &peer_address, "-j", "DROP"])?;
    network::iptables(node, &["-A", CHAIN, "-d", &peer_address, "-j", "DROP"])
}

/// Node `node` drops packets from and to its peers at random, but never the client's.
fn lose(node: u64, probability: &str) -> Result<()> {
    let host = HOST_ADDR.to_string();
    network::iptables(node, &["-A", CHAIN, "-s", &host, "-j", "RETURN"])?;
    network::iptables(node, &["-A", CHAIN, "-d", &host, "-j", "RETURN"])?;
    network::iptables(
        node,
        &[
            "-A",
            CHAIN,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            probability,
            "-j",
            "DROP",
        ],
    )
}

fn signal(signal: &str, pid: u32) -> Result<()> {
    let pid_text = pid.to_string();
    network::run("kill", &[signal, &pid_text])
        .map(drop)
        .with_context(|| format!("sending {signal} to process {pid}"))
}

/// Fails unless every program the faults need is installed.
pub fn check_tools() -> Result<()> {
    let missing: Vec<&str> = ["ip", "iptables", "tc"]
        .into_iter()
        .filter(|program| !on_path(program))
        .collect();
    if !missing.is_empty() {
        bail!(
            "chaos needs {} (Debian: apt-get install -y --no-install-recommends iproute2 \
             iptables)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_across_the_cut_is_blocked_once() {
        assert_eq!(
            blocked_pairs(&[1, 2], &[3, 4, 5]),
            [(1, 3), (1, 4), (1, 5), (2, 3), (2, 4), (2, 5)]
        );
        assert_eq!(blocked_pairs(&[3], &[1, 2, 4]), [(3, 1), (3, 2), (3, 4)]);
        assert!(blocked_pairs(&[], &[1, 2]).is_empty());
    }

    #[test]
    fn the_shell_finds_its_own_programs() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-program-nodedb"));
    }
}
