//! Node configuration: the TOML file of `nodedb-cluster start --config`, its defaults, and
//! validation that names the offending key. Unknown keys are rejected, so a typo never
//! silently falls back to a default.

use crate::migration::MigrationSettings;
use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::quic::UdpFaults;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default QUIC listen address (UDP).
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:9400";
/// Default HTTP admin address (TCP). Loopback: the admin API is not exposed unless asked.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9401";
pub const DEFAULT_NUM_GROUPS: u32 = 8;
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;
/// Default log filter: the node at info, openraft (very chatty at info) at warn.
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";
/// Upper bound on data groups: at most one per vShard.
pub const NUM_GROUPS_MAX: u32 = nodedb_cluster_core::VSHARD_COUNT as u32;
/// Upper bound on the replication factor; larger groups only slow commits down.
pub const REPLICATION_FACTOR_MAX: u32 = 7;

/// The whole configuration of one node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: u64,
    #[serde(default = "default_listen_addr")]
    pub listen_addr: SocketAddr,
    #[serde(default = "default_admin_addr")]
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// QUIC addresses of nodes to contact when joining. May include this node's own address.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// Initialize a new cluster even if this node is not the lowest-id seed.
    #[serde(default)]
    pub bootstrap: bool,
    #[serde(default = "default_num_groups")]
    pub num_groups: u32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u32,
    /// Absent means no material: refused by validation with a message saying what to set.
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub raft: RaftConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub migration: MigrationConfig,
    /// Testing only: faults injected under the transport. Off unless set.
    #[serde(default)]
    pub faults: FaultsConfig,
}

/// Mutual TLS material, or the explicit development-only opt-out.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Development only: no certificates, no authentication of peers.
    #[serde(default)]
    pub insecure: bool,
}

/// Raft timings. Defaults suit a LAN; tests shorten them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Build a snapshot and compact the log after this many applied entries.
    pub snapshot_logs_since_last: u64,
    /// ... or after this many bytes of applied entries, or the last snapshot's size when
    /// larger.
    pub snapshot_log_bytes_since_last: u64,
    /// A node silent for this long is marked Down and its replicas are replaced.
    pub node_down_timeout_ms: u64,
    /// A group unused this long, with every replica caught up, stops its heartbeats and
    /// election timers until it is used again; 0 keeps every group's timers running.
    pub quiesce_after_ms: u64,
}

/// HTTP admin API settings.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// When set, every endpoint but `/healthz` requires `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// vShard migrations: copy bandwidth, concurrency, automatic rebalancing by size.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationConfig {
    /// Bytes per second that the copies before the fences of the moves this node drives (as
    /// the metadata leader) may move, together.
    pub bandwidth_bytes_per_s: u64,
    /// Migrations carried forward at the same time (automatic ones begin only below it).
    pub concurrent_max: usize,
    /// Move vShards away from a data group that holds much more data than the others.
    pub auto_rebalance: bool,
    /// "Much more": above this many times the mean of the groups' sizes...
    pub size_ratio: f64,
    /// ... and above this many bytes.
    pub size_floor_bytes: u64,
    /// How often the metadata leader asks the groups for their sizes.
    pub size_check_interval_ms: u64,
}

/// Log output. The filter follows `RUST_LOG` syntax; the `RUST_LOG` variable wins over it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub filter: String,
    pub json: bool,
}

/// Testing only (chaos runs): the transport's UDP fault layer, which delays, reorders and
/// duplicates every datagram this node sends. Off by default (all zero); a node that has it on
/// says so loudly at start. Never set it on a cluster that serves anything.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// Each datagram waits a uniform random time in `0..=udp_delay_ms_max` before it is sent,
    /// so later datagrams overtake earlier ones.
    pub udp_delay_ms_max: u64,
    /// Chance, `0.0..=1.0`, that a datagram is sent twice.
    pub udp_duplicate_probability: f64,
    /// Seed of the layer's random choices; the node id when absent.
    pub seed: Option<u64>,
}

