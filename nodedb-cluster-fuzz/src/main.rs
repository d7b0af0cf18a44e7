//! `nodedb-cluster-fuzz`: runs the fuzz targets for a while each and reports executions and
//! failures; `cargo xtask fuzz` builds and runs it.

use anyhow::{Context, Result};
use clap::Parser;
use nodedb_cluster_fuzz::engine::{self, FailureKind, RunConfig};
use nodedb_cluster_fuzz::{hex, targets};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Mutation fuzzer of the cluster's decoders (stable toolchain, no coverage instrumentation).
#[derive(Debug, Parser)]
struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Only this target (repeatable); all when absent.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Seed of the mutations; printed, random when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Where failing inputs are saved, one directory per target.
    #[arg(long, default_value = "target/fuzz")]
    failure_dir: PathBuf,
    /// One input running longer than this is reported as a hang.
    #[arg(long, default_value_t = engine::HANG_MS_DEFAULT)]
    hang_ms: u64,
    /// Run the (single) target once on this saved input instead of fuzzing.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("fuzz: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<bool> {
    if args.list {
        for name in targets::NAMES {
            println!("{name}");
        }
        return Ok(true);
    }
    let names: Vec<String> = if args.targets.is_empty() {
        targets::NAMES.iter().map(|name| name.to_string()).collect()
    } else {
        args.targets.clone()
    };
    if let Some(path) = &args.replay {
        return replay(&names, path);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("fuzz: seed {seed}, {} s per target", args.seconds);
    let mut failed = Vec::new();
    for (number, name) in names.iter().enumerate() {
        let mut target = targets::by_name(name)?;
        let config = RunConfig {
            duration: Duration::from_secs(args.seconds),
            seed: seed.wrapping_add(number as u64),
            failure_dir: args.failure_dir.clone(),
            hang_ms: args.hang_ms,
        };
        let report = engine::run(target.as_mut(), &config);
        let rate = report.executions as f64 / report.elapsed.as_secs_f64().max(1e-3);
        println!(
            "{name:<17} {:>10} executions ({rate:>8.0}/s), {:>4} outcome classes, {:>4} corpus entries, {}",
            report.executions,
            report.outcome_classes,
            report.corpus_entries,
            if report.failure.is_some() {
                "FAILED"
            } else {
                "0 failures"
            }
        );
        if let Some(failure) = report.failure {
            let kind = match failure.kind {
                FailureKind::Panic => "panic",
                FailureKind::Violation => "property violated",
            };
            println!("  {kind}: {}", failure.message);
            println!(
                "  input ({} bytes): {}",
                failure.input.len(),
                hex(&failure.input)
            );
            if let Some(path) = &failure.saved_to {
                println!("  saved to {}", path.display());
                println!(
                    "  replay: cargo xtask fuzz --target {name} --replay {}",
                    path.display()
                );
            }
            failed.push(name.clone());
        }
    }
    if failed.is_empty() {
        println!("fuzz: {} targets, 0 failures", names.len());
        Ok(true)
    } else {
        println!(
            "fuzz: {} of {} targets failed: {}",
            failed.len(),
            names.len(),
            failed.join(", ")
        );
        Ok(false)
    }
}

fn replay(names: &[String], path: &PathBuf) -> Result<bool> {
    let [name] = names else {
        anyhow::bail!("--replay needs exactly one --target");
    };
    let input = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut target = targets::by_name(name)?;
    match engine::replay(target.as_mut(), &input) {
        Ok(()) => {
            println!("{name}: {} bytes pass", input.len());
            Ok(true)
        }
        Err(failure) => {
            println!("{name}: {:?}: {}", failure.kind, failure.message);
            Ok(false)
        }
    }
}
