//! The fault schedule of `chaos`, drawn from the run's seed: one stage per nemesis, each a
//! series of rounds (faults on for a bounded time, then healed, then a quiet gap), the last
//! healed at the end of the stage, where the recovery is timed from. Pure: the
//! same seed gives the same schedule. Targets that depend on the live cluster (the leader of
//! a group) stay symbolic here and are resolved when the round starts.
//!
//! Membership churn adds the spare node (id `nodes + 1`, its namespace made at the start but
//! the node not started) and decommissions one of the first nodes, each together with a fault
//! of another kind.

use super::args::NemesisChoice;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::time::Duration;

/// Shortest and longest time one round keeps its faults on. The shortest is above the
/// longest election timeout of either build profile, so a pause always costs a leadership.
pub const ACTIVE_MIN: Duration = Duration::from_millis(2_000);
pub const ACTIVE_MAX: Duration = Duration::from_millis(6_000);
/// Shortest and longest quiet gap between two rounds.
pub const QUIET_MIN: Duration = Duration::from_millis(2_000);
pub const QUIET_MAX: Duration = Duration::from_millis(4_000);
/// When the first round of a stage starts at the earliest and the latest.
pub const FIRST_AT_MIN: Duration = Duration::from_millis(1_000);
pub const FIRST_AT_MAX: Duration = Duration::from_millis(1_500);
/// Shortest stage: room for the first round and one fault.
pub const STAGE_LENGTH_MIN: Duration = Duration::from_millis(5_000);
/// Share of packets a lossy node drops from its peers, in percent.
pub const LOSS_PERCENT_MIN: u32 = 5;
pub const LOSS_PERCENT_MAX: u32 = 30;
/// Rate of a slow link (token bucket on the node's interface), in kbit/s.
pub const SLOW_RATE_KBIT_MIN: u32 = 256;
pub const SLOW_RATE_KBIT_MAX: u32 = 2_048;
/// Longest delay of the UDP fault layer of a delayed node, in ms (reordering comes with it).
pub const DELAY_MS_MIN: u64 = 5;
pub const DELAY_MS_MAX: u64 = 40;
/// Share of datagrams a delayed node sends twice, in percent.
pub const DUPLICATE_PERCENT_MIN: u32 = 1;
pub const DUPLICATE_PERCENT_MAX: u32 = 10;
/// Most nodes restarted with the UDP fault layer in one round (each costs a restart each way).
pub const DELAYED_NODES_MAX: usize = 3;
/// Share of kills whose node restarts at once rather than at the end of the round.
pub const CRASH_PROBABILITY: f64 = 0.5;

/// One stage of the run: which faults its rounds draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nemesis {
    Partition,
    Kill,
    Pause,
    Lossy,
    /// The spare node joins and one node is decommissioned, each with a fault of another kind.
    Churn,
    /// Two faults of different kinds at once in every round.
    Combined,
}

/// Whom a process fault or an isolation hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The leader of group 0 when the round starts.
    MetadataLeader,
    /// The leader of data group `group` when the round starts.
    DataLeader {
        group: u32,
    },
    Node(u64),
}

/// How the nodes are split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Split {
    /// The shuffled nodes cut in two halves: with an odd count, a minority and a majority.
    Halves { side: Vec<u64> },
    /// `left` and `right` cannot reach each other; `bridge` reaches both.
    Bridge {
        left: Vec<u64>,
        bridge: u64,
        right: Vec<u64>,
    },
    /// One node cut off from all others.
    Isolate(Target),
}

