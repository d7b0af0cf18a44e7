//! Command-line arguments of `cargo xtask chaos`, checked without starting anything.

use super::plan;
use crate::cli::{self, parse_duration};
use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// `cargo xtask chaos`: real node processes in network namespaces under partitions, kills,
/// pauses, lossy, slow and delaying links and membership churn, then checked.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Number of node processes, one network namespace each.
    #[arg(long, default_value_t = 5)]
    pub nodes: u32,
    /// Load time over all stages, e.g. `120s`, `2m`.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Which faults: one kind, or `all` (one stage per kind, then a stage combining them).
    #[arg(long, value_enum, default_value_t = NemesisChoice::All)]
    pub nemesis: NemesisChoice,
    /// Seed of the workload and the fault schedule; printed, and a run with the same seed
    /// makes the same choices. Random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of data Raft groups.
    #[arg(long, default_value_t = 8)]
    pub groups: u32,
    /// Number of concurrent clients per stage.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Number of distinct keys per stage (every stage has keys of its own).
    #[arg(long, default_value_t = 200)]
    pub keys: u32,
    /// Keep the work directory (configs, data, logs, histories) even when every check passes.
    #[arg(long)]
    pub keep: bool,
    /// Build and run the node binary with the release profile.
    #[arg(long)]
    pub release: bool,
    /// Run this node binary instead of building `nodedb-cluster`.
    #[arg(long)]
    pub node_binary: Option<PathBuf>,
}

/// The `--nemesis` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NemesisChoice {
    All,
    Partition,
    Kill,
    Pause,
    Lossy,
    Churn,
}

impl ChaosArgs {
    /// Checks the ranges clap cannot express.
    pub fn validate(&self) -> Result<()> {
        // Churn adds a spare node, which needs an id and an address too.
        let nodes_max = match plan::uses_spare(self.nemesis) {
            true => cli::NODES_MAX - 1,
            false => cli::NODES_MAX,
        };
        if self.nodes < 3 || self.nodes > nodes_max {
            bail!(
                "--nodes must be between 3 and {nodes_max} (partitions need a majority and a \
                 minority; churn adds one node), got {}",
                self.nodes
            );
        }
        let vshards = u32::from(nodedb_cluster_core::VSHARD_COUNT);
        cli::check_range("--groups", self.groups, 1, vshards)?;
        cli::check_range("--clients", self.clients, 1, cli::CLIENTS_MAX)?;
        cli::check_range("--keys", self.keys, 1, 10_000)?;
        // Every stage needs room for at least one fault and its heal.
        let duration_min = plan::duration_min(self.nemesis);
        if self.duration < duration_min || self.duration > cli::DURATION_MAX {
            bail!(
                "--duration must be between {}s and {}s for --nemesis {:?}, got {:?}",
                duration_min.as_secs(),
                cli::DURATION_MAX.as_secs(),
                self.nemesis,
                self.duration
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ChaosArgs,
    }

    fn parse(arguments: &[&str]) -> Result<ChaosArgs, clap::Error> {
        let mut all = vec!["chaos"];
        all.extend_from_slice(arguments);
        Wrapper::try_parse_from(all).map(|wrapper| wrapper.args)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.nodes, 5);
        assert_eq!(args.duration, Duration::from_secs(120));
        assert_eq!(args.nemesis, NemesisChoice::All);
        assert_eq!(args.seed, None);
        assert!(!args.keep && !args.release);
        args.validate().unwrap();
    }

    #[test]
    fn every_nemesis_name_parses() {
        for (name, choice) in [
            ("all", NemesisChoice::All),
            ("partition", NemesisChoice::Partition),
            ("kill", NemesisChoice::Kill),
            ("pause", NemesisChoice::Pause),
            ("lossy", NemesisChoice::Lossy),
            ("churn", NemesisChoice::Churn),
        ] {
            assert_eq!(parse(&["--nemesis", name]).unwrap().nemesis, choice);
        }
        assert!(parse(&["--nemesis", "netem"]).is_err());
    }

    #[test]
    fn out_of_range_values_are_refused_by_flag_name() {
        for (arguments, flag) in [
            (vec!["--nodes", "2"], "--nodes"),
            (vec!["--nodes", "10"], "--nodes"),
            (vec!["--duration", "20s"], "--duration"),
            (vec!["--duration", "4s", "--nemesis", "kill"], "--duration"),
            (vec!["--groups", "0"], "--groups"),
            (vec!["--clients", "0"], "--clients"),
            (vec!["--keys", "0"], "--keys"),
        ] {
            let error = parse(&arguments)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.contains(flag), "{arguments:?}: {error}");
        }
    }
}
