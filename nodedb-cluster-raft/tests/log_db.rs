//! Behaviour of the Raft log file through its public API: appends and reads, bounds, truncate,
//! purge, meta values, many groups, reopening, read-your-writes before fsync, callbacks.

/// Named after the module so that `cargo test log_db` selects these tests.
mod log_db {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use nodedb_cluster_core::GroupId;
    use nodedb_cluster_raft::log_db::{LogDb, LogDbError, LogDbOptions, MetaKey};

    const G1: GroupId = GroupId(1);
    const G2: GroupId = GroupId(2);
    const WAIT_MAX: Duration = Duration::from_secs(30);

    fn entries(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range
            .map(|i| (i, format!("entry-{i}").into_bytes()))
            .collect()
    }

    fn open(dir: &tempfile::TempDir) -> LogDb {
        LogDb::open(&dir.path().join("raft.redb")).expect("open log")
    }

    #[tokio::test]
    async fn append_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        assert_eq!(db.first_index(G1).unwrap(), None);
        assert_eq!(db.last_index(G1).unwrap(), None);
        db.append_durable(G1, entries(1..11)).await.unwrap();
        assert_eq!(db.first_index(G1).unwrap(), Some(1));
        assert_eq!(db.last_index(G1).unwrap(), Some(10));
        assert_eq!(db.entries(G1, 1..11).unwrap(), entries(1..11));
        assert_eq!(db.entries(G1, 4..6).unwrap(), entries(4..6));
        assert_eq!(db.entries(G1, 9..100).unwrap(), entries(9..11));
        assert_eq!(db.entries(G1, 20..30).unwrap(), vec![]);
        assert_eq!(db.entries(G1, 5..5).unwrap(), vec![]);
        assert_eq!(db.entries(G2, 1..11).unwrap(), vec![]);
    }

    #[tokio::test]
    async fn a_read_up_to_a_size_stops_after_the_entry_reaching_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        // Each entry is "entry-N": 7 bytes for N < 10.
        db.append_durable(G1, entries(1..10)).await.unwrap();
        assert_eq!(db.entries_up_to(G1, 1..10, 15).unwrap(), entries(1..4));
        assert_eq!(db.entries_up_to(G1, 1..10, 14).unwrap(), entries(1..3));
        assert_eq!(db.entries_up_to(G1, 4..10, 1).unwrap(), entries(4..5));
        assert_eq!(
            db.entries_up_to(G1, 1..10, usize::MAX).unwrap(),
            entries(1..10)
        );
        // Appends just queued are read the same way.
        db.append_async(G1, entries(10..13), Box::new(|_| {})).await;
        assert_eq!(db.entries_up_to(G1, 8..13, 21).unwrap(), entries(8..11));
        assert_eq!(db.entries_up_to(G1, 20..30, 100).unwrap(), vec![]);
    }

    #[tokio::test]
    #[should_panic(expected = "append must start at index 11")]
    async fn append_with_a_gap_panics() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        db.append_durable(G1, entries(1..11)).await.unwrap();
        let _ = db.append_durable(G1, entries(12..13)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "not consecutive")]
    async fn append_of_non_consecutive_entries_panics() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let _ = db
            .append_durable(G1, vec![(1, vec![]), (2, vec![]), (4, vec![])])
            .await;
    }

    #[tokio::test]
    async fn truncate_removes_the_suffix_and_allows_a_new_tail() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        db.append_durable(G1, entries(1..11)).await.unwrap();
        db.truncate_from(G1, 6).await.unwrap();
        assert_eq!(db.last_index(G1).unwrap(), Some(5));
        assert_eq!(db.entries(G1, 0..100).unwrap(), entries(1..6));
        let replacement = vec![(6, b"new-6".to_vec()), (7, b"new-7".to_vec())];
        db.append_durable(G1, replacement.clone()).await.unwrap();
        let mut expected = entries(1..6);
        expected.extend(replacement);
        assert_eq!(db.entries(G1, 0..100).unwrap(), expected);
        db.truncate_from(G1, 1).await.unwrap();
        assert_eq!(db.first_index(G1).unwrap(), None);
        assert_eq!(db.last_index(G1).unwrap(), None);
    }

    #[tokio::test]
    async fn purge_removes_the_prefix_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(&dir);
            db.append_durable(G1, entries(1..11)).await.unwrap();
            db.purge_through(G1, 4).await;
            assert_eq!(db.first_index(G1).unwrap(), Some(5));
            assert_eq!(db.entries(G1, 0..100).unwrap(), entries(5..11));
            db.purge_through(G1, 20).await;
            assert_eq!(db.first_index(G1).unwrap(), None);
            assert_eq!(db.last_index(G1).unwrap(), None);
            assert_eq!(db.groups().unwrap(), vec![G1]);
        }
        let db = open(&dir);
        assert_eq!(db.groups().unwrap(), vec![G1]);
        assert_eq!(db.last_index(G1).unwrap(), None);
        // The purge mark survives: the next append must continue after it.
        db.append_durable(G1, entries(21..23)).await.unwrap();
        assert_eq!(db.entries(G1, 0..100).unwrap(), entries(21..23));
    }

    /// A purge is lazy: a crash before the next transaction undoes it whole, leaving every
    /// entry readable; one that rode along with a durable append stays.
    #[tokio::test]
    async fn a_purge_is_undone_whole_by_a_crash_before_the_next_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let options = LogDbOptions {
            lazy_write_delay_max: Duration::from_secs(3600),
            ..LogDbOptions::default()
        };
        let db = LogDb::open_with(&path, options).unwrap();
        db.append_durable(G1, entries(1..11)).await.unwrap();
        db.purge_through(G1, 4).await;
        assert_eq!(db.first_index(G1).unwrap(), Some(5), "readable at once");
        db.crash(0);
        let db = LogDb::open_with(&path, options).unwrap();
        assert_eq!(db.entries(G1, 0..100).unwrap(), entries(1..11));
        db.purge_through(G1, 4).await;
        db.append_durable(G1, entries(11..12)).await.unwrap();
        db.crash(0);
        let db = LogDb::open_with(&path, options).unwrap();
        assert_eq!(db.entries(G1, 0..100).unwrap(), entries(5..12));
    }

    #[tokio::test]
    async fn meta_values_are_per_group_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        assert_eq!(db.meta(G1, MetaKey::Vote).unwrap(), None);
        db.put_meta(G1, MetaKey::Vote, b"vote-1".to_vec())
            .await
            .unwrap();
        db.put_meta(G1, MetaKey::Committed, b"c".to_vec())
            .await
            .unwrap();
        db.put_meta(G2, MetaKey::Vote, b"vote-2".to_vec())
            .await
            .unwrap();
        db.put_meta(G1, MetaKey::Vote, b"vote-3".to_vec())
            .await
            .unwrap();
        assert_eq!(
            db.meta(G1, MetaKey::Vote).unwrap(),
            Some(b"vote-3".to_vec())
        );
        assert_eq!(
            db.meta(G1, MetaKey::Committed).unwrap(),
            Some(b"c".to_vec())
        );
        assert_eq!(
            db.meta(G2, MetaKey::Vote).unwrap(),
            Some(b"vote-2".to_vec())
        );
        assert_eq!(db.meta(G2, MetaKey::Committed).unwrap(), None);
        assert_eq!(db.groups().unwrap(), vec![G1, G2]);
    }

    /// A lazy meta write is readable at once, waits for a transaction of its own no longer than
    /// its delay, rides along with an eager write, and `sync_meta` makes it durable on demand.
    #[tokio::test]
    async fn lazy_meta_writes_ride_along_and_sync_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogDbOptions {
            lazy_write_delay_max: Duration::from_secs(3600),
            ..LogDbOptions::default()
        };
        let path = dir.path().join("raft.redb");
        let db = LogDb::open_with(&path, options).unwrap();
        db.put_meta_lazy(G1, MetaKey::Committed, b"c1".to_vec())
            .await;
        assert_eq!(
            db.meta(G1, MetaKey::Committed).unwrap(),
            Some(b"c1".to_vec())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(db.stats().batches_committed, 0, "a lazy write alone waits");
        db.append_durable(G1, entries(1..2)).await.unwrap();
        assert_eq!(db.stats().operations_committed, 2, "it rode along");
        db.sync_meta(G1, MetaKey::Committed).await.unwrap();
        assert_eq!(db.stats().batches_committed, 1, "nothing was pending");

        db.put_meta_lazy(G1, MetaKey::Committed, b"c2".to_vec())
            .await;
        db.put_meta_lazy(G2, MetaKey::Committed, b"other".to_vec())
            .await;
        db.sync_meta(G1, MetaKey::Committed).await.unwrap();
        // Lost from the queue now: only what was queued after the sync (nothing of G1).
        db.put_meta_lazy(G1, MetaKey::Committed, b"c3".to_vec())
            .await;
        db.crash(0);
        let db = LogDb::open_with(&path, options).unwrap();
        assert_eq!(
            db.meta(G1, MetaKey::Committed).unwrap(),
            Some(b"c2".to_vec())
        );
        assert_eq!(
            db.meta(G2, MetaKey::Committed).unwrap(),
            Some(b"other".to_vec())
        );
        db.shutdown();

        let quick = LogDbOptions {
            lazy_write_delay_max: Duration::from_millis(5),
            ..LogDbOptions::default()
        };
        let db = LogDb::open_with(&path, quick).unwrap();
        db.put_meta_lazy(G1, MetaKey::Committed, b"c4".to_vec())
            .await;
        let started = std::time::Instant::now();
        while db.stats().batches_committed == 0 {
            assert!(
                started.elapsed() < WAIT_MAX,
                "the lazy write was never committed"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        db.crash(0);
        let db = LogDb::open(&path).unwrap();
        assert_eq!(
            db.meta(G1, MetaKey::Committed).unwrap(),
            Some(b"c4".to_vec())
        );
    }

    #[test]
    fn meta_tags_round_trip() {
        for tag in 0..=u8::MAX {
            if let Some(key) = MetaKey::from_tag(tag) {
                assert_eq!(key.tag(), tag);
            }
        }
        assert_eq!(MetaKey::Vote.tag(), 1);
        assert_eq!(MetaKey::from_tag(0), None);
    }

    #[tokio::test]
    async fn groups_are_independent_and_removable() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        db.append_durable(G1, entries(1..4)).await.unwrap();
        db.append_durable(G2, entries(100..104)).await.unwrap();
        db.put_meta(G2, MetaKey::Vote, b"v".to_vec()).await.unwrap();
        db.append_durable(GroupId(0), entries(0..2)).await.unwrap();
        assert_eq!(db.groups().unwrap(), vec![GroupId(0), G1, G2]);
        assert_eq!(db.entries(G2, 0..1000).unwrap(), entries(100..104));

        db.remove_group(G2).await.unwrap();
        assert_eq!(db.groups().unwrap(), vec![GroupId(0), G1]);
        assert_eq!(db.entries(G2, 0..1000).unwrap(), vec![]);
        assert_eq!(db.meta(G2, MetaKey::Vote).unwrap(), None);
        // The vote stays behind for a replica created here again, also after a second removal.
        assert_eq!(
            db.meta(G2, MetaKey::RemovedVote).unwrap(),
            Some(b"v".to_vec())
        );
        // So does the highest index it held: its acknowledgements up to there are forgotten.
        assert_eq!(db.removed_last_index(G2).unwrap(), Some(103));
        db.remove_group(G2).await.unwrap();
        assert_eq!(
            db.meta(G2, MetaKey::RemovedVote).unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(db.removed_last_index(G2).unwrap(), Some(103));
        assert_eq!(db.last_index(G2).unwrap(), None);
        // A removed group starts afresh at any index.
        db.append_durable(G2, entries(7..9)).await.unwrap();
        assert_eq!(db.entries(G2, 0..1000).unwrap(), entries(7..9));
        assert_eq!(db.entries(G1, 0..1000).unwrap(), entries(1..4));
        // The highest index over every removed replica is kept.
        db.remove_group(G2).await.unwrap();
        assert_eq!(db.removed_last_index(G2).unwrap(), Some(103));
        db.append_durable(G2, entries(200..202)).await.unwrap();
        db.remove_group(G2).await.unwrap();
        assert_eq!(db.removed_last_index(G2).unwrap(), Some(201));
        assert_eq!(db.groups().unwrap(), vec![GroupId(0), G1]);
        db.shutdown();
        let db = open(&dir);
        assert_eq!(db.removed_last_index(G2).unwrap(), Some(201));
        assert_eq!(db.groups().unwrap(), vec![GroupId(0), G1]);
    }

    #[tokio::test]
    async fn reopen_restores_logs_meta_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(&dir);
            db.append_durable(G1, entries(1..6)).await.unwrap();
            db.append_durable(G2, entries(50..60)).await.unwrap();
            db.purge_through(G2, 52).await;
            db.put_meta(G1, MetaKey::Vote, b"term-3".to_vec())
                .await
                .unwrap();
            db.shutdown();
            assert!(matches!(db.last_index(G1), Err(LogDbError::Closed)));
        }
        let db = open(&dir);
        assert_eq!(db.groups().unwrap(), vec![G1, G2]);
        assert_eq!(db.entries(G1, 0..100).unwrap(), entries(1..6));
        assert_eq!(db.first_index(G2).unwrap(), Some(53));
        assert_eq!(db.last_index(G2).unwrap(), Some(59));
        assert_eq!(
            db.meta(G1, MetaKey::Vote).unwrap(),
            Some(b"term-3".to_vec())
        );
        db.append_durable(G1, entries(6..8)).await.unwrap();
        assert_eq!(db.entries(G1, 0..100).unwrap(), entries(1..8));
    }

    /// Appends are readable as soon as `append` returns, before their callback fires: the writer is
    /// kept busy behind a callback that blocks until the test has looked.
    #[test]
    fn appends_are_readable_before_they_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let (release_sender, release_receiver) = mpsc::channel::<()>();
        let (durable_sender, durable_receiver) = mpsc::channel::<u64>();
        // The first batch's callback holds the writer thread until released.
        db.append(
            G1,
            entries(1..2),
            Box::new(move |result| {
                result.unwrap();
                release_receiver.recv_timeout(WAIT_MAX).unwrap();
            }),
        );
        let sender = durable_sender.clone();
        db.append(
            G1,
            entries(2..5),
            Box::new(move |result| {
                result.unwrap();
                sender.send(4).unwrap();
            }),
        );
        assert_eq!(db.last_index(G1).unwrap(), Some(4));
        assert_eq!(db.entries(G1, 0..10).unwrap(), entries(1..5));
        assert!(
            durable_receiver.try_recv().is_err(),
            "callback ran before release"
        );
        release_sender.send(()).unwrap();
        assert_eq!(durable_receiver.recv_timeout(WAIT_MAX).unwrap(), 4);
    }

    /// A crash keeps what was being written and the first `survivors` queued operations, loses
    /// the rest (their callers hear `Closed`, never `Ok`), and the reopened file holds exactly
    /// the durable prefix.
    #[test]
    fn a_crash_keeps_a_prefix_of_the_queue_and_fails_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let (release_sender, release_receiver) = mpsc::channel::<()>();
        let (outcome_sender, outcome_receiver) = mpsc::channel::<(u64, bool)>();
        // The first batch's callback holds the writer thread, so that 2..=10 stay queued.
        let (entered_sender, entered_receiver) = mpsc::channel::<()>();
        let sender = outcome_sender.clone();
        db.append(
            G1,
            entries(1..2),
            Box::new(move |result| {
                entered_sender.send(()).unwrap();
                release_receiver.recv_timeout(WAIT_MAX).unwrap();
                sender.send((1, result.is_ok())).unwrap();
            }),
        );
        entered_receiver.recv_timeout(WAIT_MAX).unwrap();
        for index in 2..=10 {
            let sender = outcome_sender.clone();
            db.append(
                G1,
                entries(index..index + 1),
                Box::new(move |result| {
                    assert!(matches!(result, Ok(()) | Err(LogDbError::Closed)));
                    sender.send((index, result.is_ok())).unwrap();
                }),
            );
        }
        let crashing = {
            let db = db.clone();
            std::thread::spawn(move || db.crash(3))
        };
        let mut outcomes = std::collections::BTreeMap::new();
        // The six lost appends are failed before the crash waits for the writer.
        for _ in 0..6 {
            let (index, ok) = outcome_receiver.recv_timeout(WAIT_MAX).unwrap();
            outcomes.insert(index, ok);
        }
        release_sender.send(()).unwrap();
        for _ in 0..4 {
            let (index, ok) = outcome_receiver.recv_timeout(WAIT_MAX).unwrap();
            outcomes.insert(index, ok);
        }
        crashing.join().unwrap();
        let expected: std::collections::BTreeMap<u64, bool> =
            (1..=10).map(|index| (index, index <= 4)).collect();
        assert_eq!(outcomes, expected);
        assert!(matches!(db.last_index(G1), Err(LogDbError::Closed)));
        drop(db);

        let reopened = open(&dir);
        assert_eq!(reopened.last_index(G1).unwrap(), Some(4));
        assert_eq!(reopened.entries(G1, 0..20).unwrap(), entries(1..5));
    }

    /// Append, truncate and append queued back to back land in one batch and apply in queue
    /// order, both in what reads see before commit and in what is on disk after.
    #[tokio::test]
    async fn queue_order_holds_within_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(&dir);
            let (release_sender, release_receiver) = mpsc::channel::<()>();
            db.append(
                G1,
                entries(1..2),
                Box::new(move |result| {
                    result.unwrap();
                    release_receiver.recv_timeout(WAIT_MAX).unwrap();
                }),
            );
            // Wait until the writer is parked in the callback, so the rest forms one batch.
            let fired = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&fired);
            db.append(
                G1,
                entries(2..6),
                Box::new(move |result| {
                    result.unwrap();
                    counter.fetch_add(1, Ordering::SeqCst);
                }),
            );
            let truncate = {
                let db = db.clone();
                tokio::spawn(async move { db.truncate_from(G1, 3).await })
            };
            let deadline = std::time::Instant::now() + WAIT_MAX;
            while db.last_index(G1).unwrap() != Some(2) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "truncate never queued"
                );
                tokio::task::yield_now().await;
            }
            let replacement = vec![(3, b"x-3".to_vec()), (4, b"x-4".to_vec())];
            let counter = Arc::clone(&fired);
            db.append(
                G1,
                replacement.clone(),
                Box::new(move |result| {
                    result.unwrap();
                    counter.fetch_add(1, Ordering::SeqCst);
                }),
            );
            let mut expected = entries(1..3);
            expected.extend(replacement.clone());
            assert_eq!(db.entries(G1, 0..100).unwrap(), expected);
            release_sender.send(()).unwrap();
            truncate.await.unwrap().unwrap();
            let deadline = std::time::Instant::now() + WAIT_MAX;
            while fired.load(Ordering::SeqCst) < 2 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "callbacks never fired"
                );
                tokio::task::yield_now().await;
            }
            assert_eq!(db.entries(G1, 0..100).unwrap(), expected);
        }
        let db = open(&dir);
        let mut expected = entries(1..3);
        expected.extend(vec![(3, b"x-3".to_vec()), (4, b"x-4".to_vec())]);
        assert_eq!(db.entries(G1, 0..100).unwrap(), expected);
    }

    /// Every callback fires exactly once, in queue order, also across many groups and a small
    /// batch bound.
    #[test]
    fn callbacks_fire_once_each_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogDbOptions {
            write_queue_len_max: 8,
            batch_ops_max: 3,
            batch_bytes_max: 64,
            ..LogDbOptions::default()
        };
        let db = LogDb::open_with(&dir.path().join("raft.redb"), options).unwrap();
        let (sender, receiver) = mpsc::channel::<(u32, u64)>();
        let appends_per_group = 50u64;
        for index in 1..=appends_per_group {
            for group in 0..4u32 {
                let sender = sender.clone();
                db.append(
                    GroupId(group),
                    vec![(index, vec![group as u8; 40])],
                    Box::new(move |result| {
                        result.unwrap();
                        sender.send((group, index)).unwrap();
                    }),
                );
            }
        }
        drop(sender);
        let mut seen = Vec::new();
        while let Ok(item) = receiver.recv_timeout(WAIT_MAX) {
            seen.push(item);
        }
        let expected: Vec<(u32, u64)> = (1..=appends_per_group)
            .flat_map(|index| (0..4u32).map(move |group| (group, index)))
            .collect();
        assert_eq!(seen, expected);
        for group in 0..4u32 {
            assert_eq!(
                db.last_index(GroupId(group)).unwrap(),
                Some(appends_per_group)
            );
        }
    }

    #[test]
    fn operations_after_shutdown_fail_closed() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        db.shutdown();
        db.shutdown();
        let (sender, receiver) = mpsc::channel();
        db.append(
            G1,
            entries(1..2),
            Box::new(move |result| sender.send(result).unwrap()),
        );
        assert!(matches!(
            receiver.recv_timeout(WAIT_MAX).unwrap(),
            Err(LogDbError::Closed)
        ));
        assert!(matches!(db.entries(G1, 0..1), Err(LogDbError::Closed)));
        assert!(matches!(db.groups(), Err(LogDbError::Closed)));
        // The file is released once the handle is dropped.
        drop(db);
        let _reopened = open(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appenders_on_many_groups() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let mut tasks = Vec::new();
        for group in 0..8u32 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                for index in 1..=40u64 {
                    db.append_durable(GroupId(group), vec![(index, index.to_le_bytes().to_vec())])
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        for group in 0..8u32 {
            let all = db.entries(GroupId(group), 0..1000).unwrap();
            assert_eq!(all.len(), 40);
            assert!(all.iter().all(|(i, p)| p == &i.to_le_bytes().to_vec()));
        }
    }

    /// `append_async` waits for room in a full queue instead of blocking, and its callback still
    /// fires once durable; the stats count one fsync per batch.
    #[tokio::test]
    async fn append_async_waits_for_room_and_stats_count_batches() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogDbOptions {
            write_queue_len_max: 2,
            batch_ops_max: 2,
            batch_bytes_max: 1024,
            ..LogDbOptions::default()
        };
        let db = LogDb::open_with(&dir.path().join("raft.redb"), options).unwrap();
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<u64>();
        for index in 1..=20u64 {
            let sender = sender.clone();
            db.append_async(
                G1,
                entries(index..index + 1),
                Box::new(move |result| {
                    result.unwrap();
                    sender.send(index).unwrap();
                }),
            )
            .await;
            assert_eq!(db.last_index(G1).unwrap(), Some(index));
        }
        drop(sender);
        let mut fired = Vec::new();
        while let Ok(Some(index)) = tokio::time::timeout(WAIT_MAX, receiver.recv()).await {
            fired.push(index);
        }
        assert_eq!(fired, (1..=20).collect::<Vec<u64>>());
        let stats = db.stats();
        assert_eq!(stats.operations_committed, 20);
        assert!(
            stats.batches_committed >= 10,
            "batches bounded by 2 ops: {stats:?}"
        );
        assert_eq!(db.entries(G1, 0..100).unwrap(), entries(1..21));
    }

    /// A callback may append again (it runs on the writer thread, even with a full queue) and
    /// a panicking callback does not stop the writer.
    #[test]
    fn callbacks_may_append_and_may_panic() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogDbOptions {
            write_queue_len_max: 1,
            batch_ops_max: 1,
            batch_bytes_max: 1024,
            ..LogDbOptions::default()
        };
        let db = LogDb::open_with(&dir.path().join("raft.redb"), options).unwrap();
        let (sender, receiver) = mpsc::channel::<u64>();
        let chained = db.clone();
        db.append(
            G1,
            entries(1..2),
            Box::new(move |result| {
                result.unwrap();
                for index in 2..5u64 {
                    let sender = sender.clone();
                    chained.append(
                        G1,
                        entries(index..index + 1),
                        Box::new(move |result| {
                            result.unwrap();
                            sender.send(index).unwrap();
                        }),
                    );
                }
                panic!("callback panics on purpose");
            }),
        );
        let fired: Vec<u64> = (0..3)
            .map(|_| receiver.recv_timeout(WAIT_MAX).unwrap())
            .collect();
        assert_eq!(fired, vec![2, 3, 4]);
        assert_eq!(db.entries(G1, 0..10).unwrap(), entries(1..5));
    }

    /// Reads racing with appends and truncates (queued and committing at the same time) always
    /// see one consistent log: contiguous indexes, and the generation stamped in each payload
    /// never decreases along the log (a truncated tail is replaced by a newer generation).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_racing_writes_see_a_consistent_log() {
        const ROUNDS: u64 = 60;
        const READS_MAX: usize = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let db = db.clone();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(Ordering::SeqCst) && reads < READS_MAX {
                    let log = db.entries(G1, 0..u64::MAX).unwrap();
                    for pair in log.windows(2) {
                        let (a, b) = (&pair[0], &pair[1]);
                        assert_eq!(a.0 + 1, b.0, "hole in {log:?}");
                        assert!(a.1[0] <= b.1[0], "generation went back in {log:?}");
                    }
                    reads += 1;
                }
                reads
            })
        };
        let mut next = 1u64;
        for generation in 1..=ROUNDS {
            let stamp = generation as u8;
            for _ in 0..4 {
                let batch: Vec<(u64, Vec<u8>)> =
                    (next..next + 3).map(|i| (i, vec![stamp; 8])).collect();
                db.append(G1, batch, Box::new(|result| result.unwrap()));
                next += 3;
            }
            let cut = next - 1 - generation % 7;
            db.truncate_from(G1, cut).await.unwrap();
            next = cut;
        }
        done.store(true, Ordering::SeqCst);
        let reads = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        assert!(reads > 0);
        assert_eq!(db.last_index(G1).unwrap(), Some(next - 1));
    }

    /// The file takes about what large entries hold, not the power of two of pages redb gives
    /// a leaf holding one large value: entries of 64 KiB and a little (a 64 KiB value with its
    /// key and headers) took 128 KiB each before they were stored in pieces.
    #[tokio::test]
    async fn large_entries_take_about_their_size_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let sizes = [65_536 + 60, (1 << 20) + 40, 200_000];
        let mut payload_bytes = 0;
        let mut next = 1;
        let db = LogDb::open(&path).unwrap();
        for size in sizes {
            let batch: Vec<(u64, Vec<u8>)> =
                (next..next + 8).map(|i| (i, vec![i as u8; size])).collect();
            payload_bytes += 8 * size as u64;
            next += 8;
            db.append_durable(G1, batch.clone()).await.unwrap();
            assert_eq!(db.entries(G1, next - 8..next).unwrap(), batch);
        }
        db.shutdown();

        let raw = redb::Database::open(&path).unwrap();
        let stats = raw.begin_write().unwrap().stats().unwrap();
        let file_bytes = stats.allocated_pages() * stats.page_size() as u64;
        assert!(
            file_bytes < payload_bytes + payload_bytes / 10,
            "{file_bytes} bytes of pages for {payload_bytes} bytes of entries"
        );
        drop(raw);
        let db = LogDb::open(&path).unwrap();
        assert_eq!(db.entries(G1, 1..next).unwrap().len(), 24);
    }
}
