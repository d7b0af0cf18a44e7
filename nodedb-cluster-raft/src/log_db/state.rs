//! In-memory view of every group's log as of the last *queued* operation: the bounds that
//! `first_index`/`last_index` answer from, and the operations queued or in flight that reads
//! replay over a committed redb snapshot. Pure: no IO, so its rules are unit-tested directly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use super::MetaKey;

/// One write operation on one group, shared by the queue (the writer applies it) and the
/// group's overlay (reads replay it until it is committed).
#[derive(Debug)]
pub(crate) enum Op {
    Append {
        entries: Vec<(u64, Vec<u8>)>,
    },
    TruncateFrom {
        index: u64,
    },
    PurgeThrough {
        index: u64,
    },
    PutMeta {
        key: MetaKey,
        value: Vec<u8>,
    },
    /// Everything of the group goes but the `kept` values (keys that are
    /// [`MetaKey::kept_on_removal`]).
    RemoveGroup {
        kept: Vec<(MetaKey, Vec<u8>)>,
    },
    /// Changes nothing: queued so that its completion says everything queued before is durable.
    Sync,
}

impl Op {
    /// Payload bytes, for the batch byte bound.
    pub(crate) fn payload_bytes(&self) -> u64 {
        match self {
            Op::Append { entries } => entries.iter().map(|(_, p)| p.len() as u64 + 16).sum(),
            Op::PutMeta { value, .. } => value.len() as u64 + 16,
            _ => 16,
        }
    }
}

/// A group's log bounds and meta keys after every queued operation, plus the operations not yet
/// committed, oldest first.
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// Index the next append must start at; `None` when anything goes (a fresh group).
    pub next_expected: Option<u64>,
    pub purged_through: Option<u64>,
    pub meta_tags: BTreeSet<u8>,
    pub pending: VecDeque<Arc<Op>>,
}

impl GroupState {
    /// State of a group found on disk at open.
    pub(crate) fn loaded(
        bounds: Option<(u64, u64)>,
        purged_through: Option<u64>,
        meta_tags: BTreeSet<u8>,
    ) -> GroupState {
        let next_expected = match (bounds, purged_through) {
            (Some((_, last)), _) => last.checked_add(1),
            (None, Some(purged)) => purged.checked_add(1),
            (None, None) => None,
        };
        GroupState {
            first: bounds.map(|(first, _)| first),
            last: bounds.map(|(_, last)| last),
            next_expected,
            purged_through,
            meta_tags,
            pending: VecDeque::new(),
        }
    }

    /// Whether the group has any entry, meta value or purge mark (what `groups()` lists); the
    /// vote kept from a removed replica alone does not count.
    pub(crate) fn is_listed(&self) -> bool {
        let kept = |tag: u8| MetaKey::from_tag(tag).is_some_and(MetaKey::kept_on_removal);
        self.first.is_some()
            || self.meta_tags.iter().any(|tag| !kept(*tag))
            || self.purged_through.is_some()
    }

    /// Whether the entry can be dropped from the map without losing anything.
    pub(crate) fn is_vacant(&self) -> bool {
        !self.is_listed() && self.pending.is_empty() && self.next_expected.is_none()
    }

    /// Describes why `entries` cannot be appended (a gap, an overlap, or non-consecutive
    /// indexes), or `None` when they can.
    pub(crate) fn append_violation(&self, entries: &[(u64, Vec<u8>)]) -> Option<String> {
        let &(start, _) = entries.first()?;
        if let Some(expected) = self.next_expected
            && start != expected
        {
            return Some(format!(
                "append must start at index {expected} (last {:?}, first {:?}, purged through \
                 {:?}) but starts at {start}",
                self.last, self.first, self.purged_through
            ));
        }
        for (position, pair) in entries.windows(2).enumerate() {
            if pair[0].0.checked_add(1) != Some(pair[1].0) {
                return Some(format!(
                    "append entries are not consecutive: index {} at position {position} is \
                     followed by index {}",
                    pair[0].0, pair[1].0
                ));
            }
        }
        None
    }

