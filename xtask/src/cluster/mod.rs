//! A local cluster of real `nodedb-cluster` processes, on loopback or at addresses the caller
//! chooses (e.g. one network namespace per node): work directory, certs, one config per node,
//! start / SIGKILL / restart, readiness, and the last log lines of every node when something
//! goes wrong.

pub mod build;
pub mod config;
pub mod ports;
pub mod process;

use crate::api::{Api, ClusterView};
use anyhow::{Context, Result, bail};
use config::{ClusterShape, NodeLayout, RaftTimings};
use ports::NodePorts;
use process::{ChildState, ProcessGuard, Processes};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// How long every node gets by default to answer 200 on `/readyz` after a (re)start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Fresh-port launches tried when a node cannot bind its ports (another process took one).
pub const LAUNCH_ATTEMPTS_MAX: u32 = 3;
/// Log lines shown per node when something fails.
pub const LOG_TAIL_LINES: usize = 30;
/// Delay between two readiness polls.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Timeout of one admin request made by the launcher itself.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What to launch.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub binary: PathBuf,
    pub work_dir: PathBuf,
    pub nodes: u32,
    pub num_groups: u32,
    /// How long a node gets to become ready after a (re)start.
    pub ready_timeout: Duration,
    pub raft: RaftTimings,
    /// Log entries between snapshots; `None` leaves the node's default.
    pub snapshot_logs_since_last: Option<u64>,
}

/// Where the nodes of a cluster run.
#[derive(Clone, Debug, Default)]
pub enum Placement {
    /// Every node on loopback, on free ports the OS picks.
    #[default]
    Loopback,
    /// Every node at the addresses given for it, started through its command wrapper.
    Hosts(BTreeMap<u64, NodeHost>),
}

/// A node's own addresses and the command its start is wrapped in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHost {
    pub ports: NodePorts,
    /// Program and arguments put before the node binary, e.g. `ip netns exec NAME`; the
    /// wrapper must exec the binary so that the child's pid is the node's.
    pub wrapper: Vec<String>,
}

/// A running local cluster. Dropping it kills every node process.
#[derive(Debug)]
pub struct Cluster {
    binary: PathBuf,
    work_dir: PathBuf,
    shape: ClusterShape,
    /// The nodes of the cluster: those launched, those added since, minus those retired.
    nodes: RwLock<BTreeMap<u64, NodeLayout>>,
    wrappers: BTreeMap<u64, Vec<String>>,
    processes: Processes,
    api: Api,
    ready_timeout: Duration,
    _guard: ProcessGuard,
}

/// Why a node did not become ready.
#[derive(Clone, Debug)]
pub struct NotReady {
    pub node_id: u64,
    pub admin_addr: SocketAddr,
    pub exited: Option<String>,
    pub last_answer: String,
    pub waited: Duration,
    pub log_path: PathBuf,
    pub log_tail: String,
}

impl Cluster {
    /// Makes certs and configs under `spec.work_dir`, starts every node and waits until all
    /// are ready. A node that dies because its port was taken makes the whole launch start
    /// again with fresh ports, at most [`LAUNCH_ATTEMPTS_MAX`] times.
    pub fn launch(spec: &LaunchSpec, processes: &Processes) -> Result<Cluster> {
        Cluster::launch_placed(spec, processes, &Placement::Loopback)
    }

    /// [`Cluster::launch`] with the nodes where `placement` puts them.
    pub fn launch_placed(
        spec: &LaunchSpec,
        processes: &Processes,
        placement: &Placement,
    ) -> Result<Cluster> {
        let node_ids: Vec<u64> = (1..=u64::from(spec.nodes)).collect();
        let certs_dir = spec.work_dir.join("certs");
        build::make_certs(&spec.binary, &certs_dir, &node_ids)?;
        let mut attempt = 1;
        loop {
            let cluster = Cluster::configure(spec, processes, placement, &certs_dir, &node_ids)?;
            for node_id in &node_ids {
                cluster.start(*node_id)?;
            }
            match cluster.wait_ready(&node_ids, spec.ready_timeout) {
                Ok(()) => return Ok(cluster),
                Err(not_ready) if not_ready.is_bind_failure() && attempt < LAUNCH_ATTEMPTS_MAX => {
                    eprintln!("{not_ready}\nretrying the launch with fresh ports");
                    attempt += 1;
                }
                Err(not_ready) => {
                    let others = cluster.log_tails_except(not_ready.node_id, LOG_TAIL_LINES);
                    bail!("{not_ready}\n{others}")
                }
            }
        }
    }