/// Why a configuration was refused. The message names the key and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl NodeConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = NodeConfig::parse(&text).map_err(|error| match error {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        Ok(config.resolve_relative_paths(path.parent().unwrap_or(Path::new("."))))
    }

    /// Parses and validates TOML text. Paths stay as written.
    pub fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: error.message().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn node(&self) -> NodeId {
        NodeId(self.node_id)
    }

    /// Checks every value that parsing alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return invalid("node_id", "must be at least 1 (0 is reserved)");
        }
        if self.num_groups == 0 || self.num_groups > NUM_GROUPS_MAX {
            return invalid(
                "num_groups",
                format!(
                    "must be between 1 and {NUM_GROUPS_MAX}, got {}",
                    self.num_groups
                ),
            );
        }
        if self.replication_factor == 0 || self.replication_factor > REPLICATION_FACTOR_MAX {
            return invalid(
                "replication_factor",
                format!(
                    "must be between 1 and {REPLICATION_FACTOR_MAX}, got {}",
                    self.replication_factor
                ),
            );
        }
        if self.listen_addr.port() == 0 {
            return invalid(
                "listen_addr",
                "needs an explicit port: peers must find this node",
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        self.tls.validate()?;
        self.raft.validate()?;
        self.migration.validate()?;
        if let Some(faults) = self.udp_faults()
            && let Err(error) = faults.validate()
        {
            return invalid("faults", error.to_string());
        }
        Ok(())
    }

    /// The UDP fault layer `[faults]` asks for; `None` when it is off (the default).
    pub fn udp_faults(&self) -> Option<UdpFaults> {
        let faults = &self.faults;
        let on = faults.udp_delay_ms_max > 0 || faults.udp_duplicate_probability != 0.0;
        on.then(|| UdpFaults {
            delay_ms_max: faults.udp_delay_ms_max,
            duplicate_probability: faults.udp_duplicate_probability,
            seed: faults.seed.unwrap_or(self.node_id),
        })
    }

    /// Makes relative file paths relative to the config file's directory, so a config works
    /// from wherever the node is started.
    fn resolve_relative_paths(mut self, base: &Path) -> NodeConfig {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.data_dir);
        for path in [&mut self.tls.ca_cert, &mut self.tls.cert, &mut self.tls.key]
            .into_iter()
            .flatten()
        {
            resolve(path);
        }
        self
    }
}

impl TlsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let given = [&self.ca_cert, &self.cert, &self.key]
            .iter()
            .filter(|path| path.is_some())
            .count();
        match (self.insecure, given) {
            (true, 0) => Ok(()),
            (true, _) => invalid(
                "tls.insecure",
                "is set together with certificate paths: choose one",
            ),
            (false, 3) => Ok(()),
            (false, _) => invalid(
                "tls",
                "needs ca_cert, cert and key (make them with `nodedb-cluster certs init` and \
                 `certs issue`), or `insecure = true` for local development only",
            ),
        }
    }
}

impl RaftConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_ms == 0 {
            return invalid("raft.heartbeat_interval_ms", "must be at least 1");
        }
        if self.election_timeout_ms_min <= self.heartbeat_interval_ms {
            return invalid(
                "raft.election_timeout_ms_min",
                format!(
                    "must be larger than raft.heartbeat_interval_ms ({}), got {}",
                    self.heartbeat_interval_ms, self.election_timeout_ms_min
                ),
            );
        }
        if self.election_timeout_ms_max <= self.election_timeout_ms_min {
            return invalid(
                "raft.election_timeout_ms_max",
                format!(
                    "must be larger than raft.election_timeout_ms_min ({}), got {}",
                    self.election_timeout_ms_min, self.election_timeout_ms_max
                ),
            );
        }
        if self.snapshot_logs_since_last == 0 {
            return invalid("raft.snapshot_logs_since_last", "must be at least 1");
        }
        if self.snapshot_log_bytes_since_last == 0 {
            return invalid("raft.snapshot_log_bytes_since_last", "must be at least 1");
        }
        if self.node_down_timeout_ms <= self.election_timeout_ms_max {
            return invalid(
                "raft.node_down_timeout_ms",
                "must be larger than raft.election_timeout_ms_max",
            );
        }
        // Shorter, a group would go quiet between two writes of a steady trickle and spend
        // more on quiescing and waking than its timers cost.
        if self.quiesce_after_ms != 0 && self.quiesce_after_ms < self.election_timeout_ms_max {
            return invalid(
                "raft.quiesce_after_ms",
                format!(
                    "must be 0 (never) or at least raft.election_timeout_ms_max ({}), got {}",
                    self.election_timeout_ms_max, self.quiesce_after_ms
                ),
            );
        }
        Ok(())
    }
}

