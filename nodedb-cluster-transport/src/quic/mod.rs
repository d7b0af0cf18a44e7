//! The QUIC implementation of [`Transport`]: one quinn endpoint per node (one UDP port, both
//! directions), mutual TLS, one pooled connection per peer, one bidirectional stream per RPC or
//! bulk stream, and a per-peer circuit breaker. Stream layout and identity checks are described
//! in `docs/design.md`, "Transport frames".

mod breaker;
mod budget;
mod by_addr;
pub mod metrics;
mod pool;
mod server;
mod socket;
mod stream;
mod udp_faults;

pub use breaker::{
    Admission, BREAKER_FAILURES_MAX, BREAKER_OPEN_MS, BreakerConfig, BreakerState, PeerHealth,
    RECONNECT_BACKOFF_MS_MAX, RECONNECT_BACKOFF_MS_MIN,
};
pub use budget::{INBOUND_BYTES_PER_PEER_MAX, INBOUND_STREAMS_PER_PEER_MAX, InboundBudget};
pub use udp_faults::{UdpFaults, UdpFaultsError};

use crate::codec::{Frame, FrameError, FrameKind, encode_header, read_required_frame};
use crate::tls::{self, TlsError, TlsMode};
use crate::{BoxFuture, Bytes, Handler, OutboundStream, Transport, TransportError};
use nodedb_cluster_core::NodeId;
use pool::Pool;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// QUIC keep-alive: well below half the idle timeout, so a quiet but live connection stays up.
pub const KEEP_ALIVE_MS: u64 = 5_000;
/// A connection with no traffic (keep-alives included) for this long is dead.
pub const IDLE_TIMEOUT_MS: u64 = 30_000;
/// Concurrent RPCs and streams one peer may have open on one connection.
pub const CONCURRENT_STREAMS_MAX: u32 = 1024;
/// Connections the endpoint accepts at once (handshakes in progress included).
pub const INCOMING_CONNECTIONS_MAX: usize = 1024;
/// How long a receiver waits for the next frame of a bulk stream before giving up.
pub const STREAM_IDLE_MS: u64 = 30_000;
/// How long a graceful shutdown waits for peers to acknowledge the close.
pub const SHUTDOWN_WAIT_MS: u64 = 1_000;

/// Connection close codes (QUIC application error codes).
pub const CLOSE_SHUTDOWN: u32 = 0;
pub const CLOSE_NO_IDENTITY: u32 = 1;
pub const CLOSE_IDENTITY_MISMATCH: u32 = 2;

/// Timers and limits of the QUIC transport; the defaults are the constants of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicTimings {
    pub keep_alive_ms: u64,
    pub idle_timeout_ms: u64,
    pub stream_idle_ms: u64,
    pub breaker: BreakerConfig,
    /// What one peer may hold in this node at once (see [`InboundBudget`]).
    pub inbound: InboundBudget,
}

/// A call that timed out after waiting at least this long without a single datagram from the
/// peer drops its connection, so the next call dials afresh. Shorter waits (heartbeats) say
/// too little: a busy but live peer may not have acknowledged yet.
pub const SILENT_PEER_WAIT_MIN: Duration = Duration::from_millis(250);

/// A secret that stays the same across restarts of this node (derived from its private key,
/// or from its id in insecure mode). It keys the stateless-reset tokens and the connection-id
/// generator, so a restarted process recognises the connection ids of its predecessor and
/// answers their packets with a reset the peer accepts: the peer drops the dead connection at
/// once instead of at its idle timeout.
fn restart_secret(config: &QuicConfig) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"nodedb-cluster restart secret v1");
    context.update(&config.node_id.0.to_be_bytes());
    if let TlsMode::Secure(material) = &config.tls {
        context.update(material.key_pem.as_bytes());
    }
    let mut secret = [0u8; 32];
    secret.copy_from_slice(context.finish().as_ref());
    secret
}

/// Everything [`QuicTransport::bind`] needs.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    pub node_id: NodeId,
    /// UDP address to listen on; port 0 picks a free port (see [`QuicTransport::local_addr`]).
    pub listen_addr: SocketAddr,
    pub tls: TlsMode,
    pub timings: QuicTimings,
}

