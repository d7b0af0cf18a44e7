//! The accepting side: authenticates each connection (node id from the client certificate, or
//! from the first `Hello` in insecure mode), checks every stream's `Hello` against it, and
//! serves requests and bulk streams with the installed handler. A bad stream is reset and
//! logged; a peer claiming another node's id loses its whole connection. Every stream is held
//! to its peer's inbound budget (`budget.rs`) before the body of its opening frame is read.

use super::budget::{OverBudget, StreamBudget};
use super::metrics::{self, InboundError};
use super::stream::QuicSource;
use super::{CLOSE_IDENTITY_MISMATCH, CLOSE_NO_IDENTITY, Shared, send_frames};
use crate::codec::{Frame, FrameError, FrameHeader, FrameKind, read_body, read_header};
use crate::tls::node_id_from_cert;
use crate::{Bytes, Handler, HandlerError, InboundStream};
use nodedb_cluster_core::NodeId;
use rustls_pki_types::CertificateDer;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Stream reset code for a stream that broke the protocol.
pub(super) const STREAM_RESET_PROTOCOL: u32 = 1;

/// Accepts connections until the endpoint closes.
pub(super) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        if shared.shut_down.load(Ordering::Acquire) {
            incoming.refuse();
            continue;
        }
        tokio::spawn(serve_connection(incoming, Arc::clone(&shared)));
    }
}

/// Who is on the other end of a connection.
enum Identity {
    /// From the certificate chain the server verified.
    Certified(NodeId),
    /// Insecure mode: fixed by the first `Hello`.
    Claimed(OnceLock<NodeId>),
}

/// Why a stream was not served.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream claims {claimed} on a connection authenticated as {authenticated}")]
    IdentityMismatch {
        claimed: NodeId,
        authenticated: NodeId,
    },
    #[error("unexpected {0:?} frame at the start of a stream")]
    UnexpectedFrame(FrameKind),
    #[error("peer opened a stream and sent nothing for {0:?}")]
    Idle(Duration),
    #[error("stream refused: {0}")]
    OverBudget(#[from] OverBudget),
}

impl StreamError {
    fn kind(&self) -> InboundError {
        match self {
            StreamError::Frame(_) => InboundError::BadFrame,
            StreamError::IdentityMismatch { .. } => InboundError::IdentityMismatch,
            StreamError::UnexpectedFrame(_) => InboundError::UnexpectedFrame,
            StreamError::Idle(_) => InboundError::Idle,
            StreamError::OverBudget(_) => InboundError::OverBudget,
        }
    }
}

async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            metrics::inbound_error(InboundError::Handshake);
            tracing::warn!(node = %shared.node, %remote, %error, "handshake failed");
            return;
        }
    };
    let identity = if shared.secure {
        match certified_node(&connection) {
            Some(node) => Identity::Certified(node),
            None => {
                metrics::inbound_error(InboundError::NoIdentity);
                tracing::warn!(node = %shared.node, %remote, "peer certificate names no node; closing");
                connection.close(
                    quinn::VarInt::from_u32(CLOSE_NO_IDENTITY),
                    b"certificate names no node",
                );
                return;
            }
        }
    } else {
        Identity::Claimed(OnceLock::new())
    };
    let identity = Arc::new(identity);
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(error) => {
                tracing::debug!(node = %shared.node, %remote, %error, "connection ended");
                return;
            }
        };
        let connection = connection.clone();
        let identity = Arc::clone(&identity);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let result = serve_stream(&shared, &identity, send, recv).await;
            if let Err(error) = &result {
                metrics::inbound_error(error.kind());
            }
            match result {
                Ok(()) => {}
                Err(StreamError::IdentityMismatch {
                    claimed,
                    authenticated,
                }) => {
                    tracing::warn!(
                        node = %shared.node, %remote, %claimed, %authenticated,
                        "peer claims another node's id; closing its connection"
                    );
                    connection.close(
                        quinn::VarInt::from_u32(CLOSE_IDENTITY_MISMATCH),
                        b"claimed node id does not match the certificate",
                    );
                }
                Err(error) => {
                    tracing::warn!(node = %shared.node, %remote, %error, "bad stream dropped");
                }
            }
        });
    }
}

