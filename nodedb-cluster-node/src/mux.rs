//! Channels over one transport: Raft traffic and node control traffic (joins, forwarded
//! client requests) share a node's single QUIC endpoint, each with its own handler.
//!
//! Every request and stream header starts with one channel byte, written and stripped here
//! and nowhere else; see docs/design.md, "Node channels". It is a framing layer, like a port
//! number, not a marker inside another layer's payload.

use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::{
    BoxFuture, Bytes, Handler, HandlerError, InboundStream, OutboundStream, Transport,
    TransportError,
};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The channels a node speaks. Values are on the wire: append, never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Channel {
    /// Raft RPCs of every group, handled by the multi-raft engine.
    Raft = 1,
    /// Node control: identify, join, forwarded proposals and reads.
    Control = 2,
}

const CHANNELS: [Channel; 2] = [Channel::Raft, Channel::Control];

/// Splits one transport into channels. Install with [`Multiplexer::new`]; hand each layer its
/// [`Multiplexer::channel`].
pub struct Multiplexer {
    inner: Arc<dyn Transport>,
    handlers: RwLock<[Option<Arc<dyn Handler>>; CHANNELS.len()]>,
}

impl Multiplexer {
    /// Takes over `inner`'s handler slot.
    pub fn new(inner: Arc<dyn Transport>) -> Arc<Multiplexer> {
        let mux = Arc::new(Multiplexer {
            inner: inner.clone(),
            handlers: RwLock::new([None, None]),
        });
        inner.set_handler(Arc::new(Demux(Arc::downgrade(&mux))));
        mux
    }

    /// A transport that sends on `channel` and serves its incoming traffic.
    pub fn channel(self: &Arc<Self>, channel: Channel) -> Arc<dyn Transport> {
        Arc::new(ChannelTransport {
            mux: self.clone(),
            channel,
        })
    }

    /// The transport underneath (for shutdown and address bookkeeping).
    pub fn inner(&self) -> &Arc<dyn Transport> {
        &self.inner
    }

    fn handler(&self, tag: u8) -> Result<Arc<dyn Handler>, HandlerError> {
        let slot = CHANNELS
            .iter()
            .position(|channel| *channel as u8 == tag)
            .ok_or_else(|| HandlerError::BadRequest(format!("unknown channel {tag}")))?;
        let handlers = self
            .handlers
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        handlers[slot].clone().ok_or(HandlerError::NotReady)
    }

    fn set(&self, channel: Channel, handler: Option<Arc<dyn Handler>>) {
        let slot = CHANNELS
            .iter()
            .position(|known| *known == channel)
            .unwrap_or_else(|| panic!("channel {channel:?} missing from CHANNELS"));
        let mut handlers = self
            .handlers
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        handlers[slot] = handler;
    }
}

/// Prepends the channel byte. One copy of the payload: cheap next to a network round trip.
fn tagged(channel: Channel, payload: &[u8]) -> Bytes {
    let mut bytes = Vec::with_capacity(payload.len() + 1);
    bytes.push(channel as u8);
    bytes.extend_from_slice(payload);
    Bytes::from(bytes)
}

/// Splits the channel byte off an incoming payload.
fn untagged(payload: Bytes) -> Result<(u8, Bytes), HandlerError> {
    match payload.first() {
        Some(tag) => Ok((*tag, payload.slice(1..))),
        None => Err(HandlerError::BadRequest(
            "empty payload: no channel".to_string(),
        )),
    }
}

struct ChannelTransport {
    mux: Arc<Multiplexer>,
    channel: Channel,
}

impl Transport for ChannelTransport {
    fn local_node(&self) -> NodeId {
        self.mux.inner.local_node()
    }

    fn set_handler(&self, handler: Arc<dyn Handler>) {
        self.mux.set(self.channel, Some(handler));
    }

    fn set_peer_addr(&self, node: NodeId, addr: SocketAddr) {
        self.mux.inner.set_peer_addr(node, addr);
    }

    fn remove_peer(&self, node: NodeId) {
        self.mux.inner.remove_peer(node);
    }

    fn call(
        &self,
        to: NodeId,
        request: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        let request = tagged(self.channel, &request);
        self.mux.inner.call(to, request, timeout)
    }

