//! vShard data moves between groups through the log: export from the source leader, import
//! into the target group (a typed `ImportVShard` entry), drop from the source (`DropVShard`).

mod common;

use common::TestCluster;
use nodedb_cluster_core::{GroupId, NodeId, vshard_for_key};

const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vshard_moves_from_one_group_to_another_on_every_replica() {
    let mut cluster = TestCluster::new(3, 31).await;
    let (source, target) = (GroupId(1), GroupId(2));
    cluster.create_group(source, &VOTERS).await;
    cluster.create_group(target, &VOTERS).await;
    for i in 0..60 {
        cluster
            .put(source, &format!("key-{i}"), &format!("{i}"))
            .await;
    }
    let moving = vshard_for_key(b"key-7");
    let moved_keys: Vec<String> = (0..60)
        .map(|i| format!("key-{i}"))
        .filter(|key| vshard_for_key(key.as_bytes()) == moving)
        .collect();
    let staying = (0..60)
        .map(|i| format!("key-{i}"))
        .find(|key| vshard_for_key(key.as_bytes()) != moving)
        .expect("a key of another vShard");

    let source_leader = cluster.wait_leader(source).await;
    let exported = cluster.nodes[&source_leader]
        .multi
        .export_vshard(source, moving)
        .await
        .expect("export");
    let target_leader = cluster.wait_leader(target).await;
    let imported_at = cluster.nodes[&target_leader]
        .multi
        .import_vshard(target, moving, exported)
        .await
        .expect("import");
    assert!(imported_at.0 > 0);
    cluster.nodes[&source_leader]
        .multi
        .drop_vshard(source, moving)
        .await
        .expect("drop");

    cluster.wait_converged(source).await;
    cluster.wait_converged(target).await;
    for node in VOTERS {
        for key in &moved_keys {
            let expected = key.trim_start_matches("key-").to_string();
            assert_eq!(cluster.local_get(node, target, key).await, Some(expected));
            assert_eq!(cluster.local_get(node, source, key).await, None);
        }
        assert!(cluster.local_get(node, source, &staying).await.is_some());
        assert_eq!(cluster.local_get(node, target, &staying).await, None);
    }
    cluster.shutdown().await;
}
