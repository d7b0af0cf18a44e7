//! The node lifecycle in one process over the in-memory network: five nodes started at once,
//! joins through a dead seed and through a follower, a repeated join, a join that reuses a
//! member's id from another address, the decommission of a node that stays silent, and the
//! applied metadata kept in the catalog for a restart.

mod memory_cluster;

use memory_cluster::{WAIT, config, eventually, start, start_three};
use nodedb_cluster_catalog::Catalog;
use nodedb_cluster_core::{METADATA_GROUP, MetadataState, NodeId, NodeInfo, NodeState, PeerAddr};
use nodedb_cluster_node::cluster::{Cluster, StartError, start_cluster_on};
use nodedb_cluster_node::control::{ControlError, ControlRequest, ControlResponse};
use nodedb_cluster_node::mux::{Channel, Multiplexer};
use nodedb_cluster_node::node_service::NodeService;
use nodedb_cluster_node::service::{ClusterService, ReadConsistency};
use nodedb_cluster_transport::{Bytes, MemoryNetwork};
use std::net::SocketAddr;
use std::time::Duration;

/// True when every data group has three voters, none of them `absent`, and no learner left.
fn fully_replicated(cluster: &Cluster, absent: Option<NodeId>) -> bool {
    let metadata = cluster.metadata();
    let applied = metadata.borrow();
    let Some(routing) = applied.state.routing() else {
        return false;
    };
    routing.data_groups().all(|group| {
        routing.members(group).is_some_and(|members| {
            members.voters.len() == 3
                && members.learners.is_empty()
                && members.voters.iter().all(|node| Some(*node) != absent)
        })
    })
}

fn node_state(cluster: &Cluster, node: u64) -> Option<NodeState> {
    cluster
        .metadata()
        .borrow()
        .state
        .topology()
        .state_of(NodeId(node))
}

fn metadata_leader(cluster: &Cluster) -> Option<NodeId> {
    cluster
        .raft()
        .status(METADATA_GROUP)
        .and_then(|status| status.leader)
}

/// Writes `key` through `writer` and reads it back through `reader`.
/// Voters and learners of the metadata group as `cluster`'s replica sees them, outside a joint
/// configuration.
fn metadata_members(cluster: &Cluster) -> Option<(usize, usize)> {
    let status = cluster.raft().status(METADATA_GROUP)?;
    (!status.joint).then_some((status.voters.len(), status.learners.len()))
}

async fn write_and_read(writer: &Cluster, reader: &Cluster, key: &str) {
    let writer = NodeService::new(writer.clone());
    eventually("a write to be acknowledged", || {
        let writer = writer.clone();
        async move { writer.kv_put(key.into(), b"v".to_vec()).await.is_ok() }
    })
    .await;
    let reader = NodeService::new(reader.clone());
    assert_eq!(
        reader
            .kv_get(key.into(), ReadConsistency::Linearizable)
            .await
            .unwrap(),
        Some(b"v".to_vec()),
        "{key} read back"
    );
}

