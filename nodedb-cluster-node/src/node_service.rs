//! [`ClusterService`] over a running [`Cluster`]: the built-in KV store routed to the group
//! that owns each key, the cluster view of `GET /v1/cluster`, and the admin verbs (vShard
//! moves, rebalancing, decommission), recorded in the metadata group and carried out by the
//! metadata leader.

use crate::cluster::Cluster;
use crate::control::ControlError;
use crate::service::{
    CasOutcome, ClusterService, ClusterView, GroupView, MigrationView, NodeView, ReadConsistency,
    ServiceError, ServiceResult, WriteReceipt,
};
use nodedb_cluster_core::{
    GroupId, METADATA_GROUP, MetadataCommand, MetadataError, MetadataEvent, Migration,
    MigrationPhase, NodeId, NodeState, VShardId, plan_vshard_moves, vshard_for_key,
};
use nodedb_cluster_raft::ReadConsistency as RaftReadConsistency;
use nodedb_cluster_raft::kv::{KvAnswer, KvCommand, KvQuery, KvResponse};
use nodedb_cluster_raft::{MetadataOutcome, decode_metadata_outcome, encode_metadata_command};
use nodedb_cluster_transport::BoxFuture;

/// Most vShard moves one rebalance request begins.
pub const REBALANCE_MOVES_MAX: usize = 16;

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

    async fn write(
        &self,
        key: &str,
        command: KvCommand,
    ) -> ServiceResult<(WriteReceipt, KvResponse)> {
        let vshard = vshard_for_key(key.as_bytes());
        let write = self
            .cluster
            .propose(vshard, command.encode())
            .await
            .map_err(service_error)?;
        let group = write.group;
        let response = KvResponse::decode(&write.response).ok_or_else(|| {
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
            index: write.index,
        };
        Ok((receipt, response))
    }

    /// Records a move of `vshard` to `to_group` in the metadata group; the metadata leader's
    /// migration driver carries it out. Asking again for a move in flight answers it.
    async fn begin_migration(
        &self,
        vshard: VShardId,
        to_group: GroupId,
    ) -> ServiceResult<MigrationView> {
        let from = {
            let metadata = self.cluster.metadata();
            let applied = metadata.borrow();
            let routing = applied
                .state
                .routing()
                .ok_or_else(|| not_ready("no routing yet"))?;
            if to_group.is_metadata() || routing.members(to_group).is_none() {
                return Err(ServiceError::NotFound(format!("no data group {to_group}")));
            }
            routing.group_of(vshard)
        };
        let command = MetadataCommand::BeginMigration {
            vshard,
            from,
            to: to_group,
        };
        let id = match self.commit_metadata(&command).await {
            Ok(MetadataEvent::MigrationBegun { id } | MetadataEvent::MigrationExists { id }) => id,
            Ok(other) => {
                return Err(ServiceError::Internal(format!(
                    "the metadata group answered {other:?}"
                )));
            }
            Err(MetadataRefusal::Refused(error)) => {
                return Err(ServiceError::Conflict(format!(
                    "cannot move {vshard} from {from} to {to_group}: {error}"
                )));
            }
            Err(MetadataRefusal::Failed(error)) => return Err(error),
        };
        let metadata = self.cluster.metadata();
        let applied = metadata.borrow();
        match applied.state.migrations().get(&id) {
            Some(migration) => Ok(self.migration_view(migration)),
            None => Ok(MigrationView {
                id: id.0,
                vshard: vshard.0,
                from_group: from.0,
                to_group: to_group.0,
                phase: "planned".to_string(),
                bytes_copied: 0,
                write_pause_ms: None,
            }),
        }
    }

    /// Commits `command` in the metadata group; its event, or why it was not applied.
    async fn commit_metadata(
        &self,
        command: &MetadataCommand,
    ) -> Result<MetadataEvent, MetadataRefusal> {
        let (_, response) = self
            .cluster
            .groups()
            .propose(METADATA_GROUP, encode_metadata_command(command))
            .await
            .map_err(|error| MetadataRefusal::Failed(service_error(error)))?;
        match decode_metadata_outcome(&response) {
            Some(MetadataOutcome::Applied(event)) => Ok(event),
            Some(MetadataOutcome::Refused(error)) => Err(MetadataRefusal::Refused(error)),
            other => Err(MetadataRefusal::Failed(ServiceError::Internal(format!(
                "the metadata group answered {other:?}"
            )))),
        }
    }

    /// Puts `node` in Draining: placement moves its replicas and leaderships away, then the
    /// metadata leader records it Decommissioned and the node stops itself.
    async fn begin_decommission(&self, node: NodeId) -> ServiceResult<()> {
        {
            let metadata = self.cluster.metadata();
            let applied = metadata.borrow();
            let state = &applied.state;
            let target = state
                .topology()
                .get(node)
                .ok_or_else(|| ServiceError::NotFound(format!("no node {node} in the cluster")))?;
            if matches!(
                target.state,
                NodeState::Draining | NodeState::Decommissioned
            ) {
                return Ok(());
            }
            let replication_factor = usize::from(state.replication_factor().unwrap_or(1));
            let remaining = state
                .topology()
                .nodes()
                .filter(|other| other.id != node && other.state == NodeState::Active)
                .count();
            if remaining < replication_factor {
                return Err(ServiceError::Conflict(format!(
                    "decommissioning {node} would leave {remaining} active nodes for a \
                     replication factor of {replication_factor}; add a node first"
                )));
            }
        }
        let command = MetadataCommand::SetNodeState {
            node,
            state: NodeState::Draining,
        };
        match self.commit_metadata(&command).await {
            Ok(_) => Ok(()),
            Err(MetadataRefusal::Refused(error)) => Err(ServiceError::Conflict(format!(
                "cannot decommission {node}: {error}"
            ))),
            Err(MetadataRefusal::Failed(error)) => Err(error),
        }
    }

    /// Begins the vShard moves that even out the groups' vShard counts, at most
    /// [`REBALANCE_MOVES_MAX`] per request; the migration driver runs a few at a time.
    async fn begin_rebalance(&self) -> ServiceResult<Vec<MigrationView>> {
        let moves = {
            let metadata = self.cluster.metadata();
            let applied = metadata.borrow();
            let state = &applied.state;
            let routing = state.routing().ok_or_else(|| not_ready("no routing yet"))?;
            plan_vshard_moves(routing, &state.moving_vshards(), REBALANCE_MOVES_MAX)
        };
        let mut begun = Vec::with_capacity(moves.len());
        for planned in moves {
            begun.push(self.begin_migration(planned.vshard, planned.to).await?);
        }
        Ok(begun)
    }

    fn migration_view(&self, migration: &Migration) -> MigrationView {
        let progress = self
            .cluster
            .migration_progress()
            .get(migration.id)
            .unwrap_or_default();
        let phase = match migration.phase {
            MigrationPhase::Planned => "planned",
            MigrationPhase::Copying => "copying",
            MigrationPhase::Fenced { .. } => "fenced",
            MigrationPhase::Switched => "switched",
            MigrationPhase::Cleaned => "cleaned",
            MigrationPhase::Aborted => "aborted",
        };
        MigrationView {
            id: migration.id.0,
            vshard: migration.vshard.0,
            from_group: migration.from.0,
            to_group: migration.to.0,
            phase: phase.to_string(),
            bytes_copied: progress.bytes_copied,
            write_pause_ms: progress
                .write_pause
                .map(|pause| u64::try_from(pause.as_millis()).unwrap_or(u64::MAX)),
        }
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
                    bytes: raft.vshard_bytes(group).ok().map(|held| {
                        held.iter()
                            .filter(|(vshard, _)| routing.group_of(**vshard) == group)
                            .map(|(_, bytes)| bytes)
                            .sum()
                    }),
                    quiesced: local.as_ref().map(|status| status.quiesced),
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
            let vshard = vshard_for_key(key.as_bytes());
            let query = KvQuery::Get {
                key: key.into_bytes(),
            };
            let consistency = match consistency {
                ReadConsistency::Linearizable => RaftReadConsistency::Linearizable,
                ReadConsistency::Stale => RaftReadConsistency::Local,
            };
            let answer = self
                .cluster
                .read(vshard, query.encode(), consistency)
                .await
                .map_err(read_error)?;
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
        Box::pin(async move { self.begin_migration(vshard, to_group).await })
    }

    fn migrations(&self) -> BoxFuture<'_, ServiceResult<Vec<MigrationView>>> {
        Box::pin(async move {
            let metadata = self.cluster.metadata();
            let applied = metadata.borrow();
            let migrations = applied
                .state
                .migrations()
                .values()
                .map(|migration| self.migration_view(migration))
                .collect();
            Ok(migrations)
        })
    }

    fn decommission(&self, node: NodeId) -> BoxFuture<'_, ServiceResult<()>> {
        Box::pin(async move { self.begin_decommission(node).await })
    }

    fn rebalance(&self) -> BoxFuture<'_, ServiceResult<Vec<MigrationView>>> {
        Box::pin(async move { self.begin_rebalance().await })
    }
}

