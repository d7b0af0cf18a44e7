//! Key -> vShard hashing and the routing table (vShard -> data group, group -> replicas), the
//! part of the metadata every request consults. The hash is pinned forever: see
//! `docs/design.md`, section "vShard hash".

mod xxh64;

use crate::ids::{GroupId, METADATA_GROUP, NodeId, VSHARD_COUNT, VShardId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use xxh64::xxh64;

/// Seed of the key hash. Part of the on-disk contract: never changes.
pub const VSHARD_HASH_SEED: u64 = 0;

/// Largest number of data groups: every data group must be able to own at least one vShard.
pub const DATA_GROUPS_MAX: u32 = VSHARD_COUNT as u32;

/// Largest number of replicas (voters + learners) a group may list. Group 0 has every node as
/// a member, so this is also the cluster size bound.
pub const GROUP_MEMBERS_MAX: usize = 1024;

/// The vShard that owns `key`: `xxh64(key, seed 0) mod 1024`. Stable forever.
pub fn vshard_for_key(key: &[u8]) -> VShardId {
    let reduced = xxh64(key, VSHARD_HASH_SEED) % u64::from(VSHARD_COUNT);
    // The remainder is below VSHARD_COUNT (a u16), so the narrowing cannot lose bits.
    VShardId(reduced as u16)
}

/// The keys `"{prefix}0"`, `"{prefix}1"`, ... that belong to `vshard`, in that order: for
/// tools and tests that need several keys of one vShard.
pub fn keys_in_vshard(prefix: &str, vshard: VShardId) -> impl Iterator<Item = String> + '_ {
    (0u64..)
        .map(move |n| format!("{prefix}{n}"))
        .filter(move |key| vshard_for_key(key.as_bytes()) == vshard)
}

/// The replicas of one Raft group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Last known leader; a hint for forwarding, never a correctness input.
    pub leader_hint: Option<NodeId>,
}

/// vShard -> data group and group -> members, versioned by `routing_version`, which grows by
/// one with every change. Always complete: every vShard maps to exactly one existing data group,
/// and group 0 (metadata) plus data groups `1..=num_data_groups` all have members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RoutingTableRecord")]
pub struct RoutingTable {
    routing_version: u64,
    /// Indexed by vShard; always `VSHARD_COUNT` long.
    vshard_groups: Vec<GroupId>,
    /// Group 0 and every data group.
    groups: BTreeMap<GroupId, GroupMembers>,
}

/// Why a routing change or a decoded routing table was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RoutingError {
    #[error("num_groups {num_groups} is out of range (1..={max})")]
    NumGroupsOutOfRange { num_groups: u32, max: u32 },
    #[error("{group} does not exist")]
    UnknownGroup { group: GroupId },
    #[error("{group} is not a data group and cannot own vShards")]
    NotADataGroup { group: GroupId },
    #[error("{group} would have no voters")]
    NoVoters { group: GroupId },
    #[error("{group} would have {count} members, more than {max}")]
    TooManyMembers {
        group: GroupId,
        count: u64,
        max: u64,
    },
    #[error("{node} would hold two replicas of {group}")]
    DuplicateReplica { group: GroupId, node: NodeId },
    #[error("{group} lists the invalid node id 0")]
    InvalidNode { group: GroupId },
    #[error("{leader} is not a voter of {group}")]
    LeaderNotVoter { group: GroupId, leader: NodeId },
    #[error("{node} is already a member of {group}")]
    AlreadyMember { group: GroupId, node: NodeId },
    #[error("{node} is not a learner of {group}")]
    NotALearner { group: GroupId, node: NodeId },
    #[error("{node} is not a member of {group}")]
    NotAMember { group: GroupId, node: NodeId },
    #[error("{node} is the last voter of {group}")]
    LastVoter { group: GroupId, node: NodeId },
    #[error("decoded routing table has {count} vShard entries instead of {VSHARD_COUNT}")]
    WrongVShardCount { count: u64 },
    #[error("decoded routing table has groups that are not 0..=N without gaps")]
    GroupsNotContiguous,
}

impl RoutingTable {
    /// A fresh table with data groups `1..=num_groups`, vShards assigned round-robin
    /// (`vshard v -> group 1 + v mod num_groups`), every group with `first_voter` as its only
    /// voter. `routing_version` starts at 1.
    pub fn new(num_groups: u32, first_voter: NodeId) -> Result<RoutingTable, RoutingError> {
        if num_groups == 0 || num_groups > DATA_GROUPS_MAX {
            return Err(RoutingError::NumGroupsOutOfRange {
                num_groups,
                max: DATA_GROUPS_MAX,
            });
        }
        if !first_voter.is_valid() {
            return Err(RoutingError::InvalidNode {
                group: METADATA_GROUP,
            });
        }
        let vshard_groups = VShardId::all()
            .map(|vshard| GroupId(1 + u32::from(vshard.0) % num_groups))
            .collect();
        let members = GroupMembers {
            voters: BTreeSet::from([first_voter]),
            learners: BTreeSet::new(),
            leader_hint: None,
        };
        let groups = (0..=num_groups)
            .map(|group| (GroupId(group), members.clone()))
            .collect();
        Ok(RoutingTable {
            routing_version: 1,
            vshard_groups,
            groups,
        })
    }

