//! Replication engine of the NodeDB cluster: multi-raft on openraft with a durable redb log.
//!
//! **Architecture Invariant:** every openraft type stays inside this crate; the node crate sees
//! only this crate's own API. The network is reached only through the transport trait.

pub mod log_db;
mod types;
mod wire;
pub mod state_machine;
mod snapshot;
mod sm_adapter;
mod log_store;
mod network;
mod router;
