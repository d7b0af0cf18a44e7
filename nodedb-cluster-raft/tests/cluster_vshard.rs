//! vShard data moves between groups through the log, as migration steps: export from the
//! source leader, import into the target group, fence the source (it refuses the vShard from a
//! known log index on), adopt in the target, drop from the source. Late steps are refused.

mod common;

use common::{TestCluster, on_leader};
use nodedb_cluster_core::{GroupId, MigrationId, NodeId, keys_in_vshard, vshard_for_key};
use nodedb_cluster_raft::kv::{KvCommand, KvQuery};
use nodedb_cluster_raft::{
    CopyId, ProposeError, RaftTimings, ReadConsistency, VShardClaim, VShardStep,
    encode_replayed_commands,
};

const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const M1: MigrationId = MigrationId(1);
/// A copy made after the source's fence (the test fences the source right after importing).
const COPY: CopyId = CopyId {
    fence_index: 1,
    nonce: 7,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vshard_moves_from_one_group_to_another_on_every_replica() {
    let mut cluster = TestCluster::new(3, 31).await;
    let (source, target) = (GroupId(1), GroupId(2));
    cluster.create_group(source, &VOTERS).await;
    cluster.create_group(target, &VOTERS).await;
    for i in 0..60 {
        cluster
            .put(source, &format!("key-{i}"), &format!("{i}"))
            .await;
    }
    let moving = vshard_for_key(b"key-7");
    let moved_keys: Vec<String> = (0..60)
        .map(|i| format!("key-{i}"))
        .filter(|key| vshard_for_key(key.as_bytes()) == moving)
        .collect();
    let staying = (0..60)
        .map(|i| format!("key-{i}"))
        .find(|key| vshard_for_key(key.as_bytes()) != moving)
        .expect("a key of another vShard");

    let source_leader = cluster.wait_leader(source).await;
    let exported = cluster.nodes[&source_leader]
        .multi
        .export_vshard(source, moving)
        .await
        .expect("export");
    let target_leader = cluster.wait_leader(target).await;
    let step = |group, step, payload| {
        let multi = cluster.nodes[&if group == source {
            source_leader
        } else {
            target_leader
        }]
            .multi
            .clone();
        async move {
            multi
                .migration_step(group, moving, M1, step, payload)
                .await
                .expect("migration step")
        }
    };
    let mut parts = exported.parts.into_iter();
    let imported = step(
        target,
        VShardStep::Import(COPY),
        parts.next().expect("a part"),
    )
    .await;
    assert!(imported.applied && imported.index.0 > 0);
    for part in parts {
        assert!(
            step(target, VShardStep::ImportMore(COPY), part)
                .await
                .applied
        );
    }
    assert!(step(source, VShardStep::Fence, vec![]).await.applied);
    assert!(step(target, VShardStep::Adopt(COPY), vec![]).await.applied);
    assert!(step(source, VShardStep::Drop, vec![]).await.applied);
    let late = step(target, VShardStep::Import(COPY), vec![]).await;
    assert!(
        !late.applied,
        "a late import never overwrites an adopted vShard"
    );
    assert_eq!(late.claim, VShardClaim::Serving(M1));

    cluster.wait_converged(source).await;
    cluster.wait_converged(target).await;
    for node in VOTERS {
        for key in &moved_keys {
            let expected = key.trim_start_matches("key-").to_string();
            assert_eq!(cluster.local_get(node, target, key).await, Some(expected));
            assert_eq!(cluster.local_get(node, source, key).await, None);
        }
        assert!(cluster.local_get(node, source, &staying).await.is_some());
        assert_eq!(cluster.local_get(node, target, &staying).await, None);
    }
    cluster.shutdown().await;
}

/// The commands a source applied after the export are read back from its log up to the fence
/// and replayed on the target's early copy, batch by batch and each batch once: the target
/// then holds exactly the source's data at the fence and may adopt it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_after_an_export_turn_an_early_copy_into_the_final_one() {
    let mut cluster = TestCluster::new(3, 43).await;
    let (source, target) = (GroupId(1), GroupId(2));
    cluster.create_group(source, &VOTERS).await;
    cluster.create_group(target, &VOTERS).await;
    let moving = vshard_for_key(b"key-0");
    let keys: Vec<String> = keys_in_vshard("key-", moving).take(6).collect();
    let write = |command: KvCommand| {
        on_leader(&cluster, source, move |multi| {
            let command = command.encode();
            async move { multi.propose_vshard(source, moving, command).await }
        })
    };
    let put = |key: &str, value: &str| KvCommand::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    };
    for key in &keys[..3] {
        write(put(key, "early")).await.expect("write before export");
    }
    let export = on_leader(&cluster, source, |multi| async move {
        multi.export_vshard(source, moving).await
    })
    .await
    .expect("export");
    assert!(export.serving && export.applied.0 > 0);
    let early = CopyId {
        fence_index: 0,
        nonce: 1,
    };
    let step = |group: GroupId, step: VShardStep, payload: Vec<u8>| {
        on_leader(&cluster, group, move |multi| {
            let payload = payload.clone();
            async move { multi.migration_step(group, moving, M1, step, payload).await }
        })
    };
    let mut parts = export.parts.into_iter();
    let first = parts.next().expect("a part");
    assert!(
        step(target, VShardStep::Import(early), first)
            .await
            .expect("import")
            .applied
    );
    for part in parts {
        let more = step(target, VShardStep::ImportMore(early), part).await;
        assert!(more.expect("import more").applied);
    }
    // Writes after the export: new keys, overwrites, a delete and compare-and-swaps, which
    // are not idempotent: replaying any of them twice or out of order would show.
    write(put(&keys[3], "late")).await.expect("put");
    write(put(&keys[0], "overwritten"))
        .await
        .expect("overwrite");
    let delete = KvCommand::Delete {
        key: keys[1].as_bytes().to_vec(),
    };
    write(delete).await.expect("delete");
    for round in 0..4 {
        let cas = KvCommand::Cas {
            key: keys[2].as_bytes().to_vec(),
            expected: Some(if round == 0 {
                "early".into()
            } else {
                format!("cas-{}", round - 1).into_bytes()
            }),
            new: format!("cas-{round}").into_bytes(),
        };
        write(cas).await.expect("cas");
    }
    // Another vShard's writes in between are not part of the changes.
    let other = (0..)
        .map(|i| format!("other-{i}"))
        .find(|key| vshard_for_key(key.as_bytes()) != moving)
        .expect("a key of another vShard");
    let other_vshard = vshard_for_key(other.as_bytes());
    on_leader(&cluster, source, |multi| {
        let command = put(&other, "x").encode();
        async move { multi.propose_vshard(source, other_vshard, command).await }
    })
    .await
    .expect("write of another vShard");
    let fence = step(source, VShardStep::Fence, vec![])
        .await
        .expect("fence");
    assert!(fence.applied);

    // Small pages: several batches, each replayed once.
    let mut copy = early;
    let mut after = export.applied;
    let mut batches = 0;
    loop {
        let changes = on_leader(&cluster, source, |multi| async move {
            multi
                .vshard_changes(source, moving, after, fence.index, 16)
                .await
        })
        .await
        .expect("changes");
        assert!(changes.through > after);
        let last = changes.through.0 + 1 == fence.index.0;
        let next = CopyId {
            fence_index: if last { fence.index.0 } else { 0 },
            nonce: 100 + batches,
        };
        let payload = encode_replayed_commands(&changes.commands);
        let replay = VShardStep::ImportChanges {
            from: copy,
            to: next,
        };
        assert!(
            step(target, replay, payload.clone())
                .await
                .expect("replay")
                .applied
        );
        let again = step(target, replay, payload).await.expect("replay again");
        assert!(!again.applied, "a batch is replayed once");
        copy = next;
        after = changes.through;
        batches += 1;
        if last {
            break;
        }
    }
    assert!(batches > 1, "pages of 16 bytes split the changes");
    assert!(
        step(target, VShardStep::Adopt(copy), vec![])
            .await
            .expect("adopt")
            .applied
    );

    let exported = |group: GroupId| {
        on_leader(&cluster, group, move |multi| async move {
            multi.export_vshard(group, moving).await
        })
    };
    let at_fence = exported(source).await.expect("source export").parts;
    let adopted = exported(target).await.expect("target export").parts;
    assert_eq!(
        adopted.concat(),
        at_fence.concat(),
        "the target holds the source's data at the fence"
    );
    assert_eq!(
        cluster.get(target, &keys[2]).await.as_deref(),
        Some("cas-3")
    );
    assert_eq!(cluster.get(target, &keys[1]).await, None);
    assert_eq!(cluster.get(target, &other).await, None);
    cluster.shutdown().await;
}