async fn full_three(network: &MemoryNetwork, data: &std::path::Path) -> [Cluster; 3] {
    let nodes = start_three(network, data).await;
    eventually("full replication on three nodes", || async {
        fully_replicated(&nodes[0], None)
            && (1..=3).all(|node| node_state(&nodes[0], node) == Some(NodeState::Active))
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_started_at_once_form_one_cluster() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(31);
    let seeds = [1, 2, 3, 4, 5];
    let (n5, n3, n1, n4, n2) = tokio::join!(
        start(&network, config(5, &seeds, data.path())),
        start(&network, config(3, &seeds, data.path())),
        start(&network, config(1, &seeds, data.path())),
        start(&network, config(4, &seeds, data.path())),
        start(&network, config(2, &seeds, data.path())),
    );
    let nodes = [n1, n2, n3, n4, n5];
    let cluster_ids: Vec<_> = nodes
        .iter()
        .map(|cluster| cluster.metadata().borrow().state.cluster_id())
        .collect();
    assert!(cluster_ids[0].is_some());
    assert!(
        cluster_ids.iter().all(|id| *id == cluster_ids[0]),
        "one cluster: {cluster_ids:?}"
    );
    eventually("five Active nodes and three voters per group", || async {
        nodes.iter().all(|cluster| {
            (1..=5).all(|node| node_state(cluster, node) == Some(NodeState::Active))
                && fully_replicated(cluster, None)
        })
    })
    .await;
    eventually("every node to follow the metadata group", || async {
        nodes
            .iter()
            .all(|cluster| cluster.raft().groups().contains(&METADATA_GROUP))
    })
    .await;
    eventually("five metadata voters", || async {
        nodes
            .iter()
            .all(|cluster| metadata_members(cluster) == Some((5, 0)))
    })
    .await;
    write_and_read(&nodes[4], &nodes[0], "five").await;
    for cluster in &nodes {
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_while_the_first_seed_is_dead() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(32);
    let [first, second, third] = full_three(&network, data.path()).await;
    first.shutdown().await;
    network.crash(first.node());

    // Node 1 is the first seed of the list and gone; if it led group 0, the join also waits
    // for a new metadata leader.
    let fourth = start(&network, config(4, &[1, 2, 3], data.path())).await;
    assert!(fourth.is_member());
    eventually("the new node to be Active", || async {
        node_state(&second, 4) == Some(NodeState::Active)
    })
    .await;
    write_and_read(&fourth, &third, "after-join").await;
    for cluster in [&second, &third, &fourth] {
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_sent_to_a_follower_reaches_the_metadata_leader() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(33);
    let nodes = full_three(&network, data.path()).await;
    let leader = metadata_leader(&nodes[0]).expect("a metadata leader");
    let follower = nodes
        .iter()
        .find(|cluster| cluster.node() != leader)
        .unwrap();
    assert_ne!(metadata_leader(follower), Some(follower.node()));

    // The follower is the only seed: the join must be forwarded by it.
    let fourth = start(&network, config(4, &[follower.node().0], data.path())).await;
    assert!(fourth.is_member());
    eventually("the new node to be Active and hold replicas", || async {
        node_state(&nodes[0], 4) == Some(NodeState::Active)
            && nodes[0]
                .metadata()
                .borrow()
                .state
                .routing()
                .is_some_and(|routing| !routing.groups_holding_node(NodeId(4)).is_empty())
    })
    .await;
    // Four nodes: three metadata voters, and the fourth node follows as a learner.
    eventually("three metadata voters and one learner", || async {
        nodes
            .iter()
            .chain([&fourth])
            .all(|cluster| metadata_members(cluster) == Some((3, 1)))
    })
    .await;
    write_and_read(&nodes[0], &fourth, "via-follower").await;
    for cluster in nodes.iter().chain([&fourth]) {
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_join_is_idempotent_and_a_moved_id_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(34);
    let nodes = full_three(&network, data.path()).await;
    let cluster_id = nodes[0].metadata().borrow().state.cluster_id().unwrap();

    // A joiner whose first answer was lost asks again: the same answer, one member.
    let seed: SocketAddr = "127.0.0.1:19002".parse().unwrap();
    let joiner = NodeId(5);
    network.set_addr(joiner, "127.0.0.1:19005".parse().unwrap());
    let control = Multiplexer::new(network.register(joiner).unwrap()).channel(Channel::Control);
    let info = |addr: &str| NodeInfo {
        id: joiner,
        addr: PeerAddr::parse(addr).unwrap(),
        admin_addr: PeerAddr::parse("127.0.0.1:29005").unwrap(),
        state: NodeState::Joining,
    };
    let join = |node: NodeInfo| {
        let control = control.clone();
        async move {
            let request = ControlRequest::Join {
                node,
                forwarded: false,
            };
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let (_, answer) = control
                    .call_addr(seed, Bytes::from(request.encode()), Duration::from_secs(5))
                    .await
                    .unwrap();
                match ControlResponse::decode(&answer).unwrap() {
                    // A forward that met a leader change: the joiner retries.
                    ControlResponse::Refused(
                        ControlError::NotLeader { .. } | ControlError::Unavailable { .. },
                    ) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => return other,
                }
            }
        }
    };
    for _ in 0..2 {
        assert_eq!(
            join(info("127.0.0.1:19005")).await,
            ControlResponse::Joined { cluster_id }
        );
    }
    eventually("one entry for the joiner, a learner of group 0", || async {
        let metadata = nodes[0].metadata();
        let applied = metadata.borrow();
        let entries = applied
            .state
            .topology()
            .nodes()
            .filter(|node| node.id == joiner)
            .count();
        entries == 1
            && applied.state.topology().get(joiner).unwrap().addr.as_str() == "127.0.0.1:19005"
    })
    .await;
    let moved = join(info("127.0.0.1:19055")).await;
    assert!(
        matches!(moved, ControlResponse::Refused(ControlError::Invalid(_))),
        "the same id from another address: {moved:?}"
    );

    // A whole node started with a member's id at another address stops with the refusal.
    let mut impostor = config(3, &[1, 2], &data.path().join("impostor"));
    impostor.listen_addr = "127.0.0.1:19033".parse().unwrap();
    network.set_addr(NodeId(33), impostor.listen_addr);
    let transport = network.register(NodeId(33)).unwrap();
    let refused = tokio::time::timeout(WAIT, start_cluster_on(impostor, transport))
        .await
        .expect("the refusal is final, not retried");
    match refused {
        Err(StartError::Join { last_error, .. }) => {
            assert!(last_error.contains("refused"), "{last_error}")
        }
        other => panic!("a member's id from another address must be refused: {other:?}"),
    }
    assert_eq!(
        nodes[0]
            .metadata()
            .borrow()
            .state
            .topology()
            .get(NodeId(3))
            .unwrap()
            .addr
            .as_str(),
        "127.0.0.1:19003",
        "the member keeps its address"
    );
    for cluster in &nodes {
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_draining_node_is_still_decommissioned() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(35);
    let [first, second, third] = full_three(&network, data.path()).await;
    let fourth = start(&network, config(4, &[1, 2, 3], data.path())).await;
    let nodes = [first, second, third, fourth];
    eventually("full replication on four nodes", || async {
        fully_replicated(&nodes[0], None)
            && (1..=4).all(|node| node_state(&nodes[0], node) == Some(NodeState::Active))
    })
    .await;
    NodeService::new(nodes[0].clone())
        .kv_put("kept".into(), b"v".to_vec())
        .await
        .unwrap();

    let leader = metadata_leader(&nodes[0]).expect("a metadata leader");
    let victim = nodes
        .iter()
        .find(|cluster| cluster.node() != leader)
        .unwrap()
        .clone();
    let survivor = nodes
        .iter()
        .find(|cluster| cluster.node() == leader)
        .unwrap()
        .clone();
    victim.shutdown().await;
    network.crash(victim.node());
    eventually("the dead node to be marked Down", || async {
        node_state(&survivor, victim.node().0) == Some(NodeState::Down)
    })
    .await;

    // Asked to drain while it is silent past the down timeout, and never back: the drain
    // must go on without it, not fall back to Down.
    let service = NodeService::new(survivor.clone());
    service.decommission(victim.node()).await.unwrap();
    assert_eq!(
        node_state(&survivor, victim.node().0),
        Some(NodeState::Draining)
    );
    let deadline = tokio::time::Instant::now() + DECOMMISSION_WAIT;
    let mut metadata = survivor.metadata();
    let mut states = Vec::new();
    loop {
        let state = node_state(&survivor, victim.node().0);
        if states.last() != Some(&state) {
            states.push(state);
        }
        if state == Some(NodeState::Decommissioned) {
            break;
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !remaining.is_zero(),
            "the silent draining node was never decommissioned; states seen: {states:?}"
        );
        let _ = tokio::time::timeout(remaining, metadata.changed()).await;
    }
    assert!(
        !states.contains(&Some(NodeState::Down)),
        "a draining node is never marked Down: {states:?}"
    );
    eventually("every group on three voters without it", || async {
        fully_replicated(&survivor, Some(victim.node()))
    })
    .await;
    assert_eq!(
        service
            .kv_get("kept".into(), ReadConsistency::Linearizable)
            .await
            .unwrap(),
        Some(b"v".to_vec())
    );

    // Back after its Decommissioned record took its group-0 learner away: its own replica
    // of group 0 hears nothing more, yet the node must learn that it is decommissioned.
    network.restart(victim.node());
    let restarted = start(&network, config(victim.node().0, &[1, 2, 3], data.path())).await;
    tokio::time::timeout(DECOMMISSION_WAIT, restarted.wait_decommissioned())
        .await
        .expect("the returning node learns it is decommissioned");
    restarted.shutdown().await;
    for cluster in nodes
        .iter()
        .filter(|cluster| cluster.node() != victim.node())
    {
        cluster.shutdown().await;
    }
}

/// Draining moves a replica of every group and hands over leaderships: slower than the
/// other waits.
const DECOMMISSION_WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applied_metadata_is_kept_in_the_catalog_for_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(36);
    let [first, second, third] = full_three(&network, data.path()).await;
    eventually("the node to have applied full replication", || async {
        fully_replicated(&second, None)
    })
    .await;
    let applied = second.metadata().borrow().clone();
    second.shutdown().await;
    network.crash(second.node());

    // Shutdown wrote the last applied state and closed the catalog.
    let catalog = Catalog::open(data.path().join("node-2"), NodeId(2)).unwrap();
    let (index, saved) = catalog
        .load_metadata::<MetadataState>()
        .unwrap()
        .expect("the applied metadata is saved");
    drop(catalog);
    assert!(
        index >= applied.applied_index,
        "{index} < {}",
        applied.applied_index
    );
    assert_eq!(saved.cluster_id(), applied.state.cluster_id());
    for node in 1..=3 {
        let info = saved.topology().get(NodeId(node)).expect("every member");
        assert_eq!(info.addr.as_str(), format!("127.0.0.1:{}", 19_000 + node));
    }
    let routing = saved.routing().expect("the routing");
    assert!(
        routing.data_groups().all(|group| routing
            .members(group)
            .is_some_and(|members| members.voters.len() == 3)),
        "the routing as applied"
    );

    // The node restarts from its data dir, catalog included, and serves again.
    network.restart(second.node());
    let second = start(&network, config(2, &[1, 2, 3], data.path())).await;
    assert!(second.is_member());
    write_and_read(&first, &second, "after-restart").await;
    for cluster in [&first, &second, &third] {
        cluster.shutdown().await;
    }
}
