//! In-memory twin of the QUIC transport for deterministic multi-node tests: one shared
//! [`MemoryNetwork`] with a seeded fault plan, partitions, one-way cuts and crash/restart, and
//! one [`MemoryTransport`] per node implementing [`Transport`].
//!
//! Failure semantics mirror a real network (see `docs/design.md`, "Transport frames"):
//! - a call to a node that is not registered, crashed, or behind a partition or cut fails fast
//!   with [`TransportError::Unreachable`]: nothing was delivered (as a refused connect);
//! - a message the fault plan drops, or that meets a partition or a crash while in flight, is
//!   lost silently: the caller sees [`TransportError::Timeout`] at its deadline (outcome
//!   unknown). A lost response is indistinguishable from a lost request, as on a real network.
//!
//! Every fault decision is drawn from one seeded RNG under a mutex, a fixed number of draws per
//! message, so the same seed and the same sequence of calls give the same decisions. Delays use
//! `tokio::time::sleep`, so tests may run with paused time.

use crate::{
    BoxFuture, Bytes, Handler, HandlerError, InboundStream, OutboundStream, Transport,
    TransportError,
};
use nodedb_cluster_core::NodeId;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

mod stream;

use stream::{MemorySink, MemorySource};

/// Chunks buffered between the two ends of an in-memory stream; the writer waits beyond it.
pub const MEMORY_STREAM_CHUNKS_MAX: usize = 4;

/// Messages in flight at once; beyond it the network loses messages, like a full buffer.
pub const MEMORY_IN_FLIGHT_MAX: u64 = 65_536;

/// Random faults applied to every message (requests, responses, stream opens).
///
/// Reordering comes from the random delay: two messages sent in order may arrive in the other
/// order when their delays differ.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Chance in `[0, 1]` that a message is lost.
    pub drop_probability: f64,
    /// Chance in `[0, 1]` that a request is delivered twice (the second answer is discarded).
    pub duplicate_probability: f64,
    /// Smallest delay of a delivered message.
    pub delay_ms_min: u64,
    /// Largest delay of a delivered message (inclusive); jitter is uniform in between.
    pub delay_ms_max: u64,
}

/// Message counters of a [`MemoryNetwork`], for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Messages handed to the network (requests, responses, stream opens, duplicates included).
    pub sent: u64,
    /// Messages lost to the fault plan, a partition or a crash while in flight.
    pub dropped: u64,
    /// Messages that reached their destination.
    pub delivered: u64,
    /// Extra copies created by `duplicate_probability`.
    pub duplicated: u64,
    /// Sends refused at once (unknown, crashed or cut-off destination).
    pub refused: u64,
}

/// What the fault plan decided for one message. Exposed so that tests can check determinism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDecision {
    pub dropped: bool,
    pub delay: Duration,
    /// Delay of a duplicate copy, if one is made.
    pub duplicate_delay: Option<Duration>,
}

/// The shared in-memory network. Cheap to clone; all clones are the same network.
#[derive(Clone)]
pub struct MemoryNetwork {
    inner: Arc<NetworkInner>,
}

/// One node's endpoint on a [`MemoryNetwork`].
pub struct MemoryTransport {
    node: NodeId,
    network: MemoryNetwork,
    endpoint: Arc<Endpoint>,
}

impl FaultPlan {
    /// No faults: every message is delivered at once, exactly once.
    pub fn none() -> FaultPlan {
        FaultPlan {
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            delay_ms_min: 0,
            delay_ms_max: 0,
        }
    }

    /// A lossy, jittery network: `drop_probability` loss, delays in `delay_ms_min..=delay_ms_max`.
    pub fn lossy(drop_probability: f64, delay_ms_min: u64, delay_ms_max: u64) -> FaultPlan {
        FaultPlan {
            drop_probability,
            duplicate_probability: 0.0,
            delay_ms_min,
            delay_ms_max,
        }
    }
}

impl Default for FaultPlan {
    fn default() -> FaultPlan {
        FaultPlan::none()
    }
}

impl MemoryNetwork {
    /// A network without faults whose later fault decisions derive from `seed`.
    pub fn new(seed: u64) -> MemoryNetwork {
        MemoryNetwork::with_fault_plan(seed, FaultPlan::none())
    }

