//! `cargo xtask chaos`: the real node binary over real QUIC between network namespaces, under
//! Jepsen-style faults. Builds the namespace network, launches one node per namespace (the
//! same launcher, configs and certificates as `test-cluster`), then runs one stage per
//! nemesis (the same recorded client workload, on keys of the stage's own), heals, times the
//! recovery, and checks every stage's history for linearizability and lost writes, the
//! replicas' state hashes and the nodes' agreement. Everything it sets up is removed on every
//! way out, Ctrl-C included.

mod args;
mod faults;
mod network;
mod plan;
mod probes;
mod stage;
mod summary;

pub use args::ChaosArgs;

use crate::api::Api;
use crate::checks::{self, FinalRead};
use crate::cluster::config::{RaftTimings, SNAPSHOT_LOGS_SINCE_LAST};
use crate::cluster::process::Processes;
use crate::cluster::{Cluster, LaunchSpec, Placement, build};
use crate::report::{CheckResult, Status};
use crate::test_cluster::{conclude, finish_work_dir, random_seed, save_json, work_dir};
use crate::workload::{self, Recorder, WorkloadSpec};
use anyhow::{Context, Result};
use faults::RunState;
use network::Network;
use nodedb_cluster_core::VSHARD_COUNT;
use nodedb_cluster_core::linearizability::History;
use plan::{Nemesis, StagePlan};
use probes::{Recovery, Sweep};
use stage::{Probing, StageRun};
use std::process::ExitCode;
use std::time::Instant;
use summary::{ChaosReport, StageRow};

/// Exit status when chaos cannot run on this machine (not root, tools missing).
const EXIT_CANNOT_RUN: u8 = 2;