    pub fn routing_version(&self) -> u64 {
        self.routing_version
    }

    /// The data group owning `vshard`. Cannot fail: vShard ids are range-checked when made
    /// from raw values or decoded, and the table always covers every vShard.
    pub fn group_of(&self, vshard: VShardId) -> GroupId {
        match self.vshard_groups.get(vshard.index()) {
            Some(group) => *group,
            None => panic!(
                "vShard {} out of range 0..{VSHARD_COUNT}: built with VShardId(raw) bypassing VShardId::new",
                vshard.0
            ),
        }
    }

    /// The vShards owned by `group`, ascending; empty for group 0 and unknown groups.
    pub fn vshards_of(&self, group: GroupId) -> Vec<VShardId> {
        VShardId::all()
            .filter(|vshard| self.vshard_groups[vshard.index()] == group)
            .collect()
    }

    /// Number of data groups (group 0 excluded).
    pub fn num_data_groups(&self) -> u32 {
        // At most DATA_GROUPS_MAX + 1 entries, checked on construction and decode.
        (self.groups.len() - 1) as u32
    }

    /// Data group ids, ascending.
    pub fn data_groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups
            .keys()
            .copied()
            .filter(|group| !group.is_metadata())
    }

    /// Every group (metadata group first) with its members.
    pub fn groups(&self) -> impl Iterator<Item = (GroupId, &GroupMembers)> + '_ {
        self.groups.iter().map(|(group, members)| (*group, members))
    }

    pub fn members(&self, group: GroupId) -> Option<&GroupMembers> {
        self.groups.get(&group)
    }

    pub fn contains_group(&self, group: GroupId) -> bool {
        self.groups.contains_key(&group)
    }

    /// Moves `vshard` to data group `group`. Returns whether anything changed; a change bumps
    /// `routing_version`.
    pub fn assign_vshard(
        &mut self,
        vshard: VShardId,
        group: GroupId,
    ) -> Result<bool, RoutingError> {
        self.check_data_group(group)?;
        let current = self.group_of(vshard);
        if current == group {
            return Ok(false);
        }
        self.vshard_groups[vshard.index()] = group;
        // Saturating: a version near u64::MAX only arrives from corrupt bytes; never panic.
        self.routing_version = self.routing_version.saturating_add(1);
        Ok(true)
    }

    /// Replaces the voters and learners of `group`. The leader hint survives only if the
    /// leader is still a voter. Returns whether anything changed.
    pub fn set_members(
        &mut self,
        group: GroupId,
        voters: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
    ) -> Result<bool, RoutingError> {
        let current = self.existing(group)?;
        let leader_hint = current.leader_hint.filter(|leader| voters.contains(leader));
        let members = GroupMembers {
            voters,
            learners,
            leader_hint,
        };
        validate_members(group, &members)?;
        self.replace_members(group, members)
    }

    /// Records the last known leader of `group`, which must be one of its voters.
    pub fn set_leader_hint(
        &mut self,
        group: GroupId,
        leader: Option<NodeId>,
    ) -> Result<bool, RoutingError> {
        let mut members = self.existing(group)?.clone();
        members.leader_hint = leader;
        validate_members(group, &members)?;
        self.replace_members(group, members)
    }

    /// Every group `node` is a voter or learner of, ascending.
    pub fn groups_of_node(&self, node: NodeId) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, members)| members.contains(node))
            .map(|(group, _)| *group)
            .collect()
    }

    /// The groups that need `node` before it may be decommissioned: every data group it
    /// replicates, and group 0 when it votes there. A learner of group 0 only follows the
    /// metadata (that is how a draining node hears that it is decommissioned).
    pub fn groups_holding_node(&self, node: NodeId) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(group, members)| match group.is_metadata() {
                true => members.voters.contains(&node),
                false => members.contains(node),
            })
            .map(|(group, _)| *group)
            .collect()
    }

    /// Checks every structural invariant; run after decoding and in tests.
    pub fn validate(&self) -> Result<(), RoutingError> {
        if self.vshard_groups.len() != usize::from(VSHARD_COUNT) {
            return Err(RoutingError::WrongVShardCount {
                count: self.vshard_groups.len() as u64,
            });
        }
        let group_count = self.groups.len();
        let contiguous = self
            .groups
            .keys()
            .enumerate()
            .all(|(position, group)| u64::from(group.0) == position as u64);
        if group_count < 2 || group_count - 1 > DATA_GROUPS_MAX as usize || !contiguous {
            return Err(RoutingError::GroupsNotContiguous);
        }
        for group in &self.vshard_groups {
            self.check_data_group(*group)?;
        }
        for (group, members) in &self.groups {
            validate_members(*group, members)?;
        }
        Ok(())
    }

    fn existing(&self, group: GroupId) -> Result<&GroupMembers, RoutingError> {
        self.groups
            .get(&group)
            .ok_or(RoutingError::UnknownGroup { group })
    }

    fn check_data_group(&self, group: GroupId) -> Result<(), RoutingError> {
        if group.is_metadata() {
            return Err(RoutingError::NotADataGroup { group });
        }
        self.existing(group).map(|_| ())
    }

    /// Stores already validated members, bumping the version only on a real change.
    pub(crate) fn replace_members(
        &mut self,
        group: GroupId,
        members: GroupMembers,
    ) -> Result<bool, RoutingError> {
        let slot = self
            .groups
            .get_mut(&group)
            .ok_or(RoutingError::UnknownGroup { group })?;
        if *slot == members {
            return Ok(false);
        }
        *slot = members;
        // Saturating: a version near u64::MAX only arrives from corrupt bytes; never panic.
        self.routing_version = self.routing_version.saturating_add(1);
        Ok(true)
    }
}