/// Why [`QuicTransport::bind`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("could not bind {addr}: {reason}")]
    Socket { addr: SocketAddr, reason: String },
    #[error("must be called inside a tokio runtime")]
    NoRuntime,
    #[error("invalid timing: {0}")]
    Timing(String),
    #[error("invalid UDP faults: {0}")]
    UdpFaults(#[from] UdpFaultsError),
}

/// A node's QUIC endpoint.
pub struct QuicTransport {
    node: NodeId,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    /// For calls by address: checks the server's chain, takes its node id from the certificate.
    addr_client_config: quinn::ClientConfig,
    pool: Arc<Pool>,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

/// State the accept loop shares with the transport.
struct Shared {
    node: NodeId,
    /// Outbound health of every peer: traffic from a peer closes its breaker.
    pool: Arc<Pool>,
    handler: RwLock<Option<Arc<dyn Handler>>>,
    shut_down: AtomicBool,
    secure: bool,
    stream_idle: Duration,
    budgets: budget::Budgets,
}

impl Default for QuicTimings {
    fn default() -> QuicTimings {
        QuicTimings {
            keep_alive_ms: KEEP_ALIVE_MS,
            idle_timeout_ms: IDLE_TIMEOUT_MS,
            stream_idle_ms: STREAM_IDLE_MS,
            breaker: BreakerConfig::default(),
            inbound: InboundBudget::default(),
        }
    }
}

impl QuicConfig {
    /// A config with the default timings.
    pub fn new(node_id: NodeId, listen_addr: SocketAddr, tls: TlsMode) -> QuicConfig {
        QuicConfig {
            node_id,
            listen_addr,
            tls,
            timings: QuicTimings::default(),
        }
    }
}

impl QuicTransport {
    /// Binds the endpoint and starts accepting. Call inside a tokio runtime. With TLS material,
    /// the certificate must name `config.node_id`.
    pub fn bind(config: QuicConfig) -> Result<Arc<QuicTransport>, BindError> {
        QuicTransport::bind_inner(config, None)
    }

    /// [`QuicTransport::bind`] with `faults` applied to every datagram this endpoint sends
    /// (delays, reordering, duplicates), for chaos runs only.
    pub fn bind_with_udp_faults(
        config: QuicConfig,
        faults: UdpFaults,
    ) -> Result<Arc<QuicTransport>, BindError> {
        faults.validate()?;
        QuicTransport::bind_inner(config, Some(faults))
    }

