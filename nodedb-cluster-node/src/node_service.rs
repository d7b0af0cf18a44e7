//! [`ClusterService`] over a running [`Cluster`]: the built-in KV store routed to the group
//! that owns each key, and the cluster view of `GET /v1/cluster`.

use crate::cluster::Cluster;
use crate::control::ControlError;
use crate::service::{
    CasOutcome, ClusterService, ClusterView, GroupView, MigrationView, NodeView, ReadConsistency,
    ServiceError, ServiceResult, WriteReceipt,
};
use nodedb_cluster_core::{GroupId, NodeId, NodeState, VShardId, vshard_for_key};
use nodedb_cluster_raft::kv::{KvAnswer, KvCommand, KvQuery, KvResponse};
use nodedb_cluster_transport::BoxFuture;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: u32 = 1;

/// The running node, as the admin API sees it.
#[derive(Clone, Debug)]
pub struct NodeService {
    cluster: Cluster,
}

impl NodeService {
    pub fn new(cluster: Cluster) -> NodeService {
        NodeService { cluster }
    }

    /// The vShard and owning group of `key`.
    fn route(&self, key: &str) -> ServiceResult<(VShardId, GroupId)> {
        let vshard = vshard_for_key(key.as_bytes());
        let metadata = self.cluster.metadata();
        let applied = metadata.borrow();
        let routing = applied
            .state
            .routing()
            .ok_or_else(|| not_ready("no routing yet"))?;
        Ok((vshard, routing.group_of(vshard)))
    }

    async fn write(
        &self,
        key: &str,
        command: KvCommand,
    ) -> ServiceResult<(WriteReceipt, KvResponse)> {
        let (vshard, group) = self.route(key)?;
        let (index, response) = self
            .cluster
            .groups()
            .propose(group, command.encode())
            .await
            .map_err(service_error)?;
        let response = KvResponse::decode(&response).ok_or_else(|| {
            ServiceError::Internal(format!("undecodable kv response from {group}"))
        })?;
        if response == KvResponse::BadCommand {
            return Err(ServiceError::Internal(format!(
                "{group} could not decode the command"
            )));
        }
        let receipt = WriteReceipt {
            vshard: vshard.0,
            group: group.0,
            index,
        };
        Ok((receipt, response))
    }

    fn cluster_view(&self) -> ServiceResult<ClusterView> {
        let metadata = self.cluster.metadata();
        let applied = metadata.borrow().clone();
        let state = &applied.state;
        let cluster_id = state
            .cluster_id()
            .map(|id| id.to_string())
            .ok_or_else(|| not_ready("not bootstrapped yet"))?;
        let nodes = state
            .topology()
            .nodes()
            .map(|node| NodeView {
                id: node.id.0,
                addr: node.addr.as_str().to_string(),
                admin_addr: node.admin_addr.as_str().to_string(),
                state: format!("{:?}", node.state).to_lowercase(),
            })
            .collect();
        let routing = state.routing().ok_or_else(|| not_ready("no routing yet"))?;
        let raft = self.cluster.raft();
        let groups = routing
            .groups()
            .map(|(group, members)| {
                let local = raft.status(group);
                let leader = local
                    .as_ref()
                    .and_then(|status| status.leader)
                    .or(members.leader_hint);
                GroupView {
                    id: group.0,
                    voters: members.voters.iter().map(|node| node.0).collect(),
                    learners: members.learners.iter().map(|node| node.0).collect(),
                    leader: leader.map(|node| node.0),
                    term: local.as_ref().map(|status| status.term),
                    commit_index: local
                        .as_ref()
                        .map(|status| status.commit_index.map_or(0, |index| index.0)),
                    applied_index: local
                        .as_ref()
                        .map(|status| status.applied_index.map_or(0, |index| index.0)),
                    state_hash: raft
                        .state_hash(group)
                        .ok()
                        .map(|hash| format!("{hash:016x}")),
                    vshard_count: routing.vshards_of(group).len() as u32,
                }
            })
            .collect();
        Ok(ClusterView {
            cluster_id,
            node_id: self.cluster.node().0,
            routing_version: routing.routing_version(),
            nodes,
            groups,
        })
    }
}

impl ClusterService for NodeService {
    fn is_ready(&self) -> bool {
        let metadata = self.cluster.metadata();
        let applied = metadata.borrow();
        applied.state.routing().is_some()
            && applied
                .state
                .topology()
                .get(self.cluster.node())
                .is_some_and(|node| {
                    matches!(
                        node.state,
                        NodeState::Joining | NodeState::Active | NodeState::Draining
                    )
                })
    }

