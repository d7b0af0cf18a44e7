//! What a group replica may do with each vShard, as migrations change it. Every migration
//! step names its migration id, and a step is applied only when the vShard's claim allows it,
//! so a step sent late (by a metadata leader that lost its leadership, or after a retry) can
//! never undo a later one: a group that serves a vShard it adopted in migration `m` refuses
//! every step of `m` or earlier that would overwrite, fence or drop it.
//!
//! A vShard without a recorded claim is `Serving(0)`: every group serves every vShard until a
//! migration says otherwise; the routing decides which group is asked.

use crate::state_machine::VShardDigest;
use nodedb_cluster_core::{GroupId, MigrationId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One copy of a vShard into a migration's target. Two copies of one migration never mix: the
/// parts and the adoption of a copy are accepted only while the target holds that very copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyId {
    /// The source's fence index when the copy was exported after the fence (its data is then
    /// final); 0 for a copy made before the fence, which may never be adopted.
    pub fence_index: u64,
    /// Drawn by the driver for each attempt.
    pub nonce: u64,
}

/// A group's standing on one vShard, and the migration that set it. Persisted in snapshots
/// (postcard): variants are appended only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VShardClaim {
    /// Commands and reads of the vShard are served.
    Serving(MigrationId),
    /// The target of the migration: copy `CopyId` is coming in; commands and reads are refused.
    Importing(MigrationId, CopyId),
    /// The source of the migration (or a given-up target): commands and reads are refused.
    Fenced(MigrationId),
    /// Commands and reads are served, as under `Serving`; the vShard's data was handed over
    /// by the source's replica on each node (`VShardStep::Handover`), so until a snapshot
    /// covers that step, replaying this group's log needs the source to still hold the
    /// vShard: the source drops it only after every replica of this group has a snapshot
    /// past the step and has purged its log through it.
    Handed(MigrationId),
}

/// One migration step on one group. Persisted in log entries (postcard): variants are
/// appended only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VShardStep {
    /// Target: start copy `CopyId`: replace the vShard's data with the entry's payload (the
    /// first part of an export).
    Import(CopyId),
    /// Target: start serving the vShard, once every part of copy `CopyId` is in; only a copy
    /// made after the fence may be adopted.
    Adopt(CopyId),
    /// Source: stop serving the vShard from this entry's log index on.
    Fence,
    /// Source, after the routing switched: delete the vShard's data.
    Drop,
    /// Source of a given-up migration: serve the vShard again.
    Release,
    /// Target of a given-up migration: delete the partial copy.
    Discard,
    /// Target: add one more part of copy `CopyId` (refused unless that copy is coming in).
    ImportMore(CopyId),
    /// Target: replay, on copy `from`, the vShard's commands that the source applied after
    /// the copy was exported (the payload, see `encode_replayed_commands`); the result is copy
    /// `to`. Refused unless the target holds copy `from`, so each batch of commands is
    /// replayed exactly once and in order. The last batch before the fence yields a copy with
    /// `to.fence_index` set, which may then be adopted.
    ImportChanges { from: CopyId, to: CopyId },
    /// Target, after the source `from` fenced the vShard at `fence_index`: take the vShard's
    /// data from the source's replica on the same node (or, failing that, from any replica of
    /// the source), check it against `digest` (the source's at the fence), and serve it. No
    /// data travels in the log.
    Handover {
        from: GroupId,
        fence_index: u64,
        digest: VShardDigest,
    },
}

/// What a step does to the data besides changing the claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataChange {
    None,
    Replace,
    Add,
    Delete,
    /// Replay the payload's commands on the vShard.
    Replay,
    /// Replace the vShard's data with the source's (see [`VShardStep::Handover`]).
    Handover,
}

impl VShardClaim {
    pub const UNCLAIMED: VShardClaim = VShardClaim::Serving(MigrationId(0));

    pub fn migration(self) -> MigrationId {
        match self {
            VShardClaim::Serving(id)
            | VShardClaim::Importing(id, _)
            | VShardClaim::Fenced(id)
            | VShardClaim::Handed(id) => id,
        }
    }

    pub fn serves(self) -> bool {
        matches!(self, VShardClaim::Serving(_) | VShardClaim::Handed(_))
    }

    /// Whether the vShard was adopted by `migration`'s target, whichever way its data came.
    pub fn adopted_in(self, migration: MigrationId) -> bool {
        self == VShardClaim::Serving(migration) || self == VShardClaim::Handed(migration)
    }
}