    fn bind_inner(
        config: QuicConfig,
        udp_faults: Option<UdpFaults>,
    ) -> Result<Arc<QuicTransport>, BindError> {
        let runtime_handle =
            tokio::runtime::Handle::try_current().map_err(|_| BindError::NoRuntime)?;
        let socket_error = |error: std::io::Error| BindError::Socket {
            addr: config.listen_addr,
            reason: error.to_string(),
        };
        let socket = socket::bind(config.listen_addr).map_err(socket_error)?;
        let QuinnConfigs {
            server: server_config,
            client: client_config,
            addr_client: addr_client_config,
            secure,
        } = quinn_configs(&config)?;
        let restart_secret = restart_secret(&config);
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config.reset_key(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &restart_secret,
        )));
        let cid_key = u64::from_be_bytes(restart_secret[..8].try_into().unwrap_or_default());
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let runtime = Arc::new(quinn::TokioRuntime);
        let endpoint = match udp_faults {
            None => quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime),
            Some(faults) => {
                let node = config.node_id;
                tracing::warn!(%node, ?faults, "UDP fault layer on: for chaos runs only");
                let inner = quinn::Runtime::wrap_udp_socket(&*runtime, socket);
                let inner = inner.map_err(socket_error)?;
                let faulty = udp_faults::FaultySocket::new(inner, faults, runtime_handle);
                quinn::Endpoint::new_with_abstract_socket(
                    endpoint_config,
                    Some(server_config),
                    Arc::new(faulty),
                    runtime,
                )
            }
        }
        .map_err(socket_error)?;
        let pool = Arc::new(Pool::new(config.timings.breaker));
        let shared = Arc::new(Shared {
            node: config.node_id,
            pool: Arc::clone(&pool),
            handler: RwLock::new(None),
            shut_down: AtomicBool::new(false),
            secure,
            stream_idle: Duration::from_millis(config.timings.stream_idle_ms),
            budgets: budget::Budgets::new(config.timings.inbound),
        });
        let accept_task = tokio::spawn(server::accept_loop(endpoint.clone(), Arc::clone(&shared)));
        tracing::info!(node = %config.node_id, addr = ?endpoint.local_addr().ok(), secure, "transport listening");
        Ok(Arc::new(QuicTransport {
            node: config.node_id,
            pool,
            endpoint,
            client_config,
            addr_client_config,
            shared,
            accept_task,
        }))
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The breaker state of `node`, if it is a known peer.
    pub fn breaker_state(&self, node: NodeId) -> Option<BreakerState> {
        self.pool.breaker_state(node)
    }

    async fn call_inner(
        &self,
        to: NodeId,
        request: Bytes,
        deadline: Instant,
    ) -> Result<Bytes, TransportError> {
        let admission = self.pool.admit(to)?;
        let mut outcome = pool::Outcome::new(&self.pool, to, admission);
        let result = self.exchange(to, request, deadline).await;
        outcome.record(&result);
        result
    }

    async fn exchange(
        &self,
        to: NodeId,
        request: Bytes,
        deadline: Instant,
    ) -> Result<Bytes, TransportError> {
        let (connection, send, recv) = self.stream_to(to, deadline).await?;
        let waited_from = Instant::now();
        let datagrams_before = connection.stats().udp_rx.datagrams;
        let result = rpc(self.node, to, send, recv, request, deadline).await;
        match &result {
            Err(TransportError::ConnectionLost { .. }) => {
                self.pool.evict_if_closed(to, &connection);
            }
            Err(TransportError::Timeout { .. })
                if waited_from.elapsed() >= SILENT_PEER_WAIT_MIN
                    && connection.stats().udp_rx.datagrams == datagrams_before =>
            {
                // Not even an acknowledgement came back: the process behind this connection
                // is gone (killed, or restarted with no memory of it). Without this the pooled
                // connection would swallow every call until the idle timeout.
                tracing::info!(peer = %to, "peer silent through a timed-out call; reconnecting");
                connection.close(quinn::VarInt::from_u32(0), b"peer silent");
                self.pool.evict_if_closed(to, &connection);
            }
            _ => {}
        }
        result
    }

    /// A new stream to `to`. A pooled connection that turns out closed (the peer restarted,
    /// the idle timeout hit) is replaced once: nothing was sent on it, so retrying is safe.
    async fn stream_to(
        &self,
        to: NodeId,
        deadline: Instant,
    ) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), TransportError> {
        let attempts_max = 2;
        let mut attempt = 1;
        loop {
            let connection = self
                .pool
                .connection(to, deadline, &self.endpoint, &self.client_config)
                .await?;
            match open_bi(&connection, to, deadline).await {
                Ok((send, recv)) => return Ok((connection, send, recv)),
                Err(error) => {
                    self.pool.evict_if_closed(to, &connection);
                    let retry = matches!(error, TransportError::Unreachable { .. });
                    if !retry || attempt >= attempts_max {
                        return Err(error);
                    }
                    attempt += 1;
                }
            }
        }
    }

    async fn open_stream_inner(
        &self,
        to: NodeId,
        header: Bytes,
        timeout: Duration,
    ) -> Result<OutboundStream, TransportError> {
        let deadline = Instant::now() + timeout;
        let admission = self.pool.admit(to)?;
        let mut outcome = pool::Outcome::new(&self.pool, to, admission);
        let opened = self.open_stream_once(to, header, deadline, timeout).await;
        outcome.record(&opened);
        opened
    }

    async fn open_stream_once(
        &self,
        to: NodeId,
        header: Bytes,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<OutboundStream, TransportError> {
        let (_connection, mut send, recv) = self.stream_to(to, deadline).await?;
        let node = self.node;
        let open = async {
            let open = Frame::new(FrameKind::StreamOpen, header);
            send_frames(&mut send, to, &[&Frame::hello(node), &open]).await
        };
        match tokio::time::timeout_at(deadline, open).await {
            Err(_elapsed) => Err(TransportError::Timeout { node: to }),
            Ok(Err(error)) => Err(error.into_transport(to)),
            Ok(Ok(())) => Ok(OutboundStream::new(Box::new(stream::QuicSink::new(
                to, send, recv, timeout,
            )))),
        }
    }
}

impl Transport for QuicTransport {
    fn local_node(&self) -> NodeId {
        self.node
    }

