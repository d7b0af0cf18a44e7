//! Times what a vShard move asks of the KV engine under the replica's lock, capturing one
//! vShard for export, sharing it with a sibling engine and adopting it there (a handover), and
//! dropping it, in a group whose other vShards hold many small keys: each takes the time of the
//! moved vShard's own keys, whatever the rest of the group holds.
//!
//! `cargo run --release -p nodedb-cluster-raft --example kv_vshard_ops -- [other_keys]
//! [moved_keys] [moved_value_bytes]` (defaults: 1,000,000 keys of 100 B elsewhere, 1,600 keys
//! of 64 KiB in the moved vShard).

use nodedb_cluster_core::vshard_for_key;
use nodedb_cluster_raft::kv::{KvCommand, KvStateMachine};
use nodedb_cluster_raft::state_machine::{Committed, LogIndex, StateMachine, StateMachineError};
use std::time::Instant;

const PART_BYTES: usize = 1024 * 1024;

fn main() -> Result<(), StateMachineError> {
    let mut args = std::env::args().skip(1);
    let other_keys: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let moved_keys: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_600);
    let moved_value_bytes: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(64 * 1024);
    let moved = vshard_for_key(b"moved-0");
    let mut machine = KvStateMachine::new();
    let mut put = |key: Vec<u8>, value: Vec<u8>| {
        let command = KvCommand::Put { key, value }.encode();
        let batch = [Committed {
            index: LogIndex(1),
            command: &command,
        }];
        machine.apply(&batch).map(drop)
    };
    let others = (0..other_keys)
        .map(|i| format!("other-{i}").into_bytes())
        .filter(|key| vshard_for_key(key) != moved);
    for key in others {
        put(key, vec![1; 100])?;
    }
    let mut in_moved = (0u32..)
        .map(|i| format!("moved-{i}").into_bytes())
        .filter(|key| vshard_for_key(key) == moved);
    for key in in_moved.by_ref().take(moved_keys) {
        put(key, vec![2; moved_value_bytes])?;
    }
    println!("{} keys, {moved_keys} of them in {moved}", machine.len());

    let began = Instant::now();
    let parts = machine.export_vshard_parts(moved, PART_BYTES)?;
    let captured = began.elapsed();
    let parts = parts.count();
    let began = Instant::now();
    let digest = machine.vshard_digest(moved);
    let shared = machine
        .share_vshard(moved)
        .expect("the kv engine shares vShards");
    let share = began.elapsed();
    let mut sibling = KvStateMachine::new();
    let began = Instant::now();
    sibling.adopt_vshard(moved, shared)?;
    let adopted = began.elapsed();
    assert_eq!(sibling.vshard_digest(moved), digest);
    let began = Instant::now();
    machine.drop_vshard(moved)?;
    let dropped = began.elapsed();
    println!(
        "export capture {captured:?} ({parts} parts), handover: share {share:?}, adopt {adopted:?}; drop {dropped:?}"
    );
    Ok(())
}
