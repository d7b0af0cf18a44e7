//! The private network of `chaos`: one Linux network namespace per node, all linked by veth
//! pairs to a bridge in a hub namespace of their own, and one veth from the root namespace to
//! that bridge for the client workload. Addresses come from 10.231.0.0/24, used only on these
//! links; nothing else of the host is touched. Every name starts with a project prefix, so a
//! crashed earlier run's leftovers (namespaces, their processes, the root link) are found and
//! removed before a run and after it, also on Ctrl-C. The names are machine-wide, so a run
//! holds a lock file for its whole life: a second run at the same time is refused instead of
//! tearing down the first one's network.

use crate::cluster::NodeHost;
use crate::cluster::ports::NodePorts;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

/// Every namespace of a run starts with this.
pub const NAMESPACE_PREFIX: &str = "nodedb-chaos-";
/// The namespace that holds the bridge.
pub const HUB_NAMESPACE: &str = "nodedb-chaos-hub";
/// The one interface in the root namespace (its peer sits on the bridge).
pub const HOST_LINK: &str = "ndbchaos0";
/// Each node's interface inside its namespace.
pub const NODE_LINK: &str = "chaos0";
/// The iptables chain, in every node namespace, that holds the fault rules.
pub const CHAIN: &str = "NODEDB-CHAOS";
/// The root namespace's address on the bridge; client traffic comes from it.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 254);
/// Every node listens on its own address, so the ports are fixed.
pub const QUIC_PORT: u16 = 9400;
pub const ADMIN_PORT: u16 = 9401;
/// The lock a run holds (released by the kernel however the process ends).
pub const LOCK_PATH: &str = "/run/nodedb-chaos.lock";
/// Largest node id an address can be made for (the last byte, below [`HOST_ADDR`]).
pub const NODE_ID_MAX: u64 = 200;
const PREFIX_LENGTH: u8 = 24;
const BRIDGE: &str = "br0";
const HUB_HOST_LINK: &str = "host";

/// The namespaces and links of one run; removed when dropped.
#[derive(Debug)]
pub struct Network {
    nodes: Vec<u64>,
    _lock: File,
}

impl Network {
    /// Removes leftovers of earlier runs, then builds the network for `nodes`.
    pub fn create(nodes: &[u64]) -> Result<Network> {
        if let Some(node) = nodes
            .iter()
            .find(|node| **node == 0 || **node > NODE_ID_MAX)
        {
            bail!("node id {node} has no address: ids go from 1 to {NODE_ID_MAX}");
        }
        let lock = lock_run()?;
        let removed = remove_leftovers();
        if !removed.is_empty() {
            eprintln!(
                "removed leftovers of an earlier run: {}",
                removed.join(", ")
            );
        }
        // From here on, a failure half-way leaves pieces that the drop removes.
        let network = Network {
            nodes: nodes.to_vec(),
            _lock: lock,
        };
        network.build().context("building the namespace network")?;
        Ok(network)
    }

    /// The namespace of node `node`.
    pub fn namespace(node: u64) -> String {
        format!("{NAMESPACE_PREFIX}n{node}")
    }

    /// The address of node `node` on the bridge.
    pub fn address(node: u64) -> Ipv4Addr {
        let last = u8::try_from(node).expect("node ids are checked against NODE_ID_MAX");
        Ipv4Addr::new(10, 231, 0, last)
    }

    /// Where each node listens and how it is started: inside its namespace.
    pub fn hosts(&self) -> BTreeMap<u64, NodeHost> {
        hosts(&self.nodes)
    }

    fn build(&self) -> Result<()> {
        run("ip", &["netns", "add", HUB_NAMESPACE])?;
        ip_in(HUB_NAMESPACE, &["link", "set", "lo", "up"])?;
        ip_in(HUB_NAMESPACE, &["link", "add", BRIDGE, "type", "bridge"])?;
        ip_in(HUB_NAMESPACE, &["link", "set", BRIDGE, "up"])?;
        for node in &self.nodes {
            let namespace = Network::namespace(*node);
            let hub_end = format!("n{node}");
            run("ip", &["netns", "add", &namespace])?;
            ip_in(&namespace, &["link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "link",
                    "add",
                    NODE_LINK,
                    "netns",
                    &namespace,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &hub_end,
                    "netns",
                    HUB_NAMESPACE,
                ],
            )?;
            ip_in(
                HUB_NAMESPACE,
                &["link", "set", &hub_end, "master", BRIDGE, "up"],
            )?;
            let address = format!("{}/{PREFIX_LENGTH}", Network::address(*node));
            ip_in(&namespace, &["addr", "add", &address, "dev", NODE_LINK])?;
            ip_in(&namespace, &["link", "set", NODE_LINK, "up"])?;
            iptables(*node, &["-N", CHAIN])?;
            iptables(*node, &["-A", "INPUT", "-j", CHAIN])?;
            iptables(*node, &["-A", "OUTPUT", "-j", CHAIN])?;
        }
        run(
            "ip",
            &[
                "link",
                "add",
                HOST_LINK,
                "type",
                "veth",
                "peer",
                "name",
                HUB_HOST_LINK,
                "netns",
                HUB_NAMESPACE,
            ],
        )?;
        ip_in(
            HUB_NAMESPACE,
            &["link", "set", HUB_HOST_LINK, "master", BRIDGE, "up"],
        )?;
        let host_address = format!("{HOST_ADDR}/{PREFIX_LENGTH}");
        run("ip", &["addr", "add", &host_address, "dev", HOST_LINK])?;
        run("ip", &["link", "set", HOST_LINK, "up"])?;
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let removed = remove_leftovers();
        eprintln!("network removed: {}", removed.join(", "));
    }
}

