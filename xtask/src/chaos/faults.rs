//! Carrying out a round's faults against the live cluster and its namespace network, and
//! undoing them: iptables DROP rules (partitions, random loss) in the nodes' own chain, token
//! bucket qdiscs (slow links), SIGSTOP/SIGCONT (pauses), SIGKILL and restart (kills). Leaders
//! are looked up when the round starts. [`heal_everything`] puts the whole cluster back,
//! whatever was left on.

use super::network::{self, CHAIN, HOST_ADDR, NODE_LINK, Network};
use super::plan::{Fault, Split, Target};
use crate::cluster::Cluster;
use crate::nemesis;
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long a round looks for the leader it targets before it leaves that fault out.
pub const TARGET_WAIT: Duration = Duration::from_secs(5);
/// Burst and queueing bound of a slow link's token bucket (the burst holds a full packet).
const SLOW_BURST: &str = "32kbit";
const SLOW_LATENCY: &str = "400ms";
const POLL_INTERVAL: Duration = Duration::from_millis(100);

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
    Continue { node: u64, pid: u32 },
    Restart(u64),
}

/// Switches `fault` on. `Ok(None)`: left out, with the reason printed (its target could not
/// be found or is not running).
pub fn apply(cluster: &Cluster, fault: &Fault) -> Result<Option<Applied>> {
    let nodes = cluster.node_ids();
    match fault {
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
            let Some(node) = resolve_target(cluster, *target) else {
                return Ok(None);
            };
            if !cluster.kill(node) {
                eprintln!("  kill of node {node} left out: it is not running");
                return Ok(None);
            }
            Ok(Some(Applied {
                description: format!("kill -9 node {node} ({target})"),
                undo: Undo::Restart(node),
            }))
        }
    }
}

/// Switches `applied` off.
pub fn undo(cluster: &Cluster, applied: &Applied) -> Result<()> {
    match &applied.undo {
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

/// Removes every rule and qdisc, continues every node and starts every node that is not
/// running. Returns the nodes it found not running (after the rounds restarted every node they
/// killed, these exited by themselves), or an error naming what it could not do.
pub fn heal_everything(cluster: &Cluster) -> Result<Vec<u64>> {
    let mut restarted = Vec::new();
    for node in cluster.node_ids() {
        network::iptables(node, &["-F", CHAIN])?;
        // Fails when no qdisc of ours is there, the usual case.
        if network::tc(node, &["qdisc", "del", "dev", NODE_LINK, "root"]).is_ok() {
            eprintln!("  healed: slow link of node {node} removed");
        }
        match cluster.pid(node).filter(|_| cluster.is_running(node)) {
            Some(pid) => signal("-CONT", pid)?,
            None => {
                nemesis::restart(cluster, node)?;
                eprintln!("  healed: node {node} was not running, restarted");
                restarted.push(node);
            }
        }
    }
    Ok(restarted)
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
