//! Applying one [`MetadataCommand`] to the [`MetadataState`]: every command is validated in
//! full before the first mutation, so a refused command leaves the state exactly as it was.

use super::{
    ClusterId, MIGRATION_HISTORY_MAX, MIGRATIONS_ACTIVE_MAX, MetadataCommand, MetadataError,
    MetadataEvent, MetadataState, Migration, MigrationId, MigrationPhase, REPLICATION_FACTOR_MAX,
};
use crate::ids::{GroupId, METADATA_GROUP, NodeId, VShardId};
use crate::routing::{GroupMembers, RoutingError, RoutingTable, validate_members};
use crate::topology::{NodeInfo, NodeState, Topology};
use std::collections::BTreeSet;

pub(super) fn apply(
    state: &mut MetadataState,
    command: &MetadataCommand,
) -> Result<MetadataEvent, MetadataError> {
    match command {
        MetadataCommand::Bootstrap {
            cluster_id,
            num_groups,
            replication_factor,
            first_node,
        } => bootstrap(
            state,
            *cluster_id,
            *num_groups,
            *replication_factor,
            first_node,
        ),
        _ if state.routing.is_none() => Err(MetadataError::NotBootstrapped),
        MetadataCommand::AddNode { node } => match state.topology.insert(node.clone())? {
            true => Ok(MetadataEvent::NodeAdded { node: node.id }),
            false => Ok(MetadataEvent::Unchanged),
        },
        MetadataCommand::SetNodeState { node, state: to } => set_node_state(state, *node, *to),
        MetadataCommand::SetGroupMembers {
            group,
            voters,
            learners,
        } => set_group_members(state, *group, voters, learners),
        MetadataCommand::ChangeGroupMembers {
            group,
            from_voters,
            from_learners,
            voters,
            learners,
        } => change_group_members(
            state,
            *group,
            (from_voters, from_learners),
            (voters, learners),
        ),
        MetadataCommand::SetLeaderHint { group, leader } => set_leader_hint(state, *group, *leader),
        MetadataCommand::BeginMigration { vshard, from, to } => {
            begin_migration(state, *vshard, *from, *to)
        }
        MetadataCommand::AdvanceMigration { id, phase } => advance_migration(state, *id, *phase),
        MetadataCommand::FinishMigration { id } => finish_migration(state, *id),
        MetadataCommand::AbortMigration { id } => abort_migration(state, *id),
    }
}

fn bootstrap(
    state: &mut MetadataState,
    cluster_id: ClusterId,
    num_groups: u32,
    replication_factor: u8,
    first_node: &NodeInfo,
) -> Result<MetadataEvent, MetadataError> {
    if let Some(existing) = state.cluster_id {
        return match existing == cluster_id {
            true => Ok(MetadataEvent::Unchanged),
            false => Err(MetadataError::AlreadyBootstrapped {
                cluster_id: existing,
            }),
        };
    }
    if replication_factor == 0 || replication_factor > REPLICATION_FACTOR_MAX {
        return Err(MetadataError::ReplicationFactorOutOfRange {
            replication_factor,
            max: REPLICATION_FACTOR_MAX,
        });
    }
    let mut topology = Topology::new();
    topology.insert(NodeInfo {
        state: NodeState::Active,
        ..first_node.clone()
    })?;
    let routing = RoutingTable::new(num_groups, first_node.id)?;
    state.cluster_id = Some(cluster_id);
    state.replication_factor = replication_factor;
    state.topology = topology;
    state.routing = Some(routing);
    state.migrations.clear();
    state.next_migration_id = MigrationId(1);
    Ok(MetadataEvent::Bootstrapped { cluster_id })
}

