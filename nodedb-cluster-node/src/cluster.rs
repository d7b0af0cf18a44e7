//! The library entry point: [`ClusterConfig`] and [`start_cluster`], which opens a node's
//! disk state, decides between restart, bootstrap and join, and returns the running
//! [`Cluster`] with its topology, routing and multi-raft handle.

use crate::control::{ControlError, ControlRequest, ControlResponse};
use crate::control_server::ControlServer;
use crate::engine::EngineFactory;
use crate::group_client::GroupClient;
use crate::hosting;
use crate::metadata_store;
use crate::metrics;
use crate::migration::{self, Bandwidth, MigrationContext, MigrationSettings, ProgressBook};
use crate::mux::{Channel, Multiplexer};
use crate::reconciler::{self, ReconcilerContext};
use crate::vshard_client::{VShardClient, VShardWrite};
use nodedb_cluster_catalog::{Catalog, CatalogError, ClusterId as StoredClusterId};
use nodedb_cluster_core::metadata::ClusterId;
use nodedb_cluster_core::{
    GroupId, METADATA_GROUP, MetadataCommand, MetadataState, NodeId, NodeInfo, NodeState, PeerAddr,
    VShardId,
};
use nodedb_cluster_raft::log_db::LogDb;
use nodedb_cluster_raft::{
    AppliedMetadata, MetadataQuery, MetadataStateMachine, MultiRaft, RaftTimings, ReadConsistency,
    decode_metadata_state,
};
use nodedb_cluster_transport::quic::{QuicConfig, QuicTimings, QuicTransport};
use nodedb_cluster_transport::tls::TlsMode;
use nodedb_cluster_transport::{Bytes, Transport};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// File name of the Raft log under the data dir.
pub const RAFT_LOG_FILE: &str = "raft-log.redb";
/// Join attempts (over all seeds) before start gives up.
pub const JOIN_ATTEMPTS_MAX: u32 = 60;
/// Pause between join rounds grows to this.
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long start waits for the metadata group to elect this node or to admit it.
const START_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a graceful shutdown waits for this node's leaderships to move elsewhere.
pub const SHUTDOWN_HANDOVER_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of one control RPC.
pub const CONTROL_RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a node asks the metadata leader whether it is decommissioned (see
/// [`Cluster::wait_decommissioned`]).
pub const DECOMMISSION_POLL_INTERVAL: Duration = Duration::from_secs(3);

/// What a node needs to know to start.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// QUIC address, bound and advertised to peers.
    pub listen_addr: SocketAddr,
    /// HTTP admin address, advertised in the topology.
    pub admin_addr: SocketAddr,
    /// QUIC addresses of nodes to contact when joining (may include this node).
    pub seeds: Vec<SocketAddr>,
    /// Initialize a new cluster even without being the lowest-id seed.
    pub bootstrap: bool,
    pub num_groups: u32,
    pub replication_factor: u8,
    pub data_dir: PathBuf,
    pub tls: TlsMode,
    pub timings: RaftTimings,
    /// A node silent this long is marked Down and its replicas are replaced.
    pub node_down_timeout: Duration,
    /// The engine of every data-group replica ([`EngineFactory::kv`] by default).
    pub engine: EngineFactory,
    /// Migration bandwidth and concurrency, automatic rebalancing.
    pub migration: MigrationSettings,
}

/// Why a node could not start. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("cannot open the Raft log: {0}")]
    RaftLog(String),
    #[error("cannot bind the QUIC endpoint on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("cannot start group {group}: {reason}")]
    Group { group: GroupId, reason: String },
    #[error("bootstrap failed: {0}")]
    Bootstrap(String),
    #[error("could not join through seeds {seeds:?}: {last_error}")]
    Join {
        seeds: Vec<SocketAddr>,
        last_error: String,
    },
}

/// A running node of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    raft: MultiRaft,
    log_db: LogDb,
    mux: Arc<Multiplexer>,
    groups: GroupClient,
    vshards: VShardClient,
    migrations: ProgressBook,
    metadata: watch::Receiver<AppliedMetadata>,
    /// When this node last answered an `Identify` (its start until the first one); see
    /// [`Cluster::wait_decommissioned`].
    identified: watch::Receiver<Instant>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Saves the applied metadata into the catalog; awaited (not aborted) on shutdown, so
    /// that the last state is written and the catalog is closed when shutdown returns.
    metadata_saver: Mutex<Option<JoinHandle<()>>>,
}