    fn configure(
        spec: &LaunchSpec,
        processes: &Processes,
        placement: &Placement,
        certs_dir: &Path,
        node_ids: &[u64],
    ) -> Result<Cluster> {
        processes.kill_all();
        let (ports, wrappers) = match placement {
            Placement::Loopback => (ports::allocate(node_ids.len())?, BTreeMap::new()),
            Placement::Hosts(hosts) => {
                let mut ports = Vec::with_capacity(node_ids.len());
                for node_id in node_ids {
                    let host = hosts
                        .get(node_id)
                        .with_context(|| format!("no host given for node {node_id}"))?;
                    ports.push(host.ports);
                }
                let wrappers = hosts
                    .iter()
                    .map(|(node_id, host)| (*node_id, host.wrapper.clone()))
                    .collect();
                (ports, wrappers)
            }
        };
        let shape = ClusterShape {
            num_groups: spec.num_groups,
            replication_factor: spec.nodes.min(3),
            certs_dir: certs_dir.to_path_buf(),
            seeds: ports.iter().map(|pair| pair.listen_addr).collect(),
            raft: spec.raft,
            snapshot_logs_since_last: spec.snapshot_logs_since_last,
        };
        let mut nodes = BTreeMap::new();
        for (node_id, ports) in node_ids.iter().zip(ports) {
            let layout = NodeLayout {
                node_id: *node_id,
                ports,
                dir: spec.work_dir.join(format!("node-{node_id}")),
            };
            // A previous attempt's data was made with other ports: start clean.
            if layout.dir.exists() {
                std::fs::remove_dir_all(&layout.dir)
                    .with_context(|| format!("removing {}", layout.dir.display()))?;
            }
            config::write(&layout, &shape)?;
            nodes.insert(*node_id, layout);
        }
        Ok(Cluster {
            binary: spec.binary.clone(),
            work_dir: spec.work_dir.clone(),
            shape,
            nodes: RwLock::new(nodes),
            wrappers,
            processes: processes.clone(),
            api: Api::new(ADMIN_REQUEST_TIMEOUT),
            ready_timeout: spec.ready_timeout,
            _guard: processes.guard(),
        })
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// How long a node gets to become ready after a (re)start.
    pub fn ready_timeout(&self) -> Duration {
        self.ready_timeout
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes().keys().copied().collect()
    }

    /// Admin addresses of every node, by id.
    pub fn admin_addrs(&self) -> BTreeMap<u64, SocketAddr> {
        self.nodes()
            .iter()
            .map(|(id, node)| (*id, node.ports.admin_addr))
            .collect()
    }

    /// Makes node `node_id` a node of this cluster, not started yet: a certificate, and a config
    /// that joins through the launched nodes (`host` is where it runs; its wrapper must have
    /// been given at launch).
    pub fn add_node(&self, node_id: u64, host: &NodeHost) -> Result<()> {
        if self.nodes().contains_key(&node_id) {
            bail!("node {node_id} is already in the cluster");
        }
        if !self.wrappers.is_empty() && self.wrappers.get(&node_id) != Some(&host.wrapper) {
            bail!("node {node_id} was given no host at launch");
        }
        build::issue_cert(&self.binary, &self.shape.certs_dir, node_id)?;
        let layout = NodeLayout {
            node_id,
            ports: host.ports,
            dir: self.work_dir.join(format!("node-{node_id}")),
        };
        config::write(&layout, &self.shape)?;
        self.nodes_mut().insert(node_id, layout);
        Ok(())
    }

    /// Takes node `node_id` out of this cluster (e.g. once decommissioned): killed if it still
    /// runs, and no longer listed, started or checked.
    pub fn retire(&self, node_id: u64) {
        self.processes.kill(node_id);
        self.nodes_mut().remove(&node_id);
    }

    /// Rewrites node `node_id`'s config with the UDP fault layer on (`Some`) or off; the node
    /// reads it at its next start.
    pub fn set_udp_faults(&self, node_id: u64, faults: Option<config::UdpFaults>) -> Result<()> {
        let node = self.layout(node_id)?;
        config::write_with_faults(&node, &self.shape, faults).map(drop)
    }

    /// Starts node `node_id` from its config (a restart keeps its data dir and ports).
    pub fn start(&self, node_id: u64) -> Result<()> {
        let node = self.layout(node_id)?;
        let mut command = match self.wrappers.get(&node_id).map(Vec::as_slice) {
            Some([program, arguments @ ..]) => {
                let mut wrapped = Command::new(program);
                wrapped.args(arguments).arg(&self.binary);
                wrapped
            }
            _ => Command::new(&self.binary),
        };
        command
            .arg("start")
            .arg("--config")
            .arg(node.config_path())
            .current_dir(&node.dir);
        self.processes.spawn(node_id, command, &node.log_path())
    }

    /// SIGKILLs node `node_id`; false if it was not running.
    pub fn kill(&self, node_id: u64) -> bool {
        self.processes.kill(node_id)
    }

    /// The process id of node `node_id`, if it was started and not killed.
    pub fn pid(&self, node_id: u64) -> Option<u32> {
        self.processes.pid(node_id)
    }

    /// Whether node `node_id`'s process runs, exited (with its status) or was never started.
    pub fn process_state(&self, node_id: u64) -> ChildState {
        self.processes.state(node_id)
    }

    pub fn is_running(&self, node_id: u64) -> bool {
        self.processes.state(node_id) == ChildState::Running
    }

    /// Waits until every node of `node_ids` answers 200 on `/readyz`, printing progress once
    /// a second. Fails at once when one exits.
    pub fn wait_ready(&self, node_ids: &[u64], timeout: Duration) -> Result<(), Box<NotReady>> {
        let started = Instant::now();
        let mut answers: BTreeMap<u64, String> = BTreeMap::new();
        let mut last_print = Instant::now();
        loop {
            let mut waiting = Vec::new();
            for node_id in node_ids {
                if let ChildState::Exited(status) = self.processes.state(*node_id) {
                    let answer = answers.get(node_id).cloned().unwrap_or_default();
                    return Err(self.not_ready(
                        *node_id,
                        Some(status.to_string()),
                        answer,
                        started,
                    ));
                }
                let Ok(addr) = self.layout(*node_id).map(|node| node.ports.admin_addr) else {
                    return Err(self.not_ready(
                        *node_id,
                        None,
                        "not in the cluster".into(),
                        started,
                    ));
                };
                match self.api.readyz(addr) {
                    Ok(()) => answers.insert(*node_id, "200 ready".to_string()),
                    Err(answer) => {
                        waiting.push(*node_id);
                        answers.insert(*node_id, answer)
                    }
                };
            }
            let Some(first_waiting) = waiting.first() else {
                eprintln!("nodes {node_ids:?} ready after {:.1?}", started.elapsed());
                return Ok(());
            };
            if started.elapsed() > timeout {
                let answer = answers[first_waiting].clone();
                return Err(self.not_ready(*first_waiting, None, answer, started));
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                eprintln!("{}", ready_progress(started.elapsed(), timeout, &answers));
            }
            std::thread::sleep(READY_POLL_INTERVAL);
        }
    }

    /// Waits until every data group has its replication factor of voters and no learner (the
    /// reconciler adds replicas to the groups a bootstrap created on one node after the nodes
    /// are ready; a measurement made before then measures that too).
    pub fn wait_placed(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let replicas = self.shape.replication_factor as usize;
        loop {
            let unplaced = self.view_from_any().map(|view| {
                view.groups
                    .iter()
                    .filter(|group| group.id != 0)
                    .filter(|group| group.voters.len() != replicas || !group.learners.is_empty())
                    .count()
            });
            if unplaced == Some(0) {
                eprintln!(
                    "every data group on {replicas} replicas after {:.1?}",
                    started.elapsed()
                );
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "data groups still short of {replicas} voters after {timeout:?} ({} unplaced)",
                    unplaced.map_or("no node answered".to_string(), |n| n.to_string())
                );
            }
            std::thread::sleep(READY_POLL_INTERVAL);
        }
    }

