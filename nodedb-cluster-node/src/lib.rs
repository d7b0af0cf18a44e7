//! The NodeDB cluster node: assembles the transport, the catalog and multi-raft into a running
//! node, and ships the `nodedb-cluster` binary.
//!
//! **Architecture Invariant:** this is the only crate that owns a tokio runtime, wires concrete
//! implementations together and has a `main`.

pub mod cluster;
pub mod config;
pub mod control;
pub mod control_server;
pub mod group_client;
mod hosting;

pub use config::{ConfigError, NodeConfig};
pub mod http;
pub mod mux;
pub mod node_service;
mod reconciler;
pub mod run;
pub mod service;
