//! Serves the Control channel: identifies this node, admits joining nodes when it leads the
//! metadata group, and runs forwarded proposals, reads and membership changes on its local
//! replicas (never forwarding again: one hop at most; only a vShard import served by the
//! target's leader reads the export from the source's leader, which serves it locally).

use crate::cluster::CONTROL_RPC_TIMEOUT;
use crate::control::{ControlError, ControlRequest, ControlResponse};
use crate::group_client::{GroupClient, Operation, Served, with_routing_version};
use nodedb_cluster_core::{
    METADATA_GROUP, MetadataCommand, MetadataEvent, NodeId, NodeInfo, NodeState,
};
use nodedb_cluster_raft::{
    AppliedMetadata, MetadataOutcome, MultiRaft, decode_metadata_outcome, encode_metadata_command,
};
use nodedb_cluster_transport::{BoxFuture, Bytes, Handler, HandlerError, InboundStream, Transport};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;

/// Handler of the Control channel.
pub struct ControlServer {
    node: NodeId,
    raft: MultiRaft,
    metadata: watch::Receiver<AppliedMetadata>,
    /// The Control channel, to forward a join to the metadata leader.
    control: Arc<dyn Transport>,
    /// Serves requests on this node's replicas; reaches other groups' leaders for the
    /// requests that need them (a vShard import reads the source's export).
    groups: GroupClient,
    /// When this node last answered an `Identify`: mostly the metadata leader's liveness
    /// ping, sent each round to every member not Decommissioned (read by
    /// [`crate::cluster::Cluster::wait_decommissioned`]).
    identified: watch::Sender<Instant>,
}

impl ControlServer {
    pub fn new(
        node: NodeId,
        raft: MultiRaft,
        metadata: watch::Receiver<AppliedMetadata>,
        control: Arc<dyn Transport>,
        identified: watch::Sender<Instant>,
    ) -> ControlServer {
        let groups = GroupClient::new(
            node,
            raft.clone(),
            control.clone(),
            metadata.clone(),
            CONTROL_RPC_TIMEOUT,
        );
        ControlServer {
            node,
            raft,
            metadata,
            control,
            groups,
            identified,
        }
    }

    async fn serve(&self, request: ControlRequest) -> ControlResponse {
        let served = match request {
            ControlRequest::Identify => {
                self.identified.send_replace(Instant::now());
                return ControlResponse::Identity {
                    node: self.node,
                    cluster_id: self.metadata.borrow().state.cluster_id(),
                };
            }
            ControlRequest::Join { node, forwarded } => return self.join(node, forwarded).await,
            ControlRequest::Propose { group, command } => {
                self.groups
                    .serve_here(group, Operation::Propose(command))
                    .await
            }
            ControlRequest::Query {
                group,
                query,
                linearizable,
            } => {
                let operation = Operation::Query {
                    query,
                    linearizable,
                };
                self.groups.serve_here(group, operation).await
            }
            ControlRequest::ChangeMembership { group, change } => {
                let operation = Operation::ChangeMembership(change);
                self.groups.serve_here(group, operation).await
            }
            ControlRequest::ProposeVShard {
                group,
                vshard,
                command,
            } => {
                let operation = Operation::ProposeVShard { vshard, command };
                self.groups.serve_here(group, operation).await
            }
            ControlRequest::QueryVShard {
                group,
                vshard,
                query,
                linearizable,
            } => {
                let operation = Operation::QueryVShard {
                    vshard,
                    query,
                    linearizable,
                };
                self.groups.serve_here(group, operation).await
            }
            ControlRequest::Migrate { group, step } => {
                let operation = Operation::Migrate(step);
                self.groups.serve_here(group, operation).await
            }
        };
        let served = served.map_err(|error| with_routing_version(error, &self.metadata));
        match served {
            Ok(Served::Proposed { index, response }) => {
                ControlResponse::Proposed { index, response }
            }
            Ok(Served::Answered(answer)) => ControlResponse::Answered { answer },
            Ok(Served::MembershipChanged) => ControlResponse::MembershipChanged,
            Ok(Served::Stepped(outcome)) => ControlResponse::Stepped {
                index: outcome.index.0,
                applied: outcome.applied,
                claim: outcome.claim,
            },
            Err(error) => ControlResponse::Refused(error),
        }
    }