/// One fault, on from the start of its round to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Packets between the sides dropped both ways (iptables DROP in the namespaces).
    Partition(Split),
    /// SIGKILL, restart from the data dir at the end of the round.
    Kill(Target),
    /// SIGKILL and restart from the data dir at once, as a supervisor would: a leader is back
    /// before its followers' election timeouts end, with whatever its last write lost.
    Crash(Target),
    /// SIGSTOP, SIGCONT at the end of the round.
    Pause(Target),
    /// Each of `nodes` drops `percent` % of the packets from its peers, at random.
    Lossy { nodes: Vec<u64>, percent: u32 },
    /// Each of `nodes` sends through a token bucket of `rate_kbit`.
    Slow { nodes: Vec<u64>, rate_kbit: u32 },
    /// Each of `nodes` restarted (SIGTERM) with its UDP fault layer on: every datagram it sends
    /// waits up to `delay_ms_max` (so they also overtake each other) and `duplicate_percent` %
    /// are sent twice; restarted without it at the end of the round.
    Delay {
        nodes: Vec<u64>,
        delay_ms_max: u64,
        duplicate_percent: u32,
        seed: u64,
    },
    /// The spare node, started with a config that joins through the seeds.
    Join(u64),
    /// `POST /v1/nodes/{id}/decommission` for this node; it stops itself once done.
    Decommission(u64),
}

/// Faults switched on together at `at` (since the stage started) for `active`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    pub at: Duration,
    pub active: Duration,
    pub faults: Vec<Fault>,
}

/// One stage: its nemesis, how long its load runs, and its rounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagePlan {
    pub nemesis: Nemesis,
    pub length: Duration,
    pub rounds: Vec<Round>,
}

impl Nemesis {
    /// The stages a `--nemesis` choice runs, in order.
    pub fn stages(choice: NemesisChoice) -> Vec<Nemesis> {
        match choice {
            NemesisChoice::All => vec![
                Nemesis::Partition,
                Nemesis::Kill,
                Nemesis::Pause,
                Nemesis::Lossy,
                Nemesis::Churn,
                Nemesis::Combined,
            ],
            NemesisChoice::Partition => vec![Nemesis::Partition],
            NemesisChoice::Kill => vec![Nemesis::Kill],
            NemesisChoice::Pause => vec![Nemesis::Pause],
            NemesisChoice::Lossy => vec![Nemesis::Lossy],
            NemesisChoice::Churn => vec![Nemesis::Churn],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Partition => "partition",
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Lossy => "lossy",
            Nemesis::Churn => "churn",
            Nemesis::Combined => "combined",
        }
    }
}

/// Whether `choice` adds the spare node (id `nodes + 1`) at some point.
pub fn uses_spare(choice: NemesisChoice) -> bool {
    Nemesis::stages(choice).contains(&Nemesis::Churn)
}

/// The schedule of a run of `duration` (split evenly over the stages) on nodes `1..=nodes`
/// with data groups `1..=groups`.
pub fn plan(
    seed: u64,
    choice: NemesisChoice,
    duration: Duration,
    nodes: u32,
    groups: u32,
) -> Vec<StagePlan> {
    let stages = Nemesis::stages(choice);
    let length = duration / stages.len() as u32;
    let node_ids: Vec<u64> = (1..=u64::from(nodes)).collect();
    stages
        .into_iter()
        .enumerate()
        .map(|(index, nemesis)| {
            let stage_seed = seed ^ 0x6368_616F_735F_0000 ^ (index as u64).rotate_left(17);
            let mut rng = SmallRng::seed_from_u64(stage_seed);
            let rounds = plan_rounds(&mut rng, nemesis, length, &node_ids, groups);
            StagePlan {
                nemesis,
                length,
                rounds,
            }
        })
        .collect()
}

/// The shortest `--duration` for `choice`: every stage at least [`STAGE_LENGTH_MIN`].
pub fn duration_min(choice: NemesisChoice) -> Duration {
    STAGE_LENGTH_MIN * Nemesis::stages(choice).len() as u32
}