    fn set_handler(&self, handler: Arc<dyn Handler>) {
        *self
            .shared
            .handler
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handler);
    }

    fn set_peer_addr(&self, node: NodeId, addr: SocketAddr) {
        self.pool.set_addr(node, addr);
    }

    fn remove_peer(&self, node: NodeId) {
        self.pool.remove(node);
    }

    fn call(
        &self,
        to: NodeId,
        request: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        Box::pin(async move {
            if self.shared.shut_down.load(Ordering::Acquire) {
                return Err(TransportError::Shutdown);
            }
            metrics::rpc_sent(to);
            let result = match crate::ensure_payload_fits(&request) {
                Ok(()) => self.call_inner(to, request, Instant::now() + timeout).await,
                Err(error) => Err(error),
            };
            metrics::outcome(to, &result);
            result
        })
    }

    fn open_stream(
        &self,
        to: NodeId,
        header: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<OutboundStream, TransportError>> {
        Box::pin(async move {
            if self.shared.shut_down.load(Ordering::Acquire) {
                return Err(TransportError::Shutdown);
            }
            metrics::stream_opened(to);
            let result = match crate::ensure_payload_fits(&header) {
                Ok(()) => self.open_stream_inner(to, header, timeout).await,
                Err(error) => Err(error),
            };
            metrics::outcome(to, &result);
            result
        })
    }

    fn call_addr(
        &self,
        addr: SocketAddr,
        request: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(NodeId, Bytes), TransportError>> {
        Box::pin(async move {
            if self.shared.shut_down.load(Ordering::Acquire) {
                return Err(TransportError::Shutdown);
            }
            crate::ensure_payload_fits(&request)?;
            self.call_addr_inner(addr, request, Instant::now() + timeout)
                .await
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.shared.shut_down.swap(true, Ordering::AcqRel) {
                return;
            }
            self.endpoint
                .close(quinn::VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
            self.pool.clear();
            self.accept_task.abort();
            let wait = Duration::from_millis(SHUTDOWN_WAIT_MS);
            let _ = tokio::time::timeout(wait, self.endpoint.wait_idle()).await;
            tracing::info!(node = %self.node, "transport shut down");
        })
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.endpoint
            .close(quinn::VarInt::from_u32(CLOSE_SHUTDOWN), b"dropped");
    }
}

impl fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicTransport")
            .field("node", &self.node)
            .field("addr", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------

/// The quinn configs of one endpoint.
struct QuinnConfigs {
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    addr_client: quinn::ClientConfig,
    /// Whether peers are authenticated by certificate.
    secure: bool,
}

/// The quinn server and client configs for `config`.
fn quinn_configs(config: &QuicConfig) -> Result<QuinnConfigs, BindError> {
    let (server_tls, client_tls, addr_client_tls, secure) = match &config.tls {
        TlsMode::Secure(material) => {
            let named = material.node_id()?;
            if named != config.node_id {
                return Err(TlsError::WrongNode {
                    expected: config.node_id,
                    actual: named,
                }
                .into());
            }
            (
                tls::server_config(material)?,
                tls::client_config(material)?,
                tls::client_config_any_node(material)?,
                true,
            )
        }
        TlsMode::Insecure => {
            tracing::warn!(
                node = %config.node_id,
                "INSECURE transport: no certificates are checked and any peer may claim \
                 any node id; never use this outside development"
            );
            (
                tls::insecure_server_config(config.node_id)?,
                tls::insecure_client_config()?,
                tls::insecure_client_config()?,
                false,
            )
        }
    };
    let transport_config = Arc::new(transport_config(&config.timings)?);
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(Arc::clone(&transport_config));
    server.max_incoming(INCOMING_CONNECTIONS_MAX);
    let quinn_client =
        |rustls_config: rustls::ClientConfig| -> Result<quinn::ClientConfig, BindError> {
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_config)
                .map_err(|error| TlsError::Config(error.to_string()))?;
            let mut client = quinn::ClientConfig::new(Arc::new(crypto));
            client.transport_config(Arc::clone(&transport_config));
            Ok(client)
        };
    Ok(QuinnConfigs {
        client: quinn_client(client_tls)?,
        addr_client: quinn_client(addr_client_tls)?,
        server,
        secure,
    })
}

/// Largest UDP payload MTU discovery probes: Ethernet's 1500 B less the IPv4 and UDP headers,
/// which is also what a quinn endpoint accepts by default and announces to its peers (a peer
/// never probes past that). Larger datagrams were tried: with endpoints accepting 64 KiB,
/// loopback connections reached it, but during a bulk copy on a loaded machine quinn declared
/// large packets lost (the kernel dropped none), took the loss bursts for a black hole and fell
/// back to 1200 B for a minute; the copy was no faster.
const UDP_PAYLOAD_PROBED_MAX: u16 = 1472;

fn transport_config(timings: &QuicTimings) -> Result<quinn::TransportConfig, BindError> {
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(timings.idle_timeout_ms))
        .map_err(|error| BindError::Timing(format!("idle_timeout_ms: {error}")))?;
    if timings.keep_alive_ms.saturating_mul(2) > timings.idle_timeout_ms {
        return Err(BindError::Timing(
            "keep_alive_ms must be at most half of idle_timeout_ms".into(),
        ));
    }
    let mut config = quinn::TransportConfig::default();
    config.max_idle_timeout(Some(idle));
    config.keep_alive_interval(Some(Duration::from_millis(timings.keep_alive_ms)));
    config.max_concurrent_bidi_streams(quinn::VarInt::from_u32(CONCURRENT_STREAMS_MAX));
    config.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    // Where the path carries less, the probes fail and the size stays where it was.
    let mut mtu_discovery = quinn::MtuDiscoveryConfig::default();
    mtu_discovery.upper_bound(UDP_PAYLOAD_PROBED_MAX);
    config.mtu_discovery_config(Some(mtu_discovery));
    Ok(config)
}

/// Opens a stream on a pooled connection. Nothing has been sent yet, so a failure here means
/// the request was not delivered.
async fn open_bi(
    connection: &quinn::Connection,
    to: NodeId,
    deadline: Instant,
) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
    match tokio::time::timeout_at(deadline, connection.open_bi()).await {
        Ok(Ok(streams)) => Ok(streams),
        Ok(Err(error)) => Err(TransportError::Unreachable {
            node: to,
            reason: format!("connection closed: {error}"),
        }),
        // Stream limit reached and the peer did not grant more in time.
        Err(_elapsed) => Err(TransportError::Timeout { node: to }),
    }
}