impl VShardStep {
    /// The claim after this step of `migration` on `current`, and its data change; `None`
    /// when the step is refused because `current` says a later step already happened.
    pub fn apply(
        self,
        current: VShardClaim,
        migration: MigrationId,
    ) -> Option<(VShardClaim, DataChange)> {
        use VShardClaim::{Fenced, Importing, Serving};
        let adopted = current.adopted_in(migration);
        let older = current.migration() < migration;
        let importing = matches!(current, Importing(id, _) if id == migration);
        let (next, change) = match self {
            VShardStep::Import(copy) if older || importing => {
                (Importing(migration, copy), DataChange::Replace)
            }
            VShardStep::ImportMore(copy) if current == Importing(migration, copy) => {
                (Importing(migration, copy), DataChange::Add)
            }
            VShardStep::ImportChanges { from, to }
                if current == Importing(migration, from) && from != to =>
            {
                (Importing(migration, to), DataChange::Replay)
            }
            VShardStep::Adopt(copy)
                if current == Importing(migration, copy) && copy.fence_index > 0 =>
            {
                (Serving(migration), DataChange::None)
            }
            VShardStep::Adopt(_) | VShardStep::Handover { .. } if adopted => {
                (current, DataChange::None)
            }
            VShardStep::Handover { .. } if older || importing => {
                (VShardClaim::Handed(migration), DataChange::Handover)
            }
            VShardStep::Fence if (older && current.serves()) || current == Fenced(migration) => {
                (Fenced(migration), DataChange::None)
            }
            VShardStep::Drop if current == Fenced(migration) => {
                (Fenced(migration), DataChange::Delete)
            }
            VShardStep::Release
                if (current.serves() && current.migration() <= migration)
                    || current == Fenced(migration) =>
            {
                (Serving(migration), DataChange::None)
            }
            VShardStep::Discard if current.migration() <= migration && !adopted => {
                (Fenced(migration), DataChange::Delete)
            }
            _ => return None,
        };
        Some((next, change))
    }
}

