//! Measures what idle groups cost: 3 nodes over the in-memory transport host `GROUPS` groups
//! (first argument, default 32) with no client traffic; prints Raft messages per second and
//! process CPU time per second, in total and per group. Idle groups quiesce (stop heartbeats
//! and election timers) and are measured once they have; with `awake` as second argument
//! quiescence is off, and every group runs its own heartbeats, so that both numbers grow
//! linearly with the group count.
//!
//! `cargo run --release -p nodedb-cluster-raft --example idle_cost -- 64 [awake]`

use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::kv::KvStateMachine;
use nodedb_cluster_raft::log_db::LogDb;
use nodedb_cluster_raft::{MultiRaft, RaftTimings, Role};
use nodedb_cluster_transport::{MemoryNetwork, Transport};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: u64 = 3;
const MEASURE: Duration = Duration::from_secs(5);
const ELECTION_WAIT_POLLS_MAX: usize = 1000;
const QUIET_WAIT_POLLS_MAX: usize = 1500;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let groups: u32 = std::env::args()
        .nth(1)
        .map(|arg| arg.parse())
        .transpose()?
        .unwrap_or(32);
    let awake = match std::env::args().nth(2).as_deref() {
        None => false,
        Some("awake") => true,
        Some(other) => anyhow::bail!("second argument must be `awake`, got `{other}`"),
    };
    let root = tempfile::tempdir()?;
    let network = MemoryNetwork::new(7);
    let timings = RaftTimings {
        quiesce_after_ms: if awake {
            0
        } else {
            RaftTimings::default().quiesce_after_ms
        },
        ..RaftTimings::default()
    };
    let mut nodes = Vec::new();
    for id in 1..=NODES {
        let node = NodeId(id);
        let dir = root.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&dir)?;
        let log = LogDb::open(&dir.join("raft-log.redb"))?;
        let transport = network.register(node)?;
        let multi = MultiRaft::new(
            node,
            transport.clone() as Arc<dyn Transport>,
            log.clone(),
            dir,
            timings,
        )?;
        transport.set_handler(multi.handler());
        nodes.push((multi, log));
    }
    let members: BTreeMap<NodeId, String> = (1..=NODES)
        .map(|id| (NodeId(id), format!("127.0.0.1:{}", 9400 + id)))
        .collect();
    for group in (1..=groups).map(GroupId) {
        for (position, (multi, _)) in nodes.iter().enumerate() {
            let initial = (position == 0).then(|| members.clone());
            multi
                .create_group(group, Box::new(KvStateMachine::new()), initial)
                .await?;
        }
    }
    for _ in 0..ELECTION_WAIT_POLLS_MAX {
        let led = (1..=groups)
            .filter(|group| {
                nodes.iter().any(|(multi, _)| {
                    multi
                        .status(GroupId(*group))
                        .is_some_and(|status| status.role == Role::Leader)
                })
            })
            .count();
        if led == groups as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !awake {
        let waiting = Instant::now();
        let replicas = groups as usize * nodes.len();
        let mut quiet = 0;
        for _ in 0..QUIET_WAIT_POLLS_MAX {
            quiet = nodes
                .iter()
                .flat_map(|(multi, _)| (1..=groups).filter_map(|g| multi.status(GroupId(g))))
                .filter(|status| status.quiesced)
                .count();
            if quiet == replicas {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "{quiet} of {replicas} replicas quiet after {:.1} s",
            waiting.elapsed().as_secs_f64()
        );
    }

    let messages_before = network.stats().sent;
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    tokio::time::sleep(MEASURE).await;
    let seconds = started.elapsed().as_secs_f64();
    let messages = (network.stats().sent - messages_before) as f64 / seconds;
    let cpu = cpu_before
        .zip(process_cpu_seconds())
        .map(|(before, after)| (after - before) / seconds);
    println!(
        "{groups} idle groups x {NODES} replicas, heartbeat {} ms, {}",
        timings.heartbeat_interval_ms,
        if awake {
            "quiescence off".to_owned()
        } else {
            format!("quiet after {} ms", timings.quiesce_after_ms)
        }
    );
    println!(
        "messages/s: {messages:.0} total, {:.1} per group",
        messages / f64::from(groups)
    );
    match cpu {
        Some(cpu) => println!(
            "cpu: {:.1}% of one core total, {:.2}% per node, {:.4}% per group",
            cpu * 100.0,
            cpu * 100.0 / NODES as f64,
            cpu * 100.0 / f64::from(groups)
        ),
        None => println!("cpu: not measurable on this platform"),
    }
    for (multi, log) in nodes {
        multi.shutdown().await;
        log.shutdown();
    }
    Ok(())
}

/// User + system CPU seconds of this process, from `/proc/self/stat` where available.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
    Some((user + system) / CLOCK_TICKS_PER_SECOND)
}