/// One RPC on a freshly opened stream: hello, request, then the answer, all by `deadline`.
async fn rpc(
    local: NodeId,
    to: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    request: Bytes,
    deadline: Instant,
) -> Result<Bytes, TransportError> {
    let exchange = async {
        let request = Frame::new(FrameKind::Request, request);
        send_frames(&mut send, to, &[&Frame::hello(local), &request]).await?;
        let _ = send.finish();
        let answer = read_required_frame(&mut recv).await?;
        metrics::frames_received(to, &[&answer]);
        Ok::<Frame, FrameError>(answer)
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Err(_elapsed) => Err(TransportError::Timeout { node: to }),
        Ok(Err(error)) => Err(error.into_transport(to)),
        Ok(Ok(frame)) => response_of(to, frame),
    }
}

/// Writes `frames` in one go (headers and bodies as separate chunks, bodies not copied), so a
/// small RPC costs one write rather than one per header and body. `peer` is who reads them.
pub(crate) async fn send_frames(
    send: &mut quinn::SendStream,
    peer: NodeId,
    frames: &[&Frame],
) -> Result<(), FrameError> {
    let mut chunks = Vec::with_capacity(frames.len() * 2);
    for frame in frames {
        let header = encode_header(frame.kind, &frame.body)?;
        chunks.push(Bytes::copy_from_slice(&header));
        if !frame.body.is_empty() {
            chunks.push(frame.body.clone());
        }
    }
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(|error| FrameError::Io(error.to_string()))?;
    metrics::frames_sent(peer, frames);
    Ok(())
}

/// The answer carried by a response frame.
fn response_of(to: NodeId, frame: Frame) -> Result<Bytes, TransportError> {
    match frame.kind {
        FrameKind::Response => Ok(frame.body),
        FrameKind::ErrorResponse => {
            let error = frame
                .handler_error()
                .map_err(|error| error.into_transport(to))?;
            Err(TransportError::Remote { node: to, error })
        }
        other => Err(TransportError::Protocol {
            node: to,
            reason: format!("expected a response frame, got {other:?}"),
        }),
    }
}
