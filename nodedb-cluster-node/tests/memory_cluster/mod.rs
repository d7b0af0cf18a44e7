//! Whole nodes in one process over the in-memory network: configuration and start-up shared
//! by the tests that run them.
#![allow(dead_code)] // each test file uses a different part of the fixture

use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_node::cluster::{Cluster, ClusterConfig, start_cluster_on};
use nodedb_cluster_node::engine::EngineFactory;
use nodedb_cluster_node::migration::MigrationSettings;
use nodedb_cluster_raft::RaftTimings;
use nodedb_cluster_transport::MemoryNetwork;
use nodedb_cluster_transport::tls::TlsMode;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub const NUM_GROUPS: u32 = 4;
pub const WAIT: Duration = Duration::from_secs(20);

fn quic_addr(node: u64) -> SocketAddr {
    format!("127.0.0.1:{}", 19_000 + node).parse().unwrap()
}

pub fn config(node: u64, seeds: &[u64], data_root: &Path) -> ClusterConfig {
    ClusterConfig {
        node_id: NodeId(node),
        listen_addr: quic_addr(node),
        admin_addr: format!("127.0.0.1:{}", 29_000 + node).parse().unwrap(),
        seeds: seeds.iter().map(|seed| quic_addr(*seed)).collect(),
        bootstrap: false,
        num_groups: NUM_GROUPS,
        replication_factor: 3,
        data_dir: data_root.join(format!("node-{node}")),
        tls: TlsMode::Insecure,
        timings: RaftTimings::for_tests(),
        node_down_timeout: Duration::from_secs(2),
        engine: EngineFactory::kv(),
        migration: MigrationSettings::default(),
    }
}

pub async fn start(network: &MemoryNetwork, config: ClusterConfig) -> Cluster {
    network.set_addr(config.node_id, config.listen_addr);
    let transport = network.register(config.node_id).unwrap();
    start_cluster_on(config, transport).await.unwrap()
}

/// Starts nodes 1, 2 and 3 at the same moment, all with the same seed list.
pub async fn start_three(network: &MemoryNetwork, data_root: &Path) -> [Cluster; 3] {
    start_three_with(network, data_root, |config| config).await
}

/// [`start_three`] with each node's config changed by `change`.
pub async fn start_three_with(
    network: &MemoryNetwork,
    data_root: &Path,
    change: impl Fn(ClusterConfig) -> ClusterConfig,
) -> [Cluster; 3] {
    let seeds = [1, 2, 3];
    let (first, second, third) = tokio::join!(
        start(network, change(config(1, &seeds, data_root))),
        start(network, change(config(2, &seeds, data_root))),
        start(network, change(config(3, &seeds, data_root))),
    );
    [first, second, third]
}

/// True when `cluster` sees every data group on three voters with a known leader.
pub fn fully_replicated(cluster: &Cluster) -> bool {
    let metadata = cluster.metadata();
    let applied = metadata.borrow();
    let Some(routing) = applied.state.routing() else {
        return false;
    };
    (1..=NUM_GROUPS).all(|group| {
        routing
            .members(GroupId(group))
            .is_some_and(|members| members.voters.len() == 3 && members.leader_hint.is_some())
    })
}

/// Polls `check` until it holds, failing the test with `what` after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
