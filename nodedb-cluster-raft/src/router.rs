//! The incoming side: a transport [`Handler`] that decodes Raft RPCs and snapshot streams and
//! dispatches them by group id to the local replica. An unknown group or a malformed message
//! gets a typed [`RpcFailure`] answer, never a panic.

use crate::quiesce::{self, Quiescence};
use crate::reincarnation;
use crate::replica::SharedMachine;
use crate::sm_adapter::MachineAdapter;
use crate::snapshot::{self, SNAPSHOT_FILE_BYTES_MAX, SnapshotFile};
use crate::types::{Raft, node_id};
use crate::wire::{
    self, RaftReply, RaftRpc, ReplyBody, RpcBody, RpcFailure, SnapshotHeader, WIRE_VERSION,
};
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_transport::{BoxFuture, Bytes, Handler, HandlerError, InboundStream, Transport};
use openraft::storage::Snapshot;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::io::AsyncWriteExt;

/// The replicas this node hosts, by group. Shared by the router and the multi-raft API.
#[derive(Default)]
pub struct GroupTable {
    groups: RwLock<HashMap<GroupId, HostedGroup>>,
}

/// What the router needs of one hosted replica.
#[derive(Clone)]
pub struct HostedGroup {
    pub raft: Raft<MachineAdapter>,
    /// The highest log index a replica of the group removed from this node held, when one
    /// was (see `reincarnation`).
    pub forgotten_through: Option<u64>,
    pub snapshot_dir: PathBuf,
    /// The engine, for local queries.
    pub machine: SharedMachine,
    /// Held while a membership change of the group is in flight: one change at a time.
    pub changes: Arc<tokio::sync::Mutex<()>>,
    /// Whether the replica's timers run (see `quiesce`).
    pub quiescence: Arc<Quiescence>,
    /// To reach the group's leader on the replica's behalf (see `quiesce::hear_from_leader`).
    pub transport: Arc<dyn Transport>,
}

/// Serves Raft traffic for every group in a [`GroupTable`].
pub struct RaftRouter {
    table: Arc<GroupTable>,
}

impl GroupTable {
    pub fn get(&self, group: GroupId) -> Option<HostedGroup> {
        self.read().get(&group).cloned()
    }

    pub fn insert(&self, group: GroupId, hosted: HostedGroup) {
        self.write().insert(group, hosted);
    }

    pub fn remove(&self, group: GroupId) -> Option<HostedGroup> {
        self.write().remove(&group)
    }

    /// Every hosted replica, in no particular order.
    pub fn entries(&self) -> Vec<(GroupId, HostedGroup)> {
        self.read()
            .iter()
            .map(|(group, hosted)| (*group, hosted.clone()))
            .collect()
    }

