//! Command-line arguments of the cluster tasks (`test-cluster`, `bench cluster`) and the
//! parsing of human durations such as `30s`, kept apart so that they are tested without
//! starting anything.

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Largest cluster the local launcher starts: every node is a real process on this machine.
pub const NODES_MAX: u32 = 9;
/// Largest number of concurrent workload clients (one thread each).
pub const CLIENTS_MAX: u32 = 512;
/// Longest workload the driver runs.
pub const DURATION_MAX: Duration = Duration::from_secs(3600);

/// `cargo xtask test-cluster`: a real local cluster under load and faults, then checked.
#[derive(Debug, Clone, Args)]
pub struct TestClusterArgs {
    /// Number of node processes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Number of data Raft groups (group 0, the metadata group, comes on top).
    #[arg(long, default_value_t = 8)]
    pub groups: u32,
    /// How long the workload runs, e.g. `30s`, `2m`, `1500ms`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Keep the work directory (configs, data, logs, history) even when every check passes.
    #[arg(long)]
    pub keep: bool,
    /// Seed of the workload and the fault schedule; printed, and a run with the same seed
    /// makes the same choices. Random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Number of distinct keys the workload touches (spread over the vShards).
    #[arg(long, default_value_t = 200)]
    pub keys: u32,
    /// Build and run the node binary with the release profile.
    #[arg(long)]
    pub release: bool,
    /// Run the workload without killing any node, moving vShards, adding or decommissioning
    /// a node.
    #[arg(long)]
    pub no_faults: bool,
    /// Keep the faults and moves but add no node and decommission none.
    #[arg(long)]
    pub no_membership: bool,
    /// Run this node binary instead of building `nodedb-cluster`.
    #[arg(long)]
    pub node_binary: Option<PathBuf>,
}

/// `cargo xtask bench <target>`.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchTarget {
    /// Closed-loop puts against a local cluster started from a release build.
    Cluster(BenchClusterArgs),
    /// QUIC transport on loopback: RPC rate and latency, stream throughput (release build).
    Transport,
    /// Multi-raft in one process: commit rate and latency, idle cost per group (release build).
    Raft(crate::bench_examples::BenchRaftArgs),
    /// vShard moves under writes on a local cluster: move time, copy rate, write pause.
    Migration(crate::bench_migration::BenchMigrationArgs),
}

/// `cargo xtask bench cluster`.
#[derive(Debug, Clone, Args)]
pub struct BenchClusterArgs {
    /// Number of node processes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Number of data Raft groups.
    #[arg(long, default_value_t = 8)]
    pub groups: u32,
    /// Number of concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// Measured seconds (after a short warm-up).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Size of every written value.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: u32,
    /// The measured operation; reads read keys written before the warm-up.
    #[arg(long, value_enum, default_value_t = BenchOp::Put)]
    pub op: BenchOp,
    /// Keep the work directory afterwards (a run with failed operations keeps it anyway).
    #[arg(long)]
    pub keep: bool,
    /// Use the debug profile instead of release (numbers are then meaningless; for trying
    /// the benchmark itself).
    #[arg(long)]
    pub debug: bool,
    /// Run this node binary instead of building `nodedb-cluster`.
    #[arg(long)]
    pub node_binary: Option<PathBuf>,
    /// Afterwards, the same puts against an etcd cluster of as many members on loopback
    /// (through its HTTP/JSON gateway), and the ratios; needs `etcd` (Debian: etcd-server).
    #[arg(long)]
    pub vs_etcd: bool,
}

/// The operation `bench cluster` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchOp {
    /// `PUT /v1/kv/{key}`.
    Put,
    /// `GET /v1/kv/{key}`: a linearizable read.
    Get,
    /// `GET /v1/kv/{key}?consistency=stale`: a read of the answering node's replica.
    GetStale,
}

impl BenchOp {
    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            BenchOp::Put => "put",
            BenchOp::Get => "get",
            BenchOp::GetStale => "get-stale",
        }
    }
}

