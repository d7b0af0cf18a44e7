//! Developer tasks for nodedb-cluster, run as `cargo xtask <task>`.
//!
//! - `layering`: checks the crate layering rules of ARCHITECTURE.md against `cargo metadata`
//!   and the sources (also run by the test suite).
//! - `test-cluster`: the project's main job, a real local cluster under load and faults.
//! - `chaos`: the same over network namespaces, with partitions, pauses and lossy links.
//! - `bench cluster`: closed-loop write throughput and latency of a local release cluster.

mod api;
mod bench;
mod bench_etcd;
mod bench_examples;
mod bench_migration;
mod chaos;
mod checks;
mod cli;
mod cluster;
mod disk_probe;
mod fake_node;
mod fuzz;
mod layering;
mod membership;
mod moves;
mod nemesis;
mod progress;
mod report;
mod soak;
mod test_cluster;
mod workload;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "nodedb-cluster developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Check the crate layering rules (which crate may depend on what).
    Layering,
    /// Run a real local cluster of node processes under load and faults, then check it.
    TestCluster(cli::TestClusterArgs),
    /// Real partitions, kills, pauses and lossy links between network namespaces (root only).
    Chaos(chaos::ChaosArgs),
    /// Measure a local cluster.
    #[command(subcommand)]
    Bench(cli::BenchTarget),
    /// Fuzz the decoders of bytes from peers, disk and HTTP clients (in-repo mutation fuzzer,
    /// stable toolchain).
    Fuzz(fuzz::FuzzArgs),
    /// Long suites: many seeds of the deterministic fault harnesses.
    #[command(subcommand)]
    Soak(SoakTarget),
    /// Test stand-in: serve a fake store for fake nodes (used by the driver's own tests).
    #[command(hide = true)]
    FakeStore {
        #[arg(long)]
        addr: SocketAddr,
        /// Acknowledge every fifth put without storing it (a store that loses writes).
        #[arg(long)]
        lose_writes: bool,
    },
    /// Test stand-in: a fake node that relays its admin API to the fake store.
    #[command(hide = true)]
    FakeNode {
        #[arg(long)]
        config: PathBuf,
    },
}

/// `cargo xtask soak <target>`.
#[derive(Debug, Subcommand)]
enum SoakTarget {
    /// The multi-raft fault harness (linearizability and replica hashes) over many seeds.
    Raft(soak::SoakRaftArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.task {
        Task::Layering => match layering::check_workspace() {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("layering check failed:\n{error:#}");
                ExitCode::FAILURE
            }
        },
        Task::TestCluster(args) => match test_cluster::run(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("test-cluster failed:\n{error:#}");
                ExitCode::FAILURE
            }
        },
        Task::Chaos(args) => chaos::main(&args),
        Task::FakeStore { addr, lose_writes } => exit_code(fake_node::run_store(addr, lose_writes)),
        Task::FakeNode { config } => exit_code(fake_node::run_node(&config)),
        Task::Bench(cli::BenchTarget::Cluster(args)) => match bench::run(&args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("bench cluster failed:\n{error:#}");
                ExitCode::FAILURE
            }
        },
        Task::Soak(SoakTarget::Raft(args)) => exit_code(soak::raft(&args)),
        Task::Fuzz(args) => exit_code(fuzz::run(&args)),
        Task::Bench(cli::BenchTarget::Transport) => exit_code(bench_examples::transport()),
        Task::Bench(cli::BenchTarget::Raft(args)) => exit_code(bench_examples::raft(&args)),
        Task::Bench(cli::BenchTarget::Migration(args)) => exit_code(bench_migration::run(&args)),
    }
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