    fn cluster(&self) -> BoxFuture<'_, ServiceResult<ClusterView>> {
        Box::pin(async move { self.cluster_view() })
    }

    fn kv_put(&self, key: String, value: Vec<u8>) -> BoxFuture<'_, ServiceResult<WriteReceipt>> {
        Box::pin(async move {
            let command = KvCommand::Put {
                key: key.clone().into_bytes(),
                value,
            };
            let (receipt, _) = self.write(&key, command).await?;
            Ok(receipt)
        })
    }

    fn kv_get(
        &self,
        key: String,
        consistency: ReadConsistency,
    ) -> BoxFuture<'_, ServiceResult<Option<Vec<u8>>>> {
        Box::pin(async move {
            let (_, group) = self.route(&key)?;
            let query = KvQuery::Get {
                key: key.into_bytes(),
            };
            let linearizable = consistency == ReadConsistency::Linearizable;
            let answer = self
                .cluster
                .groups()
                .query(group, query.encode(), linearizable)
                .await
                .map_err(service_error)?;
            match KvAnswer::decode(&answer) {
                Some(KvAnswer::Value(value)) => Ok(value),
                other => Err(ServiceError::Internal(format!(
                    "unexpected kv answer {other:?}"
                ))),
            }
        })
    }

    fn kv_delete(&self, key: String) -> BoxFuture<'_, ServiceResult<WriteReceipt>> {
        Box::pin(async move {
            let command = KvCommand::Delete {
                key: key.clone().into_bytes(),
            };
            let (receipt, _) = self.write(&key, command).await?;
            Ok(receipt)
        })
    }

    fn kv_cas(
        &self,
        key: String,
        expected: Option<String>,
        new: String,
    ) -> BoxFuture<'_, ServiceResult<CasOutcome>> {
        Box::pin(async move {
            let command = KvCommand::Cas {
                key: key.clone().into_bytes(),
                expected: expected.map(String::into_bytes),
                new: new.into_bytes(),
            };
            match self.write(&key, command).await? {
                (_, KvResponse::Cas { swapped, current }) => Ok(CasOutcome {
                    swapped,
                    current: current.map(|value| String::from_utf8_lossy(&value).into_owned()),
                }),
                (_, other) => Err(ServiceError::Internal(format!(
                    "unexpected cas response {other:?}"
                ))),
            }
        })
    }

    fn move_vshard(
        &self,
        vshard: VShardId,
        to_group: GroupId,
    ) -> BoxFuture<'_, ServiceResult<MigrationView>> {
        Box::pin(async move {
            Err(ServiceError::NotImplemented(format!(
                "moving {vshard} to {to_group}: online vShard migration is not available in this version"
            )))
        })
    }

    fn migrations(&self) -> BoxFuture<'_, ServiceResult<Vec<MigrationView>>> {
        Box::pin(async move {
            let metadata = self.cluster.metadata();
            let applied = metadata.borrow();
            let migrations = applied
                .state
                .migrations()
                .values()
                .map(|migration| MigrationView {
                    id: migration.id.0,
                    vshard: migration.vshard.0,
                    from_group: migration.from.0,
                    to_group: migration.to.0,
                    phase: format!("{:?}", migration.phase).to_lowercase(),
                    bytes_copied: 0,
                    write_pause_ms: None,
                })
                .collect();
            Ok(migrations)
        })
    }

    fn decommission(&self, node: NodeId) -> BoxFuture<'_, ServiceResult<()>> {
        Box::pin(async move {
            Err(ServiceError::NotImplemented(format!(
                "decommissioning {node} is not available in this version"
            )))
        })
    }

    fn rebalance(&self) -> BoxFuture<'_, ServiceResult<Vec<MigrationView>>> {
        Box::pin(async move {
            Err(ServiceError::NotImplemented(
                "rebalancing by vShard moves is not available in this version".to_string(),
            ))
        })
    }
}

fn not_ready(reason: &str) -> ServiceError {
    ServiceError::Unavailable {
        message: format!("node not ready: {reason}"),
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

/// Maps a routed operation's failure onto the API's "definitely failed" / "unknown" split.
fn service_error(error: ControlError) -> ServiceError {
    match error {
        ControlError::Timeout { .. } => ServiceError::OutcomeUnknown(error.to_string()),
        ControlError::Invalid(message) => ServiceError::BadRequest(message),
        ControlError::Storage(message) => ServiceError::Internal(message),
        other => ServiceError::Unavailable {
            message: other.to_string(),
            retry_after_secs: RETRY_AFTER_SECS,
        },
    }
}
