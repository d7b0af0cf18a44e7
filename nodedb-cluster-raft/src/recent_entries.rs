//! The entries a replica appended and has not applied yet, kept in memory as they were handed
//! to the log. openraft reads every entry back from the log twice soon after appending it: the
//! leader to replicate it, every replica to apply it. Read from the file, each read copied the
//! entry out of redb (or out of the writer's queue), verified its checksum and decoded it; for
//! a vShard copy, whose entries are about 1 MiB each, that was a fifth of the nodes' memory
//! copying. Served from here, a read clones the entries, whose payloads are shared.
//!
//! What is kept always equals the stored log over a contiguous range of indexes ending at its
//! last entry: appends extend it, truncates and purges cut it before they reach the file, and a
//! read that this range does not cover goes to the file. Entries leave once read for apply (the
//! last read a replica makes of an entry it appended, unless a follower lags) or when more than
//! [`RECENT_BYTES_MAX`] bytes are kept.

use std::collections::VecDeque;

use openraft::EntryPayload;

use crate::types::Entry;

/// Bytes of entries one replica keeps at most (payloads, and a fixed estimate per entry).
pub(crate) const RECENT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What an entry is counted for besides its payload.
const ENTRY_OVERHEAD_BYTES: usize = 64;

#[derive(Default)]
pub(crate) struct RecentEntries {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl RecentEntries {
    /// `entries` were appended to the log (contiguous, ascending). Entries that do not follow
    /// the last one kept replace what is kept.
    pub(crate) fn appended(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        if self
            .last_index()
            .is_some_and(|last| last.checked_add(1) != Some(first.log_id.index))
        {
            self.entries.clear();
            self.bytes = 0;
        }
        for entry in entries {
            self.bytes += entry_bytes(entry);
            self.entries.push_back(entry.clone());
        }
        while self.bytes > RECENT_BYTES_MAX {
            self.pop_front();
        }
    }

    /// Entries from `index` on are about to be removed from the log.
    pub(crate) fn truncating(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|entry| entry.log_id.index >= index)
        {
            let entry = self.entries.pop_back();
            self.bytes -= entry.as_ref().map_or(0, entry_bytes);
        }
    }

    /// Entries through `index` are about to be purged from the log, or were read for apply.
    pub(crate) fn forget_through(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|entry| entry.log_id.index <= index)
        {
            self.pop_front();
        }
    }

    /// The entries `start..end` when every one of them is kept.
    pub(crate) fn range(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        if start >= end {
            return None;
        }
        let from = self.position(start)?;
        let to = self.position(end - 1)? + 1;
        Some(self.entries.range(from..to).cloned().collect())
    }

    /// The entries from `start` on, before `end`, up to the one that brings their payloads to
    /// `bytes_max` (at least one), when the entry at `start` is kept.
    pub(crate) fn up_to(&self, start: u64, end: u64, bytes_max: usize) -> Option<Vec<Entry>> {
        if start >= end {
            return None;
        }
        let from = self.position(start)?;
        let mut bytes = 0;
        let mut out = Vec::new();
        for entry in self.entries.range(from..) {
            if entry.log_id.index >= end || (!out.is_empty() && bytes >= bytes_max) {
                break;
            }
            bytes += payload_bytes(entry);
            out.push(entry.clone());
        }
        Some(out)
    }

    /// Where the entry at `index` is kept, if it is.
    fn position(&self, index: u64) -> Option<usize> {
        let first = self.entries.front()?.log_id.index;
        let position = usize::try_from(index.checked_sub(first)?).ok()?;
        (position < self.entries.len()).then_some(position)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|entry| entry.log_id.index)
    }

    fn pop_front(&mut self) {
        let entry = self.entries.pop_front();
        self.bytes -= entry.as_ref().map_or(0, entry_bytes);
    }
}

fn payload_bytes(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(request) => request.payload.len(),
        EntryPayload::Blank | EntryPayload::Membership(_) => 0,
    }
}

fn entry_bytes(entry: &Entry) -> usize {
    payload_bytes(entry) + ENTRY_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AppRequest, EntryKind, LogId};
    use openraft::entry::RaftEntry;
    use openraft::impls::leader_id_adv::LeaderId;

    fn entry(index: u64, len: usize) -> Entry {
        let leader = LeaderId {
            term: 1,
            node_id: 1,
        };
        Entry::new_normal(
            LogId::new(leader, index),
            AppRequest {
                kind: EntryKind::Command,
                payload: vec![index as u8; len].into(),
            },
        )
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let mut recent = RecentEntries::default();
        recent.appended(&(5..10).map(|i| entry(i, 10)).collect::<Vec<_>>());
        assert_eq!(indexes(recent.range(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(recent.range(7, 9)), Some(vec![7, 8]));
        assert_eq!(recent.range(4, 6), None);
        assert_eq!(recent.range(8, 11), None);
        assert_eq!(recent.range(7, 7), None);
        assert_eq!(indexes(recent.up_to(8, 100, 1 << 20)), Some(vec![8, 9]));
        assert_eq!(indexes(recent.up_to(6, 100, 15)), Some(vec![6, 7]));
        assert_eq!(indexes(recent.up_to(6, 100, 0)), Some(vec![6]));
        assert_eq!(recent.up_to(4, 100, 1 << 20), None);
        assert_eq!(recent.up_to(10, 100, 1 << 20), None);
    }

    #[test]
    fn follows_truncates_purges_and_gaps() {
        let mut recent = RecentEntries::default();
        recent.appended(&(1..6).map(|i| entry(i, 10)).collect::<Vec<_>>());
        recent.truncating(4);
        assert_eq!(recent.range(3, 5), None);
        assert_eq!(indexes(recent.range(1, 4)), Some(vec![1, 2, 3]));
        recent.appended(&[entry(4, 20)]);
        assert_eq!(recent.range(4, 5).map(|e| e[0].clone()), Some(entry(4, 20)));
        recent.forget_through(2);
        assert_eq!(recent.range(2, 4), None);
        assert_eq!(indexes(recent.range(3, 5)), Some(vec![3, 4]));
        recent.appended(&[entry(9, 10)]);
        assert_eq!(recent.range(3, 5), None);
        assert_eq!(indexes(recent.range(9, 10)), Some(vec![9]));
        recent.forget_through(9);
        assert_eq!(recent.range(9, 10), None);
        assert_eq!((recent.entries.len(), recent.bytes), (0, 0));
    }

    #[test]
    fn keeps_at_most_its_bytes() {
        let mut recent = RecentEntries::default();
        let part = 1024 * 1024;
        recent.appended(&(1..=40).map(|i| entry(i, part)).collect::<Vec<_>>());
        assert!(recent.bytes <= RECENT_BYTES_MAX);
        let kept = recent.entries.len() as u64;
        assert!((10..40).contains(&kept), "{kept}");
        assert_eq!(recent.range(40 - kept, 41), None);
        assert!(recent.range(41 - kept, 41).is_some());
    }
}
