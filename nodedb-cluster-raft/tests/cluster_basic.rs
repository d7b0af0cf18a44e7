//! Three nodes over the in-memory transport: elect, propose, read back; one group and several.

mod common;

use common::TestCluster;
use nodedb_cluster_core::{GroupId, NodeId};

const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_elects_commits_and_reads_back() {
    let mut cluster = TestCluster::new(3, 1).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let leader = cluster.wait_leader(group).await;
    assert!(VOTERS.contains(&leader));

    let first = cluster.put(group, "alpha", "1").await;
    let second = cluster.put(group, "beta", "2").await;
    assert!(second.index > first.index);
    assert_eq!(cluster.get(group, "alpha").await.as_deref(), Some("1"));
    assert_eq!(cluster.get(group, "beta").await.as_deref(), Some("2"));
    assert_eq!(cluster.get(group, "gamma").await, None);

    cluster.wait_converged(group).await;
    for node in VOTERS {
        assert_eq!(
            cluster.local_get(node, group, "beta").await.as_deref(),
            Some("2")
        );
        let status = cluster.status(node, group).expect("status");
        assert_eq!(status.voters, VOTERS.to_vec());
        assert_eq!(status.leader, Some(leader));
    }
    let leader_status = cluster.status(leader, group).expect("leader status");
    assert_eq!(leader_status.followers.len(), 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_groups_are_independent() {
    let mut cluster = TestCluster::new(3, 2).await;
    let groups: Vec<GroupId> = (0..4).map(GroupId).collect();
    for group in &groups {
        cluster.create_group(*group, &VOTERS).await;
    }
    for group in &groups {
        cluster.wait_leader(*group).await;
        cluster
            .put(*group, "shared-key", &format!("value-of-{}", group.0))
            .await;
    }
    for group in &groups {
        let expected = format!("value-of-{}", group.0);
        assert_eq!(cluster.get(*group, "shared-key").await, Some(expected));
    }
    assert_eq!(cluster.nodes[&NodeId(2)].multi.groups(), groups);
    cluster.shutdown().await;
}