/// A fenced vShard refuses commands and reads with `Moved` in log order, on every replica and
/// across a restart from a snapshot; other vShards of the group keep serving; releasing the
/// fence (a given-up migration) restores service, and the late fence is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_vshard_refuses_commands_and_reads_until_released() {
    let timings = RaftTimings {
        snapshot_logs_since_last: 8,
        logs_to_keep_after_snapshot: 2,
        ..RaftTimings::for_tests()
    };
    let mut cluster = TestCluster::with_timings(3, 37, timings).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let fenced = vshard_for_key(b"fenced-key");
    let open_key = (0..)
        .map(|i| format!("open-{i}"))
        .find(|key| vshard_for_key(key.as_bytes()) != fenced)
        .expect("a key of another vShard");
    let put = |key: &str, value: &str| {
        KvCommand::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
        .encode()
    };
    let get = |key: &str| {
        KvQuery::Get {
            key: key.as_bytes().to_vec(),
        }
        .encode()
    };

    on_leader(&cluster, group, |multi| {
        let command = put("fenced-key", "before");
        async move { multi.propose_vshard(group, fenced, command).await }
    })
    .await
    .expect("write before the fence");
    let fence = on_leader(&cluster, group, |multi| async move {
        multi
            .migration_step(group, fenced, M1, VShardStep::Fence, vec![])
            .await
    })
    .await
    .expect("fence");
    assert!(fence.applied);
    let refused = on_leader(&cluster, group, |multi| {
        let command = put("fenced-key", "after");
        async move { multi.propose_vshard(group, fenced, command).await }
    })
    .await;
    assert_eq!(
        refused,
        Err(ProposeError::Moved {
            group,
            vshard: fenced
        })
    );
    let read = on_leader(&cluster, group, |multi| {
        let query = get("fenced-key");
        async move {
            multi
                .query_vshard(group, fenced, &query, ReadConsistency::Linearizable)
                .await
        }
    })
    .await;
    assert!(matches!(read, Err(ProposeError::Moved { .. })), "{read:?}");
    let open_vshard = vshard_for_key(open_key.as_bytes());
    let open = on_leader(&cluster, group, |multi| {
        let command = put(&open_key, "fine");
        async move { multi.propose_vshard(group, open_vshard, command).await }
    })
    .await
    .expect("another vShard still takes writes");
    assert!(open.index > fence.index);

    // Enough writes for a snapshot and a purge, then every replica restarts from it.
    for i in 0..20 {
        cluster.put(group, &format!("filler-{i}"), "x").await;
    }
    cluster.wait_converged(group).await;
    for node in VOTERS {
        cluster.crash_node(node).await;
    }
    for node in VOTERS {
        cluster.restart_node(node).await;
    }
    cluster.wait_converged(group).await;
    for node in VOTERS {
        let multi = &cluster.nodes[&node].multi;
        assert_eq!(
            multi.claim(group, fenced),
            Ok(VShardClaim::Fenced(M1)),
            "on {node}"
        );
        let local = multi
            .query_vshard(group, fenced, &get("fenced-key"), ReadConsistency::Local)
            .await;
        assert!(matches!(local, Err(ProposeError::Moved { .. })));
    }
    let exported = on_leader(&cluster, group, |multi| async move {
        multi.export_vshard(group, fenced).await
    })
    .await
    .expect("export");
    assert!(
        exported.parts.iter().any(|part| part.len() > 2),
        "the fenced data is still exportable"
    );
    let step = |step: VShardStep| {
        on_leader(&cluster, group, move |multi| async move {
            multi.migration_step(group, fenced, M1, step, vec![]).await
        })
    };
    assert!(step(VShardStep::Release).await.expect("release").applied);
    let late_fence = step(VShardStep::Fence).await.expect("late fence");
    assert!(
        !late_fence.applied,
        "a released vShard is not fenced again by its migration"
    );
    on_leader(&cluster, group, |multi| {
        let command = put("fenced-key", "again");
        async move { multi.propose_vshard(group, fenced, command).await }
    })
    .await
    .expect("writes after the release");
    assert_eq!(
        cluster.get(group, "fenced-key").await.as_deref(),
        Some("again")
    );
    cluster.shutdown().await;
}

