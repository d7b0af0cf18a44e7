//! One stage of `chaos`: the client workload on the stage's own keys for the stage's length
//! while its rounds switch faults on and off, then everything healed, the clients stopped,
//! and the recovery probe timed; after a churn stage, the joins and decommissions are waited
//! for.

use super::faults::{self, Applied, ChurnOutcome, RunState};
use super::plan::StagePlan;
use super::probes::{self, Recovery, Sweep};
use crate::cluster::Cluster;
use crate::nemesis::sleep_until;
use crate::progress;
use crate::workload::{self, Counts, GroupWrite, Recorder, WorkloadSpec};
use anyhow::{Context, Result, anyhow};
use nodedb_cluster_core::linearizability::History;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What one stage did and recorded.
#[derive(Debug)]
pub struct StageRun {
    pub history: History,
    pub counts: Counts,
    /// Acknowledged writes by group, on the stage's clock.
    pub writes: Vec<GroupWrite>,
    pub load: Duration,
    /// Faults carried out (a fault whose target was not found is left out).
    pub faults_applied: usize,
    /// Nodes found not running at the end of the stage though no fault had them down.
    pub exited_by_themselves: Vec<u64>,
    pub recovery: Recovery,
    /// How the stage's joins and decommissions ended, if it had any.
    pub churn: Option<ChurnOutcome>,
}

/// Shared by every stage: the recovery probe's keys and history.
pub struct Probing<'a> {
    pub keys: &'a [String],
    pub recorder: &'a Recorder,
}

/// Runs stage number `index` of `plan` with the clients of `workload`; after the heal, the
/// probe writers go as far as `sweep` asks.
pub fn run(
    cluster: &Cluster,
    state: &RunState,
    plan: &StagePlan,
    index: usize,
    workload: &WorkloadSpec,
    probing: &Probing<'_>,
    sweep: Sweep,
) -> Result<StageRun> {
    eprintln!(
        "==== stage {}: {}, {:.0}s of load, {} rounds",
        index + 1,
        plan.nemesis.name(),
        plan.length.as_secs_f64(),
        plan.rounds.len()
    );
    let started = Instant::now();
    let recorder = Recorder::new(started);
    let stop = AtomicBool::new(false);
    let phase = Mutex::new(plan.nemesis.name().to_string());
    let (faults_applied, exited_by_themselves) = std::thread::scope(|scope| {
        let mut threads = Vec::new();
        for client in 0..u64::from(workload.clients) {
            let (stop, recorder) = (&stop, &recorder);
            threads
                .push(scope.spawn(move || workload::run_client(client, workload, recorder, stop)));
        }
        threads.push(scope.spawn(|| progress::run(cluster, &recorder, &phase, started, &stop)));
        threads.push(scope.spawn(|| faults::watch_churn(cluster, state, &stop)));
        // Should the rounds fail or panic, the clients must still stop, or the scope never ends.
        let _stop_on_unwind = StopOnDrop(&stop);
        let applied = run_rounds(cluster, state, plan, started, &phase, &stop);
        if applied.is_ok() {
            sleep_until(started + plan.length, &stop);
        }
        let healed =
            faults::heal_everything(cluster, state).context("healing at the end of the stage");
        stop.store(true, Ordering::Relaxed);
        let panicked = threads
            .into_iter()
            .map(|thread| thread.join())
            .filter(Result::is_err)
            .count();
        if panicked > 0 {
            return Err(anyhow!("{panicked} workload threads panicked"));
        }
        Ok((applied?, healed?))
    })?;
    let load = started.elapsed();
    eprintln!("  load done; probing the vShards ({sweep:?})");
    let nodes: Vec<_> = cluster.admin_addrs().into_values().collect();
    let recovery = probes::write_vshards(&nodes, probing.keys, probing.recorder, index, sweep);
    match &recovery {
        Recovery::Recovered {
            every_group,
            every_vshard,
        } => {
            eprintln!(
                "  recovered: every group acknowledged a write {every_group:.1?} after the heal"
            );
            if let Some(every_vshard) = every_vshard {
                eprintln!("  every vShard acknowledged a write {every_vshard:.1?} after the heal");
            }
        }
        Recovery::Stuck {
            unwritten,
            last_error,
        } => eprintln!(
            "  NOT recovered within {:?}: {} vShards unwritten; {last_error}",
            probes::RECOVERY_TIMEOUT,
            unwritten.len(),
        ),
    }
    let churn = faults::settle_churn(cluster, state);
    if let Some(churn) = &churn {
        for done in &churn.done {
            eprintln!("  churn: {done}");
        }
        for failed in &churn.failed {
            eprintln!("  churn FAILED: {failed}");
        }
    }
    Ok(StageRun {
        churn,
        history: recorder.history(),
        counts: recorder.counters.snapshot(),
        writes: recorder.writes(),
        load,
        faults_applied,
        exited_by_themselves,
        recovery,
    })
}

/// Switches every round's faults on at its time and off after its active time; returns how
/// many faults were carried out.
fn run_rounds(
    cluster: &Cluster,
    state: &RunState,
    plan: &StagePlan,
    started: Instant,
    phase: &Mutex<String>,
    stop: &AtomicBool,
) -> Result<usize> {
    let mut count = 0;
    for round in &plan.rounds {
        if !sleep_until(started + round.at, stop) {
            break;
        }
        let mut applied: Vec<Applied> = Vec::new();
        for fault in &round.faults {
            if let Some(done) =
                faults::apply(cluster, state, fault).with_context(|| format!("{fault}"))?
            {
                eprintln!(
                    "  [{:>5.1}s] on:  {}",
                    started.elapsed().as_secs_f64(),
                    done.description
                );
                applied.push(done);
            }
        }
        count += applied.len();
        let names: Vec<&str> = applied
            .iter()
            .map(|done| done.description.as_str())
            .collect();
        set_phase(
            phase,
            &format!("{}: {}", plan.nemesis.name(), names.join(" + ")),
        );
        sleep_until(started + round.at + round.active, stop);
        for done in applied.iter().rev() {
            faults::undo(cluster, state, done)
                .with_context(|| format!("undoing {}", done.description))?;
            eprintln!(
                "  [{:>5.1}s] off: {}",
                started.elapsed().as_secs_f64(),
                done.description
            );
        }
        set_phase(phase, &format!("{}: quiet", plan.nemesis.name()));
    }
    Ok(count)
}

/// Sets its flag when dropped, on every way out of a scope.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn set_phase(phase: &Mutex<String>, text: &str) {
    let mut phase = phase
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *phase = text.to_string();
}
