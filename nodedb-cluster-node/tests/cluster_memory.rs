//! Whole nodes in one process over the in-memory network: bootstrap, join, restart, and the
//! KV store served through any node.

use nodedb_cluster_core::NodeId;
use nodedb_cluster_node::cluster::{Cluster, ClusterConfig, start_cluster_on};
use nodedb_cluster_node::node_service::NodeService;
use nodedb_cluster_node::service::{ClusterService, ReadConsistency};
use nodedb_cluster_raft::RaftTimings;
use nodedb_cluster_transport::MemoryNetwork;
use nodedb_cluster_transport::tls::TlsMode;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const NUM_GROUPS: u32 = 4;
const WAIT: Duration = Duration::from_secs(20);

fn quic_addr(node: u64) -> SocketAddr {
    format!("127.0.0.1:{}", 19_000 + node).parse().unwrap()
}

fn config(node: u64, seeds: &[u64], data_root: &Path) -> ClusterConfig {
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
    }
}

async fn start(network: &MemoryNetwork, config: ClusterConfig) -> Cluster {
    network.set_addr(config.node_id, config.listen_addr);
    let transport = network.register(config.node_id).unwrap();
    start_cluster_on(config, transport).await.unwrap()
}

/// Polls `check` until it holds, failing the test with `what` after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_bootstraps_serves_and_restarts() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(11);
    let cluster = start(&network, config(1, &[], data.path())).await;
    assert!(cluster.is_member());
    let service = NodeService::new(cluster.clone());
    assert!(service.is_ready());
    let receipt = service.kv_put("k1".into(), b"v1".to_vec()).await.unwrap();
    assert!(receipt.index > 0);
    let view = service.cluster().await.unwrap();
    assert_eq!(view.groups.len(), NUM_GROUPS as usize + 1);
    assert_eq!(view.nodes.len(), 1);
    let cluster_id = view.cluster_id.clone();

    cluster.shutdown().await;
    network.crash(NodeId(1));
    network.restart(NodeId(1));
    let cluster = start(&network, config(1, &[], data.path())).await;
    let service = NodeService::new(cluster.clone());
    eventually("the restarted node to serve the old value", || {
        let service = service.clone();
        async move {
            service
                .kv_get("k1".into(), ReadConsistency::Linearizable)
                .await
                == Ok(Some(b"v1".to_vec()))
        }
    })
    .await;
    assert_eq!(
        service.cluster().await.unwrap().cluster_id,
        cluster_id,
        "never re-bootstrapped"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_together_form_one_cluster() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(12);
    let seeds = [1, 2, 3];
    let (first, second, third) = tokio::join!(
        start(&network, config(3, &seeds, data.path())),
        start(&network, config(1, &seeds, data.path())),
        start(&network, config(2, &seeds, data.path())),
    );
    let nodes = [first, second, third];
    for cluster in &nodes {
        assert!(cluster.is_member(), "{} is a member", cluster.node());
    }
    let ids: Vec<String> = nodes
        .iter()
        .map(|cluster| {
            cluster
                .metadata()
                .borrow()
                .state
                .cluster_id()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one cluster: {ids:?}");

    for (round, cluster) in nodes.iter().enumerate() {
        let service = NodeService::new(cluster.clone());
        let key = format!("key-{round}");
        service
            .kv_put(key.clone(), vec![round as u8])
            .await
            .unwrap();
        for reader in &nodes {
            let reader = NodeService::new(reader.clone());
            let value = reader
                .kv_get(key.clone(), ReadConsistency::Linearizable)
                .await
                .unwrap();
            assert_eq!(
                value,
                Some(vec![round as u8]),
                "{key} read through every node"
            );
        }
    }
    for cluster in &nodes {
        cluster.shutdown().await;
    }
}
