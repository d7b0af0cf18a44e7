//! The metadata state machine replicated by group 0: the cluster id, topology, routing and
//! migrations, changed only by applying [`MetadataCommand`]s in log order. Applying is pure and
//! deterministic, so every replica that applies the same log holds the same state.
//!
//! **Compatibility rule:** `MetadataCommand`, `MetadataEvent`, `MetadataError` and every type
//! they contain are persisted in the Raft log and in snapshots with postcard (variants tagged
//! by index). New variants go at the end, existing ones are never reordered, removed or given
//! new fields; a changed command is a new variant. Golden-bytes tests pin the encoding.

mod apply;
mod migration;

pub use migration::{Migration, MigrationId, MigrationPhase};

use crate::ids::{GroupId, NodeId, VShardId, VShardOutOfRange};
use crate::routing::{RoutingError, RoutingTable};
use crate::topology::{NodeInfo, NodeState, Topology, TopologyError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Largest replication factor a cluster may be bootstrapped with.
pub const REPLICATION_FACTOR_MAX: u8 = 7;

/// Largest number of migrations that may be in flight (not Cleaned or Aborted) at once.
pub const MIGRATIONS_ACTIVE_MAX: usize = 64;

/// Finished migrations kept for status and for idempotent retries; older ones are dropped,
/// lowest id first.
pub const MIGRATION_HISTORY_MAX: usize = 64;

/// Identifies a cluster; generated once at bootstrap by the caller (randomness is an input).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub [u8; 16]);

/// A change to the cluster metadata, as written to group 0's log. Append-only (see the module
/// documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// Creates the cluster: `num_groups` data groups, every group (0 included) with
    /// `first_node` as its only voter, vShards round-robin. `first_node` is recorded Active.
    /// Retrying with the same cluster id is a no-op.
    Bootstrap {
        cluster_id: ClusterId,
        num_groups: u32,
        replication_factor: u8,
        first_node: NodeInfo,
    },
    /// Admits a node (state Joining or Active). Same id and addresses again: no-op. Same id
    /// with other addresses, or an address of another node: refused.
    AddNode { node: NodeInfo },
    /// Moves a node along its lifecycle. Decommissioned requires that it holds no replica.
    SetNodeState { node: NodeId, state: NodeState },
    /// Records the voters and learners a group now has (after the Raft membership change).
    /// Members must be known, not decommissioned, and hold at most one replica each.
    SetGroupMembers {
        group: GroupId,
        voters: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
    },
    /// Records the last known leader of a group (a voter), or that it is unknown.
    SetLeaderHint {
        group: GroupId,
        leader: Option<NodeId>,
    },
    /// Plans moving `vshard` from its owner `from` to data group `to`. Retrying the same move
    /// while it is in flight answers [`MetadataEvent::MigrationExists`].
    BeginMigration {
        vshard: VShardId,
        from: GroupId,
        to: GroupId,
    },
    /// Moves a migration one phase forward: Planned -> Copying -> Fenced, Switched -> Cleaned.
    AdvanceMigration {
        id: MigrationId,
        phase: MigrationPhase,
    },
    /// Switches routing of a Fenced migration's vShard to the target (routing_version + 1).
    FinishMigration { id: MigrationId },
    /// Gives up a migration that has not switched yet; routing is untouched.
    AbortMigration { id: MigrationId },
    /// [`MetadataCommand::SetGroupMembers`] for a change planned from the members
    /// `from_voters` / `from_learners`: refused with [`MetadataError::MembersChanged`] when
    /// the record no longer says so (a newer record must not be overwritten by a change
    /// planned from an older one, e.g. by a deposed metadata leader); a retry finding the
    /// members already recorded answers `Unchanged`.
    ChangeGroupMembers {
        group: GroupId,
        from_voters: BTreeSet<NodeId>,
        from_learners: BTreeSet<NodeId>,
        voters: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
    },
}