impl GroupMembers {
    /// Whether `node` holds a replica (voter or learner).
    pub fn contains(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    /// Voters then learners.
    pub fn replicas(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}

/// Checks one group's members: at least one voter, no node twice, no node 0, leader a voter.
pub(crate) fn validate_members(group: GroupId, members: &GroupMembers) -> Result<(), RoutingError> {
    if members.voters.is_empty() {
        return Err(RoutingError::NoVoters { group });
    }
    let count = members.voters.len() + members.learners.len();
    if count > GROUP_MEMBERS_MAX {
        return Err(RoutingError::TooManyMembers {
            group,
            count: count as u64,
            max: GROUP_MEMBERS_MAX as u64,
        });
    }
    if let Some(node) = members.voters.intersection(&members.learners).next() {
        return Err(RoutingError::DuplicateReplica { group, node: *node });
    }
    if members.replicas().any(|node| !node.is_valid()) {
        return Err(RoutingError::InvalidNode { group });
    }
    match members.leader_hint {
        Some(leader) if !members.voters.contains(&leader) => {
            Err(RoutingError::LeaderNotVoter { group, leader })
        }
        _ => Ok(()),
    }
}

/// The encoded shape of [`RoutingTable`]; decoding goes through it so that a table read from
/// disk or a peer is validated before use.
#[derive(Deserialize)]
struct RoutingTableRecord {
    routing_version: u64,
    vshard_groups: Vec<GroupId>,
    groups: BTreeMap<GroupId, GroupMembers>,
}

impl TryFrom<RoutingTableRecord> for RoutingTable {
    type Error = RoutingError;

    fn try_from(record: RoutingTableRecord) -> Result<RoutingTable, RoutingError> {
        let table = RoutingTable {
            routing_version: record.routing_version,
            vshard_groups: record.vshard_groups,
            groups: record.groups,
        };
        table.validate()?;
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_vshard_are_the_prefixed_keys_of_that_vshard_in_order() {
        let vshard = vshard_for_key(b"k0");
        let keys: Vec<String> = keys_in_vshard("k", vshard).take(5).collect();
        assert_eq!(keys[0], "k0");
        let numbers: Vec<u64> = keys.iter().map(|key| key[1..].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|pair| pair[0] < pair[1]));
        for n in 0..=numbers[4] {
            let key = format!("k{n}");
            assert_eq!(
                keys.contains(&key),
                vshard_for_key(key.as_bytes()) == vshard,
                "{key}"
            );
        }
    }

    /// Pinned forever: a change here re-routes stored keys. Mirrored in docs/design.md.
    #[test]
    fn vshard_for_key_golden_values() {
        let golden: [(&[u8], u64, u16); 10] = [
            (b"", 0xEF46_DB37_51D8_E999, 409),
            (b"a", 0xD24E_C4F1_A98C_6E5B, 603),
            (b"abc", 0x44BC_2CF5_AD77_0999, 409),
            (b"key", 0x4477_6256_2DE1_4334, 820),
            (b"user:1", 0xD9C7_C460_9E60_80F3, 243),
            (b"user:2", 0x337B_E5A0_C611_350A, 266),
            (b"orders/2026/11/27", 0x9839_0526_1019_49D1, 465),
            (
                b"The quick brown fox jumps over the lazy dog",
                0x0B24_2D36_1FDA_71BC,
                444,
            ),
            (&[0x00; 32], 0xF6E9_BE5D_7063_2CF5, 245),
            (&[0xFF; 7], 0xEB12_4FC5_C6FC_0E7A, 634),
        ];
        for (key, hash, vshard) in golden {
            assert_eq!(xxh64(key, VSHARD_HASH_SEED), hash, "hash of {key:?}");
            assert_eq!(vshard_for_key(key), VShardId(vshard), "vShard of {key:?}");
        }
    }

    #[test]
    fn new_table_is_round_robin_and_valid() {
        let table = RoutingTable::new(8, NodeId(1)).unwrap();
        table.validate().unwrap();
        assert_eq!(table.routing_version(), 1);
        assert_eq!(table.num_data_groups(), 8);
        assert_eq!(table.group_of(VShardId(0)), GroupId(1));
        assert_eq!(table.group_of(VShardId(7)), GroupId(8));
        assert_eq!(table.group_of(VShardId(8)), GroupId(1));
        for group in table.data_groups() {
            assert_eq!(table.vshards_of(group).len(), 128);
        }
        assert!(table.vshards_of(METADATA_GROUP).is_empty());
    }

    #[test]
    fn new_table_refuses_bad_group_counts() {
        assert!(matches!(
            RoutingTable::new(0, NodeId(1)),
            Err(RoutingError::NumGroupsOutOfRange { .. })
        ));
        assert!(matches!(
            RoutingTable::new(DATA_GROUPS_MAX + 1, NodeId(1)),
            Err(RoutingError::NumGroupsOutOfRange { .. })
        ));
        assert!(RoutingTable::new(DATA_GROUPS_MAX, NodeId(1)).is_ok());
        assert!(RoutingTable::new(1, NodeId(0)).is_err());
    }

    #[test]
    fn changes_bump_version_only_when_something_changes() {
        let mut table = RoutingTable::new(4, NodeId(1)).unwrap();
        assert!(!table.assign_vshard(VShardId(0), GroupId(1)).unwrap());
        assert_eq!(table.routing_version(), 1);
        assert!(table.assign_vshard(VShardId(0), GroupId(2)).unwrap());
        assert_eq!(table.routing_version(), 2);
        assert_eq!(table.group_of(VShardId(0)), GroupId(2));
        assert_eq!(
            table.assign_vshard(VShardId(0), METADATA_GROUP),
            Err(RoutingError::NotADataGroup {
                group: METADATA_GROUP
            })
        );
        assert_eq!(
            table.assign_vshard(VShardId(0), GroupId(5)),
            Err(RoutingError::UnknownGroup { group: GroupId(5) })
        );
        assert!(table.set_leader_hint(GroupId(1), Some(NodeId(1))).unwrap());
        assert!(!table.set_leader_hint(GroupId(1), Some(NodeId(1))).unwrap());
        assert_eq!(table.routing_version(), 3);
    }

    #[test]
    fn set_members_refuses_two_replicas_on_one_node_and_keeps_state() {
        let mut table = RoutingTable::new(2, NodeId(1)).unwrap();
        let before = table.clone();
        let refused = table.set_members(
            GroupId(1),
            BTreeSet::from([NodeId(1), NodeId(2)]),
            BTreeSet::from([NodeId(2)]),
        );
        assert_eq!(
            refused,
            Err(RoutingError::DuplicateReplica {
                group: GroupId(1),
                node: NodeId(2)
            })
        );
        assert_eq!(
            table.set_members(GroupId(1), BTreeSet::new(), BTreeSet::new()),
            Err(RoutingError::NoVoters { group: GroupId(1) })
        );
        assert_eq!(table, before);
    }

    #[test]
    fn leader_hint_dropped_when_leader_leaves() {
        let mut table = RoutingTable::new(1, NodeId(1)).unwrap();
        table
            .set_members(
                GroupId(1),
                BTreeSet::from([NodeId(1), NodeId(2)]),
                BTreeSet::new(),
            )
            .unwrap();
        table.set_leader_hint(GroupId(1), Some(NodeId(1))).unwrap();
        table
            .set_members(GroupId(1), BTreeSet::from([NodeId(2)]), BTreeSet::new())
            .unwrap();
        assert_eq!(table.members(GroupId(1)).unwrap().leader_hint, None);
    }

    #[test]
    fn decoding_refuses_a_broken_table() {
        let table = RoutingTable::new(2, NodeId(1)).unwrap();
        let mut bytes = postcard::to_allocvec(&table).unwrap();
        let decoded: RoutingTable = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, table);
        // The vShard vector length follows the version varint (1 byte); shrink it.
        bytes[1] = 0x05;
        assert!(postcard::from_bytes::<RoutingTable>(&bytes).is_err());
    }
}