/// An export read page by page yields the parts of the whole export of the same state, each
/// page encoded when read: the next page or the page read last may be asked for, any other
/// page is refused, and the export is forgotten once its last page was read. Writes made while
/// it is read do not reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_read_page_by_page_is_the_whole_export_of_one_state() {
    let mut cluster = TestCluster::new(3, 47).await;
    let group = GroupId(1);
    cluster.create_group(group, &VOTERS).await;
    let moving = vshard_for_key(b"paged-0");
    let keys: Vec<String> = keys_in_vshard("paged-", moving).take(12).collect();
    let leader = cluster.wait_leader(group).await;
    let multi = cluster.nodes[&leader].multi.clone();
    let put = |key: &str, byte: u8| {
        KvCommand::Put {
            key: key.as_bytes().to_vec(),
            value: vec![byte; 300 * 1024],
        }
        .encode()
    };
    for key in &keys {
        multi
            .propose_vshard(group, moving, put(key, b'a'))
            .await
            .expect("write");
    }
    let whole = multi.export_vshard(group, moving).await.expect("export");
    assert!(whole.parts.len() >= 3, "{} parts", whole.parts.len());

    let export = 11;
    let page = |first_part: u32| multi.export_vshard_page(group, moving, export, first_part, 1);
    let mut read = Vec::new();
    let first = page(0).await.expect("first page");
    assert_eq!(
        (first.applied, first.serving),
        (whole.applied, whole.serving)
    );
    read.extend(first.parts.iter().cloned());
    multi
        .propose_vshard(group, moving, put(&keys[0], b'b'))
        .await
        .expect("a write while the export is read");
    assert_eq!(
        page(0).await.expect("the first page again"),
        first,
        "the page read last is read again"
    );
    assert!(
        page(2).await.is_err(),
        "a page ahead of the next is refused"
    );
    let mut next = first.first_part + first.parts.len() as u32;
    let mut last = first.last;
    while !last {
        let page = page(next).await.expect("next page");
        assert_eq!(page.first_part, next);
        assert_eq!(
            page.applied, whole.applied,
            "every page comes from one state"
        );
        read.extend(page.parts.iter().cloned());
        next += page.parts.len() as u32;
        last = page.last;
    }
    assert_eq!(read, whole.parts);
    assert!(
        page(next - 1).await.is_err(),
        "an export is forgotten once its last page was read"
    );
    cluster.shutdown().await;
}