fn plan_rounds(
    rng: &mut SmallRng,
    nemesis: Nemesis,
    length: Duration,
    nodes: &[u64],
    groups: u32,
) -> Vec<Round> {
    let mut rounds = Vec::new();
    let mut at = random_duration(rng, FIRST_AT_MIN, FIRST_AT_MAX);
    // Drawn first, so that the rest of a churn schedule does not depend on it.
    let victim = match nemesis {
        Nemesis::Churn => nodes[rng.random_range(0..nodes.len())],
        _ => 0,
    };
    while at + ACTIVE_MIN <= length {
        let active = random_duration(rng, ACTIVE_MIN, ACTIVE_MAX).min(length - at);
        let faults = match nemesis {
            Nemesis::Combined => {
                let mut kinds = DISTURBANCES;
                kinds.shuffle(rng);
                kinds[..2]
                    .iter()
                    .flat_map(|kind| plan_faults(rng, *kind, nodes, groups, false))
                    .collect()
            }
            // Each churn round brings one fault of another kind; the churn itself is added below.
            Nemesis::Churn => {
                let kind = DISTURBANCES[rng.random_range(0..DISTURBANCES.len())];
                let mut faults = plan_faults(rng, kind, nodes, groups, false);
                for fault in &mut faults {
                    spare_victim(fault, victim, nodes);
                }
                faults
            }
            // The first lossy round always has the UDP fault layer, later ones at random.
            Nemesis::Lossy => {
                let delay = rounds.is_empty() || rng.random_bool(0.3);
                plan_faults(rng, Nemesis::Lossy, nodes, groups, delay)
            }
            single => plan_faults(rng, single, nodes, groups, false),
        };
        rounds.push(Round { at, active, faults });
        at += active + random_duration(rng, QUIET_MIN, QUIET_MAX);
    }
    if nemesis == Nemesis::Churn {
        // The spare joins in the first round, the victim leaves in the second (or also in the
        // first when there is only one): both while the round's other fault is on.
        let spare = nodes.len() as u64 + 1;
        let leave_in = 1.min(rounds.len().saturating_sub(1));
        if let Some(first) = rounds.first_mut() {
            first.faults.insert(0, Fault::Join(spare));
        }
        if let Some(round) = rounds.get_mut(leave_in) {
            let position = usize::from(leave_in == 0);
            round.faults.insert(position, Fault::Decommission(victim));
        }
    }
    // The last heal comes at the end of the stage, where the recovery is timed from.
    if let Some(last) = rounds.last() {
        let shift = length - (last.at + last.active);
        for round in &mut rounds {
            round.at += shift;
        }
    }
    rounds
}

/// The kinds a combined round or a churn round draws its other faults from.
const DISTURBANCES: [Nemesis; 4] = [
    Nemesis::Partition,
    Nemesis::Kill,
    Nemesis::Pause,
    Nemesis::Lossy,
];

/// A fault of a churn round aimed at the node being decommissioned by its id aims at the
/// metadata leader instead (the victim still may be it, but not by plan).
fn spare_victim(fault: &mut Fault, victim: u64, nodes: &[u64]) {
    let retarget = |target: &mut Target| {
        if *target == Target::Node(victim) {
            *target = Target::MetadataLeader;
        }
    };
    match fault {
        Fault::Kill(target)
        | Fault::Crash(target)
        | Fault::Pause(target)
        | Fault::Partition(Split::Isolate(target)) => retarget(target),
        _ => {}
    }
    debug_assert!(nodes.contains(&victim));
}

/// The faults of one round of a single-kind nemesis; a lossy round restarts some nodes with
/// the UDP fault layer when `delay` is set.
fn plan_faults(
    rng: &mut SmallRng,
    nemesis: Nemesis,
    nodes: &[u64],
    groups: u32,
    delay: bool,
) -> Vec<Fault> {
    match nemesis {
        Nemesis::Partition => vec![Fault::Partition(plan_split(rng, nodes, groups))],
        Nemesis::Kill => {
            let target = plan_target(rng, nodes, groups);
            if rng.random_bool(CRASH_PROBABILITY) {
                vec![Fault::Crash(target)]
            } else {
                vec![Fault::Kill(target)]
            }
        }
        Nemesis::Pause => vec![Fault::Pause(plan_target(rng, nodes, groups))],
        Nemesis::Lossy => {
            let lossy = Fault::Lossy {
                nodes: random_subset(rng, nodes, 2),
                percent: rng.random_range(LOSS_PERCENT_MIN..=LOSS_PERCENT_MAX),
            };
            let slow = Fault::Slow {
                nodes: random_subset(rng, nodes, 1),
                rate_kbit: rng.random_range(SLOW_RATE_KBIT_MIN..=SLOW_RATE_KBIT_MAX),
            };
            let mut faults = match rng.random_range(0..3) {
                0 => vec![lossy],
                1 => vec![slow],
                _ => vec![lossy, slow],
            };
            if delay {
                let mut delayed = random_subset(rng, nodes, 2);
                delayed.shuffle(rng);
                delayed.truncate(DELAYED_NODES_MAX);
                delayed.sort_unstable();
                faults.push(Fault::Delay {
                    nodes: delayed,
                    delay_ms_max: rng.random_range(DELAY_MS_MIN..=DELAY_MS_MAX),
                    duplicate_percent: rng
                        .random_range(DUPLICATE_PERCENT_MIN..=DUPLICATE_PERCENT_MAX),
                    seed: rng.random(),
                });
            }
            faults
        }
        Nemesis::Churn | Nemesis::Combined => {
            unreachable!("churn and combined rounds are made of single-kind faults")
        }
    }
}