    pub fn with_fault_plan(seed: u64, plan: FaultPlan) -> MemoryNetwork {
        MemoryNetwork {
            inner: Arc::new(NetworkInner {
                seed,
                state: Mutex::new(NetworkState {
                    endpoints: HashMap::new(),
                    crashed: HashSet::new(),
                    blocked: HashSet::new(),
                    isolated: HashSet::new(),
                    addrs: HashMap::new(),
                    plan,
                    rng: SmallRng::seed_from_u64(seed),
                    in_flight: 0,
                    stats: NetworkStats::default(),
                }),
            }),
        }
    }

    /// The seed this network was created with (print it when a test fails).
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// Registers `node` and returns its endpoint. A node that crashed must be
    /// [`restart`](Self::restart)ed first; registering an id that is live replaces the old
    /// endpoint (the old one behaves as crashed).
    pub fn register(&self, node: NodeId) -> Result<Arc<MemoryTransport>, TransportError> {
        let mut state = self.inner.lock();
        if state.crashed.contains(&node) {
            return Err(TransportError::Unreachable {
                node,
                reason: "node is crashed; restart it before registering".into(),
            });
        }
        let endpoint = Arc::new(Endpoint::new());
        if let Some(old) = state.endpoints.insert(node, Arc::clone(&endpoint)) {
            old.kill();
        }
        Ok(Arc::new(MemoryTransport {
            node,
            network: self.clone(),
            endpoint,
        }))
    }

    /// Replaces the fault plan; later messages use it.
    pub fn set_fault_plan(&self, plan: FaultPlan) {
        self.inner.lock().plan = plan;
    }

    /// Blocks traffic both ways between every node of `a_side` and every node of `b_side`.
    pub fn partition(&self, a_side: &[NodeId], b_side: &[NodeId]) {
        let mut state = self.inner.lock();
        for &a in a_side {
            for &b in b_side {
                state.blocked.insert((a, b));
                state.blocked.insert((b, a));
            }
        }
    }

    /// Blocks traffic from `from` to `to` only (responses from `to` to `from` still flow).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.inner.lock().blocked.insert((from, to));
    }

    /// Blocks all traffic to and from `node`.
    pub fn isolate(&self, node: NodeId) {
        self.inner.lock().isolated.insert(node);
    }

    /// Removes every partition, cut and isolation. Crashed nodes stay crashed.
    pub fn heal(&self) {
        let mut state = self.inner.lock();
        state.blocked.clear();
        state.isolated.clear();
    }

    /// Crashes `node`: its endpoint stops sending and receiving at once, its in-flight handlers
    /// are abandoned and messages to it are lost or refused, until [`restart`](Self::restart).
    pub fn crash(&self, node: NodeId) {
        let mut state = self.inner.lock();
        if let Some(endpoint) = state.endpoints.remove(&node) {
            endpoint.kill();
        }
        state.crashed.insert(node);
    }

    /// Allows `node` to [`register`](Self::register) again after a crash.
    pub fn restart(&self, node: NodeId) {
        self.inner.lock().crashed.remove(&node);
    }

    /// True when traffic from `from` to `to` is currently blocked by a partition or cut.
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.inner.lock().link_blocked(from, to)
    }

    /// Records that `node` is reached at `addr`, for [`Transport::call_addr`]. Addresses mean
    /// nothing else in memory.
    pub fn set_addr(&self, node: NodeId, addr: SocketAddr) {
        self.inner.lock().addrs.insert(addr, node);
    }

    /// The node recorded at `addr`.
    pub fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.inner.lock().addrs.get(&addr).copied()
    }

    /// Messages sent that have not arrived yet (nor been lost on arrival).
    pub fn in_flight(&self) -> u64 {
        self.inner.lock().in_flight
    }

    pub fn stats(&self) -> NetworkStats {
        self.inner.lock().stats
    }

    /// Draws the fault decision for the next message, as a send would. Tests use it to check
    /// that a seed replays the same decisions.
    pub fn next_decision(&self) -> FaultDecision {
        self.inner.lock().decide()
    }
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNetwork")
            .field("seed", &self.inner.seed)
            .finish_non_exhaustive()
    }
}

impl Transport for MemoryTransport {
    fn local_node(&self) -> NodeId {
        self.node
    }

