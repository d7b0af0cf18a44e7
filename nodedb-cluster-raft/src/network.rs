//! openraft's network for one group over the node's [`Transport`]: every RPC is a
//! [`RaftRpc`] envelope tagged with the group, sent as one request/response call with the
//! deadline openraft asks for; a snapshot is the snapshot file streamed over a bulk stream.

use crate::metrics::{self, SnapshotSend};
use crate::snapshot::SnapshotFile;
use crate::types::{RaftNode, TypeConfig, Vote, node_id};
use crate::wire::{self, RaftReply, RaftRpc, ReplyBody, RpcBody, SnapshotHeader, WIRE_VERSION};
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_transport::{Bytes, STREAM_CHUNK_BYTES_MAX, Transport, TransportError};
use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Slowest snapshot transfer rate tolerated before a send is abandoned: the overall deadline of
/// a snapshot send is its RPC deadline plus `bytes / SNAPSHOT_BYTES_PER_SECOND_MIN` seconds.
pub const SNAPSHOT_BYTES_PER_SECOND_MIN: u64 = 4 * 1024 * 1024;
/// Slowest transfer rate a Raft RPC's deadline allows for its payload (see [`rpc_deadline`]).
pub const RPC_BYTES_PER_SECOND_MIN: u64 = 16 * 1024 * 1024;
/// Shortest deadline of a Raft RPC: a follower answers an AppendEntries after an fsync, which
/// on a busy disk takes far longer than a fast heartbeat's soft limit.
pub const RPC_DEADLINE_MIN: Duration = Duration::from_millis(250);
/// Floor of the per-step deadline (open, each chunk, final answer) of a snapshot stream.
pub const SNAPSHOT_STEP_TIMEOUT_MIN: Duration = Duration::from_secs(2);

/// Creates the per-peer clients of one group.
#[derive(Clone)]
pub struct NetworkFactory {
    group: GroupId,
    local: NodeId,
    transport: Arc<dyn Transport>,
}

/// The client openraft uses to reach one peer of one group.
pub struct PeerClient {
    group: GroupId,
    local: NodeId,
    target: NodeId,
    transport: Arc<dyn Transport>,
}

impl NetworkFactory {
    pub fn new(group: GroupId, transport: Arc<dyn Transport>) -> NetworkFactory {
        NetworkFactory {
            group,
            local: transport.local_node(),
            transport,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &RaftNode) -> PeerClient {
        if let Ok(addr) = node.addr.parse() {
            self.transport.set_peer_addr(node_id(target), addr);
        }
        PeerClient {
            group: self.group,
            local: self.local,
            target: node_id(target),
            transport: Arc::clone(&self.transport),
        }
    }
}

impl PeerClient {
    async fn call(
        &self,
        body: RpcBody,
        action: RPCTypes,
        option: &RPCOption,
    ) -> Result<ReplyBody, RPCError<TypeConfig>> {
        let request = wire::encode(&RaftRpc {
            version: WIRE_VERSION,
            group: self.group,
            body,
        });
        let timeout = rpc_deadline(option.soft_ttl(), request.len());
        let reply = self
            .transport
            .call(self.target, Bytes::from(request), timeout)
            .await
            .map_err(|error| self.rpc_error(error, action, timeout))?;
        let reply: RaftReply = wire::decode(&reply)
            .map_err(|error| RPCError::Unreachable(Unreachable::new(&error)))?;
        match reply.body {
            ReplyBody::Failed(failure) => Err(RPCError::Unreachable(Unreachable::new(&failure))),
            body => Ok(body),
        }
    }

