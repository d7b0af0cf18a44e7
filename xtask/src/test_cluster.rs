//! `cargo xtask test-cluster`: build the node, launch a local cluster, run the client
//! workload while the nemesis kills and restarts leaders, vShards move and a node joins and
//! another is decommissioned, then settle, check and report. Every node process dies with the
//! driver, whichever way it ends.

use crate::api::Api;
use crate::checks;
use crate::cli::TestClusterArgs;
use crate::cluster::config::{RaftTimings, SNAPSHOT_LOGS_SINCE_LAST};
use crate::cluster::process::Processes;
use crate::cluster::{Cluster, LOG_TAIL_LINES, LaunchSpec, build};
use crate::membership::{self, MembershipEvent, PlannedMembership};
use crate::moves::{self, MoveEvent, PlannedMove};
use crate::nemesis::{self, FaultEvent, PlannedFault};
use crate::progress;
use crate::report::{CheckResult, Report, RunReport};
use crate::workload::{self, Recorder, WorkloadSpec};
use anyhow::{Context, Result, anyhow};
use nodedb_cluster_core::linearizability::History;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Load that continues after the last restarted node is ready, so that the failover
/// windows include the recovery of the groups it leads again.
pub const RECOVERY_TAIL: Duration = Duration::from_secs(5);
/// Share of the run after which the vShard moves begin (between the two leader kills).
const MOVES_AT: f64 = 0.38;

/// Runs the whole task; `Ok(true)` when every check passed.
pub fn run(args: &TestClusterArgs) -> Result<bool> {
    args.validate()?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let binary = build::node_binary(args.node_binary.as_deref(), args.release)?;
    let work_dir = work_dir("test-cluster", seed)?;
    eprintln!("test-cluster: seed {seed}, work dir {}", work_dir.display());
    eprintln!("(replay with: cargo xtask test-cluster --seed {seed} ...)");
    let processes = Processes::new();
    processes.kill_on_interrupt(&work_dir)?;
    let spec = LaunchSpec {
        binary,
        work_dir: work_dir.clone(),
        nodes: args.nodes,
        num_groups: args.groups,
        ready_timeout: crate::cluster::READY_TIMEOUT,
        raft: RaftTimings::for_profile(args.release),
        snapshot_logs_since_last: Some(SNAPSHOT_LOGS_SINCE_LAST),
    };
    let cluster = Cluster::launch(&spec, &processes).with_context(|| {
        format!(
            "launching the cluster (work dir kept: {})",
            work_dir.display()
        )
    })?;
    let passed = conclude(&cluster, &work_dir, drive(&cluster, args, seed))?;
    drop(cluster);
    finish_work_dir(&work_dir, passed && !args.keep)?;
    Ok(passed)
}

