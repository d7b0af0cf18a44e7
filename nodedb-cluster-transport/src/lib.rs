//! Node-to-node transport of the NodeDB cluster: request/response RPC and bulk byte streams
//! between [`NodeId`]s, with deadlines.
//!
//! The [`Transport`] trait is all that the layers above see. Two implementations:
//! QUIC with mutual TLS for real clusters ([`quic::QuicTransport`]), and an in-memory network
//! with a seeded fault plan for deterministic tests ([`MemoryNetwork`], [`MemoryTransport`]).
//!
//! Using it:
//! - Real cluster: make a CA once ([`tls::generate_ca`]), issue one certificate per node
//!   ([`tls::issue_node_cert`]), then on each node
//!   `QuicTransport::bind(QuicConfig { node_id, listen_addr, tls: TlsMode::Secure(material),
//!   timings: QuicTimings::default() })` inside a tokio runtime, `set_handler`, and
//!   `set_peer_addr` for every peer. The peer's node id is taken from its certificate.
//!   Before any id is known (joining through seed addresses), [`Transport::call_addr`] calls
//!   whoever answers at an address and reports the id its certificate names.
//! - Tests: `let network = MemoryNetwork::with_fault_plan(seed, plan)`, one
//!   `network.register(node)` per node, and drive faults with `partition`, `cut`, `isolate`,
//!   `heal`, `crash`, `restart`, `set_fault_plan`. The same seed replays the same faults.
//! - Errors say whether the request may have been handled:
//!   [`TransportError::outcome_unknown`]. The wire layout is in `docs/design.md`,
//!   "Transport frames" ([`codec`]).
//!
//! **Architecture Invariant:** this crate knows nothing of Raft or of what the bytes mean. It
//! moves opaque payloads, authenticates which node sent them, and reports failures as typed
//! errors that say whether the request may have been delivered.

pub mod codec;
mod error;
pub mod memory;
pub mod quic;
mod stream;
pub mod tls;

pub use bytes::Bytes;
pub use error::{HandlerError, TransportError};
pub use memory::{FaultDecision, FaultPlan, MemoryNetwork, MemoryTransport, NetworkStats};
pub use stream::{ChunkSink, ChunkSource, InboundStream, OutboundStream, STREAM_CHUNK_BYTES_MAX};

use nodedb_cluster_core::NodeId;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A boxed, sendable future: keeps [`Transport`] and [`Handler`] object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Largest request or response payload of one RPC. Bulk data goes through streams.
pub const RPC_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Refuses a request payload or stream header larger than [`RPC_PAYLOAD_BYTES_MAX`] before
/// anything is sent.
pub(crate) fn ensure_payload_fits(payload: &Bytes) -> Result<(), TransportError> {
    if payload.len() > RPC_PAYLOAD_BYTES_MAX {
        return Err(TransportError::TooLarge {
            bytes: payload.len() as u64,
            limit: RPC_PAYLOAD_BYTES_MAX as u64,
        });
    }
    Ok(())
}

/// Serves incoming traffic. Implemented by the layer above (the Raft router, the node).
///
/// `from` is authenticated: it comes from the peer's certificate (or, in memory, the sender's
/// endpoint), never from bytes the peer chose.
pub trait Handler: Send + Sync + 'static {
    /// One request, one response.
    fn on_request(
        &self,
        from: NodeId,
        request: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>>;

    /// A bulk stream: a header, then chunks until the sender finishes; the returned bytes are
    /// the single response the sender receives from [`OutboundStream::finish`].
    fn on_stream(
        &self,
        from: NodeId,
        header: Bytes,
        body: InboundStream,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>>;
}

/// Moves requests and streams to other nodes.
pub trait Transport: Send + Sync + 'static {
    /// The node this endpoint speaks for.
    fn local_node(&self) -> NodeId;

    /// Installs the handler for incoming traffic. Until it is set, incoming requests are
    /// answered with [`HandlerError::NotReady`].
    fn set_handler(&self, handler: Arc<dyn Handler>);

    /// Adds or updates the address at which `node` is reached.
    fn set_peer_addr(&self, node: NodeId, addr: SocketAddr);

    /// Forgets `node`: drops its address and any pooled connection.
    fn remove_peer(&self, node: NodeId);

    /// Sends `request` to `to` and waits for its response, at most `timeout`.
    fn call(
        &self,
        to: NodeId,
        request: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, TransportError>>;

    /// Opens a bulk stream to `to` with `header`. `timeout` bounds each step (open, every chunk
    /// write, the final response), so a stream of any size makes progress or fails.
    fn open_stream(
        &self,
        to: NodeId,
        header: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<OutboundStream, TransportError>>;

    /// Calls whichever node answers at `addr`, for when only an address is known (joining
    /// through seed addresses). Returns the id that node authenticated as (from its
    /// certificate) with its response. Nothing is pooled: meant for rare calls. Errors before
    /// the peer is identified are [`TransportError::UnreachableAddr`] (nothing delivered).
    /// The default implementation cannot call by address.
    fn call_addr(
        &self,
        addr: SocketAddr,
        request: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(NodeId, Bytes), TransportError>> {
        let _ = (request, timeout);
        Box::pin(async move {
            Err(TransportError::UnreachableAddr {
                addr,
                reason: "this transport cannot call by address".into(),
            })
        })
    }

    /// Closes the endpoint: outgoing calls fail with [`TransportError::Shutdown`], incoming
    /// traffic is refused.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