/// The node id in the peer's leaf certificate (either side of a connection).
pub(super) fn certified_node(connection: &quinn::Connection) -> Option<NodeId> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    node_id_from_cert(leaf).ok()
}

async fn serve_stream(
    shared: &Shared,
    identity: &Identity,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), StreamError> {
    let result = serve_stream_frames(shared, identity, &mut send, recv).await;
    if result.is_err() {
        // The peer learns at once that this stream is dead; the connection lives on.
        let _ = send.reset(quinn::VarInt::from_u32(STREAM_RESET_PROTOCOL));
    }
    result
}

async fn serve_stream_frames(
    shared: &Shared,
    identity: &Identity,
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), StreamError> {
    let idle = shared.stream_idle;
    // Nothing but a hello (8 bytes) is read before the peer is known.
    let hello_header = read_opening_header(&mut recv, idle).await?;
    if hello_header.kind != FrameKind::Hello {
        return Err(StreamError::UnexpectedFrame(hello_header.kind));
    }
    let hello = read_opening_body(&mut recv, &hello_header, idle).await?;
    let claimed = hello.hello_node()?;
    let from = match identity {
        Identity::Certified(node) => *node,
        Identity::Claimed(first) => *first.get_or_init(|| claimed),
    };
    if claimed != from {
        return Err(StreamError::IdentityMismatch {
            claimed,
            authenticated: from,
        });
    }
    shared.pool.heard_from(from);
    // Held until the answer is sent: the request's bytes live as long as its handler runs.
    let mut budget = shared.budgets.admit_stream(from)?;
    let header = read_opening_header(&mut recv, idle).await?;
    let bulk = match header.kind {
        FrameKind::Request => false,
        FrameKind::StreamOpen => true,
        other => return Err(StreamError::UnexpectedFrame(other)),
    };
    budget.reserve(StreamBudget::opening_bytes(bulk, header.body_len))?;
    let opening = read_opening_body(&mut recv, &header, idle).await?;
    metrics::frames_received(from, &[&hello, &opening]);
    let handler = shared
        .handler
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let result = match opening.kind {
        FrameKind::Request => {
            metrics::rpc_received(from);
            match handler {
                None => Err(HandlerError::NotReady),
                Some(handler) => handler.on_request(from, opening.body).await,
            }
        }
        FrameKind::StreamOpen => {
            metrics::stream_accepted(from);
            serve_bulk(shared, handler, from, opening.body, recv).await
        }
        other => return Err(StreamError::UnexpectedFrame(other)),
    };
    let answer = match result {
        Ok(body) => Frame::new(FrameKind::Response, body),
        Err(error) => Frame::error_response(&error),
    };
    if let Err(error) = send_frames(send, from, &[&answer]).await {
        tracing::debug!(node = %shared.node, %from, %error, "could not send the answer");
    }
    // Dropping a finished stream still delivers what was written.
    let _ = send.finish();
    Ok(())
}

async fn serve_bulk(
    shared: &Shared,
    handler: Option<Arc<dyn Handler>>,
    from: NodeId,
    header: Bytes,
    recv: quinn::RecvStream,
) -> Result<Bytes, HandlerError> {
    let Some(handler) = handler else {
        return Err(HandlerError::NotReady);
    };
    let source = QuicSource::new(from, recv, shared.stream_idle);
    handler
        .on_stream(from, header, InboundStream::new(Box::new(source)))
        .await
}

/// The first frames of a stream must come within the stream idle time, so a peer cannot park
/// streams (and tasks) here for free.
async fn read_opening_header(
    recv: &mut quinn::RecvStream,
    idle: Duration,
) -> Result<FrameHeader, StreamError> {
    match tokio::time::timeout(idle, read_header(recv)).await {
        Ok(Ok(Some(header))) => Ok(header),
        Ok(Ok(None)) => Err(FrameError::UnexpectedEnd.into()),
        Ok(Err(error)) => Err(error.into()),
        Err(_elapsed) => Err(StreamError::Idle(idle)),
    }
}

async fn read_opening_body(
    recv: &mut quinn::RecvStream,
    header: &FrameHeader,
    idle: Duration,
) -> Result<Frame, StreamError> {
    match tokio::time::timeout(idle, read_body(recv, header)).await {
        Ok(frame) => Ok(frame?),
        Err(_elapsed) => Err(StreamError::Idle(idle)),
    }
}
