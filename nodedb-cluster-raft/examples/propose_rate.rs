//! Measures proposal throughput and latency of one group on 3 nodes over the in-memory
//! transport with real redb log files: `CLIENTS` concurrent clients (first argument, default 1)
//! each put `PROPOSALS` keys through the leader. Every acknowledged put is fsynced on a quorum.
//!
//! `cargo run -p nodedb-cluster-raft --example propose_rate -- 8`

use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::kv::{KvCommand, KvStateMachine};
use nodedb_cluster_raft::log_db::LogDb;
use nodedb_cluster_raft::{MultiRaft, RaftTimings, Role};
use nodedb_cluster_transport::{MemoryNetwork, Transport};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: u64 = 3;
const PROPOSALS: u64 = 500;
const ELECTION_WAIT_POLLS_MAX: usize = 1000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let clients: u64 = std::env::args()
        .nth(1)
        .map(|arg| arg.parse())
        .transpose()?
        .unwrap_or(1);
    let root = tempfile::tempdir()?;
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
    let group = GroupId(1);
    let members: BTreeMap<NodeId, String> = (1..=NODES)
        .map(|id| (NodeId(id), format!("127.0.0.1:{}", 9400 + id)))
        .collect();
    for (position, (multi, _)) in nodes.iter().enumerate() {
        let initial = (position == 0).then(|| members.clone());
        multi
            .create_group(group, Box::new(KvStateMachine::new()), initial)
            .await?;
    }
    let mut leader = None;
    for _ in 0..ELECTION_WAIT_POLLS_MAX {
        leader = nodes.iter().find(|(multi, _)| {
            multi
                .status(group)
                .is_some_and(|status| status.role == Role::Leader)
        });
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = leader
        .ok_or_else(|| anyhow::anyhow!("no leader elected"))?
        .0
        .clone();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let leader = leader.clone();
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
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{clients} clients x {PROPOSALS} puts of 100 bytes: {:.0} proposals/s, latency p50 {:?} p99 {:?}",
        latencies.len() as f64 / seconds,
        percentile(0.5),
        percentile(0.99)
    );
    for (multi, log) in nodes {
        multi.shutdown().await;
        log.shutdown();
    }
    Ok(())
}