fn set_node_state(
    state: &mut MetadataState,
    node: NodeId,
    to: NodeState,
) -> Result<MetadataEvent, MetadataError> {
    let routing = state
        .routing
        .as_ref()
        .ok_or(MetadataError::NotBootstrapped)?;
    if to == NodeState::Decommissioned
        && let Some(group) = routing.groups_holding_node(node).first()
    {
        return Err(MetadataError::NodeHoldsReplicas {
            node,
            group: *group,
        });
    }
    let from = state.topology.set_state(node, to)?;
    match from == to {
        true => Ok(MetadataEvent::Unchanged),
        false => Ok(MetadataEvent::NodeStateChanged { node, from, to }),
    }
}

fn set_group_members(
    state: &mut MetadataState,
    group: GroupId,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
) -> Result<MetadataEvent, MetadataError> {
    let routing = state
        .routing
        .as_mut()
        .ok_or(MetadataError::NotBootstrapped)?;
    let candidate = GroupMembers {
        voters: voters.clone(),
        learners: learners.clone(),
        leader_hint: None,
    };
    validate_members(group, &candidate)?;
    for node in candidate.replicas() {
        match state.topology.state_of(node) {
            None => return Err(crate::topology::TopologyError::UnknownNode { node }.into()),
            Some(NodeState::Decommissioned) => {
                return Err(MetadataError::NodeNotEligible {
                    group,
                    node,
                    state: NodeState::Decommissioned,
                });
            }
            Some(_) => {}
        }
    }
    match routing.set_members(group, candidate.voters, candidate.learners)? {
        true => Ok(MetadataEvent::GroupMembersChanged {
            group,
            routing_version: routing.routing_version(),
        }),
        false => Ok(MetadataEvent::Unchanged),
    }
}

type Members<'a> = (&'a BTreeSet<NodeId>, &'a BTreeSet<NodeId>);

/// `SetGroupMembers` to `to`, only if the record still holds `from` (voters, learners).
fn change_group_members(
    state: &mut MetadataState,
    group: GroupId,
    from: Members<'_>,
    to: Members<'_>,
) -> Result<MetadataEvent, MetadataError> {
    let routing = state
        .routing
        .as_ref()
        .ok_or(MetadataError::NotBootstrapped)?;
    let current = routing
        .members(group)
        .ok_or(RoutingError::UnknownGroup { group })?;
    let recorded = (&current.voters, &current.learners);
    if recorded == to {
        Ok(MetadataEvent::Unchanged)
    } else if recorded == from {
        set_group_members(state, group, to.0, to.1)
    } else {
        Err(MetadataError::MembersChanged { group })
    }
}

fn set_leader_hint(
    state: &mut MetadataState,
    group: GroupId,
    leader: Option<NodeId>,
) -> Result<MetadataEvent, MetadataError> {
    let routing = state
        .routing
        .as_mut()
        .ok_or(MetadataError::NotBootstrapped)?;
    match routing.set_leader_hint(group, leader)? {
        true => Ok(MetadataEvent::LeaderHintChanged { group, leader }),
        false => Ok(MetadataEvent::Unchanged),
    }
}

fn begin_migration(
    state: &mut MetadataState,
    vshard: VShardId,
    from: GroupId,
    to: GroupId,
) -> Result<MetadataEvent, MetadataError> {
    let vshard = VShardId::try_from(vshard.0)?;
    let routing = state
        .routing
        .as_ref()
        .ok_or(MetadataError::NotBootstrapped)?;
    for group in [from, to] {
        if group == METADATA_GROUP {
            return Err(crate::routing::RoutingError::NotADataGroup { group }.into());
        }
        if !routing.contains_group(group) {
            return Err(crate::routing::RoutingError::UnknownGroup { group }.into());
        }
    }
    if let Some(active) = state.active_migration_of(vshard) {
        return match active.from == from && active.to == to {
            true => Ok(MetadataEvent::MigrationExists { id: active.id }),
            false => Err(MetadataError::VShardMigrating {
                vshard,
                id: active.id,
            }),
        };
    }
    let owner = routing.group_of(vshard);
    if owner != from {
        return Err(MetadataError::NotOwner {
            vshard,
            group: from,
            owner,
        });
    }
    if from == to {
        return Err(MetadataError::SameGroup {
            vshard,
            group: from,
        });
    }
    let active_count = state.migrations.values().filter(|m| m.is_active()).count();
    if active_count >= MIGRATIONS_ACTIVE_MAX {
        return Err(MetadataError::TooManyMigrations {
            max: MIGRATIONS_ACTIVE_MAX as u64,
        });
    }
    let id = state.next_migration_id;
    // Ids are never reused, so an exhausted id space (only reachable from corrupt bytes)
    // refuses new migrations instead of wrapping.
    let Some(next) = id.0.checked_add(1) else {
        return Err(MetadataError::TooManyMigrations {
            max: MIGRATIONS_ACTIVE_MAX as u64,
        });
    };
    state.next_migration_id = MigrationId(next);
    let phase = MigrationPhase::Planned;
    let migration = Migration {
        id,
        vshard,
        from,
        to,
        phase,
    };
    state.migrations.insert(id, migration);
    Ok(MetadataEvent::MigrationBegun { id })
}