    pub fn ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<GroupId> = self.read().keys().copied().collect();
        ids.sort();
        ids
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<GroupId, HostedGroup>> {
        self.groups
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<GroupId, HostedGroup>> {
        self.groups
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RaftRouter {
    pub fn new(table: Arc<GroupTable>) -> RaftRouter {
        RaftRouter { table }
    }

    /// Serves one decoded-or-not RPC; always produces an answer.
    pub async fn serve_rpc(&self, from: NodeId, request: &Bytes) -> ReplyBody {
        // Entries share the request's buffer: their payloads are neither copied nor compared
        // byte by byte with it again.
        let rpc: RaftRpc = match wire::decode_shared(request) {
            Ok(rpc) => rpc,
            Err(error) => {
                tracing::warn!(%from, %error, "undecodable raft rpc");
                return ReplyBody::Failed(RpcFailure::BadMessage(error.to_string()));
            }
        };
        let claimed = match &rpc.body {
            RpcBody::Probe(probe) => {
                return ReplyBody::Probed {
                    awake: quiesce::awake_among(&self.table, &probe.groups),
                };
            }
            // Waking is always safe, whoever asks: it only restarts a leader's timers.
            RpcBody::Wake => {
                if let Some(hosted) = self.table.get(rpc.group) {
                    hosted.quiescence.touch(&hosted.raft);
                }
                return ReplyBody::Quiesced(false);
            }
            body => claimed_sender(body),
        };
        if let Err(refused) = check_sender(from, claimed, rpc.group) {
            return refused;
        }
        let Some(hosted) = self.table.get(rpc.group) else {
            return ReplyBody::Failed(RpcFailure::UnknownGroup(rpc.group));
        };
        // A vote asked of a quiet follower by another node than its leader: the follower's
        // lease ran out only because the leader went quiet, so it first hears from the leader.
        let quiet_leader = match &rpc.body {
            RpcBody::Vote(_) | RpcBody::PreVote(_) => hosted
                .quiescence
                .followed_quietly()
                .filter(|leader| *leader != from),
            _ => None,
        };
        match &rpc.body {
            RpcBody::Quiesce(request) => {
                return ReplyBody::Quiesced(quiesce::follow_quietly(&hosted, from, request));
            }
            // The leader's message renews the follower's election timer.
            RpcBody::AppendEntries(request) => {
                let heartbeat = request.entries.is_empty();
                hosted
                    .quiescence
                    .append_entries(&hosted.raft, from, heartbeat);
            }
            _ => hosted.quiescence.wake(&hosted.raft),
        }
        let stopped = |error: &dyn std::fmt::Display| {
            ReplyBody::Failed(RpcFailure::GroupStopped {
                group: rpc.group,
                reason: error.to_string(),
            })
        };
        if let Some(leader) = quiet_leader {
            quiesce::hear_from_leader(&hosted, rpc.group, leader).await;
        }
        let raft = &hosted.raft;
        if let Some(forgotten_through) = hosted.forgotten_through
            && matches!(rpc.body, RpcBody::Vote(_) | RpcBody::PreVote(_))
            && let Some(refusal) = reincarnation::refuse_vote_while_behind(raft, forgotten_through)
        {
            tracing::debug!(group = %rpc.group, candidate = %from, forgotten_through,
                "vote refused: this replica's log is behind the one removed from this node");
            return ReplyBody::Vote(refusal);
        }
        match rpc.body {
            RpcBody::AppendEntries(request) => match raft.append_entries(request).await {
                Ok(response) => {
                    hosted.quiescence.heard_from_a_leader();
                    ReplyBody::AppendEntries(response)
                }
                Err(error) => stopped(&error),
            },
            RpcBody::Vote(request) => match raft.vote(request).await {
                Ok(response) => ReplyBody::Vote(response),
                Err(error) => stopped(&error),
            },
            RpcBody::PreVote(request) => match raft.pre_vote(request).await {
                Ok(response) => ReplyBody::Vote(response),
                Err(error) => stopped(&error),
            },
            RpcBody::TransferLeader(request) => match raft.handle_transfer_leader(request).await {
                Ok(response) => ReplyBody::TransferLeader(response),
                Err(error) => stopped(&error),
            },
            RpcBody::Quiesce(_) | RpcBody::Probe(_) | RpcBody::Wake => {
                unreachable!("quiescence messages are answered above")
            }
        }
    }

    /// Receives one streamed snapshot into a verified file and installs it.
    pub async fn serve_snapshot(
        &self,
        from: NodeId,
        header: &[u8],
        body: InboundStream,
    ) -> ReplyBody {
        let header: SnapshotHeader = match wire::decode(header) {
            Ok(header) => header,
            Err(error) => return ReplyBody::Failed(RpcFailure::BadMessage(error.to_string())),
        };
        if let Err(refused) = check_sender(from, header.vote.leader_id.node_id, header.group) {
            return refused;
        }
        let Some(hosted) = self.table.get(header.group) else {
            return ReplyBody::Failed(RpcFailure::UnknownGroup(header.group));
        };
        hosted.quiescence.wake_now(&hosted.raft);
        let received = receive_snapshot(&hosted.snapshot_dir, &header, body).await;
        let (meta, file) = match received {
            Ok(received) => received,
            Err(reason) => {
                tracing::warn!(%from, group = %header.group, %reason, "snapshot refused");
                return ReplyBody::Failed(RpcFailure::SnapshotRefused(reason));
            }
        };
        match hosted
            .raft
            .install_full_snapshot(
                header.vote,
                Snapshot {
                    meta,
                    snapshot: file,
                },
            )
            .await
        {
            Ok(response) => ReplyBody::Snapshot(response),
            Err(error) => ReplyBody::Failed(RpcFailure::GroupStopped {
                group: header.group,
                reason: error.to_string(),
            }),
        }
    }
}

impl Handler for RaftRouter {
    fn on_request(
        &self,
        from: NodeId,
        request: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
        Box::pin(async move {
            let body = self.serve_rpc(from, &request).await;
            Ok(Bytes::from(wire::encode(&RaftReply {
                version: WIRE_VERSION,
                body,
            })))
        })
    }

    fn on_stream(
        &self,
        from: NodeId,
        header: Bytes,
        body: InboundStream,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
        Box::pin(async move {
            let body = self.serve_snapshot(from, &header, body).await;
            Ok(Bytes::from(wire::encode(&RaftReply {
                version: WIRE_VERSION,
                body,
            })))
        })
    }
}

/// The node a Raft message says it comes from: the leader or candidate named in its vote.
fn claimed_sender(body: &RpcBody) -> u64 {
    match body {
        RpcBody::AppendEntries(request) => request.vote.leader_id.node_id,
        RpcBody::Vote(request) | RpcBody::PreVote(request) => request.vote.leader_id.node_id,
        RpcBody::TransferLeader(request) => request.from_leader().leader_id.node_id,
        RpcBody::Quiesce(request) => request.vote.leader_id.node_id,
        // Answered before the sender check.
        RpcBody::Probe(_) | RpcBody::Wake => 0,
    }
}

/// A message must name as its sender the node its connection authenticated (the transport
/// takes `from` from the peer's certificate): otherwise any holder of a cluster certificate
/// could speak for a leader it is not, and rewrite a follower's log with a forged term.
fn check_sender(from: NodeId, claimed: u64, group: GroupId) -> Result<(), ReplyBody> {
    let claimed = node_id(claimed);
    if claimed == from {
        return Ok(());
    }
    tracing::warn!(%from, %claimed, %group, "raft message names another sender; refused");
    Err(ReplyBody::Failed(RpcFailure::BadMessage(format!(
        "the message names {claimed} as its sender, the connection is authenticated as {from}"
    ))))
}

type ReceivedSnapshot = (crate::types::SnapshotMeta, SnapshotFile);

/// Writes the stream into a temporary file, checking the announced size and checksum, then
/// verifies the file and moves it to its final name. Removes the temporary file on failure.
async fn receive_snapshot(
    dir: &Path,
    header: &SnapshotHeader,
    mut body: InboundStream,
) -> Result<ReceivedSnapshot, String> {
    if header.bytes > SNAPSHOT_FILE_BYTES_MAX {
        return Err(format!(
            "{} bytes exceeds the limit of {SNAPSHOT_FILE_BYTES_MAX}",
            header.bytes
        ));
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|error| error.to_string())?;
    static RECEIVED: AtomicU64 = AtomicU64::new(0);
    let sequence = RECEIVED.fetch_add(1, Ordering::Relaxed);
    let temporary = dir.join(format!("incoming-{}-{sequence}.tmp", std::process::id()));
    let result = async {
        let mut file = tokio::fs::File::create(&temporary)
            .await
            .map_err(|error| error.to_string())?;
        let mut received = 0u64;
        while let Some(chunk) = body.next_chunk().await.map_err(|error| error.to_string())? {
            received += chunk.len() as u64;
            if received > header.bytes {
                return Err(format!("more than the announced {} bytes", header.bytes));
            }
            file.write_all(&chunk)
                .await
                .map_err(|error| error.to_string())?;
        }
        if received != header.bytes {
            return Err(format!("received {received} of {} bytes", header.bytes));
        }
        file.sync_all().await.map_err(|error| error.to_string())?;
        drop(file);
        let path = temporary.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || snapshot::open_snapshot(&path))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())?;
        if file.crc32c != header.crc32c {
            return Err("snapshot checksum differs from the stream header".to_string());
        }
        if meta != header.meta {
            return Err("snapshot file metadata differs from the stream header".to_string());
        }
        let final_path = dir.join(snapshot::file_name(&meta));
        tokio::fs::rename(&temporary, &final_path)
            .await
            .map_err(|error| error.to_string())?;
        Ok((
            meta,
            SnapshotFile {
                path: final_path,
                ..file
            },
        ))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temporary).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Vote;
    use nodedb_cluster_transport::{ChunkSource, TransportError};
    use openraft::raft::VoteRequest;

    struct Chunks(Vec<Bytes>);

    impl ChunkSource for Chunks {
        fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>> {
            let next = (!self.0.is_empty()).then(|| self.0.remove(0));
            Box::pin(async move { Ok(next) })
        }
    }

    fn router() -> RaftRouter {
        RaftRouter::new(Arc::new(GroupTable::default()))
    }

    #[tokio::test]
    async fn garbage_and_unknown_groups_get_typed_answers() {
        let router = router();
        let from = NodeId(7);
        for junk in [
            &[][..],
            &[1][..],
            &[1, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[9, 9][..],
        ] {
            let answer = router.serve_rpc(from, &Bytes::copy_from_slice(junk)).await;
            assert!(
                matches!(answer, ReplyBody::Failed(RpcFailure::BadMessage(_))),
                "{answer:?}"
            );
        }
        let vote = RaftRpc {
            version: WIRE_VERSION,
            group: GroupId(9),
            body: RpcBody::Vote(VoteRequest::new(Vote::new(1, 7), None)),
        };
        let answer = router
            .serve_rpc(from, &Bytes::from(wire::encode(&vote)))
            .await;
        assert!(matches!(
            answer,
            ReplyBody::Failed(RpcFailure::UnknownGroup(GroupId(9)))
        ));

        let body = InboundStream::new(Box::new(Chunks(vec![Bytes::from_static(b"x")])));
        let answer = router.serve_snapshot(from, b"\x01garbage", body).await;
        assert!(
            matches!(answer, ReplyBody::Failed(RpcFailure::BadMessage(_))),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_message_naming_another_sender_is_refused() {
        let router = router();
        let vote = RaftRpc {
            version: WIRE_VERSION,
            group: GroupId(9),
            body: RpcBody::Vote(VoteRequest::new(Vote::new(1_000, 1), None)),
        };
        let answer = router
            .serve_rpc(NodeId(4), &Bytes::from(wire::encode(&vote)))
            .await;
        assert!(
            matches!(&answer, ReplyBody::Failed(RpcFailure::BadMessage(reason)) if reason.contains("authenticated as")),
            "{answer:?}"
        );
        let header = SnapshotHeader {
            version: WIRE_VERSION,
            group: GroupId(9),
            vote: Vote::new_committed(1_000, 1),
            meta: Default::default(),
            bytes: 0,
            crc32c: 0,
        };
        let body = InboundStream::new(Box::new(Chunks(vec![])));
        let answer = router
            .serve_snapshot(NodeId(4), &wire::encode(&header), body)
            .await;
        assert!(
            matches!(&answer, ReplyBody::Failed(RpcFailure::BadMessage(reason)) if reason.contains("authenticated as")),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_snapshot_body_that_lies_about_its_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let header = SnapshotHeader {
            version: WIRE_VERSION,
            group: GroupId(1),
            vote: Vote::new_committed(1, 1),
            meta: Default::default(),
            bytes: 4,
            crc32c: 0,
        };
        let body = InboundStream::new(Box::new(Chunks(vec![Bytes::from_static(b"too long")])));
        let refused = receive_snapshot(dir.path(), &header, body)
            .await
            .unwrap_err();
        assert!(refused.contains("announced"), "{refused}");
        let body = InboundStream::new(Box::new(Chunks(vec![Bytes::from_static(b"abcd")])));
        assert!(
            receive_snapshot(dir.path(), &header, body).await.is_err(),
            "not a snapshot file"
        );
        let huge = SnapshotHeader {
            bytes: SNAPSHOT_FILE_BYTES_MAX + 1,
            ..header
        };
        let body = InboundStream::new(Box::new(Chunks(vec![])));
        assert!(receive_snapshot(dir.path(), &huge, body).await.is_err());
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 0, "temporary files are removed");
    }
}