    /// `/v1/cluster` as seen by `node_id`.
    pub fn view(&self, node_id: u64) -> Result<ClusterView> {
        self.api.cluster(self.layout(node_id)?.ports.admin_addr)
    }

    /// `/v1/cluster` from the first running node that answers.
    pub fn view_from_any(&self) -> Option<ClusterView> {
        self.node_ids()
            .into_iter()
            .filter(|node_id| self.is_running(*node_id))
            .find_map(|node_id| self.view(node_id).ok())
    }

    /// The last log lines of every node, each under a header.
    pub fn log_tails(&self, lines: usize) -> String {
        self.log_tails_except(0, lines)
    }

    /// The last log lines of every node but `skipped`, each under a header.
    pub fn log_tails_except(&self, skipped: u64, lines: usize) -> String {
        let mut text = String::new();
        for node in self.nodes().values().filter(|node| node.node_id != skipped) {
            let path = node.log_path();
            text.push_str(&format!(
                "---- node {} ({}), last {lines} lines ----\n{}\n",
                node.node_id,
                path.display(),
                process::log_tail(&path, lines)
            ));
        }
        text
    }

    fn layout(&self, node_id: u64) -> Result<NodeLayout> {
        self.nodes()
            .get(&node_id)
            .cloned()
            .with_context(|| format!("no node {node_id} in this cluster"))
    }

