//! The vShard-move phase of `test-cluster`: while the clients keep writing, vShards that hold
//! workload keys move to other data groups through `POST /v1/vshards/{id}/move`, one after the
//! other, each followed until `GET /v1/migrations` shows it cleaned (or given up). The history
//! check then proves that no write was lost or doubled by a move.

use crate::api::{Api, MigrationView};
use crate::cluster::Cluster;
use crate::report::CheckResult;
use crate::workload::key_name;
use nodedb_cluster_core::{VShardId, vshard_for_key};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// vShards moved per run.
pub const MOVES: usize = 3;
/// Longest one move may take before the phase reports it as stuck.
const MOVE_WAIT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// One planned move: a vShard that holds a workload key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedMove {
    pub vshard: VShardId,
    /// A key of the workload in that vShard, for the report.
    pub key: u32,
}

/// What became of one move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveEvent {
    pub planned: PlannedMove,
    pub from_group: u32,
    pub to_group: u32,
    /// `cleaned`, `aborted`, or the last phase seen when the wait ended.
    pub phase: String,
    pub took: Duration,
    pub write_pause_ms: Option<u64>,
}

/// [`MOVES`] distinct vShards of the workload's `keys`, drawn from the seed.
pub fn plan(seed: u64, keys: u32) -> Vec<PlannedMove> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6D6F_7665_7321);
    let mut seen = BTreeSet::new();
    let mut moves = Vec::new();
    for _ in 0..keys.saturating_mul(4) {
        if moves.len() == MOVES || keys == 0 {
            break;
        }
        let key = rng.random_range(0..keys);
        let vshard = vshard_for_key(key_name(key).as_bytes());
        if seen.insert(vshard) {
            moves.push(PlannedMove { vshard, key });
        }
    }
    moves
}

/// Carries out `moves` one after the other through the nodes' admin APIs, starting each at
/// `not_before`, until done or `stop` is set.
pub fn execute(
    cluster: &Cluster,
    moves: &[PlannedMove],
    groups: u32,
    not_before: Instant,
    phase: &Mutex<String>,
    stop: &AtomicBool,
) -> Vec<MoveEvent> {
    let api = Api::new(API_TIMEOUT);
    let nodes: Vec<SocketAddr> = cluster.admin_addrs().into_values().collect();
    let mut events = Vec::new();
    for (round, planned) in moves.iter().enumerate() {
        while Instant::now() < not_before {
            if stop.load(Ordering::Relaxed) {
                return events;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        set_phase(phase, &format!("moving {}", planned.vshard));
        let started = Instant::now();
        let Some(begun) = begin(&api, &nodes, planned.vshard, groups, round, stop) else {
            continue;
        };
        let last = follow(&api, &nodes, begun.id, stop).unwrap_or(begun.clone());
        eprintln!(
            "moved {} (key {}) from group {} to group {}: {} in {:?}, write pause {:?} ms",
            planned.vshard,
            key_name(planned.key),
            last.from_group,
            last.to_group,
            last.phase,
            started.elapsed(),
            last.write_pause_ms
        );
        events.push(MoveEvent {
            planned: *planned,
            from_group: last.from_group,
            to_group: last.to_group,
            phase: last.phase,
            took: started.elapsed(),
            write_pause_ms: last.write_pause_ms,
        });
        set_phase(phase, "load");
    }
    events
}

/// The report row: every planned move ended cleaned.
pub fn check(planned: usize, events: &[MoveEvent]) -> CheckResult {
    const NAME: &str = "vshard moves";
    if planned == 0 {
        return CheckResult::skip(NAME, "no vShard moves planned for this run");
    }
    let cleaned = events
        .iter()
        .filter(|event| event.phase == "cleaned")
        .count();
    let mut detail = format!("{cleaned} of {planned} moves completed under load");
    for event in events {
        let _ = write!(
            detail,
            "\n  {} group {} -> {}: {} in {} ms, write pause {}",
            event.planned.vshard,
            event.from_group,
            event.to_group,
            event.phase,
            event.took.as_millis(),
            event
                .write_pause_ms
                .map_or("not measured".to_string(), |ms| format!("{ms} ms"))
        );
    }
    match cleaned == planned {
        true => CheckResult::pass(NAME, detail),
        false => CheckResult::fail(NAME, detail),
    }
}

/// Asks the nodes in turn to move `vshard` to another group; a 409 for the group that
/// already owns it is answered by trying the next group.
fn begin(
    api: &Api,
    nodes: &[SocketAddr],
    vshard: VShardId,
    groups: u32,
    round: usize,
    stop: &AtomicBool,
) -> Option<MigrationView> {
    let deadline = Instant::now() + MOVE_WAIT;
    let mut attempt = 0usize;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let node = nodes[attempt % nodes.len()];
        let to_group = 1 + ((round + attempt) as u32 % groups.max(1));
        match api.move_vshard(node, vshard, to_group) {
            Ok(view) => return Some(view),
            Err(error) => eprintln!("move of {vshard} to group {to_group} via {node}: {error}"),
        }
        attempt += 1;
        std::thread::sleep(POLL_INTERVAL);
    }
    None
}

/// Polls every node until the migration is final or [`MOVE_WAIT`] passed; the last view
/// seen, with the write pause if any node reports it (only the node that drove the switch
/// measured it).
fn follow(api: &Api, nodes: &[SocketAddr], id: u64, stop: &AtomicBool) -> Option<MigrationView> {
    let deadline = Instant::now() + MOVE_WAIT;
    let mut last: Option<MigrationView> = None;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let views: Vec<MigrationView> = nodes
            .iter()
            .filter_map(|node| api.migrations(*node).ok())
            .filter_map(|migrations| migrations.into_iter().find(|view| view.id == id))
            .collect();
        let measured = views.iter().find(|view| view.write_pause_ms.is_some());
        if let Some(view) = measured.or(views.first()) {
            last = Some(view.clone());
        }
        if last
            .as_ref()
            .is_some_and(|view| matches!(view.phase.as_str(), "cleaned" | "aborted"))
        {
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    last
}

fn set_phase(phase: &Mutex<String>, text: &str) {
    *phase
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = text.to_string();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_seeded_and_distinct() {
        let moves = plan(7, 64);
        assert_eq!(moves.len(), MOVES);
        assert_eq!(moves, plan(7, 64));
        let vshards: BTreeSet<VShardId> = moves.iter().map(|planned| planned.vshard).collect();
        assert_eq!(vshards.len(), MOVES);
        for planned in &moves {
            assert_eq!(
                vshard_for_key(key_name(planned.key).as_bytes()),
                planned.vshard
            );
        }
        assert!(plan(7, 0).is_empty());
    }

    #[test]
    fn the_check_passes_only_when_every_move_cleaned() {
        let event = |phase: &str| MoveEvent {
            planned: PlannedMove {
                vshard: VShardId(5),
                key: 1,
            },
            from_group: 1,
            to_group: 2,
            phase: phase.to_string(),
            took: Duration::from_millis(300),
            write_pause_ms: Some(12),
        };
        assert_eq!(check(0, &[]).status, crate::report::Status::Skip);
        assert_eq!(
            check(1, &[event("cleaned")]).status,
            crate::report::Status::Pass
        );
        assert_eq!(
            check(2, &[event("cleaned")]).status,
            crate::report::Status::Fail
        );
        assert_eq!(
            check(1, &[event("aborted")]).status,
            crate::report::Status::Fail
        );
    }
}