fn advance_migration(
    state: &mut MetadataState,
    id: MigrationId,
    phase: MigrationPhase,
) -> Result<MetadataEvent, MetadataError> {
    let migration = state
        .migrations
        .get_mut(&id)
        .ok_or(MetadataError::UnknownMigration { id })?;
    let from = migration.phase;
    if from == phase {
        return Ok(MetadataEvent::Unchanged);
    }
    if !from.can_advance_to(phase) {
        return Err(MetadataError::InvalidPhaseTransition {
            id,
            from,
            to: phase,
        });
    }
    migration.phase = phase;
    prune_history(state);
    Ok(MetadataEvent::MigrationAdvanced { id, phase })
}

fn finish_migration(
    state: &mut MetadataState,
    id: MigrationId,
) -> Result<MetadataEvent, MetadataError> {
    let routing = state
        .routing
        .as_mut()
        .ok_or(MetadataError::NotBootstrapped)?;
    let migration = state
        .migrations
        .get_mut(&id)
        .ok_or(MetadataError::UnknownMigration { id })?;
    let from = migration.phase;
    match from {
        MigrationPhase::Switched | MigrationPhase::Cleaned => Ok(MetadataEvent::Unchanged),
        MigrationPhase::Fenced { .. } => {
            // Ownership by `from` is an invariant of an unswitched active migration, and
            // `to` is an existing data group (checked at begin; groups are never removed).
            routing.assign_vshard(migration.vshard, migration.to)?;
            migration.phase = MigrationPhase::Switched;
            Ok(MetadataEvent::MigrationFinished {
                id,
                vshard: migration.vshard,
                to: migration.to,
                routing_version: routing.routing_version(),
            })
        }
        _ => Err(MetadataError::InvalidPhaseTransition {
            id,
            from,
            to: MigrationPhase::Switched,
        }),
    }
}

fn abort_migration(
    state: &mut MetadataState,
    id: MigrationId,
) -> Result<MetadataEvent, MetadataError> {
    let migration = state
        .migrations
        .get_mut(&id)
        .ok_or(MetadataError::UnknownMigration { id })?;
    let from = migration.phase;
    if from == MigrationPhase::Aborted {
        return Ok(MetadataEvent::Unchanged);
    }
    if !from.can_abort() {
        return Err(MetadataError::InvalidPhaseTransition {
            id,
            from,
            to: MigrationPhase::Aborted,
        });
    }
    migration.phase = MigrationPhase::Aborted;
    prune_history(state);
    Ok(MetadataEvent::MigrationAborted { id })
}

/// Drops the oldest finished migrations beyond `MIGRATION_HISTORY_MAX`.
fn prune_history(state: &mut MetadataState) {
    let finished: Vec<MigrationId> = state
        .migrations
        .values()
        .filter(|migration| !migration.is_active())
        .map(|migration| migration.id)
        .collect();
    let excess = finished.len().saturating_sub(MIGRATION_HISTORY_MAX);
    for id in &finished[..excess] {
        state.migrations.remove(id);
    }
}