/// What an applied command changed; the answer to the proposer. `Unchanged` means the command
/// was a retry of one already applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataEvent {
    Unchanged,
    Bootstrapped {
        cluster_id: ClusterId,
    },
    NodeAdded {
        node: NodeId,
    },
    NodeStateChanged {
        node: NodeId,
        from: NodeState,
        to: NodeState,
    },
    GroupMembersChanged {
        group: GroupId,
        routing_version: u64,
    },
    LeaderHintChanged {
        group: GroupId,
        leader: Option<NodeId>,
    },
    MigrationBegun {
        id: MigrationId,
    },
    /// A `BeginMigration` for a move already in flight; nothing changed.
    MigrationExists {
        id: MigrationId,
    },
    MigrationAdvanced {
        id: MigrationId,
        phase: MigrationPhase,
    },
    MigrationFinished {
        id: MigrationId,
        vshard: VShardId,
        to: GroupId,
        routing_version: u64,
    },
    MigrationAborted {
        id: MigrationId,
    },
}

/// Why a command was refused. A refused command leaves the state untouched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetadataError {
    #[error("the cluster is not bootstrapped yet")]
    NotBootstrapped,
    #[error("the cluster is already bootstrapped as {cluster_id}")]
    AlreadyBootstrapped { cluster_id: ClusterId },
    #[error("replication factor {replication_factor} is out of range (1..={max})")]
    ReplicationFactorOutOfRange { replication_factor: u8, max: u8 },
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error(transparent)]
    VShardOutOfRange(#[from] VShardOutOfRange),
    #[error("{node} is {state:?} and cannot hold a replica of {group}")]
    NodeNotEligible {
        group: GroupId,
        node: NodeId,
        state: NodeState,
    },
    #[error("{node} still holds a replica of {group}")]
    NodeHoldsReplicas { node: NodeId, group: GroupId },
    #[error("{vshard} is already being migrated by {id}")]
    VShardMigrating { vshard: VShardId, id: MigrationId },
    #[error("{vshard} is owned by {owner}, not {group}")]
    NotOwner {
        vshard: VShardId,
        group: GroupId,
        owner: GroupId,
    },
    #[error("{vshard} cannot move from {group} to itself")]
    SameGroup { vshard: VShardId, group: GroupId },
    #[error("{max} migrations are already in flight")]
    TooManyMigrations { max: u64 },
    #[error("{id} is unknown (never begun, or dropped from history)")]
    UnknownMigration { id: MigrationId },
    #[error("{id} cannot go from {from:?} to {to:?}")]
    InvalidPhaseTransition {
        id: MigrationId,
        from: MigrationPhase,
        to: MigrationPhase,
    },
    #[error("decoded metadata is inconsistent: {reason}")]
    Inconsistent { reason: InconsistencyReason },
    #[error("the members of {group} changed since this change was planned")]
    MembersChanged { group: GroupId },
}

/// What is wrong with a decoded [`MetadataState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum InconsistencyReason {
    #[error("bootstrap fields are partly set")]
    PartialBootstrap,
    #[error("a group member is not a placeable member of the topology")]
    MemberNotInTopology,
    #[error("a migration disagrees with routing or another migration")]
    MigrationMismatch,
}

/// The replicated cluster metadata. Empty until `Bootstrap` is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MetadataStateRecord")]
pub struct MetadataState {
    /// Commands applied that changed the state (retries and refusals do not count).
    changes_applied: u64,
    cluster_id: Option<ClusterId>,
    /// 0 until bootstrapped.
    replication_factor: u8,
    topology: Topology,
    routing: Option<RoutingTable>,
    migrations: BTreeMap<MigrationId, Migration>,
    next_migration_id: MigrationId,
}

impl MetadataState {
    /// The state before `Bootstrap`.
    pub fn new() -> MetadataState {
        MetadataState::default()
    }

    /// Applies one command. Validates it fully first: a refused command changes nothing and
    /// a retried command answers `Unchanged` (or `MigrationExists`). Never panics.
    pub fn apply(&mut self, command: &MetadataCommand) -> Result<MetadataEvent, MetadataError> {
        let event = apply::apply(self, command)?;
        if event != MetadataEvent::Unchanged
            && !matches!(event, MetadataEvent::MigrationExists { .. })
        {
            self.changes_applied = self.changes_applied.saturating_add(1);
        }
        Ok(event)
    }