/// Load, faults, settle and checks against a ready cluster.
fn drive(cluster: &Cluster, args: &TestClusterArgs, seed: u64) -> Result<RunReport> {
    let faults = match args.no_faults {
        true => Vec::new(),
        false => nemesis::plan(seed, args.duration, args.groups),
    };
    for fault in &faults {
        eprintln!("planned: {fault}");
    }
    let moves = match args.no_faults {
        true => Vec::new(),
        false => moves::plan(seed, args.keys),
    };
    for planned in &moves {
        eprintln!("planned: move {} to another group", planned.vshard);
    }
    let membership = match args.no_faults || args.no_membership {
        true => None,
        false => membership::plan(seed, args.nodes),
    };
    if let Some(planned) = membership {
        eprintln!(
            "planned: node {} joins at the start; node {} is decommissioned after the last fault",
            planned.join, planned.decommission
        );
    }
    let spec = WorkloadSpec {
        clients: args.clients,
        first_key: 0,
        keys: args.keys,
        seed,
        nodes: cluster.admin_addrs().into_values().collect(),
    };
    let started = Instant::now();
    let recorder = Recorder::new(started);
    let plan = Plan {
        faults: &faults,
        moves: &moves,
        membership,
    };
    let (events, moved, changed) = run_load(cluster, &spec, &plan, args, &recorder)?;
    let workload = started.elapsed();
    let history = recorder.history();
    save_json(cluster.work_dir(), "history.json", &history)?;
    eprintln!("load done: {} operations recorded; settling", history.len());
    let mut checks = vec![checks::settle(cluster)];
    let (agreement, views) = checks::agreement(cluster);
    checks.push(agreement);
    save_json(cluster.work_dir(), "cluster-views.json", &views)?;
    checks.push(membership::check(membership, &changed, &views));
    checks.push(check_history(cluster, args.keys, &history)?);
    checks.push(checks::state_hashes(&views));
    let failovers = checks::failover_rows(&events, &recorder.writes());
    checks.push(checks::failovers_recovered(
        &failovers,
        faults.len(),
        events.len(),
    ));
    checks.push(moves::check(moves.len(), &moved));
    Ok(RunReport {
        seed,
        nodes: args.nodes,
        groups: args.groups,
        workload,
        counts: recorder.counters.snapshot(),
        checks,
        failovers,
    })
}

/// What happens to the cluster during the load.
struct Plan<'a> {
    faults: &'a [PlannedFault],
    moves: &'a [PlannedMove],
    membership: Option<PlannedMembership>,
}

/// Runs the clients and the progress line for the run's duration while the nemesis works
/// through the faults, vShards move (from [`MOVES_AT`] of the run on) and a node joins (at
/// once) and another is decommissioned (after the last fault, so that no node is down then);
/// returns what the nemesis, the moves and the membership phase did.
fn run_load(
    cluster: &Cluster,
    spec: &WorkloadSpec,
    plan: &Plan<'_>,
    args: &TestClusterArgs,
    recorder: &Recorder,
) -> Result<(Vec<FaultEvent>, Vec<MoveEvent>, MembershipEvent)> {
    let (faults, moves) = (plan.faults, plan.moves);
    let duration = args.duration;
    let stop = AtomicBool::new(false);
    let phase = Mutex::new("load".to_string());
    let started = Instant::now();
    std::thread::scope(|scope| {
        let mut clients = Vec::new();
        for client in 0..u64::from(spec.clients) {
            let (stop, recorder) = (&stop, recorder);
            clients.push(scope.spawn(move || workload::run_client(client, spec, recorder, stop)));
        }
        let progress = scope.spawn(|| progress::run(cluster, recorder, &phase, started, &stop));
        let moves_from = started + duration.mul_f64(MOVES_AT);
        let (phase_ref, stop_ref) = (&phase, &stop);
        let mover = scope.spawn(move || {
            moves::execute(cluster, moves, args.groups, moves_from, phase_ref, stop_ref)
        });
        let joiner = plan.membership.map(|planned| {
            scope.spawn(move || membership::join(cluster, planned, recorder, phase_ref, stop_ref))
        });
        // Should the nemesis panic, the clients must still stop, or the scope never ends.
        let _stop_on_unwind = StopOnDrop(&stop);
        let events = nemesis::execute(cluster, faults, started, recorder, &phase, &stop);
        if events.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        // Recovery after the last restart is part of what is measured.
        let after_faults = match &events {
            Ok(events) if !events.is_empty() => Instant::now() + RECOVERY_TAIL,
            _ => started,
        };
        let mut changed = MembershipEvent::default();
        if let (Some(planned), Some(joiner)) = (plan.membership, joiner) {
            match joiner.join() {
                Ok(Ok(joined)) => changed.joined = Some(joined),
                Ok(Err(error)) => changed.error = Some(format!("{error:#}")),
                Err(_) => changed.error = Some("the membership phase panicked".to_string()),
            }
            if changed.joined.is_some() && events.is_ok() && !stop.load(Ordering::Relaxed) {
                match membership::decommission(cluster, planned, recorder, &phase) {
                    Ok(gone) => changed.decommissioned = Some(gone),
                    Err(error) => changed.error = Some(format!("{error:#}")),
                }
            }
        }
        if events.is_ok() {
            // The smaller cluster after a decommission gets some load too.
            let after_membership = match &changed.decommissioned {
                Some(_) => Instant::now() + membership::TAIL,
                None => started,
            };
            let until = (started + duration).max(after_faults).max(after_membership);
            nemesis::sleep_until(until, &stop);
        }
        // The moves end on their own (each one is bounded); the clients keep writing meanwhile.
        if events.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let moved = mover.join();
        stop.store(true, Ordering::Relaxed);
        let mut panicked = clients
            .into_iter()
            .map(|client| client.join())
            .filter(Result::is_err)
            .count();
        panicked += usize::from(progress.join().is_err());
        let Ok(moved) = moved else {
            return Err(anyhow!("the vShard mover panicked"));
        };
        if panicked > 0 {
            return Err(anyhow!("{panicked} workload threads panicked"));
        }
        Ok((events?, moved, changed))
    })
}