    fn open_stream(
        &self,
        to: NodeId,
        header: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<OutboundStream, TransportError>> {
        let header = tagged(self.channel, &header);
        self.mux.inner.open_stream(to, header, timeout)
    }

    fn call_addr(
        &self,
        addr: SocketAddr,
        request: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(NodeId, Bytes), TransportError>> {
        let request = tagged(self.channel, &request);
        self.mux.inner.call_addr(addr, request, timeout)
    }

    /// Stops serving this channel only; the shared endpoint is closed by its owner.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.mux.set(self.channel, None);
        Box::pin(async {})
    }
}

/// The handler installed on the underlying transport. Holds the multiplexer weakly so that
/// dropping the node's handles frees it.
struct Demux(std::sync::Weak<Multiplexer>);

impl Demux {
    fn route(&self, payload: Bytes) -> Result<(Arc<dyn Handler>, Bytes), HandlerError> {
        let mux = self.0.upgrade().ok_or(HandlerError::NotReady)?;
        let (tag, rest) = untagged(payload)?;
        Ok((mux.handler(tag)?, rest))
    }
}

impl Handler for Demux {
    fn on_request(
        &self,
        from: NodeId,
        request: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
        Box::pin(async move {
            let (handler, request) = self.route(request)?;
            handler.on_request(from, request).await
        })
    }

    fn on_stream(
        &self,
        from: NodeId,
        header: Bytes,
        body: InboundStream,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
        Box::pin(async move {
            let (handler, header) = self.route(header)?;
            handler.on_stream(from, header, body).await
        })
    }
}

impl fmt::Debug for Multiplexer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Multiplexer").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodedb_cluster_transport::MemoryNetwork;

    /// Answers with its own name followed by the request, so tests see who served what.
    struct Echo(&'static str);

    impl Handler for Echo {
        fn on_request(
            &self,
            _from: NodeId,
            request: Bytes,
        ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
            Box::pin(async move { Ok(tagged_name(self.0, &request)) })
        }

        fn on_stream(
            &self,
            _from: NodeId,
            header: Bytes,
            mut body: InboundStream,
        ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
            Box::pin(async move {
                let mut total = header.to_vec();
                while let Some(chunk) = body
                    .next_chunk()
                    .await
                    .map_err(|error| HandlerError::Failed(error.to_string()))?
                {
                    total.extend_from_slice(&chunk);
                }
                Ok(tagged_name(self.0, &total))
            })
        }
    }

    fn tagged_name(name: &str, payload: &[u8]) -> Bytes {
        let mut bytes = name.as_bytes().to_vec();
        bytes.push(b':');
        bytes.extend_from_slice(payload);
        Bytes::from(bytes)
    }

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn each_channel_reaches_its_own_handler() {
        let network = MemoryNetwork::new(1);
        let client = Multiplexer::new(network.register(NodeId(1)).unwrap());
        let server = Multiplexer::new(network.register(NodeId(2)).unwrap());
        server
            .channel(Channel::Raft)
            .set_handler(Arc::new(Echo("raft")));
        server
            .channel(Channel::Control)
            .set_handler(Arc::new(Echo("control")));

        let raft = client.channel(Channel::Raft);
        let control = client.channel(Channel::Control);
        let answer = raft
            .call(NodeId(2), Bytes::from_static(b"vote"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(&answer[..], b"raft:vote");
        let answer = control
            .call(NodeId(2), Bytes::from_static(b"join"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(&answer[..], b"control:join");

        let mut stream = raft
            .open_stream(NodeId(2), Bytes::from_static(b"snap:"), TIMEOUT)
            .await
            .unwrap();
        stream.write(Bytes::from_static(b"chunk")).await.unwrap();
        assert_eq!(&stream.finish().await.unwrap()[..], b"raft:snap:chunk");
    }

    #[tokio::test]
    async fn a_channel_without_handler_is_not_ready() {
        let network = MemoryNetwork::new(2);
        let client = Multiplexer::new(network.register(NodeId(1)).unwrap());
        let server = Multiplexer::new(network.register(NodeId(2)).unwrap());
        server
            .channel(Channel::Raft)
            .set_handler(Arc::new(Echo("raft")));
        let error = client
            .channel(Channel::Control)
            .call(NodeId(2), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                TransportError::Remote {
                    error: HandlerError::NotReady,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn unknown_or_missing_channel_bytes_are_refused() {
        let network = MemoryNetwork::new(3);
        let raw = network.register(NodeId(1)).unwrap();
        let server = Multiplexer::new(network.register(NodeId(2)).unwrap());
        server
            .channel(Channel::Raft)
            .set_handler(Arc::new(Echo("raft")));
        for payload in [&b""[..], &[0u8, 1][..], &[99u8][..]] {
            let error = raw
                .call(NodeId(2), Bytes::copy_from_slice(payload), TIMEOUT)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    TransportError::Remote {
                        error: HandlerError::BadRequest(_),
                        ..
                    }
                ),
                "{payload:?}: {error:?}"
            );
        }
    }
}