fn plan_split(rng: &mut SmallRng, nodes: &[u64], groups: u32) -> Split {
    let mut shuffled = nodes.to_vec();
    shuffled.shuffle(rng);
    match rng.random_range(0..4) {
        0 => {
            let mut side = shuffled[..nodes.len() / 2].to_vec();
            side.sort_unstable();
            Split::Halves { side }
        }
        1 => {
            let bridge = shuffled[0];
            let rest = &shuffled[1..];
            let cut = rng.random_range(1..rest.len());
            let mut left = rest[..cut].to_vec();
            let mut right = rest[cut..].to_vec();
            left.sort_unstable();
            right.sort_unstable();
            Split::Bridge {
                left,
                bridge,
                right,
            }
        }
        2 => Split::Isolate(Target::MetadataLeader),
        _ => Split::Isolate(plan_target(rng, nodes, groups)),
    }
}

/// A leader (metadata or data) or any node, a third of the time each.
fn plan_target(rng: &mut SmallRng, nodes: &[u64], groups: u32) -> Target {
    match rng.random_range(0..3) {
        0 => Target::MetadataLeader,
        1 => Target::DataLeader {
            group: rng.random_range(1..=groups.max(1)),
        },
        _ => Target::Node(nodes[rng.random_range(0..nodes.len())]),
    }
}

/// At least `min` of `nodes`, sorted.
fn random_subset(rng: &mut SmallRng, nodes: &[u64], min: usize) -> Vec<u64> {
    let mut shuffled = nodes.to_vec();
    shuffled.shuffle(rng);
    let count = rng.random_range(min.min(nodes.len())..=nodes.len());
    let mut subset = shuffled[..count].to_vec();
    subset.sort_unstable();
    subset
}

