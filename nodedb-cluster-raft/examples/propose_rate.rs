//! Measures proposal throughput and latency on 3 nodes over the in-memory transport with real
//! redb log files: `CLIENTS` concurrent clients (first argument, default 1) spread over `GROUPS`
//! groups (second argument, default 1) whose leaders are spread over the nodes; each client
//! puts `PROPOSALS` keys through its group's leader. Every acknowledged put is fsynced on a
//! quorum. To put the latency beside what the disk costs, it first times one fsync of a small
//! write and one durable append to a fresh log file (a redb transaction) on the same disk, each
//! alone and three at once (the second of three to finish is what a quorum of three replicas
//! sharing the disk waits for).
//!
//! `cargo run --release -p nodedb-cluster-raft --example propose_rate -- 64 8`
//! (`RUST_LOG=openraft=debug` shows openraft's trace.)

use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::kv::{KvCommand, KvStateMachine};
use nodedb_cluster_raft::log_db::LogDb;
use nodedb_cluster_raft::{MultiRaft, RaftTimings, Role};
use nodedb_cluster_transport::{MemoryNetwork, Transport};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: u64 = 3;
const PROPOSALS: u64 = 500;
const DISK_SAMPLES: usize = 200;
const LEADER_WAIT_POLLS_MAX: usize = 1000;
const LEADER_WAIT_POLL: Duration = Duration::from_millis(20);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let clients: u64 = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(1);
    let groups: u32 = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(1);
    anyhow::ensure!(
        clients >= 1 && groups >= 1,
        "clients and groups must be >= 1"
    );
    let root = tempfile::tempdir()?;
    let disk = disk_costs(root.path()).await?;

    let network = MemoryNetwork::new(9);
    let mut nodes = Vec::new();
    for id in 1..=NODES {
        let dir = root.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&dir)?;
        let log = LogDb::open(&dir.join("raft-log.redb"))?;
        let transport = network.register(NodeId(id))?;
        let multi = MultiRaft::new(
            NodeId(id),
            transport.clone() as Arc<dyn Transport>,
            log.clone(),
            dir,
            RaftTimings::default(),
        )?;
        transport.set_handler(multi.handler());
        nodes.push((multi, log));
    }
    let members: BTreeMap<NodeId, String> = (1..=NODES)
        .map(|id| (NodeId(id), format!("127.0.0.1:{}", 9400 + id)))
        .collect();
    let group_ids: Vec<GroupId> = (1..=groups).map(GroupId).collect();
    for &group in &group_ids {
        for (position, (multi, _)) in nodes.iter().enumerate() {
            let initial = (position == 0).then(|| members.clone());
            multi
                .create_group(group, Box::new(KvStateMachine::new()), initial)
                .await?;
        }
    }
    let multis: Vec<MultiRaft> = nodes.iter().map(|(multi, _)| multi.clone()).collect();
    let mut leaders = Vec::new();
    for (position, &group) in group_ids.iter().enumerate() {
        let wanted = NodeId(position as u64 % NODES + 1);
        leaders.push(spread_leader(&multis, group, wanted).await?);
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let position = (client % u64::from(groups)) as usize;
        let (group, leader) = (group_ids[position], leaders[position].clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in 0..PROPOSALS {
                let key = format!("c{client}-{i}").into_bytes();
                let command = KvCommand::Put {
                    key,
                    value: vec![7; 100],
                }
                .encode();
                let sent = Instant::now();
                leader.propose(group, command).await?;
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let p50 = percentile(&latencies, 0.5);
    println!(
        "{clients} clients over {groups} groups x {PROPOSALS} puts of 100 bytes: {:.0} proposals/s, \
         latency p50 {:.2} ms p99 {:.2} ms; disk p50: fsync {:.3} ms (second of three at once {:.3} ms), \
         durable log append {:.3} ms (second of three at once {:.3} ms); commit p50 = {:.1}x fsync, \
         {:.1}x durable append, {:.1}x the second of three appends",
        latencies.len() as f64 / seconds,
        millis(p50),
        millis(percentile(&latencies, 0.99)),
        millis(disk.fsync),
        millis(disk.fsync_quorum),
        millis(disk.append),
        millis(disk.append_quorum),
        p50.as_secs_f64() / disk.fsync.as_secs_f64(),
        p50.as_secs_f64() / disk.append.as_secs_f64(),
        p50.as_secs_f64() / disk.append_quorum.as_secs_f64(),
    );
    for (multi, log) in nodes {
        multi.shutdown().await;
        log.shutdown();
    }
    Ok(())
}

/// Makes `wanted` the leader of `group` (or keeps whoever leads if the transfer does not take)
/// and returns the leader's handle.
async fn spread_leader(
    multis: &[MultiRaft],
    group: GroupId,
    wanted: NodeId,
) -> anyhow::Result<MultiRaft> {
    let mut asked = false;
    for poll in 0..LEADER_WAIT_POLLS_MAX {
        let leader = multis.iter().find(|multi| {
            multi
                .status(group)
                .is_some_and(|status| status.role == Role::Leader)
        });
        if let Some(leader) = leader {
            if leader.node() == wanted || poll + 1 == LEADER_WAIT_POLLS_MAX {
                return Ok(leader.clone());
            }
            if !asked {
                asked = leader.transfer_leader(group, wanted).await.is_ok();
            }
        }
        tokio::time::sleep(LEADER_WAIT_POLL).await;
    }
    anyhow::bail!("{group}: no leader elected")
}

/// What the disk costs, as medians: one fsync of a small write and one durable append to a
/// fresh log file (a redb transaction), each alone and as the second to finish of three issued
/// at once, which is what a quorum of three replicas sharing this disk waits for.
struct DiskCosts {
    fsync: Duration,
    fsync_quorum: Duration,
    append: Duration,
    append_quorum: Duration,
}

async fn disk_costs(dir: &Path) -> anyhow::Result<DiskCosts> {
    let fsync_files = (0..NODES)
        .map(|replica| std::fs::File::create(dir.join(format!("fsync-probe-{replica}"))))
        .collect::<std::io::Result<Vec<_>>>()?;
    let fsync = median(
        (0..DISK_SAMPLES)
            .map(|_| timed_fsync(&fsync_files[0]))
            .collect(),
    )?;
    let fsync_quorum = median(
        (0..DISK_SAMPLES)
            .map(|_| fsync_quorum(&fsync_files))
            .collect(),
    )?;
    let solo = LogDb::open(&dir.join("append-probe.redb"))?;
    let trio = (0..NODES)
        .map(|replica| LogDb::open(&dir.join(format!("append-probe-{replica}.redb"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut appends = Vec::with_capacity(DISK_SAMPLES);
    let mut quorums = Vec::with_capacity(DISK_SAMPLES);
    for index in 1..=DISK_SAMPLES as u64 {
        appends.push(timed_append(&solo, index).await);
        let at_once = futures::future::join_all(trio.iter().map(|log| timed_append(log, index)));
        quorums.push(
            at_once
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()
                .map(second_to_finish),
        );
    }
    for log in trio.into_iter().chain([solo]) {
        log.shutdown();
    }
    Ok(DiskCosts {
        fsync,
        fsync_quorum,
        append: median(appends)?,
        append_quorum: median(quorums)?,
    })
}

fn timed_fsync(file: &std::fs::File) -> anyhow::Result<Duration> {
    let mut file = file;
    file.write_all(&[7; 128])?;
    let started = Instant::now();
    file.sync_data()?;
    Ok(started.elapsed())
}

/// Three small writes and fsyncs, one per file on its own thread, released at once.
fn fsync_quorum(files: &[std::fs::File]) -> anyhow::Result<Duration> {
    let start = std::sync::Barrier::new(files.len());
    let finished = std::thread::scope(|scope| {
        let threads: Vec<_> = files
            .iter()
            .map(|file| {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    timed_fsync(file)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("fsync probe thread"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(second_to_finish(finished))
}

async fn timed_append(log: &LogDb, index: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    log.append_durable(GroupId(1), vec![(index, vec![7; 128])])
        .await?;
    Ok(started.elapsed())
}

fn second_to_finish(mut durations: Vec<Duration>) -> Duration {
    durations.sort();
    durations[1]
}

fn median(samples: Vec<anyhow::Result<Duration>>) -> anyhow::Result<Duration> {
    let mut durations = samples.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    durations.sort();
    Ok(percentile(&durations, 0.5))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