    /// Updates bounds and meta keys for `op`, in queue order. Does not touch `pending`.
    pub(crate) fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { entries } => {
                if let (Some(&(start, _)), Some(&(end, _))) = (entries.first(), entries.last()) {
                    self.first = Some(self.first.unwrap_or(start));
                    self.last = Some(end);
                    self.next_expected = end.checked_add(1);
                }
            }
            Op::TruncateFrom { index } => {
                if let (Some(first), Some(last)) = (self.first, self.last)
                    && *index <= last
                {
                    if *index <= first {
                        self.first = None;
                        self.last = None;
                    } else {
                        self.last = Some(index - 1);
                    }
                }
                self.next_expected = Some(self.next_expected.map_or(*index, |n| n.min(*index)));
            }
            Op::PurgeThrough { index } => {
                if let (Some(first), Some(last)) = (self.first, self.last)
                    && first <= *index
                {
                    if *index >= last {
                        self.first = None;
                        self.last = None;
                    } else {
                        self.first = Some(index + 1);
                    }
                }
                let after = index.saturating_add(1);
                self.next_expected = Some(self.next_expected.map_or(after, |n| n.max(after)));
                self.purged_through = Some(self.purged_through.map_or(*index, |p| p.max(*index)));
            }
            Op::PutMeta { key, .. } => {
                self.meta_tags.insert(key.tag());
            }
            Op::RemoveGroup { kept } => {
                self.first = None;
                self.last = None;
                self.next_expected = None;
                self.purged_through = None;
                self.meta_tags.clear();
                self.meta_tags.extend(kept.iter().map(|(key, _)| key.tag()));
            }
            Op::Sync => {}
        }
    }

    /// When the pending operations alone determine every entry in `range` (only appends are
    /// pending and the range starts at or after the first of them), returns those entries;
    /// committed data cannot hold anything there. Otherwise `None`: read a snapshot and replay.
    pub(crate) fn entries_from_overlay(&self, range: &Range<u64>) -> Option<Vec<(u64, Vec<u8>)>> {
        let mut start = None;
        for op in &self.pending {
            match op.as_ref() {
                Op::Append { entries } => {
                    if start.is_none() {
                        start = entries.first().map(|(index, _)| *index);
                    }
                }
                Op::PutMeta { .. } | Op::Sync => {}
                _ => return None,
            }
        }
        if range.start < start? {
            return None;
        }
        let mut out = Vec::new();
        for op in &self.pending {
            if let Op::Append { entries } = op.as_ref() {
                out.extend(
                    entries
                        .iter()
                        .filter(|(index, _)| range.contains(index))
                        .cloned(),
                );
            }
        }
        Some(out)
    }
}

/// Replays pending `ops` over `committed` entries (already restricted to `range`). Correct even
/// when the snapshot already contains some of the ops: every op sets or deletes keys outright, so
/// replaying a sequence whose prefix is already applied yields the same end state.
pub(crate) fn replay_entries(
    committed: &mut BTreeMap<u64, Vec<u8>>,
    ops: &[Arc<Op>],
    range: &Range<u64>,
) {
    for op in ops {
        match op.as_ref() {
            Op::Append { entries } => {
                for (index, payload) in entries {
                    if range.contains(index) {
                        committed.insert(*index, payload.clone());
                    }
                }
            }
            Op::TruncateFrom { index } => {
                committed.split_off(index);
            }
            Op::PurgeThrough { index } => {
                committed.retain(|present, _| present > index);
            }
            Op::RemoveGroup { .. } => committed.clear(),
            Op::PutMeta { .. } | Op::Sync => {}
        }
    }
}

/// Whether a write of meta `key` is pending (queued or being committed).
pub(crate) fn meta_write_pending(pending: &VecDeque<Arc<Op>>, key: MetaKey) -> bool {
    pending
        .iter()
        .any(|op| matches!(op.as_ref(), Op::PutMeta { key: k, .. } if *k == key))
}

