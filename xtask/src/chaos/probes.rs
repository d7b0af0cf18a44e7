//! The recovery probe of `chaos`: after a stage's faults are healed, writes to the vShards
//! (a key per vShard, found through the pinned hash), each retried until acknowledged or the
//! recovery deadline passes. The stage's recovery time is the time until every data group has
//! acknowledged a probe (the writers sweep the vShards in parallel, so every group is tried
//! from the first moments on). After the last stage the sweep goes on until every one of the
//! vShards has acknowledged a write; that time also measures the sweep's own throughput.
//! Every probe is recorded in a history of its own, checked with the others at the end.

use crate::api::{Api, Reply};
use crate::workload::{self, Recorder};
use nodedb_cluster_core::linearizability::OpKind;
use nodedb_cluster_core::{VSHARD_COUNT, vshard_for_key};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the cluster gets, after the faults are healed, to accept a write on every vShard.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Concurrent probe writers.
pub const PROBE_WORKERS: u64 = 32;
/// Client ids of the probe writers in the probe history.
const PROBE_CLIENT_BASE: u64 = 1_000_000;
/// Candidate key names tried, at most, to find one key per vShard.
const KEY_CANDIDATES_MAX: u32 = 1_000_000;
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// How the recovery of one stage went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Times after the heal: every group acknowledged a write; every vShard did (when the
    /// sweep went that far).
    Recovered {
        every_group: Duration,
        every_vshard: Option<Duration>,
    },
    /// Some vShards did not within [`RECOVERY_TIMEOUT`].
    Stuck {
        unwritten: Vec<u16>,
        last_error: String,
    },
}

/// One key per vShard, indexed by vShard id: `p<n>` for the first `n` that hashes there.
pub fn probe_keys() -> Vec<String> {
    let mut keys: Vec<Option<String>> = vec![None; usize::from(VSHARD_COUNT)];
    let mut missing = keys.len();
    for candidate in 0..KEY_CANDIDATES_MAX {
        let key = format!("p{candidate}");
        let slot = &mut keys[usize::from(vshard_for_key(key.as_bytes()).0)];
        if slot.is_none() {
            *slot = Some(key);
            missing -= 1;
            if missing == 0 {
                break;
            }
        }
    }
    keys.into_iter()
        .enumerate()
        .map(|(vshard, key)| {
            key.unwrap_or_else(|| panic!("no key for vShard {vshard} among the candidates"))
        })
        .collect()
}

/// How far a sweep goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// Until each of the data groups `1..=groups` has acknowledged a write.
    UntilEveryGroup { groups: u32 },
    /// Until every vShard has acknowledged a write.
    EveryVShard,
}

