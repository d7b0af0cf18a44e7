//! Outbound connections: one pooled quinn connection per peer, dialed on demand (one dial at a
//! time per peer), replaced when it breaks, guarded by the peer's breaker and reconnect backoff.

use super::breaker::{Admission, BreakerConfig, BreakerState, PeerHealth};
use crate::TransportError;
use crate::tls::node_server_name;
use nodedb_cluster_core::NodeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

/// All known peers.
pub(super) struct Pool {
    breaker: BreakerConfig,
    peers: Mutex<HashMap<NodeId, Peer>>,
}

struct Peer {
    addr: SocketAddr,
    connection: Option<quinn::Connection>,
    health: PeerHealth,
    /// Held while dialing, so concurrent calls share one handshake.
    dialing: Arc<tokio::sync::Mutex<()>>,
}

/// Records a call's outcome in its peer's health exactly once, even if the call is cancelled.
pub(super) struct Outcome<'a> {
    pool: &'a Pool,
    node: NodeId,
    admission: Admission,
    recorded: bool,
}

impl Pool {
    pub(super) fn new(breaker: BreakerConfig) -> Pool {
        Pool {
            breaker,
            peers: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn set_addr(&self, node: NodeId, addr: SocketAddr) {
        let mut peers = self.lock();
        match peers.get_mut(&node) {
            Some(peer) if peer.addr == addr => {}
            Some(peer) => {
                peer.addr = addr;
                if let Some(old) = peer.connection.take() {
                    old.close(quinn::VarInt::from_u32(0), b"peer moved");
                }
            }
            None => {
                peers.insert(
                    node,
                    Peer {
                        addr,
                        connection: None,
                        health: PeerHealth::new(self.breaker),
                        dialing: Arc::new(tokio::sync::Mutex::new(())),
                    },
                );
            }
        }
    }

    pub(super) fn remove(&self, node: NodeId) {
        if let Some(peer) = self.lock().remove(&node)
            && let Some(connection) = peer.connection
        {
            connection.close(quinn::VarInt::from_u32(0), b"peer removed");
        }
    }

    pub(super) fn clear(&self) {
        for (_, peer) in self.lock().drain() {
            if let Some(connection) = peer.connection {
                connection.close(quinn::VarInt::from_u32(0), b"shutdown");
            }
        }
    }

    /// `node` reached us: it is up, so its breaker closes and its reconnect backoff ends, and
    /// the next call to it dials at once instead of failing fast until the breaker's open
    /// period runs out.
    pub(super) fn heard_from(&self, node: NodeId) {
        if let Some(peer) = self.lock().get_mut(&node)
            && !peer.health.is_healthy()
        {
            tracing::debug!(%node, "peer reached us: its breaker closes");
            peer.health.on_success();
        }
    }

    pub(super) fn breaker_state(&self, node: NodeId) -> Option<BreakerState> {
        self.lock().get(&node).map(|peer| peer.health.state())
    }

    /// Asks the breaker whether a call to `node` may start.
    pub(super) fn admit(&self, node: NodeId) -> Result<Admission, TransportError> {
        let mut peers = self.lock();
        let peer = peers
            .get_mut(&node)
            .ok_or(TransportError::UnknownPeer { node })?;
        match peer.health.admit(std::time::Instant::now()) {
            Admission::Reject => Err(TransportError::CircuitOpen { node }),
            admission => Ok(admission),
        }
    }

    /// The live connection to `node`, dialing one if needed. Failing to connect is
    /// `Unreachable`: nothing was sent.
    pub(super) async fn connection(
        &self,
        node: NodeId,
        deadline: Instant,
        endpoint: &quinn::Endpoint,
        client_config: &quinn::ClientConfig,
    ) -> Result<quinn::Connection, TransportError> {
        let dialing = {
            let peers = self.lock();
            let peer = peers
                .get(&node)
                .ok_or(TransportError::UnknownPeer { node })?;
            if let Some(connection) = live(&peer.connection) {
                return Ok(connection);
            }
            Arc::clone(&peer.dialing)
        };
        let _dialing = tokio::time::timeout_at(deadline, dialing.lock())
            .await
            .map_err(|_| unreachable(node, "timed out waiting for a connection attempt"))?;
        let (addr, delay) = {
            let peers = self.lock();
            let peer = peers
                .get(&node)
                .ok_or(TransportError::UnknownPeer { node })?;
            if let Some(connection) = live(&peer.connection) {
                return Ok(connection);
            }
            let admission = if peer.health.state() == BreakerState::HalfOpen {
                Admission::Probe
            } else {
                Admission::Pass
            };
            let delay = peer
                .health
                .reconnect_delay(std::time::Instant::now(), admission);
            (peer.addr, delay)
        };
        if !delay.is_zero() {
            // Reconnect backoff: wait it out if the deadline allows, else give up now.
            if Instant::now() + delay >= deadline {
                return Err(unreachable(node, "reconnect backoff outlasts the deadline"));
            }
            tokio::time::sleep(delay).await;
        }
        let server_name = node_server_name(node);
        let connecting = endpoint
            .connect_with(client_config.clone(), addr, &server_name)
            .map_err(|error| unreachable(node, &format!("cannot dial {addr}: {error}")))?;
        let connection = match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                return Err(unreachable(
                    node,
                    &format!("handshake with {addr}: {error}"),
                ));
            }
            Err(_elapsed) => {
                return Err(unreachable(node, &format!("connect to {addr} timed out")));
            }
        };
        tracing::debug!(%node, %addr, "connected");
        let mut peers = self.lock();
        match peers.get_mut(&node) {
            Some(peer) if peer.addr == addr => {
                peer.connection = Some(connection.clone());
                Ok(connection)
            }
            // Removed or moved while dialing: do not keep a connection to the old address.
            _ => {
                connection.close(quinn::VarInt::from_u32(0), b"peer moved");
                Err(unreachable(node, "peer address changed while connecting"))
            }
        }
    }

