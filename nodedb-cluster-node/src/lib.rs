//! The node: assembles transport, catalog and multi-raft.