/// Binds the node's QUIC endpoint and starts it (see [`start_cluster_on`]).
pub async fn start_cluster(config: ClusterConfig) -> Result<Cluster, StartError> {
    let quic = QuicTransport::bind(QuicConfig {
        node_id: config.node_id,
        listen_addr: config.listen_addr,
        tls: config.tls.clone(),
        timings: QuicTimings::default(),
    })
    .map_err(|error| StartError::Bind {
        addr: config.listen_addr,
        reason: error.to_string(),
    })?;
    start_cluster_on(config, quic).await
}

/// Starts a node over `transport`: restart when the data dir holds cluster state, otherwise
/// bootstrap when this node is the designated seed, otherwise join through the seeds.
pub async fn start_cluster_on(
    config: ClusterConfig,
    transport: Arc<dyn Transport>,
) -> Result<Cluster, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let catalog = open_catalog(&config).await?;
    let log_db = LogDb::open(&config.data_dir.join(RAFT_LOG_FILE))
        .map_err(|error| StartError::RaftLog(error.to_string()))?;
    let mux = Multiplexer::new(transport);
    let raft_channel = mux.channel(Channel::Raft);
    let raft = MultiRaft::new(
        config.node_id,
        raft_channel.clone(),
        log_db.clone(),
        config.data_dir.clone(),
        config.timings,
    )
    .map_err(|error| StartError::RaftLog(error.to_string()))?;
    raft_channel.set_handler(raft.handler());
    let (metadata_machine, metadata) = MetadataStateMachine::new();
    let control = mux.channel(Channel::Control);
    let (identified_sender, identified) = watch::channel(Instant::now());
    control.set_handler(Arc::new(ControlServer::new(
        config.node_id,
        raft.clone(),
        metadata.clone(),
        control.clone(),
        identified_sender,
    )));
    let groups = GroupClient::new(
        config.node_id,
        raft.clone(),
        control.clone(),
        metadata.clone(),
        CONTROL_RPC_TIMEOUT,
    );
    // A replica taking over a vShard that its node's replica of the source cannot give reads
    // it from the source's leader.
    raft.set_fenced_vshards(Arc::new(groups.clone()));
    let vshards = VShardClient::new(groups.clone(), metadata.clone());
    let (stop, _) = watch::channel(false);
    let cluster = Cluster {
        inner: Arc::new(Inner {
            config,
            raft,
            log_db,
            mux,
            groups,
            vshards,
            migrations: ProgressBook::default(),
            metadata,
            identified,
            stop,
            tasks: Mutex::new(Vec::new()),
            metadata_saver: Mutex::new(None),
        }),
    };
    let stored = cluster
        .inner
        .raft
        .stored_groups()
        .map_err(|error| StartError::RaftLog(error.to_string()))?;
    let known_cluster = catalog.cluster_id()?;
    if known_cluster.is_some() || stored.contains(&METADATA_GROUP) {
        if let Some((applied_index, state)) = metadata_store::load(&catalog) {
            let peers = metadata_store::learn_peer_addresses(
                cluster.inner.mux.inner(),
                cluster.node(),
                &state,
            );
            tracing::info!(
                applied_index,
                peers,
                "peer addresses from the saved metadata"
            );
        }
        cluster
            .restart(metadata_machine, &stored, known_cluster)
            .await?;
    } else if cluster.is_designated_bootstrapper().await {
        cluster.bootstrap(metadata_machine, &catalog).await?;
    } else {
        cluster.join(metadata_machine, &catalog).await?;
    }
    cluster.spawn_background_tasks(catalog);
    Ok(cluster)
}

/// True when `state` records `node` as Decommissioned.
fn is_decommissioned(state: &MetadataState, node: NodeId) -> bool {
    state.topology().state_of(node) == Some(NodeState::Decommissioned)
}

