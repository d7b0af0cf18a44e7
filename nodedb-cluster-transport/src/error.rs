//! Transport errors. Each variant says whether the request may have reached the peer, because
//! the layers above must tell "definitely failed" from "outcome unknown".

use nodedb_cluster_core::NodeId;
use std::net::SocketAddr;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    /// No address is known for the peer. Nothing was sent.
    #[error("no address known for {node}")]
    UnknownPeer { node: NodeId },
    /// The peer could not be reached (connect or handshake failed). Nothing was delivered.
    #[error("{node} unreachable: {reason}")]
    Unreachable { node: NodeId, reason: String },
    /// Recent calls to the peer failed; calls fail fast until the breaker half-opens.
    /// Nothing was sent.
    #[error("circuit breaker open for {node}")]
    CircuitOpen { node: NodeId },
    /// The deadline passed. The request may or may not have been delivered and handled.
    #[error("request to {node} timed out (outcome unknown)")]
    Timeout { node: NodeId },
    /// The connection broke after the request was sent. Outcome unknown.
    #[error("connection to {node} lost: {reason} (outcome unknown)")]
    ConnectionLost { node: NodeId, reason: String },
    /// The peer's handler answered with an error.
    #[error("{node} answered with an error: {error}")]
    Remote { node: NodeId, error: HandlerError },
    /// The peer sent bytes that do not decode as a valid frame.
    #[error("protocol violation by {node}: {reason}")]
    Protocol { node: NodeId, reason: String },
    /// The payload is larger than the protocol allows. Nothing was sent.
    #[error("payload of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge { bytes: u64, limit: u64 },
    /// Nothing answered at this address (no handshake), or this transport cannot call by
    /// address. Nothing was delivered.
    #[error("{addr} unreachable: {reason}")]
    UnreachableAddr { addr: SocketAddr, reason: String },
    /// This endpoint has been shut down.
    #[error("transport is shut down")]
    Shutdown,
}

impl TransportError {
    /// True when the request may have been delivered and acted on.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            TransportError::Timeout { .. } | TransportError::ConnectionLost { .. }
        )
    }
}

/// An error a [`crate::Handler`] returns; carried back to the caller inside an error frame.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HandlerError {
    /// The receiving node has no handler yet (still starting).
    #[error("receiver not ready")]
    NotReady,
    /// The request could not be decoded by the handler.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Any other failure, described for logs.
    #[error("{0}")]
    Failed(String),
}