/// Takes the machine-wide run lock, or says who holds it.
fn lock_run() -> Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(LOCK_PATH)
        .with_context(|| format!("opening {LOCK_PATH}"))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            writeln!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(LOCK_PATH).unwrap_or_default();
            bail!(
                "another chaos run (pid {}) holds {LOCK_PATH}: its namespaces are in use; wait \
                 for it or stop it",
                holder.trim()
            )
        }
        Err(TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("locking {LOCK_PATH}"))
        }
    }
}

/// Where each of `nodes` listens and how it is started: inside its namespace.
pub fn hosts(nodes: &[u64]) -> BTreeMap<u64, NodeHost> {
    nodes
        .iter()
        .map(|node| {
            let ip = Network::address(*node);
            let host = NodeHost {
                ports: NodePorts {
                    listen_addr: SocketAddr::from((ip, QUIC_PORT)),
                    admin_addr: SocketAddr::from((ip, ADMIN_PORT)),
                },
                wrapper: ["ip", "netns", "exec", &Network::namespace(*node)]
                    .map(str::to_string)
                    .to_vec(),
            };
            (*node, host)
        })
        .collect()
}

/// Removes every namespace of this project (killing the processes still in them) and the
/// root link; returns what it removed. Errors are reported, not returned: this runs on the
/// way out, where nothing better can be done.
pub fn remove_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    if run("ip", &["link", "show", HOST_LINK]).is_ok() {
        match run("ip", &["link", "del", HOST_LINK]) {
            Ok(_) => removed.push(format!("link {HOST_LINK}")),
            Err(error) => eprintln!("{error:#}"),
        }
    }
    let listing = match run("ip", &["netns", "list"]) {
        Ok(listing) => listing,
        Err(error) => {
            eprintln!("{error:#}");
            return removed;
        }
    };
    for namespace in project_namespaces(&listing) {
        let pids = run("ip", &["netns", "pids", &namespace]).unwrap_or_default();
        for pid in pids.split_whitespace() {
            if run("kill", &["-KILL", pid]).is_ok() {
                removed.push(format!("process {pid}"));
            }
        }
        match run("ip", &["netns", "del", &namespace]) {
            Ok(_) => removed.push(format!("namespace {namespace}")),
            Err(error) => eprintln!("{error:#}"),
        }
    }
    removed
}

/// Runs `iptables -w ARGS` inside node `node`'s namespace.
pub fn iptables(node: u64, args: &[&str]) -> Result<()> {
    let namespace = Network::namespace(node);
    let mut all = vec!["netns", "exec", &namespace, "iptables", "-w"];
    all.extend_from_slice(args);
    run("ip", &all).map(drop)
}

/// Runs `tc ARGS` inside node `node`'s namespace.
pub fn tc(node: u64, args: &[&str]) -> Result<String> {
    let namespace = Network::namespace(node);
    let mut all = vec!["-n", &namespace];
    all.extend_from_slice(args);
    run("tc", &all)
}

/// Runs `program ARGS`; its stdout, or an error with the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The project's namespaces in the output of `ip netns list` (`name` or `name (id: N)`).
pub fn project_namespaces(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(NAMESPACE_PREFIX))
        .map(str::to_string)
        .collect()
}

fn ip_in(namespace: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", namespace];
    all.extend_from_slice(args);
    run("ip", &all).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_project_namespaces_are_picked_up() {
        let listing = "nodedb-chaos-n2 (id: 3)\nother-ns\nnodedb-chaos-hub\n\ncni-1234 (id: 0)\n";
        assert_eq!(
            project_namespaces(listing),
            ["nodedb-chaos-n2", "nodedb-chaos-hub"]
        );
    }

    #[test]
    fn names_and_addresses_are_private_and_short() {
        assert_eq!(Network::namespace(3), "nodedb-chaos-n3");
        assert!(HUB_NAMESPACE.starts_with(NAMESPACE_PREFIX));
        assert_eq!(Network::address(4), Ipv4Addr::new(10, 231, 0, 4));
        assert!(Network::address(NODE_ID_MAX).is_private());
        assert!(Network::address(NODE_ID_MAX) < HOST_ADDR);
        // Interface names are limited to 15 bytes by the kernel.
        for name in [HOST_LINK, NODE_LINK, BRIDGE, HUB_HOST_LINK] {
            assert!(name.len() <= 15, "{name}");
        }
    }

    #[test]
    fn hosts_run_each_node_inside_its_namespace() {
        let hosts = hosts(&[1, 2]);
        assert_eq!(
            hosts[&2].ports.admin_addr,
            "10.231.0.2:9401".parse().unwrap()
        );
        assert_eq!(
            hosts[&1].ports.listen_addr,
            "10.231.0.1:9400".parse().unwrap()
        );
        assert_eq!(
            hosts[&2].wrapper,
            ["ip", "netns", "exec", "nodedb-chaos-n2"]
        );
    }
}
