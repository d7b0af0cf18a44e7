//! `cargo xtask bench transport` and `cargo xtask bench raft`: the crates' own benchmark
//! programs (their `examples/`), built in release and run with the sizes asked for, one line of
//! results per run.

use anyhow::{Context, Result, bail};
use std::process::Command;

/// Sizes for `bench raft`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchRaftArgs {
    /// Concurrent proposers of the commit benchmark (one run per value).
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    pub clients: Vec<u64>,
    /// Groups the commit benchmark's clients are spread over (one run per value and client
    /// count; leaders spread over the nodes).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub groups: Vec<u64>,
    /// Group counts of the idle-cost benchmark (one run per value).
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    pub idle_groups: Vec<u64>,
}

/// Runs the transport benchmark: RPC rate and latency at 1 and 64 callers, stream throughput.
pub fn transport() -> Result<()> {
    run_example("nodedb-cluster-transport", "transport_bench", &[])
}

/// Runs the Raft benchmarks: commits at each client and group count, then the idle cost of
/// each group count.
pub fn raft(args: &BenchRaftArgs) -> Result<()> {
    for groups in &args.groups {
        for clients in &args.clients {
            run_example(
                "nodedb-cluster-raft",
                "propose_rate",
                &[clients.to_string(), groups.to_string()],
            )?;
        }
    }
    for groups in &args.idle_groups {
        run_example("nodedb-cluster-raft", "idle_cost", &[groups.to_string()])?;
    }
    Ok(())
}

fn run_example(package: &str, example: &str, args: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    println!("==> {package} {example} {}", args.join(" "));
    let status = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--release",
            "--locked",
            "-p",
            package,
            "--example",
            example,
            "--",
        ])
        .args(args)
        .status()
        .with_context(|| format!("running {example}"))?;
    if !status.success() {
        bail!("{example} {} failed with {status}", args.join(" "));
    }
    Ok(())
}