/// Runs the task: 0 when every check passed, 1 when one failed or the run broke, 2 when it
/// cannot run here.
pub fn main(args: &ChaosArgs) -> ExitCode {
    if !is_root() {
        eprintln!(
            "chaos needs root (it creates network namespaces and iptables rules): run it as \
             root, e.g. `sudo -E cargo xtask chaos`"
        );
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    if let Err(error) = faults::check_tools() {
        eprintln!("{error:#}");
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("chaos failed:\n{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &ChaosArgs) -> Result<bool> {
    args.validate()?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let binary = build::node_binary(args.node_binary.as_deref(), args.release)?;
    let work_dir = work_dir("chaos", seed)?;
    eprintln!("chaos: seed {seed}, work dir {}", work_dir.display());
    eprintln!(
        "(replay with: cargo xtask chaos --seed {seed} --nemesis {:?} --duration {}s --nodes {})",
        args.nemesis,
        args.duration.as_secs(),
        args.nodes
    );
    let stages = plan::plan(seed, args.nemesis, args.duration, args.nodes, args.groups);
    for stage in &stages {
        for round in &stage.rounds {
            eprintln!("planned {}: {round}", stage.nemesis.name());
        }
    }
    // The spare of a churn stage gets its namespace now and is started when it joins.
    let spares = u64::from(plan::uses_spare(args.nemesis));
    let node_ids: Vec<u64> = (1..=u64::from(args.nodes) + spares).collect();
    // Declared before the cluster, so dropped after it: the nodes die before their network.
    let network = Network::create(&node_ids)?;
    let processes = Processes::new();
    // Installed once this run owns the network, so it never removes another run's.
    processes.kill_on_interrupt_then(&work_dir, || {
        network::remove_leftovers();
    })?;
    let spec = LaunchSpec {
        binary,
        work_dir: work_dir.clone(),
        nodes: args.nodes,
        num_groups: args.groups,
        ready_timeout: crate::cluster::READY_TIMEOUT,
        raft: RaftTimings::for_profile(args.release),
        snapshot_logs_since_last: Some(SNAPSHOT_LOGS_SINCE_LAST),
    };
    let placement = Placement::Hosts(network.hosts());
    let cluster = Cluster::launch_placed(&spec, &processes, &placement).with_context(|| {
        format!(
            "launching the cluster (work dir kept: {})",
            work_dir.display()
        )
    })?;
    let state = RunState::new(network.hosts());
    let run = drive(&cluster, &state, args, seed, &stages);
    let passed = conclude(&cluster, &work_dir, run)?;
    drop(cluster);
    drop(network);
    finish_work_dir(&work_dir, passed && !args.keep)?;
    Ok(passed)
}

/// Every stage, then the checks.
fn drive(
    cluster: &Cluster,
    state: &RunState,
    args: &ChaosArgs,
    seed: u64,
    stages: &[StagePlan],
) -> Result<ChaosReport> {
    let probe_keys = probes::probe_keys();
    let probe_recorder = Recorder::new(Instant::now());
    let probing = Probing {
        keys: &probe_keys,
        recorder: &probe_recorder,
    };
    let mut runs = Vec::new();
    for (index, plan) in stages.iter().enumerate() {
        let workload = WorkloadSpec {
            clients: args.clients,
            first_key: stage_first_key(index, args.keys),
            keys: args.keys,
            seed: seed ^ (index as u64).rotate_left(40),
            nodes: cluster.admin_addrs().into_values().collect(),
        };
        // Every group after each stage; every vShard after the last one.
        let sweep = match index + 1 == stages.len() {
            true => Sweep::EveryVShard,
            false => Sweep::UntilEveryGroup {
                groups: args.groups,
            },
        };
        let run = stage::run(cluster, state, plan, index, &workload, &probing, sweep)
            .with_context(|| format!("stage {}", plan.nemesis.name()))?;
        let name = format!("history-{}.json", plan.nemesis.name());
        save_json(cluster.work_dir(), &name, &run.history)?;
        runs.push(run);
    }
    let probe_history = probe_recorder.history();
    save_json(
        cluster.work_dir(),
        "history-recovery-writes.json",
        &probe_history,
    )?;
    eprintln!("stages done; settling and checking");
    let mut checks = vec![checks::settle(cluster)];
    let (agreement, views) = checks::agreement(cluster);
    checks.push(agreement);
    save_json(cluster.work_dir(), "cluster-views.json", &views)?;
    let mut key_sets: Vec<Vec<String>> = (0..stages.len())
        .map(|index| stage_keys(index, args.keys))
        .collect();
    key_sets.push(probe_keys.clone());
    let mut reads = final_reads(cluster, &key_sets).into_iter();
    let mut rows = Vec::new();
    for ((plan, run), reads) in stages.iter().zip(&runs).zip(reads.by_ref()) {
        let (check, verdict) = linearizable(cluster, plan.nemesis, &run.history, reads)?;
        checks.push(check);
        rows.push(stage_row(plan, run, args.groups, verdict));
    }
    let probe_reads = reads
        .next()
        .expect("one key set per stage and one of probes");
    let (check, _) = linearizable_named(
        cluster,
        "recovery writes kept",
        "recovery-writes",
        &probe_history,
        probe_reads,
    )?;
    checks.push(check);
    checks.push(checks::state_hashes(&views));
    checks.push(no_node_exited(stages, &runs));
    for (plan, run) in stages.iter().zip(&runs) {
        checks.push(recovered(plan.nemesis, &run.recovery));
        if let Some(churn) = &run.churn {
            checks.push(churned(churn));
        }
    }
    Ok(ChaosReport {
        seed,
        nodes: args.nodes,
        groups: args.groups,
        stages: rows,
        checks,
    })
}

/// The index of stage `index`'s first key: every stage has keys of its own, so that its
/// history is checked on its own.
fn stage_first_key(index: usize, keys: u32) -> u32 {
    index as u32 * keys
}

fn stage_keys(index: usize, keys: u32) -> Vec<String> {
    let first = stage_first_key(index, keys);
    (first..first + keys).map(workload::key_name).collect()
}

/// The final linearizable read of every key of every set, the sets in parallel.
fn final_reads(cluster: &Cluster, key_sets: &[Vec<String>]) -> Vec<Result<Vec<FinalRead>, String>> {
    let api = Api::new(workload::REQUEST_TIMEOUT);
    let nodes: Vec<_> = cluster.admin_addrs().into_values().collect();
    std::thread::scope(|scope| {
        let readers: Vec<_> = key_sets
            .iter()
            .map(|keys| scope.spawn(|| checks::final_reads(&nodes, &api, keys)))
            .collect();
        readers
            .into_iter()
            .map(|reader| {
                reader
                    .join()
                    .unwrap_or_else(|_| Err("the final reader panicked".to_string()))
            })
            .collect()
    })
}

/// The checker's row for `nemesis`'s stage, and its status for the stage table.
fn linearizable(
    cluster: &Cluster,
    nemesis: Nemesis,
    history: &History,
    reads: Result<Vec<FinalRead>, String>,
) -> Result<(CheckResult, Status)> {
    let name = match nemesis {
        Nemesis::Partition => "linearizable (partition)",
        Nemesis::Kill => "linearizable (kill)",
        Nemesis::Pause => "linearizable (pause)",
        Nemesis::Lossy => "linearizable (lossy)",
        Nemesis::Churn => "linearizable (churn)",
        Nemesis::Combined => "linearizable (combined)",
    };
    linearizable_named(cluster, name, nemesis.name(), history, reads)
}

fn linearizable_named(
    cluster: &Cluster,
    name: &'static str,
    file_stem: &str,
    history: &History,
    reads: Result<Vec<FinalRead>, String>,
) -> Result<(CheckResult, Status)> {
    let reads = match reads {
        Ok(reads) => reads,
        Err(why) => {
            let row = CheckResult::fail(name, format!("final reads: {why}"));
            return Ok((row, Status::Fail));
        }
    };
    eprintln!("checking {name}: {} operations ...", history.len());
    let (mut row, full) = checks::linearizable(history, reads);
    row.name = name;
    let path = cluster
        .work_dir()
        .join(format!("linearizability-{file_stem}.txt"));
    std::fs::write(&path, full).with_context(|| format!("writing {}", path.display()))?;
    let status = row.status;
    Ok((row, status))
}

fn recovered(nemesis: Nemesis, recovery: &Recovery) -> CheckResult {
    let name = match nemesis {
        Nemesis::Partition => "recovered (partition)",
        Nemesis::Kill => "recovered (kill)",
        Nemesis::Pause => "recovered (pause)",
        Nemesis::Lossy => "recovered (lossy)",
        Nemesis::Churn => "recovered (churn)",
        Nemesis::Combined => "recovered (combined)",
    };
    match recovery {
        Recovery::Recovered {
            every_group,
            every_vshard,
        } => {
            let mut detail = format!(
                "healed -> every group acknowledged a write in {} ms",
                every_group.as_millis()
            );
            if let Some(every_vshard) = every_vshard {
                detail.push_str(&format!(
                    ", all {VSHARD_COUNT} vShards in {} ms",
                    every_vshard.as_millis()
                ));
            }
            CheckResult::pass(name, detail)
        }
        Recovery::Stuck {
            unwritten,
            last_error,
        } => CheckResult::fail(
            name,
            format!(
                "{} vShards refused writes until {:?} after the heal (first {:?}); last error: \
                 {last_error}",
                unwritten.len(),
                probes::RECOVERY_TIMEOUT,
                &unwritten[..unwritten.len().min(8)]
            ),
        ),
    }
}

/// Fails unless every join of the stage ended Active and every decommission Decommissioned
/// with the node stopped by itself.
fn churned(churn: &faults::ChurnOutcome) -> CheckResult {
    const NAME: &str = "joined and decommissioned";
    match churn.failed.is_empty() {
        true => CheckResult::pass(NAME, churn.done.join("; ")),
        false => CheckResult::fail(NAME, churn.failed.join("; ")),
    }
}

/// Fails when a node was found dead that no fault had killed (a crash under faults).
fn no_node_exited(stages: &[StagePlan], runs: &[StageRun]) -> CheckResult {
    const NAME: &str = "no node exited by itself";
    let exits: Vec<String> = stages
        .iter()
        .zip(runs)
        .filter(|(_, run)| !run.exited_by_themselves.is_empty())
        .map(|(plan, run)| {
            format!(
                "{} stage: nodes {:?} (see their logs)",
                plan.nemesis.name(),
                run.exited_by_themselves
            )
        })
        .collect();
    match exits.is_empty() {
        true => CheckResult::pass(NAME, "every node ran until killed or the end"),
        false => CheckResult::fail(NAME, exits.join("; ")),
    }
}

fn stage_row(plan: &StagePlan, run: &StageRun, groups: u32, verdict: Status) -> StageRow {
    StageRow {
        nemesis: plan.nemesis.name(),
        faults: run.faults_applied,
        load: run.load,
        counts: run.counts,
        longest: summary::longest_unavailability(&run.writes, groups, run.load),
        recovery: run.recovery.clone(),
        verdict,
    }
}

/// Whether this process runs with effective user id 0 (from `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_uid(&status))
        == Some(0)
}

/// The effective uid of a `/proc/<pid>/status` text (`Uid: real effective saved fs`).
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_uid_is_the_second_number() {
        assert_eq!(effective_uid("Name:\tx\nUid:\t1000\t0\t0\t0\n"), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn stages_have_disjoint_keys() {
        let first = stage_keys(0, 200);
        let second = stage_keys(1, 200);
        assert_eq!(first.len(), 200);
        assert_eq!(first[0], "k00000");
        assert_eq!(second[0], "k00200");
        assert!(first.iter().all(|key| !second.contains(key)));
    }
}