    fn nodes(&self) -> RwLockReadGuard<'_, BTreeMap<u64, NodeLayout>> {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn nodes_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, NodeLayout>> {
        self.nodes.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn not_ready(
        &self,
        node_id: u64,
        exited: Option<String>,
        last_answer: String,
        started: Instant,
    ) -> Box<NotReady> {
        let (admin_addr, log_path) = match self.layout(node_id) {
            Ok(node) => (node.ports.admin_addr, node.log_path()),
            Err(_) => (
                SocketAddr::from(([0, 0, 0, 0], 0)),
                self.work_dir.join("none"),
            ),
        };
        Box::new(NotReady {
            node_id,
            admin_addr,
            exited,
            last_answer,
            waited: started.elapsed(),
            log_tail: process::log_tail(&log_path, LOG_TAIL_LINES),
            log_path,
        })
    }
}

impl NotReady {
    /// Whether the node died because an address was taken (then fresh ports may help).
    pub fn is_bind_failure(&self) -> bool {
        let log = self.log_tail.to_ascii_lowercase();
        self.exited.is_some()
            && (log.contains("address already in use") || log.contains("addrinuse"))
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.exited {
            Some(status) => write!(
                f,
                "node {} exited ({status}) before it was ready, after {:.1?}",
                self.node_id, self.waited
            )?,
            None => write!(
                f,
                "node {} (admin {}) not ready after {:.1?} of waiting for /readyz",
                self.node_id, self.admin_addr, self.waited
            )?,
        }
        let answer = if self.last_answer.is_empty() {
            "(none)"
        } else {
            &self.last_answer
        };
        write!(
            f,
            "\nlast /readyz answer: {answer}\n---- node {} log ({}), last {LOG_TAIL_LINES} \
             lines ----\n{}",
            self.node_id,
            self.log_path.display(),
            self.log_tail
        )
    }
}

