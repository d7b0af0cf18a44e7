//! Property test of the Raft log file against a `BTreeMap` model: random appends (waited on or
//! only queued), truncates, purges, meta writes (durable or lazy), group removals and reopens
//! over a few groups; after every step every read of the file must equal the model.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use nodedb_cluster_core::GroupId;
use nodedb_cluster_raft::log_db::{LogDb, LogDbOptions, MetaKey};
use proptest::prelude::*;

const GROUPS: u32 = 3;
const KEYS: [MetaKey; 2] = [MetaKey::Vote, MetaKey::Committed];
/// Entry lengths around where the file stores an entry in pieces (a page, less a little).
const SIZES: [usize; 7] = [0, 0, 0, 4031, 4032, 70_000, (1 << 20) + 5000];

#[derive(Clone, Debug)]
enum Step {
    /// `count` entries at the next index; `wait` = append_durable, else fire-and-forget.
    /// `size` picks a length from `SIZES` (0: only the entry's label).
    Append {
        group: u32,
        count: u8,
        wait: bool,
        size: usize,
    },
    /// Truncate at `first + offset % (len + 1)`.
    Truncate {
        group: u32,
        offset: u8,
    },
    /// Purge through `first - 1 + offset` (may run past the last entry).
    Purge {
        group: u32,
        offset: u8,
    },
    /// `lazy` = put_meta_lazy (then sometimes sync_meta), else put_meta.
    PutMeta {
        group: u32,
        key: usize,
        value: u8,
        lazy: bool,
    },
    Remove {
        group: u32,
    },
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    let group = 0..GROUPS;
    prop_oneof![
        6 => (group.clone(), 1..6u8, any::<bool>(), 0..SIZES.len())
            .prop_map(|(group, count, wait, size)| Step::Append { group, count, wait, size }),
        2 => (group.clone(), any::<u8>()).prop_map(|(group, offset)| Step::Truncate { group, offset }),
        2 => (group.clone(), 0..8u8).prop_map(|(group, offset)| Step::Purge { group, offset }),
        2 => (group.clone(), 0..KEYS.len(), any::<u8>(), any::<bool>())
            .prop_map(|(group, key, value, lazy)| Step::PutMeta { group, key, value, lazy }),
        1 => group.prop_map(|group| Step::Remove { group }),
        1 => Just(Step::Reopen),
    ]
}

/// What the file should hold.
#[derive(Default)]
struct Model {
    log: BTreeMap<u32, BTreeMap<u64, Vec<u8>>>,
    next: BTreeMap<u32, u64>,
    purged: BTreeMap<u32, u64>,
    meta: BTreeMap<(u32, MetaKey), Vec<u8>>,
    /// Distinguishes payloads written at the same index at different times.
    generation: u64,
}

impl Model {
    fn bounds(&self, group: u32) -> Option<(u64, u64)> {
        let log = self.log.get(&group)?;
        Some((*log.keys().next()?, *log.keys().next_back()?))
    }

    fn listed(&self) -> Vec<GroupId> {
        let mut ids: BTreeSet<u32> = self.purged.keys().copied().collect();
        ids.extend(
            self.log
                .iter()
                .filter(|(_, l)| !l.is_empty())
                .map(|(g, _)| *g),
        );
        ids.extend(self.meta.keys().map(|(g, _)| *g));
        ids.into_iter().map(GroupId).collect()
    }

    fn reopened(&mut self) {
        for group in 0..GROUPS {
            match (self.bounds(group), self.purged.get(&group)) {
                (Some((_, last)), _) => self.next.insert(group, last + 1),
                (None, Some(purged)) => self.next.insert(group, purged + 1),
                (None, None) => self.next.remove(&group),
            };
        }
    }
}

fn open(path: &Path) -> LogDb {
    let options = LogDbOptions {
        write_queue_len_max: 16,
        batch_ops_max: 4,
        batch_bytes_max: 256,
        ..LogDbOptions::default()
    };
    LogDb::open_with(path, options).expect("open log")
}