/// The newest pending decision about meta `key`: `Some(Some(v))` set, `Some(None)` removed with
/// the group, `None` nothing pending (read the committed value).
pub(crate) fn pending_meta(pending: &VecDeque<Arc<Op>>, key: MetaKey) -> Option<Option<Vec<u8>>> {
    for op in pending.iter().rev() {
        match op.as_ref() {
            Op::PutMeta { key: k, value } if *k == key => return Some(Some(value.clone())),
            Op::RemoveGroup { kept } => {
                let value = kept.iter().find(|(k, _)| *k == key);
                return Some(value.map(|(_, value)| value.clone()));
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(range: Range<u64>) -> Op {
        Op::Append {
            entries: range.map(|i| (i, vec![i as u8])).collect(),
        }
    }

    #[test]
    fn bounds_follow_append_truncate_purge() {
        let mut state = GroupState::default();
        state.apply(&append(1..6));
        assert_eq!(
            (state.first, state.last, state.next_expected),
            (Some(1), Some(5), Some(6))
        );
        state.apply(&Op::TruncateFrom { index: 4 });
        assert_eq!(
            (state.first, state.last, state.next_expected),
            (Some(1), Some(3), Some(4))
        );
        state.apply(&Op::PurgeThrough { index: 2 });
        assert_eq!(
            (state.first, state.last, state.purged_through),
            (Some(3), Some(3), Some(2))
        );
        state.apply(&Op::PurgeThrough { index: 9 });
        assert_eq!(
            (state.first, state.last, state.next_expected),
            (None, None, Some(10))
        );
        assert!(state.append_violation(&[(9, vec![])]).is_some());
        assert!(state.append_violation(&[(10, vec![])]).is_none());
        state.apply(&Op::RemoveGroup { kept: Vec::new() });
        assert!(state.is_vacant());
        state.apply(&Op::PutMeta {
            key: MetaKey::Vote,
            value: vec![1],
        });
        state.apply(&Op::RemoveGroup {
            kept: vec![
                (MetaKey::RemovedVote, vec![1]),
                (MetaKey::RemovedLastIndex, 9u64.to_le_bytes().to_vec()),
            ],
        });
        assert!(
            !state.is_listed(),
            "values kept from a removed replica alone are not a stored group"
        );
    }

    #[test]
    fn truncate_beyond_last_keeps_expectation() {
        let mut state = GroupState::default();
        state.apply(&append(1..4));
        state.apply(&Op::TruncateFrom { index: 10 });
        assert_eq!((state.last, state.next_expected), (Some(3), Some(4)));
        state.apply(&Op::TruncateFrom { index: 1 });
        assert_eq!(
            (state.first, state.last, state.next_expected),
            (None, None, Some(1))
        );
    }

    #[test]
    fn non_consecutive_append_is_a_violation() {
        let state = GroupState::default();
        assert!(
            state
                .append_violation(&[(1, vec![]), (3, vec![])])
                .is_some()
        );
        assert!(
            state
                .append_violation(&[(7, vec![]), (8, vec![])])
                .is_none()
        );
    }

    #[test]
    fn replay_is_idempotent_over_applied_prefix() {
        let ops: Vec<Arc<Op>> = vec![
            Arc::new(append(1..5)),
            Arc::new(Op::TruncateFrom { index: 3 }),
            Arc::new(append(3..7)),
        ];
        let range = 0..100;
        let mut from_empty = BTreeMap::new();
        replay_entries(&mut from_empty, &ops, &range);
        for applied in 0..=ops.len() {
            let mut snapshot = BTreeMap::new();
            replay_entries(&mut snapshot, &ops[..applied], &range);
            replay_entries(&mut snapshot, &ops, &range);
            assert_eq!(snapshot, from_empty, "prefix {applied}");
        }
        assert_eq!(
            from_empty.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn overlay_answers_only_when_it_decides_the_range() {
        let mut state = GroupState::default();
        state.pending.push_back(Arc::new(append(5..8)));
        assert_eq!(
            state.entries_from_overlay(&(5..7)).map(|e| e.len()),
            Some(2)
        );
        assert_eq!(state.entries_from_overlay(&(4..7)), None);
        state
            .pending
            .push_back(Arc::new(Op::TruncateFrom { index: 6 }));
        assert_eq!(state.entries_from_overlay(&(5..7)), None);
    }
}