impl fmt::Display for VShardClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VShardClaim::Serving(id) => write!(f, "serving since {id}"),
            VShardClaim::Importing(id, copy) => write!(
                f,
                "importing in {id} (copy {} after fence index {})",
                copy.nonce, copy.fence_index
            ),
            VShardClaim::Fenced(id) => write!(f, "fenced by {id}"),
            VShardClaim::Handed(id) => write!(f, "serving since {id} (handed over)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VShardClaim::{Fenced, Handed, Importing, Serving};

    const M1: MigrationId = MigrationId(1);
    const M2: MigrationId = MigrationId(2);
    const EARLY: CopyId = CopyId {
        fence_index: 0,
        nonce: 1,
    };
    const FINAL: CopyId = CopyId {
        fence_index: 40,
        nonce: 2,
    };
    const OTHER_FINAL: CopyId = CopyId {
        fence_index: 40,
        nonce: 3,
    };

    fn run(mut claim: VShardClaim, steps: &[(VShardStep, MigrationId)]) -> Vec<bool> {
        steps
            .iter()
            .map(|(step, migration)| match step.apply(claim, *migration) {
                Some((next, _)) => {
                    claim = next;
                    true
                }
                None => false,
            })
            .collect()
    }

    #[test]
    fn a_move_and_a_move_back() {
        use VShardStep::*;
        // Source and target of migration 1, then the reverse in migration 2.
        let source = run(
            VShardClaim::UNCLAIMED,
            &[
                (Fence, M1),
                (Fence, M1),
                (Drop, M1),
                (Import(FINAL), M2),
                (ImportMore(FINAL), M2),
                (Adopt(FINAL), M2),
            ],
        );
        assert!(source.iter().all(|applied| *applied));
        let target = run(
            VShardClaim::UNCLAIMED,
            &[
                (Import(EARLY), M1),
                (ImportMore(EARLY), M1),
                (Import(FINAL), M1),
                (ImportMore(FINAL), M1),
                (Adopt(FINAL), M1),
                (Adopt(FINAL), M1),
                (Fence, M2),
                (Drop, M2),
            ],
        );
        assert!(target.iter().all(|applied| *applied));
    }

    #[test]
    fn late_steps_never_undo_later_ones() {
        use VShardStep::*;
        // A late import of the same migration after the target adopted the vShard.
        assert_eq!(Import(FINAL).apply(Serving(M1), M1), None);
        assert_eq!(ImportMore(FINAL).apply(Serving(M1), M1), None);
        // A part of the copy before the fence after the final copy began.
        assert_eq!(ImportMore(EARLY).apply(Importing(M1, FINAL), M1), None);
        // Parts and adoption of another attempt at the final copy.
        assert_eq!(
            ImportMore(OTHER_FINAL).apply(Importing(M1, FINAL), M1),
            None
        );
        assert_eq!(Adopt(OTHER_FINAL).apply(Importing(M1, FINAL), M1), None);
        // A copy made before the fence is never adopted.
        assert_eq!(Adopt(EARLY).apply(Importing(M1, EARLY), M1), None);
        // A late fence or drop of migration 1 after the source re-adopted it in migration 2.
        assert_eq!(Fence.apply(Serving(M2), M1), None);
        assert_eq!(Drop.apply(Importing(M2, FINAL), M1), None);
        assert_eq!(Drop.apply(Serving(M2), M1), None);
        // A late fence of a given-up migration after its release.
        assert_eq!(Fence.apply(Serving(M1), M1), None);
        // A late import of a given-up migration after its discard.
        assert_eq!(Import(EARLY).apply(Fenced(M1), M1), None);
        // Release and discard of migration 1 after migration 2 touched the vShard.
        assert_eq!(Release.apply(Fenced(M2), M1), None);
        assert_eq!(Discard.apply(Importing(M2, EARLY), M1), None);
        // A target that adopted the vShard is never discarded by its own migration.
        assert_eq!(Discard.apply(Serving(M1), M1), None);
    }

    #[test]
    fn changes_turn_an_early_copy_into_a_final_one_exactly_once() {
        use VShardStep::*;
        const MIDDLE: CopyId = CopyId {
            fence_index: 0,
            nonce: 4,
        };
        let first = ImportChanges {
            from: EARLY,
            to: MIDDLE,
        };
        let last = ImportChanges {
            from: MIDDLE,
            to: FINAL,
        };
        let target = run(
            VShardClaim::UNCLAIMED,
            &[
                (Import(EARLY), M1),
                (first, M1),
                (first, M1),
                (last, M1),
                (Adopt(MIDDLE), M1),
                (Adopt(FINAL), M1),
                (last, M1),
            ],
        );
        // A repeated batch, the adoption of a copy before the fence, and a batch after the
        // adoption are refused.
        assert_eq!(target, vec![true, true, false, true, false, true, false]);
        assert_eq!(
            first.apply(Importing(M1, EARLY), M1).unwrap().1,
            DataChange::Replay
        );
        // Changes of another attempt's copy, or onto itself, never apply.
        assert_eq!(first.apply(Importing(M1, OTHER_FINAL), M1), None);
        let onto_itself = ImportChanges {
            from: EARLY,
            to: EARLY,
        };
        assert_eq!(onto_itself.apply(Importing(M1, EARLY), M1), None);
    }

    const HANDOVER: VShardStep = VShardStep::Handover {
        from: GroupId(2),
        fence_index: 40,
        digest: VShardDigest {
            bytes: 7,
            entries: 3,
            hash: 9,
        },
    };

    #[test]
    fn a_handover_is_taken_once_and_then_held_like_an_adoption() {
        use VShardStep::*;
        // Onto an untouched vShard, or over a copy that came in part-way.
        for before in [VShardClaim::UNCLAIMED, Importing(M1, EARLY)] {
            assert_eq!(
                HANDOVER.apply(before, M1),
                Some((Handed(M1), DataChange::Handover))
            );
        }
        // Taken again, or after another driver adopted a copy: nothing changes.
        assert_eq!(
            HANDOVER.apply(Handed(M1), M1),
            Some((Handed(M1), DataChange::None))
        );
        assert_eq!(
            HANDOVER.apply(Serving(M1), M1),
            Some((Serving(M1), DataChange::None))
        );
        assert_eq!(
            Adopt(FINAL).apply(Handed(M1), M1),
            Some((Handed(M1), DataChange::None))
        );
        // A handed-over vShard is never overwritten or discarded by its own migration.
        assert_eq!(Import(FINAL).apply(Handed(M1), M1), None);
        assert_eq!(Discard.apply(Handed(M1), M1), None);
        // A given-up target, or a late handover after the vShard moved on, refuses it.
        assert_eq!(HANDOVER.apply(Fenced(M1), M1), None);
        assert_eq!(HANDOVER.apply(Fenced(M2), M1), None);
        assert_eq!(HANDOVER.apply(Serving(M2), M1), None);
        // It serves, and moves on like any served vShard.
        assert!(Handed(M1).serves());
        assert_eq!(
            Fence.apply(Handed(M1), M2),
            Some((Fenced(M2), DataChange::None))
        );
    }

    #[test]
    fn handovers_encode_as_documented() {
        // docs/design.md, "Log records kept in the Raft log file" and "vShard claims".
        assert_eq!(
            postcard::to_stdvec(&HANDOVER).unwrap(),
            [0x08, 0x02, 0x28, 0x07, 0x03, 0x09]
        );
        let documented = VShardStep::Handover {
            from: GroupId(2),
            fence_index: 300,
            digest: VShardDigest {
                bytes: 7,
                entries: 3,
                hash: 9,
            },
        };
        assert_eq!(
            postcard::to_stdvec(&documented).unwrap(),
            [0x08, 0x02, 0xac, 0x02, 0x07, 0x03, 0x09]
        );
        assert_eq!(postcard::to_stdvec(&Handed(M2)).unwrap(), [0x03, 0x02]);
    }

    #[test]
    fn only_serving_claims_serve() {
        assert!(VShardClaim::UNCLAIMED.serves());
        assert!(!Importing(M1, EARLY).serves());
        assert!(!Fenced(M1).serves());
    }

    #[test]
    fn data_changes() {
        use VShardStep::*;
        let unclaimed = VShardClaim::UNCLAIMED;
        assert_eq!(
            Import(EARLY).apply(unclaimed, M1).unwrap().1,
            DataChange::Replace
        );
        assert_eq!(
            ImportMore(EARLY).apply(Importing(M1, EARLY), M1).unwrap().1,
            DataChange::Add
        );
        assert_eq!(Drop.apply(Fenced(M1), M1).unwrap().1, DataChange::Delete);
        assert_eq!(
            Discard.apply(Importing(M1, EARLY), M1).unwrap().1,
            DataChange::Delete
        );
        assert_eq!(Fence.apply(Serving(M1), M2).unwrap().1, DataChange::None);
    }
}