impl TestClusterArgs {
    /// Checks the ranges clap cannot express.
    pub fn validate(&self) -> Result<()> {
        check_cluster_shape(self.nodes, self.groups)?;
        check_range("--clients", self.clients, 1, CLIENTS_MAX)?;
        check_range("--keys", self.keys, 1, 100_000)?;
        if self.duration.is_zero() || self.duration > DURATION_MAX {
            bail!(
                "--duration must be between 1ms and {}s, got {:?}",
                DURATION_MAX.as_secs(),
                self.duration
            );
        }
        Ok(())
    }
}

impl BenchClusterArgs {
    /// Checks the ranges clap cannot express.
    pub fn validate(&self) -> Result<()> {
        check_cluster_shape(self.nodes, self.groups)?;
        check_range("--clients", self.clients, 1, CLIENTS_MAX)?;
        check_range("--value-bytes", self.value_bytes, 1, 1024 * 1024)?;
        if self.vs_etcd && self.op != BenchOp::Put {
            bail!("--vs-etcd compares puts only; drop --op {}", self.op.name());
        }
        if self.seconds == 0 || self.seconds > DURATION_MAX.as_secs() {
            bail!(
                "--seconds must be between 1 and {}, got {}",
                DURATION_MAX.as_secs(),
                self.seconds
            );
        }
        Ok(())
    }
}

/// Parses `30s`, `2m`, `1500ms`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 2m or 500ms"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use ms, s, m or h"
            ));
        }
    };
    amount
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

fn check_cluster_shape(nodes: u32, groups: u32) -> Result<()> {
    check_range("--nodes", nodes, 1, NODES_MAX)?;
    check_range(
        "--groups",
        groups,
        1,
        u32::from(nodedb_cluster_core::VSHARD_COUNT),
    )
}

/// `Err` naming `flag` unless `min <= value <= max`.
pub fn check_range(flag: &str, value: u32, min: u32, max: u32) -> Result<()> {
    if value < min || value > max {
        bail!("{flag} must be between {min} and {max}, got {value}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: TestClusterArgs,
    }

    fn parse(arguments: &[&str]) -> Result<TestClusterArgs, clap::Error> {
        let mut all = vec!["test-cluster"];
        all.extend_from_slice(arguments);
        Wrapper::try_parse_from(all).map(|wrapper| wrapper.args)
    }

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.nodes, 3);
        assert_eq!(args.groups, 8);
        assert_eq!(args.duration, Duration::from_secs(30));
        assert_eq!(args.clients, 16);
        assert_eq!(args.seed, None);
        assert!(!args.keep && !args.release && !args.no_faults && !args.no_membership);
        args.validate().unwrap();
    }

    #[test]
    fn every_flag_is_read() {
        let args = parse(&[
            "--nodes",
            "5",
            "--groups",
            "16",
            "--duration",
            "2m",
            "--keep",
            "--seed",
            "42",
            "--clients",
            "4",
            "--keys",
            "50",
            "--release",
            "--no-faults",
            "--no-membership",
            "--node-binary",
            "/opt/nodedb-cluster",
        ])
        .unwrap();
        assert_eq!(
            (args.nodes, args.groups, args.clients, args.keys),
            (5, 16, 4, 50)
        );
        assert_eq!(args.duration, Duration::from_secs(120));
        assert_eq!(args.seed, Some(42));
        assert!(args.keep && args.release && args.no_faults && args.no_membership);
        assert_eq!(args.node_binary, Some(PathBuf::from("/opt/nodedb-cluster")));
    }

    #[test]
    fn out_of_range_values_are_refused_by_flag_name() {
        let cases = [
            (vec!["--nodes", "0"], "--nodes"),
            (vec!["--nodes", "100"], "--nodes"),
            (vec!["--groups", "0"], "--groups"),
            (vec!["--groups", "5000"], "--groups"),
            (vec!["--clients", "0"], "--clients"),
            (vec!["--duration", "0s"], "--duration"),
        ];
        for (arguments, flag) in cases {
            let error = parse(&arguments)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.contains(flag), "{arguments:?}: {error}");
        }
        assert!(parse(&["--duration", "soon"]).is_err());
        assert!(parse(&["--seed", "-1"]).is_err());
    }
}
