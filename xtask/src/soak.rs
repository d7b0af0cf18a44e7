//! `cargo xtask soak raft`: the long suite of the deterministic Raft fault harness. The normal
//! test suite runs a few fixed seeds; this runs many, one seed per run, and names the first
//! seed that fails so that `NODEDB_RAFT_SEED=<seed>` replays it.

use anyhow::{Context, Result, bail};
use std::process::Command;

/// How many seeds and from where.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakRaftArgs {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 50)]
    pub seeds: u64,
    /// The first seed; the others follow it.
    #[arg(long, default_value_t = 1000)]
    pub first_seed: u64,
}

/// Runs the fault harness once per seed; stops at the first failing seed.
pub fn raft(args: &SoakRaftArgs) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    for seed in args.first_seed..args.first_seed + args.seeds {
        let status = Command::new(&cargo)
            .args(["test", "--quiet", "--locked", "-p", "nodedb-cluster-raft"])
            .args(["--test", "fault_harness"])
            .env("NODEDB_RAFT_SEED", seed.to_string())
            .status()
            .with_context(|| format!("running the fault harness with seed {seed}"))?;
        if !status.success() {
            bail!(
                "seed {seed} failed; replay with NODEDB_RAFT_SEED={seed} cargo test -p nodedb-cluster-raft --test fault_harness"
            );
        }
        println!("seed {seed}: ok");
    }
    println!("{} seeds passed", args.seeds);
    Ok(())
}
