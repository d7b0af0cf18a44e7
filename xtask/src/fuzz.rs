//! `cargo xtask fuzz`: builds the `nodedb-cluster-fuzz` program and runs its targets, each for
//! the given time, printing executions and failures per target. The fuzzer is an in-repo
//! mutation fuzzer that runs on the stable toolchain (libFuzzer and cargo-fuzz need nightly):
//! corpora seeded from valid encodings, byte flips, interesting integers, overlong varints,
//! inserts, deletes, truncation and splices, with inputs kept when they show a new outcome
//! class. A failure prints the input in hex and saves it under `target/fuzz/<target>/`.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// Arguments of `cargo xtask fuzz`, passed on to the fuzz program.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Fuzz the decoders of bytes from peers, disk and HTTP clients (in-repo mutation fuzzer, stable toolchain)",
    long_about = "Fuzz every decoder that reads bytes it did not write: transport frames, Raft RPCs \
        and log records, KV and metadata commands, catalog records and the admin API's request \
        bodies.\n\nThe fuzzer is an in-repo mutation fuzzer for the stable toolchain (no \
        libFuzzer, no nightly): each target starts from valid encodings and mutates them (bit \
        flips, interesting integers, overlong varints, inserts, deletes, truncation, splices), \
        keeping inputs that show a new outcome class. Every target checks: no panic, no hang, \
        and that whatever decodes re-encodes to the same bytes or is refused.\n\nA failure \
        prints the input in hex, saves it under target/fuzz/<target>/ and makes the task exit 1."
)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Only this target (repeatable): frame, raft-rpc, raft-log, kv-command,
    /// metadata-command, catalog-record, http-kv. All when absent.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Seed of the mutations; printed, random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run the (single) target once on a saved input instead of fuzzing.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Build the fuzz program with the release profile (several times more executions per
    /// second, a much longer first build).
    #[arg(long)]
    pub release: bool,
}

/// Builds and runs the fuzz program; fails when any target found a failure.
pub fn run(args: &FuzzArgs) -> Result<()> {
    if args.seconds == 0 || args.seconds > 24 * 3600 {
        bail!(
            "--seconds must be between 1 and 86400, got {}",
            args.seconds
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let workspace_root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives one level below the workspace root")?
        .to_path_buf();
    let mut command = Command::new(cargo);
    command.current_dir(&workspace_root).args([
        "run",
        "--quiet",
        "--locked",
        "-p",
        "nodedb-cluster-fuzz",
    ]);
    if args.release {
        command.arg("--release");
    }
    command
        .arg("--")
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--failure-dir", "target/fuzz"]);
    for target in &args.targets {
        command.args(["--target", target]);
    }
    if let Some(seed) = args.seed {
        command.args(["--seed", &seed.to_string()]);
    }
    if let Some(path) = &args.replay {
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("no saved input at {}", path.display()))?;
        command.arg("--replay").arg(path);
    }
    let status = command.status().context("running the fuzz program")?;
    if !status.success() {
        bail!("fuzzing found a failure (or could not run): {status}");
    }
    Ok(())
}
