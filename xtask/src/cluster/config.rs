//! The `node.toml` the launcher writes for each node, following the node's config contract
//! (unknown keys are rejected there, so only documented keys appear here), with Raft timings
//! short enough that failovers happen within a test run.

use super::ports::NodePorts;
use anyhow::{Context, Result};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Log entries between snapshots in test runs: low, so that they exercise snapshots and
/// compaction. Benchmarks keep the node's default.
pub const SNAPSHOT_LOGS_SINCE_LAST: u64 = 1_000;
/// Well above the longest time the fault schedule keeps a node dead, so that a restarted
/// node comes back to its own replicas instead of racing re-replication.
pub const NODE_DOWN_TIMEOUT_MS: u64 = 30_000;

/// The Raft heartbeat and election timings written into every node's config.
///
/// A follower of openraft campaigns only after it heard nothing from its leader for the leader
/// lease (`election_timeout_ms_max`) plus a random election timeout (min..max); so a dead
/// leader is replaced after `max + min ..= 2 * max` of silence, not after `min..max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTimings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
}

impl RaftTimings {
    /// Release builds: a dead leader is replaced after 450-600 ms of silence, so a failover
    /// ends within the 1 s target even when a split vote costs a second round (150-300 ms
    /// more); 9 heartbeats must go missing first.
    pub const RELEASE: RaftTimings = RaftTimings {
        heartbeat_interval_ms: 50,
        election_timeout_ms_min: 150,
        election_timeout_ms_max: 300,
    };
    /// Debug builds are many times slower and share the machine with the build: longer
    /// timings (1.2-1.6 s of silence), so that slow RPCs are not taken for dead leaders.
    pub const DEBUG: RaftTimings = RaftTimings {
        heartbeat_interval_ms: 100,
        election_timeout_ms_min: 400,
        election_timeout_ms_max: 800,
    };

    pub fn for_profile(release: bool) -> RaftTimings {
        if release {
            RaftTimings::RELEASE
        } else {
            RaftTimings::DEBUG
        }
    }

    /// The node refuses a config unless heartbeat < election min < election max < node-down
    /// timeout.
    const fn is_valid(&self) -> bool {
        self.heartbeat_interval_ms < self.election_timeout_ms_min
            && self.election_timeout_ms_min < self.election_timeout_ms_max
            && self.election_timeout_ms_max < NODE_DOWN_TIMEOUT_MS
    }
}

const _: () = assert!(RaftTimings::RELEASE.is_valid() && RaftTimings::DEBUG.is_valid());

/// Everything that differs between the nodes of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLayout {
    pub node_id: u64,
    pub ports: NodePorts,
    /// The node's own directory: config, data, log.
    pub dir: PathBuf,
}

/// Settings shared by every node of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterShape {
    pub num_groups: u32,
    pub replication_factor: u32,
    pub certs_dir: PathBuf,
    pub seeds: Vec<SocketAddr>,
    pub raft: RaftTimings,
    pub snapshot_logs_since_last: Option<u64>,
}

impl NodeLayout {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }
}

/// The node's UDP fault layer (`[faults]`, for chaos runs only): every datagram it sends waits
/// up to `delay_ms_max`, and is sent twice with `duplicate_probability`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct UdpFaults {
    #[serde(rename = "udp_delay_ms_max")]
    pub delay_ms_max: u64,
    #[serde(rename = "udp_duplicate_probability")]
    pub duplicate_probability: f64,
    pub seed: u64,
}

/// The TOML text of `node`'s config.
#[cfg(test)]
pub fn render(node: &NodeLayout, shape: &ClusterShape) -> Result<String> {
    render_with_faults(node, shape, None)
}