/// Sets its flag when dropped, on every way out of a scope.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Final reads of every key and the linearizability check, the full report saved.
fn check_history(cluster: &Cluster, keys: u32, history: &History) -> Result<CheckResult> {
    let api = Api::new(workload::REQUEST_TIMEOUT);
    let names = workload::key_names(keys);
    let nodes: Vec<_> = cluster.admin_addrs().into_values().collect();
    let reads = match checks::final_reads(&nodes, &api, &names) {
        Ok(reads) => reads,
        Err(why) => {
            return Ok(CheckResult::fail(
                "linearizable per key",
                format!("final reads: {why}"),
            ));
        }
    };
    eprintln!(
        "checking linearizability of {} operations ...",
        history.len()
    );
    let (row, full) = checks::linearizable(history, reads);
    let path = cluster.work_dir().join("linearizability.txt");
    std::fs::write(&path, full).with_context(|| format!("writing {}", path.display()))?;
    Ok(row)
}

/// Writes `value` as JSON to `work_dir/name`, for reading after a failed run.
pub fn save_json(work_dir: &Path, name: &str, value: &impl serde::Serialize) -> Result<()> {
    let path = work_dir.join(name);
    let text = serde_json::to_string(value).with_context(|| format!("serializing {name}"))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// `<target>/<task>/<seed>-<unix seconds>`, created.
pub fn work_dir(task: &str, seed: u64) -> Result<PathBuf> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default();
    let dir = build::target_dir()?
        .join(task)
        .join(format!("{seed}-{seconds}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Prints a run's report, and the nodes' last log lines when the run failed or could not
/// finish; `Ok(passed)`, or the run's error saying where the work dir is kept.
pub fn conclude(cluster: &Cluster, work_dir: &Path, run: Result<impl Report>) -> Result<bool> {
    let report = match run {
        Ok(report) => report,
        Err(error) => {
            eprintln!("{}", cluster.log_tails(LOG_TAIL_LINES));
            return Err(error.context(format!("work dir kept: {}", work_dir.display())));
        }
    };
    println!("{}", report.render());
    let passed = report.passed();
    if !passed {
        eprintln!("{}", cluster.log_tails(LOG_TAIL_LINES));
    }
    Ok(passed)
}

/// Removes the work directory when `remove`, else says where it is.
pub fn finish_work_dir(work_dir: &Path, remove: bool) -> Result<()> {
    if remove {
        std::fs::remove_dir_all(work_dir)
            .with_context(|| format!("removing {}", work_dir.display()))?;
        eprintln!("work dir removed (pass --keep to keep it)");
    } else {
        eprintln!("work dir kept: {}", work_dir.display());
    }
    Ok(())
}

/// A seed from the clock, for runs without `--seed`.
pub fn random_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or_default();
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}
