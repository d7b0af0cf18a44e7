//! Durable Raft log storage for all groups of a node in one redb file.
