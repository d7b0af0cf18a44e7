//! vShard migrations as recorded in the metadata group: their ids, their phases and the only
//! phase transitions allowed (forward one step at a time, or abort before the routing switch).

use crate::ids::{GroupId, VShardId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies a migration; assigned by the metadata state in commit order from 1, never reused.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct MigrationId(pub u64);

/// Where a migration stands. Order of the happy path:
/// `Planned -> Copying -> Fenced -> Switched -> Cleaned`; `Aborted` is reachable from
/// `Planned`, `Copying` and `Fenced` only. Append-only enum: it is persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationPhase {
    /// Recorded; nothing moved yet.
    Planned,
    /// The target group is importing the vShard's data from the source.
    Copying,
    /// Writes to the vShard in the source group are refused from `fence_index` (a log index
    /// of the source group) on; the target catches up to it.
    Fenced { fence_index: u64 },
    /// Routing points at the target group (`routing_version` bumped); source cleanup pending.
    Switched,
    /// The source group dropped its copy. Final.
    Cleaned,
    /// Given up before the switch; routing unchanged. Final.
    Aborted,
}

/// One migration of one vShard from one data group to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub id: MigrationId,
    pub vshard: VShardId,
    pub from: GroupId,
    pub to: GroupId,
    pub phase: MigrationPhase,
}

impl MigrationPhase {
    /// Cleaned and Aborted: nothing more happens to this migration.
    pub fn is_final(self) -> bool {
        matches!(self, MigrationPhase::Cleaned | MigrationPhase::Aborted)
    }

    /// Whether routing already points at the target group.
    pub fn is_switched(self) -> bool {
        matches!(self, MigrationPhase::Switched | MigrationPhase::Cleaned)
    }

    /// Whether `AdvanceMigration` may move a migration from `self` to `to`. The switch and
    /// the abort have their own commands, so they are not advances.
    pub fn can_advance_to(self, to: MigrationPhase) -> bool {
        use MigrationPhase::*;
        matches!(
            (self, to),
            (Planned, Copying) | (Copying, Fenced { .. }) | (Switched, Cleaned)
        )
    }

    /// Whether `AbortMigration` may stop a migration in this phase.
    pub fn can_abort(self) -> bool {
        use MigrationPhase::*;
        matches!(self, Planned | Copying | Fenced { .. })
    }
}

impl Migration {
    /// Still holds its vShard: no other migration of the same vShard may begin.
    pub fn is_active(&self) -> bool {
        !self.phase.is_final()
    }
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "migration-{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::MigrationPhase::*;

    #[test]
    fn phases_only_move_forward_one_step() {
        let fenced = Fenced { fence_index: 7 };
        let all = [Planned, Copying, fenced, Switched, Cleaned, Aborted];
        let allowed = [(Planned, Copying), (Copying, fenced), (Switched, Cleaned)];
        for from in all {
            for to in all {
                assert_eq!(
                    from.can_advance_to(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
        assert!(Planned.can_abort() && Copying.can_abort() && fenced.can_abort());
        assert!(!Switched.can_abort() && !Cleaned.can_abort() && !Aborted.can_abort());
    }
}