    fn rpc_error(
        &self,
        error: TransportError,
        action: RPCTypes,
        timeout: Duration,
    ) -> RPCError<TypeConfig> {
        match error {
            TransportError::Timeout { .. } => RPCError::Timeout(Timeout {
                action,
                id: self.local.0,
                target: self.target.0,
                timeout,
            }),
            TransportError::ConnectionLost { .. } => RPCError::Network(NetworkError::new(&error)),
            other => RPCError::Unreachable(Unreachable::new(&other)),
        }
    }

    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        option: &RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let file = &snapshot.snapshot;
        let header = SnapshotHeader {
            version: WIRE_VERSION,
            group: self.group,
            vote,
            meta: snapshot.meta.clone(),
            bytes: file.bytes,
            crc32c: file.crc32c,
        };
        let step_timeout = option.soft_ttl().max(SNAPSHOT_STEP_TIMEOUT_MIN);
        let mut stream = self
            .transport
            .open_stream(
                self.target,
                Bytes::from(wire::encode(&header)),
                step_timeout,
            )
            .await
            .map_err(|error| self.streaming_error(error, step_timeout))?;
        let mut reader = tokio::fs::File::open(&file.path)
            .await
            .map_err(|error| StreamingError::Unreachable(Unreachable::new(&error)))?;
        let mut remaining = file.bytes;
        while remaining > 0 {
            let length = remaining.min(STREAM_CHUNK_BYTES_MAX as u64) as usize;
            let mut chunk = vec![0u8; length];
            reader
                .read_exact(&mut chunk)
                .await
                .map_err(|error| StreamingError::Unreachable(Unreachable::new(&error)))?;
            stream
                .write(Bytes::from(chunk))
                .await
                .map_err(|error| self.streaming_error(error, step_timeout))?;
            remaining -= length as u64;
        }
        let reply = stream
            .finish()
            .await
            .map_err(|error| self.streaming_error(error, step_timeout))?;
        let reply: RaftReply = wire::decode(&reply)
            .map_err(|error| StreamingError::Unreachable(Unreachable::new(&error)))?;
        match reply.body {
            ReplyBody::Snapshot(response) => Ok(response),
            ReplyBody::Failed(failure) => {
                Err(StreamingError::Unreachable(Unreachable::new(&failure)))
            }
            other => Err(StreamingError::Unreachable(Unreachable::from_string(
                format!("unexpected answer to a snapshot: {other:?}"),
            ))),
        }
    }

    fn streaming_error(
        &self,
        error: TransportError,
        timeout: Duration,
    ) -> StreamingError<TypeConfig> {
        match self.rpc_error(error, RPCTypes::InstallSnapshot, timeout) {
            RPCError::Timeout(timeout) => StreamingError::Timeout(timeout),
            RPCError::Network(network) => StreamingError::Network(network),
            RPCError::Unreachable(unreachable) => StreamingError::Unreachable(unreachable),
            RPCError::RemoteError(remote) => StreamingError::Unreachable(Unreachable::new(&remote)),
        }
    }
}

/// The deadline of one Raft RPC of `bytes`: openraft's soft limit (derived from the heartbeat
/// interval, at least [`RPC_DEADLINE_MIN`]) plus the time to move the bytes at
/// [`RPC_BYTES_PER_SECOND_MIN`]. An AppendEntries timed out too early is sent again in full,
/// which under load turns into a loop of resends and a group that stops committing. An
/// AppendEntries carries up to 1 MiB of entries (the log reader's cap), which for large
/// entries (a vShard import, big values) would not fit a heartbeat-sized deadline.
pub fn rpc_deadline(soft_ttl: Duration, bytes: usize) -> Duration {
    soft_ttl.max(RPC_DEADLINE_MIN)
        + Duration::from_secs_f64(bytes as f64 / RPC_BYTES_PER_SECOND_MIN as f64)
}

/// Overall deadline of sending a snapshot of `bytes`: grows with the size.
pub fn snapshot_deadline(base: Duration, bytes: u64) -> Duration {
    base.max(SNAPSHOT_STEP_TIMEOUT_MIN)
        + Duration::from_secs(bytes / SNAPSHOT_BYTES_PER_SECOND_MIN + 1)
}