impl Cluster {
    pub fn node(&self) -> NodeId {
        self.inner.config.node_id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The multi-raft engine of this node.
    pub fn raft(&self) -> &MultiRaft {
        &self.inner.raft
    }

    /// Routes group operations to their leaders.
    pub fn groups(&self) -> &GroupClient {
        &self.inner.groups
    }

    /// Replicates `command`, which touches only `vshard`, through the group that owns the
    /// vShard, from any node (forwarded to the group's leader), and returns the engine's
    /// response once applied. A vShard being migrated pauses the call until the routing
    /// switches; a timeout leaves the outcome unknown ([`ControlError::outcome_unknown`]).
    pub async fn propose(
        &self,
        vshard: VShardId,
        command: Vec<u8>,
    ) -> Result<VShardWrite, ControlError> {
        self.inner.vshards.propose(vshard, command).await
    }

    /// Answers `query`, which reads only `vshard`, from the group that owns it:
    /// [`ReadConsistency::Linearizable`] confirms leadership with a quorum first (sees every
    /// acknowledged write); [`ReadConsistency::Local`] reads this node's replica (or the
    /// nearest one) as it is, possibly behind.
    pub async fn read(
        &self,
        vshard: VShardId,
        query: Vec<u8>,
        consistency: ReadConsistency,
    ) -> Result<Vec<u8>, ControlError> {
        let linearizable = consistency == ReadConsistency::Linearizable;
        self.inner.vshards.read(vshard, query, linearizable).await
    }

    /// What this node measured of the migrations it drove as metadata leader.
    pub fn migration_progress(&self) -> &ProgressBook {
        &self.inner.migrations
    }

    /// Routes vShard operations (what [`Cluster::propose`] and [`Cluster::read`] use).
    pub fn vshards(&self) -> &VShardClient {
        &self.inner.vshards
    }

    /// The applied metadata (topology, routing, migrations); changes as group 0 commits.
    pub fn metadata(&self) -> watch::Receiver<AppliedMetadata> {
        self.inner.metadata.clone()
    }

    /// Returns once the metadata records this node as Decommissioned (every replica moved
    /// off it): the node should then shut down. Pending forever otherwise.
    ///
    /// The local replica of group 0 is not always enough: a node that was down or cut off
    /// when it was decommissioned may have lost its group-0 replica (a Down node's is removed,
    /// and a learner's goes with the Decommissioned record) and then hears nothing more. Such a
    /// node is Draining in its own view, or, if it never heard of its draining, no longer
    /// pinged by the metadata leader, whose liveness pings skip Decommissioned nodes. Only
    /// then does it ask the metadata leader for its state, every
    /// [`DECOMMISSION_POLL_INTERVAL`]; an Active node that the leader pings asks nothing.
    pub async fn wait_decommissioned(&self) {
        let node = self.node();
        let mut metadata = self.inner.metadata.clone();
        let mut next_ask = Instant::now() + DECOMMISSION_POLL_INTERVAL;
        loop {
            let draining = {
                let applied = metadata.borrow_and_update();
                if is_decommissioned(&applied.state, node) {
                    return;
                }
                applied.state.topology().state_of(node) == Some(NodeState::Draining)
            };
            if Instant::now() >= next_ask {
                next_ask = Instant::now() + DECOMMISSION_POLL_INTERVAL;
                let may_not_hear_it = draining || !self.hears_metadata_leader();
                if may_not_hear_it && self.leader_says_decommissioned().await {
                    return;
                }
            }
            tokio::select! {
                changed = metadata.changed() => {
                    // No more applied states (the node is stopping): only the leader can tell.
                    if changed.is_err() {
                        tokio::time::sleep_until(next_ask).await;
                    }
                }
                () = tokio::time::sleep_until(next_ask) => {}
            }
        }
    }

    /// True when this node leads group 0 or was pinged within the last
    /// [`DECOMMISSION_POLL_INTERVAL`]: the metadata leader still counts it as a member.
    fn hears_metadata_leader(&self) -> bool {
        let leads = self.inner.raft.is_leader(METADATA_GROUP);
        leads || self.inner.identified.borrow().elapsed() < DECOMMISSION_POLL_INTERVAL
    }

    /// True when the metadata leader answers that this node is Decommissioned.
    async fn leader_says_decommissioned(&self) -> bool {
        if !self.is_member() {
            return false;
        }
        let query = postcard::to_stdvec(&MetadataQuery::State).expect("a query encodes");
        let answer = self.inner.groups.query(METADATA_GROUP, query, true).await;
        answer
            .ok()
            .and_then(|bytes| decode_metadata_state(&bytes))
            .is_some_and(|state| is_decommissioned(&state, self.node()))
    }

    /// True once this node is in the topology and its metadata is bootstrapped.
    pub fn is_member(&self) -> bool {
        let metadata = self.inner.metadata.borrow();
        metadata.state.is_bootstrapped() && metadata.state.topology().get(self.node()).is_some()
    }

    /// Stops gracefully: hands this node's leaderships to other voters (bounded by
    /// [`SHUTDOWN_HANDOVER_TIMEOUT`]), then stops background tasks, every replica, the
    /// endpoint and the log.
    pub async fn shutdown(&self) {
        let still_leading = self.hand_over_leaderships().await;
        if still_leading > 0 {
            tracing::warn!(
                groups = still_leading,
                "stopping while still leading some groups"
            );
        }
        self.inner.stop.send_replace(true);
        let saver = self
            .inner
            .metadata_saver
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(saver) = saver {
            let _ = saver.await;
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        self.inner.raft.shutdown().await;
        self.inner.mux.inner().shutdown().await;
        self.inner.log_db.shutdown();
    }

    /// Asks every group this node leads to elect the most caught-up other voter, and waits
    /// until none is led here or the handover deadline passes. Returns the groups still led.
    pub async fn hand_over_leaderships(&self) -> usize {
        let raft = &self.inner.raft;
        let me = self.node();
        let led_here = || {
            raft.groups()
                .into_iter()
                .filter(|group| raft.is_leader(*group))
                .collect::<Vec<GroupId>>()
        };
        for group in led_here() {
            let Some(status) = raft.status(group) else {
                continue;
            };
            let successor = status
                .followers
                .iter()
                .filter(|follower| follower.node != me && status.voters.contains(&follower.node))
                .min_by_key(|follower| (follower.lag, follower.node))
                .map(|follower| follower.node);
            if let Some(successor) = successor
                && let Err(error) = raft.transfer_leader(group, successor).await
            {
                tracing::debug!(%group, %error, "leadership handover not started");
            }
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_HANDOVER_TIMEOUT;
        loop {
            let remaining = led_here()
                .into_iter()
                .filter(|group| {
                    raft.status(*group)
                        .is_some_and(|status| status.voters.len() > 1)
                })
                .count();
            if remaining == 0 || tokio::time::Instant::now() >= deadline {
                return remaining;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn restart(
        &self,
        metadata_machine: MetadataStateMachine,
        stored: &[GroupId],
        known_cluster: Option<StoredClusterId>,
    ) -> Result<(), StartError> {
        tracing::info!(node = %self.node(), groups = stored.len(), "restarting from the data dir");
        self.open_group(METADATA_GROUP, Box::new(metadata_machine))
            .await?;
        for group in stored.iter().filter(|group| !group.is_metadata()) {
            let engine = self.inner.config.engine.make(*group);
            self.open_group(*group, engine).await?;
        }
        if let Some(stored_id) = known_cluster {
            self.finish_interrupted_bootstrap(ClusterId(stored_id.0.to_be_bytes()))
                .await;
        }
        Ok(())
    }

    /// A bootstrap interrupted before its Bootstrap command committed is finished by the
    /// node that began it: only it can lead a metadata group without metadata.
    async fn finish_interrupted_bootstrap(&self, cluster_id: ClusterId) {
        let deadline = tokio::time::Instant::now() + self.election_wait();
        while tokio::time::Instant::now() < deadline {
            if self.inner.metadata.borrow().state.is_bootstrapped() {
                return;
            }
            let leads = self
                .inner
                .raft
                .status(METADATA_GROUP)
                .is_some_and(|status| {
                    status.leader == Some(self.node()) && status.voters == [self.node()]
                });
            if leads {
                if let Err(error) = self.propose_bootstrap(cluster_id).await {
                    tracing::warn!(%error, "could not finish the interrupted bootstrap");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The lowest-id seed bootstraps, or any node started with `bootstrap = true`. Seeds are
    /// identified by asking them; a seed that already belongs to a cluster means "join".
    async fn is_designated_bootstrapper(&self) -> bool {
        let config = &self.inner.config;
        if config.bootstrap {
            return true;
        }
        let others: Vec<SocketAddr> = config
            .seeds
            .iter()
            .copied()
            .filter(|seed| *seed != config.listen_addr)
            .collect();
        if others.is_empty() {
            return true;
        }
        let control = self.inner.mux.channel(Channel::Control);
        let mut backoff = Duration::from_millis(100);
        for round in 0..JOIN_ATTEMPTS_MAX {
            let mut lowest = true;
            let mut all_answered = true;
            for seed in &others {
                match identify(&control, *seed).await {
                    Ok((_, Some(_))) => return false,
                    Ok((node, None)) => lowest &= config.node_id < node,
                    Err(error) => {
                        tracing::info!(%seed, %error, round, "seed not answering yet");
                        all_answered = false;
                    }
                }
            }
            if all_answered {
                return lowest;
            }
            if !lowest {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
        }
        false
    }

    async fn bootstrap(
        &self,
        metadata_machine: MetadataStateMachine,
        catalog: &Catalog,
    ) -> Result<(), StartError> {
        let config = &self.inner.config;
        let cluster_id = ClusterId(new_cluster_id());
        tracing::info!(node = %self.node(), cluster = %cluster_id, "bootstrapping a new cluster");
        catalog.set_cluster_id(StoredClusterId(u128::from_be_bytes(cluster_id.0)))?;
        let members = BTreeMap::from([(self.node(), config.listen_addr.to_string())]);
        let create = |group: GroupId, machine| {
            let members = members.clone();
            async move {
                self.inner
                    .raft
                    .create_group(group, machine, Some(members))
                    .await
                    .map_err(|error| StartError::Group {
                        group,
                        reason: error.to_string(),
                    })
            }
        };
        create(METADATA_GROUP, Box::new(metadata_machine)).await?;
        for group in 1..=config.num_groups {
            let group = GroupId(group);
            create(group, config.engine.make(group)).await?;
        }
        self.wait_for_metadata_leadership().await?;
        self.propose_bootstrap(cluster_id)
            .await
            .map_err(StartError::Bootstrap)
    }

    async fn wait_for_metadata_leadership(&self) -> Result<(), StartError> {
        let deadline = tokio::time::Instant::now() + START_STEP_TIMEOUT;
        loop {
            if self.inner.raft.is_leader(METADATA_GROUP) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StartError::Bootstrap(format!(
                    "this node did not become leader of the metadata group within {START_STEP_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn propose_bootstrap(&self, cluster_id: ClusterId) -> Result<(), String> {
        let config = &self.inner.config;
        let command = MetadataCommand::Bootstrap {
            cluster_id,
            num_groups: config.num_groups,
            replication_factor: config.replication_factor,
            first_node: self.node_info(NodeState::Active)?,
        };
        self.inner.groups.propose_metadata(&command).await
    }

    async fn join(
        &self,
        metadata_machine: MetadataStateMachine,
        catalog: &Catalog,
    ) -> Result<(), StartError> {
        let config = &self.inner.config;
        let me = self
            .node_info(NodeState::Joining)
            .map_err(|reason| StartError::Join {
                seeds: config.seeds.clone(),
                last_error: reason,
            })?;
        let control = self.inner.mux.channel(Channel::Control);
        let request = ControlRequest::Join {
            node: me,
            forwarded: false,
        };
        let mut backoff = Duration::from_millis(100);
        let mut last_error = "no seeds configured".to_string();
        for round in 0..JOIN_ATTEMPTS_MAX {
            for seed in config
                .seeds
                .iter()
                .filter(|seed| **seed != config.listen_addr)
            {
                match call_seed(&control, *seed, &request).await {
                    Ok(ControlResponse::Joined { cluster_id }) => {
                        tracing::info!(%seed, cluster = %cluster_id, "joined");
                        catalog
                            .set_cluster_id(StoredClusterId(u128::from_be_bytes(cluster_id.0)))?;
                        self.open_group(METADATA_GROUP, Box::new(metadata_machine))
                            .await?;
                        return self.wait_for_admission().await;
                    }
                    Ok(ControlResponse::Refused(error @ ControlError::Invalid(_))) => {
                        return Err(StartError::Join {
                            seeds: config.seeds.clone(),
                            last_error: error.to_string(),
                        });
                    }
                    Ok(other) => last_error = format!("{seed} answered {other:?}"),
                    Err(error) => last_error = format!("{seed}: {error}"),
                }
            }
            tracing::info!(round, %last_error, "join not accepted yet; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
        }
        Err(StartError::Join {
            seeds: config.seeds.clone(),
            last_error,
        })
    }

    /// Waits until the metadata log, replicated to this new learner, shows this node.
    async fn wait_for_admission(&self) -> Result<(), StartError> {
        let mut metadata = self.inner.metadata.clone();
        let admitted = tokio::time::timeout(
            START_STEP_TIMEOUT,
            metadata.wait_for(|applied| applied.state.topology().get(self.node()).is_some()),
        )
        .await;
        match admitted {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StartError::Join {
                seeds: self.inner.config.seeds.clone(),
                last_error: format!(
                    "admitted, but the metadata log did not reach this node within {START_STEP_TIMEOUT:?}"
                ),
            }),
        }
    }

    async fn open_group(
        &self,
        group: GroupId,
        machine: Box<dyn nodedb_cluster_raft::StateMachine>,
    ) -> Result<(), StartError> {
        self.inner
            .raft
            .open_group(group, machine)
            .await
            .map_err(|error| StartError::Group {
                group,
                reason: error.to_string(),
            })
    }

    fn node_info(&self, state: NodeState) -> Result<NodeInfo, String> {
        let config = &self.inner.config;
        let addr = PeerAddr::parse(&config.listen_addr.to_string())
            .map_err(|error| format!("listen_addr: {error}"))?;
        let admin_addr = PeerAddr::parse(&config.admin_addr.to_string())
            .map_err(|error| format!("admin_addr: {error}"))?;
        Ok(NodeInfo {
            id: config.node_id,
            addr,
            admin_addr,
            state,
        })
    }

    fn election_wait(&self) -> Duration {
        Duration::from_millis(self.inner.config.timings.election_timeout_ms_max * 10)
    }

    fn spawn_background_tasks(&self, catalog: Catalog) {
        let inner = &self.inner;
        let saver = tokio::spawn(metadata_store::run(
            Arc::new(catalog),
            inner.metadata.clone(),
            inner.stop.subscribe(),
        ));
        *inner
            .metadata_saver
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(saver);
        let context = ReconcilerContext {
            node: self.node(),
            raft: inner.raft.clone(),
            groups: inner.groups.clone(),
            metadata: inner.metadata.clone(),
            down_timeout: inner.config.node_down_timeout,
            migration: inner.config.migration,
        };
        let tasks = [
            tokio::spawn(hosting::run(
                self.node(),
                inner.config.engine.clone(),
                inner.raft.clone(),
                inner.mux.inner().clone(),
                inner.metadata.clone(),
                inner.stop.subscribe(),
            )),
            tokio::spawn(reconciler::run(context.clone(), inner.stop.subscribe())),
            tokio::spawn(reconciler::publish_leader_hints(
                context.clone(),
                inner.stop.subscribe(),
            )),
            tokio::spawn(reconciler::rebalance::run(context, inner.stop.subscribe())),
            tokio::spawn(metrics::sample_raft(
                inner.raft.clone(),
                inner.stop.subscribe(),
            )),
            tokio::spawn(migration::run(
                MigrationContext {
                    raft: inner.raft.clone(),
                    groups: inner.groups.clone(),
                    metadata: inner.metadata.clone(),
                    progress: inner.migrations.clone(),
                    bandwidth: Arc::new(Bandwidth::new(
                        inner.config.migration.bandwidth_bytes_per_s,
                    )),
                    concurrent_max: inner.config.migration.concurrent_max,
                },
                inner.stop.subscribe(),
            )),
        ];
        inner
            .tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .extend(tasks);
    }
}

async fn open_catalog(config: &ClusterConfig) -> Result<Catalog, StartError> {
    let data_dir = config.data_dir.clone();
    let node = config.node_id;
    tokio::task::spawn_blocking(move || Catalog::open(data_dir, node))
        .await
        .map_err(|error| StartError::Bootstrap(format!("catalog open task failed: {error}")))?
        .map_err(StartError::from)
}

/// Asks whoever listens at `seed` who it is.
async fn identify(
    control: &Arc<dyn Transport>,
    seed: SocketAddr,
) -> Result<(NodeId, Option<ClusterId>), String> {
    match call_seed(control, seed, &ControlRequest::Identify).await? {
        ControlResponse::Identity { node, cluster_id } => Ok((node, cluster_id)),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

async fn call_seed(
    control: &Arc<dyn Transport>,
    seed: SocketAddr,
    request: &ControlRequest,
) -> Result<ControlResponse, String> {
    let (_, bytes) = control
        .call_addr(seed, Bytes::from(request.encode()), CONTROL_RPC_TIMEOUT)
        .await
        .map_err(|error| error.to_string())?;
    ControlResponse::decode(&bytes)
}

/// A fresh random cluster id.
fn new_cluster_id() -> [u8; 16] {
    rand::random()
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node())
            .finish_non_exhaustive()
    }
}