/// `waiting for /readyz (3s of 90s): 1 ready, 2 503: ..., 3 no answer: ...`
fn ready_progress(elapsed: Duration, timeout: Duration, answers: &BTreeMap<u64, String>) -> String {
    const ANSWER_CHARS_MAX: usize = 60;
    let parts: Vec<String> = answers
        .iter()
        .map(|(node_id, answer)| {
            let short: String = answer.chars().take(ANSWER_CHARS_MAX).collect();
            format!("node {node_id}: {short}")
        })
        .collect();
    format!(
        "waiting for /readyz ({}s of {}s): {}",
        elapsed.as_secs(),
        timeout.as_secs(),
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in node binary: `certs` writes the promised files, `start` runs `start_body`.
    /// Every start is counted in `<work dir>/starts`.
    fn fake_binary(dir: &Path, start_body: &str) -> PathBuf {
        let script = format!(
            "#!/bin/sh\n\
             case \"$1\" in\n\
             certs) if [ \"$2\" = init ]; then touch \"$4/ca.pem\" \"$4/ca.key\";\n\
                    else touch \"$4/node-$6.pem\" \"$4/node-$6.key\"; fi ;;\n\
             start) echo start >> ../starts; {start_body} ;;\n\
             esac\n"
        );
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("fake-nodedb-cluster");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn spec(name: &str, start_body: &str, nodes: u32) -> LaunchSpec {
        let root = std::env::temp_dir().join(format!("xtask-launch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        LaunchSpec {
            binary: fake_binary(&root.join("bin"), start_body),
            work_dir: root.join("work"),
            nodes,
            num_groups: 2,
            ready_timeout: Duration::from_secs(1),
            raft: RaftTimings::DEBUG,
            snapshot_logs_since_last: Some(config::SNAPSHOT_LOGS_SINCE_LAST),
        }
    }

    #[test]
    fn a_node_that_never_answers_fails_the_launch_with_its_log() {
        let spec = spec("hang", "echo joining the cluster; exec sleep 600", 2);
        let processes = Processes::new();
        let error = Cluster::launch(&spec, &processes).unwrap_err().to_string();
        assert!(error.contains("node 1 (admin 127.0.0.1:"), "{error}");
        assert!(error.contains("not ready after"), "{error}");
        assert!(error.contains("no answer"), "{error}");
        assert!(error.contains("joining the cluster"), "{error}");
        assert!(
            error.contains("---- node 2 ("),
            "the other nodes' logs follow: {error}"
        );
        assert!(
            processes.started().is_empty(),
            "the failed launch killed its nodes"
        );
        let config = std::fs::read_to_string(spec.work_dir.join("node-2/node.toml")).unwrap();
        assert!(config.contains("node_id = 2"), "{config}");
        std::fs::remove_dir_all(spec.work_dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_node_that_cannot_bind_makes_the_launch_retry_with_fresh_ports() {
        let spec = spec("bind", "echo 'Error: Address already in use'; exit 1", 1);
        let processes = Processes::new();
        let error = Cluster::launch(&spec, &processes).unwrap_err().to_string();
        assert!(error.contains("node 1 exited"), "{error}");
        let starts = std::fs::read_to_string(spec.work_dir.join("starts")).unwrap();
        assert_eq!(starts.lines().count(), LAUNCH_ATTEMPTS_MAX as usize);
        std::fs::remove_dir_all(spec.work_dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_node_that_exits_otherwise_fails_at_once() {
        let spec = spec("exit", "echo 'config key `tls`: needs ca_cert'; exit 2", 1);
        let processes = Processes::new();
        let error = Cluster::launch(&spec, &processes).unwrap_err().to_string();
        assert!(error.contains("exit status: 2"), "{error}");
        assert!(error.contains("needs ca_cert"), "{error}");
        let starts = std::fs::read_to_string(spec.work_dir.join("starts")).unwrap();
        assert_eq!(starts.lines().count(), 1);
        std::fs::remove_dir_all(spec.work_dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn placed_nodes_get_their_addresses_and_run_inside_their_wrapper() {
        let spec = spec(
            "placed",
            "echo \"wrapped=$XTASK_WRAPPED\"; exec sleep 600",
            2,
        );
        let hosts: BTreeMap<u64, NodeHost> = (1..=2)
            .zip(ports::allocate(2).unwrap())
            .map(|(node_id, ports)| {
                let wrapper = ["env", &format!("XTASK_WRAPPED=node-{node_id}")]
                    .map(str::to_string)
                    .to_vec();
                (node_id, NodeHost { ports, wrapper })
            })
            .collect();
        let processes = Processes::new();
        let error = Cluster::launch_placed(&spec, &processes, &Placement::Hosts(hosts.clone()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("wrapped=node-1"), "{error}");
        assert!(error.contains("wrapped=node-2"), "{error}");
        let config = std::fs::read_to_string(spec.work_dir.join("node-2/node.toml")).unwrap();
        let admin = format!("admin_addr = \"{}\"", hosts[&2].ports.admin_addr);
        assert!(config.contains(&admin), "{config}");
        std::fs::remove_dir_all(spec.work_dir.parent().unwrap()).unwrap();
    }

    fn not_ready(exited: Option<&str>, log: &str) -> NotReady {
        NotReady {
            node_id: 2,
            admin_addr: "127.0.0.1:9402".parse().unwrap(),
            exited: exited.map(str::to_string),
            last_answer: "503: {\"error\":{\"code\":\"unavailable\"}}".to_string(),
            waited: Duration::from_secs(90),
            log_path: PathBuf::from("/w/node-2/node.log"),
            log_tail: log.to_string(),
        }
    }

    #[test]
    fn not_ready_names_the_node_its_answer_and_its_log() {
        let text = not_ready(None, "INFO joining\nWARN no seed answered").to_string();
        assert!(
            text.contains("node 2 (admin 127.0.0.1:9402) not ready"),
            "{text}"
        );
        assert!(text.contains("last /readyz answer: 503"), "{text}");
        assert!(text.contains("/w/node-2/node.log"), "{text}");
        assert!(text.contains("WARN no seed answered"), "{text}");
        let exited = not_ready(Some("exit status: 1"), "").to_string();
        assert!(exited.contains("exited (exit status: 1)"), "{exited}");
    }

    #[test]
    fn only_an_exit_on_a_taken_address_is_a_bind_failure() {
        assert!(
            not_ready(Some("exit status: 1"), "Error: Address already in use").is_bind_failure()
        );
        assert!(!not_ready(None, "Address already in use").is_bind_failure());
        assert!(!not_ready(Some("exit status: 1"), "bad config").is_bind_failure());
    }

    #[test]
    fn the_progress_line_lists_every_node() {
        let answers = BTreeMap::from([
            (1, "200 ready".to_string()),
            (2, "no answer: connection refused".to_string()),
        ]);
        let line = ready_progress(Duration::from_secs(3), Duration::from_secs(90), &answers);
        assert_eq!(
            line,
            "waiting for /readyz (3s of 90s): node 1: 200 ready; node 2: no answer: connection \
             refused"
        );
    }
}