fn not_ready(reason: &str) -> ServiceError {
    ServiceError::Unavailable {
        message: format!("node not ready: {reason}"),
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

/// Why a metadata command was not applied.
enum MetadataRefusal {
    /// The metadata state machine refused it (every replica agrees).
    Refused(MetadataError),
    /// It did not reach the state machine, or the outcome is unknown.
    Failed(ServiceError),
}

/// Maps a read's failure: a read changes nothing, so a timeout is "not served, retry" (503),
/// never "outcome unknown".
fn read_error(error: ControlError) -> ServiceError {
    match error {
        ControlError::Timeout { .. } | ControlError::Interrupted { .. } => {
            ServiceError::Unavailable {
                message: error.to_string(),
                retry_after_secs: RETRY_AFTER_SECS,
            }
        }
        other => service_error(other),
    }
}

/// Maps a routed operation's failure onto the API's "definitely failed" / "unknown" split.
fn service_error(error: ControlError) -> ServiceError {
    match error {
        ControlError::Timeout { .. } | ControlError::Interrupted { .. } => {
            ServiceError::OutcomeUnknown(error.to_string())
        }
        ControlError::Invalid(message) => ServiceError::BadRequest(message),
        ControlError::Storage(message) => ServiceError::Internal(message),
        other => ServiceError::Unavailable {
            message: other.to_string(),
            retry_after_secs: RETRY_AFTER_SECS,
        },
    }
}
