//! Keeps the replicas this node hosts in line with the applied metadata: opens a replica of
//! every data group the routing places on this node, removes the replica of a group that no
//! longer has this node as a member, and keeps the transport's peer addresses current.
//! Replicas opened here never initialize a group; they wait for the group's leader.

use crate::engine::EngineFactory;
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::{AppliedMetadata, MultiRaft};
use nodedb_cluster_transport::Transport;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the replicas are checked again while the metadata stays the same.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Follows the metadata until `stop` turns true.
pub async fn run(
    node: NodeId,
    engine: EngineFactory,
    raft: MultiRaft,
    transport: Arc<dyn Transport>,
    mut metadata: watch::Receiver<AppliedMetadata>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let applied = metadata.borrow_and_update().clone();
        update_peer_addresses(&transport, node, &applied);
        reconcile_replicas(node, &engine, &raft, &applied).await;
        tokio::select! {
            changed = metadata.changed() => if changed.is_err() { return },
            // A replica's own view changes without the metadata changing.
            () = tokio::time::sleep(RECHECK_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

fn update_peer_addresses(transport: &Arc<dyn Transport>, node: NodeId, applied: &AppliedMetadata) {
    for info in applied.state.topology().nodes() {
        if info.id == node {
            continue;
        }
        match info.addr.as_str().parse::<SocketAddr>() {
            Ok(addr) => transport.set_peer_addr(info.id, addr),
            Err(error) => {
                tracing::warn!(peer = %info.id, addr = info.addr.as_str(), %error, "peer address is not ip:port");
            }
        }
    }
}

async fn reconcile_replicas(
    node: NodeId,
    engine: &EngineFactory,
    raft: &MultiRaft,
    applied: &AppliedMetadata,
) {
    let Some(routing) = applied.state.routing() else {
        return;
    };
    let wanted: BTreeSet<GroupId> = routing
        .data_groups()
        .filter(|group| {
            routing
                .members(*group)
                .is_some_and(|members| members.contains(node))
        })
        .collect();
    let hosted: BTreeSet<GroupId> = raft
        .groups()
        .into_iter()
        .filter(|group| !group.is_metadata())
        .collect();
    for group in wanted.difference(&hosted) {
        tracing::info!(%group, "opening a replica placed on this node");
        if let Err(error) = raft.open_group(*group, engine.make(*group)).await {
            tracing::warn!(%group, %error, "could not open replica");
        }
    }
    for group in hosted.difference(&wanted) {
        // A replica whose own view still lists this node is kept (the routing may be behind
        // the group's Raft membership), unless that view is a joint configuration leaving the
        // node out: a removed voter cut off before the final configuration reached it, which
        // nothing would ever tell more.
        let still_member = raft.status(*group).is_some_and(|status| {
            (status.voters.contains(&node) || status.learners.contains(&node)) && !status.leaving
        });
        if still_member {
            continue;
        }
        tracing::info!(%group, "removing a replica this node no longer holds");
        if let Err(error) = raft.remove_group(*group).await {
            tracing::warn!(%group, %error, "could not remove replica");
        }
    }
}
