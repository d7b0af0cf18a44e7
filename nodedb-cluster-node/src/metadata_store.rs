//! Keeps the applied metadata (topology with every peer's address, routing, migrations) in the
//! node's catalog, and gives it back on restart, so that a restarted node knows where its peers
//! are before its metadata replica has replayed anything. Writes are batched: at most one per
//! [`SAVE_INTERVAL`], the latest applied state wins; the last one is written on shutdown.

use nodedb_cluster_catalog::{Catalog, CatalogError};
use nodedb_cluster_core::{MetadataState, NodeId};
use nodedb_cluster_raft::AppliedMetadata;
use nodedb_cluster_transport::Transport;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest the catalog lags behind the applied metadata (one write per interval at most).
pub const SAVE_INTERVAL: Duration = Duration::from_millis(500);

/// Saves the applied metadata until `stop` turns true, then saves the last state and returns
/// (dropping its handle on the catalog).
pub async fn run(
    catalog: Arc<Catalog>,
    mut metadata: watch::Receiver<AppliedMetadata>,
    mut stop: watch::Receiver<bool>,
) {
    let mut saved = {
        let catalog = Arc::clone(&catalog);
        tokio::task::spawn_blocking(move || catalog.metadata_applied_index())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .unwrap_or(0)
    };
    loop {
        let mut stopping = tokio::select! {
            changed = metadata.changed() => changed.is_err(),
            _ = stop.wait_for(|stopped| *stopped) => true,
        };
        if !stopping {
            // Batch: whatever applies during the interval goes out in the same write.
            tokio::select! {
                () = tokio::time::sleep(SAVE_INTERVAL) => {}
                _ = stop.wait_for(|stopped| *stopped) => stopping = true,
            }
        }
        let applied = metadata.borrow_and_update().clone();
        save(&catalog, applied, &mut saved).await;
        if stopping {
            return;
        }
    }
}

async fn save(catalog: &Arc<Catalog>, applied: AppliedMetadata, saved: &mut u64) {
    // A replica replaying its log after a restart passes indexes the catalog already has.
    if applied.applied_index <= *saved || !applied.state.is_bootstrapped() {
        return;
    }
    let index = applied.applied_index;
    let catalog = Arc::clone(catalog);
    let written =
        tokio::task::spawn_blocking(move || catalog.save_metadata(index, &*applied.state)).await;
    match written {
        Ok(Ok(())) => *saved = index,
        Ok(Err(error @ CatalogError::MetadataIndexRegressed { .. })) => {
            tracing::debug!(%error, "applied metadata older than the saved one");
        }
        Ok(Err(error)) => tracing::warn!(%error, "could not save the applied metadata"),
        Err(error) => tracing::warn!(%error, "metadata save task failed"),
    }
}

/// The metadata saved before the last stop, if any, with its applied index.
pub fn load(catalog: &Catalog) -> Option<(u64, MetadataState)> {
    match catalog.load_metadata::<MetadataState>() {
        Ok(saved) => saved,
        Err(error) => {
            tracing::warn!(%error, "saved metadata unreadable; waiting for the metadata log");
            None
        }
    }
}

/// Tells `transport` where every other node of `state` listens. Returns how many it learned.
pub fn learn_peer_addresses(
    transport: &Arc<dyn Transport>,
    node: NodeId,
    state: &MetadataState,
) -> usize {
    let mut learned = 0;
    for info in state.topology().nodes().filter(|info| info.id != node) {
        match info.addr.as_str().parse::<SocketAddr>() {
            Ok(addr) => {
                transport.set_peer_addr(info.id, addr);
                learned += 1;
            }
            Err(error) => {
                tracing::warn!(peer = %info.id, addr = info.addr.as_str(), %error, "peer address is not ip:port");
            }
        }
    }
    learned
}
