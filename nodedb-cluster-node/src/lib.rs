//! The NodeDB cluster node: assembles the transport, the catalog and multi-raft into a running
//! node, and ships the `nodedb-cluster` binary.
//!
//! How to use it from another NodeDB component:
//! 1. Fill a [`cluster::ClusterConfig`] (node id, QUIC and admin addresses, seeds, data dir,
//!    TLS material, Raft timings) or build one from a TOML file with [`NodeConfig::load`] and
//!    [`run::cluster_config`].
//! 2. [`cluster::start_cluster`] binds the QUIC endpoint and restarts, bootstraps or joins, as
//!    the data dir and the seeds say; it returns a [`cluster::Cluster`].
//! 3. Address work to vShards with [`cluster::Cluster::propose`] and
//!    [`cluster::Cluster::read`] (from any node: routed to the owning group's leader in one
//!    hop, re-routed when a migration moves the vShard), watch topology and routing with
//!    [`cluster::Cluster::metadata`], and stop with [`cluster::Cluster::shutdown`], which hands
//!    leaderships over first. A component with its own replicated engine sets
//!    [`cluster::ClusterConfig::engine`] to an [`engine::EngineFactory`] of its
//!    `StateMachine`; the built-in key-value engine is the default.
//!
//! ```no_run
//! # async fn example(config: nodedb_cluster_node::cluster::ClusterConfig) -> anyhow::Result<()> {
//! use nodedb_cluster_core::vshard_for_key;
//! use nodedb_cluster_raft::ReadConsistency;
//! use nodedb_cluster_raft::kv::{KvCommand, KvQuery};
//!
//! let cluster = nodedb_cluster_node::cluster::start_cluster(config).await?;
//! let key = b"user:42".to_vec();
//! let vshard = vshard_for_key(&key);
//! let command = KvCommand::Put { key: key.clone(), value: b"alice".to_vec() };
//! let write = cluster.propose(vshard, command.encode()).await?;
//! println!("committed in {} at index {}", write.group, write.index);
//! let answer = cluster
//!     .read(vshard, KvQuery::Get { key }.encode(), ReadConsistency::Linearizable)
//!     .await?;
//! println!("read {} bytes", answer.len());
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! **Architecture Invariant:** this is the only crate that owns a tokio runtime, wires concrete
//! implementations together and has a `main`.

pub mod cluster;
pub mod config;
pub mod control;
pub mod control_server;
pub mod engine;
pub mod group_client;
mod hosting;
mod metadata_store;
pub mod metrics;
pub mod migration;

pub use config::{ConfigError, NodeConfig};
pub mod http;
pub mod mux;
pub mod node_service;
mod reconciler;
pub mod run;
pub mod service;
pub mod vshard_client;