impl MigrationConfig {
    /// Most migrations in flight at once that a config may ask for.
    const CONCURRENT_MAX: usize = 64;

    fn validate(&self) -> Result<(), ConfigError> {
        if self.bandwidth_bytes_per_s == 0 {
            return invalid("migration.bandwidth_bytes_per_s", "must be at least 1");
        }
        if self.concurrent_max == 0 || self.concurrent_max > Self::CONCURRENT_MAX {
            return invalid(
                "migration.concurrent_max",
                format!(
                    "must be between 1 and {}, got {}",
                    Self::CONCURRENT_MAX,
                    self.concurrent_max
                ),
            );
        }
        if !(self.size_ratio.is_finite() && self.size_ratio > 1.0) {
            return invalid(
                "migration.size_ratio",
                format!("must be a number above 1, got {}", self.size_ratio),
            );
        }
        if self.size_check_interval_ms < 100 {
            return invalid(
                "migration.size_check_interval_ms",
                format!("must be at least 100, got {}", self.size_check_interval_ms),
            );
        }
        Ok(())
    }

    /// The library's settings for these values.
    pub fn settings(&self) -> MigrationSettings {
        MigrationSettings {
            bandwidth_bytes_per_s: self.bandwidth_bytes_per_s,
            concurrent_max: self.concurrent_max,
            auto_rebalance: self.auto_rebalance,
            size_ratio: self.size_ratio,
            size_floor_bytes: self.size_floor_bytes,
            size_check_interval: Duration::from_millis(self.size_check_interval_ms),
        }
    }
}

impl Default for MigrationConfig {
    fn default() -> MigrationConfig {
        let settings = MigrationSettings::default();
        MigrationConfig {
            bandwidth_bytes_per_s: settings.bandwidth_bytes_per_s,
            concurrent_max: settings.concurrent_max,
            auto_rebalance: settings.auto_rebalance,
            size_ratio: settings.size_ratio,
            size_floor_bytes: settings.size_floor_bytes,
            size_check_interval_ms: settings.size_check_interval.as_millis() as u64,
        }
    }
}

impl Default for RaftConfig {
    fn default() -> RaftConfig {
        RaftConfig {
            heartbeat_interval_ms: 100,
            election_timeout_ms_min: 500,
            election_timeout_ms_max: 1000,
            snapshot_logs_since_last: 10_000,
            snapshot_log_bytes_since_last: 1024 * 1024 * 1024,
            node_down_timeout_ms: 10_000,
            quiesce_after_ms: 2000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            filter: DEFAULT_LOG_FILTER.to_string(),
            json: false,
        }
    }
}

fn default_listen_addr() -> SocketAddr {
    DEFAULT_LISTEN_ADDR
        .parse()
        .expect("constant address parses")
}

fn default_admin_addr() -> SocketAddr {
    DEFAULT_ADMIN_ADDR.parse().expect("constant address parses")
}

fn default_num_groups() -> u32 {
    DEFAULT_NUM_GROUPS
}

fn default_replication_factor() -> u32 {
    DEFAULT_REPLICATION_FACTOR
}