    /// Drops the pooled connection if it is this one and it has closed.
    pub(super) fn evict_if_closed(&self, node: NodeId, connection: &quinn::Connection) {
        if connection.close_reason().is_none() {
            return;
        }
        let mut peers = self.lock();
        if let Some(peer) = peers.get_mut(&node)
            && peer
                .connection
                .as_ref()
                .is_some_and(|pooled| pooled.stable_id() == connection.stable_id())
        {
            peer.connection = None;
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<NodeId, Peer>> {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<'a> Outcome<'a> {
    pub(super) fn new(pool: &'a Pool, node: NodeId, admission: Admission) -> Outcome<'a> {
        Outcome {
            pool,
            node,
            admission,
            recorded: false,
        }
    }

    /// Success: any answer from the peer, error answers included. Failure: the peer could not
    /// be reached or the connection broke. Anything else (a timeout on a live connection, a
    /// protocol error) says nothing about reachability.
    pub(super) fn record<T>(&mut self, result: &Result<T, TransportError>) {
        self.recorded = true;
        let mut peers = self.pool.lock();
        let Some(peer) = peers.get_mut(&self.node) else {
            return;
        };
        match result {
            Ok(_) | Err(TransportError::Remote { .. }) => peer.health.on_success(),
            Err(TransportError::Unreachable { .. } | TransportError::ConnectionLost { .. }) => {
                peer.health.on_failure(std::time::Instant::now());
            }
            Err(_) => peer.health.on_neutral(self.admission),
        }
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            let mut peers = self.pool.lock();
            if let Some(peer) = peers.get_mut(&self.node) {
                peer.health.on_neutral(self.admission);
            }
        }
    }
}

fn live(connection: &Option<quinn::Connection>) -> Option<quinn::Connection> {
    connection
        .as_ref()
        .filter(|connection| connection.close_reason().is_none())
        .cloned()
}

fn unreachable(node: NodeId, reason: &str) -> TransportError {
    TransportError::Unreachable {
        node,
        reason: reason.into(),
    }
}
