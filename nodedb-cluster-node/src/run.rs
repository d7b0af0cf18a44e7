//! `nodedb-cluster start`: turns a validated [`NodeConfig`] into a running node with its admin
//! API, and stops it cleanly on SIGTERM or Ctrl-C.

use crate::cluster::{Cluster, ClusterConfig, StartError, start_cluster, start_cluster_on};
use crate::config::{LogConfig, NodeConfig};
use crate::engine::EngineFactory;
use crate::http::{self, ApiState};
use crate::node_service::NodeService;
use anyhow::{Context, Result};
use nodedb_cluster_raft::RaftTimings;
use nodedb_cluster_transport::quic::{QuicConfig, QuicTimings, QuicTransport, UdpFaults};
use nodedb_cluster_transport::tls::{TlsMaterial, TlsMode};
use std::io::IsTerminal;
use std::sync::Arc;

/// Deadline of a proposal or linearizable read inside the node.
const PROPOSAL_TIMEOUT_MS: u64 = 5_000;

/// Runs the node until a shutdown signal; returns after a clean stop.
pub async fn run(config: NodeConfig) -> Result<()> {
    let metrics = crate::metrics::install_recorder().context("installing the metrics recorder")?;
    let metrics_upkeep = tokio::spawn(crate::metrics::upkeep(metrics.clone()));
    let cluster_config = cluster_config(&config)?;
    tracing::info!(
        node = config.node_id,
        listen = %config.listen_addr,
        admin = %config.admin_addr,
        data_dir = %config.data_dir.display(),
        "starting"
    );
    let listener = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding the admin API on {}", config.admin_addr))?;
    let cluster = match config.udp_faults() {
        None => start_cluster(cluster_config).await?,
        Some(faults) => start_with_udp_faults(cluster_config, faults).await?,
    };
    tracing::info!(node = config.node_id, "node is up");
    let state = ApiState {
        service: Arc::new(NodeService::new(cluster.clone())),
        token: config.admin.token.as_deref().map(Arc::from),
        metrics,
    };
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(http::serve(listener, state, async {
        let _ = api_stopped.await;
    }));
    tokio::select! {
        () = shutdown_signal() => tracing::info!("shutting down"),
        () = cluster.wait_decommissioned() => {
            tracing::info!("this node is decommissioned: shutting down");
        }
    }
    let _ = stop_api.send(());
    let _ = api.await;
    cluster.shutdown().await;
    metrics_upkeep.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Starts the node over a QUIC endpoint whose outgoing datagrams go through the UDP fault
/// layer (`[faults]`, for chaos runs only).
async fn start_with_udp_faults(
    config: ClusterConfig,
    faults: UdpFaults,
) -> Result<Cluster, StartError> {
    tracing::warn!(
        delay_ms_max = faults.delay_ms_max,
        duplicate_probability = faults.duplicate_probability,
        seed = faults.seed,
        "[faults] is set: this node DELAYS, REORDERS AND DUPLICATES every datagram it sends. \
         For chaos testing only; remove [faults] from the config of any real cluster."
    );
    let quic = QuicTransport::bind_with_udp_faults(
        QuicConfig {
            node_id: config.node_id,
            listen_addr: config.listen_addr,
            tls: config.tls.clone(),
            timings: QuicTimings::default(),
        },
        faults,
    )
    .map_err(|error| StartError::Bind {
        addr: config.listen_addr,
        reason: error.to_string(),
    })?;
    start_cluster_on(config, quic).await
}

/// The library configuration a node config describes; reads the TLS files.
pub fn cluster_config(config: &NodeConfig) -> Result<ClusterConfig> {
    let tls = if config.tls.insecure {
        tracing::warn!(
            "TLS is OFF (tls.insecure = true): peers are not authenticated and traffic is not \
             encrypted. Use this for local development only."
        );
        TlsMode::Insecure
    } else {
        let read = |path: &Option<std::path::PathBuf>, what: &str| -> Result<String> {
            let path = path
                .as_ref()
                .with_context(|| format!("tls.{what} is not set"))?;
            std::fs::read_to_string(path)
                .with_context(|| format!("reading tls.{what} from {}", path.display()))
        };
        TlsMode::Secure(TlsMaterial {
            ca_cert_pem: read(&config.tls.ca_cert, "ca_cert")?,
            cert_pem: read(&config.tls.cert, "cert")?,
            key_pem: read(&config.tls.key, "key")?,
        })
    };
    let raft = &config.raft;
    Ok(ClusterConfig {
        node_id: config.node(),
        listen_addr: config.listen_addr,
        admin_addr: config.admin_addr,
        seeds: config.seeds.clone(),
        bootstrap: config.bootstrap,
        num_groups: config.num_groups,
        replication_factor: u8::try_from(config.replication_factor)
            .context("replication_factor does not fit in a byte")?,
        data_dir: config.data_dir.clone(),
        tls,
        timings: RaftTimings {
            heartbeat_interval_ms: raft.heartbeat_interval_ms,
            election_timeout_ms_min: raft.election_timeout_ms_min,
            election_timeout_ms_max: raft.election_timeout_ms_max,
            proposal_timeout_ms: PROPOSAL_TIMEOUT_MS,
            snapshot_logs_since_last: raft.snapshot_logs_since_last,
            snapshot_log_bytes_since_last: raft.snapshot_log_bytes_since_last,
            quiesce_after_ms: raft.quiesce_after_ms,
            ..RaftTimings::default()
        },
        node_down_timeout: std::time::Duration::from_millis(raft.node_down_timeout_ms),
        engine: EngineFactory::kv(),
        migration: config.migration.settings(),
    })
}

/// Installs the log subscriber: `RUST_LOG` wins over the config's filter. Colours only on a
/// terminal, so that log files and collectors get plain text.
pub fn init_logging(config: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if config.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