fn unexpected(body: ReplyBody) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(format!(
        "unexpected answer {body:?}"
    )))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(
                RpcBody::AppendEntries(rpc),
                RPCTypes::AppendEntries,
                &option,
            )
            .await?
        {
            ReplyBody::AppendEntries(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(RpcBody::Vote(rpc), RPCTypes::Vote, &option)
            .await?
        {
            ReplyBody::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(RpcBody::PreVote(rpc), RPCTypes::Vote, &option)
            .await?
        {
            ReplyBody::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let bytes = snapshot.snapshot.bytes;
        let deadline = snapshot_deadline(option.soft_ttl(), bytes);
        let send = tokio::time::timeout(deadline, self.send_snapshot(vote, snapshot, &option));
        let result = tokio::select! {
            result = send => match result {
                Ok(result) => result,
                Err(_) => Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.local.0,
                    target: self.target.0,
                    timeout: deadline,
                })),
            },
            closed = cancel => Err(StreamingError::Closed(closed)),
        };
        let send = match &result {
            Ok(_) => SnapshotSend::Delivered { bytes },
            Err(StreamingError::Timeout(_)) => SnapshotSend::TimedOut,
            Err(StreamingError::Closed(_)) => SnapshotSend::Closed,
            Err(_) => SnapshotSend::Failed,
        };
        metrics::snapshot_sent(self.group, send);
        result
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(
                RpcBody::TransferLeader(request),
                RPCTypes::TransferLeader,
                &option,
            )
            .await?
        {
            ReplyBody::TransferLeader(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{GroupTable, RaftRouter};
    use nodedb_cluster_transport::MemoryNetwork;
    use openraft::raft::VoteRequest;

    fn client(transport: Arc<dyn Transport>, target: u64) -> PeerClient {
        PeerClient {
            group: GroupId(1),
            local: transport.local_node(),
            target: NodeId(target),
            transport,
        }
    }

    #[test]
    fn transport_errors_map_to_the_right_openraft_kind() {
        let network = MemoryNetwork::new(1);
        let transport: Arc<dyn Transport> = network.register(NodeId(1)).unwrap();
        let peer = client(transport, 2);
        let node = NodeId(2);
        let timeout = Duration::from_millis(5);
        let map = |error| peer.rpc_error(error, RPCTypes::Vote, timeout);
        assert!(matches!(
            map(TransportError::Timeout { node }),
            RPCError::Timeout(_)
        ));
        let lost = TransportError::ConnectionLost {
            node,
            reason: "reset".into(),
        };
        assert!(matches!(map(lost), RPCError::Network(_)));
        for unreachable in [
            TransportError::UnknownPeer { node },
            TransportError::CircuitOpen { node },
            TransportError::Shutdown,
            TransportError::Unreachable {
                node,
                reason: "refused".into(),
            },
        ] {
            assert!(matches!(map(unreachable), RPCError::Unreachable(_)));
        }
    }

    #[tokio::test]
    async fn a_peer_without_the_group_is_unreachable_not_a_panic() {
        let network = MemoryNetwork::new(2);
        let local: Arc<dyn Transport> = network.register(NodeId(1)).unwrap();
        let remote = network.register(NodeId(2)).unwrap();
        remote.set_handler(Arc::new(RaftRouter::new(Arc::new(GroupTable::default()))));
        let mut peer = client(local, 2);
        let request = VoteRequest::new(Vote::new(1, 1), None);
        let option = RPCOption::new(Duration::from_secs(1));
        let error = RaftNetworkV2::vote(&mut peer, request.clone(), option.clone())
            .await
            .unwrap_err();
        assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
        let mut nobody = client(peer.transport.clone(), 3);
        let error = RaftNetworkV2::vote(&mut nobody, request, option)
            .await
            .unwrap_err();
        assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    }

    #[test]
    fn rpc_deadline_grows_with_size() {
        let base = Duration::from_millis(37);
        let small = rpc_deadline(base, 200);
        assert!(small >= RPC_DEADLINE_MIN && small < RPC_DEADLINE_MIN + Duration::from_millis(1));
        let batch = rpc_deadline(base, 16 * 1024 * 1024);
        assert!(batch >= small + Duration::from_millis(900), "{batch:?}");
        let slow_heartbeat = Duration::from_secs(1);
        assert!(rpc_deadline(slow_heartbeat, 200) >= slow_heartbeat);
    }

    #[test]
    fn snapshot_deadline_grows_with_size() {
        let base = Duration::from_millis(500);
        let small = snapshot_deadline(base, 1024);
        let large = snapshot_deadline(base, 1024 * 1024 * 1024);
        assert!(small >= SNAPSHOT_STEP_TIMEOUT_MIN);
        assert!(large >= small + Duration::from_secs(200));
    }
}