    /// Admits `node` when this node leads the metadata group, otherwise forwards the join to
    /// the leader once.
    async fn join(&self, node: NodeInfo, forwarded: bool) -> ControlResponse {
        let status = self.raft.status(METADATA_GROUP);
        let leader = status.as_ref().and_then(|status| status.leader);
        if leader == Some(self.node) {
            return self.admit(node).await;
        }
        let not_leader = ControlError::NotLeader {
            node: self.node,
            group: METADATA_GROUP,
            leader_hint: leader,
        };
        let Some(leader) = leader.filter(|_| !forwarded) else {
            return refused(not_leader);
        };
        let request = ControlRequest::Join {
            node,
            forwarded: true,
        };
        let answer = self
            .control
            .call(leader, Bytes::from(request.encode()), CONTROL_RPC_TIMEOUT)
            .await;
        match answer.map(|bytes| ControlResponse::decode(&bytes)) {
            Ok(Ok(response)) => response,
            Ok(Err(reason)) => refused(ControlError::Invalid(reason)),
            Err(error) => refused(ControlError::Unavailable {
                node: leader,
                reason: error.to_string(),
            }),
        }
    }

    /// Admits `node`: records it in the metadata (Joining) and makes it a learner of the
    /// metadata group, so that it receives the metadata log. Idempotent for a retried join.
    async fn admit(&self, mut node: NodeInfo) -> ControlResponse {
        let Some(cluster_id) = self.metadata.borrow().state.cluster_id() else {
            return refused(ControlError::Unavailable {
                node: self.node,
                reason: "the cluster is not bootstrapped yet".to_string(),
            });
        };
        node.state = NodeState::Joining;
        let command = encode_metadata_command(&MetadataCommand::AddNode { node: node.clone() });
        let applied = match self
            .groups
            .serve_here(METADATA_GROUP, Operation::Propose(command))
            .await
        {
            Ok(Served::Proposed { response, .. }) => decode_metadata_outcome(&response),
            Ok(other) => return refused(ControlError::Invalid(format!("unexpected {other:?}"))),
            Err(error) => return refused(error),
        };
        match applied {
            Some(MetadataOutcome::Applied(
                MetadataEvent::NodeAdded { .. } | MetadataEvent::Unchanged,
            )) => {}
            Some(MetadataOutcome::Refused(error)) => {
                return refused(ControlError::Invalid(format!("join refused: {error}")));
            }
            other => {
                return refused(ControlError::Invalid(format!(
                    "unexpected metadata outcome {other:?}"
                )));
            }
        }
        let already_member = self.raft.status(METADATA_GROUP).is_some_and(|status| {
            status.voters.contains(&node.id) || status.learners.contains(&node.id)
        });
        if !already_member {
            let change = crate::control::MembershipChange::AddLearner {
                node: node.id,
                addr: node.addr.as_str().to_string(),
            };
            let operation = Operation::ChangeMembership(change);
            if let Err(error) = self.groups.serve_here(METADATA_GROUP, operation).await {
                return refused(error);
            }
        }
        tracing::info!(joined = %node.id, addr = node.addr.as_str(), "admitted node");
        ControlResponse::Joined { cluster_id }
    }
}

fn refused(error: ControlError) -> ControlResponse {
    ControlResponse::Refused(error)
}

impl Handler for ControlServer {
    fn on_request(
        &self,
        from: NodeId,
        request: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
        Box::pin(async move {
            let request = ControlRequest::decode(&request).map_err(|reason| {
                tracing::warn!(%from, %reason, "undecodable control request");
                HandlerError::BadRequest(reason)
            })?;
            Ok(Bytes::from(self.serve(request).await.encode()))
        })
    }

    fn on_stream(
        &self,
        from: NodeId,
        _header: Bytes,
        _body: InboundStream,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
        Box::pin(async move {
            tracing::warn!(%from, "stream on the control channel refused");
            Err(HandlerError::BadRequest(
                "the control channel carries no streams".to_string(),
            ))
        })
    }
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}