/// The TOML text of `node`'s config, with the UDP fault layer on when `faults` is given.
pub fn render_with_faults(
    node: &NodeLayout,
    shape: &ClusterShape,
    faults: Option<UdpFaults>,
) -> Result<String> {
    let certs = &shape.certs_dir;
    let file = ConfigFile {
        node_id: node.node_id,
        listen_addr: node.ports.listen_addr.to_string(),
        admin_addr: node.ports.admin_addr.to_string(),
        data_dir: path_text(&node.data_dir())?,
        seeds: shape.seeds.iter().map(ToString::to_string).collect(),
        // Node 1 starts the cluster; restarts never re-initialize, so this stays set.
        bootstrap: node.node_id == 1,
        num_groups: shape.num_groups,
        replication_factor: shape.replication_factor,
        tls: TlsSection {
            ca_cert: path_text(&certs.join("ca.pem"))?,
            cert: path_text(&certs.join(format!("node-{}.pem", node.node_id)))?,
            key: path_text(&certs.join(format!("node-{}.key", node.node_id)))?,
        },
        raft: RaftSection {
            heartbeat_interval_ms: shape.raft.heartbeat_interval_ms,
            election_timeout_ms_min: shape.raft.election_timeout_ms_min,
            election_timeout_ms_max: shape.raft.election_timeout_ms_max,
            snapshot_logs_since_last: shape.snapshot_logs_since_last,
            node_down_timeout_ms: NODE_DOWN_TIMEOUT_MS,
        },
        log: LogSection {
            filter: "info,openraft=warn".to_string(),
            json: false,
        },
        faults,
    };
    toml::to_string(&file).context("rendering a node config as TOML")
}

/// Writes `node`'s config file and creates its data directory.
pub fn write(node: &NodeLayout, shape: &ClusterShape) -> Result<PathBuf> {
    write_with_faults(node, shape, None)
}