async fn run(db: &mut LogDb, model: &mut Model, path: &Path, step: &Step) {
    model.generation += 1;
    match *step {
        Step::Append {
            group,
            count,
            wait,
            size,
        } => {
            let start = model.next.get(&group).copied().unwrap_or(10);
            let entries: Vec<(u64, Vec<u8>)> = (start..start + u64::from(count))
                .map(|i| (i, payload(group, i, model.generation, SIZES[size])))
                .collect();
            model
                .log
                .entry(group)
                .or_default()
                .extend(entries.iter().cloned());
            model.next.insert(group, start + u64::from(count));
            if wait {
                db.append_durable(GroupId(group), entries).await.unwrap();
            } else {
                db.append(GroupId(group), entries, Box::new(|r| r.unwrap()));
            }
        }
        Step::Truncate { group, offset } => {
            let Some((first, last)) = model.bounds(group) else {
                return;
            };
            let index = first + u64::from(offset) % (last - first + 2);
            model
                .log
                .entry(group)
                .or_default()
                .retain(|i, _| *i < index);
            model.next.insert(group, index);
            db.truncate_from(GroupId(group), index).await.unwrap();
        }
        Step::Purge { group, offset } => {
            let base = match model.bounds(group) {
                Some((first, _)) => first.saturating_sub(1),
                None => model.next.get(&group).map_or(0, |n| n.saturating_sub(1)),
            };
            let index = base + u64::from(offset);
            model
                .log
                .entry(group)
                .or_default()
                .retain(|i, _| *i > index);
            let next = model.next.get(&group).copied().unwrap_or(0).max(index + 1);
            model.next.insert(group, next);
            let purged = model.purged.get(&group).copied().unwrap_or(0).max(index);
            model.purged.insert(group, purged);
            db.purge_through(GroupId(group), index).await;
        }
        Step::PutMeta {
            group,
            key,
            value,
            lazy,
        } => {
            let bytes = vec![value; usize::from(value % 7)];
            model.meta.insert((group, KEYS[key]), bytes.clone());
            let (id, key) = (GroupId(group), KEYS[key]);
            match lazy {
                true => {
                    db.put_meta_lazy(id, key, bytes).await;
                    if value % 2 == 0 {
                        db.sync_meta(id, key).await.unwrap();
                    }
                }
                false => db.put_meta(id, key, bytes).await.unwrap(),
            }
        }
        Step::Remove { group } => {
            model.log.remove(&group);
            model.next.remove(&group);
            model.purged.remove(&group);
            model.meta.retain(|(g, _), _| *g != group);
            db.remove_group(GroupId(group)).await.unwrap();
        }
        Step::Reopen => {
            db.shutdown();
            *db = open(path);
            model.reopened();
        }
    }
}

/// The entry's label, then bytes that differ with it up to `len`.
fn payload(group: u32, index: u64, generation: u64, len: usize) -> Vec<u8> {
    let mut bytes = format!("{group}/{index}/{generation}").into_bytes();
    let seed = bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte));
    let label = bytes.len();
    bytes.extend((label..len).map(|at| seed.wrapping_add(at as u8)));
    bytes
}

fn check(db: &LogDb, model: &Model, step: &Step) {
    for group in 0..GROUPS {
        let id = GroupId(group);
        let expected: Vec<(u64, Vec<u8>)> = model
            .log
            .get(&group)
            .map(|l| l.iter().map(|(i, p)| (*i, p.clone())).collect())
            .unwrap_or_default();
        assert_eq!(
            db.entries(id, 0..u64::MAX).unwrap(),
            expected,
            "{id} after {step:?}"
        );
        let bounds = model.bounds(group);
        assert_eq!(
            db.first_index(id).unwrap(),
            bounds.map(|b| b.0),
            "{id} after {step:?}"
        );
        assert_eq!(
            db.last_index(id).unwrap(),
            bounds.map(|b| b.1),
            "{id} after {step:?}"
        );
        if let Some((first, last)) = bounds {
            let middle = first + (last - first) / 2;
            let part: Vec<_> = expected
                .iter()
                .filter(|(i, _)| *i >= middle)
                .cloned()
                .collect();
            assert_eq!(
                db.entries(id, middle..last + 1).unwrap(),
                part,
                "{id} after {step:?}"
            );
        }
        for key in KEYS {
            assert_eq!(
                db.meta(id, key).unwrap(),
                model.meta.get(&(group, key)).cloned()
            );
        }
    }
    assert_eq!(
        db.groups().unwrap(),
        model.listed(),
        "groups after {step:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_db_matches_model(steps in proptest::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        runtime.block_on(async {
            let mut db = open(&path);
            let mut model = Model::default();
            for step in &steps {
                run(&mut db, &mut model, &path, step).await;
                check(&db, &model, step);
            }
            db.shutdown();
            let db = open(&path);
            model.reopened();
            check(&db, &model, &Step::Reopen);
        });
    }
}