fn random_duration(rng: &mut SmallRng, min: Duration, max: Duration) -> Duration {
    Duration::from_millis(rng.random_range(min.as_millis() as u64..=max.as_millis() as u64))
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::MetadataLeader => write!(f, "the metadata leader"),
            Target::DataLeader { group } => write!(f, "the leader of group {group}"),
            Target::Node(node) => write!(f, "node {node}"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition(Split::Halves { side }) => write!(f, "partition {side:?} | rest"),
            Fault::Partition(Split::Bridge {
                left,
                bridge,
                right,
            }) => write!(f, "partition {left:?} | {right:?} bridged by node {bridge}"),
            Fault::Partition(Split::Isolate(target)) => write!(f, "isolate {target}"),
            Fault::Kill(target) => write!(f, "kill -9 {target}"),
            Fault::Crash(target) => write!(f, "kill -9 {target} and restart it at once"),
            Fault::Pause(target) => write!(f, "pause {target}"),
            Fault::Lossy { nodes, percent } => write!(f, "lose {percent}% into nodes {nodes:?}"),
            Fault::Slow { nodes, rate_kbit } => {
                write!(f, "slow links of nodes {nodes:?} to {rate_kbit} kbit/s")
            }
            Fault::Delay {
                nodes,
                delay_ms_max,
                duplicate_percent,
                ..
            } => write!(
                f,
                "delay datagrams of nodes {nodes:?} by 0-{delay_ms_max} ms, {duplicate_percent}% \
                 sent twice"
            ),
            Fault::Join(node) => write!(f, "join node {node}"),
            Fault::Decommission(node) => write!(f, "decommission node {node}"),
        }
    }
}

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: Vec<String> = self.faults.iter().map(ToString::to_string).collect();
        write!(
            f,
            "{} at {:.1}s for {:.1}s",
            faults.join(" + "),
            self.at.as_secs_f64(),
            self.active.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::config::RaftTimings;

    #[test]
    fn a_pause_outlasts_every_election_timeout() {
        for timings in [RaftTimings::DEBUG, RaftTimings::RELEASE] {
            assert!(ACTIVE_MIN.as_millis() > u128::from(timings.election_timeout_ms_max));
        }
    }

    #[test]
    fn all_runs_every_kind_then_the_combination() {
        let stages = plan(1, NemesisChoice::All, Duration::from_secs(120), 5, 8);
        let names: Vec<_> = stages.iter().map(|stage| stage.nemesis.name()).collect();
        assert_eq!(
            names,
            ["partition", "kill", "pause", "lossy", "churn", "combined"]
        );
        for stage in &stages {
            assert_eq!(stage.length, Duration::from_secs(20));
            assert!(stage.rounds.len() >= 2, "{stage:?}");
        }
        for round in &stages[5].rounds {
            // Two kinds; a lossy one may bring two faults.
            assert!(round.faults.len() >= 2, "{round}");
        }
    }

    #[test]
    fn rounds_stay_inside_their_stage_and_do_not_overlap() {
        for seed in 0..300 {
            for stage in plan(seed, NemesisChoice::All, Duration::from_secs(30), 5, 8) {
                assert!(!stage.rounds.is_empty(), "seed {seed}: {stage:?}");
                let mut free_from = Duration::ZERO;
                for round in &stage.rounds {
                    assert!(round.at >= free_from, "seed {seed}: {stage:?}");
                    assert!(round.active >= ACTIVE_MIN && round.active <= ACTIVE_MAX);
                    assert!(round.at + round.active <= stage.length, "seed {seed}");
                    free_from = round.at + round.active + QUIET_MIN;
                    assert!(!round.faults.is_empty());
                }
                let last = stage.rounds.last().unwrap();
                assert_eq!(last.at + last.active, stage.length, "seed {seed}");
            }
        }
    }

    #[test]
    fn every_fault_names_real_nodes_and_groups() {
        let nodes: Vec<u64> = (1..=5).collect();
        let check_target = |target: &Target| match target {
            Target::MetadataLeader => {}
            Target::DataLeader { group } => assert!((1..=8).contains(group)),
            Target::Node(node) => assert!(nodes.contains(node)),
        };
        for seed in 0..200 {
            for stage in plan(seed, NemesisChoice::All, Duration::from_secs(60), 5, 8) {
                for fault in stage.rounds.iter().flat_map(|round| &round.faults) {
                    match fault {
                        Fault::Partition(Split::Halves { side }) => assert_eq!(side.len(), 2),
                        Fault::Partition(Split::Bridge {
                            left,
                            bridge,
                            right,
                        }) => {
                            assert!(!left.is_empty() && !right.is_empty());
                            let mut all: Vec<u64> = left.iter().chain(right).copied().collect();
                            all.push(*bridge);
                            all.sort_unstable();
                            assert_eq!(all, nodes);
                        }
                        Fault::Partition(Split::Isolate(target))
                        | Fault::Kill(target)
                        | Fault::Crash(target)
                        | Fault::Pause(target) => check_target(target),
                        Fault::Lossy {
                            nodes: lossy,
                            percent,
                        } => {
                            assert!(lossy.len() >= 2);
                            assert!((LOSS_PERCENT_MIN..=LOSS_PERCENT_MAX).contains(percent));
                        }
                        Fault::Slow {
                            nodes: slow,
                            rate_kbit,
                        } => {
                            assert!(!slow.is_empty());
                            assert!((SLOW_RATE_KBIT_MIN..=SLOW_RATE_KBIT_MAX).contains(rate_kbit));
                        }
                        Fault::Delay {
                            nodes: delayed,
                            delay_ms_max,
                            duplicate_percent,
                            ..
                        } => {
                            assert!((2..=DELAYED_NODES_MAX).contains(&delayed.len()));
                            assert!(delayed.iter().all(|node| nodes.contains(node)));
                            assert!((DELAY_MS_MIN..=DELAY_MS_MAX).contains(delay_ms_max));
                            assert!(
                                (DUPLICATE_PERCENT_MIN..=DUPLICATE_PERCENT_MAX)
                                    .contains(duplicate_percent)
                            );
                        }
                        Fault::Join(node) => assert_eq!(*node, 6),
                        Fault::Decommission(node) => assert!(nodes.contains(node)),
                    }
                }
            }
        }
    }

    #[test]
    fn the_first_lossy_round_delays_datagrams() {
        for seed in 0..100 {
            let stages = plan(seed, NemesisChoice::Lossy, Duration::from_secs(5), 5, 8);
            let first = &stages[0].rounds[0];
            assert!(
                first
                    .faults
                    .iter()
                    .any(|fault| matches!(fault, Fault::Delay { .. })),
                "seed {seed}: {first}"
            );
        }
    }

    #[test]
    fn churn_adds_the_spare_then_decommissions_another_node_during_faults() {
        for seed in 0..200 {
            for (duration, nodes) in [(5, 3), (5, 5), (30, 5)] {
                let stages = plan(
                    seed,
                    NemesisChoice::Churn,
                    Duration::from_secs(duration),
                    nodes,
                    8,
                );
                let rounds = &stages[0].rounds;
                let spare = u64::from(nodes) + 1;
                assert_eq!(rounds[0].faults[0], Fault::Join(spare), "seed {seed}");
                let leave = rounds.len().min(2) - 1;
                let victim = rounds[leave]
                    .faults
                    .iter()
                    .find_map(|fault| match fault {
                        Fault::Decommission(node) => Some(*node),
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("seed {seed}: {:?}", rounds[leave]));
                assert!((1..=u64::from(nodes)).contains(&victim));
                for round in rounds {
                    let churn = round
                        .faults
                        .iter()
                        .filter(|fault| matches!(fault, Fault::Join(_) | Fault::Decommission(_)))
                        .count();
                    // Every round has a fault besides its churn, never aimed at the victim by id.
                    assert!(round.faults.len() > churn, "seed {seed}: {round}");
                    for fault in &round.faults {
                        if let Fault::Kill(target) | Fault::Crash(target) | Fault::Pause(target) =
                            fault
                        {
                            assert_ne!(*target, Target::Node(victim), "seed {seed}");
                        }
                        assert!(!matches!(fault, Fault::Delay { .. }), "seed {seed}");
                    }
                }
            }
        }
        assert!(uses_spare(NemesisChoice::All) && uses_spare(NemesisChoice::Churn));
        assert!(!uses_spare(NemesisChoice::Kill));
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let duration = Duration::from_secs(60);
        assert_eq!(
            plan(7, NemesisChoice::All, duration, 5, 8),
            plan(7, NemesisChoice::All, duration, 5, 8)
        );
        let distinct: std::collections::BTreeSet<_> = (0..20)
            .map(|seed| format!("{:?}", plan(seed, NemesisChoice::Partition, duration, 5, 8)))
            .collect();
        assert!(distinct.len() > 15);
    }

    #[test]
    fn one_kind_gets_the_whole_duration() {
        let stages = plan(3, NemesisChoice::Pause, Duration::from_secs(30), 3, 4);
        assert_eq!(stages.len(), 1);
        assert_eq!(stages[0].length, Duration::from_secs(30));
        assert!(
            stages[0]
                .rounds
                .iter()
                .all(|round| matches!(round.faults[..], [Fault::Pause(_)]))
        );
        assert_eq!(duration_min(NemesisChoice::Pause), STAGE_LENGTH_MIN);
        assert_eq!(duration_min(NemesisChoice::All), STAGE_LENGTH_MIN * 6);
    }

    #[test]
    fn rounds_read_well() {
        let round = Round {
            at: Duration::from_millis(1500),
            active: Duration::from_secs(3),
            faults: vec![
                Fault::Partition(Split::Isolate(Target::MetadataLeader)),
                Fault::Kill(Target::DataLeader { group: 3 }),
            ],
        };
        assert_eq!(
            round.to_string(),
            "isolate the metadata leader + kill -9 the leader of group 3 at 1.5s for 3.0s"
        );
    }
}