fn invalid<T>(key: &'static str, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key,
        message: message.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        node_id = 1
        data_dir = "data/node-1"
        [tls]
        insecure = true
    "#;

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let config = NodeConfig::parse(MINIMAL).unwrap();
        assert_eq!(config.listen_addr.to_string(), DEFAULT_LISTEN_ADDR);
        assert_eq!(config.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
        assert_eq!(config.num_groups, DEFAULT_NUM_GROUPS);
        assert_eq!(config.replication_factor, DEFAULT_REPLICATION_FACTOR);
        assert_eq!(config.raft, RaftConfig::default());
        assert_eq!(config.migration.settings(), MigrationSettings::default());
        assert!(config.seeds.is_empty());
        assert!(!config.bootstrap);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let top_level = MINIMAL.replace("node_id = 1", "node_id = 1\nreplication_factr = 3");
        let error = NodeConfig::parse(&top_level).unwrap_err().to_string();
        assert!(error.contains("replication_factr"), "{error}");
        let nested = MINIMAL.replace("insecure = true", "insecure = true\nkey_file = \"k\"");
        let error = NodeConfig::parse(&nested).unwrap_err().to_string();
        assert!(error.contains("key_file"), "{error}");
    }

    #[test]
    fn without_tls_material_the_node_is_told_how_to_make_it() {
        let without_table = "node_id = 1\ndata_dir = \"d\"";
        let error = NodeConfig::parse(without_table).unwrap_err().to_string();
        assert!(
            error.contains("tls") && error.contains("certs init"),
            "{error}"
        );
        assert!(error.contains("insecure = true"), "{error}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("node_id = 1", "node_id = 0", "node_id"),
            ("node_id = 1", "node_id = 1\nnum_groups = 0", "num_groups"),
            (
                "node_id = 1",
                "node_id = 1\nnum_groups = 2000",
                "num_groups",
            ),
            (
                "node_id = 1",
                "node_id = 1\nreplication_factor = 0",
                "replication_factor",
            ),
            (
                "node_id = 1",
                "node_id = 1\nlisten_addr = \"127.0.0.1:0\"",
                "listen_addr",
            ),
            ("insecure = true", "insecure = false", "tls"),
            (
                "insecure = true",
                "insecure = true\nca_cert = \"ca.pem\"",
                "tls.insecure",
            ),
            (
                "insecure = true",
                "insecure = true\n[migration]\nbandwidth_bytes_per_s = 0",
                "migration.bandwidth_bytes_per_s",
            ),
            (
                "insecure = true",
                "insecure = true\n[migration]\nconcurrent_max = 0",
                "migration.concurrent_max",
            ),
            (
                "insecure = true",
                "insecure = true\n[migration]\nsize_ratio = 1.0",
                "migration.size_ratio",
            ),
            (
                "insecure = true",
                "insecure = true\n[migration]\nsize_check_interval_ms = 10",
                "migration.size_check_interval_ms",
            ),
        ];
        for (from, to, key) in cases {
            let error = NodeConfig::parse(&MINIMAL.replace(from, to)).unwrap_err();
            match error {
                ConfigError::Invalid { key: named, .. } => assert_eq!(named, key, "{to}"),
                other => panic!("{to}: expected Invalid for {key}, got {other}"),
            }
        }
    }

    #[test]
    fn malformed_values_are_parse_errors() {
        let cases = [
            ("node_id = 1", "node_id = \"one\""),
            ("node_id = 1", "node_id = -1"),
            ("node_id = 1", "node_id = 1\nlisten_addr = \"nowhere\""),
            ("insecure = true", "insecure = \"yes\""),
        ];
        for (from, to) in cases {
            let result = NodeConfig::parse(&MINIMAL.replace(from, to));
            assert!(matches!(result, Err(ConfigError::Parse { .. })), "{to}");
        }
    }

    #[test]
    fn the_udp_fault_layer_is_off_unless_asked_for() {
        assert_eq!(NodeConfig::parse(MINIMAL).unwrap().udp_faults(), None);
        let text = format!("{MINIMAL}\n[faults]\nseed = 9\n");
        assert_eq!(NodeConfig::parse(&text).unwrap().udp_faults(), None);
        let text = format!("{MINIMAL}\n[faults]\nudp_delay_ms_max = 20\n");
        let faults = NodeConfig::parse(&text).unwrap().udp_faults().unwrap();
        assert_eq!(
            faults,
            UdpFaults {
                delay_ms_max: 20,
                duplicate_probability: 0.0,
                seed: 1,
            }
        );
        let text = format!("{MINIMAL}\n[faults]\nudp_duplicate_probability = 0.1\nseed = 5\n");
        let faults = NodeConfig::parse(&text).unwrap().udp_faults().unwrap();
        assert_eq!((faults.duplicate_probability, faults.seed), (0.1, 5));
        for bad in [
            "udp_duplicate_probability = 1.5",
            "udp_delay_ms_max = 3600000",
        ] {
            let text = format!("{MINIMAL}\n[faults]\n{bad}\n");
            match NodeConfig::parse(&text).unwrap_err() {
                ConfigError::Invalid { key, .. } => assert_eq!(key, "faults", "{bad}"),
                other => panic!("{bad}: {other}"),
            }
        }
        let text = format!("{MINIMAL}\n[faults]\nudp_loss = 0.1\n");
        assert!(matches!(
            NodeConfig::parse(&text),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn migration_settings_are_read() {
        let text = format!(
            "{MINIMAL}\n[migration]\nbandwidth_bytes_per_s = 1048576\nconcurrent_max = 2\n\
             auto_rebalance = false\nsize_ratio = 1.5\nsize_floor_bytes = 4096\n\
             size_check_interval_ms = 500\n"
        );
        let settings = NodeConfig::parse(&text).unwrap().migration.settings();
        assert_eq!(
            settings,
            MigrationSettings {
                bandwidth_bytes_per_s: 1_048_576,
                concurrent_max: 2,
                auto_rebalance: false,
                size_ratio: 1.5,
                size_floor_bytes: 4096,
                size_check_interval: Duration::from_millis(500),
            }
        );
        let text = format!("{MINIMAL}\n[migration]\nauto_rebalancing = true\n");
        let error = NodeConfig::parse(&text).unwrap_err().to_string();
        assert!(error.contains("auto_rebalancing"), "{error}");
    }

    #[test]
    fn raft_timings_must_be_ordered() {
        let text = format!(
            "{MINIMAL}\n[raft]\nheartbeat_interval_ms = 100\nelection_timeout_ms_min = 50\n"
        );
        let error = NodeConfig::parse(&text).unwrap_err().to_string();
        assert!(error.contains("raft.election_timeout_ms_min"), "{error}");
    }

    #[test]
    fn quiescence_is_off_or_slower_than_an_election() {
        let with = |ms: u64| format!("{MINIMAL}\n[raft]\nquiesce_after_ms = {ms}\n");
        let error = NodeConfig::parse(&with(50)).unwrap_err().to_string();
        assert!(error.contains("raft.quiesce_after_ms"), "{error}");
        assert_eq!(
            NodeConfig::parse(&with(0)).unwrap().raft.quiesce_after_ms,
            0
        );
        assert_eq!(
            NodeConfig::parse(&with(5000))
                .unwrap()
                .raft
                .quiesce_after_ms,
            5000
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("node.toml");
        let text = r#"
            node_id = 2
            data_dir = "data"
            [tls]
            ca_cert = "certs/ca.pem"
            cert = "/abs/node-2.pem"
            key = "certs/node-2.key"
        "#;
        std::fs::write(&path, text).unwrap();
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.data_dir, directory.path().join("data"));
        assert_eq!(
            config.tls.ca_cert,
            Some(directory.path().join("certs/ca.pem"))
        );
        assert_eq!(config.tls.cert, Some(PathBuf::from("/abs/node-2.pem")));
    }

    #[test]
    fn a_missing_file_says_which() {
        let error = NodeConfig::load(Path::new("/nonexistent/node.toml")).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/node.toml"),
            "{error}"
        );
    }
}