/// Writes the probe keys (retrying each until acknowledged) as far as `sweep` asks, through
/// the nodes in turn, recording every attempt in `recorder` with values unique to `stage`.
pub fn write_vshards(
    nodes: &[SocketAddr],
    keys: &[String],
    recorder: &Recorder,
    stage: usize,
    sweep: Sweep,
) -> Recovery {
    let progress = SweepProgress {
        started: Instant::now(),
        sweep,
        last_success_us: AtomicU64::new(0),
        first_success_by_group: Mutex::new(BTreeMap::new()),
        enough: AtomicBool::new(false),
    };
    let deadline = progress.started + RECOVERY_TIMEOUT;
    let results: Vec<(Vec<u16>, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PROBE_WORKERS)
            .map(|worker| {
                let progress = &progress;
                scope.spawn(move || {
                    let api = Api::new(workload::REQUEST_TIMEOUT);
                    let mut unwritten = Vec::new();
                    let mut last_error = String::new();
                    let vshards = (worker..u64::from(VSHARD_COUNT)).step_by(PROBE_WORKERS as usize);
                    for vshard in vshards {
                        if progress.enough.load(Ordering::Relaxed) {
                            break;
                        }
                        let vshard = vshard as u16;
                        let probe = Probe {
                            client: PROBE_CLIENT_BASE + worker,
                            key: &keys[usize::from(vshard)],
                            stage,
                        };
                        match probe.write(&api, nodes, recorder, deadline) {
                            Ok(group) => progress.acknowledged(group),
                            Err(why) => {
                                unwritten.push(vshard);
                                last_error = why;
                            }
                        }
                    }
                    (unwritten, last_error)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a probe writer panicked"))
            .collect()
    });
    let mut unwritten: Vec<u16> = Vec::new();
    let mut last_error = String::new();
    for (vshards, error) in results {
        if !vshards.is_empty() {
            last_error = error;
        }
        unwritten.extend(vshards);
    }
    unwritten.sort_unstable();
    progress.outcome(unwritten, last_error)
}

/// What the writers of one sweep share.
struct SweepProgress {
    started: Instant,
    sweep: Sweep,
    last_success_us: AtomicU64,
    first_success_by_group: Mutex<BTreeMap<u32, u64>>,
    /// Set once the sweep has seen what it asks for: the writers stop.
    enough: AtomicBool,
}

impl SweepProgress {
    fn acknowledged(&self, group: Option<u32>) {
        let elapsed = self.started.elapsed().as_micros() as u64;
        self.last_success_us.fetch_max(elapsed, Ordering::Relaxed);
        let mut first = self.first_by_group();
        if let Some(group) = group {
            first.entry(group).or_insert(elapsed);
        }
        if let Sweep::UntilEveryGroup { groups } = self.sweep
            && (1..=groups).all(|group| first.contains_key(&group))
        {
            self.enough.store(true, Ordering::Relaxed);
        }
    }

    fn outcome(&self, unwritten: Vec<u16>, last_error: String) -> Recovery {
        let first = self.first_by_group();
        let every_group = Duration::from_micros(first.values().copied().max().unwrap_or_default());
        let every_vshard = Duration::from_micros(self.last_success_us.load(Ordering::Relaxed));
        match self.sweep {
            Sweep::UntilEveryGroup { groups } => {
                let silent: Vec<u32> = (1..=groups)
                    .filter(|group| !first.contains_key(group))
                    .collect();
                match silent.is_empty() {
                    true => Recovery::Recovered {
                        every_group,
                        every_vshard: None,
                    },
                    false => Recovery::Stuck {
                        unwritten,
                        last_error: format!("groups {silent:?} acknowledged nothing; {last_error}"),
                    },
                }
            }
            Sweep::EveryVShard if unwritten.is_empty() => Recovery::Recovered {
                every_group,
                every_vshard: Some(every_vshard),
            },
            Sweep::EveryVShard => Recovery::Stuck {
                unwritten,
                last_error,
            },
        }
    }

    fn first_by_group(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, u64>> {
        self.first_success_by_group
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One probe write, retried; the group that acknowledged it, when the receipt says.
struct Probe<'a> {
    client: u64,
    key: &'a str,
    stage: usize,
}

impl Probe<'_> {
    fn write(
        &self,
        api: &Api,
        nodes: &[SocketAddr],
        recorder: &Recorder,
        deadline: Instant,
    ) -> Result<Option<u32>, String> {
        let mut last = String::from("never tried");
        for attempt in 0_usize.. {
            if Instant::now() > deadline {
                return Err(format!("{}: {last}", self.key));
            }
            let node = nodes[(self.key.len() + attempt) % nodes.len()];
            let value = format!("s{}-a{attempt}", self.stage);
            let (op, _) = recorder.invoke(self.client, self.key, OpKind::put(value.as_str()));
            let reply = api.put(node, self.key, value.as_bytes());
            recorder.complete(op, workload::write_outcome(&reply));
            match reply {
                Reply::Ok(receipt) => return Ok(receipt.map(|receipt| receipt.group)),
                Reply::Failed(why) | Reply::Refused(why) | Reply::Unknown(why) => {
                    last = format!("{node}: {why}");
                }
            }
            std::thread::sleep(RETRY_INTERVAL);
        }
        unreachable!("the loop returns by the deadline")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_vshard_gets_its_own_key() {
        let keys = probe_keys();
        assert_eq!(keys.len(), usize::from(VSHARD_COUNT));
        for (vshard, key) in keys.iter().enumerate() {
            assert_eq!(usize::from(vshard_for_key(key.as_bytes()).0), vshard);
        }
        let distinct: BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        assert!(keys.iter().all(|key| key.starts_with('p')));
    }

    #[test]
    fn a_probe_to_a_dead_node_gives_up_at_the_deadline_with_the_last_error() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let keys = probe_keys();
        let recorder = Recorder::new(Instant::now());
        let api = Api::new(Duration::from_secs(1));
        let probe = Probe {
            client: 1,
            key: &keys[5],
            stage: 0,
        };
        let deadline = Instant::now() + Duration::from_millis(300);
        let error = probe.write(&api, &[dead], &recorder, deadline).unwrap_err();
        assert!(
            error.starts_with(&format!("{}: 127.0.0.1:", keys[5])),
            "{error}"
        );
        assert!(recorder.counters.snapshot().failed >= 1);
    }
}