    fn set_handler(&self, handler: Arc<dyn Handler>) {
        *self
            .endpoint
            .handler
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handler);
    }

    /// Nodes are reached by id; the address only goes into the network's address book, for
    /// [`Transport::call_addr`].
    fn set_peer_addr(&self, node: NodeId, addr: SocketAddr) {
        self.network.set_addr(node, addr);
    }

    fn remove_peer(&self, _node: NodeId) {}

    fn call(
        &self,
        to: NodeId,
        request: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        Box::pin(async move {
            crate::ensure_payload_fits(&request)?;
            let deadline = tokio::time::Instant::now() + timeout;
            let response = self.start_call(to, request)?;
            match tokio::time::timeout_at(deadline, response).await {
                Ok(Ok(result)) => result,
                // The request or its response was lost: only the deadline tells.
                Ok(Err(_lost)) => {
                    tokio::time::sleep_until(deadline).await;
                    Err(TransportError::Timeout { node: to })
                }
                Err(_elapsed) => Err(TransportError::Timeout { node: to }),
            }
        })
    }

    fn open_stream(
        &self,
        to: NodeId,
        header: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<OutboundStream, TransportError>> {
        Box::pin(async move {
            crate::ensure_payload_fits(&header)?;
            let deadline = tokio::time::Instant::now() + timeout;
            let opened = self.start_stream(to, header, timeout)?;
            match tokio::time::timeout_at(deadline, opened).await {
                Ok(Ok(sink)) => Ok(OutboundStream::new(Box::new(sink))),
                Ok(Err(_lost)) => {
                    tokio::time::sleep_until(deadline).await;
                    Err(TransportError::Timeout { node: to })
                }
                Err(_elapsed) => Err(TransportError::Timeout { node: to }),
            }
        })
    }

    fn call_addr(
        &self,
        addr: SocketAddr,
        request: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(NodeId, Bytes), TransportError>> {
        Box::pin(async move {
            let node =
                self.network
                    .node_at(addr)
                    .ok_or_else(|| TransportError::UnreachableAddr {
                        addr,
                        reason: "no node has this address in the memory network".into(),
                    })?;
            let response = self.call(node, request, timeout).await?;
            Ok((node, response))
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.endpoint.kill();
            let mut state = self.network.inner.lock();
            let ours = state
                .endpoints
                .get(&self.node)
                .is_some_and(|endpoint| Arc::ptr_eq(endpoint, &self.endpoint));
            if ours {
                state.endpoints.remove(&self.node);
            }
        })
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("node", &self.node)
            .field("alive", &self.endpoint.is_alive())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------

struct NetworkInner {
    seed: u64,
    state: Mutex<NetworkState>,
}

struct NetworkState {
    endpoints: HashMap<NodeId, Arc<Endpoint>>,
    crashed: HashSet<NodeId>,
    /// Blocked directed links `(from, to)`.
    blocked: HashSet<(NodeId, NodeId)>,
    /// Nodes cut off from everyone, including nodes registered later.
    isolated: HashSet<NodeId>,
    /// Address book for calls by address.
    addrs: HashMap<SocketAddr, NodeId>,
    plan: FaultPlan,
    rng: SmallRng,
    /// Messages sent and not yet arrived (or lost on arrival).
    in_flight: u64,
    stats: NetworkStats,
}

/// A registered node: its handler and a liveness signal that aborts its in-flight work.
struct Endpoint {
    handler: RwLock<Option<Arc<dyn Handler>>>,
    alive: AtomicBool,
    killed: watch::Sender<bool>,
}

/// What a message is, for the faults that apply to one kind only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageKind {
    Request,
    Response,
    StreamOpen,
}

/// Where a message goes once the fault plan let it through.
struct Route {
    endpoint: Arc<Endpoint>,
    decision: FaultDecision,
}

impl NetworkInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, NetworkState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl NetworkState {
    /// Always the same number of draws per message, whatever the outcome, so that one
    /// message's fate never shifts the decisions of the next.
    fn decide(&mut self) -> FaultDecision {
        let drop_draw: f64 = self.rng.random();
        let duplicate_draw: f64 = self.rng.random();
        let (low, high) = ordered(self.plan.delay_ms_min, self.plan.delay_ms_max);
        let delay_ms = self.rng.random_range(low..=high);
        let duplicate_delay_ms = self.rng.random_range(low..=high);
        FaultDecision {
            dropped: drop_draw < self.plan.drop_probability,
            delay: Duration::from_millis(delay_ms),
            duplicate_delay: (duplicate_draw < self.plan.duplicate_probability)
                .then(|| Duration::from_millis(duplicate_delay_ms)),
        }
    }

    /// Decides the fate of one message from `from` to `to`: refused now (Err), or a route
    /// (possibly marked dropped).
    fn route(
        &mut self,
        from: NodeId,
        to: NodeId,
        kind: MessageKind,
    ) -> Result<Route, TransportError> {
        self.stats.sent += 1;
        let endpoint = match self.endpoints.get(&to) {
            Some(endpoint) if !self.link_blocked(from, to) => Arc::clone(endpoint),
            Some(_) => {
                self.stats.refused += 1;
                return Err(unreachable(to, "link blocked by a partition"));
            }
            None => {
                self.stats.refused += 1;
                return Err(unreachable(to, "no live endpoint"));
            }
        };
        let mut decision = self.decide();
        if kind != MessageKind::Request {
            // Only requests are duplicated; the draw still happened, keeping the sequence.
            decision.duplicate_delay = None;
        }
        let copies = 1 + u64::from(decision.duplicate_delay.is_some());
        if !decision.dropped && self.in_flight + copies > MEMORY_IN_FLIGHT_MAX {
            // A full network buffer loses the message, as a real one would.
            decision.dropped = true;
        }
        if decision.dropped {
            self.stats.dropped += 1;
            decision.duplicate_delay = None;
        } else {
            self.in_flight += copies;
        }
        if decision.duplicate_delay.is_some() {
            self.stats.duplicated += 1;
            self.stats.sent += 1;
        }
        Ok(Route { endpoint, decision })
    }

    /// At arrival: the message is delivered only if the link is still open and the endpoint it
    /// was routed to is still the live one.
    fn arrive(&mut self, from: NodeId, to: NodeId, endpoint: &Arc<Endpoint>) -> bool {
        let live = self
            .endpoints
            .get(&to)
            .is_some_and(|current| Arc::ptr_eq(current, endpoint));
        let delivered = live && endpoint.is_alive() && !self.link_blocked(from, to);
        self.in_flight = self.in_flight.saturating_sub(1);
        if delivered {
            self.stats.delivered += 1;
        } else {
            self.stats.dropped += 1;
        }
        delivered
    }

    fn link_blocked(&self, from: NodeId, to: NodeId) -> bool {
        from != to
            && (self.blocked.contains(&(from, to))
                || self.isolated.contains(&from)
                || self.isolated.contains(&to))
    }
}

impl Endpoint {
    fn new() -> Endpoint {
        Endpoint {
            handler: RwLock::new(None),
            alive: AtomicBool::new(true),
            killed: watch::channel(false).0,
        }
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn kill(&self) {
        self.alive.store(false, Ordering::Release);
        self.killed.send_replace(true);
    }

    fn handler(&self) -> Option<Arc<dyn Handler>> {
        self.handler
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Resolves when the endpoint is killed (crash or shutdown).
    fn killed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.killed.subscribe();
        async move {
            let _ = receiver.wait_for(|killed| *killed).await;
        }
    }
}

impl MemoryTransport {
    /// Routes one message to `to` under the fault plan: its delivery (none when the plan drops
    /// it) and the fault decision that shapes it.
    fn dispatch(
        &self,
        to: NodeId,
        kind: MessageKind,
    ) -> Result<(Option<Delivery>, FaultDecision), TransportError> {
        if !self.endpoint.is_alive() {
            return Err(TransportError::Shutdown);
        }
        let route = self.network.inner.lock().route(self.node, to, kind)?;
        let delivery = (!route.decision.dropped).then(|| Delivery {
            network: self.network.clone(),
            from: self.node,
            from_endpoint: Arc::clone(&self.endpoint),
            to,
            to_endpoint: Arc::clone(&route.endpoint),
        });
        Ok((delivery, route.decision))
    }

    /// Routes the request and spawns its delivery; the receiver yields the response, or an
    /// error when the request or response was lost.
    fn start_call(
        &self,
        to: NodeId,
        request: Bytes,
    ) -> Result<oneshot::Receiver<Result<Bytes, TransportError>>, TransportError> {
        let (delivery, decision) = self.dispatch(to, MessageKind::Request)?;
        let (reply, response) = oneshot::channel();
        if let Some(delivery) = delivery {
            if let Some(duplicate_delay) = decision.duplicate_delay {
                let copy = delivery.clone();
                let request = request.clone();
                tokio::spawn(
                    async move { copy.deliver_request(duplicate_delay, request, None).await },
                );
            }
            tokio::spawn(delivery.deliver_request(decision.delay, request, Some(reply)));
        }
        Ok(response)
    }

    /// Routes a stream open; on arrival the receiver's handler runs on a bounded channel.
    fn start_stream(
        &self,
        to: NodeId,
        header: Bytes,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<MemorySink>, TransportError> {
        let (delivery, decision) = self.dispatch(to, MessageKind::StreamOpen)?;
        let (opened, open_result) = oneshot::channel();
        if let Some(delivery) = delivery {
            tokio::spawn(delivery.deliver_stream(decision.delay, header, opened, timeout));
        }
        Ok(open_result)
    }
}

/// Holds a message for its network delay. A zero delay does not touch the timer: tokio rounds
/// every deadline up to its next millisecond tick, which would add up to a millisecond to each
/// hop of a network that has no delay.
async fn network_delay(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// One message in flight from `from` to `to`.
#[derive(Clone)]
struct Delivery {
    network: MemoryNetwork,
    from: NodeId,
    from_endpoint: Arc<Endpoint>,
    to: NodeId,
    to_endpoint: Arc<Endpoint>,
}

impl Delivery {
    async fn deliver_request(
        self,
        delay: Duration,
        request: Bytes,
        reply: Option<oneshot::Sender<Result<Bytes, TransportError>>>,
    ) {
        network_delay(delay).await;
        if !self
            .network
            .inner
            .lock()
            .arrive(self.from, self.to, &self.to_endpoint)
        {
            return;
        }
        let result = match self.to_endpoint.handler() {
            None => Err(HandlerError::NotReady),
            Some(handler) => {
                let killed = self.to_endpoint.killed();
                tokio::select! {
                    result = handler.on_request(self.from, request) => result,
                    () = killed => return,
                }
            }
        };
        let Some(reply) = reply else { return };
        // The response crosses the network too: the reverse link, the fault plan, a crash.
        let route = match self
            .network
            .inner
            .lock()
            .route(self.to, self.from, MessageKind::Response)
        {
            Ok(route) if !route.decision.dropped => route,
            _ => return,
        };
        // Arrival checks that the caller's endpoint is still the one that asked.
        network_delay(route.decision.delay).await;
        if !self
            .network
            .inner
            .lock()
            .arrive(self.to, self.from, &self.from_endpoint)
        {
            return;
        }
        let result = result.map_err(|error| TransportError::Remote {
            node: self.to,
            error,
        });
        let _ = reply.send(result);
    }

    async fn deliver_stream(
        self,
        delay: Duration,
        header: Bytes,
        opened: oneshot::Sender<MemorySink>,
        timeout: Duration,
    ) {
        network_delay(delay).await;
        if !self
            .network
            .inner
            .lock()
            .arrive(self.from, self.to, &self.to_endpoint)
        {
            return;
        }
        let (chunks, chunk_receiver) = mpsc::channel(MEMORY_STREAM_CHUNKS_MAX);
        let (respond, response) = oneshot::channel();
        let sink = MemorySink {
            network: self.network.clone(),
            from_endpoint: Arc::clone(&self.from_endpoint),
            from: self.from,
            to: self.to,
            chunks: Some(chunks),
            response: Some(response),
            early: None,
            timeout,
        };
        if opened.send(sink).is_err() {
            return;
        }
        let source = MemorySource {
            node: self.from,
            chunks: chunk_receiver,
            ended: false,
        };
        let result = match self.to_endpoint.handler() {
            None => Err(HandlerError::NotReady),
            Some(handler) => {
                let killed = self.to_endpoint.killed();
                let body = InboundStream::new(Box::new(source));
                tokio::select! {
                    result = handler.on_stream(self.from, header, body) => result,
                    () = killed => return,
                }
            }
        };
        let blocked = self.network.is_blocked(self.to, self.from);
        if !blocked && self.from_endpoint.is_alive() {
            let _ = respond.send(result);
        }
    }
}

fn ordered(a: u64, b: u64) -> (u64, u64) {
    if a <= b { (a, b) } else { (b, a) }
}

fn unreachable(node: NodeId, reason: &str) -> TransportError {
    TransportError::Unreachable {
        node,
        reason: reason.into(),
    }
}

fn lost(node: NodeId, reason: &str) -> TransportError {
    TransportError::ConnectionLost {
        node,
        reason: reason.into(),
    }
}