/// [`write()`] with the UDP fault layer on when `faults` is given (read at the node's next
/// start).
pub fn write_with_faults(
    node: &NodeLayout,
    shape: &ClusterShape,
    faults: Option<UdpFaults>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(node.data_dir())
        .with_context(|| format!("creating {}", node.data_dir().display()))?;
    let path = node.config_path();
    std::fs::write(&path, render_with_faults(node, shape, faults)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[derive(Serialize)]
struct ConfigFile {
    node_id: u64,
    listen_addr: String,
    admin_addr: String,
    data_dir: String,
    seeds: Vec<String>,
    bootstrap: bool,
    num_groups: u32,
    replication_factor: u32,
    tls: TlsSection,
    raft: RaftSection,
    log: LogSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    faults: Option<UdpFaults>,
}

#[derive(Serialize)]
struct TlsSection {
    ca_cert: String,
    cert: String,
    key: String,
}

#[derive(Serialize)]
struct RaftSection {
    heartbeat_interval_ms: u64,
    election_timeout_ms_min: u64,
    election_timeout_ms_max: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_logs_since_last: Option<u64>,
    node_down_timeout_ms: u64,
}

#[derive(Serialize)]
struct LogSection {
    filter: String,
    json: bool,
}

fn path_text(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every key of the node's config contract, section by section.
    const CONTRACT_TOP: &[&str] = &[
        "node_id",
        "listen_addr",
        "admin_addr",
        "data_dir",
        "seeds",
        "bootstrap",
        "num_groups",
        "replication_factor",
        "tls",
        "raft",
        "admin",
        "log",
        "faults",
    ];
    const CONTRACT_TLS: &[&str] = &["ca_cert", "cert", "key", "insecure"];
    const CONTRACT_RAFT: &[&str] = &[
        "heartbeat_interval_ms",
        "election_timeout_ms_min",
        "election_timeout_ms_max",
        "snapshot_logs_since_last",
        "node_down_timeout_ms",
    ];
    const CONTRACT_LOG: &[&str] = &["filter", "json"];
    const CONTRACT_FAULTS: &[&str] = &["udp_delay_ms_max", "udp_duplicate_probability", "seed"];

    fn sample(node_id: u64) -> (NodeLayout, ClusterShape) {
        let node = NodeLayout {
            node_id,
            ports: NodePorts {
                listen_addr: "127.0.0.1:7001".parse().unwrap(),
                admin_addr: "127.0.0.1:8001".parse().unwrap(),
            },
            dir: PathBuf::from("/work dir/node-2"),
        };
        let shape = ClusterShape {
            num_groups: 8,
            replication_factor: 3,
            certs_dir: PathBuf::from("/work dir/certs"),
            seeds: vec![
                "127.0.0.1:7001".parse().unwrap(),
                "127.0.0.1:7002".parse().unwrap(),
            ],
            raft: RaftTimings::RELEASE,
            snapshot_logs_since_last: Some(SNAPSHOT_LOGS_SINCE_LAST),
        };
        (node, shape)
    }

    fn keys(table: &toml::Table) -> BTreeSet<&str> {
        table.keys().map(String::as_str).collect()
    }

    #[test]
    fn only_contract_keys_are_written() {
        let (node, shape) = sample(2);
        let table: toml::Table = render(&node, &shape).unwrap().parse().unwrap();
        let subset = |found: BTreeSet<&str>, allowed: &[&str]| {
            let extra: Vec<_> = found.iter().filter(|key| !allowed.contains(key)).collect();
            assert!(extra.is_empty(), "keys outside the contract: {extra:?}");
        };
        subset(keys(&table), CONTRACT_TOP);
        subset(keys(table["tls"].as_table().unwrap()), CONTRACT_TLS);
        subset(keys(table["raft"].as_table().unwrap()), CONTRACT_RAFT);
        subset(keys(table["log"].as_table().unwrap()), CONTRACT_LOG);
        assert!(
            !table.contains_key("faults"),
            "the fault layer is off by default"
        );
        let faults = UdpFaults {
            delay_ms_max: 20,
            duplicate_probability: 0.05,
            seed: 7,
        };
        let text = render_with_faults(&node, &shape, Some(faults)).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let section = table["faults"].as_table().unwrap();
        assert_eq!(keys(section), CONTRACT_FAULTS.iter().copied().collect());
        assert_eq!(section["udp_delay_ms_max"].as_integer(), Some(20));
        assert_eq!(section["udp_duplicate_probability"].as_float(), Some(0.05));
    }

    #[test]
    fn values_round_trip_with_paths_and_addresses() {
        let (node, shape) = sample(2);
        let table: toml::Table = render(&node, &shape).unwrap().parse().unwrap();
        assert_eq!(table["node_id"].as_integer(), Some(2));
        assert_eq!(table["listen_addr"].as_str(), Some("127.0.0.1:7001"));
        assert_eq!(table["admin_addr"].as_str(), Some("127.0.0.1:8001"));
        assert_eq!(table["data_dir"].as_str(), Some("/work dir/node-2/data"));
        let seeds: Vec<_> = table["seeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|seed| seed.as_str().unwrap())
            .collect();
        assert_eq!(seeds, ["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(table["bootstrap"].as_bool(), Some(false));
        assert_eq!(table["num_groups"].as_integer(), Some(8));
        let raft = table["raft"].as_table().unwrap();
        let timings = RaftTimings::RELEASE;
        assert_eq!(
            raft["heartbeat_interval_ms"].as_integer(),
            Some(timings.heartbeat_interval_ms as i64)
        );
        assert_eq!(
            raft["election_timeout_ms_max"].as_integer(),
            Some(timings.election_timeout_ms_max as i64)
        );
        let tls = table["tls"].as_table().unwrap();
        assert_eq!(tls["ca_cert"].as_str(), Some("/work dir/certs/ca.pem"));
        assert_eq!(tls["cert"].as_str(), Some("/work dir/certs/node-2.pem"));
        assert_eq!(tls["key"].as_str(), Some("/work dir/certs/node-2.key"));
    }

    #[test]
    fn only_node_one_bootstraps() {
        let (node, shape) = sample(1);
        let table: toml::Table = render(&node, &shape).unwrap().parse().unwrap();
        assert_eq!(table["bootstrap"].as_bool(), Some(true));
    }

    #[test]
    fn write_creates_the_data_dir_and_the_file() {
        let root = std::env::temp_dir().join(format!("xtask-config-{}", std::process::id()));
        let (mut node, shape) = sample(3);
        node.dir = root.join("node-3");
        let path = write(&node, &shape).unwrap();
        assert!(node.data_dir().is_dir());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("node_id = 3"), "{text}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