    pub fn is_bootstrapped(&self) -> bool {
        self.cluster_id.is_some()
    }

    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.cluster_id
    }

    /// Target replicas per data group; `None` before bootstrap.
    pub fn replication_factor(&self) -> Option<u8> {
        self.is_bootstrapped().then_some(self.replication_factor)
    }

    /// Number of commands that changed the state; a cheap version number of the metadata.
    pub fn changes_applied(&self) -> u64 {
        self.changes_applied
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// `None` before bootstrap.
    pub fn routing(&self) -> Option<&RoutingTable> {
        self.routing.as_ref()
    }

    /// In-flight migrations and the most recent finished ones, by id.
    pub fn migrations(&self) -> &BTreeMap<MigrationId, Migration> {
        &self.migrations
    }

    /// The vShards of the migrations in flight, each with the group it is moving to: what the
    /// vShard planners count as already placed there.
    pub fn moving_vshards(&self) -> BTreeMap<VShardId, GroupId> {
        self.migrations
            .values()
            .filter(|migration| migration.is_active())
            .map(|migration| (migration.vshard, migration.to))
            .collect()
    }

    pub fn migration(&self, id: MigrationId) -> Option<&Migration> {
        self.migrations.get(&id)
    }

    /// The in-flight migration of `vshard`, if any.
    pub fn active_migration_of(&self, vshard: VShardId) -> Option<&Migration> {
        self.migrations
            .values()
            .find(|migration| migration.vshard == vshard && migration.is_active())
    }

    /// Checks every cross-structure invariant; run after decoding and in tests.
    pub fn validate(&self) -> Result<(), MetadataError> {
        let inconsistent = |reason| MetadataError::Inconsistent { reason };
        let bootstrapped = self.cluster_id.is_some();
        if bootstrapped != self.routing.is_some()
            || bootstrapped != (self.replication_factor != 0)
            || self.replication_factor > REPLICATION_FACTOR_MAX
        {
            return Err(inconsistent(InconsistencyReason::PartialBootstrap));
        }
        self.topology.validate()?;
        let Some(routing) = &self.routing else {
            return match self.migrations.is_empty() && self.topology.is_empty() {
                true => Ok(()),
                false => Err(inconsistent(InconsistencyReason::PartialBootstrap)),
            };
        };
        routing.validate()?;
        for (_, members) in routing.groups() {
            let all_placeable = members.replicas().all(|node| {
                matches!(self.topology.state_of(node), Some(state) if state != NodeState::Decommissioned)
            });
            if !all_placeable {
                return Err(inconsistent(InconsistencyReason::MemberNotInTopology));
            }
        }
        self.validate_migrations(routing)
            .map_err(|()| inconsistent(InconsistencyReason::MigrationMismatch))
    }

    fn validate_migrations(&self, routing: &RoutingTable) -> Result<(), ()> {
        let mut active_vshards = BTreeSet::new();
        for (id, migration) in &self.migrations {
            let owner = routing.group_of(migration.vshard);
            let well_formed = *id == migration.id
                && id.0 < self.next_migration_id.0
                && migration.from != migration.to
                && !migration.from.is_metadata()
                && !migration.to.is_metadata()
                && routing.contains_group(migration.from)
                && routing.contains_group(migration.to);
            if !well_formed {
                return Err(());
            }
            if migration.is_active() {
                let expected_owner = match migration.phase.is_switched() {
                    true => migration.to,
                    false => migration.from,
                };
                if owner != expected_owner || !active_vshards.insert(migration.vshard) {
                    return Err(());
                }
            }
        }
        let active = active_vshards.len();
        let finished = self.migrations.len() - active;
        match active <= MIGRATIONS_ACTIVE_MAX && finished <= MIGRATION_HISTORY_MAX {
            true => Ok(()),
            false => Err(()),
        }
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The encoded shape of [`MetadataState`]; decoding goes through it so that a snapshot read
/// from disk or a peer is validated before use.
#[derive(Deserialize)]
struct MetadataStateRecord {
    changes_applied: u64,
    cluster_id: Option<ClusterId>,
    replication_factor: u8,
    topology: Topology,
    routing: Option<RoutingTable>,
    migrations: BTreeMap<MigrationId, Migration>,
    next_migration_id: MigrationId,
}

impl TryFrom<MetadataStateRecord> for MetadataState {
    type Error = MetadataError;

    fn try_from(record: MetadataStateRecord) -> Result<MetadataState, MetadataError> {
        let state = MetadataState {
            changes_applied: record.changes_applied,
            cluster_id: record.cluster_id,
            replication_factor: record.replication_factor,
            topology: record.topology,
            routing: record.routing,
            migrations: record.migrations,
            next_migration_id: record.next_migration_id,
        };
        state.validate()?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests;
