//! `raft-rpc` and `raft-log`: the Raft wire decoders of `nodedb-cluster-raft/src/wire.rs`,
//! reached through the crate's fuzzing hooks (RPC envelopes, replies and snapshot stream
//! headers from peers; log entries, votes and log ids from the log file).

use crate::{Target, Verdict, outcome};
use nodedb_cluster_raft::fuzzing;

#[derive(Debug, Default)]
pub struct RaftRpcTarget;

impl Target for RaftRpcTarget {
    fn name(&self) -> &'static str {
        "raft-rpc"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        fuzzing::rpc_seeds()
    }

    fn check(&mut self, input: &[u8]) -> Verdict {
        fuzzing::check_rpc(input).map(|label| outcome(&label))
    }
}

#[derive(Debug, Default)]
pub struct RaftLogTarget;

impl Target for RaftLogTarget {
    fn name(&self) -> &'static str {
        "raft-log"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        fuzzing::log_record_seeds()
    }

    fn check(&mut self, input: &[u8]) -> Verdict {
        fuzzing::check_log_record(input).map(|label| outcome(&label))
    }
}
